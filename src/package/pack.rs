//! `caxton pack`: turns a sentence-transformers folder into a package, deterministically (same
//! inputs and options give the same bytes), optionally storing the weights as f16.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::PackageError;
use super::manifest::{
    Architecture, FORMAT, FileEntry, MANIFEST_NAME, Manifest, ModelKind, Pooling, ScoreActivation,
};

/// How the weights are stored in the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightStorage {
    /// As in the source folder.
    AsIs,
    /// f32 tensors converted to f16: half the size; the engine computes in f32 either way.
    F16,
}

/// What to pack and how.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// The sentence-transformers folder.
    pub model_dir: PathBuf,
    /// Model id; defaults to the folder's name.
    pub id: Option<String>,
    /// Package version.
    pub version: String,
    /// Weight storage.
    pub weights: WeightStorage,
    /// zstd level (1–22).
    pub level: i32,
    /// Prompts to add or override (name, text), over those of
    /// `config_sentence_transformers.json`.
    pub prompts: Vec<(String, String)>,
    /// The prompt used when a request names none (default: the folder's
    /// `default_prompt_name`).
    pub default_prompt: Option<String>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct PackSummary {
    /// The manifest written as the first entry.
    pub manifest: Manifest,
    /// sha256 of the package file.
    pub package_sha256: String,
    /// Size of the package file.
    pub package_size: u64,
    /// sha256 of the folder's `model.safetensors` as given (before any f16 conversion).
    pub source_weights_sha256: String,
    /// How the folder differs from the known release of its id (see [`super::known`]).
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    /// DistilBERT calls it `dim`.
    #[serde(alias = "dim")]
    hidden_size: usize,
    max_position_embeddings: Option<usize>,
    pad_token_id: Option<usize>,
    /// `BertForSequenceClassification` and the like mark a cross-encoder.
    #[serde(default)]
    architectures: Vec<String>,
    num_labels: Option<usize>,
    #[serde(default)]
    id2label: std::collections::BTreeMap<String, String>,
    /// Where sentence-transformers 4 and 5 save a CrossEncoder's activation.
    sentence_transformers: Option<StCrossEncoder>,
    /// Where sentence-transformers 2 and 3 saved it.
    sbert_ce_default_activation_function: Option<String>,
}

#[derive(Deserialize)]
struct StCrossEncoder {
    activation_fn: Option<String>,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
}

