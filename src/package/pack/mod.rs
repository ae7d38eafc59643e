//! `caxton pack`: turns a sentence-transformers folder into a package, deterministically (same
//! inputs and options give the same bytes), optionally storing the weights as f16, bf16 or
//! int8 ([`storage`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

mod infer;
mod logit_head;
mod storage;
mod torch_weights;

use super::error::PackageError;
use super::manifest::{Architecture, FORMAT, FileEntry, MANIFEST_NAME, Manifest, Matryoshka};
use infer::{Inferred, StModelConfig, infer, matryoshka_dims, unusable};
pub use storage::WeightStorage;

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
    /// The widths the model was trained to be cut to (default: those its model card quotes
    /// from MatryoshkaLoss, else none recorded, and any width is allowed).
    pub matryoshka: Option<Vec<usize>>,
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
    /// sha256 of the folder's `model.safetensors` (or, without one, `pytorch_model.bin`) as
    /// given (before any conversion).
    pub source_weights_sha256: String,
    /// How the folder differs from the known release of its id (see [`super::known`]).
    pub warnings: Vec<String>,
    /// Where the package serves less than the model could (its length past the most a
    /// package takes).
    pub notes: Vec<String>,
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
    let inferred = infer(&opts.model_dir)?;
    if inferred.kind == super::manifest::ModelKind::ImageText && opts.weights == WeightStorage::Int8
    {
        return Err(unusable(
            "--weights int8 is not supported for an image-text model yet: pack it as-is, or as f16 or bf16 (models.precision: int8 still runs its towers in int8)",
        ));
    }
    let id = package_id(opts)?;
    let (payload, source_weights_sha256) = read_payload(opts, &inferred)?;
    let manifest = build_manifest(opts, id, &inferred, &payload)?;
    write_package(output, opts.level, &manifest, &payload)?;

    let warnings = super::known::differences(
        &manifest.id,
        manifest.architecture,
        manifest.dimensions,
        &source_weights_sha256,
    );
    let package_sha256 = super::store::sha256_file(output)?;
    write_provenance(
        output,
        &provenance_record(
            opts,
            &manifest,
            &source_weights_sha256,
            &warnings,
            inferred.length_note.as_slice(),
            &package_sha256,
        ),
    )?;
    Ok(PackSummary {
        manifest,
        package_sha256,
        package_size: std::fs::metadata(output)
            .map_err(|e| PackageError::io("stat", output, e))?
            .len(),
        source_weights_sha256,
        warnings,
        notes: inferred.length_note.into_iter().collect(),
    })
}

/// Where a package keeps an inference-free sparse encoder's query weights.
const QUERY_WEIGHTS: &str = "query/model.safetensors";

/// The files after the manifest, in the order they are archived, with their bytes as stored.
type Payload<'a> = Vec<(&'a str, Vec<u8>)>;

/// `--id`, else the folder's name.
fn package_id(opts: &PackOptions) -> Result<String, PackageError> {
    match &opts.id {
        Some(id) => Ok(id.clone()),
        None => opts
            .model_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .ok_or_else(|| unusable("cannot derive an id from the folder name; pass --id")),
    }
}

/// The folder's files as the package stores them, and the sha256 of its `model.safetensors`
/// as given (before a reranker's head is cut to one row or the weights are converted).
fn read_payload<'a>(
    opts: &PackOptions,
    inferred: &'a Inferred,
) -> Result<(Payload<'a>, String), PackageError> {
    let dir = inferred.source_dir.as_ref().unwrap_or(&opts.model_dir);
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| PackageError::io("read", &p, e))
    };
    // A file the pack rewrote (a Stanford ColBERT's encoder without its projection) is stored
    // in place of the folder's; the source's checksum stays the folder's file's.
    let stored = |name: &str| match inferred.replacement(name) {
        Some(bytes) => Ok(bytes.to_vec()),
        None => read(name),
    };
    let (mut weights, source_weights_sha256) = match inferred.replacement("model.safetensors") {
        Some(bytes) => (bytes.to_vec(), torch_weights::source_sha256(dir)?),
        None => torch_weights::read(dir)?,
    };
    if let Some((yes, no)) = inferred.logit_rows {
        weights = logit_head::score_row(&weights, yes, no)?;
    }
    let weights = storage::convert(weights, opts.weights, "model.safetensors")?;
    let mut payload: Payload<'a> = vec![
        ("config.json", read("config.json")?),
        ("tokenizer.json", stored("tokenizer.json")?),
        ("model.safetensors", weights),
    ];
    // int8 leaves the Dense modules as they are: small (19 MB of EmbeddingGemma's 1.2 GB),
    // and the last steps before the vector (in int8 they took real EmbeddingGemma-300m from
    // a min cosine of 0.99933 to 0.99924, run in f32).
    let dense_storage = match opts.weights {
        WeightStorage::Int8 => WeightStorage::AsIs,
        other => other,
    };
    for d in &inferred.dense {
        let bytes = storage::convert(stored(&d.path)?, dense_storage, &d.path)?;
        payload.push((d.path.as_str(), bytes));
    }
    for (name, bytes) in &inferred.output_files {
        payload.push((name, bytes.clone()));
    }
    if let Some(path) = &inferred.query_weights {
        // One weight per term: small, stored as the folder has it.
        let bytes = std::fs::read(path).map_err(|e| PackageError::io("read", path, e))?;
        payload.push((QUERY_WEIGHTS, bytes));
    }
    Ok((payload, source_weights_sha256))
}

