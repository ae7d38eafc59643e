//! Operating the appliance unattended: a failed load is a visible state with a backoff, the
//! load self-test, metrics an operator can alert on (parsed by a real Prometheus parser),
//! usage kept across restarts, the memory status an operator reads, and unloads that hand
//! memory back at once.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Daemon, model_entry, sample, scrape, wait_until, write_config};
use serde_json::Value;

/// A request for `model` through `/v1/embeddings`: status, headers, JSON body.
fn embed_with(d: &Daemon, model: &str) -> (u16, HashMap<String, String>, Value) {
    let body = serde_json::json!({"input": "hello", "model": model}).to_string();
    let (status, headers, bytes) = d
        .try_request_with_headers("POST", "/v1/embeddings", Some(&body))
        .expect("request");
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, v)
}

fn failures_logged(d: &Daemon, id: &str) -> usize {
    d.log()
        .lines()
        .filter(|l| {
            l.contains("caxton_event=\"model_load_failed\"") && l.contains(&format!("model {id} "))
        })
        .count()
}

#[test]
fn a_model_that_fails_its_self_test_is_failed_and_retried_with_backoff() {
    let d = Daemon::start_with(
        |dir| {
            write_config(dir, "");
            std::fs::create_dir_all(dir.join("packages")).expect("mkdir");
            common::bundled_copy_poisoned(
                &dir.join("packages/broken.tar.zst"),
                "broken",
                "embeddings.LayerNorm.weight",
            );
        },
        &[],
    );
    // It verifies: its checksums are right, only its numbers are not.
    assert_eq!(
        model_entry(&d, "broken").expect("listed")["state"],
        "available"
    );

    let (status, headers, v) = embed_with(&d, "broken");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "model_load_failed");
    assert_eq!(
        v["error"]["message"],
        "model \"broken\" failed to load: self-test at load failed: value 0 of the vector is NaN \
         (the weights compute non-finite numbers); see the daemon's journal \
         (CAXTON_EVENT=model_load_failed), then replace the package"
    );
    assert_eq!(headers["retry-after"], "2", "the first backoff is 2 s");

    // During the backoff a request is refused without another attempt, and says when.
    let (status, headers, v) = embed_with(&d, "broken");
    assert_eq!(status, 503, "{v}");
    let message = v["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("(1 failed attempt in a row; the next one is not before"),
        "{message}"
    );
    let retry: u64 = headers["retry-after"].parse().expect("Retry-After");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(failures_logged(&d, "broken"), 1, "{}", d.log());

    let entry = model_entry(&d, "broken").expect("listed");
    assert_eq!(entry["state"], "failed", "{entry}");
    let failure = &entry["failure"];
    assert_eq!(failure["reason_code"], "self_test_failed");
    assert_eq!(failure["attempts"], 1);
    let (at, retry_at) = (
        failure["at"].as_u64().expect("at"),
        failure["retry_at"].as_u64().expect("retry_at"),
    );
    assert!((2..=3).contains(&(retry_at - at)), "{failure}");
    let (_, status) = d.request("GET", "/api/memory/status", "");
    assert_eq!(status["failed"][0]["id"], "broken", "{status}");
    assert_eq!(status["failed"][0]["reason_code"], "self_test_failed");

    // After the backoff the next request tries again; it fails again and the wait doubles.
    let mut second = None;
    wait_until(&d, "a second attempt", || {
        let (status, headers, v) = embed_with(&d, "broken");
        assert_eq!(status, 503, "{v}");
        let fresh = v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.contains("failed attempt"));
        if fresh {
            second = Some(headers["retry-after"].clone());
        }
        fresh
    });
    assert_eq!(second.as_deref(), Some("4"), "the second backoff is 4 s");
    assert_eq!(failures_logged(&d, "broken"), 2, "{}", d.log());
    assert_eq!(
        model_entry(&d, "broken").expect("listed")["failure"]["attempts"],
        2
    );

    // An operator's explicit load does not wait for the backoff.
    let (status, v) = d.request("POST", "/api/memory/models/broken/load", "");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "model_load_failed");
    assert_eq!(
        model_entry(&d, "broken").expect("listed")["failure"]["attempts"],
        3
    );
    assert_eq!(failures_logged(&d, "broken"), 3);

    let samples = scrape(&d);
    assert_eq!(
        sample(
            &samples,
            "caxton_model_load_failures_total",
            &[("model", "broken"), ("reason", "self_test_failed")]
        ),
        Some(3.0)
    );
    // The default model is unaffected.
    d.embed(&["still served"]);
}