#[derive(Deserialize)]
struct StModule {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct StPooling {
    word_embedding_dimension: Option<usize>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct StConfig {
    max_seq_length: Option<usize>,
}

/// The parts of `config_sentence_transformers.json` a package carries.
#[derive(Deserialize, Default)]
struct StModelConfig {
    #[serde(default)]
    prompts: std::collections::BTreeMap<String, String>,
    default_prompt_name: Option<String>,
    /// `CrossEncoder` for a cross-encoder (sentence-transformers 6).
    model_type: Option<String>,
    /// A CrossEncoder's activation (sentence-transformers 6).
    activation_fn: Option<String>,
}

impl StModelConfig {
    fn read(dir: &Path) -> Result<StModelConfig, PackageError> {
        let path = dir.join("config_sentence_transformers.json");
        if path.exists() {
            read_json(&path)
        } else {
            Ok(StModelConfig::default())
        }
    }
}

fn unusable(msg: impl Into<String>) -> PackageError {
    PackageError::Unusable(msg.into())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, PackageError> {
    let bytes = std::fs::read(path).map_err(|e| PackageError::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| unusable(format!("{}: {e}", path.display())))
}

/// The manifest fields a sentence-transformers folder implies.
struct Inferred {
    architecture: Architecture,
    dimensions: usize,
    max_seq_length: usize,
    pooling: Pooling,
    normalize: bool,
    kind: ModelKind,
    labels: Option<usize>,
    activation: Option<ScoreActivation>,
}

fn infer(dir: &Path) -> Result<Inferred, PackageError> {
    let config: HfConfig = read_json(&dir.join("config.json"))?;
    let st_model = StModelConfig::read(dir)?;
    let architecture = match config.model_type.as_deref() {
        Some("bert") => Architecture::Bert,
        Some("distilbert") => Architecture::DistilBert,
        Some("xlm-roberta") => Architecture::XlmRoberta,
        Some("mpnet") => Architecture::Mpnet,
        other => {
            return Err(unusable(format!(
                "config.json: model_type {other:?} is not supported (supported: bert, distilbert, xlm-roberta, mpnet)"
            )));
        }
    };
    let mut max_positions = config.max_position_embeddings.unwrap_or(512);
    if matches!(architecture, Architecture::XlmRoberta | Architecture::Mpnet) {
        // RoBERTa's (and MPNet's) positions start after pad_token_id.
        max_positions = max_positions.saturating_sub(config.pad_token_id.unwrap_or(1) + 1);
    }
    let cross_encoder = st_model.model_type.as_deref() == Some("CrossEncoder")
        || config
            .architectures
            .iter()
            .any(|a| a.ends_with("ForSequenceClassification"));
    if cross_encoder {
        return infer_reranker(dir, &config, &st_model, architecture, max_positions);
    }
    let modules: Vec<StModule> = read_json(&dir.join("modules.json"))?;
    let mut pooling = None;
    let mut normalize = false;
    for m in &modules {
        match m.kind.as_str() {
            "sentence_transformers.models.Transformer" => {}
            "sentence_transformers.models.Normalize" => normalize = true,
            "sentence_transformers.models.Pooling" => {
                let p: StPooling = read_json(&dir.join(&m.path).join("config.json"))?;
                if p.pooling_mode_max_tokens || p.pooling_mode_mean_sqrt_len_tokens {
                    return Err(unusable(format!(
                        "{}/config.json: only mean or cls pooling is supported",
                        m.path
                    )));
                }
                pooling = Some(
                    match (p.pooling_mode_mean_tokens, p.pooling_mode_cls_token) {
                        (true, false) => Pooling::Mean,
                        (false, true) => Pooling::Cls,
                        _ => {
                            return Err(unusable(format!(
                                "{}/config.json: exactly one of mean or cls pooling must be set",
                                m.path
                            )));
                        }
                    },
                );
                if let Some(d) = p.word_embedding_dimension
                    && d != config.hidden_size
                {
                    return Err(unusable(format!(
                        "{}/config.json: word_embedding_dimension {d} differs from hidden_size {}",
                        m.path, config.hidden_size
                    )));
                }
            }
            other => {
                return Err(unusable(format!(
                    "modules.json: module {other} is not supported"
                )));
            }
        }
    }
    let pooling = pooling.ok_or_else(|| unusable("modules.json: no Pooling module"))?;
    let st: StConfig = read_json(&dir.join("sentence_bert_config.json"))?;
    let max_seq_length = st
        .max_seq_length
        .unwrap_or(max_positions)
        .min(max_positions);
    Ok(Inferred {
        architecture,
        dimensions: config.hidden_size,
        max_seq_length,
        pooling,
        normalize,
        kind: ModelKind::Embedding,
        labels: None,
        activation: None,
    })
}

/// A cross-encoder folder (sentence-transformers' CrossEncoder, or transformers'
/// sequence classification): its labels, the activation CrossEncoder applies (where each
/// version saved it, else its default: sigmoid for one label), and the pair length
/// CrossEncoder tokenizes to (`sentence_bert_config.json`'s `max_seq_length`, else the
/// tokenizer's `model_max_length`, within the positions).
fn infer_reranker(
    dir: &Path,
    config: &HfConfig,
    st_model: &StModelConfig,
    architecture: Architecture,
    max_positions: usize,
) -> Result<Inferred, PackageError> {
    if !matches!(architecture, Architecture::Bert | Architecture::XlmRoberta) {
        return Err(unusable(format!(
            "config.json: a {} cross-encoder is not supported (rerankers: bert, xlm-roberta)",
            architecture.as_str()
        )));
    }
    // transformers' own default is two labels when the config names none.
    let labels = config
        .num_labels
        .or((!config.id2label.is_empty()).then_some(config.id2label.len()))
        .unwrap_or(2);
    let (saved, source) = match (
        &st_model.activation_fn,
        config
            .sentence_transformers
            .as_ref()
            .and_then(|s| s.activation_fn.as_ref()),
        &config.sbert_ce_default_activation_function,
    ) {
        (Some(a), _, _) => (Some(a), "config_sentence_transformers.json: activation_fn"),
        (None, Some(a), _) => (Some(a), "config.json: sentence_transformers.activation_fn"),
        (None, None, Some(a)) => (Some(a), "config.json: sbert_ce_default_activation_function"),
        (None, None, None) => (None, ""),
    };
    let activation = match saved.map(String::as_str) {
        None if labels == 1 => ScoreActivation::Sigmoid,
        None => ScoreActivation::Identity,
        Some("torch.nn.modules.activation.Sigmoid") => ScoreActivation::Sigmoid,
        Some("torch.nn.modules.linear.Identity") => ScoreActivation::Identity,
        Some("torch.nn.modules.activation.Tanh") => ScoreActivation::Tanh,
        Some(other) => {
            return Err(unusable(format!(
                "{source}: {other} is not supported (torch.nn.modules.activation.Sigmoid, torch.nn.modules.linear.Identity, torch.nn.modules.activation.Tanh)"
            )));
        }
    };
    let st: Option<StConfig> = match dir.join("sentence_bert_config.json") {
        p if p.exists() => Some(read_json(&p)?),
        _ => None,
    };
    let tokenizer_max = match dir.join("tokenizer_config.json") {
        p if p.exists() => read_json::<TokenizerConfig>(&p)?
            .model_max_length
            // transformers writes a huge sentinel when the tokenizer sets no limit.
            .filter(|m| (2.0..1e9).contains(m))
            .map(|m| m as usize),
        _ => None,
    };
    let max_seq_length = st
        .and_then(|s| s.max_seq_length)
        .or(tokenizer_max)
        .unwrap_or(max_positions)
        .min(max_positions);
    Ok(Inferred {
        architecture,
        dimensions: config.hidden_size,
        max_seq_length,
        pooling: Pooling::Cls,
        normalize: false,
        kind: ModelKind::Reranker,
        labels: Some(labels),
        activation: Some(activation),
    })
}

/// Converts every f32 tensor of a safetensors file to f16, keeping names, shapes, other dtypes
/// and metadata. Output order is fixed by the safetensors serialiser, so it is reproducible.
fn weights_to_f16(bytes: &[u8]) -> Result<Vec<u8>, PackageError> {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    let bad = |e: safetensors::SafeTensorError| unusable(format!("model.safetensors: {e}"));
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(bad)?;
    let tensors = SafeTensors::deserialize(bytes).map_err(bad)?;
    let mut converted: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in tensors.tensors() {
        let data = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .flat_map(|c| {
                    half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
                })
                .collect(),
            _ => view.data().to_vec(),
        };
        let dtype = match view.dtype() {
            Dtype::F32 => Dtype::F16,
            d => d,
        };
        converted.push((name, dtype, view.shape().to_vec(), data));
    }
    let views = converted
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    safetensors::serialize(views, metadata.metadata().clone()).map_err(bad)
}

/// Where `caxton pack` records how a package was made: next to it, outside the package, so
/// the package's bytes depend only on the model (packing stays reproducible).
pub fn provenance_path(package: &Path) -> PathBuf {
    let mut name = package.as_os_str().to_owned();
    name.push(".provenance.json");
    PathBuf::from(name)
}

fn write_provenance(package: &Path, record: &serde_json::Value) -> Result<(), PackageError> {
    let path = provenance_path(package);
    let text = serde_json::to_string_pretty(record)
        .map_err(|e| unusable(format!("provenance record: {e}")))?;
    std::fs::write(&path, text + "\n").map_err(|e| PackageError::io("write", &path, e))
}

/// Builds a package at `output` from `opts.model_dir`, and its provenance record beside it.
pub fn pack(opts: &PackOptions, output: &Path) -> Result<PackSummary, PackageError> {
    let dir = &opts.model_dir;
    let inferred = infer(dir)?;
    let id = match &opts.id {
        Some(id) => id.clone(),
        None => dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| unusable("cannot derive an id from the folder name; pass --id"))?,
    };

    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| PackageError::io("read", &p, e))
    };
    let weights = read("model.safetensors")?;
    let source_weights_sha256 = hex::encode(Sha256::digest(&weights));
    let weights = match opts.weights {
        WeightStorage::AsIs => weights,
        WeightStorage::F16 => weights_to_f16(&weights)?,
    };
    let payload: Vec<(&str, Vec<u8>)> = vec![
        ("config.json", read("config.json")?),
        ("tokenizer.json", read("tokenizer.json")?),
        ("model.safetensors", weights),
    ];
    let st_model = StModelConfig::read(dir)?;
    let mut prompts = st_model.prompts;
    // sentence-transformers writes empty prompts for models without any.
    prompts.retain(|_, text| !text.is_empty());
    prompts.extend(opts.prompts.iter().cloned());
    // A folder's default naming no prompt is ignored; one given on the command line must
    // exist (the manifest check says so).
    let default_prompt = opts.default_prompt.clone().or(st_model
        .default_prompt_name
        .filter(|d| prompts.contains_key(d)));
    let manifest = Manifest {
        prompts,
        default_prompt,
        format: FORMAT,
        id,
        version: opts.version.clone(),
        architecture: inferred.architecture,
        dimensions: inferred.dimensions,
        max_seq_length: inferred.max_seq_length,
        pooling: inferred.pooling,
        normalize: inferred.normalize,
        kind: inferred.kind,
        labels: inferred.labels,
        activation: inferred.activation,
        files: payload
            .iter()
            .map(|(name, bytes)| FileEntry {
                path: (*name).to_string(),
                size: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
            })
            .collect(),
    };
    manifest
        .validate()
        .map_err(|e| unusable(format!("the manifest would be invalid: {e}")))?;

    let tmp = output.with_extension("tmp");
    let file = File::create(&tmp).map_err(|e| PackageError::io("create", &tmp, e))?;
    let write_err = |e: std::io::Error| PackageError::io("write", &tmp, e);
    let mut encoder =
        zstd::stream::write::Encoder::new(BufWriter::new(file), opts.level).map_err(write_err)?;
    encoder.include_checksum(true).map_err(write_err)?;
    let mut builder = tar::Builder::new(encoder);
    let yaml = manifest.to_yaml();
    append(&mut builder, MANIFEST_NAME, yaml.as_bytes()).map_err(write_err)?;
    for (name, bytes) in &payload {
        append(&mut builder, name, bytes).map_err(write_err)?;
    }
    let encoder = builder.into_inner().map_err(write_err)?;
    let mut out = encoder.finish().map_err(write_err)?;
    out.flush().map_err(write_err)?;
    out.get_ref().sync_all().map_err(write_err)?;
    drop(out);
    std::fs::rename(&tmp, output).map_err(|e| PackageError::io("rename into", output, e))?;

    let warnings = super::known::differences(
        &manifest.id,
        manifest.architecture,
        manifest.dimensions,
        &source_weights_sha256,
    );
    let package_sha256 = super::store::sha256_file(output)?;
    write_provenance(
        output,
        &serde_json::json!({
            "packed_by": concat!("caxton pack ", env!("CARGO_PKG_VERSION")),
            "source_dir": std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
            "source_weights_sha256": source_weights_sha256,
            "known_release": super::known::KNOWN
                .iter()
                .find(|k| k.id == manifest.id)
                .and_then(|k| k.weights_sha256)
                .map(|w| w == source_weights_sha256),
            "weights_storage": match opts.weights {
                WeightStorage::AsIs => "as-is",
                WeightStorage::F16 => "f16",
            },
            "differences_from_known_release": warnings,
            "package_sha256": package_sha256,
        }),
    )?;
    Ok(PackSummary {
        manifest,
        package_sha256,
        package_size: std::fs::metadata(output)
            .map_err(|e| PackageError::io("stat", output, e))?
            .len(),
        source_weights_sha256,
        warnings,
    })
}

/// Appends a regular file with fixed metadata, so the archive depends only on the content.
fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, name, bytes)
}
