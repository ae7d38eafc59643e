//! The tiny seeded models of tests/fixtures/architectures: their weights regenerated from the
//! splitmix64 stream generate.py filled them from (so none are committed), and the rerankers
//! packed with `caxton pack` as a user would.

use std::path::{Path, PathBuf};

use caxton::package::pack::{PackOptions, PackSummary, WeightStorage, pack};
use serde::Deserialize;

/// A fixture folder under tests/fixtures/architectures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/architectures")
        .join(name)
}

/// The seed and parameter shapes of a fixture's weights (in its `reference.json` or
/// `reranker.json`).
#[derive(Deserialize)]
struct Weights {
    seed: u64,
    parameters: Vec<Parameter>,
}

/// One seeded parameter as a generator recorded it: name and shape (generate.py's tiny
/// models, whose rule is by name), or with its amplitude and offset (families.py).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub enum Parameter {
    /// Uniform in [-0.15, 0.15), +1 for norm weights, ×10 for MPNet's relative bias.
    Tiny(String, Vec<usize>),
    /// Uniform in [-amplitude, amplitude), plus the offset.
    Scaled(String, Vec<usize>, f64, f64),
}

impl Parameter {
    fn name_and_shape(&self) -> (&str, &[usize]) {
        match self {
            Parameter::Tiny(n, s) | Parameter::Scaled(n, s, ..) => (n, s),
        }
    }

    /// The value a uniform draw `u` in [0, 1) becomes, in f64 (as the generators compute it).
    fn value(&self, u: f64) -> f64 {
        match self {
            Parameter::Tiny(name, _) => {
                let mut v = u * 0.3 - 0.15;
                if name.ends_with("weight")
                    && (name.contains("LayerNorm") || name.contains("layer_norm"))
                {
                    v += 1.0;
                }
                if name.contains("relative_attention_bias") {
                    v *= 10.0;
                }
                v
            }
            Parameter::Scaled(_, _, amplitude, offset) => (u * 2.0 - 1.0) * amplitude + offset,
        }
    }
}

/// The embedding model fixture `arch` (width 32) as a sentence-transformers folder with its
/// weights, in `dir`.
pub fn embedding_folder(arch: &str, dir: &Path) {
    let src = fixture(arch);
    let w: Weights =
        serde_json::from_slice(&std::fs::read(src.join("reference.json")).expect("reference.json"))
            .expect("reference JSON");
    std::fs::create_dir_all(dir.join("1_Pooling")).expect("mkdir");
    copy_with_weights(
        &src,
        dir,
        &[
            "config.json",
            "tokenizer.json",
            "modules.json",
            "sentence_bert_config.json",
            "1_Pooling/config.json",
        ],
        w.seed,
        &w.parameters,
    );
    // Prompts as sentence-transformers saves them (empty ones mean none).
    std::fs::write(
        dir.join("config_sentence_transformers.json"),
        r#"{"prompts": {"query": "query: ", "document": ""}, "default_prompt_name": "query"}"#,
    )
    .expect("st config");
}

/// The embedding fixture `arch` packed by `caxton pack` as `<id>` into
/// `out_dir/<id>.tar.zst`.
pub fn embedding_package(arch: &str, id: &str, out_dir: &Path) -> PathBuf {
    pack_into(id, out_dir, |folder| embedding_folder(arch, folder)).0
}

/// The folder `make` writes, packed as `<id>` into `out_dir/<id>.tar.zst`; and its manifest.
pub fn pack_into(
    id: &str,
    out_dir: &Path,
    make: impl FnOnce(&Path),
) -> (PathBuf, caxton::package::Manifest) {
    let work = tempfile::tempdir().expect("tempdir");
    let folder = work.path().join(id);
    make(&folder);
    std::fs::create_dir_all(out_dir).expect("mkdir");
    let package = out_dir.join(format!("{id}.tar.zst"));
    let summary = pack_folder(&folder, id, &package);
    // pack's provenance record stays out of the package directory the daemon watches.
    let _ = std::fs::remove_file(caxton::package::pack::provenance_path(&package));
    (package, summary.manifest)
}

