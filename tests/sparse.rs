//! Issue 52, goal 1: sparse encoders (SPLADE). A tiny BERT with its masked-language-model head
//! (tests/fixtures/architectures/sparse.py: generate.py's tiny BERT and tokenizer, weights
//! from the seed), saved by sentence-transformers' SparseEncoder, packed with `caxton pack`,
//! run in process in f32, int8 and int8-fast, alone and batched, against
//! `SparseEncoder.encode`; then served over the socket on `POST /embed_sparse`.

mod common;

use caxton::engine::Precision;
use caxton::package::{ModelKind, Pooling, SparseActivation};
use common::engine::run_package;
use common::fixtures::{
    f32_safetensors, inference_free_package, pack_into, seeded_values, sparse_folder,
    sparse_package, sparse_reference,
};
use common::{Daemon, model_entry, write_config};
use serde_json::{Value, json};

/// The issue's bound on f32 weights: within 1e-4 relative of the reference's, with numpy's
/// `allclose` floor for the weights near zero (whose logits' own float rounding, ~3e-7, is
/// what separates the two).
const F32_RELATIVE: f32 = 1e-4;
const F32_ABSOLUTE: f32 = 1e-6;

/// How far `got` (a text's weight of every term) is from `want` (its terms above zero):
/// terms above zero in one only (with the largest such weight), and the largest difference of
/// the weights both have as a share of f32's tolerance for it.
fn compare(got: &[f32], want: &[(u32, f32)]) -> (usize, f32, f32) {
    let mut reference = vec![0f32; got.len()];
    for &(i, w) in want {
        reference[i as usize] = w;
    }
    let (mut alone, mut alone_max, mut worst) = (0, 0f32, 0f32);
    for (&a, &b) in got.iter().zip(&reference) {
        peak_error(a, b);
        match (a > 0.0, b > 0.0) {
            // The share of `allclose(rtol=1e-4, atol=1e-6)`'s tolerance used.
            (true, true) => {
                worst = worst.max((a - b).abs() / (F32_RELATIVE * b.abs() + F32_ABSOLUTE))
            }
            (false, false) => {}
            _ => {
                alone += 1;
                alone_max = alone_max.max(a.max(b));
            }
        }
    }
    (alone, alone_max, worst)
}

thread_local! {
    /// The largest absolute difference of any term seen by [`compare`] since the last
    /// [`take_peak`].
    static PEAK: std::cell::Cell<f32> = const { std::cell::Cell::new(0.0) };
}

fn peak_error(a: f32, b: f32) {
    PEAK.with(|p| p.set(p.get().max((a - b).abs())));
}

fn take_peak() -> f32 {
    PEAK.with(|p| p.replace(0.0))
}

