//! Issue 52, goal 3: bge-m3's three outputs from one model. A tiny XLM-RoBERTa with
//! FlagEmbedding's two heads (tests/fixtures/architectures/bge_m3.py), the folder as BAAI
//! ships bge-m3 (its `colbert_linear.pt` and `sparse_linear.pt` written as torch.save writes
//! them), packed with `caxton pack`, served by the daemon: its dense vectors on
//! `/v1/embeddings`, its lexical weights on `/embed_sparse`, its ColBERT vectors on
//! `/embed_all` and their scores on `/rerank`, each against FlagEmbedding's `BGEM3FlagModel`.

mod common;

use caxton::package::{LateSimilarity, ModelKind};
use common::bge_m3::{bge_m3_folder, bge_m3_package, bge_m3_reference};
use common::{Daemon, model_entry, write_config, write_precisions};
use serde_json::{Value, json};

fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.request("POST", path, &body.to_string())
}

/// Cosine similarity, as f32 (the floors compare f32 figures).
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    common::cosine(a, b) as f32
}

fn daemon() -> Daemon {
    Daemon::start_with(
        |dir| {
            write_config(dir, "");
            write_precisions(
                dir,
                &[
                    ("tiny-bge-m3-int8", "int8"),
                    ("tiny-bge-m3-int8-fast", "int8-fast"),
                ],
            );
            for id in ["tiny-bge-m3-int8", "tiny-bge-m3-int8-fast"] {
                bge_m3_package(id, &dir.join("packages"));
            }
            let (_, m) = bge_m3_package("tiny-bge-m3", &dir.join("packages"));
            assert_eq!(
                (m.kind, m.dimensions, m.normalize),
                (ModelKind::Embedding, 32, true)
            );
            use caxton::package::OutputName;
            // The contract's list, the heads beside it.
            assert_eq!(
                m.outputs,
                [
                    OutputName::Dense,
                    OutputName::Sparse,
                    OutputName::MultiVector
                ]
            );
            let o = m.output_heads.clone().expect("output_heads");
            let sparse = o.sparse.expect("sparse");
            // XLM-R's <s>, <pad>, </s>, <unk>: no term weight.
            assert_eq!((sparse.skip, sparse.vocabulary), (vec![0, 1, 2, 3], 800));
            assert_eq!(o.multi_vector.expect("colbert").outputs, 32);
            let li = m.late_interaction.expect("late_interaction");
            assert_eq!(
                (li.similarity, li.drop_first),
                (LateSimilarity::Meanmaxsim, true)
            );
            assert!(
                m.files
                    .iter()
                    .any(|f| f.path == "colbert_linear.safetensors")
            );
        },
        &[],
    )
}

/// How far `model`'s three outputs are from FlagEmbedding's: the worst dense cosine; the
/// terms above zero on one side only and the worst weight difference as a share of the
/// heaviest weight, and of `allclose(1e-4, 1e-6)`'s tolerance; the worst ColBERT cosine; the
/// worst ColBERT score difference, relative.
struct Measured {
    dense: f32,
    alone: usize,
    of_heaviest: f32,
    of_tolerance: f32,
    colbert: f32,
    scores: f32,
}

