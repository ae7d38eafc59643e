//! The reranking path shared by TEI's `/rerank` and the Cohere-style `/v1/rerank`: pick the
//! reranker, tokenize each query–document pair off the async workers, check lengths, score the
//! pairs on the model's engine thread (batched there with other requests' pairs), and apply
//! the manifest's activation.

use std::sync::Arc;

use axum::http::StatusCode;

use super::embed::{account, refuse_truncated, tokenize_off_runtime, truncated};
use super::error::ApiError;
use crate::engine::{Cut, Encoded};
use crate::package::{ModelKind, ScoreActivation};
use crate::state::AppState;

/// One rerank request, whatever API it came through.
pub struct RerankRequest {
    /// Reranker id, or the default one.
    pub model: Option<String>,
    /// The text the documents are ranked against.
    pub query: String,
    /// Non-empty documents, in the client's order.
    pub documents: Vec<String>,
    /// The request's name for the documents (`texts`, `documents`), for error messages.
    pub field: &'static str,
    /// Cut over-long pairs at the model's limit (true) or refuse them with 413 (false).
    pub truncate: bool,
    /// Which end of an over-long pair goes.
    pub cut: Cut,
    /// The task instruction, for a reranker whose pair template takes one (else refused).
    pub instruction: Option<String>,
}

/// Scores for a request, in the documents' order.
pub struct Reranked {
    /// The reranker that answered.
    pub model: String,
    /// Each document's logit, before the activation.
    pub logits: Vec<f32>,
    /// Each document's score: the manifest's activation of its logit.
    pub scores: Vec<f32>,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Set when `model` answered for the requested one: why that one did not.
    pub fallback: Option<crate::registry::fallback::Reason>,
    /// The documents whose pair was cut at the model's length.
    pub truncated: Vec<usize>,
}

impl Reranked {
    /// `body` with the headers that say who answered and what was cut.
    pub fn answer(&self, body: impl axum::response::IntoResponse) -> axum::response::Response {
        super::embed::answered(body, &self.model, self.fallback, &self.truncated)
    }

    /// Document indices by score, best first (ties keep the documents' order).
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.scores.len()).collect();
        // The activations are monotonic, so logits and scores rank alike.
        order.sort_by(|&a, &b| self.logits[b].total_cmp(&self.logits[a]));
        order
    }
}

/// `query`, unless it is empty or only whitespace.
pub fn query(query: String) -> Result<String, ApiError> {
    if query.trim().is_empty() {
        return Err(ApiError::bad_request(
            "empty_input",
            "`query` is empty or only whitespace; send the text to rank the documents against",
        ));
    }
    Ok(query)
}

/// Scores every document of `req` against its query.
pub async fn rerank(state: &Arc<AppState>, req: RerankRequest) -> Result<Reranked, ApiError> {
    super::check_serving(state)?;
    let requested = match req.model {
        Some(id) => id,
        None => default_reranker(state)?,
    };
    let instruction = req.instruction.as_deref();
    if let Some(known) = state.registry.get(&requested) {
        // Before a load: a request the model cannot take costs nothing.
        check_instruction(&requested, &known.package.manifest, instruction)?;
    }
    let served = super::fallback::acquire(state, &requested, ModelKind::Reranker, None).await?;
    let (id, slot, model) = (served.id, served.slot, served.model);
    super::served_by(&id);
    let manifest = &model.package.manifest;
    check_instruction(&id, manifest, instruction)?;
    let activation = manifest.activation.unwrap_or(ScoreActivation::Sigmoid);
    let tokenizer = model.tokenizer.clone();
    let (query, documents, cut, instruction) = (req.query, req.documents, req.cut, req.instruction);
    let bytes = documents.iter().map(|d| query.len() + d.len()).sum();
    let encoded: Vec<Encoded> = tokenize_off_runtime(bytes, move || {
        documents
            .iter()
            .map(|d| tokenizer.encode_pair(&query, d, instruction.as_deref(), cut))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    refuse_truncated(&encoded, req.truncate, |i| {
        format!(
            "the query with `{}[{i}]` is longer than the {} tokens model {id} reads for a pair; shorten them or set \"truncate\": true",
            req.field, manifest.max_seq_length
        )
    })?;
    let truncated = truncated(&encoded);
    let tokens = encoded.iter().map(Encoded::len).sum();
    tracing::debug!(caxton_model = %id, pairs = encoded.len(), tokens, "rerank request queued");
    let logits: Vec<f32> = model
        .score(encoded)
        .await?
        .into_iter()
        .map(|l| l.first().copied().unwrap_or(f32::NAN))
        .collect();
    if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "engine_error",
            format!(
                "model {id} scored `{}[{i}]` as {} (the weights compute non-finite numbers); replace the package",
                req.field, logits[i]
            ),
        ));
    }
    account(&slot, logits.len(), tokens);
    let mut scores = logits.clone();
    activation.apply(&mut scores);
    Ok(Reranked {
        model: id,
        logits,
        scores,
        tokens,
        fallback: served.fallback,
        truncated,
    })
}

/// Refuses an `instruction` that is blank, or that model `id` (whose manifest is `manifest`)
/// has no place for: only a reranker whose pair template holds `{instruction}` takes one.
fn check_instruction(
    id: &str,
    manifest: &crate::package::Manifest,
    instruction: Option<&str>,
) -> Result<(), ApiError> {
    let Some(instruction) = instruction else {
        return Ok(());
    };
    if instruction.trim().is_empty() {
        return Err(ApiError::bad_request(
            "empty_input",
            "`instruction` is empty or only whitespace; leave it out for the model's own",
        ));
    }
    let takes = manifest
        .pair_template
        .as_ref()
        .is_some_and(|t| t.takes_instruction());
    if !takes {
        return Err(ApiError::bad_request(
            "instruction_unsupported",
            format!(
                "model {id} takes no instruction (a reranker whose pair template has one, such as Qwen3-Reranker, does); leave \"instruction\" out"
            ),
        ));
    }
    Ok(())
}

/// `models.default_reranker`, else the one verified reranker; a request must name one when
/// there are several (a second side-loaded reranker never silently takes over) or none.
fn default_reranker(state: &AppState) -> Result<String, ApiError> {
    if let Some(id) = state.settings().models.default_reranker.clone() {
        return Ok(id);
    }
    let rerankers: Vec<String> = state
        .registry
        .ids()
        .into_iter()
        .filter(|id| {
            state
                .registry
                .get(id)
                .is_some_and(|s| s.package.manifest.kind == ModelKind::Reranker)
        })
        .collect();
    match rerankers.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            "no reranker is installed; side-load a cross-encoder package (caxton pack makes one from a CrossEncoder folder) into models.package_dir",
        )),
        several => Err(ApiError::bad_request(
            "model_required",
            format!(
                "several rerankers are installed ({}); name one with \"model\" or set models.default_reranker",
                several.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_score_best_first_and_keeps_ties_in_order() {
        let r = Reranked {
            model: "m".into(),
            logits: vec![0.5, 2.0, 0.5, -1.0],
            scores: vec![0.62, 0.88, 0.62, 0.27],
            tokens: 0,
            fallback: None,
            truncated: Vec::new(),
        };
        assert_eq!(r.ranking(), vec![1, 0, 2, 3]);
    }

    #[test]
    fn an_empty_query_is_refused() {
        let e = query("  ".into()).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "empty_input"));
        assert_eq!(
            e.message,
            "`query` is empty or only whitespace; send the text to rank the documents against"
        );
        assert_eq!(query("q".into()).unwrap(), "q");
    }
}
