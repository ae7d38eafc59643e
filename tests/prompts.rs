//! Issue 7: per-model prompts (e5's "query: " / "passage: "): a request names one with
//! `prompt_name` (OpenAI extension, TEI field), a model may have a default, and an unknown
//! name is a 400 naming the model's prompts.

mod common;

use common::{Daemon, bundled_copy_edit, cosine, write_config};

fn embed(d: &Daemon, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    d.request("POST", path, &body.to_string())
}

fn vector(v: &serde_json::Value) -> Vec<f32> {
    let arr = if v.is_array() {
        &v[0]
    } else {
        &v["data"][0]["embedding"]
    };
    arr.as_array()
        .expect("vector")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

fn daemon() -> Daemon {
    Daemon::start_with(
        |dir| {
            write_config(dir, "");
            std::fs::create_dir_all(dir.join("packages")).expect("mkdir");
            bundled_copy_edit(&dir.join("packages/e5-like.tar.zst"), |m| {
                m.replace("id: all-MiniLM-L6-v2", "id: e5-like").replace(
                    "files:",
                    "prompts:\n  query: 'query: '\n  passage: 'passage: '\ndefault_prompt: passage\nfiles:",
                )
            });
        },
        &[],
    )
}

#[test]
fn a_named_prompt_is_put_before_the_text() {
    let d = daemon();
    let (s, plain) = embed(
        &d,
        "/v1/embeddings",
        serde_json::json!({"model": MINILM, "input": "query: how warm is Lisbon"}),
    );
    assert_eq!(s, 200, "{plain}");
    let (s, prompted) = embed(
        &d,
        "/v1/embeddings",
        serde_json::json!({"model": "e5-like", "input": "how warm is Lisbon", "prompt_name": "query"}),
    );
    assert_eq!(s, 200, "{prompted}");
    // Same weights, so the prompted text must embed exactly as the text with the prefix.
    assert!(cosine(&vector(&plain), &vector(&prompted)) > 0.999999);
    assert_eq!(
        plain["usage"]["prompt_tokens"],
        prompted["usage"]["prompt_tokens"]
    );

    // No prompt_name: the model's default ("passage: ") applies.
    let (_, default) = embed(
        &d,
        "/v1/embeddings",
        serde_json::json!({"model": "e5-like", "input": "how warm is Lisbon"}),
    );
    let (_, passage) = embed(
        &d,
        "/v1/embeddings",
        serde_json::json!({"model": MINILM, "input": "passage: how warm is Lisbon"}),
    );
    assert!(cosine(&vector(&default), &vector(&passage)) > 0.999999);
}

const MINILM: &str = "all-MiniLM-L6-v2";

#[test]
fn unknown_prompts_are_refused_naming_the_choices() {
    let d = daemon();
    let (s, v) = embed(
        &d,
        "/v1/embeddings",
        serde_json::json!({"model": "e5-like", "input": "x", "prompt_name": "question"}),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("unknown_prompt"))
    );
    assert_eq!(
        v["error"]["message"],
        "model e5-like has no prompt \"question\"; its prompts: passage, query"
    );
    // TEI's /embed serves the default model, which has no prompts.
    let (s, v) = embed(
        &d,
        "/embed",
        serde_json::json!({"inputs": "x", "prompt_name": "query"}),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["error"]["message"],
        format!("model {MINILM} has no prompt \"query\"; it has none, leave prompt_name out")
    );
}
