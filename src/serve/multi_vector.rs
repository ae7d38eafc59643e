//! Token vectors from a multi-vector (late-interaction, ColBERT) model: `/embed_all`'s
//! vectors of queries or documents, and a query's MaxSim against documents, which `/rerank`
//! and `/v1/rerank` answer when they name such a model.

use std::sync::Arc;

use super::{
    RerankRequest, Reranked, ServeError, account, check_serving, served_by, tokenize_each,
};
use crate::engine::late_interaction::Side;
use crate::engine::outputs::Output;
use crate::engine::{Cut, Encoded, LoadedModel, VectorShape};
use crate::package::{InputType, LateSimilarity, ModelKind};
use crate::registry::fallback::Reason;
use crate::registry::{ModelError, Wanted};
use crate::state::AppState;

/// One request for token vectors, whatever API it came through.
pub struct TokenVectorsRequest {
    /// Model id, or the default multi-vector model.
    pub model: Option<String>,
    /// Non-empty texts.
    pub texts: Vec<String>,
    /// Cut texts at the side's length (true) or refuse them (false).
    pub truncate: bool,
    /// Which end of an over-long text goes.
    pub cut: Cut,
    /// Queries or documents (unset: documents).
    pub input_type: Option<InputType>,
    /// One of the model's prompts to put before every text, instead of the side's own.
    pub prompt_name: Option<String>,
}

/// Token vectors and accounting for a request.
pub struct TokenVectors {
    /// The model that answered.
    pub model: String,
    /// Each text's vectors, one per token kept.
    pub vectors: Vec<Vec<Vec<f32>>>,
    /// Tokens the model saw, special and expansion tokens included.
    pub tokens: usize,
    /// Set when `model` answered for the requested one: why that one did not.
    pub fallback: Option<Reason>,
    /// The inputs cut at the side's length.
    pub truncated: Vec<usize>,
}

/// Runs `req` through the named (or default) multi-vector model.
pub async fn token_vectors(
    state: &Arc<AppState>,
    req: TokenVectorsRequest,
) -> Result<TokenVectors, ServeError> {
    check_serving(state)?;
    let settings = state.settings();
    let requested = match req.model {
        Some(id) => id,
        None => super::default_of_kind(
            &state.registry,
            settings.models.default_multi_vector.as_deref(),
            ModelKind::MultiVector,
            ModelError::NoMultiVector,
            ModelError::MultiVectorRequired,
        )?,
    };
    if let (Some(known), Some(name)) = (state.registry.get(&requested), &req.prompt_name) {
        // Before a load: a prompt the model does not have costs nothing.
        known.package.manifest.prompt(name)?;
    }
    let served = state
        .registry
        .serve(
            &settings.models,
            Wanted {
                id: &requested,
                kind: ModelKind::MultiVector,
                width: None,
            },
        )
        .await?;
    let (id, slot, model) = (served.id, served.slot, served.model);
    served_by(&id);
    let side = match req.input_type {
        Some(InputType::Query) => Side::Query,
        _ => Side::Document,
    };
    let encoded = encode(&model, req.texts, side, req.prompt_name.as_deref(), req.cut).await?;
    let (truncated, tokens) = cut_or_refuse(&model, &encoded, side, req.truncate, |i| {
        format!("input {i}")
    })?;
    let vectors = vectors(&model, encoded, side).await?;
    account(&slot, vectors.len(), tokens);
    Ok(TokenVectors {
        model: id,
        vectors,
        tokens,
        fallback: served.fallback,
        truncated,
    })
}

