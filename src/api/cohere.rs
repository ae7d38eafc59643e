//! The Cohere/Jina-style `POST /v1/rerank` (and Cohere's `/v2/rerank`) that llama.cpp,
//! LocalAI, Infinity and LiteLLM speak, on the shared reranking path.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, RequestError};
use super::input::{parse_body, query, texts};
use crate::engine::Cut;
use crate::serve::{RerankRequest, rerank as rerank_pairs};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RerankBody {
    model: Option<String>,
    query: String,
    documents: Value,
    top_n: Option<usize>,
    return_documents: Option<bool>,
    /// Caxton's: the task instruction of a reranker that takes one (Qwen3-Reranker).
    instruction: Option<String>,
}

/// Cohere's v1 takes documents as strings or as `{"text": ...}` objects; both become text.
fn documents(value: Value, max: usize) -> Result<Vec<String>, RequestError> {
    let value = match value {
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(mut o) => match o.remove("text") {
                        Some(text @ Value::String(_)) if o.is_empty() => Ok(text),
                        _ => Err(RequestError::InvalidInput {
                            place: format!("documents[{i}]"),
                            problem:
                                "is an object; it must be a string or {\"text\": \"...\"} alone"
                                    .into(),
                        }),
                    },
                    other => Ok(other),
                })
                .collect::<Result<_, _>>()?,
        ),
        other => other,
    };
    texts("documents", value, max)
}

/// `POST /v1/rerank`: `{"model"?, "query", "documents": [str or {"text"}], "top_n"?,
/// "return_documents"?, "instruction"?}` → `{"model", "results": [{"index", "relevance_score",
/// "document"?: {"text"}}], "usage": {"prompt_tokens", "total_tokens"}}`, best first, at most
/// `top_n` results (all by default). Over-long pairs are cut, as Cohere cuts documents.
pub async fn rerank(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let settings = state.settings();
    let req: RerankBody = parse_body(body, &settings.limits).await?;
    let docs = documents(req.documents, settings.limits.max_inputs)?;
    if req.top_n == Some(0) {
        return Err(RequestError::ZeroTopN.into());
    }
    // A copy only when the answer carries the documents.
    let returned = req.return_documents.unwrap_or(false).then(|| docs.clone());
    let out = rerank_pairs(
        &state,
        RerankRequest {
            model: req.model,
            query: query(req.query)?,
            documents: docs,
            field: "documents",
            truncate: true,
            cut: Cut::End,
            instruction: req.instruction,
        },
    )
    .await?;
    let results: Vec<Value> = out
        .ranking()
        .into_iter()
        .take(req.top_n.unwrap_or(usize::MAX))
        .map(|i| {
            let mut r = json!({"index": i, "relevance_score": out.scores[i]});
            if let Some(docs) = &returned {
                r["document"] = json!({"text": docs[i]});
            }
            r
        })
        .collect();
    let body = Json(json!({
        "model": out.model,
        "results": results,
        "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens},
    }));
    Ok(super::answer::reranked(body, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_strings_or_text_objects() {
        assert_eq!(
            documents(json!(["a", {"text": "b"}]), 4).unwrap(),
            vec!["a", "b"]
        );
        let e = ApiError::from(documents(json!([{"title": "b"}]), 4).unwrap_err());
        assert_eq!(
            e.message,
            "`documents[0]` is an object; it must be a string or {\"text\": \"...\"} alone"
        );
        let e = ApiError::from(documents(json!(["a", "b", "c"]), 2).unwrap_err());
        assert_eq!((e.status.as_u16(), e.code), (413, "too_many_inputs"));
        assert_eq!(
            e.message,
            "`documents` has 3 texts; at most 2 are allowed per request (limits.max_inputs); split the request"
        );
    }
}