fn measure(d: &Daemon, model: &str) -> Measured {
    let r = bge_m3_reference();
    // Dense: CLS, normalised.
    let (s, v) = post(
        d,
        "/v1/embeddings",
        json!({"input": r.texts, "model": model}),
    );
    assert_eq!(s, 200, "{v}");
    let mut dense = 1f32;
    for (i, want) in r.dense.iter().enumerate() {
        let got: Vec<f32> =
            serde_json::from_value(v["data"][i]["embedding"].clone()).expect("vector");
        dense = dense.min(cosine(&got, want));
    }
    // Sparse: relu(sparse_linear), the largest per token id, special tokens dropped.
    let (s, v) = post(
        d,
        "/embed_sparse",
        json!({"inputs": r.texts, "model": model}),
    );
    assert_eq!(s, 200, "{v}");
    let heaviest = r.sparse.iter().flatten().fold(0f32, |m, t| m.max(t.1));
    let (mut alone, mut worst, mut of_tolerance) = (0, 0f32, 0f32);
    for (i, want) in r.sparse.iter().enumerate() {
        let got: std::collections::BTreeMap<u32, f32> = v[i]
            .as_array()
            .expect("terms")
            .iter()
            .map(|t| {
                (
                    t["index"].as_u64().expect("index") as u32,
                    t["value"].as_f64().expect("value") as f32,
                )
            })
            .collect();
        let want: std::collections::BTreeMap<u32, f32> = want.iter().copied().collect();
        for id in got.keys().chain(want.keys()) {
            match (got.get(id), want.get(id)) {
                (Some(a), Some(b)) => {
                    worst = worst.max((a - b).abs());
                    of_tolerance = of_tolerance.max((a - b).abs() / (1e-4 * b.abs() + 1e-6));
                }
                (Some(w), None) | (None, Some(w)) => {
                    alone += 1;
                    worst = worst.max(*w);
                }
                (None, None) => {}
            }
        }
    }
    // ColBERT: colbert_linear on every token after <s>, normalised.
    let (s, v) = post(d, "/embed_all", json!({"inputs": r.texts, "model": model}));
    assert_eq!(s, 200, "{v}");
    let got: Vec<Vec<Vec<f32>>> = serde_json::from_value(v).expect("[[[f32]]]");
    let mut colbert = 1f32;
    for (i, (g, w)) in got.iter().zip(&r.colbert).enumerate() {
        assert_eq!(g.len(), w.len(), "text {i}: vectors");
        for (a, b) in g.iter().zip(w) {
            colbert = colbert.min(cosine(a, b));
        }
    }
    // Their scores: the mean over the query's vectors of MaxSim.
    let mut scores = 0f32;
    let documents: Vec<&str> = r.documents.iter().map(|&i| r.texts[i].as_str()).collect();
    for (qi, &q) in r.queries.iter().enumerate() {
        let (s, v) = post(
            d,
            "/rerank",
            json!({"model": model, "query": r.texts[q], "texts": documents}),
        );
        assert_eq!(s, 200, "{v}");
        for rank in v.as_array().expect("ranks") {
            let i = rank["index"].as_u64().expect("index") as usize;
            let got = rank["score"].as_f64().expect("score") as f32;
            let want = r.colbert_scores[qi][i];
            scores = scores.max((got - want).abs() / want.abs());
        }
    }
    Measured {
        dense,
        alone,
        of_heaviest: worst / heaviest,
        of_tolerance,
        colbert,
        scores,
    }
}

#[test]
fn one_model_serves_dense_sparse_and_colbert_as_flag_embedding_does() {
    let d = daemon();
    let model = "tiny-bge-m3";
    let m = measure(&d, model);
    println!(
        "bge-m3 f32 against FlagEmbedding: dense worst cosine {:.7}; sparse: {} terms on one side only, {:.2} of allclose(1e-4, 1e-6)'s tolerance; ColBERT worst cosine {:.7}; ColBERT scores worst relative {:.1e}",
        m.dense, m.alone, m.of_tolerance, m.colbert, m.scores
    );
    assert!(m.dense >= 0.9999, "{}", m.dense);
    assert_eq!(m.alone, 0);
    assert!(m.of_tolerance <= 1.0, "{}", m.of_tolerance);
    assert!(m.colbert >= 0.9999, "{}", m.colbert);
    assert!(m.scores <= 1e-4, "{}", m.scores);
    // The reduced precisions, their floors stated.
    for (id, cosine_floor, weight_floor, score_floor) in [
        ("tiny-bge-m3-int8", 0.999, 2e-2, 1e-2),
        ("tiny-bge-m3-int8-fast", 0.999, 5e-2, 1e-2),
    ] {
        let m = measure(&d, id);
        println!(
            "{id}: dense worst cosine {:.5}; sparse: {} terms on one side only, worst difference {:.2e} of the heaviest weight; ColBERT worst cosine {:.5}; scores worst relative {:.1e}",
            m.dense, m.alone, m.of_heaviest, m.colbert, m.scores
        );
        assert!(m.dense >= cosine_floor && m.colbert >= cosine_floor, "{id}");
        assert!(m.of_heaviest <= weight_floor, "{id}: {}", m.of_heaviest);
        assert!(m.scores <= score_floor, "{id}: {}", m.scores);
    }
    // One model, one load, one memory entry.
    let listed = d.request("GET", "/api/models", "").1;
    let entries = listed["data"]
        .as_array()
        .expect("models")
        .iter()
        .filter(|m| m["id"] == model)
        .count();
    assert_eq!(entries, 1, "{listed}");
    let entry = model_entry(&d, model).expect("listed");
    assert_eq!(
        (&entry["kind"], &entry["state"], &entry["outputs"]),
        (
            &json!("embedding"),
            &json!("loaded"),
            &json!(["dense", "sparse", "multi_vector"])
        ),
        "{entry}"
    );
    assert_eq!(
        d.log()
            .matches("caxton_event=\"model_loaded\" caxton_model=tiny-bge-m3 load_ms")
            .count(),
        1,
        "{}",
        d.log()
    );
}