/// `req`'s documents scored against its query by the multi-vector model `requested`: the
/// query's vectors (query side) against each document's (document side), by the model's
/// similarity (MaxSim), as logits and scores alike.
pub(super) async fn rerank(
    state: &Arc<AppState>,
    req: RerankRequest,
    requested: &str,
) -> Result<Reranked, ServeError> {
    let settings = state.settings();
    let served = state
        .registry
        .serve(
            &settings.models,
            Wanted {
                id: requested,
                kind: ModelKind::MultiVector,
                width: None,
            },
        )
        .await?;
    let (id, slot, model) = (served.id, served.slot, served.model);
    served_by(&id);
    let query = encode(&model, vec![req.query], Side::Query, None, req.cut).await?;
    let documents = encode(&model, req.documents, Side::Document, None, req.cut).await?;
    let field = req.field;
    cut_or_refuse(&model, &query, Side::Query, req.truncate, |_| {
        "the query".into()
    })?;
    let (truncated, tokens) =
        cut_or_refuse(&model, &documents, Side::Document, req.truncate, |i| {
            format!("`{field}[{i}]`")
        })?;
    let tokens = tokens + query.iter().map(Encoded::len).sum::<usize>();
    let (q, d) = tokio::try_join!(
        vectors(&model, query, Side::Query),
        vectors(&model, documents, Side::Document)
    )?;
    let similarity = model
        .package
        .manifest
        .late_interaction
        .as_ref()
        .map_or(LateSimilarity::Maxsim, |l| l.similarity);
    let flat = |v: &[Vec<f32>]| v.concat();
    let query = q.first().map(|v| flat(v)).unwrap_or_default();
    let dim = q.first().and_then(|v| v.first()).map_or(1, Vec::len);
    let scores: Vec<f32> = d
        .iter()
        .map(|doc| similarity.score(&query, &flat(doc), dim))
        .collect();
    account(&slot, scores.len() + 1, tokens);
    Ok(Reranked {
        model: id,
        logits: scores.clone(),
        scores,
        tokens,
        fallback: served.fallback,
        truncated,
    })
}

/// `texts` tokenized as `side` of `model`, each with the prompt called `prompt_name` before
/// it, else the side's own.
async fn encode(
    model: &Arc<LoadedModel>,
    texts: Vec<String>,
    side: Side,
    prompt_name: Option<&str>,
    cut: Cut,
) -> Result<Vec<Encoded>, ServeError> {
    let late = model.late.clone().ok_or_else(|| {
        ServeError::Tokenizer(format!(
            "model {} has no late-interaction settings",
            model.id()
        ))
    })?;
    let input_type = match side {
        Side::Query => InputType::Query,
        Side::Document => InputType::Document,
    };
    let prompt = model
        .package
        .manifest
        .side_prompt(prompt_name, Some(input_type))?
        .unwrap_or_default()
        .to_string();
    tokenize_each(texts, String::len, move |t| {
        late.encode(&format!("{prompt}{t}"), side, cut)
    })
    .await
}

/// The inputs cut at the side's length, and the tokens in all; or the refusal naming the
/// first cut one (`what` names input `i`) when the request does not allow cutting.
fn cut_or_refuse(
    model: &LoadedModel,
    encoded: &[Encoded],
    side: Side,
    truncate: bool,
    what: impl Fn(usize) -> String,
) -> Result<(Vec<usize>, usize), ServeError> {
    let max = model.late.as_ref().map_or(0, |l| l.max_len(side));
    super::lengths(encoded, truncate, |i| ServeError::SideTooLong {
        what: what(i),
        side: match side {
            Side::Query => "query",
            Side::Document => "document",
        },
        max,
        id: model.id().to_string(),
    })
}

/// Each text's kept token vectors, one row each.
async fn vectors(
    model: &Arc<LoadedModel>,
    encoded: Vec<Encoded>,
    side: Side,
) -> Result<Vec<Vec<Vec<f32>>>, ServeError> {
    let m = &model.package.manifest;
    // bge-m3's token vectors are its head's width, and always of unit length (FlagEmbedding
    // normalises them whatever the dense vectors do).
    let (dim, normalize) = match m.multi_vector_head() {
        Some(head) => (head.outputs, true),
        None => (m.dimensions, m.normalize),
    };
    let kept: Vec<Vec<bool>> = match &model.late {
        Some(late) => encoded.iter().map(|e| late.kept(&e.ids, side)).collect(),
        None => encoded.iter().map(|e| vec![true; e.len()]).collect(),
    };
    let shape = VectorShape {
        normalize,
        width: None,
    };
    let flat = model
        .embed_output(encoded, shape, Output::TokenVectors)
        .await?;
    Ok(flat
        .iter()
        .zip(kept)
        .map(|(v, kept)| {
            v.chunks_exact(dim.max(1))
                .zip(kept)
                .filter(|(_, k)| *k)
                .map(|(row, _)| row.to_vec())
                .collect()
        })
        .collect())
}
