//! The embedding path shared by both APIs: pick the model, tokenize off the async workers,
//! check lengths, and hand the texts to the model's engine thread.

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::engine::{Cut, Encoded, VectorShape};
use crate::package::{InputType, ModelKind};
use crate::state::AppState;

/// `X-Caxton-Truncated`: the indices of the inputs cut at the model's length, when any was.
pub const TRUNCATED: HeaderName = HeaderName::from_static("x-caxton-truncated");

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
    pub fallback: Option<crate::registry::fallback::Reason>,
    /// The inputs cut at the model's length.
    pub truncated: Vec<usize>,
}

impl Embedded {
    /// `body` with the headers that say who answered and what was cut.
    pub fn answer(&self, body: impl IntoResponse) -> Response {
        answered(body, &self.model, self.fallback, &self.truncated)
    }
}

/// `body` with the substitution headers when `fallback` is set (`model` answered instead),
/// and [`TRUNCATED`] when any input was cut.
pub(super) fn answered(
    body: impl IntoResponse,
    model: &str,
    fallback: Option<crate::registry::fallback::Reason>,
    truncated: &[usize],
) -> Response {
    let mut response = super::fallback::with_headers(body, model, fallback);
    if !truncated.is_empty() {
        let list: Vec<String> = truncated.iter().map(usize::to_string).collect();
        if let Ok(v) = HeaderValue::from_str(&list.join(",")) {
            response.headers_mut().insert(TRUNCATED, v);
        }
    }
    response
}

/// `400 invalid_dimensions` with the manifest's reason.
fn invalid_dimensions(message: String) -> ApiError {
    ApiError::bad_request("invalid_dimensions", message)
}

/// Runs `req` through the named (or default) model.
pub async fn embed(state: &Arc<AppState>, req: EmbedRequest) -> Result<Embedded, ApiError> {
    super::check_serving(state)?;
    let requested = req
        .model
        .unwrap_or_else(|| state.settings().models.default.clone());
    // A width the model cannot give is the caller's mistake: refused before anything loads.
    if let (Some(d), Some(slot)) = (req.dimensions, state.registry.get(&requested)) {
        slot.package
            .manifest
            .check_width(d)
            .map_err(invalid_dimensions)?;
    }
    let wanted = req.dimensions.and_then(|d| usize::try_from(d).ok());
    let served = super::fallback::acquire(state, &requested, ModelKind::Embedding, wanted).await?;
    let (id, slot, model) = (served.id, served.slot, served.model);
    super::served_by(&id);
    let manifest = &model.package.manifest;
    // A substitute answers only at a width it can give, as its own manifest says.
    let width = req
        .dimensions
        .map(|d| manifest.check_width(d))
        .transpose()
        .map_err(invalid_dimensions)?;
    let prompt = manifest
        .prompt_for(req.prompt_name.as_deref(), req.input_type)
        .map_err(|m| ApiError::bad_request("unknown_prompt", m))?
        .map(str::to_owned);
    let tokenizer = model.tokenizer.clone();
    let cut = req.cut;
    let texts = match prompt {
        // As sentence-transformers does: the prompt is part of the text, tokens and all.
        Some(p) => req.texts.into_iter().map(|t| format!("{p}{t}")).collect(),
        None => req.texts,
    };
    let bytes = texts.iter().map(String::len).sum();
    let encoded: Vec<Encoded> = tokenize_off_runtime(bytes, move || {
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
    let truncated = truncated(&encoded);
    let tokens = encoded.iter().map(Encoded::len).sum();
    tracing::debug!(caxton_model = %id, texts = encoded.len(), tokens, "embedding request queued");
    let shape = VectorShape {
        normalize: req.normalize.unwrap_or(model.package.manifest.normalize),
        width,
    };
    let vectors = model.embed(encoded, shape).await?;
    account(&slot, vectors.len(), tokens);
    Ok(Embedded {
        model: id,
        vectors,
        tokens,
        fallback: served.fallback,
        truncated,
    })
}

/// The indices of the inputs the tokenizer cut.
pub(super) fn truncated(encoded: &[Encoded]) -> Vec<usize> {
    (0..encoded.len())
        .filter(|&i| encoded[i].truncated)
        .collect()
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

/// Inputs of at most this many bytes in all are tokenized on the async worker itself: a short
/// text takes a few microseconds (WordPiece was 0.13% of a one-text request's profile), less
/// than handing it to a blocking thread and back, two thread wake-ups.
const INLINE_TOKENIZE_BYTES: usize = 1024;

/// Runs tokenization `work` over inputs of `bytes` bytes: inline when they are short, else off
/// the async workers (long texts take milliseconds). Its error is the request's fault (400), a
/// panic the daemon's (500); both `tokenizer_error`.
pub(super) async fn tokenize_off_runtime<T: Send + 'static>(
    bytes: usize,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    let panicked = |e: String| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "tokenizer_error",
            e,
        )
    };
    let outcome = if bytes <= INLINE_TOKENIZE_BYTES {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
            .map_err(|_| panicked("the tokenizer panicked".into()))?
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| panicked(e.to_string()))?
    };
    outcome.map_err(|e| ApiError::bad_request("tokenizer_error", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths (inline for short inputs, a blocking thread for long ones) give the same
    /// answers: the value, the request's fault as a 400, a panic as a 500.
    #[tokio::test]
    async fn tokenization_answers_alike_inline_and_off_the_runtime() {
        for bytes in [INLINE_TOKENIZE_BYTES, INLINE_TOKENIZE_BYTES + 1] {
            assert_eq!(tokenize_off_runtime(bytes, || Ok(7)).await.ok(), Some(7));
            let e = tokenize_off_runtime::<()>(bytes, || Err("no such token".into()))
                .await
                .expect_err("an error");
            assert_eq!(
                (e.status.as_u16(), e.code, e.message.as_str()),
                (400, "tokenizer_error", "no such token")
            );
            let e = tokenize_off_runtime::<()>(bytes, || panic!("tokenizer bug"))
                .await
                .expect_err("a panic");
            assert_eq!((e.status.as_u16(), e.code), (500, "tokenizer_error"));
        }
    }
}
