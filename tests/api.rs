//! Issue 2 API: response shapes and the exact status and error code of every bad request,
//! against the real daemon.

mod common;

use base64::Engine as _;
use common::{Daemon, write_config};
use serde_json::Value;

fn daemon() -> Daemon {
    Daemon::start_with(
        |dir| write_config(dir, "limits:\n  max_inputs: 4\n  max_body_bytes: 8KiB\n"),
        &[],
    )
}

fn assert_error(
    d: &Daemon,
    method: &str,
    path: &str,
    body: &str,
    status: u16,
    code: &str,
) -> String {
    let (s, v) = d.request(method, path, body);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (status, Some(code)),
        "{method} {path} {body:.80}: {v}"
    );
    assert!(v["error"]["type"].is_string(), "{v}");
    v["error"]["message"].as_str().expect("message").to_string()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

#[test]
fn bad_requests_get_their_own_status_and_code() {
    let d = daemon();
    let e = "/v1/embeddings";
    let m = assert_error(&d, "POST", e, "{\"input\": ", 400, "invalid_json");
    assert!(
        m.starts_with("the body is not valid JSON: EOF while parsing"),
        "{m}"
    );
    assert_error(&d, "POST", e, "not json", 400, "invalid_json");
    let m = assert_error(&d, "POST", e, "{}", 400, "invalid_request");
    assert!(m.contains("missing field `input`"), "{m}");
    let m = assert_error(
        &d,
        "POST",
        e,
        r#"{"input": "a", "temperature": 1}"#,
        400,
        "invalid_request",
    );
    assert!(m.contains("unknown field `temperature`"), "{m}");
    let m = assert_error(&d, "POST", e, r#"{"input": 5}"#, 400, "invalid_input");
    assert_eq!(
        m,
        "`input` must be a string or a list of strings, got a number"
    );
    let m = assert_error(
        &d,
        "POST",
        e,
        r#"{"input": [[101, 102]]}"#,
        400,
        "invalid_input",
    );
    assert_eq!(
        m,
        "`input[0]` is not a string; token arrays are not supported, send text"
    );
    assert_error(
        &d,
        "POST",
        e,
        r#"{"input": "a", "model": 5}"#,
        400,
        "invalid_request",
    );
    let m = assert_error(&d, "POST", e, r#"{"input": []}"#, 400, "empty_input");
    assert_eq!(m, "`input` is an empty list; send at least one text");
    let m = assert_error(&d, "POST", e, r#"{"input": ["a", ""]}"#, 400, "empty_input");
    assert_eq!(
        m,
        "`input[1]` is empty or only whitespace; send text to embed"
    );
    let m = assert_error(
        &d,
        "POST",
        e,
        r#"{"input": ["a","b","c","d","e"]}"#,
        413,
        "too_many_inputs",
    );
    assert!(m.contains("has 5 texts; at most 4"), "{m}");
    let big = format!(r#"{{"input": "{}"}}"#, "word ".repeat(4000));
    let m = assert_error(&d, "POST", e, &big, 413, "body_too_large");
    assert!(
        m.contains("larger than 8192 bytes (limits.max_body_bytes)"),
        "{m}"
    );
    let m = assert_error(
        &d,
        "POST",
        e,
        r#"{"input": "a", "model": "nope"}"#,
        404,
        "model_not_found",
    );
    assert_eq!(m, "model \"nope\" not found; available: all-MiniLM-L6-v2");
    let m = assert_error(
        &d,
        "POST",
        e,
        r#"{"input": "a", "encoding_format": "hex"}"#,
        400,
        "invalid_encoding_format",
    );
    assert_eq!(
        m,
        "encoding_format \"hex\" is not supported; use \"float\" or \"base64\""
    );
    let m = assert_error(
        &d,
        "POST",
        e,
        r#"{"input": "a", "dimensions": 0}"#,
        400,
        "invalid_dimensions",
    );
    assert_eq!(
        m,
        "dimensions must be between 1 and 384 for model all-MiniLM-L6-v2, got 0"
    );
    assert_error(
        &d,
        "POST",
        e,
        r#"{"input": "a", "dimensions": 385}"#,
        400,
        "invalid_dimensions",
    );

    let t = "/embed";
    assert_error(&d, "POST", t, "[", 400, "invalid_json");
    let m = assert_error(&d, "POST", t, r#"{"inputs": []}"#, 400, "empty_input");
    assert_eq!(m, "`inputs` is an empty list; send at least one text");
    assert_error(
        &d,
        "POST",
        t,
        r#"{"inputs": "a", "normalize": "yes"}"#,
        400,
        "invalid_request",
    );
    let long = format!(
        r#"{{"inputs": "{}", "truncate": false}}"#,
        "word ".repeat(300)
    );
    let m = assert_error(&d, "POST", t, &long, 413, "input_too_long");
    assert_eq!(
        m,
        "input 0 is longer than the 256 tokens model all-MiniLM-L6-v2 accepts; shorten it or set \"truncate\": true"
    );

    assert_error(&d, "GET", "/nope", "", 404, "not_found");
    let m = assert_error(&d, "GET", e, "", 405, "method_not_allowed");
    assert_eq!(m, "GET is not allowed on /v1/embeddings");
}

#[test]
fn response_shapes_follow_the_contract() {
    let d = daemon();
    let (s, v) = d.request(
        "POST",
        "/v1/embeddings",
        r#"{"input": ["hello world", "a cat"]}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "all-MiniLM-L6-v2");
    assert_eq!(v["data"][1]["object"], "embedding");
    assert_eq!(v["data"][1]["index"], 1);
    let first = floats(&v["data"][0]["embedding"]);
    assert_eq!(first.len(), 384);
    assert!((norm(&first) - 1.0).abs() < 1e-5);
    // "hello world" is [CLS] hello world [SEP], "a cat" [CLS] a cat [SEP].
    assert_eq!(v["usage"]["prompt_tokens"], 8);
    assert_eq!(v["usage"]["total_tokens"], 8);

    // base64 carries the same little-endian f32 values.
    let (_, b) = d.request(
        "POST",
        "/v1/embeddings",
        r#"{"input": "hello world", "encoding_format": "base64"}"#,
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().expect("base64 string"))
        .expect("valid base64");
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, first);

    // dimensions shortens and re-normalises.
    let (_, s64) = d.request(
        "POST",
        "/v1/embeddings",
        r#"{"input": "hello world", "dimensions": 64}"#,
    );
    let short = floats(&s64["data"][0]["embedding"]);
    assert_eq!(short.len(), 64);
    assert!((norm(&short) - 1.0).abs() < 1e-5);
    let scale = norm(&first[..64]);
    assert!((short[5] - first[5] / scale).abs() < 1e-6);

    // TEI /embed: array of arrays; normalize false gives the raw mean-pooled vector.
    let (s, t) = d.request("POST", "/embed", r#"{"inputs": "hello world"}"#);
    assert_eq!(s, 200, "{t}");
    assert_eq!(floats(&t[0]), first);
    let (_, raw) = d.request(
        "POST",
        "/embed",
        r#"{"inputs": ["hello world"], "normalize": false}"#,
    );
    let raw = floats(&raw[0]);
    assert!(
        (norm(&raw) - 1.0).abs() > 1e-3,
        "unnormalised vector has norm {}",
        norm(&raw)
    );
    assert!(common::cosine(&raw, &first) > 0.99999);

    let (s, m) = d.request("GET", "/v1/models", "");
    assert_eq!(s, 200);
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "all-MiniLM-L6-v2");
    assert_eq!(m["data"][0]["object"], "model");
    assert!(m["data"][0]["created"].as_u64().is_some());

    let (s, h) = d.request("GET", "/health", "");
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));

    let (_, a) = d.request("GET", "/api/models", "");
    let entry = &a["data"][0];
    assert_eq!(entry["state"], "loaded");
    assert_eq!(entry["source"], "bundled");
    assert!(entry["use_count"].as_u64().expect("use_count") >= 3);
    assert!(entry["memory_bytes"].as_u64().expect("memory") > 80_000_000);
}

#[test]
fn the_socket_has_mode_0660() {
    use std::os::unix::fs::PermissionsExt;
    let d = daemon();
    let mode = std::fs::metadata(&d.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o660);
}

/// Issue 35: a width the model cannot give is the caller's mistake, refused before anything
/// loads: the model stays unloaded, so a bad `dimensions` costs no load and no pass.
#[test]
fn a_bad_dimensions_is_refused_before_the_model_loads() {
    let d = daemon();
    let id = "all-MiniLM-L6-v2";
    let state = |d: &Daemon| common::model_entry(d, id).expect("entry")["state"].clone();
    // The daemon loads its default model at start: unloaded, only a request loads it again.
    let (s, v) = d.request("DELETE", &format!("/api/memory/models/{id}"), "");
    assert_eq!((s, &v["unloaded"]), (200, &Value::Bool(true)), "{v}");
    assert_eq!(state(&d), "available");
    for (dimensions, message) in [
        (
            "0",
            "dimensions must be between 1 and 384 for model all-MiniLM-L6-v2, got 0",
        ),
        (
            "385",
            "dimensions must be between 1 and 384 for model all-MiniLM-L6-v2, got 385",
        ),
        (
            "-1",
            "dimensions must be between 1 and 384 for model all-MiniLM-L6-v2, got -1",
        ),
    ] {
        let body = format!(r#"{{"input": "a", "dimensions": {dimensions}}}"#);
        let m = assert_error(
            &d,
            "POST",
            "/v1/embeddings",
            &body,
            400,
            "invalid_dimensions",
        );
        assert_eq!(m, message);
        assert_eq!(
            state(&d),
            "available",
            "dimensions {dimensions} loaded the model"
        );
    }
    // The same request with a width it can give loads the model and answers at that width.
    let (s, v) = d.request(
        "POST",
        "/v1/embeddings",
        r#"{"input": "a", "dimensions": 64}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(floats(&v["data"][0]["embedding"]).len(), 64);
    assert_eq!(state(&d), "loaded");
}
