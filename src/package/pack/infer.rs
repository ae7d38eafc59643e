//! What a folder implies for the manifest: a sentence-transformers bi-encoder (its pooling,
//! normalisation and length), or a cross-encoder (sentence-transformers' CrossEncoder of
//! versions 2 to 6, or transformers' sequence classification: its labels, activation and pair
//! length).

use std::path::Path;

use serde::Deserialize;

use super::super::error::PackageError;
use super::super::manifest::{
    Architecture, Dense, LateInteraction, MAX_SEQ_LENGTH, ModelKind, OutputHeads, OutputName,
    PairTemplate, Pooling, ScoreActivation, SparseActivation,
};
use modules::{EmbedderModules, dense_module, output_width};

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    /// DistilBERT's `hidden_size`.
    dim: Option<usize>,
    /// NomicBERT's own `hidden_size` (its configs may carry both).
    n_embd: Option<usize>,
    max_position_embeddings: Option<usize>,
    /// NomicBERT's own `max_position_embeddings`.
    n_positions: Option<usize>,
    pad_token_id: Option<usize>,
    /// A sparse encoder's width.
    vocab_size: Option<usize>,
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
struct StConfig {
    max_seq_length: Option<usize>,
}

/// The parts of `config_sentence_transformers.json` a package carries.
#[derive(Deserialize, Default)]
pub(super) struct StModelConfig {
    #[serde(default)]
    pub prompts: std::collections::BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
    /// `CrossEncoder` for a cross-encoder (sentence-transformers 6).
    model_type: Option<String>,
    /// A CrossEncoder's activation (sentence-transformers 6).
    activation_fn: Option<String>,
    /// A MultiVectorEncoder's score (`maxsim`, `meanmaxsim`; none: maxsim).
    similarity_fn_name: Option<String>,
}

impl StModelConfig {
    pub(super) fn read(dir: &Path) -> Result<StModelConfig, PackageError> {
        let path = dir.join("config_sentence_transformers.json");
        if path.exists() {
            read_json(&path)
        } else {
            Ok(StModelConfig::default())
        }
    }
}

pub(super) fn unusable(msg: impl Into<String>) -> PackageError {
    PackageError::Unusable(msg.into())
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, PackageError> {
    let bytes = std::fs::read(path).map_err(|e| PackageError::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| unusable(format!("{}: {e}", path.display())))
}

/// [`read_json`] of a file a folder may leave out, whose absence means the defaults.
pub(super) fn read_json_or_default<T: for<'de> Deserialize<'de> + Default>(
    path: &Path,
) -> Result<T, PackageError> {
    match path.exists() {
        true => read_json(path),
        false => Ok(T::default()),
    }
}

/// The manifest fields a sentence-transformers folder implies.
pub(super) struct Inferred {
    pub architecture: Architecture,
    pub dimensions: usize,
    /// The Dense modules after pooling, their weights at `<module>/model.safetensors`.
    pub dense: Vec<Dense>,
    pub max_seq_length: usize,
    /// Why `max_seq_length` is less than the model's own length, when it is.
    pub length_note: Option<String>,
    pub pooling: Pooling,
    pub normalize: bool,
    pub kind: ModelKind,
    pub labels: Option<usize>,
    pub activation: Option<ScoreActivation>,
    /// A decoder reranker's template (see [`PairTemplate`]).
    pub pair_template: Option<PairTemplate>,
    /// A causal language model's `yes` and `no` token ids, whose head rows become the
    /// reranker's one row (see `logit_head`).
    pub logit_rows: Option<(u32, u32)>,
    /// A sparse encoder's activation of its logits.
    pub sparse_activation: Option<SparseActivation>,
    /// Where config.json, tokenizer.json and model.safetensors are, when not in the folder
    /// itself (an inference-free sparse encoder's document route).
    pub source_dir: Option<std::path::PathBuf>,
    /// An inference-free sparse encoder's query weights file.
    pub query_weights: Option<std::path::PathBuf>,
    /// A multi-vector encoder's query and document rules.
    pub late_interaction: Option<LateInteraction>,
    /// An embedder's outputs beside its vector (bge-m3's), their heads and files' bytes.
    pub outputs: Vec<OutputName>,
    pub output_heads: Option<OutputHeads>,
    pub output_files: Vec<(&'static str, Vec<u8>)>,
    /// The prompts the folder's layout implies, in place of `config_sentence_transformers.json`'s
    /// `prompts` (a PyLate or Stanford ColBERT's query and document markers).
    pub prompts: Option<std::collections::BTreeMap<String, String>>,
    /// Files the package stores in place of the folder's, by path: a tokenizer with a ColBERT's
    /// markers registered as tokens, a Stanford checkpoint's encoder and projection split apart.
    pub replaced: Vec<(String, Vec<u8>)>,
    /// A two-tower model's picture preparation.
    pub image: Option<crate::images::Preprocess>,
}

impl Inferred {
    /// A model of `kind` with nothing beyond its shape: no Dense modules, no normalisation,
    /// none of the other kinds' settings. Each kind's reader sets what its folder says.
    pub(super) fn new(
        architecture: Architecture,
        kind: ModelKind,
        pooling: Pooling,
        dimensions: usize,
        length: Length,
    ) -> Inferred {
        Inferred {
            architecture,
            dimensions,
            dense: Vec::new(),
            max_seq_length: length.tokens,
            length_note: length.note,
            pooling,
            normalize: false,
            kind,
            labels: None,
            activation: None,
            pair_template: None,
            logit_rows: None,
            sparse_activation: None,
            source_dir: None,
            query_weights: None,
            late_interaction: None,
            outputs: Vec::new(),
            output_heads: None,
            output_files: Vec::new(),
            prompts: None,
            replaced: Vec::new(),
            image: None,
        }
    }

    /// The bytes the package stores at `path` when they are not the folder's file.
    pub(super) fn replacement(&self, path: &str) -> Option<&[u8]> {
        self.replaced
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b.as_slice())
    }
}

/// The architecture a `config.json`'s `model_type` names, as transformers spells them.
fn architecture(model_type: Option<&str>) -> Result<Architecture, PackageError> {
    let names = Architecture::ALL
        .iter()
        .flat_map(|a| a.model_types())
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    match model_type {
        None => Err(unusable(format!(
            "config.json has no model_type; it must name one of: {names}"
        ))),
        Some(t) => Architecture::of_model_type(t).ok_or_else(|| {
            unusable(format!(
                "config.json: model_type {t:?} is not supported (supported: {names})"
            ))
        }),
    }
}

impl HfConfig {
    /// The width of its token vectors, under whichever name the family uses.
    fn hidden(&self) -> Result<usize, PackageError> {
        self.n_embd
            .or(self.hidden_size)
            .or(self.dim)
            .ok_or_else(|| unusable("config.json has no hidden_size (nor dim, nor n_embd)"))
    }

    /// How many positions a text may take.
    fn max_positions(&self, architecture: Architecture) -> usize {
        let positions = self
            .n_positions
            .or(self.max_position_embeddings)
            .unwrap_or(512);
        if matches!(architecture, Architecture::XlmRoberta | Architecture::Mpnet) {
            // RoBERTa's (and MPNet's) positions start after pad_token_id.
            positions.saturating_sub(self.pad_token_id.unwrap_or(1) + 1)
        } else {
            positions
        }
    }

    fn is_causal_lm(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a.ends_with("ForCausalLM"))
    }
}

