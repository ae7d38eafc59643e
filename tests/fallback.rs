//! Issue 21, fallback chains: the real caxtond with real packages answers a request for a
//! model that cannot serve (failed, removed) with an alternative of the same width, says so
//! in the body, headers, metrics and journal (once per episode), refuses lists of another
//! width, changes nothing under `strict`, and answers an exhausted chain with the model's own
//! error naming the alternatives tried.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::packages::{bundled_copy, bundled_copy_poisoned, bundled_copy_with_id};
use common::{Daemon, model_entry, sample, scrape, wait_until, write_config};
use serde_json::{Value, json};

const DEFAULT: &str = "all-MiniLM-L6-v2";
/// What a poisoned copy of the bundled model fails with.
const NAN: &str = "self-test at load failed: value 0 of the vector is NaN (the weights compute non-finite numbers)";

/// A daemon whose package directory `packages` fills, with `yaml` as its drop-in.
fn start(packages: impl FnOnce(&Path), yaml: &str) -> Daemon {
    let yaml = yaml.to_string();
    Daemon::start_with(
        move |dir| {
            write_config(dir, "");
            std::fs::create_dir(dir.join("packages")).expect("mkdir");
            packages(&dir.join("packages"));
            std::fs::create_dir(dir.join("conf.d")).expect("mkdir");
            std::fs::write(dir.join("conf.d/50-test.yaml"), yaml).expect("write");
        },
        &[],
    )
}

/// `broken` (it verifies, and fails its load's self-test) and `mini` (the bundled model).
fn broken_and_mini(p: &Path) {
    bundled_copy_poisoned(
        &p.join("broken.tar.zst"),
        "broken",
        "embeddings.LayerNorm.weight",
    );
    bundled_copy_with_id(&p.join("mini.tar.zst"), "mini");
}

/// `POST path` with `body`: status, headers, JSON.
fn post(d: &Daemon, path: &str, body: Value) -> (u16, HashMap<String, String>, Value) {
    let (status, headers, bytes) = d
        .try_request_with_headers("POST", path, Some(&body.to_string()))
        .expect("request");
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, v)
}

/// One text through `/v1/embeddings` with `model`.
fn embed(d: &Daemon, model: &str) -> (u16, HashMap<String, String>, Value) {
    post(
        d,
        "/v1/embeddings",
        json!({"input": "the same text", "model": model}),
    )
}

/// The substitution headers of a response: (served by, reason).
fn substitution(h: &HashMap<String, String>) -> (Option<&str>, Option<&str>) {
    (
        h.get("x-caxton-served-by").map(String::as_str),
        h.get("x-caxton-fallback").map(String::as_str),
    )
}

/// Journal lines of `event` (exactly that event, not one it prefixes).
fn events(d: &Daemon, event: &str) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| l.contains(&format!("caxton_event=\"{event}\"")))
        .map(str::to_string)
        .collect()
}

fn fallbacks_counted(d: &Daemon, requested: &str, served: &str, reason: &str) -> Option<f64> {
    sample(
        &scrape(d),
        "caxton_fallback_total",
        &[
            ("requested", requested),
            ("served", served),
            ("reason", reason),
        ],
    )
}

#[test]
fn a_failed_model_is_answered_by_its_listed_alternative_until_it_loads_again() {
    let d = start(
        broken_and_mini,
        "models:\n  fallback_strategy: listed\n  fallbacks:\n    broken: [gone, mini]\n",
    );
    let (status, _, own) = embed(&d, "mini");
    assert_eq!(status, 200, "{own}");

    // The first request tries the load (it fails), the second meets the backoff: both are
    // answered by mini, and say so.
    for _ in 0..2 {
        let (status, headers, v) = embed(&d, "broken");
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["model"], "mini");
        assert_eq!(substitution(&headers), (Some("mini"), Some("failed")));
        assert_eq!(v["data"], own["data"], "mini's own vectors");
    }
    assert_eq!(
        model_entry(&d, "broken").expect("listed")["state"],
        "failed"
    );
    assert_eq!(fallbacks_counted(&d, "broken", "mini", "failed"), Some(2.0));
    let started = events(&d, "model_fallback");
    assert_eq!(started.len(), 1, "once per episode: {started:?}");
    assert!(
        started[0].contains(&format!(
            "requests for model broken are answered by mini (not gone): broken is failing to load (model \"broken\" failed to load: {NAN}; see the daemon's journal (CAXTON_EVENT=model_load_failed), then replace the package); this is logged once until broken serves again"
        )),
        "{}",
        started[0]
    );
    assert!(
        started[0].contains("caxton_served_by=mini"),
        "{}",
        started[0]
    );
    assert!(
        started[0].contains("caxton_reason=\"failed\""),
        "{}",
        started[0]
    );
    // Asking for mini itself is no substitution.
    let (_, headers, _) = embed(&d, "mini");
    assert_eq!(substitution(&headers), (None, None));

    // A good version 2 of broken arrives: broken answers itself again, and the episode ends
    // with one line.
    bundled_copy(
        &d.dir.path().join("packages/broken-2.tar.zst"),
        "broken",
        "2",
    );
    wait_until(&d, "broken version 2", || {
        model_entry(&d, "broken").is_some_and(|m| m["version"] == "2")
    });
    for _ in 0..2 {
        let (status, headers, v) = embed(&d, "broken");
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["model"], "broken");
        assert_eq!(substitution(&headers), (None, None));
    }
    let ended = events(&d, "model_fallback_end");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(
        ended[0].contains(
            "model broken serves its requests again; 2 requests were answered by mini over"
        ),
        "{}",
        ended[0]
    );
    assert_eq!(events(&d, "model_fallback").len(), 1);
    assert_eq!(fallbacks_counted(&d, "broken", "mini", "failed"), Some(2.0));
}

