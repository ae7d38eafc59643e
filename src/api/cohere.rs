//! The Cohere/Jina-style `POST /v1/rerank` (and Cohere's `/v2/rerank`) that llama.cpp,
//! LocalAI, Infinity and LiteLLM speak, on the shared reranking path.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, RequestError};
use super::input::{Documents, documents, parse_body, query};
use crate::engine::Cut;
use crate::serve::{RerankRequest, rerank as rerank_pairs, rerank_pictures};
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
    let docs = documents("documents", req.documents, settings.limits.max_inputs)?;
    if req.top_n == Some(0) {
        return Err(RequestError::ZeroTopN.into());
    }
    // A copy only when the answer carries the documents.
    let returned: Option<Vec<Value>> = req.return_documents.unwrap_or(false).then(|| match &docs {
        Documents::Texts(t) => t.iter().map(|t| json!({"text": t})).collect(),
        Documents::Pictures(p) => p.iter().map(|p| json!({"image": p.uri})).collect(),
    });
    let query = query(req.query)?;
    let request = |documents| RerankRequest {
        model: req.model,
        query,
        documents,
        field: "documents",
        truncate: true,
        cut: Cut::End,
        instruction: req.instruction,
    };
    let out = match docs {
        Documents::Texts(texts) => rerank_pairs(&state, request(texts)).await?,
        Documents::Pictures(pictures) => {
            rerank_pictures(&state, request(Vec::new()), pictures).await?
        }
    };
    let results: Vec<Value> = out
        .ranking()
        .into_iter()
        .take(req.top_n.unwrap_or(usize::MAX))
        .map(|i| {
            let mut r = json!({"index": i, "relevance_score": out.scores[i]});
            if let Some(docs) = &returned {
                r["document"] = docs[i].clone();
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

    fn texts(value: Value, max: usize) -> Result<Vec<String>, RequestError> {
        match documents("documents", value, max)? {
            Documents::Texts(t) => Ok(t),
            Documents::Pictures(_) => panic!("pictures"),
        }
    }

    #[test]
    fn documents_are_strings_text_objects_or_pictures() {
        assert_eq!(
            texts(json!(["a", {"text": "b"}]), 4).unwrap(),
            vec!["a", "b"]
        );
        let e = ApiError::from(texts(json!([{"title": "b"}]), 4).unwrap_err());
        assert_eq!(
            e.message,
            "`documents[0]` is an object; it must be {\"text\": \"...\"} or {\"image\": \"data:image/...;base64,...\"} alone"
        );
        let Ok(Documents::Pictures(p)) = documents(
            "documents",
            json!([{"image": "data:,"}, {"image": "data:x"}]),
            4,
        ) else {
            panic!("pictures expected");
        };
        assert_eq!(
            (p[1].place.as_str(), p[1].uri.as_str()),
            ("documents[1].image", "data:x")
        );
        let e = ApiError::from(
            documents("documents", json!(["a", {"image": "data:,"}]), 4)
                .err()
                .expect("mixed"),
        );
        assert_eq!(
            e.message,
            "`documents` mixes texts and pictures; rank one kind of document a request"
        );
        let e = ApiError::from(texts(json!(["a", "b", "c"]), 2).unwrap_err());
        assert_eq!((e.status.as_u16(), e.code), (413, "too_many_inputs"));
        assert_eq!(
            e.message,
            "`documents` has 3 texts; at most 2 are allowed per request (limits.max_inputs); split the request"
        );
    }
}