#[test]
fn a_bge_m3_folder_with_one_head_or_a_broken_one_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let folder = tmp.path().join("m3");
    bge_m3_folder(&folder);
    std::fs::remove_file(folder.join("sparse_linear.pt")).expect("rm");
    let out = tmp.path().join("m3.tar.zst");
    let err = common::fixtures::try_pack_folder(&folder, "m3", &out).expect_err("one head");
    assert_eq!(
        err,
        "unusable model: the folder has colbert_linear.pt but not sparse_linear.pt: bge-m3 ships both (FlagEmbedding's heads)"
    );
    std::fs::write(folder.join("sparse_linear.pt"), b"not a zip").expect("write");
    let err = common::fixtures::try_pack_folder(&folder, "m3", &out).expect_err("broken head");
    assert!(
        err.starts_with(&format!(
            "unusable model: {}: cannot read it as a PyTorch state dict (torch.save's zip format): ",
            folder.join("sparse_linear.pt").display()
        )),
        "{err}"
    );
}

/// BAAI ships bge-m3's encoder as `pytorch_model.bin`: `caxton pack` reads it without Python
/// into the very weights the same folder's `model.safetensors` gives, and says which file it
/// came from; one it cannot read is refused, naming it.
#[test]
fn bge_m3_as_baai_ships_it_with_pytorch_model_bin_packs_to_the_same_weights() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let folder = tmp.path().join("m3");
    bge_m3_folder(&folder);
    let pack =
        |name: &str| common::fixtures::try_pack_folder(&folder, "m3", &tmp.path().join(name));
    let weights_sha = |s: &caxton::package::pack::PackSummary| {
        s.manifest
            .files
            .iter()
            .find(|f| f.path == "model.safetensors")
            .map(|f| f.sha256.clone())
            .expect("model.safetensors")
    };
    let from_safetensors = pack("a.tar.zst").expect("safetensors");
    // The same tensors as torch.save writes them.
    let bin = common::torch_pt::of_safetensors(
        "pytorch_model",
        &std::fs::read(folder.join("model.safetensors")).expect("read"),
    );
    std::fs::remove_file(folder.join("model.safetensors")).expect("rm");
    std::fs::write(folder.join("pytorch_model.bin"), &bin).expect("write");
    let from_pytorch = pack("b.tar.zst").expect("pytorch_model.bin");
    assert_eq!(weights_sha(&from_pytorch), weights_sha(&from_safetensors));
    assert_eq!(
        from_pytorch.source_weights_sha256,
        caxton::package::store::sha256_file(&folder.join("pytorch_model.bin")).expect("sha")
    );
    std::fs::write(folder.join("pytorch_model.bin"), b"not a zip").expect("write");
    assert_eq!(
        pack("c.tar.zst").map(|_| ()),
        Err("unusable model: pytorch_model.bin: cannot read it as a PyTorch state dict (torch.save's zip format; save it again with torch 1.6 or later, or as model.safetensors): invalid Zip archive: Could not find EOCD".into())
    );
}

