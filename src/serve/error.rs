//! Why a request could not be served, past its parsing: the daemon is starting, its model
//! cannot answer, the texts do not fit the model, or the engine failed. `api::error` maps each
//! to its status and code.

use crate::engine::EngineError;
use crate::package::Mismatch;
use crate::registry::{LoadError, ModelError};

/// A request the serving path refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// The daemon is still verifying its packages.
    #[error("caxtond is starting (verifying model packages); retry in a moment")]
    Starting,
    /// No model could answer.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The request asks what the model's manifest does not allow (a prompt, an instruction).
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    /// The tokenizer refused a text.
    #[error("{0}")]
    Tokenizer(String),
    /// The tokenizer panicked or its thread died: the daemon's fault.
    #[error("{0}")]
    TokenizerCrashed(String),
    /// A text longer than the model reads, and the request does not allow cutting it.
    #[error(
        "input {index} is longer than the {max} tokens model {id} accepts; shorten it or set \"truncate\": true"
    )]
    TooLong {
        /// The input's index.
        index: usize,
        /// The model's token limit.
        max: usize,
        /// Model id.
        id: String,
    },
    /// A query–document pair longer than the reranker reads, and cutting is not allowed.
    #[error(
        "the query with `{field}[{index}]` is longer than the {max} tokens model {id} reads for a pair; shorten them or set \"truncate\": true"
    )]
    PairTooLong {
        /// The request's name for the documents.
        field: &'static str,
        /// The document's index.
        index: usize,
        /// The model's token limit for a pair.
        max: usize,
        /// Model id.
        id: String,
    },
    /// A multi-vector model's query or document longer than it keeps for that side, and
    /// cutting is not allowed.
    #[error(
        "{what} is longer than the {max} tokens model {id} keeps for a {side}; shorten it or set \"truncate\": true"
    )]
    SideTooLong {
        /// The input: `query`, `texts[2]`, `input 2`.
        what: String,
        /// `query` or `document`.
        side: &'static str,
        /// The side's token limit.
        max: usize,
        /// Model id.
        id: String,
    },
    /// A token id the model's vocabulary lacks (`POST /decode`).
    #[error(
        "`{place}` is {token}, which is not a token id of model {id} (its vocabulary has {vocab} tokens); send ids from its /tokenize or /embed_sparse"
    )]
    UnknownTokenId {
        /// `ids[3]`, `ids[1][3]`.
        place: String,
        /// The id sent.
        token: u32,
        /// Model id.
        id: String,
        /// Tokens in its vocabulary.
        vocab: usize,
    },
    /// A blank instruction.
    #[error("`instruction` is empty or only whitespace; leave it out for the model's own")]
    EmptyInstruction,
    /// The model's weights computed a non-finite score.
    #[error(
        "model {id} scored `{field}[{index}]` as {value} (the weights compute non-finite numbers); replace the package"
    )]
    NonFinite {
        /// Model id.
        id: String,
        /// The request's name for the documents.
        field: &'static str,
        /// The document's index.
        index: usize,
        /// The score.
        value: f32,
    },
    /// A picture refused: not a data URI, past a limit, or not a picture that decodes.
    #[error("`{place}` {error}")]
    Image {
        /// Where it is in the request: `input[2].image`, `images[0]`, `documents[1].image`.
        place: String,
        /// Why.
        error: crate::images::ImageError,
    },
    /// A picture sent to a model that embeds text only.
    #[error(
        "`{place}` is a picture, and model {id} embeds text only ({kind}); send pictures to an image-text model (kind image_text: CLIP, SigLIP)"
    )]
    NotImageModel {
        /// The first picture's place.
        place: String,
        /// Model id.
        id: String,
        /// What the model is, in words.
        kind: &'static str,
    },
    /// Text documents to rank on an image-text model, which ranks pictures.
    #[error(
        "`{place}` is a text, and model {id} is an image-text model, which ranks pictures against a text query; send documents as {{\"image\": \"data:image/jpeg;base64,...\"}}, or name a reranker"
    )]
    TextDocuments {
        /// The first text document's place.
        place: String,
        /// Model id.
        id: String,
    },
    /// The model's engine refused or failed the pass.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<LoadError> for ServeError {
    fn from(e: LoadError) -> Self {
        ServeError::Model(e.into())
    }
}
