//! Issue 5: the memory policy in the running daemon: budget admission (shedding lower-value
//! models to make room, refusing with 503 + Retry-After what cannot fit), max_loaded_models,
//! idle unload, preload, pinned models, and pressure shedding with hysteresis, driven through
//! systemd's MemoryPressureWatch protocol on a FIFO.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{Daemon, bundled_copy_with_id, model_entry, wait_until, write_config};
use serde_json::Value;

const MODEL: &str = "all-MiniLM-L6-v2";

/// A daemon with extra models `ids` (copies of the bundled weights) and `memory` YAML.
fn daemon(ids: &[&str], memory: &str, env: &[(&str, &str)]) -> Daemon {
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let memory = memory.to_string();
    Daemon::start_with(
        move |dir| {
            setup(dir, &ids, &memory);
        },
        env,
    )
}

fn setup(dir: &Path, ids: &[String], memory: &str) {
    write_config(dir, memory);
    std::fs::create_dir_all(dir.join("packages")).expect("mkdir");
    for id in ids {
        bundled_copy_with_id(&dir.join(format!("packages/{id}.tar.zst")), id);
    }
}

/// Embeds one text with `model`: the status, the body and the Retry-After header.
fn embed_with(d: &Daemon, model: &str) -> (u16, Value, Option<String>) {
    let body = serde_json::json!({"model": model, "input": "hello"}).to_string();
    let (status, head, body) = d
        .try_request_with_headers("POST", "/v1/embeddings", Some(&body))
        .expect("request");
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, v, head.get("retry-after").cloned())
}

fn state(d: &Daemon, id: &str) -> String {
    model_entry(d, id).expect("entry")["state"]
        .as_str()
        .expect("state")
        .to_string()
}

fn loaded(d: &Daemon) -> Vec<String> {
    let (_, v) = d.request("GET", "/api/memory/status", "");
    let mut ids: Vec<String> = v["loaded"]
        .as_array()
        .expect("loaded")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn the_budget_sheds_lower_value_models_and_refuses_what_cannot_fit() {
    // Each copy of MiniLM takes about 100 MiB: two fit in 250 MiB, three do not.
    let d = daemon(
        &["m-a", "m-b", "m-low"],
        "memory:\n  budget: 250MiB\n  min_residency: 0s\n  models:\n    all-MiniLM-L6-v2: {priority: 1, pinned: true}\n    m-low: {priority: 5}\n",
        &[],
    );
    let (_, v) = d.request("GET", "/api/memory/status", "");
    assert_eq!(v["budget_bytes"], 250 << 20);
    assert_eq!(v["budget_from"], "memory.budget 250MiB");
    assert_eq!(embed_with(&d, "m-a").0, 200);
    assert_eq!(loaded(&d), [MODEL, "m-a"]);
    // m-b (priority 3) may shed m-a (priority 3, used longer ago); the pinned default stays.
    let (s, v, _) = embed_with(&d, "m-b");
    assert_eq!(s, 200, "{v}");
    assert_eq!(loaded(&d), [MODEL, "m-b"]);
    assert_eq!(state(&d, "m-a"), "available");
    // The daemon's output is read back by a thread: wait for the line rather than race it.
    wait_until(&d, "the shed logged", || {
        d.log().contains("caxton_event=\"model_shed\"") && d.log().contains("making room for m-b")
    });
    // m-low (priority 5) may shed nothing of higher value: a clean 503 with Retry-After.
    let (s, v, retry) = embed_with(&d, "m-low");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("insufficient_memory"))
    );
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(
        msg.starts_with("model m-low cannot be loaded now: it needs about ")
            && msg.contains("the budget of 250 MiB has")
            && msg.contains("nothing of priority 5 or lower can make room")
            && msg.contains(&format!("{MODEL} "))
            && msg.contains("(pinned)")
            && msg.contains("m-b ")
            && msg.contains("(priority 3)"),
        "{msg}"
    );
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|n| n >= 1)));
    assert_eq!(loaded(&d), [MODEL, "m-b"]);
    let (_, body) = d.raw_request("GET", "/metrics", None).expect("metrics");
    let text = String::from_utf8(body).expect("utf-8");
    assert!(
        text.contains("caxton_model_loads_refused_total 1"),
        "{text}"
    );
    assert!(
        text.contains("caxton_models_shed_total{model=\"m-a\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!("caxton_memory_budget_bytes {}", 250 << 20)),
        "{text}"
    );
}

#[test]
fn a_budget_too_small_for_the_default_model_says_so() {
    let d = Daemon::spawn(|dir| write_config(dir, "memory:\n  budget: 32MiB\n"), &[]);
    d.wait_health_status("unavailable");
    let (_, v) = d.request("GET", "/health", "");
    let reason = v.to_string();
    assert!(
        reason.contains(&format!("model {MODEL} needs about "))
            && reason.contains("more than the whole memory budget of 32 MiB"),
        "{reason}"
    );
}

