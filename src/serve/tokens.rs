//! Tokenizing texts as a model does (the default one unless named), for clients that cut texts
//! by tokens or read a sparse model's term ids, and decoding ids back into text.

use std::sync::Arc;

use super::{ServeError, check_serving, served_by, tokenize_off_runtime};
use crate::engine::Token;
use crate::state::AppState;

/// Each of `texts` as the tokens of `model` (else the default model's; `special`: with its
/// special tokens), with
/// the prompt called `prompt_name` before it; untruncated. Offsets are into the text as sent,
/// the prompt excluded.
pub async fn tokenize(
    state: &Arc<AppState>,
    texts: Vec<String>,
    model: Option<String>,
    prompt_name: Option<String>,
    special: bool,
) -> Result<Vec<Vec<Token>>, ServeError> {
    check_serving(state)?;
    let id = model.unwrap_or_else(|| state.settings().models.default.clone());
    served_by(&id);
    let model = state.registry.acquire(&id).await?;
    let prompt = match prompt_name {
        None => String::new(),
        Some(name) => model.package.manifest.prompt(&name)?.to_string(),
    };
    let tokenizer = model.tokenizer.clone();
    let bytes = texts.iter().map(|t| prompt.len() + t.len()).sum();
    tokenize_off_runtime(bytes, move || {
        texts
            .iter()
            .map(|text| {
                let mut tokens = tokenizer.tokens(&format!("{prompt}{text}"), special)?;
                // Offsets into the text the client sent: the prompt's tokens keep none.
                for t in &mut tokens {
                    match (t.start, t.stop) {
                        (Some(a), Some(b)) if a >= prompt.len() => {
                            t.start = Some(a - prompt.len());
                            t.stop = Some(b - prompt.len());
                        }
                        _ => (t.start, t.stop) = (None, None),
                    }
                }
                Ok(tokens)
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .await
}

/// Each list of `batch` decoded by `model`'s tokenizer (else the default model's), without
/// the special tokens when `skip_special`: `POST /decode`. An id the vocabulary lacks is
/// refused, named as the request placed it (`ids[j]`, or `ids[i][j]` when `batched`).
pub async fn decode(
    state: &Arc<AppState>,
    batch: Vec<Vec<u32>>,
    batched: bool,
    model: Option<String>,
    skip_special: bool,
) -> Result<Vec<String>, ServeError> {
    check_serving(state)?;
    let id = model.unwrap_or_else(|| state.settings().models.default.clone());
    served_by(&id);
    let model = state.registry.acquire(&id).await?;
    let tokenizer = model.tokenizer.clone();
    for (i, ids) in batch.iter().enumerate() {
        if let Some((j, &token)) = ids.iter().enumerate().find(|(_, t)| !tokenizer.has_id(**t)) {
            return Err(ServeError::UnknownTokenId {
                place: match batched {
                    true => format!("ids[{i}][{j}]"),
                    false => format!("ids[{j}]"),
                },
                token,
                id,
                vocab: tokenizer.vocab_size(),
            });
        }
    }
    let ids: usize = batch.iter().map(Vec::len).sum();
    // A token's text is a few bytes: the same bound as a text of as many.
    tokenize_off_runtime(ids * 4, move || {
        batch
            .iter()
            .map(|ids| tokenizer.decode(ids, skip_special))
            .collect()
    })
    .await
}
