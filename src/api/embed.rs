//! The embedding path shared by both APIs: pick the model, tokenize off the async workers,
//! check lengths, and hand the texts to the model's engine thread.

use std::sync::Arc;

use super::error::ApiError;
use crate::engine::{Cut, Encoded};
use crate::package::ModelKind;
use crate::state::AppState;

/// One embedding request, whatever API it came through.
pub struct EmbedRequest {
    /// Model id, or the default.
    pub model: Option<String>,
    /// Non-empty texts.
    pub texts: Vec<String>,
    /// Cut texts at the model's limit (true) or refuse them with 413 (false).
    pub truncate: bool,
    /// Which end of an over-long text goes.
    pub cut: Cut,
    /// Override the model's normalisation.
    pub normalize: Option<bool>,
    /// One of the model's prompts to put before every text (else its default prompt).
    pub prompt_name: Option<String>,
    /// The width the request will cut vectors to (OpenAI's `dimensions`): a substitute model
    /// must be at least this wide.
    pub dimensions: Option<usize>,
}

/// Vectors and accounting for a request.
pub struct Embedded {
    /// The model that answered.
    pub model: String,
    /// Whether the vectors are unit length.
    pub normalized: bool,
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Set when `model` answered for the requested one: why that one did not.
    pub fallback: Option<crate::registry::fallback::Reason>,
}

/// Runs `req` through the named (or default) model.
pub async fn embed(state: &Arc<AppState>, req: EmbedRequest) -> Result<Embedded, ApiError> {
    super::check_serving(state)?;
    let requested = req
        .model
        .unwrap_or_else(|| state.settings().models.default.clone());
    let served =
        super::fallback::acquire(state, &requested, ModelKind::Embedding, req.dimensions).await?;
    let (id, slot, model) = (served.id, served.slot, served.model);
    super::served_by(&id);
    let manifest = &model.package.manifest;
    let prompt = match req
        .prompt_name
        .as_ref()
        .or(manifest.default_prompt.as_ref())
    {
        None => None,
        Some(name) => Some(manifest.prompts.get(name).cloned().ok_or_else(|| {
            ApiError::bad_request(
                "unknown_prompt",
                format!(
                    "model {id} has no prompt {name:?}; {}",
                    if manifest.prompts.is_empty() {
                        "it has none, leave prompt_name out".to_string()
                    } else {
                        format!(
                            "its prompts: {}",
                            manifest
                                .prompts
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ),
            )
        })?),
    };
    let tokenizer = model.tokenizer.clone();
    let cut = req.cut;
    let texts = match prompt {
        // As sentence-transformers does: the prompt is part of the text, tokens and all.
        Some(p) => req.texts.into_iter().map(|t| format!("{p}{t}")).collect(),
        None => req.texts,
    };
    let encoded: Vec<Encoded> = tokenize_off_runtime(move || {
        texts
            .iter()
            .map(|t| tokenizer.encode_cut(t, cut))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    refuse_truncated(&encoded, req.truncate, |i| {
        format!(
            "input {i} is longer than the {} tokens model {id} accepts; shorten it or set \"truncate\": true",
            model.package.manifest.max_seq_length
        )
    })?;
    let tokens = encoded.iter().map(Encoded::len).sum();
    tracing::debug!(caxton_model = %id, texts = encoded.len(), tokens, "embedding request queued");
    let normalized = req.normalize.unwrap_or(model.package.manifest.normalize);
    let vectors = model.embed(encoded, normalized).await?;
    account(&slot, vectors.len(), tokens);
    Ok(Embedded {
        model: id,
        normalized,
        vectors,
        tokens,
        fallback: served.fallback,
    })
}

/// 413 `input_too_long` with `message(i)` for the first input `i` the tokenizer cut, unless
/// the request allows cutting.
pub(super) fn refuse_truncated(
    encoded: &[Encoded],
    truncate: bool,
    message: impl FnOnce(usize) -> String,
) -> Result<(), ApiError> {
    match encoded.iter().position(|e| e.truncated) {
        Some(i) if !truncate => Err(ApiError::too_large("input_too_long", message(i))),
        _ => Ok(()),
    }
}

/// Records a request served by `slot`: its usage (idle time, counts) and the texts and
/// tokens metrics.
pub(super) fn account(slot: &crate::registry::ModelSlot, texts: usize, tokens: usize) {
    slot.touch(tokens as u64);
    let metrics = crate::metrics::get();
    let label = crate::metrics::Metrics::model(&slot.package.manifest.id);
    metrics.texts.get_or_create(&label).inc_by(texts as u64);
    metrics.tokens.get_or_create(&label).inc_by(tokens as u64);
}

/// Runs tokenization `work` off the async workers (long texts take milliseconds): its error
/// is the request's fault (400), a panic the daemon's (500); both `tokenizer_error`.
pub(super) async fn tokenize_off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "tokenizer_error",
                e.to_string(),
            )
        })?
        .map_err(|e| ApiError::bad_request("tokenizer_error", e))
}
