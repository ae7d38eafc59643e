//! text-embeddings-inference-compatible endpoints: `POST /embed`, `POST /tokenize`,
//! `POST /decode` and `GET /info` on the default model, and `POST /rerank` on the default
//! reranker.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::compact::{Compact, EmbeddingType, InOrder, compact, embedding_types};
use super::error::{ApiError, RequestError};
use super::input::{Documents, documents, parse_body, query, texts};
use crate::engine::{Cut, Token};
use crate::registry::ModelError;
use crate::serve::{
    EmbedRequest, RerankRequest, SparseRequest, TokenVectorsRequest, embed, rerank as rerank_pairs,
    rerank_pictures, sparse, token_vectors,
};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedBody {
    inputs: Value,
    normalize: Option<bool>,
    truncate: Option<bool>,
    truncation_direction: Option<Value>,
    prompt_name: Option<String>,
    /// Caxton's (Cohere's names): compact vectors (`compact`).
    embedding_types: Option<Value>,
}

/// TEI's `truncation_direction`: `"Right"` (the default) cuts the end of an over-long text,
/// `"Left"` its start. Lower case is accepted too.
fn cut(value: Option<Value>) -> Result<Cut, RequestError> {
    match value {
        None | Some(Value::Null) => Ok(Cut::End),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("right") => Ok(Cut::End),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("left") => Ok(Cut::Start),
        Some(other) => Err(RequestError::InvalidTruncationDirection(other.to_string())),
    }
}

