//! The package manifest (`manifest.yaml`): its schema, parsing and validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod image_text;
mod late_interaction;
mod outputs;
mod pair_template;
mod rules;
mod vectors;
mod weights;
pub use late_interaction::{LateInteraction, LateSimilarity, QueryExpansion};
pub use outputs::{OutputHeads, OutputName, TokenWeights};
pub use pair_template::PairTemplate;
pub use rules::check_entry_path;
pub use vectors::{Dense, DenseActivation, InputType, Matryoshka, Mismatch};
pub use weights::{
    INT8_BLOCK, INT8_MIN_VALUES, INT8_SCALES_SUFFIX, StoredWeights, quantize_int8_block, to_int8,
};

/// Name of the manifest entry, which must be the first entry of every package.
pub const MANIFEST_NAME: &str = "manifest.yaml";

/// The only manifest format this build understands.
pub const FORMAT: u32 = 1;

/// A manifest larger than this is refused before it is read, so a hostile package cannot make
/// the verifier allocate without bound.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// Largest file a manifest may declare. The biggest models Caxton targets are about 1 GiB;
/// the cap keeps size arithmetic far from overflow and a hostile manifest from claiming terabytes.
pub const MAX_FILE_BYTES: u64 = 32 << 30;

/// Largest total a manifest may declare.
pub const MAX_TOTAL_BYTES: u64 = 64 << 30;

/// Files the engine needs; a package without them cannot serve and is refused at verification.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// The parsed `manifest.yaml` of a model package.
///
/// Unknown keys are refused so a typo (or a field from a newer format) never silently changes
/// how a model runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version; only [`FORMAT`] is accepted.
    pub format: u32,
    /// Model id requests use to name the model: `[A-Za-z0-9._-]{1,128}`.
    pub id: String,
    /// Package version; when two packages carry the same id the higher one wins (see
    /// [`compare_versions`]).
    pub version: String,
    /// Network architecture, which selects the engine implementation.
    pub architecture: Architecture,
    /// Length of the embedding vectors; must equal `hidden_size` in `config.json`.
    pub dimensions: usize,
    /// Texts are truncated to this many tokens (special tokens included).
    pub max_seq_length: usize,
    /// How token vectors become one text vector.
    pub pooling: Pooling,
    /// Whether vectors are L2-normalised by default.
    pub normalize: bool,
    /// Named prompts put before a text ahead of tokenization, as sentence-transformers does
    /// (e5's `query: ` and `passage: `); a request picks one with `prompt_name`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prompts: BTreeMap<String, String>,
    /// The prompt used when a request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_prompt: Option<String>,
    /// What the model is for: embedding texts (the default, left out of embedding manifests so
    /// their bytes stay as they were) or scoring query–document pairs.
    #[serde(default, skip_serializing_if = "ModelKind::is_embedding")]
    pub kind: ModelKind,
    /// The widths the model was trained to be cut to (Matryoshka), and the family's own step
    /// before cutting; absent, a request may cut its vectors to any width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matryoshka: Option<Matryoshka>,
    /// sentence-transformers' Dense modules after pooling, in order: each a linear layer (and
    /// activation) whose weights are a file of the package. The last one's outputs are the
    /// vectors' `dimensions`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dense: Vec<Dense>,
    /// A reranker's number of outputs (its classifier head's labels: 1); only for rerankers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<usize>,
    /// What a reranker applies to its logits to make scores; only for rerankers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<ScoreActivation>,
    /// How a decoder reranker makes one text of a pair (see [`PairTemplate`]); only for
    /// rerankers, and then their head reads the last token (`pooling: last_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_template: Option<PairTemplate>,
    /// What a sparse model applies to its logits (`kind: sparse` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse_activation: Option<SparseActivation>,
    /// An inference-free sparse model's query side (`kind: sparse` only): a file of the
    /// package holding one weight per vocabulary term (safetensors, tensor `weight`), which a
    /// query's tokens look up instead of running the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_weights: Option<String>,
    /// A multi-vector model's query and document rules and score (`kind: multi_vector` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_interaction: Option<LateInteraction>,
    /// An embedding model's outputs, when it makes more than its vector: `[dense, sparse,
    /// multi_vector]` (bge-m3), each beside the vector made from the same pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputName>,
    /// The layers of the outputs beside the vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_heads: Option<OutputHeads>,
    /// A two-tower model's image preprocessing (`kind: image_text` only): what its saved
    /// processor does to a picture before the image tower sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<crate::images::Preprocess>,
    /// How `caxton pack` stored the weights; absent: as the source folder had them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<StoredWeights>,
    /// Every other entry of the package, and nothing else.
    pub files: Vec<FileEntry>,
}

/// Longest prompt text accepted, in bytes.
pub const MAX_PROMPT_BYTES: usize = 1024;

/// The most tokens a package may take in one text (or pair): the engine's longest pass.
pub const MAX_SEQ_LENGTH: usize = 8192;