/// The generators' `fill`: splitmix64 from `seed`, top 24 bits to a uniform draw in [0, 1)
/// in f64, made each parameter's value ([`Parameter::value`]), as f32, parameters in the order
/// given (name order); each as (name, shape, values).
pub fn seeded_values(seed: u64, parameters: &[Parameter]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    parameters
        .iter()
        .map(|p| {
            let (name, shape) = p.name_and_shape();
            let n: usize = shape.iter().product();
            let values = (0..n)
                .map(|_| p.value((next() >> 40) as f64 / (1u64 << 24) as f64) as f32)
                .collect();
            (name.to_string(), shape.to_vec(), values)
        })
        .collect()
}

/// [`seeded_values`] as safetensors bytes.
pub fn seeded_safetensors(seed: u64, parameters: &[Parameter]) -> Vec<u8> {
    f32_safetensors(seeded_values(seed, parameters))
}

/// Tensors given as (name, shape, values) as an f32 safetensors file's bytes.
pub fn f32_safetensors(tensors: Vec<(String, Vec<usize>, Vec<f32>)>) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

/// A reranker fixture's reference.json: pairs and what transformers and sentence-transformers
/// made of them.
#[derive(Deserialize)]
pub struct RerankerReference {
    /// The pair length the reference tokenized to.
    pub max_seq_length: usize,
    pub seed: u64,
    pub parameters: Vec<Parameter>,
    pub pairs: Vec<(String, String)>,
    pub tokens: Vec<usize>,
    /// transformers' logits.
    pub logits: Vec<f32>,
    /// `CrossEncoder.predict`'s scores (sigmoid of the logits).
    pub scores: Vec<f32>,
    /// One query against several documents.
    pub rank: RankReference,
    /// The same ranking under another instruction (a reranker that takes one).
    #[serde(default)]
    pub instructed: Option<InstructedReference>,
}

/// A ranking of [`RerankerReference::rank`]'s documents under `instruction`.
#[derive(Deserialize)]
pub struct InstructedReference {
    pub instruction: String,
    /// Best first.
    pub ranking: Vec<Ranked>,
}

/// `CrossEncoder.rank` of one query against several documents.
#[derive(Deserialize)]
pub struct RankReference {
    pub query: String,
    pub documents: Vec<String>,
    /// Tokens of each (query, document) pair after truncation.
    pub tokens: Vec<usize>,
    /// Best first.
    pub ranking: Vec<Ranked>,
}

/// One document's place in [`RankReference::ranking`].
#[derive(Deserialize)]
pub struct Ranked {
    pub index: usize,
    pub score: f32,
}

/// The reference of `<arch>-reranker`.
pub fn reranker_reference(arch: &str) -> RerankerReference {
    let path = fixture(&format!("{arch}-reranker")).join("reranker.json");
    serde_json::from_slice(&std::fs::read(&path).expect("reranker.json")).expect("reranker JSON")
}

/// The folder of `<arch>-reranker` with its weights, in `dir`: as sentence-transformers saved
/// the CrossEncoder, or for qwen3 as Qwen ships Qwen3-Reranker (every file but the reference).
pub fn reranker_folder(arch: &str, dir: &Path) {
    let r = reranker_reference(arch);
    let src = fixture(&format!("{arch}-reranker"));
    std::fs::create_dir_all(dir).expect("mkdir");
    let files: Vec<String> = std::fs::read_dir(&src)
        .expect("read fixture")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name != "reranker.json")
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    copy_with_weights(&src, dir, &files, r.seed, &r.parameters);
}

/// `files` copied from the fixture `src` into `dir`, and the seeded weights beside them.
fn copy_with_weights(src: &Path, dir: &Path, files: &[&str], seed: u64, parameters: &[Parameter]) {
    for f in files {
        std::fs::copy(src.join(f), dir.join(f)).expect(f);
    }
    std::fs::write(
        dir.join("model.safetensors"),
        seeded_safetensors(seed, parameters),
    )
    .expect("weights");
}