/// The manifest of what was inferred, the options and the payload, checked as the verifier
/// will check it.
fn build_manifest(
    opts: &PackOptions,
    id: String,
    inferred: &Inferred,
    payload: &Payload<'_>,
) -> Result<Manifest, PackageError> {
    let (prompts, default_prompt) = prompts(opts, inferred)?;
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
        matryoshka: matryoshka(opts, inferred),
        dense: inferred.dense.clone(),
        labels: inferred.labels,
        activation: inferred.activation,
        pair_template: inferred.pair_template.clone(),
        sparse_activation: inferred.sparse_activation,
        query_weights: inferred
            .query_weights
            .as_ref()
            .map(|_| QUERY_WEIGHTS.to_string()),
        late_interaction: inferred.late_interaction.clone(),
        outputs: inferred.outputs.clone(),
        output_heads: inferred.output_heads.clone(),
        image: inferred.image.clone(),
        weights: opts.weights.in_manifest(),
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
    Ok(manifest)
}

/// The widths given, else those of the model card; none recorded when there are none.
fn matryoshka(opts: &PackOptions, inferred: &Inferred) -> Option<Matryoshka> {
    let dimensions = opts
        .matryoshka
        .clone()
        .unwrap_or_else(|| matryoshka_dims(&opts.model_dir));
    (!dimensions.is_empty()).then(|| Matryoshka {
        dimensions,
        // nomic-embed-text-v1.5's card layer-normalises a vector before cutting it.
        layer_norm: inferred.architecture == Architecture::NomicBert,
    })
}

/// The folder's prompts (or those its layout implies) with the command line's over them, and
/// the default prompt.
fn prompts(
    opts: &PackOptions,
    inferred: &Inferred,
) -> Result<(BTreeMap<String, String>, Option<String>), PackageError> {
    let st_model = StModelConfig::read(&opts.model_dir)?;
    let mut prompts = inferred.prompts.clone().unwrap_or(st_model.prompts);
    // sentence-transformers writes empty prompts for models without any.
    prompts.retain(|_, text| !text.is_empty());
    prompts.extend(opts.prompts.iter().cloned());
    // A folder's default naming no prompt is ignored; one given on the command line must
    // exist (the manifest check says so).
    let default_prompt = opts.default_prompt.clone().or(st_model
        .default_prompt_name
        .filter(|d| prompts.contains_key(d)));
    Ok((prompts, default_prompt))
}

/// Writes the manifest then the payload as a tar in a zstd stream (with its checksum), to a
/// temporary file synced and renamed over `output`, so `output` is whole or absent.
fn write_package(
    output: &Path,
    level: i32,
    manifest: &Manifest,
    payload: &Payload<'_>,
) -> Result<(), PackageError> {
    let tmp = output.with_extension("tmp");
    let file = File::create(&tmp).map_err(|e| PackageError::io("create", &tmp, e))?;
    let write_err = |e: std::io::Error| PackageError::io("write", &tmp, e);
    let mut encoder =
        zstd::stream::write::Encoder::new(BufWriter::new(file), level).map_err(write_err)?;
    encoder.include_checksum(true).map_err(write_err)?;
    let mut builder = tar::Builder::new(encoder);
    let yaml = manifest.to_yaml();
    append(&mut builder, MANIFEST_NAME, yaml.as_bytes()).map_err(write_err)?;
    for (name, bytes) in payload {
        append(&mut builder, name, bytes).map_err(write_err)?;
    }
    let encoder = builder.into_inner().map_err(write_err)?;
    let mut out = encoder.finish().map_err(write_err)?;
    out.flush().map_err(write_err)?;
    out.get_ref().sync_all().map_err(write_err)?;
    drop(out);
    std::fs::rename(&tmp, output).map_err(|e| PackageError::io("rename into", output, e))
}

/// How the package was made, for [`write_provenance`].
fn provenance_record(
    opts: &PackOptions,
    manifest: &Manifest,
    source_weights_sha256: &str,
    warnings: &[String],
    notes: &[String],
    package_sha256: &str,
) -> serde_json::Value {
    let dir = &opts.model_dir;
    serde_json::json!({
        "packed_by": concat!("caxton pack ", env!("CARGO_PKG_VERSION")),
        "source_dir": std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
        "source_weights_sha256": source_weights_sha256,
        "known_release": super::known::KNOWN
            .iter()
            .find(|k| k.id == manifest.id)
            .and_then(|k| k.weights_sha256)
            .map(|w| w == source_weights_sha256),
        "weights_storage": opts.weights.as_str(),
        "differences_from_known_release": warnings,
        "notes": notes,
        "package_sha256": package_sha256,
    })
}

/// A safetensors file of `tensors` (name, dtype, shape, little-endian bytes), for tests.
#[cfg(test)]
pub(crate) fn safetensors_file(
    tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)],
) -> Vec<u8> {
    use safetensors::tensor::TensorView;
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
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