#[test]
fn max_loaded_models_sheds_the_least_recently_used() {
    let d = daemon(
        &["m-a", "m-b"],
        "memory:\n  max_loaded_models: 2\n  min_residency: 0s\n",
        &[],
    );
    assert_eq!(embed_with(&d, "m-a").0, 200);
    assert_eq!(embed_with(&d, MODEL).0, 200);
    // The default was used last: m-a goes.
    assert_eq!(embed_with(&d, "m-b").0, 200);
    assert_eq!(loaded(&d), [MODEL, "m-b"]);
}

#[test]
fn idle_models_unload_preloads_load_and_flush_keeps_pinned() {
    let d = daemon(
        &["m-idle", "m-pre"],
        "memory:\n  max_idle: 0s\n  models:\n    m-idle: {max_idle: 1s}\n    m-pre: {preload: true, pinned: true}\n",
        &[],
    );
    // Preloaded without any request.
    wait_until(&d, "m-pre preloaded", || state(&d, "m-pre") == "loaded");
    assert_eq!(embed_with(&d, "m-idle").0, 200);
    wait_until(&d, "m-idle unloaded when idle", || {
        state(&d, "m-idle") == "available"
    });
    // The state flips before the journal line is written and read back: wait for it too.
    wait_until(&d, "the idle unload logged", || {
        d.log().contains("model m-idle unloaded (idle)")
    });
    // max_idle 0s: the default stays.
    assert_eq!(state(&d, MODEL), "loaded");
    let (s, v) = d.request("POST", "/api/memory/flush", "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["kept_pinned"], serde_json::json!(["m-pre"]));
    assert_eq!(v["unloaded"][0]["id"], MODEL);
    assert_eq!(loaded(&d), ["m-pre"]);
    let (_, v) = d.request("GET", "/api/models", "");
    let pre = v["data"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["id"] == "m-pre")
        .expect("m-pre")
        .clone();
    assert_eq!(
        (pre["pinned"].as_bool(), pre["preload"].as_bool()),
        (Some(true), Some(true))
    );
}

/// Writes to the FIFO standing in for systemd's memory.pressure watch.
fn fire(fifo: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .expect("open fifo");
    f.write_all(b"x").expect("write fifo");
}

/// Seconds of the day of each `model_shed` line (log lines start with an RFC 3339 time).
fn shed_times(d: &Daemon) -> Vec<f64> {
    let mut last = 0.0;
    d.log()
        .lines()
        .filter(|l| l.contains("caxton_event=\"model_shed\""))
        .map(|l| {
            let time = l.split(['T', 'Z']).nth(1).expect("timestamp");
            let mut secs = time
                .split(':')
                .map(|p| p.parse::<f64>().expect("number"))
                .fold(0.0, |acc, p| acc * 60.0 + p);
            // Past midnight: keep the times increasing.
            if secs < last {
                secs += 86_400.0;
            }
            last = secs;
            secs
        })
        .collect()
}

fn shed_count(d: &Daemon) -> usize {
    d.log().matches("caxton_event=\"model_shed\"").count()
}

#[test]
fn a_systemd_pressure_trigger_sheds_lowest_value_first_with_hysteresis() {
    let fifo_dir = tempfile::tempdir().expect("tempdir");
    let fifo = fifo_dir.path().join("memory.pressure.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let d = daemon(
        &["m-a", "m-low"],
        "memory:\n  min_residency: 0s\n  pressure:\n    cooldown: 2s\n    calm: 4s\n    interval: 200ms\n  models:\n    all-MiniLM-L6-v2: {pinned: true}\n    m-low: {priority: 5}\n",
        &[
            ("MEMORY_PRESSURE_WATCH", fifo.to_str().expect("utf-8")),
            ("MEMORY_PRESSURE_WRITE", "c29tZSAyMDAwMDAgMjAwMDAwMAA="),
        ],
    );
    let v = common::memory_status_probed(&d);
    assert_eq!(v["pressure"]["source"], "systemd", "{v}");
    assert!(
        d.log().contains("memory pressure source: systemd"),
        "{}",
        d.log()
    );
    assert_eq!(embed_with(&d, "m-low").0, 200);
    assert_eq!(embed_with(&d, "m-a").0, 200);

    fire(&fifo);
    wait_until(&d, "the first shed", || shed_count(&d) == 1);
    // Lowest priority first, although m-a is as old and the same size.
    assert_eq!(loaded(&d), [MODEL, "m-a"]);
    assert!(
        d.log()
            .contains("model m-low shed to free memory (pressure: systemd trigger fired"),
        "{}",
        d.log()
    );
    // During the episode model memory may not grow back: the shed model is refused.
    let (s, v, retry) = embed_with(&d, "m-low");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("insufficient_memory")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("memory pressure holds model memory at"),
        "{v}"
    );
    assert!(retry.is_some());
    let (_, v) = d.request("GET", "/api/memory/status", "");
    assert_eq!(v["pressure"]["episode"], true);

    // Triggers keep coming; the next shed waits out the 2 s cooldown. The pinned default
    // never goes.
    wait_until(&d, "the second shed", || {
        fire(&fifo);
        std::thread::sleep(Duration::from_millis(100));
        shed_count(&d) == 2
    });
    // The journal's times are when each unload finished, not when the monitor decided: a
    // loaded machine delays the first line more than the second (issue 50 measured 1.989 s
    // beside a release build). The exact spacing is the policy's, proved on a simulated clock
    // (`memory::policy` tests: pressure_must_persist_then_sheds_are_spaced); here, that the
    // daemon spaces sheds at all: without the cooldown the second would follow the first
    // within a trigger or two (100 ms apart).
    let at = shed_times(&d);
    assert!(
        at[1] - at[0] >= 1.5,
        "the second shed came {:.3} s after the first, inside the 2 s cooldown",
        at[1] - at[0]
    );
    assert_eq!(loaded(&d), [MODEL]);
    wait_until(&d, "nothing left to shed", || {
        fire(&fifo);
        std::thread::sleep(Duration::from_millis(100));
        d.log().contains("no unpinned model is loaded to shed")
    });
    assert_eq!(loaded(&d), [MODEL]);

    // Calm ends the episode and loads are admitted again.
    wait_until(&d, "the episode to end", || {
        d.log().contains("caxton_event=\"pressure_over\"")
    });
    assert_eq!(embed_with(&d, "m-low").0, 200);
}