#[test]
fn a_removed_package_is_answered_by_the_bundled_model_under_auto() {
    let d = start(
        |p| bundled_copy_with_id(&p.join("side.tar.zst"), "side"),
        "models:\n  fallback_strategy: auto\n",
    );
    let (status, _, v) = embed(&d, "side");
    assert_eq!((status, &v["model"]), (200, &json!("side")));
    std::fs::remove_file(d.dir.path().join("packages/side.tar.zst")).expect("remove");
    wait_until(&d, "side gone", || model_entry(&d, "side").is_none());

    let (_, _, own) = embed(&d, DEFAULT);
    let (status, headers, v) = embed(&d, "side");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], DEFAULT);
    assert_eq!(substitution(&headers), (Some(DEFAULT), Some("missing")));
    assert_eq!(v["data"], own["data"]);
    assert_eq!(fallbacks_counted(&d, "side", DEFAULT, "missing"), Some(1.0));
    let started = events(&d, "model_fallback");
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(
        started[0].contains(&format!(
            "requests for model side are answered by {DEFAULT}: side is not installed (no verified package) (model \"side\" not found; available: {DEFAULT}); this is logged once until side serves again"
        )),
        "{}",
        started[0]
    );

    // The bundled model is too narrow for 500 dimensions: the model's own 404, naming what
    // was tried. A name never installed here nor configured is a typo: a plain 404.
    let (status, headers, v) = post(
        &d,
        "/v1/embeddings",
        json!({"input": "x", "model": "side", "dimensions": 500}),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    assert_eq!(
        v["error"]["message"],
        format!(
            "model \"side\" not found; available: {DEFAULT}; alternatives tried (models.fallback_strategy auto): {DEFAULT} (384 dimensions, the request asks for 500)"
        )
    );
    assert_eq!(substitution(&headers), (None, None));
    let (status, _, v) = embed(&d, "never");
    assert_eq!(status, 404, "{v}");
    assert_eq!(
        v["error"]["message"],
        format!("model \"never\" not found; available: {DEFAULT}")
    );
    assert_eq!(fallbacks_counted(&d, "never", DEFAULT, "missing"), None);
}

#[test]
fn strict_changes_nothing_even_with_lists() {
    let d = start(
        broken_and_mini,
        "models:\n  fallbacks:\n    broken: [mini]\n    gone: [mini]\n",
    );
    let (status, headers, v) = embed(&d, "broken");
    assert_eq!(status, 503, "{v}");
    assert_eq!(
        v["error"]["message"],
        format!(
            "model \"broken\" failed to load: {NAN}; see the daemon's journal (CAXTON_EVENT=model_load_failed), then replace the package"
        )
    );
    assert_eq!(substitution(&headers), (None, None));
    assert!(headers.contains_key("retry-after"));
    let (status, headers, v) = embed(&d, "gone");
    assert_eq!(status, 404, "{v}");
    assert_eq!(
        v["error"]["message"],
        format!("model \"gone\" not found; available: {DEFAULT}, broken, mini")
    );
    assert_eq!(substitution(&headers), (None, None));
    assert!(
        !scrape(&d)
            .iter()
            .any(|(n, _, _)| n == "caxton_fallback_total"),
        "no substitution is counted"
    );
    assert!(events(&d, "model_fallback").is_empty());
}