#[test]
fn splade_matches_sparse_encoder_in_every_precision() {
    let r = sparse_reference();
    for (variant, (pooling, activation)) in [
        ("max/relu", (Pooling::Max, SparseActivation::Relu)),
        (
            "sum/log1p_relu",
            (Pooling::Sum, SparseActivation::Log1pRelu),
        ),
    ] {
        let v = match variant {
            "max/relu" => &r.weights.max_relu,
            _ => &r.weights.sum_log1p_relu,
        };
        let (p, a) = variant.split_once('/').expect("variant");
        let tmp = tempfile::tempdir().expect("tempdir");
        let (package, manifest) = sparse_package("tiny-splade", tmp.path(), p, a);
        assert_eq!(manifest.kind, ModelKind::Sparse);
        assert_eq!(manifest.pooling, pooling);
        assert_eq!(manifest.sparse_activation, Some(activation));
        assert_eq!(manifest.dimensions, 800, "the vocabulary's size");
        assert!(!manifest.normalize);
        // f32: relative; int8, int8-fast and bf16: the largest difference of any weight against
        // the largest weight of the texts (their rounded linears shift every logit a little,
        // which near zero is large relative to the weight).
        let heaviest = v.weights.iter().flatten().fold(0f32, |m, &(_, w)| m.max(w));
        let mut precisions = vec![
            (Precision::F32, 1.0),
            (Precision::Int8, 2e-2),
            (Precision::Int8Fast, 5e-2),
        ];
        // bf16 linear layers where this CPU has AMX (the head's decoder stays f32).
        if common::engine::bf16_runs_here() {
            precisions.push((Precision::Bf16, 5e-2));
        } else {
            common::skip::skip(&format!(
                "sparse {variant} in bf16: this CPU has no AMX (f32 above is what bf16 runs here)"
            ));
        }
        for (precision, bound) in precisions {
            let state = tmp.path().join(format!("state-{}", precision.name()));
            let run = run_package(&package, &state, &v.texts, precision);
            assert_eq!(run.precision, precision);
            let (mut alone, mut alone_max, mut worst) = (0, 0f32, 0f32);
            take_peak();
            for (i, want) in v.weights.iter().enumerate() {
                let (n, m, w) = compare(&run.singles[i], want);
                alone += n;
                alone_max = alone_max.max(m);
                worst = worst.max(w);
            }
            // Batched == single, exactly where the engine promises it.
            let mut batch_worst = 0f32;
            for (k, &i) in run.batched_texts.iter().enumerate() {
                for (a, b) in run.batched[k].iter().zip(&run.singles[i]) {
                    batch_worst = batch_worst.max((a - b).abs());
                }
            }
            let of_heaviest = take_peak() / heaviest;
            println!(
                "{variant} {}: {} texts, f32's tolerance used {worst:.2}, largest difference {of_heaviest:.2e} of the heaviest weight ({heaviest:.3}); terms above zero on one side only: {alone} (largest {alone_max:.1e}); batched vs single {batch_worst:.1e}",
                precision.name(),
                v.texts.len()
            );
            if precision == Precision::F32 {
                assert!(worst <= bound, "{variant}: {worst}");
                assert_eq!(alone, 0, "{variant}: the same terms above zero");
            } else {
                assert!(
                    of_heaviest <= bound,
                    "{variant} {precision:?}: {of_heaviest}"
                );
                assert!(
                    alone_max <= bound * heaviest,
                    "{variant} {precision:?}: {alone_max}"
                );
            }
            // The batched pass takes other kernels than the single one (many rows against few),
            // so their sums round differently: 6e-7 of the heaviest weight on AVX2, 4e-5 on
            // the portable loops (`CAXTON_ISA=portable`).
            assert!(
                batch_worst <= 1e-4 * heaviest,
                "{variant} {precision:?}: {batch_worst}"
            );
        }
    }
}

fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.request("POST", path, &body.to_string())
}

fn sparse_daemon() -> Daemon {
    Daemon::start_with(
        |dir| {
            write_config(dir, "");
            sparse_package("tiny-splade", &dir.join("packages"), "max", "relu");
        },
        &[],
    )
}

