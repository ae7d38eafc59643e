//! Term weights from a sparse model (SPLADE): the model (`models.default_sparse`, else the one
//! verified sparse model), tokenization, the length rule, the engine's pass, then the terms
//! above zero, heaviest first, cut to the request's `top_k`.

use std::sync::Arc;

use super::{ServeError, account, check_serving, lengths, served_by, tokenize_each};
use crate::engine::outputs::Output;
use crate::engine::{Cut, Encoded, EngineError, VectorShape};
use crate::package::{InputType, ModelKind};
use crate::registry::fallback::Reason;
use crate::registry::{ModelError, Wanted};
use crate::state::AppState;

/// One request for term weights, whatever API it came through.
pub struct SparseRequest {
    /// Model id, or the default sparse model.
    pub model: Option<String>,
    /// Non-empty texts.
    pub texts: Vec<String>,
    /// Cut texts at the model's limit (true) or refuse them (false).
    pub truncate: bool,
    /// Which end of an over-long text goes.
    pub cut: Cut,
    /// Keep at most this many terms per text, the heaviest (all above zero when unset).
    pub top_k: Option<usize>,
    /// Queries go to an inference-free model's query side (a look-up, no pass); documents,
    /// and every text of a model without one, through the model. It picks the model's prompt
    /// for them too, unless `prompt_name` does.
    pub input_type: Option<InputType>,
    /// One of the model's prompts to put before every text.
    pub prompt_name: Option<String>,
}

/// One weighted term: its token id in the model's vocabulary and its weight (above zero).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Term {
    /// The token id (`/tokenize` names it).
    pub index: u32,
    /// Its weight.
    pub value: f32,
}

/// Term weights and accounting for a request.
pub struct Weighted {
    /// The model that answered.
    pub model: String,
    /// Each text's terms, heaviest first (ties by token id).
    pub terms: Vec<Vec<Term>>,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Set when `model` answered for the requested one: why that one did not.
    pub fallback: Option<Reason>,
    /// The inputs cut at the model's length.
    pub truncated: Vec<usize>,
}

/// Runs `req` through the named (or default) sparse model.
pub async fn sparse(state: &Arc<AppState>, req: SparseRequest) -> Result<Weighted, ServeError> {
    check_serving(state)?;
    let settings = state.settings();
    let requested = match req.model {
        Some(id) => id,
        None => super::default_of_kind(
            &state.registry,
            settings.models.default_sparse.as_deref(),
            ModelKind::Sparse,
            ModelError::NoSparse,
            ModelError::SparseRequired,
        )?,
    };
    if let Some(known) = state.registry.get(&requested) {
        // Before a load: a prompt the model does not have costs nothing.
        known
            .package
            .manifest
            .side_prompt(req.prompt_name.as_deref(), req.input_type)?;
    }
    let wanted = Wanted {
        id: &requested,
        kind: ModelKind::Sparse,
        width: None,
    };
    let served = state.registry.serve(&settings.models, wanted).await?;
    let (id, slot, model) = (served.id, served.slot, served.model);
    served_by(&id);
    let manifest = &model.package.manifest;
    let tokenizer = model.tokenizer.clone();
    let cut = req.cut;
    let table = match req.input_type {
        Some(InputType::Query) => model.query_weights.as_deref(),
        _ => None,
    };
    let plain = table.is_some();
    let texts = match manifest.side_prompt(req.prompt_name.as_deref(), req.input_type)? {
        // As sentence-transformers does: the prompt is part of the text, tokens and all.
        Some(p) => req.texts.into_iter().map(|t| format!("{p}{t}")).collect(),
        None => req.texts,
    };
    let encoded: Vec<Encoded> = tokenize_each(texts, String::len, move |t| match plain {
        true => tokenizer.encode_plain(t, cut),
        false => tokenizer.encode_cut(t, cut),
    })
    .await?;
    let (truncated, tokens) = lengths(&encoded, req.truncate, |index| ServeError::TooLong {
        index,
        max: manifest.max_seq_length,
        id: id.clone(),
    })?;
    let per_token = manifest.sparse_head();
    let found: Vec<Vec<Term>> = match (table, per_token) {
        (Some(table), _) => encoded
            .iter()
            .map(|e| looked_up(table, &e.ids, req.top_k))
            .collect(),
        // bge-m3: a weight per token, the largest per token id.
        (None, Some(head)) => {
            let ids: Vec<Vec<u32>> = encoded.iter().map(|e| e.ids.clone()).collect();
            let weights = model
                .embed_output(encoded, VectorShape::default(), Output::TermWeights)
                .await?;
            ids.iter()
                .zip(&weights)
                .map(|(ids, w)| by_token(ids, w, &head.skip, req.top_k))
                .collect()
        }
        (None, None) => {
            let weights = model.embed(encoded, VectorShape::default()).await?;
            // A scan of every term of every text (30k+ each): off the async workers.
            let top_k = req.top_k;
            tokio::task::spawn_blocking(move || weights.iter().map(|w| terms(w, top_k)).collect())
                .await
                .map_err(|e| EngineError::Failed(format!("picking the terms failed: {e}")))?
        }
    };
    account(&slot, found.len(), tokens);
    Ok(Weighted {
        model: id,
        terms: found,
        tokens,
        fallback: served.fallback,
        truncated,
    })
}

