//! Issue 52, goal 2: late interaction (ColBERT). A tiny BERT with a 32→16 projection
//! (tests/fixtures/architectures/colbert.py), saved by sentence-transformers'
//! MultiVectorEncoder with query and document prompts, query expansion by [MASK] tokens and a
//! punctuation skip-list, packed with `caxton pack`, served by the daemon: `/embed_all`'s token
//! vectors against `encode_query`/`encode_document`, and `/rerank`'s and `/v1/rerank`'s MaxSim
//! against `MultiVectorEncoder.similarity`.

mod common;

use caxton::package::{ModelKind, Pooling};
use common::colbert::{
    colbert_folder, colbert_layout_folder, colbert_package, colbert_reference, layouts_reference,
    measure, post, token_vectors,
};
use common::{Daemon, model_entry, write_config, write_precisions};
use serde_json::{Value, json};

fn error(v: &Value) -> (String, String) {
    (
        v["error"]["code"].as_str().unwrap_or("?").to_string(),
        v["error"]["message"].as_str().unwrap_or("?").to_string(),
    )
}

/// The fixed variant as `tiny-colbert` in f32, `-int8` and `-int8-fast`; the min-attend one
/// as `tiny-colbert-min`.
fn colbert_daemon() -> Daemon {
    Daemon::start_with(
        |dir| {
            // The bundled model and four ColBERT variants, all at once: none waits for another
            // to make room.
            write_config(dir, "memory:\n  max_loaded_models: 5\n");
            write_precisions(
                dir,
                &[
                    ("tiny-colbert-int8", "int8"),
                    ("tiny-colbert-int8-fast", "int8-fast"),
                ],
            );
            let packages = dir.join("packages");
            for id in [
                "tiny-colbert",
                "tiny-colbert-int8",
                "tiny-colbert-int8-fast",
            ] {
                let (_, m) = colbert_package(id, &packages, "fixed");
                assert_eq!(
                    (m.kind, m.pooling),
                    (ModelKind::MultiVector, Pooling::Tokens)
                );
                assert_eq!((m.dimensions, m.normalize), (16, true));
                let li = m.late_interaction.expect("late_interaction");
                // Fixed expansion: queries cut at and padded to 12 tokens with [MASK] (id 4).
                assert_eq!((li.query_length, li.document_length), (12, 24));
                let x = li.query_expansion.expect("expansion");
                assert_eq!((x.token_id, x.length, x.attend), (4, 12, false));
                assert!(!li.skiplist.is_empty(), "punctuation");
            }
            let (_, m) = colbert_package("tiny-colbert-min", &packages, "min-attend");
            let li = m.late_interaction.expect("late_interaction");
            assert_eq!((li.query_length, li.document_length), (20, 28));
            let x = li.query_expansion.expect("expansion");
            assert_eq!((x.length, x.attend), (10, true));
        },
        &[],
    )
}

#[test]
fn token_vectors_and_maxsim_match_multi_vector_encoder() {
    let r = colbert_reference();
    let d = colbert_daemon();
    for (variant, id) in [
        ("fixed", "tiny-colbert"),
        ("min-attend", "tiny-colbert-min"),
    ] {
        let v = &r.variants[variant];
        let (cos, score) = measure(&d, id, v);
        println!(
            "{variant} f32: worst token cosine {cos:.7}, worst MaxSim relative difference {score:.2e}"
        );
        assert!(cos >= 0.9999, "{variant}: {cos}");
        assert!(score <= 1e-4, "{variant}: {score}");
    }
    // The reduced precisions of the fixed variant, their floors stated.
    let v = &r.variants["fixed"];
    for (id, cos_floor, score_floor) in [
        ("tiny-colbert-int8", 0.999, 1e-2),
        ("tiny-colbert-int8-fast", 0.999, 1e-2),
    ] {
        let (cos, score) = measure(&d, id, v);
        println!("{id}: worst token cosine {cos:.5}, worst MaxSim relative difference {score:.2e}");
        assert!(cos >= cos_floor, "{id}: {cos}");
        assert!(score <= score_floor, "{id}: {score}");
    }
}

