//! Which model answers a request: the one it asked for, or, when that one cannot serve and
//! `models.fallback_strategy` allows it, the first alternative of its chain that can
//! (`models.fallbacks`, then under `auto` the default model): one already loaded first, then
//! the smallest that loads within the budget. A substitute is always of the requested kind,
//! and of the requested width unless `models.allow_dimension_mismatch`. The answer says who
//! served (`model`, `X-Caxton-Served-By`, `X-Caxton-Fallback`); an exhausted chain answers
//! the requested model's own error, naming the alternatives tried.

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::config::FallbackStrategy;
use crate::engine::LoadedModel;
use crate::package::ModelKind;
use crate::registry::fallback::{self, Reason};
use crate::registry::{LoadError, ModelSlot};
use crate::state::AppState;

/// `X-Caxton-Served-By`: the model that answered a substituted request.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-caxton-served-by");
/// `X-Caxton-Fallback`: why the requested model did not.
pub const FALLBACK: HeaderName = HeaderName::from_static("x-caxton-fallback");

/// The model that will answer a request.
pub struct Served {
    /// Its id.
    pub id: String,
    /// Its slot (for usage accounting).
    pub slot: Arc<ModelSlot>,
    /// The loaded model.
    pub model: Arc<LoadedModel>,
    /// Set when it is a substitute: why the requested model did not answer.
    pub fallback: Option<Reason>,
}

/// `response` with the substitution headers when `fallback` is set.
pub fn with_headers(
    response: impl IntoResponse,
    served: &str,
    fallback: Option<Reason>,
) -> Response {
    let mut response = response.into_response();
    if let (Some(reason), Ok(value)) = (fallback, HeaderValue::from_str(served)) {
        let h = response.headers_mut();
        h.insert(SERVED_BY, value);
        h.insert(FALLBACK, HeaderValue::from_static(reason.as_str()));
    }
    response
}

/// The model for a request for `requested` of `kind` (and, for embeddings, at least `width`
/// dimensions when the request asks for them).
pub async fn acquire(
    state: &Arc<AppState>,
    requested: &str,
    kind: ModelKind,
    width: Option<usize>,
) -> Result<Served, ApiError> {
    let registry = &state.registry;
    let settings = state.settings();
    let models = &settings.models;
    // The default model is an embedding model: `auto` adds it to embedding chains only.
    let chain = chain(
        requested,
        models.fallback_strategy,
        models.fallbacks.get(requested).map(Vec::as_slice),
        (kind == ModelKind::Embedding).then_some(models.default.as_str()),
    );
    let (reason, error) = match registry.get(requested) {
        None => (
            Reason::Missing,
            super::model_slot(state, requested, kind).err(),
        ),
        Some(_) => {
            // The wrong kind is the caller's mistake, never a reason to substitute.
            let slot = super::model_slot(state, requested, kind)?;
            if !chain.is_empty()
                && registry.governor.critical()
                && !registry.alternative(requested).is_some_and(|a| a.loaded)
            {
                (
                    Reason::MemoryPressure,
                    Some(ApiError::unavailable(
                        "insufficient_memory",
                        format!(
                            "model {requested} is not loaded and memory is at its hard limit; nothing loads until it eases, retry later"
                        ),
                        registry.governor.retry_after().as_secs().max(1),
                    )),
                )
            } else {
                match registry.acquire_for(requested, &chain).await {
                    Ok(model) => {
                        registry.fallbacks.served(requested);
                        return Ok(Served {
                            id: requested.to_string(),
                            slot,
                            model,
                            fallback: None,
                        });
                    }
                    Err(e) => (reason_of(&e), Some(ApiError::from(e))),
                }
            }
        }
    };
    let error = error.unwrap_or_else(|| ApiError::from(LoadError::Unknown(requested.into())));
    // A name never installed here and not configured is a caller's typo, not a model to
    // stand in for: substituting it would also grow the journal and metric labels without
    // bound.
    let unheard_of = reason == Reason::Missing
        && registry.shape(requested).is_none()
        && !models.fallbacks.contains_key(requested);
    if chain.is_empty() || unheard_of {
        return Err(error);
    }
    // (id, why it did not answer), in the order tried.
    let mut tried: Vec<(String, String)> = Vec::new();
    let mut options = Vec::new();
    for alt in &chain {
        match (registry.alternative(alt), registry.shape(alt)) {
            (Some(option), Some(s)) => match unfit(state, requested, kind, width, alt, s) {
                None => options.push(option),
                Some(why) => tried.push((alt.clone(), why)),
            },
            _ => tried.push((alt.clone(), "not installed".into())),
        }
    }
    for alt in fallback::order(options) {
        // Under the hard limit nothing loads: only what is in memory may answer.
        let loaded = registry.alternative(&alt).is_some_and(|a| a.loaded);
        if reason == Reason::MemoryPressure && !loaded {
            tried.push((alt, "not loaded, and memory is at its hard limit".into()));
            continue;
        }
        let Some(slot) = registry.get(&alt) else {
            tried.push((alt, "not installed".into()));
            continue;
        };
        match registry.acquire_for(&alt, &chain).await {
            Ok(model) => {
                let skipped: Vec<String> = tried.into_iter().map(|(id, _)| id).collect();
                registry
                    .fallbacks
                    .substituted(requested, &alt, reason, &skipped, &error.message);
                return Ok(Served {
                    id: alt,
                    slot,
                    model,
                    fallback: Some(reason),
                });
            }
            Err(e) => tried.push((alt, short(&e))),
        }
    }
    let tried: Vec<String> = tried
        .into_iter()
        .map(|(id, why)| format!("{id} ({why})"))
        .collect();
    Err(ApiError {
        message: format!(
            "{}; alternatives tried (models.fallback_strategy {}): {}",
            error.message,
            models.fallback_strategy.as_str(),
            tried.join("; ")
        ),
        ..error
    })
}

