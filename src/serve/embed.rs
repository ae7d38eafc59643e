//! Embedding texts: the model (or its substitute), the prompt, tokenization, the length rule,
//! the engine's pass at the asked width.

use std::sync::Arc;

use super::{ServeError, account, check_serving, lengths, served_by, tokenize_each};
use crate::engine::{Cut, Encoded, VectorShape};
use crate::package::{InputType, ModelKind};
use crate::registry::Wanted;
use crate::registry::fallback::Reason;
use crate::state::AppState;

/// One embedding request, whatever API it came through.
pub struct EmbedRequest {
    /// Model id, or the default.
    pub model: Option<String>,
    /// Non-empty texts.
    pub texts: Vec<String>,
    /// Cut texts at the model's limit (true) or refuse them (false).
    pub truncate: bool,
    /// Which end of an over-long text goes.
    pub cut: Cut,
    /// Override the model's normalisation.
    pub normalize: Option<bool>,
    /// One of the model's prompts to put before every text (else its default prompt).
    pub prompt_name: Option<String>,
    /// What the texts are, which picks the model's prompt for them.
    pub input_type: Option<InputType>,
    /// The width to cut vectors to (OpenAI's `dimensions`), checked against the model
    /// before anything loads.
    pub dimensions: Option<i64>,
}

/// Vectors and accounting for a request.
pub struct Embedded {
    /// The model that answered.
    pub model: String,
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Set when `model` answered for the requested one: why that one did not.
    pub fallback: Option<Reason>,
    /// The inputs cut at the model's length.
    pub truncated: Vec<usize>,
    /// How long the request waited for its model (a load, when it was not in memory).
    pub waited: std::time::Duration,
    /// Whether the vectors are of unit length.
    pub normalized: bool,
}

/// Runs `req` through the named (or default) model.
pub async fn embed(state: &Arc<AppState>, req: EmbedRequest) -> Result<Embedded, ServeError> {
    check_serving(state)?;
    let settings = state.settings();
    let requested = req.model.unwrap_or_else(|| settings.models.default.clone());
    if let Some(known) = state.registry.get(&requested) {
        // Before a load: a prompt the model does not have costs nothing.
        known
            .package
            .manifest
            .prompt_for(req.prompt_name.as_deref(), req.input_type)?;
    }
    let wanted = Wanted {
        id: &requested,
        kind: ModelKind::Embedding,
        width: req.dimensions,
    };
    let asked = std::time::Instant::now();
    let served = state.registry.serve(&settings.models, wanted).await?;
    let waited = asked.elapsed();
    let (id, slot, model) = (served.id, served.slot, served.model);
    served_by(&id);
    let manifest = &model.package.manifest;
    let prompt = manifest
        .prompt_for(req.prompt_name.as_deref(), req.input_type)?
        .map(str::to_owned);
    let tokenizer = model.tokenizer.clone();
    let cut = req.cut;
    let texts = match prompt {
        // As sentence-transformers does: the prompt is part of the text, tokens and all.
        Some(p) => req.texts.into_iter().map(|t| format!("{p}{t}")).collect(),
        None => req.texts,
    };
    let encoded: Vec<Encoded> =
        tokenize_each(texts, String::len, move |t| tokenizer.encode_cut(t, cut)).await?;
    let (truncated, tokens) = lengths(&encoded, req.truncate, |index| ServeError::TooLong {
        index,
        max: manifest.max_seq_length,
        id: id.clone(),
    })?;
    tracing::debug!(caxton_model = %id, texts = encoded.len(), tokens, "embedding request queued");
    let shape = VectorShape {
        normalize: req.normalize.unwrap_or(manifest.normalize),
        width: served.width,
    };
    let vectors = model.embed(encoded, shape).await?;
    account(&slot, vectors.len(), tokens);
    Ok(Embedded {
        model: id,
        vectors,
        tokens,
        fallback: served.fallback,
        truncated,
        waited,
        normalized: shape.normalize,
    })
}