/// `POST /embed`: `{"inputs": str or [str], "normalize"?, "truncate"?,
/// "truncation_direction"?}` → `[[f32...]...]`. `truncate` defaults to
/// `limits.auto_truncate`; without it an over-long text is a 413.
pub async fn embed_handler(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let settings = state.settings();
    let req: EmbedBody = parse_body(body, &settings.limits).await?;
    let cut = cut(req.truncation_direction)?;
    let types = embedding_types(req.embedding_types)?;
    let inputs = texts("inputs", req.inputs, settings.limits.max_inputs)?;
    let out = embed(
        &state,
        EmbedRequest {
            pictures: Vec::new(),
            model: None,
            texts: inputs,
            truncate: req.truncate.unwrap_or(settings.limits.auto_truncate),
            cut,
            normalize: req.normalize,
            prompt_name: req.prompt_name,
            input_type: None,
            dimensions: None,
        },
    )
    .await?;
    let typed = |t: EmbeddingType| -> Vec<Compact<'_>> {
        let unit = out.normalized;
        out.vectors
            .iter()
            .map(|v| compact(v, unit, t, false))
            .collect()
    };
    Ok(match types[..] {
        [EmbeddingType::Float] => super::answer::embedded(Json(&out.vectors), &out),
        [one] => super::answer::embedded(Json(typed(one)), &out),
        // Cohere's shape: one list of vectors per type, in the order asked.
        _ => {
            let by_type: Vec<_> = types.iter().map(|&t| (t.name(), typed(t))).collect();
            super::answer::embedded(Json(InOrder(by_type)), &out)
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SparseBody {
    inputs: Value,
    truncate: Option<bool>,
    truncation_direction: Option<Value>,
    /// Caxton's: a sparse model other than the default.
    model: Option<String>,
    /// Caxton's: keep the `top_k` heaviest terms of each text.
    top_k: Option<usize>,
    /// Caxton's: `query` or `document` (an inference-free model looks a query's terms up).
    input_type: Option<Value>,
    /// TEI's: one of the model's prompts before every text.
    prompt_name: Option<String>,
}

/// `POST /embed_sparse`: `{"inputs": str or [str], "truncate"?, "truncation_direction"?,
/// "prompt_name"?, "model"?, "top_k"?, "input_type"?}` → per text `[{"index": token id, "value": weight}, ...]`, the terms
/// above zero, heaviest first. The model is `models.default_sparse` (else the one sparse model
/// installed).
pub async fn embed_sparse(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let settings = state.settings();
    let req: SparseBody = parse_body(body, &settings.limits).await?;
    let cut = cut(req.truncation_direction)?;
    if req.top_k == Some(0) {
        return Err(RequestError::ZeroTopK.into());
    }
    if req.model.as_deref() == Some("") {
        return Err(RequestError::EmptyModel.into());
    }
    let inputs = texts("inputs", req.inputs, settings.limits.max_inputs)?;
    let out = sparse(
        &state,
        SparseRequest {
            model: req.model,
            texts: inputs,
            truncate: req.truncate.unwrap_or(settings.limits.auto_truncate),
            cut,
            top_k: req.top_k,
            input_type: super::openai::input_type(req.input_type)?,
            prompt_name: req.prompt_name,
        },
    )
    .await?;
    Ok(super::answer::weighted(Json(&out.terms), &out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllBody {
    inputs: Value,
    truncate: Option<bool>,
    truncation_direction: Option<Value>,
    /// Caxton's: a multi-vector model other than the default.
    model: Option<String>,
    /// Caxton's: `query` or `document` (the default): which side's length, prompt and
    /// expansion or skip-list apply.
    input_type: Option<Value>,
    /// TEI's: one of the model's prompts before every text, instead of the side's.
    prompt_name: Option<String>,
}

/// `POST /embed_all`: `{"inputs": str or [str], "truncate"?, "truncation_direction"?,
/// "prompt_name"?, "model"?, "input_type"?}` → per text its token vectors `[[f32...]...]`. The model is
/// `models.default_multi_vector` (else the one multi-vector model installed).
pub async fn embed_all(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let settings = state.settings();
    let req: AllBody = parse_body(body, &settings.limits).await?;
    let cut = cut(req.truncation_direction)?;
    if req.model.as_deref() == Some("") {
        return Err(RequestError::EmptyModel.into());
    }
    let inputs = texts("inputs", req.inputs, settings.limits.max_inputs)?;
    let out = token_vectors(
        &state,
        TokenVectorsRequest {
            model: req.model,
            texts: inputs,
            truncate: req.truncate.unwrap_or(settings.limits.auto_truncate),
            cut,
            input_type: super::openai::input_type(req.input_type)?,
            prompt_name: req.prompt_name,
        },
    )
    .await?;
    Ok(super::answer::token_vectors(Json(&out.vectors), &out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RerankBody {
    query: String,
    texts: Value,
    raw_scores: Option<bool>,
    return_text: Option<bool>,
    truncate: Option<bool>,
    truncation_direction: Option<Value>,
    /// Caxton's: a reranker other than the default.
    model: Option<String>,
    /// Caxton's: the task instruction of a reranker that takes one (Qwen3-Reranker).
    instruction: Option<String>,
}

/// One document's place, as TEI answers `/rerank`.
#[derive(serde::Serialize)]
pub struct Rank {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    score: f32,
}

/// `POST /rerank`: `{"query", "texts", "raw_scores"?, "return_text"?, "truncate"?,
/// "truncation_direction"?, "model"?, "instruction"?}` → `[{"index", "score", "text"?}]`, best first. Scores
/// are the manifest's activation of the logit (sentence-transformers' `CrossEncoder.predict`),
/// or the logit itself with `raw_scores`; `truncate` defaults to `limits.auto_truncate`
/// (`/info`'s `auto_truncate`).
pub async fn rerank(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let settings = state.settings();
    let req: RerankBody = parse_body(body, &settings.limits).await?;
    let cut = cut(req.truncation_direction)?;
    let docs = documents("texts", req.texts, settings.limits.max_inputs)?;
    let query = query(req.query)?;
    let request = |documents| RerankRequest {
        model: req.model,
        query,
        documents,
        field: "texts",
        truncate: req.truncate.unwrap_or(settings.limits.auto_truncate),
        cut,
        instruction: req.instruction,
    };
    // A copy only when the answer carries the texts (a picture's is not sent back).
    let (out, mut returned) = match docs {
        Documents::Texts(texts) => {
            let returned = req.return_text.unwrap_or(false).then(|| texts.clone());
            (rerank_pairs(&state, request(texts)).await?, returned)
        }
        Documents::Pictures(pictures) => (
            rerank_pictures(&state, request(Vec::new()), pictures).await?,
            None,
        ),
    };
    let scores = if req.raw_scores.unwrap_or(false) {
        &out.logits
    } else {
        &out.scores
    };
    let ranks: Vec<Rank> = out
        .ranking()
        .into_iter()
        .map(|i| Rank {
            index: i,
            text: returned.as_mut().map(|t| std::mem::take(&mut t[i])),
            score: scores[i],
        })
        .collect();
    Ok(super::answer::reranked(Json(ranks), &out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeBody {
    inputs: Value,
    add_special_tokens: Option<bool>,
    prompt_name: Option<String>,
    /// Caxton's: another model's tokens (a sparse model's term ids), else the default's.
    model: Option<String>,
}

/// `POST /tokenize`: `{"inputs": str or [str], "add_special_tokens"?: bool, "prompt_name"?}`
/// → one list per text of `{"id", "text", "special", "start", "stop"}` (byte offsets into
/// the text as sent, the prompt excluded), untruncated, for clients that cut texts by tokens.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<Vec<Vec<Token>>>, ApiError> {
    // Before the body is read, as it always was: a starting daemon reads nothing.
    crate::serve::check_serving(&state)?;
    let settings = state.settings();
    let req: TokenizeBody = parse_body(body, &settings.limits).await?;
    let inputs = texts("inputs", req.inputs, settings.limits.max_inputs)?;
    let special = req.add_special_tokens.unwrap_or(true);
    if req.model.as_deref() == Some("") {
        return Err(RequestError::EmptyModel.into());
    }
    let tokens =
        crate::serve::tokenize(&state, inputs, req.model, req.prompt_name, special).await?;
    Ok(Json(tokens))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecodeBody {
    ids: Value,
    skip_special_tokens: Option<bool>,
    /// Caxton's: another model's vocabulary (a sparse model's term ids), else the default's.
    model: Option<String>,
}

/// `POST /decode`: `{"ids": [id, ...] or [[id, ...], ...], "skip_special_tokens"?: bool
/// (default true)}` plus Caxton's `"model"?` → one text per list of ids: `/tokenize`'s ids,
/// or a sparse vector's `index`es, as words.
pub async fn decode(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<Vec<String>>, ApiError> {
    crate::serve::check_serving(&state)?;
    let settings = state.settings();
    let req: DecodeBody = parse_body(body, &settings.limits).await?;
    let (batch, batched) = token_ids(req.ids, settings.limits.max_inputs)?;
    if req.model.as_deref() == Some("") {
        return Err(RequestError::EmptyModel.into());
    }
    let skip = req.skip_special_tokens.unwrap_or(true);
    let texts = crate::serve::decode(&state, batch, batched, req.model, skip).await?;
    Ok(Json(texts))
}

/// `ids` as TEI takes them: one list of token ids, or a list of such lists (at most `max`);
/// and whether it was the latter.
fn token_ids(ids: Value, max: usize) -> Result<(Vec<Vec<u32>>, bool), RequestError> {
    let invalid = |place: String, problem: &str| RequestError::InvalidInput {
        place,
        problem: problem.to_string(),
    };
    let Value::Array(items) = ids else {
        return Err(invalid(
            "ids".into(),
            "is not a list; send token ids ([101, 7592]) or lists of them ([[101], [7592]])",
        ));
    };
    let id = |v: &Value, place: String| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| invalid(place, "is not a token id (a whole number from 0)"))
    };
    let batched = items.first().is_some_and(Value::is_array);
    if !batched {
        let list = items
            .iter()
            .enumerate()
            .map(|(j, v)| id(v, format!("ids[{j}]")))
            .collect::<Result<Vec<u32>, _>>()?;
        return Ok((vec![list], false));
    }
    if items.len() > max {
        return Err(RequestError::TooManyInputs {
            field: "ids".into(),
            count: items.len(),
            max,
        });
    }
    let lists = items
        .iter()
        .enumerate()
        .map(|(i, list)| match list {
            Value::Array(l) => l
                .iter()
                .enumerate()
                .map(|(j, v)| id(v, format!("ids[{i}][{j}]")))
                .collect::<Result<Vec<u32>, _>>(),
            _ => Err(invalid(
                format!("ids[{i}]"),
                "is not a list, and ids[0] is: send one list of token ids, or lists only",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((lists, true))
}

/// `GET /info`: the default model as TEI describes it (`model_id`, `model_type`,
/// `max_input_length`, batch limits, `version`), plus Caxton's `kind`, `dimensions`,
/// `state` and `precision`. Answers without loading the model.
pub async fn info(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let settings = state.settings();
    let id = &settings.models.default;
    let missing = || ModelError::DefaultMissing(id.clone());
    let m = state
        .registry
        .models()
        .into_iter()
        .find(|m| &m.id == id)
        .ok_or_else(missing)?;
    let slot = state.registry.get(id).ok_or_else(missing)?;
    let manifest = &slot.package.manifest;
    let precision = m.loaded_precision.unwrap_or(m.precision);
    Ok(Json(json!({
        "model_id": m.id,
        "model_sha": slot.package.package_sha256,
        "model_dtype": match precision.name() {
            "f32" => "float32",
            "bf16" => "bfloat16",
            other => other,
        },
        "model_type": {"embedding": {"pooling": manifest.pooling}},
        "prompts": manifest.prompts,
        "default_prompt": manifest.default_prompt,
        "max_concurrent_requests": settings.limits.queue_depth,
        "max_input_length": m.max_seq_length,
        "max_batch_tokens": settings.limits.max_batch_tokens,
        "max_batch_requests": null,
        "max_client_batch_size": settings.limits.max_inputs,
        "auto_truncate": settings.limits.auto_truncate,
        "tokenization_workers": null,
        "version": env!("CARGO_PKG_VERSION"),
        "kind": "embedding",
        "dimensions": m.dimensions,
        "model_version": m.version,
        "state": m.state,
        "precision": precision,
    })))
}