/// Why the verified model `alt` of shape `s` may not answer for `requested`: another kind,
/// fewer dimensions than the request asks, or (unless `models.allow_dimension_mismatch`)
/// another width than `requested`'s, or a width of `requested` nobody knows.
fn unfit(
    state: &AppState,
    requested: &str,
    kind: ModelKind,
    width: Option<usize>,
    alt: &str,
    s: crate::config::fallback::Shape,
) -> Option<String> {
    let reranker = kind == ModelKind::Reranker;
    if s.reranker != reranker {
        return Some(
            if s.reranker {
                "a reranker"
            } else {
                "an embedding model"
            }
            .into(),
        );
    }
    if let Some(w) = width {
        if w > s.dimensions {
            return Some(format!(
                "{} dimensions, the request asks for {w}",
                s.dimensions
            ));
        }
        // An installed alternative's manifest knows the widths it was trained for.
        if let Some(Err(why)) = state
            .registry
            .get(alt)
            .map(|slot| slot.package.manifest.check_width(w as i64))
        {
            return Some(why);
        }
    }
    if reranker || state.settings().models.allow_dimension_mismatch {
        return None;
    }
    match state.registry.shape(requested) {
        Some(p) if p.dimensions == s.dimensions => None,
        Some(p) => Some(format!(
            "{} dimensions, not {}; models.allow_dimension_mismatch is false",
            s.dimensions, p.dimensions
        )),
        None => Some(format!(
            "{requested} was never installed here, so its width is not known to match {alt}'s {}; models.allow_dimension_mismatch is false",
            s.dimensions
        )),
    }
}

/// The alternatives for `requested` under `strategy`, in order: none under `strict`; the
/// listed ones; under `auto` then `default`, unless it is the requested one or listed.
pub fn chain(
    requested: &str,
    strategy: FallbackStrategy,
    listed: Option<&[String]>,
    default: Option<&str>,
) -> Vec<String> {
    let mut chain: Vec<String> = match strategy {
        FallbackStrategy::Strict => return Vec::new(),
        FallbackStrategy::Listed | FallbackStrategy::Auto => listed.unwrap_or_default().to_vec(),
    };
    if strategy == FallbackStrategy::Auto
        && let Some(default) = default
        && default != requested
        && !chain.iter().any(|c| c == default)
    {
        chain.push(default.to_string());
    }
    chain
}

fn reason_of(e: &LoadError) -> Reason {
    match e {
        LoadError::Unknown(_) => Reason::Missing,
        LoadError::Failed { .. } => Reason::Failed,
        LoadError::NoMemory { .. } => Reason::InsufficientMemory,
    }
}

/// An alternative's failure, in a few words.
fn short(e: &LoadError) -> String {
    match e {
        LoadError::Unknown(_) => "not installed".into(),
        LoadError::Failed { reason, .. } => format!("failed to load: {reason}"),
        LoadError::NoMemory { reason, .. } => format!("no memory: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_strategy_decides_the_chain() {
        let listed = ids(&["b", "c"]);
        assert!(chain("a", FallbackStrategy::Strict, Some(&listed), Some("d")).is_empty());
        assert_eq!(
            chain("a", FallbackStrategy::Listed, Some(&listed), Some("d")),
            ids(&["b", "c"])
        );
        assert!(chain("a", FallbackStrategy::Listed, None, Some("d")).is_empty());
        assert_eq!(
            chain("a", FallbackStrategy::Auto, Some(&listed), Some("d")),
            ids(&["b", "c", "d"])
        );
        assert_eq!(
            chain("a", FallbackStrategy::Auto, None, Some("d")),
            ids(&["d"])
        );
        assert_eq!(
            chain("a", FallbackStrategy::Auto, Some(&ids(&["d"])), Some("d")),
            ids(&["d"])
        );
        assert!(chain("d", FallbackStrategy::Auto, None, Some("d")).is_empty());
        // A reranker's chain has no default model to end with.
        assert_eq!(
            chain("a", FallbackStrategy::Auto, Some(&listed), None),
            ids(&["b", "c"])
        );
    }
}