/// The tokens a text (or pair) may take, and why it is fewer than the model's own, when so.
pub(super) struct Length {
    pub tokens: usize,
    pub note: Option<String>,
}

impl Length {
    /// sentence-transformers' own rule: `sentence_bert_config.json`'s `max_seq_length` when
    /// present (versions 2 to 5 saved it, and 6 still reads it first), else the tokenizer's
    /// `model_max_length` (version 6 saves nothing else: its `max_seq_length` is the
    /// tokenizer's) unless that is transformers' sentinel for none, else `max_positions`; never
    /// more than the positions. Issue 50: falling back to the positions packed a ModernBERT
    /// saved by sentence-transformers 6.2 with a limit of 512 as 1,024, and its texts between
    /// the two came out other than sentence-transformers' vectors.
    pub(super) fn as_sentence_transformers_reads(
        dir: &Path,
        max_positions: usize,
    ) -> Result<Length, PackageError> {
        let (tokens, source) = match (saved_length(dir)?, tokenizer_length(dir)?) {
            (Some(n), _) => (n, "sentence_bert_config.json: max_seq_length"),
            (None, Some(n)) => (n, "tokenizer_config.json: model_max_length"),
            (None, None) => (max_positions, "config.json: its positions"),
        };
        Ok(Length::within(tokens.min(max_positions), source))
    }

    /// `tokens`, or the most a package may take (with the note that says so) when more.
    pub(super) fn within(tokens: usize, source: &str) -> Length {
        if tokens <= MAX_SEQ_LENGTH {
            return Length { tokens, note: None };
        }
        Length {
            tokens: MAX_SEQ_LENGTH,
            note: Some(format!(
                "the model takes up to {tokens} tokens ({source}), and a package at most {MAX_SEQ_LENGTH}: packed with max_seq_length {MAX_SEQ_LENGTH}, so longer texts are refused (or cut there with truncate: true) where sentence-transformers would run them whole"
            )),
        }
    }
}

/// `sentence_bert_config.json`'s `max_seq_length`, when the folder has the file and the key.
pub(super) fn saved_length(dir: &Path) -> Result<Option<usize>, PackageError> {
    match dir.join("sentence_bert_config.json") {
        p if p.exists() => Ok(read_json::<StConfig>(&p)?.max_seq_length),
        _ => Ok(None),
    }
}

