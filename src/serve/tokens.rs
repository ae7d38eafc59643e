//! Tokenizing texts as a model does (the default one unless named), for clients that cut texts
//! by tokens or read a sparse model's term ids.

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