#[test]
fn embed_sparse_answers_tei_s_shape_heaviest_first() {
    let r = sparse_reference();
    let v = &r.weights.max_relu;
    let d = sparse_daemon();
    let texts = &v.texts[..4];
    let (s, out) = post(&d, "/embed_sparse", json!({"inputs": texts}));
    assert_eq!(s, 200, "{out}");
    for (i, want) in v.weights[..4].iter().enumerate() {
        let got: Vec<(u32, f32)> = out[i]
            .as_array()
            .expect("terms")
            .iter()
            .map(|t| {
                let keys: Vec<&String> = t.as_object().expect("term").keys().collect();
                assert_eq!(keys, ["index", "value"]);
                (
                    t["index"].as_u64().expect("index") as u32,
                    t["value"].as_f64().expect("value") as f32,
                )
            })
            .collect();
        assert_eq!(got.len(), want.len(), "text {i}: the terms above zero");
        assert!(got.windows(2).all(|w| w[0].1 >= w[1].1), "heaviest first");
        let mut dense = vec![0f32; 800];
        got.iter().for_each(|&(t, w)| dense[t as usize] = w);
        let (alone, _, worst) = compare(&dense, want);
        assert_eq!(alone, 0);
        assert!(worst <= 1.0, "{worst}");
    }
    // top_k: the k heaviest, as the full answer has them.
    let (s, top) = post(
        &d,
        "/embed_sparse",
        json!({"inputs": texts[0], "top_k": 5, "model": "tiny-splade"}),
    );
    assert_eq!(s, 200, "{top}");
    assert_eq!(top[0], json!(out[0].as_array().expect("terms")[..5]));
    // Its term ids are its tokens: /tokenize with the model names them.
    let (s, tokens) = post(
        &d,
        "/tokenize",
        json!({"inputs": texts[0], "model": "tiny-splade"}),
    );
    assert_eq!(s, 200, "{tokens}");
    let ids: Vec<u64> = tokens[0]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["id"].as_u64().expect("id"))
        .collect();
    let heaviest = top[0][0]["index"].as_u64().expect("index");
    assert!(heaviest < 800, "{heaviest}");
    assert!(
        ids.iter().all(|&i| i < 800),
        "the tiny model's vocabulary, not MiniLM's: {ids:?}"
    );
    // It reports, unloads and loads again like any model.
    let entry = model_entry(&d, "tiny-splade").expect("listed");
    assert_eq!(
        (&entry["kind"], &entry["dimensions"], &entry["state"]),
        (&json!("sparse"), &json!(800), &json!("loaded")),
        "{entry}"
    );
    assert!(
        entry["memory_bytes"].as_u64().is_some_and(|b| b > 0),
        "{entry}"
    );
    let (s, v) = d.request("DELETE", "/api/memory/models/tiny-splade", "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        model_entry(&d, "tiny-splade").expect("listed")["state"],
        "available"
    );
    let (s, again) = post(&d, "/embed_sparse", json!({"inputs": texts[0], "top_k": 5}));
    assert_eq!((s, &again), (200, &top));
}

#[test]
fn sparse_requests_and_models_of_another_kind_are_refused_word_for_word() {
    let d = sparse_daemon();
    let error = |v: &Value| {
        (
            v["error"]["code"].as_str().unwrap_or("?").to_string(),
            v["error"]["message"].as_str().unwrap_or("?").to_string(),
        )
    };
    let (s, v) = post(&d, "/embed_sparse", json!({"inputs": "a", "top_k": 0}));
    assert_eq!(s, 400);
    assert_eq!(
        error(&v),
        (
            "invalid_top_k".into(),
            "`top_k` is 0; ask for at least 1 term (or leave it out for every term above zero)"
                .into()
        )
    );
    let (s, v) = post(
        &d,
        "/embed_sparse",
        json!({"inputs": "a", "model": "all-MiniLM-L6-v2"}),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        error(&v),
        (
            "wrong_model_kind".into(),
            "model all-MiniLM-L6-v2 is an embedding model, and this endpoint needs a sparse model: POST /v1/embeddings and /embed take embedding models, POST /embed_sparse sparse ones, POST /embed_all multi-vector ones, /rerank and /v1/rerank rerankers and multi-vector ones".into()
        )
    );
    let (s, v) = post(
        &d,
        "/v1/embeddings",
        json!({"input": "a", "model": "tiny-splade"}),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        error(&v),
        (
            "wrong_model_kind".into(),
            "model tiny-splade is a sparse model, and this endpoint needs an embedding model: POST /v1/embeddings and /embed take embedding models, POST /embed_sparse sparse ones, POST /embed_all multi-vector ones, /rerank and /v1/rerank rerankers and multi-vector ones".into()
        )
    );
    let (s, v) = post(&d, "/embed_sparse", json!({"inputs": ["a", " "]}));
    assert_eq!(s, 400, "{v}");
    assert_eq!(error(&v).0, "empty_input");
}

#[test]
fn embed_sparse_without_a_sparse_model_says_how_to_get_one() {
    let d = Daemon::start_with(|dir| write_config(dir, ""), &[]);
    let (s, v) = post(&d, "/embed_sparse", json!({"inputs": "a"}));
    assert_eq!(s, 404, "{v}");
    assert_eq!(
        v["error"]["message"],
        "no sparse model is installed; side-load a sparse encoder package (caxton pack makes one from a SparseEncoder folder) into models.package_dir"
    );
}

