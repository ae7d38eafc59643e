//! Serving a request, whatever API it came through: which model answers (the registry's
//! choice, its fallback chain included), the prompt before each text, tokenization off the
//! async workers, the length rules, the engine's pass and the usage it is accounted to. The
//! HTTP layer parses a request into one of these calls and formats what it returns; it never
//! chooses a model, checks a request against a manifest, tokenizes or runs the engine.

mod embed;
mod error;
mod images;
mod multi_vector;
mod rerank;
mod sparse;
mod tokenizing;
mod tokens;

pub use embed::{EmbedRequest, Embedded, embed};
pub use error::ServeError;
pub use images::{Picture, rerank as rerank_pictures};
pub use multi_vector::{TokenVectors, TokenVectorsRequest, token_vectors};
pub use rerank::{RerankRequest, Reranked, rerank};
pub use sparse::{SparseRequest, Term, Weighted, sparse};
use tokenizing::{tokenize_each, tokenize_off_runtime};
pub use tokens::{decode, tokenize};

use crate::engine::Encoded;
use crate::registry::ModelSlot;
use crate::state::{AppState, Health};

/// Refuses while the daemon starts (verifies its packages); every serving call checks it first.
pub fn check_serving(state: &AppState) -> Result<(), ServeError> {
    match state.health() {
        Health::Starting => Err(ServeError::Starting),
        _ => Ok(()),
    }
}

tokio::task_local! {
    /// The model a request is for, once the serving path knows it: the duration metric's label.
    static SERVED_BY: std::cell::RefCell<String>;
}

/// Records that the request being served is for model `id`.
pub fn served_by(id: &str) {
    let _ = SERVED_BY.try_with(|m| *m.borrow_mut() = id.to_string());
}

/// Runs `work` (a request's handling), returning the model it was for (empty when none) with
/// its result.
pub async fn labelled<T>(work: impl std::future::Future<Output = T>) -> (String, T) {
    SERVED_BY
        .scope(std::cell::RefCell::new(String::new()), async {
            let out = work.await;
            (SERVED_BY.with(|m| m.take()), out)
        })
        .await
}

/// What the tokenizer's cuts mean for a request: the refusal `too_long(i)` for the first
/// input `i` it cut, unless the request allows cutting; else the indices of the inputs cut and
/// the tokens in all.
fn lengths(
    encoded: &[Encoded],
    truncate: bool,
    too_long: impl FnOnce(usize) -> ServeError,
) -> Result<(Vec<usize>, usize), ServeError> {
    let cut: Vec<usize> = (0..encoded.len())
        .filter(|&i| encoded[i].truncated)
        .collect();
    if let (Some(&i), false) = (cut.first(), truncate) {
        return Err(too_long(i));
    }
    Ok((cut, encoded.iter().map(Encoded::len).sum()))
}

/// `configured` (the kind's `models.default_*` key), else the one verified model of `kind`;
/// a request must name one when there are several (a second side-loaded model never silently
/// takes over), `several` says so, or none, `none` says so.
fn default_of_kind(
    registry: &crate::registry::Registry,
    configured: Option<&str>,
    kind: crate::package::ModelKind,
    none: crate::registry::ModelError,
    several: fn(Vec<String>) -> crate::registry::ModelError,
) -> Result<String, crate::registry::ModelError> {
    if let Some(id) = configured {
        return Ok(id.to_string());
    }
    let found: Vec<String> = registry
        .ids()
        .into_iter()
        .filter(|id| {
            registry
                .get(id)
                .is_some_and(|s| s.package.manifest.serves(kind))
        })
        .collect();
    match found.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(none),
        _ => Err(several(found)),
    }
}

/// Records a request served by `slot`: its usage (idle time, counts) and the texts and
/// tokens metrics.
fn account(slot: &ModelSlot, texts: usize, tokens: usize) {
    slot.touch(tokens as u64);
    let metrics = crate::metrics::get();
    let label = crate::metrics::Metrics::model(&slot.package.manifest.id);
    metrics.texts.get_or_create(&label).inc_by(texts as u64);
    metrics.tokens.get_or_create(&label).inc_by(tokens as u64);
}