/// Issue 15: a request whose model could only load after a wait longer than
/// `memory.load_queue.max_wait` (here a resident model's minute) is answered at once, 503
/// `insufficient_memory` with a `Retry-After` of the wait it needs, instead of holding up the
/// queue.
#[test]
fn a_wait_longer_than_max_wait_is_refused_at_once_with_retry_after() {
    // Two models fit in 250 MiB; a third must evict m-a, which stays resident for a minute.
    let d = daemon(
        &["m-a", "m-b"],
        "memory:\n  budget: 250MiB\n  min_residency: 60s\n  load_queue:\n    max_wait: 3s\n  models:\n    all-MiniLM-L6-v2: {pinned: true}\n",
        &[],
    );
    assert_eq!(embed_with(&d, "m-a").0, 200);
    let (s, v, retry) = embed_with(&d, "m-b");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("insufficient_memory")),
        "{v}"
    );
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(
        msg.starts_with("model m-b cannot be loaded now: it needs about ")
            && msg.contains("the budget of 250 MiB has")
            && msg.contains(
                "and the models that could make room loaded less than memory.min_residency (1m) ago, for "
            )
            && msg.contains("m-a "),
        "{msg}"
    );
    let retry: u64 = retry.expect("Retry-After").parse().expect("seconds");
    assert!((40..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(loaded(&d), [MODEL, "m-a"]);
}

/// Issue 15: requests whose model must wait queue first come, first served, at most
/// `max_waiting` of them; one more is refused at once. The head waits out m-a's residency,
/// makes room and is served; the one behind it then waits out the head's model's residency and
/// is served too.
#[test]
fn the_load_queue_is_bounded_and_serves_its_requests_in_turn() {
    let d = daemon(
        &["m-a", "m-b", "m-c"],
        "memory:\n  budget: 250MiB\n  min_residency: 4s\n  load_queue:\n    max_wait: 30s\n    max_waiting: 1\n  models:\n    all-MiniLM-L6-v2: {pinned: true}\n",
        &[],
    );
    assert_eq!(embed_with(&d, "m-a").0, 200);
    let client = |id: &'static str| {
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            let body = serde_json::json!({"model": id, "input": "hello"}).to_string();
            caxton::cli::client::blocking_request(
                &socket,
                hyper::Method::POST,
                "/v1/embeddings",
                Some(body.into_bytes()),
            )
            .map(|(s, _)| s.as_u16())
        })
    };
    let queue = |key: &str| {
        let (_, v) = d.request("GET", "/api/memory/status", "");
        v["load_queue"][key].clone()
    };
    let head = client("m-b");
    wait_until(&d, "m-b's load at the head of the queue", || {
        queue("admitting") == "m-b"
    });
    let behind = client("m-c");
    wait_until(&d, "m-c queued behind it", || queue("waiting") == 1);
    let (s, v, retry) = embed_with(&d, "m-c");
    assert_eq!(
        (s, v["error"]["message"].as_str()),
        (
            503,
            Some(
                "model m-c is not loaded and 1 requests already wait for models to load (memory.load_queue.max_waiting); retry later"
            )
        ),
        "{v}"
    );
    assert!(retry.is_some());
    assert_eq!(head.join().expect("client").expect("answer"), 200);
    assert_eq!(behind.join().expect("client").expect("answer"), 200);
    assert_eq!(queue("refused"), 1);
    assert_eq!(loaded(&d), [MODEL, "m-c"]);
    let log = d.log();
    let b = log.find("model m-b loaded").expect("m-b loaded");
    let c = log.find("model m-c loaded").expect("m-c loaded");
    assert!(b < c, "served out of turn: {log}");
}