/// `<arch>-reranker` packed by `caxton pack` as `<id>` into `out_dir/<id>.tar.zst`, and the
/// manifest pack wrote.
pub fn reranker_package(
    arch: &str,
    id: &str,
    out_dir: &Path,
) -> (PathBuf, caxton::package::Manifest) {
    pack_into(id, out_dir, |folder| reranker_folder(arch, folder))
}

/// `caxton pack FOLDER --id ID -o PACKAGE` with the weights as they are.
pub fn pack_folder(folder: &Path, id: &str, package: &Path) -> PackSummary {
    pack_folder_stored(folder, id, package, WeightStorage::AsIs)
}

/// `caxton pack FOLDER --id ID -o PACKAGE --weights STORAGE`.
pub fn pack_folder_stored(
    folder: &Path,
    id: &str,
    package: &Path,
    weights: WeightStorage,
) -> PackSummary {
    pack_as(folder, id, package, weights)
        .unwrap_or_else(|e| panic!("caxton pack {}: {e}", folder.display()))
}

/// `caxton pack FOLDER --id ID -o PACKAGE`, its refusal as the message it prints.
pub fn try_pack_folder(folder: &Path, id: &str, package: &Path) -> Result<PackSummary, String> {
    pack_as(folder, id, package, WeightStorage::AsIs).map_err(|e| e.to_string())
}

fn pack_as(
    folder: &Path,
    id: &str,
    package: &Path,
    weights: WeightStorage,
) -> Result<PackSummary, caxton::package::PackageError> {
    pack(
        &PackOptions {
            model_dir: folder.to_path_buf(),
            id: Some(id.to_string()),
            version: "1".into(),
            weights,
            level: 3,
            prompts: Vec::new(),
            default_prompt: None,
            matryoshka: None,
        },
        package,
    )
}

/// A families.py fixture (issue 30: real widths, texts up to 8,192 tokens): every file of
/// its folder but the reference, and the seeded weights (and a Dense module's), in `dir`.
pub fn family_folder(arch: &str, dir: &Path) -> FamilyReference {
    let src = fixture(arch);
    let r: FamilyReference =
        serde_json::from_slice(&std::fs::read(src.join("reference.json")).expect("reference.json"))
            .expect("reference JSON");
    copy_tree(&src, dir);
    std::fs::remove_file(dir.join("reference.json")).expect("rm reference.json");
    std::fs::write(
        dir.join("model.safetensors"),
        seeded_safetensors(r.seed, &r.parameters),
    )
    .expect("weights");
    for d in &r.dense {
        std::fs::write(dir.join(&d.path), seeded_safetensors(d.seed, &d.parameters))
            .expect("dense weights");
    }
    r
}

pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("read fixture") {
        let entry = entry.expect("entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy");
        }
    }
}

/// What families.py recorded of a fixture.
#[derive(Deserialize)]
pub struct FamilyReference {
    /// The folder's `sentence_bert_config.json` limit, which pack copies into the manifest.
    pub max_seq_length: usize,
    pub seed: u64,
    pub parameters: Vec<Parameter>,
    /// The Dense modules after pooling: their weights' files in the folder and parameters.
    pub dense: Vec<DenseReference>,
    pub texts: Vec<String>,
    pub tokens: Vec<usize>,
    /// sentence-transformers' vectors, normalised.
    pub vectors: Vec<Vec<f32>>,
    pub matryoshka: MatryoshkaReference,
}

/// A fixture's Dense module weights.
#[derive(Deserialize)]
pub struct DenseReference {
    pub path: String,
    pub seed: u64,
    pub parameters: Vec<Parameter>,
}

/// The vectors of the first `texts` texts cut to each width (sentence-transformers'
/// `truncate_dim`, or the model card's recipe where the family has its own step).
#[derive(Deserialize)]
pub struct MatryoshkaReference {
    pub dimensions: Vec<usize>,
    pub texts: usize,
    pub vectors: std::collections::BTreeMap<String, Vec<Vec<f32>>>,
}

