//! Issue 30 over the socket: what a request may ask of its vectors. `dimensions` is checked
//! against the model's Matryoshka widths before anything loads, and cuts after the family's own
//! step; `input_type` picks the model's prompt; a text past the model's length is refused
//! unless the request (or `limits.auto_truncate`) says to cut it, and a cut is named in
//! `X-Caxton-Truncated`. The model is the bundled MiniLM's weights under a manifest that says
//! what nomic-embed-text-v1.5's does, so every answer can be checked against MiniLM's own.

mod common;

use common::{Daemon, bundled_copy_edit, cosine, model_entry, write_config};
use serde_json::{Value, json};

const MINILM: &str = "all-MiniLM-L6-v2";
const NOMIC_LIKE: &str = "nomic-like";

fn daemon(extra: &str) -> Daemon {
    let extra = extra.to_string();
    Daemon::start_with(
        move |dir| {
            write_config(dir, &extra);
            std::fs::create_dir_all(dir.join("packages")).expect("mkdir");
            bundled_copy_edit(&dir.join("packages/nomic-like.tar.zst"), |m| {
                m.replace("id: all-MiniLM-L6-v2", "id: nomic-like").replace(
                    "files:",
                    "prompts:\n  search_query: 'search_query: '\n  search_document: 'search_document: '\n\
                     matryoshka:\n  dimensions: [384, 256, 128]\n  layer_norm: true\nfiles:",
                )
            });
        },
        &[],
    )
}

fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.request("POST", path, &body.to_string())
}

