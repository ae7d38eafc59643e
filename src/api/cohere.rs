//! The Cohere/Jina-style `POST /v1/rerank` (and Cohere's `/v2/rerank`) that llama.cpp,
//! LocalAI, Infinity and LiteLLM speak, on the shared reranking path; and Cohere's
//! `POST /v2/embed` (texts, or pictures with `input_type: "image"`).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::compact::{InOrder, compact, embedding_types};
use super::error::{ApiError, RequestError};
use super::input::{Documents, documents, parse_body, query, texts};
use crate::engine::Cut;
use crate::package::InputType;
use crate::serve::{
    EmbedRequest, Picture, RerankRequest, embed as embed_inputs, rerank as rerank_pairs,
    rerank_pictures,
};
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    model: Option<String>,
    texts: Option<Value>,
    images: Option<Value>,
    input_type: Option<String>,
    embedding_types: Option<Value>,
    truncate: Option<String>,
    output_dimension: Option<i64>,
}

/// What Cohere's `input_type` asks: a prompt for texts, or pictures.
#[derive(Debug, PartialEq)]
enum Asked {
    Texts(Option<InputType>),
    Pictures,
}

/// Cohere's `input_type`: `search_query` and `search_document` pick the model's prompts,
/// `classification` and `clustering` none, `image` means the `images` are embedded.
fn asked(input_type: Option<&str>) -> Result<Asked, RequestError> {
    Ok(match input_type {
        None | Some("classification") | Some("clustering") => Asked::Texts(None),
        Some("search_query") => Asked::Texts(Some(InputType::Query)),
        Some("search_document") => Asked::Texts(Some(InputType::Document)),
        Some("image") => Asked::Pictures,
        Some(other) => {
            return Err(RequestError::InvalidInput {
                place: "input_type".into(),
                problem: format!(
                    "is {other:?}; Cohere's values are search_document, search_query, classification, clustering and image"
                ),
            });
        }
    })
}

/// Cohere's `truncate`: `END` (the default) and `START` cut an over-long text at that side,
/// `NONE` refuses it.
fn truncation(value: Option<&str>) -> Result<(bool, Cut), RequestError> {
    match value {
        None | Some("END") => Ok((true, Cut::End)),
        Some("START") => Ok((true, Cut::Start)),
        Some("NONE") => Ok((false, Cut::End)),
        Some(other) => Err(RequestError::InvalidInput {
            place: "truncate".into(),
            problem: format!("is {other:?}; Cohere's values are NONE, START and END"),
        }),
    }
}

/// `POST /v2/embed`: `{"model"?, "texts"?: [str], "images"?: [data URI], "input_type"?,
/// "embedding_types"?, "truncate"?, "output_dimension"?}` → `{"id", "embeddings": {type:
/// [[...]]}, "texts"?, "meta": {"api_version", "billed_units"}, "response_type":
/// "embeddings_by_type"}`. Texts or pictures, one of the two; pictures with `input_type:
/// "image"`, on an image-text model.
pub async fn embed(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let settings = state.settings();
    let req: EmbedBody = parse_body(body, &settings.limits).await?;
    let types = embedding_types(req.embedding_types)?;
    let (truncate, cut) = truncation(req.truncate.as_deref())?;
    let asked = asked(req.input_type.as_deref())?;
    let max = settings.limits.max_inputs;
    let (inputs, pictures, input_type) = match (asked, req.texts, req.images) {
        (Asked::Texts(t), Some(texts_value), None) => {
            (texts("texts", texts_value, max)?, Vec::new(), t)
        }
        (Asked::Pictures, None, Some(images)) => {
            let pictures = texts("images", images, max)?
                .into_iter()
                .enumerate()
                .map(|(i, uri)| {
                    (
                        i,
                        Picture {
                            place: format!("images[{i}]"),
                            uri,
                        },
                    )
                })
                .collect();
            (Vec::new(), pictures, None)
        }
        (_, Some(_), Some(_)) => {
            return Err(cohere_shape(
                "sends both texts and images; embed one kind a request",
            ));
        }
        (Asked::Pictures, _, None) => {
            return Err(cohere_shape(
                "has input_type \"image\" and no images; send the pictures as images: [data URI, ...]",
            ));
        }
        (Asked::Texts(_), None, Some(_)) => {
            return Err(cohere_shape(
                "sends images without input_type \"image\"; set it to embed pictures",
            ));
        }
        (_, None, None) => return Err(cohere_shape("has neither texts nor images")),
    };
    if req.model.as_deref() == Some("") {
        return Err(RequestError::EmptyModel.into());
    }
    let echoed = (!inputs.is_empty()).then(|| inputs.clone());
    let count = pictures.len();
    let out = embed_inputs(
        &state,
        EmbedRequest {
            model: req.model,
            texts: inputs,
            truncate,
            cut,
            normalize: None,
            prompt_name: None,
            input_type,
            dimensions: req.output_dimension,
            pictures,
        },
    )
    .await?;
    let by_type: Vec<_> = types
        .iter()
        .map(|&t| {
            let vectors: Vec<_> = out
                .vectors
                .iter()
                .map(|v| compact(v, out.normalized, t, false))
                .collect();
            (t.name(), vectors)
        })
        .collect();
    let mut billed = json!({"input_tokens": out.tokens});
    if count > 0 {
        billed["images"] = json!(count);
    }
    let mut answer = json!({
        "id": request_id(),
        "embeddings": InOrder(by_type),
        "meta": {"api_version": {"version": "2"}, "billed_units": billed},
        "response_type": "embeddings_by_type",
    });
    if let Some(texts) = echoed {
        answer["texts"] = json!(texts);
    }
    Ok(super::answer::embedded(Json(answer), &out))
}

/// A `/v2/embed` body of the wrong shape.
fn cohere_shape(problem: &str) -> ApiError {
    RequestError::InvalidInput {
        place: "body".into(),
        problem: problem.to_string(),
    }
    .into()
}

/// An id for an answer, as Cohere gives each: unique within the process and over restarts.
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{nanos:016x}{:016x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
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
    fn cohere_input_types_and_truncation_are_read_or_refused_by_name() {
        assert_eq!(
            asked(Some("search_query")).unwrap(),
            Asked::Texts(Some(InputType::Query))
        );
        assert_eq!(asked(Some("clustering")).unwrap(), Asked::Texts(None));
        assert_eq!(asked(Some("image")).unwrap(), Asked::Pictures);
        let e = ApiError::from(asked(Some("photo")).unwrap_err());
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                "invalid_input",
                "`input_type` is \"photo\"; Cohere's values are search_document, search_query, classification, clustering and image"
            )
        );
        assert_eq!(truncation(Some("START")).unwrap(), (true, Cut::Start));
        assert_eq!(truncation(Some("NONE")).unwrap(), (false, Cut::End));
        let e = ApiError::from(truncation(Some("LEFT")).unwrap_err());
        assert_eq!(
            e.message,
            "`truncate` is \"LEFT\"; Cohere's values are NONE, START and END"
        );
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
            "`documents[0]` is an object; it must be a string, {\"text\": \"...\"} or {\"image\": \"data:image/...;base64,...\"} alone"
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