#[test]
fn metrics_cover_requests_texts_tokens_batches_loads_and_the_store() {
    let d = Daemon::start();
    let mut tokens = 0;
    for texts in [&["one"][..], &["two texts", "in one request"][..]] {
        tokens += d.embed(texts).1;
    }
    let model = [("model", "all-MiniLM-L6-v2")];
    let s = scrape(&d);
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&s, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in {s:?}"))
    };
    assert_eq!(get("caxton_embedded_texts_total", &model), 3.0);
    assert_eq!(get("caxton_embedded_tokens_total", &model), tokens as f64);
    let endpoint = [
        ("endpoint", "/v1/embeddings"),
        ("model", "all-MiniLM-L6-v2"),
    ];
    assert_eq!(get("caxton_request_duration_seconds_count", &endpoint), 2.0);
    assert!(get("caxton_request_duration_seconds_sum", &endpoint) > 0.0);
    assert_eq!(
        get(
            "caxton_request_duration_seconds_bucket",
            &[
                ("endpoint", "/v1/embeddings"),
                ("model", "all-MiniLM-L6-v2"),
                ("le", "+Inf")
            ]
        ),
        2.0
    );
    // The load's self-test is a pass of one text; the requests are one pass each or more.
    assert!(get("caxton_batch_size_count", &model) >= 3.0);
    assert!(get("caxton_batch_size_sum", &model) >= 4.0);
    assert_eq!(get("caxton_engine_queue_depth", &model), 0.0);
    assert_eq!(get("caxton_model_loads_total", &model), 1.0);
    assert_eq!(get("caxton_model_load_duration_seconds_count", &model), 1.0);
    assert_eq!(get("caxton_model_cache_entries", &[]), 1.0);
    let store = get("caxton_model_cache_size_bytes", &[]);
    assert!(
        (45e6..50e6).contains(&store),
        "the store holds the bundled model's files: {store}"
    );
    // A request no model served is timed with an empty model label.
    d.request("GET", "/api/models", "");
    let s = scrape(&d);
    assert_eq!(
        sample(
            &s,
            "caxton_request_duration_seconds_count",
            &[("endpoint", "/api/models"), ("model", "")]
        ),
        Some(1.0)
    );
}

#[test]
fn usage_survives_a_restart_and_a_corrupt_usage_file_is_ignored() {
    let mut d = Daemon::start();
    let tokens: u64 = (0..3).map(|_| d.embed(&["remember me"]).1).sum();
    let before = model_entry(&d, "all-MiniLM-L6-v2").expect("listed");
    assert_eq!(before["use_count"], 3);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0));
    let file = d.dir.path().join("state/usage.json");
    let stored: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("usage.json")).expect("JSON");
    // With its width (what an alternative must match once the package is gone) and its
    // habits: the three uses fall in one hour of the week, counted once.
    let hour = before["last_use"].as_u64().expect("last_use") / 3600;
    let slot = caxton::registry::habits::hour_of_week(hour).to_string();
    let mut record = stored["models"]["all-MiniLM-L6-v2"].clone();
    let habits = record["habits"].take();
    assert_eq!(
        record,
        serde_json::json!({
            "use_count": 3,
            "last_use": before["last_use"],
            "tokens": tokens,
            "dimensions": 384,
            "habits": null,
        })
    );
    assert_eq!(
        habits["hours"][&slot],
        serde_json::json!({"weight": 1.0, "last": hour})
    );
    // The uses may straddle an hour boundary: the history starts at the first one.
    let since = habits["since"].as_u64().expect("since");
    assert!(since == hour || since + 1 == hour, "{habits}");

    d.respawn();
    d.wait_health(200);
    let after = model_entry(&d, "all-MiniLM-L6-v2").expect("listed");
    assert_eq!(after["use_count"], 3, "{after}");
    assert_eq!(after["last_use"], before["last_use"]);
    assert_eq!(after["tokens"], tokens);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0));

    std::fs::write(&file, b"{\"format\": 1, \"models\": {\"all-MiniLM").expect("corrupt");
    d.respawn();
    d.wait_health(200);
    assert_eq!(
        model_entry(&d, "all-MiniLM-L6-v2").expect("listed")["use_count"],
        0
    );
    let log = d.log();
    assert!(
        log.contains("caxton_event=\"usage_state_ignored\"")
            && log.contains(&format!(
                "model usage in {} is ignored (it is not valid usage JSON: EOF while parsing",
                file.display()
            )),
        "{log}"
    );
    // The damaged file is replaced at the next save (here, the clean stop).
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0));
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("usage.json")).expect("JSON again");
    assert_eq!(again["format"], 1, "{again}");
}