/// `tokenizer_config.json`'s `model_max_length`, unless it is transformers' sentinel for none
/// (`int(1e30)`, or any value no model could mean).
fn tokenizer_length(dir: &Path) -> Result<Option<usize>, PackageError> {
    match dir.join("tokenizer_config.json") {
        p if p.exists() => Ok(read_json::<TokenizerConfig>(&p)?
            .model_max_length
            .filter(|m| (2.0..1e9).contains(m))
            .map(|m| m as usize)),
        _ => Ok(None),
    }
}

/// Whether the folder's `modules.json` has a module of `class` (`Pooling`: a
/// sentence-transformers embedder's folder).
fn has_module(dir: &Path, class: &str) -> Result<bool, PackageError> {
    let path = dir.join("modules.json");
    if !path.exists() {
        return Ok(false);
    }
    let modules: Vec<StModule> = read_json(&path)?;
    Ok(modules.iter().any(|m| module_class(&m.kind) == Some(class)))
}

/// The class of a sentence-transformers module as `modules.json` names it: `models.Dense`
/// (sentence-transformers 2 to 5) or its module path (`base.modules.dense.Dense`, 6).
fn module_class(kind: &str) -> Option<&str> {
    kind.strip_prefix("sentence_transformers.")
        .and_then(|rest| rest.rsplit('.').next())
}

pub(super) fn infer(dir: &Path) -> Result<Inferred, PackageError> {
    if let Some(routed) = sparse::router(dir)? {
        return sparse::infer_routed(routed);
    }
    let config: HfConfig = read_json(&dir.join("config.json"))?;
    let st_model = StModelConfig::read(dir)?;
    let architecture = architecture(config.model_type.as_deref())?;
    if architecture.is_image_text() {
        return image_text::infer(dir, architecture);
    }
    let hidden = config.hidden()?;
    let max_positions = config.max_positions(architecture);
    let causal_lm = config.is_causal_lm();
    if is_cross_encoder(dir, &config, &st_model)? {
        return reranker::infer(
            dir,
            &config,
            &st_model,
            architecture,
            max_positions,
            causal_lm,
        );
    }
    if sparse::is_sparse(dir, &st_model)? {
        return sparse::infer(dir, &config, architecture, max_positions);
    }
    if multi_vector::is_multi_vector(dir, &st_model)? {
        return multi_vector::infer(dir, &st_model, architecture, hidden, max_positions);
    }
    if let Some(layout) = legacy_colbert::layout(dir, &config.architectures)? {
        return legacy_colbert::infer(dir, layout, &st_model, architecture, hidden, max_positions);
    }
    let modules = EmbedderModules::read(dir, hidden)?;
    let length = Length::as_sentence_transformers_reads(dir, max_positions)?;
    let heads = bge_m3::heads(dir, &config, hidden, length.tokens)?;
    let (outputs, output_heads, late_interaction, output_files) = match heads {
        Some(h) => (
            h.outputs,
            Some(h.output_heads),
            Some(h.late_interaction),
            h.files,
        ),
        None => (Vec::new(), None, None, Vec::new()),
    };
    let dimensions = output_width(&modules.dense, hidden)?;
    Ok(Inferred {
        dense: modules.dense,
        normalize: modules.normalize,
        late_interaction,
        outputs,
        output_heads,
        output_files,
        ..Inferred::new(
            architecture,
            ModelKind::Embedding,
            modules.pooling,
            dimensions,
            length,
        )
    })
}

/// Whether the folder holds a reranker rather than an embedder.
fn is_cross_encoder(
    dir: &Path,
    config: &HfConfig,
    st_model: &StModelConfig,
) -> Result<bool, PackageError> {
    // A causal language model is a reranker unless sentence-transformers pools it into an
    // embedder (Qwen3-Embedding's folder says Qwen3ForCausalLM too).
    Ok(st_model.model_type.as_deref() == Some("CrossEncoder")
        || config
            .architectures
            .iter()
            .any(|a| a.ends_with("ForSequenceClassification"))
        || (config.is_causal_lm() && !has_module(dir, "Pooling")?))
}

/// The Matryoshka widths a folder's model card records, as sentence-transformers' generated
/// cards quote MatryoshkaLoss's parameters (`"matryoshka_dims": [768, 512, ...]`).
pub(super) fn matryoshka_dims(dir: &Path) -> Vec<usize> {
    let Ok(card) = std::fs::read_to_string(dir.join("README.md")) else {
        return Vec::new();
    };
    let Some(at) = card.find("\"matryoshka_dims\"") else {
        return Vec::new();
    };
    let rest = &card[at..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else {
        return Vec::new();
    };
    if close < open {
        return Vec::new();
    }
    rest[open + 1..close]
        .split(',')
        .map(|n| n.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_default()
}

mod bge_m3;
mod image_text;
mod legacy_colbert;
mod modules;
mod multi_vector;
mod reranker;
mod sparse;

#[cfg(test)]
mod tests;