#[test]
fn rerank_ranks_by_maxsim_on_both_endpoints_and_the_model_reports_like_any() {
    let r = colbert_reference();
    let v = &r.variants["fixed"];
    let d = colbert_daemon();
    let mut want: Vec<usize> = (0..v.documents.len()).collect();
    want.sort_by(|&a, &b| v.scores[0][b].total_cmp(&v.scores[0][a]));
    let (s, tei) = post(
        &d,
        "/rerank",
        json!({"model": "tiny-colbert", "query": v.queries[0], "texts": v.documents, "truncate": true}),
    );
    assert_eq!(s, 200, "{tei}");
    let order: Vec<usize> = tei
        .as_array()
        .expect("ranks")
        .iter()
        .map(|x| x["index"].as_u64().expect("index") as usize)
        .collect();
    assert_eq!(order, want);
    let (s, cohere) = post(
        &d,
        "/v1/rerank",
        json!({"model": "tiny-colbert", "query": v.queries[0], "documents": v.documents, "top_n": 3}),
    );
    assert_eq!(s, 200, "{cohere}");
    let top: Vec<usize> = cohere["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|x| x["index"].as_u64().expect("index") as usize)
        .collect();
    assert_eq!(top, want[..3]);
    // A query is expanded to 12 vectors; a document's punctuation has none.
    let (s, q) = post(
        &d,
        "/embed_all",
        json!({"inputs": "Thank you!", "model": "tiny-colbert", "input_type": "query"}),
    );
    assert_eq!(s, 200, "{q}");
    assert_eq!(token_vectors(&q)[0].len(), 12);
    let (s, with) = post(
        &d,
        "/embed_all",
        json!({"inputs": "Thank you!", "model": "tiny-colbert"}),
    );
    assert_eq!(s, 200, "{with}");
    let (s, without) = post(
        &d,
        "/embed_all",
        json!({"inputs": "Thank you", "model": "tiny-colbert"}),
    );
    assert_eq!(s, 200, "{without}");
    assert_eq!(
        token_vectors(&with)[0].len(),
        token_vectors(&without)[0].len(),
        "the skip-list drops the document's `!`"
    );
    let entry = model_entry(&d, "tiny-colbert").expect("listed");
    assert_eq!(
        (&entry["kind"], &entry["dimensions"], &entry["state"]),
        (&json!("multi_vector"), &json!(16), &json!("loaded")),
        "{entry}"
    );
    let (s, v2) = d.request("DELETE", "/api/memory/models/tiny-colbert", "");
    assert_eq!(s, 200, "{v2}");
    let (s, again) = post(
        &d,
        "/embed_all",
        json!({"inputs": "Thank you!", "model": "tiny-colbert", "input_type": "query"}),
    );
    assert_eq!((s, &again), (200, &q));
}

#[test]
fn late_interaction_requests_that_cannot_be_served_are_refused_word_for_word() {
    let d = colbert_daemon();
    let long = "machine learning ".repeat(20);
    let (s, v) = post(
        &d,
        "/embed_all",
        json!({"inputs": ["a", long], "model": "tiny-colbert", "input_type": "query"}),
    );
    assert_eq!(s, 413, "{v}");
    assert_eq!(
        error(&v),
        (
            "input_too_long".into(),
            "input 1 is longer than the 12 tokens model tiny-colbert keeps for a query; shorten it or set \"truncate\": true".into()
        )
    );
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"model": "tiny-colbert", "query": "a", "texts": ["b", long]}),
    );
    assert_eq!(s, 413, "{v}");
    assert_eq!(
        error(&v).1,
        "`texts[1]` is longer than the 24 tokens model tiny-colbert keeps for a document; shorten it or set \"truncate\": true"
    );
    let (s, v) = post(
        &d,
        "/embed_all",
        json!({"inputs": "a", "model": "all-MiniLM-L6-v2"}),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        error(&v),
        (
            "wrong_model_kind".into(),
            "model all-MiniLM-L6-v2 is an embedding model, and this endpoint needs a multi-vector model: POST /v1/embeddings and /embed take embedding models, POST /embed_sparse sparse ones, POST /embed_all multi-vector ones, /rerank and /v1/rerank rerankers and multi-vector ones".into()
        )
    );
    let (s, v) = post(
        &d,
        "/v1/embeddings",
        json!({"input": "a", "model": "tiny-colbert"}),
    );
    assert_eq!((s, error(&v).0.as_str()), (400, "wrong_model_kind"), "{v}");
    // Four are installed: a request must name one.
    let (s, v) = post(&d, "/embed_all", json!({"inputs": "a"}));
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        error(&v).1,
        "several multi-vector models are installed (tiny-colbert, tiny-colbert-int8, tiny-colbert-int8-fast, tiny-colbert-min); name one with \"model\" or set models.default_multi_vector"
    );
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"model": "tiny-colbert", "query": "a", "texts": ["b"], "instruction": "x"}),
    );
    assert_eq!(s, 400, "{v}");
}

#[test]
fn embed_all_without_a_multi_vector_model_says_how_to_get_one() {
    let d = Daemon::start_with(|dir| write_config(dir, ""), &[]);
    let (s, v) = post(&d, "/embed_all", json!({"inputs": "a"}));
    assert_eq!(s, 404, "{v}");
    assert_eq!(
        v["error"]["message"],
        "no multi-vector model is installed; side-load a late-interaction (ColBERT) package (caxton pack makes one from a MultiVectorEncoder folder) into models.package_dir"
    );
}