#[test]
fn memory_status_shows_idle_deadlines_available_memory_and_the_store() {
    let d = Daemon::start_with(|dir| write_config(dir, "memory:\n  max_idle: 10m\n"), &[]);
    d.embed(&["a use"]);
    let (_, v) = d.request("GET", "/api/memory/status", "");
    let loaded = &v["loaded"][0];
    assert_eq!(loaded["id"], "all-MiniLM-L6-v2", "{v}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expires = loaded["expires_at"].as_u64().expect("expires_at");
    assert!(
        (now + 590..=now + 601).contains(&expires),
        "10 minutes after the last use: {expires} vs now {now}"
    );
    assert!(
        v["available"]["system_bytes"].as_u64().expect("system") > 0,
        "{v}"
    );
    assert!(v["available"]["process_bytes"].as_u64().expect("process") > 0);
    assert_eq!(v["store"]["entries"], 1);
    assert!(v["store"]["bytes"].as_u64().expect("bytes") > 45_000_000);
    assert_eq!(v["failed"], serde_json::json!([]));

    let out = common::caxton(&d, &["status"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let store = v["store"]["bytes"].as_u64().expect("bytes") >> 20;
    assert!(
        text.contains(&format!(
            "store:        {store} MiB in 1 package(s), bound "
        )),
        "{text}"
    );
    assert!(text.contains("all-MiniLM-L6-v2 ("), "{text}");
    assert!(text.contains(", idle unload at 20"), "{text}");
}

#[test]
fn an_unload_hands_back_nine_tenths_of_the_model_within_two_seconds() {
    let d = Daemon::start();
    let (status, v) = d.request("DELETE", "/api/memory/models/all-MiniLM-L6-v2", "");
    assert_eq!(status, 200, "{v}");
    // The baseline: the daemon with no model, once the start-up's model is freed.
    wait_until(&d, "memory back after the first unload", || {
        let (_, v) = d.request("GET", "/api/memory/status", "");
        v["releasing"] == serde_json::json!([])
    });
    let base = common::rss_bytes(&d);
    let (status, v) = d.request("POST", "/api/memory/models/all-MiniLM-L6-v2/load", "");
    assert_eq!(status, 200, "{v}");
    d.embed(&["a pass, so the engine's buffers are in use too"]);
    let loaded = common::rss_bytes(&d);
    let model = loaded.saturating_sub(base);
    assert!(model > 40 << 20, "the model takes {model} bytes");

    let started = Instant::now();
    let (status, v) = d.request("DELETE", "/api/memory/models/all-MiniLM-L6-v2", "");
    assert_eq!(status, 200, "{v}");
    let target = loaded - model * 9 / 10;
    let mut now = common::rss_bytes(&d);
    while now > target && started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
        now = common::rss_bytes(&d);
    }
    let took = started.elapsed();
    assert!(
        now <= target,
        "after {took:?} rss is {} MiB: {} of the model's {} MiB are back, less than 90%",
        now >> 20,
        loaded.saturating_sub(now) >> 20,
        model >> 20
    );
    println!(
        "unload handed back {} of {} MiB in {took:?}",
        loaded.saturating_sub(now) >> 20,
        model >> 20
    );
}