#[test]
fn an_inference_free_model_looks_queries_up_and_runs_documents() {
    let r = sparse_reference();
    let v = &r.weights.inference_free;
    let d = Daemon::start_with(
        |dir| {
            write_config(dir, "");
            let (_, m) = inference_free_package("tiny-if", &dir.join("packages"));
            assert_eq!(m.query_weights.as_deref(), Some("query/model.safetensors"));
            assert_eq!((m.kind, m.dimensions), (ModelKind::Sparse, 800));
        },
        &[],
    );
    let terms = |out: &Value, i: usize| -> Vec<(u32, f32)> {
        out[i]
            .as_array()
            .expect("terms")
            .iter()
            .map(|t| {
                (
                    t["index"].as_u64().expect("index") as u32,
                    t["value"].as_f64().expect("value") as f32,
                )
            })
            .collect()
    };
    // Queries: the table's weights of the distinct tokens, exactly (no arithmetic at all).
    let (s, q) = post(
        &d,
        "/embed_sparse",
        json!({"inputs": v.texts, "input_type": "query"}),
    );
    assert_eq!(s, 200, "{q}");
    for (i, want) in v.query.iter().enumerate() {
        let mut got = terms(&q, i);
        got.sort_by_key(|t| t.0);
        assert_eq!(&got, want, "query {i}");
    }
    // Documents (and texts sent without input_type): the SPLADE pass.
    for body in [
        json!({"inputs": v.texts, "input_type": "document"}),
        json!({"inputs": v.texts}),
    ] {
        let (s, out) = post(&d, "/embed_sparse", body);
        assert_eq!(s, 200, "{out}");
        for (i, want) in v.document.iter().enumerate() {
            let mut dense = vec![0f32; 800];
            terms(&out, i)
                .iter()
                .for_each(|&(t, w)| dense[t as usize] = w);
            let (alone, _, worst) = compare(&dense, want);
            assert_eq!(alone, 0, "document {i}");
            assert!(worst <= 1.0, "document {i}: {worst}");
        }
    }
    let (s, v) = post(
        &d,
        "/embed_sparse",
        json!({"inputs": "a", "input_type": "passage"}),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_input_type");
}

/// Issue 61: TEI's `prompt_name` on `/embed_sparse`: the model's saved prompt before each
/// text, as `SparseEncoder.encode(prompt_name=...)` puts it; `input_type` alone picks the
/// query or document prompt, as `encode_query` does; an unknown name is refused naming the
/// model's prompts, before any load.
#[test]
fn embed_sparse_puts_the_models_prompt_by_name_before_each_text() {
    let d = Daemon::start_with(
        |dir| {
            write_config(dir, "");
            pack_into("tiny-splade-p", &dir.join("packages"), |folder| {
                sparse_folder(folder, "max", "relu");
                std::fs::write(
                    folder.join("config_sentence_transformers.json"),
                    r#"{"model_type": "SparseEncoder", "default_prompt_name": null,
                        "prompts": {"query": "query: ", "document": "", "title": "title: "}}"#,
                )
                .expect("prompts");
            });
        },
        &[],
    );
    let ask = |body: Value| post(&d, "/embed_sparse", body);
    let named = ask(json!({"inputs": "the pump station", "prompt_name": "title"}));
    assert_eq!(named.0, 200, "{}", named.1);
    assert_eq!(named, ask(json!({"inputs": "title: the pump station"})));
    assert_ne!(named, ask(json!({"inputs": "the pump station"})));
    assert_eq!(
        ask(json!({"inputs": "the pump station", "input_type": "query"})),
        ask(json!({"inputs": "query: the pump station"}))
    );
    // Both: the name picks the prompt (a side, where a model has one, is input_type's).
    assert_eq!(
        ask(json!({"inputs": "the pump station", "input_type": "query", "prompt_name": "title"})),
        named
    );
    let (s, v) = d.request("DELETE", "/api/memory/models/tiny-splade-p", "");
    assert_eq!(s, 200, "{v}");
    let (s, v) = ask(json!({"inputs": "x", "prompt_name": "question"}));
    assert_eq!(
        (
            s,
            v["error"]["code"].as_str(),
            v["error"]["message"].as_str()
        ),
        (
            400,
            Some("unknown_prompt"),
            Some("model tiny-splade-p has no prompt \"question\"; its prompts: query, title")
        ),
        "{v}"
    );
    assert_eq!(
        model_entry(&d, "tiny-splade-p").expect("listed")["state"],
        "available",
        "a refused prompt loaded the model"
    );
}

