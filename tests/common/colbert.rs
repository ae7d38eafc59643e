//! The tiny ColBERT of tests/fixtures/architectures/colbert.py: its folder as
//! sentence-transformers' MultiVectorEncoder saved it, with its weights regenerated from the
//! seeds, and the reference's token vectors and MaxSim scores.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use super::Daemon;

use super::fixtures::{
    Parameter, copy_tree, f32_safetensors, fixture, pack_into, seeded_safetensors, seeded_values,
};

/// colbert/colbert.json.
#[derive(Deserialize)]
pub struct ColbertReference {
    seed: u64,
    parameters: Vec<Parameter>,
    projection: Parameter,
    projection_seed: u64,
    /// By variant: `fixed` (classic ColBERT) and `min-attend`.
    pub variants: std::collections::BTreeMap<String, ColbertVariant>,
}

/// One variant's texts, token vectors and scores.
#[derive(Deserialize)]
pub struct ColbertVariant {
    pub queries: Vec<String>,
    pub documents: Vec<String>,
    /// Per query, its token vectors (encode_query).
    pub query_vectors: Vec<Vec<Vec<f32>>>,
    /// Per document, its token vectors (encode_document).
    pub document_vectors: Vec<Vec<Vec<f32>>>,
    /// MaxSim of each query against each document.
    pub scores: Vec<Vec<f32>>,
}

pub fn colbert_reference() -> ColbertReference {
    serde_json::from_slice(&std::fs::read(fixture("colbert/colbert.json")).expect("colbert.json"))
        .expect("colbert JSON")
}

/// The tiny ColBERT's folder with its weights, `variant`'s settings, in `dir`.
pub fn colbert_folder(dir: &Path, variant: &str) {
    let r = colbert_reference();
    copy_tree(&fixture("colbert"), dir);
    std::fs::remove_file(dir.join("colbert.json")).expect("rm");
    let other = dir.join("min-attend.sentence_bert_config.json");
    if variant == "min-attend" {
        std::fs::rename(&other, dir.join("sentence_bert_config.json")).expect("variant");
    } else {
        std::fs::remove_file(&other).expect("rm");
    }
    std::fs::write(
        dir.join("model.safetensors"),
        seeded_safetensors(r.seed, &r.parameters),
    )
    .expect("weights");
    std::fs::write(
        dir.join("1_Dense/model.safetensors"),
        seeded_safetensors(r.projection_seed, std::slice::from_ref(&r.projection)),
    )
    .expect("projection");
}

/// The tiny ColBERT (`variant`) packed as `<id>` into `out_dir/<id>.tar.zst`.
pub fn colbert_package(
    id: &str,
    out_dir: &Path,
    variant: &str,
) -> (PathBuf, caxton::package::Manifest) {
    pack_into(id, out_dir, |folder| colbert_folder(folder, variant))
}

/// colbert-legacy/colbert-legacy.json (tests/fixtures/architectures/colbert_legacy.py): the
/// tiny ColBERT in PyLate's and Stanford-NLP's layouts, and what sentence-transformers made of
/// each.
#[derive(Deserialize)]
pub struct LegacyReference {
    seed: u64,
    projection: Parameter,
    projection_seed: u64,
    /// `pylate` and `stanford`.
    pub variants: std::collections::BTreeMap<String, LegacyVariant>,
}

/// One layout's encoder parameters (the PyLate one has two more vocabulary rows, its markers)
/// and the reference's answers.
#[derive(Deserialize)]
pub struct LegacyVariant {
    parameters: Vec<Parameter>,
    #[serde(flatten)]
    pub reference: ColbertVariant,
}

pub fn legacy_reference() -> LegacyReference {
    serde_json::from_slice(
        &std::fs::read(fixture("colbert-legacy/colbert-legacy.json")).expect("colbert-legacy.json"),
    )
    .expect("colbert-legacy JSON")
}

/// The `layout` folder (`pylate` or `stanford`) with its weights, in `dir`: PyLate's encoder
/// and 1_Dense as two files; Stanford's encoder under `bert.` with `linear.weight` in one.
pub fn legacy_folder(dir: &Path, layout: &str) {
    let r = legacy_reference();
    let v = &r.variants[layout];
    copy_tree(&fixture(&format!("colbert-legacy/{layout}")), dir);
    let projection = || seeded_values(r.projection_seed, std::slice::from_ref(&r.projection));
    if layout == "stanford" {
        let mut tensors: Vec<_> = seeded_values(r.seed, &v.parameters)
            .into_iter()
            .map(|(name, shape, values)| (format!("bert.{name}"), shape, values))
            .collect();
        tensors.extend(projection());
        std::fs::write(dir.join("model.safetensors"), f32_safetensors(tensors)).expect("weights");
    } else {
        std::fs::write(
            dir.join("model.safetensors"),
            seeded_safetensors(r.seed, &v.parameters),
        )
        .expect("weights");
        std::fs::write(
            dir.join("1_Dense/model.safetensors"),
            f32_safetensors(projection()),
        )
        .expect("projection");
    }
}

