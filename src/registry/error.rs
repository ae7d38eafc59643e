//! The registry's refusals: a model that cannot be found, is of the other kind, cannot load, or
//! (with its fallback chain exhausted) has nobody to stand in for it. `api::error` maps each to
//! its status and code; the messages here are what the client and the journal read.

use std::time::Duration;

use crate::package::Mismatch;

/// Why a model could not serve.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// No verified package has this id.
    #[error("no model with id {0:?}")]
    Unknown(String),
    /// The package verified but the model would not load.
    #[error("model {id:?} failed to load: {reason}")]
    Failed {
        /// Model id.
        id: String,
        /// Why.
        reason: String,
        /// Until the next attempt (the backoff).
        retry_after: Duration,
    },
    /// Memory does not allow the load now.
    #[error("{reason}")]
    NoMemory {
        /// Model id.
        id: String,
        /// Why, with the numbers.
        reason: String,
        /// When a retry may succeed.
        retry_after: Duration,
        /// No wait would help (the model is larger than the budget, or only models of
        /// higher priority hold the memory): a change of configuration is needed.
        lasting: bool,
    },
}

/// Why a request's model (or, by its fallback chain, another) cannot answer it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// No verified package has the id a request named.
    #[error("model {id:?} not found; available: {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    NotFound {
        /// The id asked for.
        id: String,
        /// The ids there are.
        known: Vec<String>,
    },
    /// `models.default` names a model with no verified package.
    #[error("the default model {0:?} (models.default) has no verified package")]
    DefaultMissing(String),
    /// A rerank request without a model, and no reranker installed.
    #[error(
        "no reranker is installed; side-load a cross-encoder package (caxton pack makes one from a CrossEncoder folder) into models.package_dir"
    )]
    NoReranker,
    /// A rerank request without a model, and several rerankers to choose from.
    #[error(
        "several rerankers are installed ({}); name one with \"model\" or set models.default_reranker",
        .0.join(", ")
    )]
    RerankerRequired(Vec<String>),
    /// A sparse request without a model, and no sparse model installed.
    #[error(
        "no sparse model is installed; side-load a sparse encoder package (caxton pack makes one from a SparseEncoder folder) into models.package_dir"
    )]
    NoSparse,
    /// A sparse request without a model, and several sparse models to choose from.
    #[error(
        "several sparse models are installed ({}); name one with \"model\" or set models.default_sparse",
        .0.join(", ")
    )]
    SparseRequired(Vec<String>),
    /// Pictures without a model, and no image-text model installed.
    #[error(
        "no image-text model is installed; side-load a CLIP or SigLIP package (caxton pack makes one from a CLIPModel or SiglipModel folder) into models.package_dir"
    )]
    NoImageText,
    /// Pictures without a model, and several image-text models to choose from.
    #[error(
        "several image-text models are installed ({}); name one with \"model\"",
        .0.join(", ")
    )]
    ImageTextRequired(Vec<String>),
    /// A token-vectors request without a model, and no multi-vector model installed.
    #[error(
        "no multi-vector model is installed; side-load a late-interaction (ColBERT) package (caxton pack makes one from a MultiVectorEncoder folder) into models.package_dir"
    )]
    NoMultiVector,
    /// A token-vectors request without a model, and several multi-vector models.
    #[error(
        "several multi-vector models are installed ({}); name one with \"model\" or set models.default_multi_vector",
        .0.join(", ")
    )]
    MultiVectorRequired(Vec<String>),
    /// An embedding request naming a reranker.
    #[error(
        "model {0} is a reranker (a cross-encoder that scores query–document pairs), not an embedding model; send it to POST /rerank or POST /v1/rerank, or name an embedding model"
    )]
    NotEmbedding(String),
    /// A request naming a model of another kind (sparse against dense and back).
    #[error(
        "model {id} is {have}, and this endpoint needs {want}: POST /v1/embeddings and /embed take embedding models, POST /embed_sparse sparse ones, POST /embed_all multi-vector ones, /rerank and /v1/rerank rerankers and multi-vector ones"
    )]
    WrongKind {
        /// The model named.
        id: String,
        /// What it is.
        have: &'static str,
        /// What the endpoint serves.
        want: &'static str,
    },
    /// A rerank request naming an embedding model.
    #[error(
        "model {0} is an embedding model, not a reranker; send it to POST /v1/embeddings or POST /embed, or name a reranker (a cross-encoder package)"
    )]
    NotReranker(String),
    /// What the request asks does not fit the model's manifest (`dimensions`).
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    /// The model could not be made to serve (a failed load says where to look).
    #[error("{}", explain(.0))]
    Load(#[from] LoadError),
    /// The model is not loaded and memory is at its hard limit, so nothing loads.
    #[error(
        "model {id} is not loaded and memory is at its hard limit; nothing loads until it eases, retry later"
    )]
    HardLimit {
        /// Model id.
        id: String,
        /// When memory may have eased.
        retry_after: Duration,
    },
    /// The requested model's refusal, when no alternative of its fallback chain could answer.
    #[error("{error}; alternatives tried (models.fallback_strategy {strategy}): {tried}")]
    Exhausted {
        /// The requested model's own refusal (its status and code are the answer's).
        error: Box<ModelError>,
        /// `models.fallback_strategy`.
        strategy: &'static str,
        /// Each alternative and why it did not answer, in the order tried.
        tried: String,
    },
}

/// A load's refusal as a client reads it: a failed one says where its cause is logged.
fn explain(e: &LoadError) -> String {
    match e {
        LoadError::Failed { .. } => format!(
            "{e}; see the daemon's journal (CAXTON_EVENT=model_load_failed), then replace the package"
        ),
        _ => e.to_string(),
    }
}