fn vector(v: &Value) -> Vec<f32> {
    v["data"][0]["embedding"]
        .as_array()
        .expect("vector")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

fn error(v: &Value) -> (&str, &str) {
    (
        v["error"]["code"].as_str().unwrap_or("?"),
        v["error"]["message"].as_str().unwrap_or("?"),
    )
}

#[test]
fn a_width_the_model_was_not_trained_for_is_refused_before_it_loads() {
    let d = daemon("");
    let state = |d: &Daemon| model_entry(d, NOMIC_LIKE).expect("entry")["state"].clone();
    assert_eq!(state(&d), "available");
    for (dims, message) in [
        (
            json!(100),
            "model nomic-like was trained for 384, 256, 128 dimensions; 100 is not one of them",
        ),
        (
            json!(0),
            "dimensions must be between 1 and 384 for model nomic-like, got 0",
        ),
        (
            json!(-3),
            "dimensions must be between 1 and 384 for model nomic-like, got -3",
        ),
        (
            json!(500),
            "dimensions must be between 1 and 384 for model nomic-like, got 500",
        ),
    ] {
        let (s, v) = post(
            &d,
            "/v1/embeddings",
            json!({"model": NOMIC_LIKE, "input": "a", "dimensions": dims}),
        );
        assert_eq!((s, error(&v)), (400, ("invalid_dimensions", message)));
    }
    // Nothing was loaded to find that out.
    assert_eq!(state(&d), "available");
    assert!(!d.log().contains("model nomic-like loaded"), "{}", d.log());
}

#[test]
fn a_trained_width_is_the_family_step_then_the_cut_then_unit_length() {
    let d = daemon("");
    let text = "Lisbon is warm in September";
    let (s, full) = post(
        &d,
        "/v1/embeddings",
        json!({"model": MINILM, "input": text}),
    );
    assert_eq!(s, 200, "{full}");
    let full = vector(&full);
    for width in [256usize, 128] {
        let (s, v) = post(
            &d,
            "/v1/embeddings",
            json!({"model": NOMIC_LIKE, "input": text, "dimensions": width}),
        );
        assert_eq!(s, 200, "{v}");
        let got = vector(&v);
        assert_eq!(got.len(), width);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        // nomic's recipe: layer norm without weights over the full vector, cut, normalise.
        let n = full.len() as f32;
        let mean = full.iter().sum::<f32>() / n;
        let centred: Vec<f32> = full.iter().map(|x| x - mean).collect();
        let want = &centred[..width];
        assert!(
            cosine(&got, want) > 0.99999,
            "{width}: {}",
            cosine(&got, want)
        );
    }
}

#[test]
fn input_type_picks_the_model_s_prompt() {
    let d = daemon("");
    let tokens = |v: &Value| v["usage"]["prompt_tokens"].as_u64().expect("tokens");
    for (input_type, prefix) in [
        ("query", "search_query: "),
        ("document", "search_document: "),
    ] {
        let (s, typed) = post(
            &d,
            "/v1/embeddings",
            json!({"model": NOMIC_LIKE, "input": "how warm is Lisbon", "input_type": input_type}),
        );
        assert_eq!(s, 200, "{typed}");
        let (s, by_hand) = post(
            &d,
            "/v1/embeddings",
            json!({"model": MINILM, "input": format!("{prefix}how warm is Lisbon")}),
        );
        assert_eq!(s, 200, "{by_hand}");
        assert!(cosine(&vector(&typed), &vector(&by_hand)) > 0.999999);
        assert_eq!(tokens(&typed), tokens(&by_hand));
    }
    // A model without prompts takes input_type and puts nothing before the text.
    let (_, typed) = post(
        &d,
        "/v1/embeddings",
        json!({"model": MINILM, "input": "x", "input_type": "query"}),
    );
    let (_, plain) = post(&d, "/v1/embeddings", json!({"model": MINILM, "input": "x"}));
    assert_eq!(vector(&typed), vector(&plain));

    let (s, v) = post(
        &d,
        "/v1/embeddings",
        json!({"model": NOMIC_LIKE, "input": "x", "input_type": "passage"}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            400,
            (
                "invalid_input_type",
                "`input_type` is \"passage\"; it must be \"query\" (a search query) or \"document\" (a text searched for)"
            )
        )
    );
    let (s, v) = post(
        &d,
        "/v1/embeddings",
        json!({"model": NOMIC_LIKE, "input": "x", "input_type": "query", "prompt_name": "search_query"}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            400,
            ("unknown_prompt", "give prompt_name or input_type, not both")
        )
    );
}

#[test]
fn a_long_text_is_refused_unless_cutting_is_asked_for_and_a_cut_is_named() {
    let d = daemon("");
    let long = "word ".repeat(400);
    let refused = "input 1 is longer than the 256 tokens model all-MiniLM-L6-v2 accepts; shorten it or set \"truncate\": true";
    for (path, body) in [
        ("/v1/embeddings", json!({"input": ["short", long]})),
        ("/embed", json!({"inputs": ["short", long]})),
    ] {
        let (s, v) = post(&d, path, body);
        assert_eq!((s, error(&v)), (413, ("input_too_long", refused)), "{path}");
    }
    let (_, info) = d.request("GET", "/info", "");
    assert_eq!(info["auto_truncate"], false);
    for (path, body) in [
        (
            "/v1/embeddings",
            json!({"input": ["short", long], "truncate": true}),
        ),
        (
            "/embed",
            json!({"inputs": ["short", long], "truncate": true}),
        ),
    ] {
        let (s, headers, body) = d
            .try_request_with_headers("POST", path, Some(&body.to_string()))
            .expect(path);
        assert_eq!(s, 200, "{path}: {}", String::from_utf8_lossy(&body));
        assert_eq!(
            headers.get("x-caxton-truncated").map(String::as_str),
            Some("1"),
            "{path}"
        );
    }
    // Nothing cut, nothing said.
    let (s, headers, _) = d
        .try_request_with_headers("POST", "/embed", Some(r#"{"inputs": "short"}"#))
        .expect("/embed");
    assert_eq!(s, 200);
    assert!(!headers.contains_key("x-caxton-truncated"));
}

#[test]
fn auto_truncate_cuts_what_requests_do_not_decide_and_says_so() {
    let d = daemon("limits:\n  auto_truncate: true\n");
    let long = "word ".repeat(400);
    let (_, info) = d.request("GET", "/info", "");
    assert_eq!(info["auto_truncate"], true);
    let (s, headers, _) = d
        .try_request_with_headers(
            "POST",
            "/v1/embeddings",
            Some(&json!({"input": [long, "short", long]}).to_string()),
        )
        .expect("POST");
    assert_eq!(s, 200);
    assert_eq!(
        headers.get("x-caxton-truncated").map(String::as_str),
        Some("0,2")
    );
    // A request that says no is still refused.
    let (s, v) = post(&d, "/embed", json!({"inputs": long, "truncate": false}));
    assert_eq!((s, error(&v).0), (413, "input_too_long"));
}
