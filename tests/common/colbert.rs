//! The tiny ColBERT of tests/fixtures/architectures/colbert.py: its folder as
//! sentence-transformers' MultiVectorEncoder saved it, with its weights regenerated from the
//! seeds, and the reference's token vectors and MaxSim scores.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::fixtures::{Parameter, copy_tree, fixture, pack_into, seeded_safetensors};

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