#[test]
fn a_list_of_another_width_or_kind_is_refused_at_config_load() {
    let d = start(
        |p| {
            common::fixtures::embedding_package("bert", "tiny", p);
            common::fixtures::reranker_package("bert", "tiny-ce", p);
        },
        "models:\n  fallback_strategy: listed\n",
    );
    let dropin = d.dir.path().join("conf.d/50-test.yaml");
    for (yaml, message) in [
        (
            format!(
                "models:\n  fallback_strategy: listed\n  fallbacks:\n    {DEFAULT}: [gone, tiny]\n"
            ),
            format!(
                "models.fallbacks.{DEFAULT}[1]: tiny produces 32-dimensional vectors and {DEFAULT} 384-dimensional ones; vectors of another width would corrupt a caller's index. List a model of width 384, or set models.allow_dimension_mismatch: true"
            ),
        ),
        (
            format!(
                "models:\n  allow_dimension_mismatch: true\n  fallbacks:\n    {DEFAULT}: [tiny-ce]\n"
            ),
            format!(
                "models.fallbacks.{DEFAULT}[0]: tiny-ce is a reranker and {DEFAULT} is an embedding model; an alternative must be of its model's kind"
            ),
        ),
        (
            "models:\n  fallbacks:\n    tiny: [tiny]\n".to_string(),
            "models.fallbacks.tiny[0]: tiny is listed as its own alternative".to_string(),
        ),
    ] {
        std::fs::write(&dropin, yaml).expect("write");
        let (s, v) = d.request("POST", "/api/reload", "");
        assert_eq!(s, 422, "{v}");
        assert_eq!(v["error"]["code"], "config_rejected");
        let got = v["error"]["message"].as_str().expect("message");
        assert!(
            got.ends_with(&message),
            "{got}\nwanted it to end with\n{message}"
        );
    }
    // Allowed on purpose, it applies, and a narrower alternative answers.
    std::fs::write(
        &dropin,
        "models:\n  fallback_strategy: listed\n  allow_dimension_mismatch: true\n  fallbacks:\n    gone: [tiny]\n",
    )
    .expect("write");
    let (s, v) = d.request("POST", "/api/reload", "");
    assert_eq!(s, 200, "{v}");
    let (status, headers, v) = embed(&d, "gone");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["data"][0]["embedding"].as_array().map(Vec::len), Some(32));
    assert_eq!(substitution(&headers), (Some("tiny"), Some("missing")));
}

#[test]
fn an_exhausted_chain_answers_the_models_own_error_naming_what_was_tried() {
    // `later` (width 32) is installed at start under a list that names it for a 384-wide
    // model: too late to refuse the configuration, so the journal says so and it never answers.
    let d = start(
        |p| {
            bundled_copy_poisoned(
                &p.join("broken.tar.zst"),
                "broken",
                "embeddings.LayerNorm.weight",
            );
            bundled_copy_poisoned(
                &p.join("broken2.tar.zst"),
                "broken2",
                "embeddings.LayerNorm.weight",
            );
            common::fixtures::embedding_package("bert", "later", p);
        },
        "models:\n  fallback_strategy: listed\n  fallbacks:\n    broken: [gone, broken2, later]\n",
    );
    let refused = events(&d, "fallback_refused");
    assert_eq!(refused.len(), 1, "{}", d.log());
    assert!(
        refused[0].contains(
            "models.fallbacks.broken[2]: later produces 32-dimensional vectors and broken 384-dimensional ones"
        ),
        "{}",
        refused[0]
    );
    let (status, headers, v) = embed(&d, "broken");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "model_load_failed");
    assert_eq!(
        v["error"]["message"],
        format!(
            "model \"broken\" failed to load: {NAN}; see the daemon's journal (CAXTON_EVENT=model_load_failed), then replace the package; alternatives tried (models.fallback_strategy listed): gone (not installed); later (32 dimensions, not 384; models.allow_dimension_mismatch is false); broken2 (failed to load: {NAN})"
        )
    );
    assert_eq!(headers.get("retry-after").map(String::as_str), Some("2"));
    assert_eq!(substitution(&headers), (None, None));
    assert!(events(&d, "model_fallback").is_empty());
}

/// Issue 35: a width no model can give is refused before anything loads, a substitute
/// included: the alternative is not loaded to find out, it is named with the reason.
#[test]
fn a_bad_dimensions_loads_no_substitute() {
    let d = start(
        |p| bundled_copy_with_id(&p.join("mini.tar.zst"), "mini"),
        "models:\n  fallback_strategy: listed\n  allow_dimension_mismatch: true\n  fallbacks:\n    gone: [mini]\n",
    );
    assert_eq!(model_entry(&d, "mini").expect("mini")["state"], "available");
    let (status, _, v) = post(
        &d,
        "/v1/embeddings",
        json!({"input": "x", "model": "gone", "dimensions": -1}),
    );
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("model_not_found")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().expect("message");
    assert!(
        message.ends_with("alternatives tried (models.fallback_strategy listed): mini (dimensions must be between 1 and 384 for model mini, got -1)"),
        "{message}"
    );
    assert_eq!(
        model_entry(&d, "mini").expect("mini")["state"],
        "available",
        "mini was loaded to find out"
    );
}
