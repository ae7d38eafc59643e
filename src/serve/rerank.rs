//! Reranking documents against a query: the reranker (or its substitute), its instruction,
//! each query–document pair tokenized off the async workers, the length rule, the pairs
//! scored on the model's engine thread (batched there with other requests' pairs), and the
//! manifest's activation.

use std::sync::Arc;

use super::{ServeError, account, check_serving, lengths, served_by, tokenize_each};
use crate::engine::{Cut, Encoded};
use crate::package::{Manifest, ModelKind, ScoreActivation};
use crate::registry::fallback::Reason;
use crate::registry::{ModelError, Wanted};
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
    /// Cut over-long pairs at the model's limit (true) or refuse them (false).
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
    pub fallback: Option<Reason>,
    /// The documents whose pair was cut at the model's length.
    pub truncated: Vec<usize>,
}

impl Reranked {
    /// Document indices by score, best first (ties keep the documents' order).
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.scores.len()).collect();
        // The activations are monotonic, so logits and scores rank alike.
        order.sort_by(|&a, &b| self.logits[b].total_cmp(&self.logits[a]));
        order
    }
}

/// Scores every document of `req` against its query.
pub async fn rerank(state: &Arc<AppState>, req: RerankRequest) -> Result<Reranked, ServeError> {
    check_serving(state)?;
    let settings = state.settings();
    let requested = match req.model.clone() {
        Some(id) => id,
        None => super::default_of_kind(
            &state.registry,
            settings.models.default_reranker.as_deref(),
            ModelKind::Reranker,
            ModelError::NoReranker,
            ModelError::RerankerRequired,
        )?,
    };
    let instruction = req.instruction.as_deref();
    let mut late_interaction = false;
    if let Some(known) = state.registry.get(&requested) {
        // Before a load: a request the model cannot take costs nothing.
        check_instruction(&known.package.manifest, instruction)?;
        if known.package.manifest.kind == ModelKind::ImageText {
            return Err(ServeError::TextDocuments {
                place: format!("{}[0]", req.field),
                id: requested,
            });
        }
        late_interaction = known.package.manifest.serves(ModelKind::MultiVector);
    }
    if late_interaction {
        return super::multi_vector::rerank(state, req, &requested).await;
    }
    let wanted = Wanted {
        id: &requested,
        kind: ModelKind::Reranker,
        width: None,
    };
    let served = state.registry.serve(&settings.models, wanted).await?;
    let (id, slot, model) = (served.id, served.slot, served.model);
    served_by(&id);
    let manifest = &model.package.manifest;
    check_instruction(manifest, instruction)?;
    let activation = manifest.activation.unwrap_or(ScoreActivation::Sigmoid);
    let tokenizer = model.tokenizer.clone();
    let (query, documents, cut, instruction) = (req.query, req.documents, req.cut, req.instruction);
    let query_bytes = query.len();
    let encoded: Vec<Encoded> = tokenize_each(
        documents,
        move |d| query_bytes + d.len(),
        move |d| tokenizer.encode_pair(&query, d, instruction.as_deref(), cut),
    )
    .await?;
    let (truncated, tokens) = lengths(&encoded, req.truncate, |index| ServeError::PairTooLong {
        field: req.field,
        index,
        max: manifest.max_seq_length,
        id: id.clone(),
    })?;
    tracing::debug!(caxton_model = %id, pairs = encoded.len(), tokens, "rerank request queued");
    let logits: Vec<f32> = model
        .score(encoded)
        .await?
        .into_iter()
        .map(|l| l.first().copied().unwrap_or(f32::NAN))
        .collect();
    if let Some(index) = logits.iter().position(|x| !x.is_finite()) {
        return Err(ServeError::NonFinite {
            id,
            field: req.field,
            index,
            value: logits[index],
        });
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

/// Refuses an `instruction` that is blank, or that the model of `manifest` has no place for.
fn check_instruction(manifest: &Manifest, instruction: Option<&str>) -> Result<(), ServeError> {
    let Some(instruction) = instruction else {
        return Ok(());
    };
    if instruction.trim().is_empty() {
        return Err(ServeError::EmptyInstruction);
    }
    Ok(manifest.check_instruction()?)
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
}