#[test]
fn bge_m3_serves_what_it_has_and_refuses_the_rest() {
    let d = daemon();
    // Without `model`: bge-m3's outputs count as models of those kinds.
    let (s, v) = post(&d, "/embed_sparse", json!({"inputs": "hello"}));
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["error"]["message"],
        "several sparse models are installed (tiny-bge-m3, tiny-bge-m3-int8, tiny-bge-m3-int8-fast); name one with \"model\" or set models.default_sparse"
    );
    let (s, v) = post(&d, "/embed_all", json!({"inputs": "hello"}));
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["error"]["message"],
        "several multi-vector models are installed (tiny-bge-m3, tiny-bge-m3-int8, tiny-bge-m3-int8-fast); name one with \"model\" or set models.default_multi_vector"
    );
    // ... and may be the configured defaults of those kinds.
    std::fs::write(
        d.dir.path().join("conf.d/50-defaults.yaml"),
        "models:\n  default_sparse: tiny-bge-m3\n  default_multi_vector: tiny-bge-m3\n",
    )
    .expect("drop-in");
    let (s, v) = d.request("POST", "/api/reload", "");
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&d, "/embed_sparse", json!({"inputs": "hello"}));
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(&d, "/embed_all", json!({"inputs": "hello"}));
    assert_eq!(s, 200, "{v}");
    // An instruction has no place in its scoring.
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"model": "tiny-bge-m3", "query": "a", "texts": ["b"], "instruction": "x"}),
    );
    assert_eq!(s, 400, "{v}");
    // Over-long inputs are refused naming the side's length, as for any model.
    let long = "machine learning ".repeat(20);
    let (s, v) = post(
        &d,
        "/embed_all",
        json!({"inputs": long, "model": "tiny-bge-m3"}),
    );
    assert_eq!(s, 413, "{v}");
    assert_eq!(
        v["error"]["message"],
        "input 0 is longer than the 32 tokens model tiny-bge-m3 keeps for a document; shorten it or set \"truncate\": true"
    );
}

/// Issue 52, goal 5: bge-m3's sparse and ColBERT outputs fall back like its vector. With
/// tiny-bge-m3's package gone, a copy of it listed as its alternative answers all three
/// kinds of request, and says so; a plain dense model listed too is passed over for the
/// sparse and ColBERT requests, which it cannot answer.
#[test]
fn bge_m3_s_three_outputs_fall_back_to_a_model_that_serves_them() {
    let d = Daemon::start_with(
        |dir| {
            write_config(dir, "");
            write_precisions(dir, &[("tiny-bge-m3-copy", "int8")]);
            std::fs::write(
                dir.join("conf.d/50-fallbacks.yaml"),
                "models:\n  fallback_strategy: listed\n  allow_dimension_mismatch: true\n  fallbacks:\n    tiny-bge-m3: [all-MiniLM-L6-v2, tiny-bge-m3-copy]\n",
            )
            .expect("drop-in");
            for id in ["tiny-bge-m3", "tiny-bge-m3-copy"] {
                bge_m3_package(id, &dir.join("packages"));
            }
        },
        &[],
    );
    let request = |path: &str, body: Value| {
        let (status, headers, bytes) = d
            .try_request_with_headers("POST", path, Some(&body.to_string()))
            .expect("request");
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let served = headers.get("x-caxton-served-by").cloned();
        (status, served, v)
    };
    let asks = [
        (
            "/v1/embeddings",
            json!({"input": "a pump", "model": "tiny-bge-m3"}),
        ),
        (
            "/embed_sparse",
            json!({"inputs": "a pump", "model": "tiny-bge-m3"}),
        ),
        (
            "/embed_all",
            json!({"inputs": "a pump", "model": "tiny-bge-m3"}),
        ),
    ];
    for (path, body) in &asks {
        let (s, served, v) = request(path, body.clone());
        assert_eq!((s, served), (200, None), "{path}: {v}");
    }
    std::fs::remove_file(d.dir.path().join("packages/tiny-bge-m3.tar.zst")).expect("rm");
    common::wait_until(&d, "tiny-bge-m3 gone", || {
        model_entry(&d, "tiny-bge-m3").is_none()
    });
    // The vector: MiniLM first (listed first, and allow_dimension_mismatch lets its width
    // through). The sparse and ColBERT outputs: only the copy serves them.
    for ((path, body), by) in
        asks.iter()
            .zip(["all-MiniLM-L6-v2", "tiny-bge-m3-copy", "tiny-bge-m3-copy"])
    {
        let (s, served, v) = request(path, body.clone());
        assert_eq!((s, served.as_deref()), (200, Some(by)), "{path}: {v}");
    }
}
