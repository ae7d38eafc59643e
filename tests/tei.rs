//! The rest of text-embeddings-inference's surface a client calls first: `GET /info`,
//! `POST /tokenize`, and `truncation_direction` on `POST /embed`.

mod common;

use common::{Daemon, cosine};
use serde_json::{Value, json};

fn embed_tei(d: &Daemon, body: Value) -> (u16, Value) {
    d.request("POST", "/embed", &body.to_string())
}

fn vector(v: &Value) -> Vec<f32> {
    v[0].as_array()
        .expect("a vector")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

#[test]
fn info_describes_the_default_model_without_loading_it() {
    let d = Daemon::start_with(
        |dir| common::write_config(dir, "limits:\n  max_inputs: 64\n"),
        &[],
    );
    d.request("DELETE", "/api/memory/models/all-MiniLM-L6-v2", "");
    let (status, v) = d.request("GET", "/info", "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model_id"], "all-MiniLM-L6-v2");
    assert_eq!(v["model_type"], json!({"embedding": {"pooling": "mean"}}));
    assert_eq!(v["model_dtype"], "float32");
    assert_eq!(v["max_input_length"], 256);
    assert_eq!(v["max_client_batch_size"], 64);
    assert_eq!(v["max_batch_tokens"], 8192);
    assert_eq!(v["kind"], "embedding");
    assert_eq!(v["dimensions"], 384);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["model_sha"].as_str().map(str::len), Some(64));
    assert_eq!(v["state"], "available", "/info loads nothing");
}

#[test]
fn decode_turns_tokenize_s_ids_back_into_text_and_names_what_it_refuses() {
    let d = Daemon::start();
    let post = |body: Value| d.request("POST", "/decode", &body.to_string());
    let (status, v) = d.request(
        "POST",
        "/tokenize",
        &json!({"inputs": "Hello, wörld"}).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    let ids: Vec<u64> = v[0]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["id"].as_u64().expect("id"))
        .collect();
    // MiniLM's tokenizer lowercases and strips accents; its decoder glues word pieces.
    assert_eq!(post(json!({"ids": ids})), (200, json!(["hello, world"])));
    assert_eq!(
        post(json!({"ids": [ids, [7592]], "skip_special_tokens": false})),
        (200, json!(["[CLS] hello, world [SEP]", "hello"]))
    );
    assert_eq!(
        post(json!({"ids": [], "model": "all-MiniLM-L6-v2"})),
        (200, json!([""]))
    );
    let refused = |body: Value| {
        let (status, v) = post(body);
        (
            status,
            v["error"]["code"].as_str().unwrap_or("?").to_string(),
            v["error"]["message"].as_str().unwrap_or("?").to_string(),
        )
    };
    assert_eq!(
        refused(json!({"ids": [[101], [102, 30522]]})),
        (
            400,
            "invalid_input".into(),
            "`ids[1][1]` is 30522, which is not a token id of model all-MiniLM-L6-v2 (its vocabulary has 30522 tokens); send ids from its /tokenize or /embed_sparse".into()
        )
    );
    assert_eq!(
        refused(json!({"ids": [101, -1]})),
        (
            400,
            "invalid_input".into(),
            "`ids[1]` is not a token id (a whole number from 0)".into()
        )
    );
    assert_eq!(
        refused(json!({"ids": [[101], 102]})),
        (
            400,
            "invalid_input".into(),
            "`ids[1]` is not a list, and ids[0] is: send one list of token ids, or lists only"
                .into()
        )
    );
    assert_eq!(
        refused(json!({"ids": "hello"})),
        (
            400,
            "invalid_input".into(),
            "`ids` is not a list; send token ids ([101, 7592]) or lists of them ([[101], [7592]])"
                .into()
        )
    );
    assert_eq!(refused(json!({"ids": [1], "model": "nope"})).0, 404);
}