/// bge-m3's terms of a text: each token id's largest weight (`weights`, one a token of
/// `ids`), those above zero and not in `skip` (its special tokens), heaviest first, at most
/// `top_k` (FlagEmbedding's `_process_token_weights`).
fn by_token(ids: &[u32], weights: &[f32], skip: &[u32], top_k: Option<usize>) -> Vec<Term> {
    let mut best: std::collections::BTreeMap<u32, f32> = std::collections::BTreeMap::new();
    for (&id, &w) in ids.iter().zip(weights) {
        if w > 0.0 && !skip.contains(&id) {
            let e = best.entry(id).or_insert(w);
            *e = e.max(w);
        }
    }
    let mut t: Vec<Term> = best
        .into_iter()
        .map(|(index, value)| Term { index, value })
        .collect();
    sort_and_cut(&mut t, top_k);
    t
}

/// An inference-free query's terms: each distinct token's weight in `table`, those above
/// zero, heaviest first, at most `top_k` (sentence-transformers' `SparseStaticEmbedding`).
fn looked_up(table: &[f32], ids: &[u32], top_k: Option<usize>) -> Vec<Term> {
    let mut distinct = ids.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let mut t: Vec<Term> = distinct
        .into_iter()
        .filter_map(|index| {
            let value = *table.get(index as usize)?;
            (value > 0.0).then_some(Term { index, value })
        })
        .collect();
    sort_and_cut(&mut t, top_k);
    t
}

/// The terms of `weights` above zero, heaviest first (ties by token id), at most `top_k`.
pub fn terms(weights: &[f32], top_k: Option<usize>) -> Vec<Term> {
    let mut t: Vec<Term> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0.0)
        .map(|(i, &value)| Term {
            index: i as u32,
            value,
        })
        .collect();
    sort_and_cut(&mut t, top_k);
    t
}

/// Heaviest first (ties by token id), at most `top_k`.
fn sort_and_cut(t: &mut Vec<Term>, top_k: Option<usize>) {
    t.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.index.cmp(&b.index)));
    if let Some(k) = top_k {
        t.truncate(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_above_zero_heaviest_first_and_top_k() {
        let w = [0.0, 0.5, 0.0, 2.0, 0.5, 1.0];
        let all = terms(&w, None);
        let ids: Vec<u32> = all.iter().map(|t| t.index).collect();
        assert_eq!(ids, [3, 5, 1, 4]);
        assert_eq!(terms(&w, Some(2)).len(), 2);
        assert_eq!(terms(&w, Some(10)).len(), 4);
        assert!(terms(&[0.0; 4], None).is_empty());
    }

    #[test]
    fn a_token_id_weighs_its_heaviest_occurrence_and_special_ids_none() {
        // ids 0 and 2 are special; 7 occurs twice (0.5 and 0.9); 9's weight is zero.
        let t = by_token(
            &[0, 7, 9, 7, 5, 2],
            &[3.0, 0.5, 0.0, 0.9, 0.2, 1.0],
            &[0, 2],
            None,
        );
        assert_eq!(
            t,
            [
                Term {
                    index: 7,
                    value: 0.9
                },
                Term {
                    index: 5,
                    value: 0.2
                }
            ]
        );
        assert_eq!(by_token(&[7, 5], &[0.5, 0.2], &[], Some(1)).len(), 1);
    }
}