/// The tiny SPLADE's folder with its LayerNorms named `gamma` and `beta`, as Google's BERT
/// conversions and SPLADE-tiny-msmarco's checkpoint name them; `drop`, a tensor left out, and
/// `reshape`, one given another shape.
fn old_named_folder(dir: &std::path::Path, drop: Option<&str>, reshape: Option<&str>) {
    let r = sparse_reference();
    sparse_folder(dir, "max", "relu");
    let tensors = seeded_values(r.seed, &r.parameters)
        .into_iter()
        .filter(|(name, ..)| Some(name.as_str()) != drop)
        .map(|(name, mut shape, mut values)| {
            if Some(name.as_str()) == reshape {
                shape = vec![values.len() / 2];
                values.truncate(shape[0]);
            }
            let name = name
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (name, shape, values)
        })
        .collect();
    std::fs::write(dir.join("model.safetensors"), f32_safetensors(tensors)).expect("weights");
}

/// Issue 61: a checkpoint naming its LayerNorms `gamma`/`beta` loads as transformers loads it
/// (the sparse head's too, whose `cls.predictions.transform.LayerNorm.weight` the daemon
/// looked for in vain), to the same term weights as the same weights under today's names.
#[test]
fn layer_norm_gamma_and_beta_load_as_weight_and_bias() {
    let r = sparse_reference();
    let v = &r.weights.max_relu;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (old, _) = pack_into("old-names", &tmp.path().join("old"), |dir| {
        old_named_folder(dir, None, None)
    });
    let (new, _) = sparse_package("new-names", &tmp.path().join("new"), "max", "relu");
    let a = run_package(
        &old,
        &tmp.path().join("state-old"),
        &v.texts,
        Precision::F32,
    );
    let b = run_package(
        &new,
        &tmp.path().join("state-new"),
        &v.texts,
        Precision::F32,
    );
    assert_eq!(a.singles, b.singles);
    let (alone, _, worst) = compare(&a.singles[0], &v.weights[0]);
    assert_eq!(alone, 0);
    assert!(worst <= 1.0, "{worst}");
}

/// Issue 61: `caxton pack` refuses, naming the tensor, a folder whose checkpoint lacks one the
/// architecture needs or has one of another shape: the package it made verified and could
/// never load. Nothing is left behind.
#[test]
fn caxton_pack_refuses_a_checkpoint_the_model_could_not_load() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pack = |name: &str, drop: Option<&str>, reshape: Option<&str>| {
        let dir = tmp.path().join(name);
        old_named_folder(&dir, drop, reshape);
        let out = tmp.path().join(format!("{name}.tar.zst"));
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_caxton"))
            .args([
                "pack",
                dir.to_str().expect("utf-8"),
                "-o",
                out.to_str().expect("utf-8"),
            ])
            .output()
            .expect("run caxton pack");
        (run, out, dir)
    };
    let (ok, out, _) = pack("whole", None, None);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.exists());

    let missing = "cls.predictions.transform.LayerNorm.weight";
    let (run, out, dir) = pack("missing", Some(missing), None);
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains(&format!(
            "cannot pack {}: the package made of it would not load: ",
            dir.display()
        )) && err.contains(&format!("no tensor {missing}"))
            && err.contains(&format!("; {} was not written", out.display())),
        "{err}"
    );
    assert!(!out.exists());
    assert!(!caxton::package::pack::provenance_path(&out).exists());

    let (run, out, _) = pack(
        "reshaped",
        None,
        Some("bert.encoder.layer.0.output.dense.weight"),
    );
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("encoder.layer.0.output.dense.weight") && err.contains("shape"),
        "{err}"
    );
    assert!(!out.exists());
}