/// Issue 61: TEI's `prompt_name` on `/embed_all`: the named prompt before each text instead of
/// the side's own (`[D] ` for documents here), the side still `input_type`'s; an unknown name
/// refused naming the model's prompts.
#[test]
fn embed_all_puts_the_prompt_named_before_each_text() {
    let d = Daemon::start_with(
        |dir| {
            write_config(dir, "");
            common::fixtures::pack_into("tiny-colbert-p", &dir.join("packages"), |folder| {
                colbert_folder(folder, "fixed");
                std::fs::write(
                    folder.join("config_sentence_transformers.json"),
                    r#"{"model_type": "MultiVectorEncoder", "default_prompt_name": null,
                        "prompts": {"document": "[D] ", "query": "[Q] ", "title": "[D] title: "}}"#,
                )
                .expect("prompts");
            });
        },
        &[],
    );
    let ask = |body: Value| {
        let (s, v) = post(&d, "/embed_all", body);
        assert_eq!(s, 200, "{v}");
        token_vectors(&v)
    };
    let text = "a valve";
    let titled = format!("title: {text}");
    assert_eq!(
        ask(json!({"inputs": text, "prompt_name": "title"})),
        ask(json!({"inputs": titled}))
    );
    assert_ne!(
        ask(json!({"inputs": text, "prompt_name": "query"})),
        ask(json!({"inputs": text}))
    );
    // On the query side (its expansion; 12 tokens, cut at the end), the name still picks
    // the prompt.
    assert_eq!(
        ask(
            json!({"inputs": text, "input_type": "query", "prompt_name": "title", "truncate": true})
        ),
        ask(
            json!({"inputs": titled, "input_type": "query", "prompt_name": "document", "truncate": true})
        )
    );
    assert_ne!(
        ask(
            json!({"inputs": text, "input_type": "query", "prompt_name": "document", "truncate": true})
        ),
        ask(json!({"inputs": text, "input_type": "query", "truncate": true}))
    );
    let (s, v) = post(
        &d,
        "/embed_all",
        json!({"inputs": text, "prompt_name": "passage"}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            400,
            (
                "unknown_prompt".into(),
                "model tiny-colbert-p has no prompt \"passage\"; its prompts: document, query, title".into()
            )
        )
    );
}

/// Issue 61: every MultiVectorEncoder layout sentence-transformers 6.2 runs, read as it runs
/// it: without a MultiVectorMask (no skip-list; the expansion tokens nothing attends to are
/// not output), the Normalize before the mask, a Normalize of a sentence embedding (which
/// leaves the token vectors alone), a Dense writing a feature of its own (which leaves them
/// alone too). Against each layout's encode_query, encode_document and MaxSim; a layout it
/// cannot honour is refused naming the module.
#[test]
fn every_multi_vector_layout_is_read_as_sentence_transformers_runs_it() {
    let r = layouts_reference();
    let d = Daemon::start_with(
        |dir| {
            write_config(dir, "memory:\n  max_loaded_models: 5\n");
            for layout in r.variants.keys() {
                common::fixtures::pack_into(layout, &dir.join("packages"), |folder| {
                    colbert_layout_folder(folder, layout)
                });
            }
        },
        &[],
    );
    for (layout, v) in &r.variants {
        let (cos, score) = measure(&d, layout, v);
        println!(
            "{layout}: worst token cosine {cos:.7}, worst MaxSim relative difference {score:.2e}"
        );
        assert!(cos >= 0.9999, "{layout}: {cos}");
        assert!(score <= 1e-4, "{layout}: {score}");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    for (layout, why) in [
        (
            "dense-after-normalize",
            "modules.json: module sentence_transformers.base.modules.dense.Dense at position 2 projects token vectors a Normalize before it normalised (supported: a Transformer, then Dense, Normalize and MultiVectorMask modules, the token vectors projected by Dense modules and normalised at most after the last of them)",
        ),
        (
            "dense-of-nothing",
            "modules.json: module sentence_transformers.base.modules.dense.Dense at position 1 reads the feature \"sentence_embedding\", which no module before it writes (sentence-transformers fails on it too)",
        ),
    ] {
        let folder = tmp.path().join(layout);
        colbert_layout_folder(&folder, layout);
        let options = caxton::package::pack::PackOptions {
            model_dir: folder,
            id: None,
            version: "1".into(),
            weights: caxton::package::pack::WeightStorage::AsIs,
            level: 1,
            prompts: Vec::new(),
            default_prompt: None,
            matryoshka: None,
        };
        let err = caxton::package::pack::pack(&options, &tmp.path().join("out.tar.zst"))
            .expect_err("refused");
        assert!(err.to_string().ends_with(why), "{layout}: {err}");
    }
}
