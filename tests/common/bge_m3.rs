//! The tiny bge-m3 of tests/fixtures/architectures/bge_m3.py: its folder as BAAI ships
//! bge-m3 (sentence-transformers files plus FlagEmbedding's `colbert_linear.pt` and
//! `sparse_linear.pt`), the weights and the two `.pt` files regenerated from the seeds, and
//! FlagEmbedding's outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::fixtures::{
    Parameter, copy_tree, fixture, pack_into, seeded_safetensors, seeded_values,
};

/// bge-m3/bge_m3.json.
#[derive(Deserialize)]
pub struct BgeM3Reference {
    seed: u64,
    parameters: Vec<Parameter>,
    heads: BTreeMap<String, Head>,
    pub texts: Vec<String>,
    /// `dense_vecs`.
    pub dense: Vec<Vec<f32>>,
    /// `lexical_weights`: per text, `[token id, weight]` by id.
    pub sparse: Vec<Vec<(u32, f32)>>,
    /// `colbert_vecs`: per text, a vector per token after the first.
    pub colbert: Vec<Vec<Vec<f32>>>,
    /// Text indices of the scored queries and documents.
    pub queries: Vec<usize>,
    pub documents: Vec<usize>,
    /// `colbert_score` of each query against each document.
    pub colbert_scores: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Head {
    seed: u64,
    parameters: Vec<Parameter>,
}

pub fn bge_m3_reference() -> BgeM3Reference {
    serde_json::from_slice(&std::fs::read(fixture("bge-m3/bge_m3.json")).expect("bge_m3.json"))
        .expect("bge-m3 JSON")
}

/// The tiny bge-m3's folder with its weights and heads, in `dir`.
pub fn bge_m3_folder(dir: &Path) {
    let r = bge_m3_reference();
    copy_tree(&fixture("bge-m3"), dir);
    std::fs::remove_file(dir.join("bge_m3.json")).expect("rm");
    std::fs::write(
        dir.join("model.safetensors"),
        seeded_safetensors(r.seed, &r.parameters),
    )
    .expect("weights");
    for (name, head) in &r.heads {
        let values = seeded_values(head.seed, &head.parameters);
        let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = values
            .iter()
            .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
            .collect();
        std::fs::write(
            dir.join(format!("{name}.pt")),
            super::torch_pt::state_dict(name, &tensors),
        )
        .expect("head");
    }
}

/// The tiny bge-m3 packed as `<id>` into `out_dir/<id>.tar.zst`.
pub fn bge_m3_package(id: &str, out_dir: &Path) -> (PathBuf, caxton::package::Manifest) {
    pack_into(id, out_dir, bge_m3_folder)
}