#[test]
fn tokenize_reports_ids_special_tokens_and_byte_offsets() {
    let d = Daemon::start();
    let text = "Héllo wörld";
    let (status, v) = d.request("POST", "/tokenize", &json!({"inputs": text}).to_string());
    assert_eq!(status, 200, "{v}");
    let tokens = v[0].as_array().expect("one list");
    assert_eq!(
        tokens.first(),
        Some(&json!({"id": 101, "text": "[CLS]", "special": true, "start": null, "stop": null}))
    );
    assert_eq!(
        tokens.last(),
        Some(&json!({"id": 102, "text": "[SEP]", "special": true, "start": null, "stop": null}))
    );
    // Every other token covers its bytes of the text, in order.
    let mut end = 0;
    for t in &tokens[1..tokens.len() - 1] {
        let (start, stop) = (
            t["start"].as_u64().expect("start") as usize,
            t["stop"].as_u64().expect("stop") as usize,
        );
        assert!(start >= end && stop > start, "{t}");
        assert_eq!(t["text"], &text[start..stop], "{t}");
        assert_eq!(t["special"], false);
        end = stop;
    }
    assert_eq!(end, text.len());

    // Without special tokens, and a batch: one list per text.
    let (status, v) = d.request(
        "POST",
        "/tokenize",
        &json!({"inputs": ["hello world", "hello"], "add_special_tokens": false}).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!([
            [
                {"id": 7592, "text": "hello", "special": false, "start": 0, "stop": 5},
                {"id": 2088, "text": "world", "special": false, "start": 6, "stop": 11}
            ],
            [{"id": 7592, "text": "hello", "special": false, "start": 0, "stop": 5}]
        ])
    );

    // Untruncated: a text past max_seq_length keeps every token.
    let long = "word ".repeat(400);
    let (_, v) = d.request("POST", "/tokenize", &json!({"inputs": long}).to_string());
    assert_eq!(v[0].as_array().map(Vec::len), Some(402));

    let (status, v) = d.request("POST", "/tokenize", r#"{"inputs": []}"#);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("empty_input"))
    );
}

#[test]
fn truncation_direction_chooses_which_end_of_a_long_text_is_kept() {
    let d = Daemon::start();
    // 300 tokens of "cat" then 300 of "dog": 254 fit beside [CLS] and [SEP].
    let long = format!("{}{}", "cat ".repeat(300), "dog ".repeat(300));
    let (_, right) = embed_tei(&d, json!({"inputs": long, "truncate": true}));
    let (_, explicit) = embed_tei(
        &d,
        json!({"inputs": long, "truncate": true, "truncation_direction": "Right"}),
    );
    let (status, left) = embed_tei(
        &d,
        json!({"inputs": long, "truncate": true, "truncation_direction": "Left"}),
    );
    assert_eq!(status, 200, "{left}");
    let (_, cats) = embed_tei(&d, json!({"inputs": "cat ".repeat(254)}));
    let (_, dogs) = embed_tei(&d, json!({"inputs": "dog ".repeat(254)}));
    assert_eq!(right, explicit, "Right is the default");
    assert!(cosine(&vector(&right), &vector(&cats)) > 0.99999);
    assert!(cosine(&vector(&left), &vector(&dogs)) > 0.99999);
    assert!(cosine(&vector(&left), &vector(&cats)) < 0.99);

    let (status, v) = embed_tei(&d, json!({"inputs": "x", "truncation_direction": "Up"}));
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_truncation_direction");
    assert_eq!(
        v["error"]["message"],
        "`truncation_direction` is \"Up\"; it must be \"Right\" (cut the end of an over-long text, the default) or \"Left\" (cut its start)"
    );
    // Refusing over-long texts still refuses them, whichever end would be cut.
    let (status, v) = embed_tei(
        &d,
        json!({"inputs": long, "truncate": false, "truncation_direction": "Left"}),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("input_too_long"))
    );
}
