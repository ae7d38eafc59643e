//! OpenAI-compatible `POST /v1/embeddings` and `GET /v1/models`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::compact::{Compact, InOrder, compact, embedding_types};
use super::error::{ApiError, RequestError};
use super::input::{inputs, parse_body};
use crate::engine::Cut;
use crate::package::InputType;
use crate::serve::{EmbedRequest, embed};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddingsRequest {
    input: Value,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<i64>,
    /// Extension (as text-embeddings-inference's): one of the model's prompts.
    prompt_name: Option<String>,
    /// Extension (as Cohere-, Voyage- and Nomic-style clients send it): `query` or
    /// `document`, mapped to the model's prompts.
    input_type: Option<Value>,
    /// Extension (as text-embeddings-inference's): cut texts past the model's length instead
    /// of refusing them (default `limits.auto_truncate`).
    truncate: Option<bool>,
    /// Extension (Cohere's names): `float`, `int8`, `uint8`, `binary`, `ubinary`, one or a
    /// list (`compact`).
    embedding_types: Option<Value>,
    /// Accepted for compatibility; OpenAI uses it for abuse monitoring, we have no use for it.
    #[allow(dead_code)]
    user: Option<String>,
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let settings = state.settings();
    let req: EmbeddingsRequest = parse_body(body, &settings.limits).await?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(RequestError::InvalidEncodingFormat(other.to_string()).into()),
    };
    let types = embedding_types(req.embedding_types)?;
    let (inputs, pictures) = inputs("input", req.input, settings.limits.max_inputs)?;
    if req.model.as_deref() == Some("") {
        return Err(RequestError::EmptyModel.into());
    }
    let input_type = input_type(req.input_type)?;
    let out = embed(
        &state,
        EmbedRequest {
            model: req.model,
            texts: inputs,
            truncate: req.truncate.unwrap_or(settings.limits.auto_truncate),
            cut: Cut::End,
            normalize: None,
            prompt_name: req.prompt_name,
            input_type,
            dimensions: req.dimensions,
            pictures,
        },
    )
    .await?;
    let data: Vec<EmbeddingItem<'_>> = out
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let mut each = types
                .iter()
                .map(|&t| (t.name(), compact(v, out.normalized, t, base64)));
            match types.len() {
                1 => EmbeddingItem {
                    object: "embedding",
                    index,
                    embedding: each.next().map(|(_, c)| c),
                    embeddings: None,
                },
                _ => EmbeddingItem {
                    object: "embedding",
                    index,
                    embedding: None,
                    embeddings: Some(InOrder(each.collect())),
                },
            }
        })
        .collect();
    let usage = Usage {
        prompt_tokens: out.tokens,
        total_tokens: out.tokens,
    };
    let values = out.vectors.iter().map(Vec::len).sum::<usize>() * types.len();
    let body = match super::at_once::items(&data, values) {
        Ok(Some(written)) => answer(written, &out.model, usage),
        // A failure to write is written again below, where `Json` answers it.
        _ => answer(data, &out.model, usage),
    };
    Ok(super::answer::embedded(body, &out))
}

/// The answer's body: its items, or their JSON written at once.
fn answer<D: Serialize>(data: D, model: &str, usage: Usage) -> axum::response::Response {
    Json(EmbeddingList {
        object: "list",
        data,
        model,
        usage,
    })
    .into_response()
}

/// The answer of `POST /v1/embeddings`, serialized straight from the vectors: each value as
/// the shortest text that reads back as the same f32 (as text-embeddings-inference writes
/// them), with no JSON tree built in between (that tree and its wider f64 text were most of
/// what a batch's answer cost the async workers).
#[derive(Serialize)]
struct EmbeddingList<'a, D> {
    object: &'static str,
    /// The items, or their JSON written at once (`at_once`).
    data: D,
    model: &'a str,
    usage: Usage,
}

/// One text's vector: `embedding` in the one type asked (floats without `embedding_types`),
/// or, when several types are asked, `embeddings` with one entry per type in the order asked.
#[derive(Serialize)]
struct EmbeddingItem<'a> {
    object: &'static str,
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<Compact<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    embeddings: Option<InOrder<Compact<'a>>>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// `input_type`: `"query"` or `"document"`.
pub(super) fn input_type(value: Option<Value>) -> Result<Option<InputType>, RequestError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "query" => Ok(Some(InputType::Query)),
        Some(Value::String(s)) if s == "document" => Ok(Some(InputType::Document)),
        Some(other) => Err(RequestError::InvalidInputType(other.to_string())),
    }
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .registry
        .models()
        .into_iter()
        .map(|m| {
            let created = std::fs::metadata(&m.file)
                .and_then(|md| md.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            json!({"id": m.id, "object": "model", "created": created, "owned_by": "caxton"})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