/// tests/fixtures/architectures/splade's `sparse.json`: the seeded weights and
/// `SparseEncoder.encode`'s term weights per pooling/activation variant.
#[derive(Deserialize)]
pub struct SparseReference {
    pub seed: u64,
    pub parameters: Vec<Parameter>,
    /// By `"<pooling>/<activation>"`.
    pub weights: SparseWeights,
}

/// The reference's variants: SpladePooling's, and the inference-free model's.
#[derive(Deserialize)]
pub struct SparseWeights {
    #[serde(rename = "max/relu")]
    pub max_relu: SparseVariant,
    #[serde(rename = "sum/log1p_relu")]
    pub sum_log1p_relu: SparseVariant,
    #[serde(rename = "inference-free")]
    pub inference_free: InferenceFree,
}

/// The inference-free model's texts and their terms as queries and as documents.
#[derive(Deserialize)]
pub struct InferenceFree {
    pub texts: Vec<String>,
    pub query: Vec<Vec<(u32, f32)>>,
    pub document: Vec<Vec<(u32, f32)>>,
}

/// One variant's texts and their terms above zero as `[token id, weight]`.
#[derive(Deserialize)]
pub struct SparseVariant {
    pub texts: Vec<String>,
    pub weights: Vec<Vec<(u32, f32)>>,
}

pub fn sparse_reference() -> SparseReference {
    serde_json::from_slice(&std::fs::read(fixture("splade/sparse.json")).expect("sparse.json"))
        .expect("sparse JSON")
}

/// The tiny SPLADE model as sentence-transformers saved its SparseEncoder, with its weights
/// and SpladePooling's `pooling` and `activation`, in `dir`.
pub fn sparse_folder(dir: &Path, pooling: &str, activation: &str) {
    let r = sparse_reference();
    let src = fixture("splade");
    std::fs::create_dir_all(dir.join("1_SpladePooling")).expect("mkdir");
    copy_with_weights(
        &src,
        dir,
        &[
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "modules.json",
            "sentence_bert_config.json",
            "config_sentence_transformers.json",
        ],
        r.seed,
        &r.parameters,
    );
    std::fs::write(
        dir.join("1_SpladePooling/config.json"),
        format!(
            r#"{{"pooling_strategy": "{pooling}", "activation_function": "{activation}", "embedding_dimension": null}}"#
        ),
    )
    .expect("pooling config");
}

/// The tiny SPLADE model packed as `<id>` into `out_dir/<id>.tar.zst`.
pub fn sparse_package(
    id: &str,
    out_dir: &Path,
    pooling: &str,
    activation: &str,
) -> (PathBuf, caxton::package::Manifest) {
    pack_into(id, out_dir, |folder| {
        sparse_folder(folder, pooling, activation)
    })
}

/// The inference-free SPLADE (a Router: SparseStaticEmbedding for queries, the tiny SPLADE for
/// documents) as sentence-transformers saved it, with its weights, in `dir`.
pub fn inference_free_folder(dir: &Path) {
    let r = sparse_reference();
    let src = fixture("splade-inference-free");
    copy_tree(&src, dir);
    std::fs::write(
        dir.join("document_0_Transformer/model.safetensors"),
        seeded_safetensors(r.seed, &r.parameters),
    )
    .expect("document weights");
    // sparse.py's query weights: uniform in [-1, 3) from seed 77.
    let query = [Parameter::Scaled("weight".into(), vec![800], 2.0, 1.0)];
    std::fs::write(
        dir.join("query_0_SparseStaticEmbedding/model.safetensors"),
        seeded_safetensors(77, &query),
    )
    .expect("query weights");
}

/// The inference-free SPLADE packed as `<id>` into `out_dir/<id>.tar.zst`.
pub fn inference_free_package(id: &str, out_dir: &Path) -> (PathBuf, caxton::package::Manifest) {
    pack_into(id, out_dir, inference_free_folder)
}