/// Architectures the engine can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// BERT-family encoders (MiniLM, bge, e5, ...), on the engine's own encoder.
    Bert,
    /// DistilBERT (msmarco-distilbert, ...), mapped onto the BERT encoder.
    #[serde(rename = "distilbert")]
    DistilBert,
    /// XLM-RoBERTa (paraphrase-multilingual-*, multilingual e5 large, ...), mapped onto the
    /// BERT encoder with RoBERTa's position offset.
    #[serde(rename = "xlm-roberta")]
    XlmRoberta,
    /// MPNet (all-mpnet-base-v2, ...), with its relative position bias.
    Mpnet,
    /// NomicBERT (nomic-embed-text-v1, v1.5): rotary positions, SwiGLU, no biases.
    #[serde(rename = "nomic-bert")]
    NomicBert,
    /// ModernBERT (gte-modernbert-base, modernbert-embed-base, granite-embedding r2): norms
    /// before each block, rotary positions, local and global attention, GeGLU.
    #[serde(rename = "modernbert")]
    ModernBert,
    /// Alibaba's GTE encoder (`model_type: new`: gte-base-en-v1.5, gte-multilingual-base):
    /// rotary positions with NTK scaling, a fused GeGLU.
    Gte,
    /// Qwen3 (Qwen3-Embedding): a decoder, causal, with grouped-query attention, per-head
    /// query and key norms, RMSNorm before each block, SwiGLU, rotary positions, no biases.
    Qwen3,
    /// Gemma 3 as EmbeddingGemma runs it (`model_type: gemma3_text`): bidirectional, norms
    /// before and after each block, local and global layers with their own rotary bases,
    /// grouped-query heads with query and key norms, GeGLU.
    Gemma3,
    /// CLIP (`CLIPModel`): an image tower and a causal text tower (`kind: image_text`).
    Clip,
    /// SigLIP and SigLIP 2 at a fixed resolution (`SiglipModel`): an image tower pooled by
    /// attention and a text tower over texts padded to their length (`kind: image_text`).
    Siglip,
}

impl Architecture {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::DistilBert => "distilbert",
            Architecture::XlmRoberta => "xlm-roberta",
            Architecture::Mpnet => "mpnet",
            Architecture::NomicBert => "nomic-bert",
            Architecture::ModernBert => "modernbert",
            Architecture::Gte => "gte",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma3 => "gemma3",
            Architecture::Clip => "clip",
            Architecture::Siglip => "siglip",
        }
    }

    /// Every architecture, in the order errors list them.
    pub const ALL: [Architecture; 11] = [
        Architecture::Bert,
        Architecture::DistilBert,
        Architecture::XlmRoberta,
        Architecture::Mpnet,
        Architecture::NomicBert,
        Architecture::ModernBert,
        Architecture::Gte,
        Architecture::Qwen3,
        Architecture::Gemma3,
        Architecture::Clip,
        Architecture::Siglip,
    ];

    /// The `model_type`s a `config.json` of this architecture carries (transformers' names,
    /// and for GTE its own code's `new`).
    pub fn model_types(self) -> &'static [&'static str] {
        match self {
            Architecture::Bert => &["bert"],
            Architecture::DistilBert => &["distilbert"],
            Architecture::XlmRoberta => &["xlm-roberta"],
            Architecture::Mpnet => &["mpnet"],
            Architecture::NomicBert => &["nomic_bert"],
            Architecture::ModernBert => &["modernbert"],
            Architecture::Gte => &["new", "gte"],
            Architecture::Qwen3 => &["qwen3"],
            Architecture::Gemma3 => &["gemma3_text"],
            Architecture::Clip => &["clip"],
            Architecture::Siglip => &["siglip"],
        }
    }

    /// Whether the architecture is a two-tower image and text model.
    pub fn is_image_text(self) -> bool {
        matches!(self, Architecture::Clip | Architecture::Siglip)
    }

    /// The architecture whose checkpoints carry `model_type`.
    pub fn of_model_type(model_type: &str) -> Option<Architecture> {
        Architecture::ALL
            .into_iter()
            .find(|a| a.model_types().contains(&model_type))
    }
}

/// What a model is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A sentence-transformers bi-encoder: text in, vector out.
    #[default]
    Embedding,
    /// A cross-encoder: a query–document pair in, a relevance score out.
    Reranker,
    /// A sentence-transformers SparseEncoder (SPLADE): text in, a weight per vocabulary term
    /// out (`dimensions` is the vocabulary's size), most of them zero.
    Sparse,
    /// A sentence-transformers MultiVectorEncoder (ColBERT): text in, a vector per token out,
    /// scored against another text's by late interaction (MaxSim).
    MultiVector,
    /// A CLIP or SigLIP model with both towers: a text or an image in, a vector out, both in
    /// one space; a text scored against images by the model's own logit.
    ImageText,
}