/// The `layout` folder packed as `<id>` into `out_dir/<id>.tar.zst`.
pub fn legacy_package(
    id: &str,
    out_dir: &Path,
    layout: &str,
) -> (PathBuf, caxton::package::Manifest) {
    pack_into(id, out_dir, |folder| legacy_folder(folder, layout))
}

/// A POST of `body` to `path`: the status and the answer.
pub fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.request("POST", path, &body.to_string())
}

/// Each text's vectors as the daemon answers them.
pub fn token_vectors(v: &Value) -> Vec<Vec<Vec<f32>>> {
    serde_json::from_value(v.clone()).expect("[[[f32]]]")
}

/// Cosine similarity, as f32 (the floors compare f32 figures).
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    super::cosine(a, b) as f32
}

/// The smallest cosine of any token vector of `got` with the reference's, after checking
/// every text has the reference's count of vectors.
pub fn worst_cosine(got: &[Vec<Vec<f32>>], want: &[Vec<Vec<f32>>], what: &str) -> f32 {
    assert_eq!(got.len(), want.len());
    let mut worst = 1f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what} {i}: vectors");
        for (a, b) in g.iter().zip(w) {
            worst = worst.min(cosine(a, b));
        }
    }
    worst
}

/// `/embed_all` of both sides and `/rerank` of every query by `id`, against `v`: the worst
/// token cosine and the worst score difference relative to the score.
pub fn measure(d: &Daemon, id: &str, v: &ColbertVariant) -> (f32, f32) {
    let (s, q) = post(
        d,
        "/embed_all",
        json!({"inputs": v.queries, "model": id, "input_type": "query", "truncate": true}),
    );
    assert_eq!(s, 200, "{q}");
    let (s, docs) = post(
        d,
        "/embed_all",
        json!({"inputs": v.documents, "model": id, "truncate": true}),
    );
    assert_eq!(s, 200, "{docs}");
    let cos = worst_cosine(&token_vectors(&q), &v.query_vectors, "query").min(worst_cosine(
        &token_vectors(&docs),
        &v.document_vectors,
        "document",
    ));
    let mut score_error = 0f32;
    for (qi, query) in v.queries.iter().enumerate() {
        let (s, r) = post(
            d,
            "/rerank",
            json!({"model": id, "query": query, "texts": v.documents, "truncate": true}),
        );
        assert_eq!(s, 200, "{r}");
        for rank in r.as_array().expect("ranks") {
            let i = rank["index"].as_u64().expect("index") as usize;
            let got = rank["score"].as_f64().expect("score") as f32;
            let want = v.scores[qi][i];
            score_error = score_error.max((got - want).abs() / want.abs().max(1e-6));
        }
    }
    (cos, score_error)
}

/// colbert-layouts/colbert-layouts.json (tests/fixtures/architectures/colbert_layouts.py): the
/// tiny ColBERT's token vectors and scores with its modules in each layout sentence-transformers
/// 6.2 runs.
#[derive(Deserialize)]
pub struct LayoutsReference {
    pub variants: std::collections::BTreeMap<String, ColbertVariant>,
}

pub fn layouts_reference() -> LayoutsReference {
    serde_json::from_slice(
        &std::fs::read(fixture("colbert-layouts/colbert-layouts.json")).expect("layouts"),
    )
    .expect("layouts JSON")
}

/// The tiny ColBERT's folder (the `fixed` variant's weights and settings) with its modules laid
/// out as `layout`, each Dense module's projection regenerated from the seed, in `dir`.
pub fn colbert_layout_folder(dir: &Path, layout: &str) {
    colbert_folder(dir, "fixed");
    for module in ["1_Dense", "2_MultiVectorMask", "3_Normalize"] {
        std::fs::remove_dir_all(dir.join(module)).expect("rm module");
    }
    copy_tree(&fixture(&format!("colbert-layouts/{layout}")), dir);
    let r = colbert_reference();
    for entry in std::fs::read_dir(dir).expect("folder").flatten() {
        if entry.file_name().to_string_lossy().ends_with("_Dense") {
            std::fs::write(
                entry.path().join("model.safetensors"),
                seeded_safetensors(r.projection_seed, std::slice::from_ref(&r.projection)),
            )
            .expect("projection");
        }
    }
}
