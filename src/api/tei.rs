//! text-embeddings-inference-compatible `POST /embed` (default model).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use serde::Deserialize;
use serde_json::Value;

use super::embed::{EmbedRequest, embed};
use super::error::ApiError;
use super::input::{parse_body, texts};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    inputs: Value,
    normalize: Option<bool>,
    truncate: Option<bool>,
    prompt_name: Option<String>,
}

/// `POST /embed`: `{"inputs": str or [str], "normalize"?, "truncate"?}` → `[[f32...]...]`.
/// `truncate` defaults to true (as sentence-transformers behaves); false turns an over-long
/// text into a 413.
pub async fn embed_handler(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<Vec<Vec<f32>>>, ApiError> {
    let settings = state.settings();
    let req: EmbedBody = parse_body(body, settings.limits.max_body_bytes.0).await?;
    let inputs = texts("inputs", req.inputs, settings.limits.max_inputs)?;
    let out = embed(
        &state,
        EmbedRequest {
            model: None,
            texts: inputs,
            truncate: req.truncate.unwrap_or(true),
            normalize: req.normalize,
            prompt_name: req.prompt_name,
        },
    )
    .await?;
    Ok(Json(out.vectors))
}