impl ModelKind {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Embedding => "embedding",
            ModelKind::Reranker => "reranker",
            ModelKind::Sparse => "sparse",
            ModelKind::MultiVector => "multi_vector",
            ModelKind::ImageText => "image_text",
        }
    }

    /// As the fallback rules compare kinds.
    pub fn shape_kind(self) -> crate::config::fallback::Kind {
        use crate::config::fallback::Kind;
        match self {
            ModelKind::Embedding => Kind::Embedding,
            ModelKind::Reranker => Kind::Reranker,
            ModelKind::Sparse => Kind::Sparse,
            ModelKind::MultiVector => Kind::MultiVector,
            ModelKind::ImageText => Kind::ImageText,
        }
    }

    fn is_embedding(&self) -> bool {
        *self == ModelKind::Embedding
    }
}

/// The function a reranker applies to its logits, as sentence-transformers' CrossEncoder
/// names it (`activation_fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreActivation {
    /// `1 / (1 + e^-x)` of each logit (CrossEncoder's default for one label).
    Sigmoid,
    /// The logits as they are (its default for several labels).
    Identity,
    /// `tanh` of each logit.
    Tanh,
}

impl ScoreActivation {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ScoreActivation::Sigmoid => "sigmoid",
            ScoreActivation::Identity => "identity",
            ScoreActivation::Tanh => "tanh",
        }
    }

    /// Applies the activation to one pair's logits in place.
    pub fn apply(self, logits: &mut [f32]) {
        match self {
            ScoreActivation::Sigmoid => logits
                .iter_mut()
                .for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
            ScoreActivation::Identity => {}
            ScoreActivation::Tanh => logits.iter_mut().for_each(|x| *x = x.tanh()),
        }
    }
}

/// Pooling strategies, as sentence-transformers names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean of the token vectors, padding excluded by the attention mask.
    Mean,
    /// The vector of the first (`[CLS]`) token.
    Cls,
    /// The vector of the last real token (a causal model's only token that saw the whole
    /// text: Qwen3-Embedding's end-of-text token), wherever the padding sits.
    LastToken,
    /// A sparse model's term weights: the largest over the tokens (SpladePooling's `max`).
    Max,
    /// A sparse model's term weights: their sum over the tokens (SpladePooling's `sum`).
    Sum,
    /// Every token's vector, none pooled: a multi-vector model's.
    Tokens,
    /// Each tower pools as its model does (`kind: image_text`): CLIP's text at its
    /// end-of-text token and its image at the class row, SigLIP's text at its last token and
    /// its image by its attention head.
    Towers,
}

impl Pooling {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::LastToken => "last_token",
            Pooling::Max => "max",
            Pooling::Sum => "sum",
            Pooling::Tokens => "tokens",
            Pooling::Towers => "towers",
        }
    }
}

/// What a sparse model applies to each token's vocabulary logits before pooling them
/// (SpladePooling's `activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SparseActivation {
    /// `log(1 + max(0, x))`: SPLADE's.
    Relu,
    /// `log(1 + log(1 + max(0, x)))`: opensearch's doubly-logged weights.
    Log1pRelu,
}

impl SparseActivation {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SparseActivation::Relu => "relu",
            SparseActivation::Log1pRelu => "log1p_relu",
        }
    }

    /// The weight of one logit.
    pub fn apply(self, x: f32) -> f32 {
        let w = x.max(0.0).ln_1p();
        match self {
            SparseActivation::Relu => w,
            SparseActivation::Log1pRelu => w.ln_1p(),
        }
    }
}

/// One file of a package with the size and digest it must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path inside the package, `/`-separated.
    pub path: String,
    /// Exact size in bytes; also the bound on how much the verifier will decompress for it.
    pub size: u64,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
}

/// A manifest that parsed but breaks a rule; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ManifestError {
    /// Dotted path of the offending field, e.g. `files[2].path`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
    ManifestError {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Manifest {
    /// Parses and validates manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_yaml::from_slice(bytes).map_err(|e| {
            let place = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            invalid("manifest.yaml", format!("{e}{place}"))
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The entry for `path`, if listed.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Sum of the declared file sizes: the most the verifier will decompress for the payload.
    pub fn declared_bytes(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |acc, f| acc.saturating_add(f.size))
    }

    /// Serialises the manifest as `caxton pack` writes it.
    pub fn to_yaml(&self) -> String {
        // Serialising plain strings, numbers and enums cannot fail.
        serde_yaml::to_string(self).unwrap_or_default()
    }
}

/// Orders package versions: split on `.`, `-`, `+` and `_`; numeric parts compare as numbers
/// and rank above text parts; text parts compare as strings; a version that is a prefix of
/// another is lower (`1.2` < `1.2.1`). So `2` < `10`, `1.9` < `1.10`, `1.0-rc1` < `1.0.1`.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let split = |s: &str| {
        s.split(['.', '-', '+', '_'])
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (pa, pb) = (split(a), split(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            (Ok(_), Err(_)) => Ordering::Greater,
            (Err(_), Ok(_)) => Ordering::Less,
            (Err(_), Err(_)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests;
