//! Which model answers a request: the one it asked for, or, when that one cannot serve and
//! `models.fallback_strategy` allows it, the first alternative of its fallback chain that can
//! (`models.fallbacks`, then under `auto` the default model): one already loaded first, then
//! the smallest that loads within the budget. A substitute is always of the requested kind,
//! and of the requested width unless `models.allow_dimension_mismatch`. A `dimensions` the
//! requested model cannot give is refused before anything loads. An exhausted chain answers
//! the requested model's own refusal, naming the alternatives tried.

use std::sync::Arc;

use super::error::{LoadError, ModelError};
use super::fallback::{self, Reason};
use super::{ModelSlot, Registry};
use crate::config::ModelSettings;
use crate::config::fallback::Shape;
use crate::engine::LoadedModel;
use crate::package::{Manifest, Mismatch, ModelKind};

/// What a request asks for.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// The model it names (or the default).
    pub id: &'a str,
    /// Embedding or reranker.
    pub kind: ModelKind,
    /// The width to cut vectors to (OpenAI's `dimensions`), as the request gave it.
    pub width: Option<i64>,
}

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
    /// The width to cut its vectors to, checked against its own manifest.
    pub width: Option<usize>,
}

impl Registry {
    /// The model for a request for `wanted` under `models`' fallback rules, loaded.
    pub async fn serve(
        self: &Arc<Self>,
        models: &ModelSettings,
        wanted: Wanted<'_>,
    ) -> Result<Served, ModelError> {
        let requested = wanted.id;
        // The default model is an embedding model: `auto` adds it to embedding chains only.
        let chain = chain(
            requested,
            models.fallback_strategy,
            models.fallbacks.get(requested).map(Vec::as_slice),
            (wanted.kind == ModelKind::Embedding).then_some(models.default.as_str()),
        );
        let (reason, error) = match self.serve_requested(&wanted, &chain).await {
            Ok(served) => return Ok(served),
            Err(Refused::Finally(error)) => return Err(error),
            Err(Refused::Because(reason, error)) => (reason, error),
        };
        // A name never installed here and not configured is a caller's typo, not a model to
        // stand in for: substituting it would also grow the journal and metric labels without
        // bound.
        let unheard_of = reason == Reason::Missing
            && self.shape(requested).is_none()
            && !models.fallbacks.contains_key(requested);
        if chain.is_empty() || unheard_of {
            return Err(error);
        }
        self.substitute(models, &wanted, &chain, reason, error)
            .await
    }

    /// The requested model itself, or why it cannot answer.
    async fn serve_requested(
        self: &Arc<Self>,
        wanted: &Wanted<'_>,
        chain: &[String],
    ) -> Result<Served, Refused> {
        let requested = wanted.id;
        // One lookup: the model that loads below is this slot's.
        let Some(slot) = self.get(requested) else {
            let missing = ModelError::NotFound {
                id: requested.to_string(),
                known: self.ids(),
            };
            return Err(Refused::Because(Reason::Missing, missing));
        };
        // A width the model cannot give, or a model of the other kind, is the caller's
        // mistake: refused before anything loads, never a reason to substitute.
        let width = width_on(&slot.package.manifest, wanted.width)
            .map_err(|e| Refused::Finally(e.into()))?;
        check_kind(&slot, wanted.kind).map_err(Refused::Finally)?;
        if !chain.is_empty()
            && self.governor.critical()
            && !self.alternative(requested).is_some_and(|a| a.loaded)
        {
            let refusal = ModelError::HardLimit {
                id: requested.to_string(),
                retry_after: self.governor.retry_after(),
            };
            return Err(Refused::Because(Reason::MemoryPressure, refusal));
        }
        match self.acquire_slot(slot.clone(), chain).await {
            Ok(model) => {
                self.fallbacks.served(requested);
                Ok(Served {
                    id: requested.to_string(),
                    slot,
                    model,
                    fallback: None,
                    width,
                })
            }
            Err(e) => Err(Refused::Because(reason_of(&e), e.into())),
        }
    }

    /// The first alternative of `chain` that fits the request and can answer, tried loaded
    /// ones first; else the requested model's `error`, naming every alternative tried.
    async fn substitute(
        self: &Arc<Self>,
        models: &ModelSettings,
        wanted: &Wanted<'_>,
        chain: &[String],
        reason: Reason,
        error: ModelError,
    ) -> Result<Served, ModelError> {
        // (id, why it did not answer), in the order tried.
        let mut tried: Vec<(String, String)> = Vec::new();
        let mut options = Vec::new();
        for alt in chain {
            match (self.alternative(alt), self.shape(alt)) {
                (Some(option), Some(s)) => match self.unfit(models, wanted, alt, s) {
                    None => options.push(option),
                    Some(why) => tried.push((alt.clone(), why)),
                },
                _ => tried.push((alt.clone(), "not installed".into())),
            }
        }
        for alt in fallback::order(options) {
            // Under the hard limit nothing loads: only what is in memory may answer.
            let loaded = self.alternative(&alt).is_some_and(|a| a.loaded);
            if reason == Reason::MemoryPressure && !loaded {
                tried.push((alt, "not loaded, and memory is at its hard limit".into()));
                continue;
            }
            let Some(slot) = self.get(&alt) else {
                tried.push((alt, "not installed".into()));
                continue;
            };
            match self.acquire_slot(slot.clone(), chain).await {
                Ok(model) => {
                    let skipped: Vec<String> = tried.into_iter().map(|(id, _)| id).collect();
                    self.fallbacks.substituted(
                        wanted.id,
                        &alt,
                        reason,
                        &skipped,
                        &error.to_string(),
                    );
                    // `unfit` checked the width before the load, on what may have been another
                    // version (a rescan between); this is the one that loaded.
                    let width = width_on(&slot.package.manifest, wanted.width)?;
                    return Ok(Served {
                        id: alt,
                        slot,
                        model,
                        fallback: Some(reason),
                        width,
                    });
                }
                Err(e) => tried.push((alt, short(&e))),
            }
        }
        let tried: Vec<String> = tried
            .into_iter()
            .map(|(id, why)| format!("{id} ({why})"))
            .collect();
        Err(ModelError::Exhausted {
            error: Box::new(error),
            strategy: models.fallback_strategy.as_str(),
            tried: tried.join("; "),
        })
    }

    /// Why the verified model `alt` of shape `s` may not answer for the request: it does not
    /// serve the request's kind, fewer dimensions than the request asks, or (unless
    /// `models.allow_dimension_mismatch`) another width than the requested model's, or a
    /// width of the requested model nobody knows.
    fn unfit(
        &self,
        models: &ModelSettings,
        wanted: &Wanted<'_>,
        alt: &str,
        s: Shape,
    ) -> Option<String> {
        // An installed alternative answers the kinds its manifest serves (a bge-m3 copy
        // answers sparse and multi-vector requests too); one known only by its remembered
        // shape, its own kind.
        let serves = match self.get(alt) {
            Some(slot) => slot.package.manifest.serves(wanted.kind),
            None => s.kind == wanted.kind.shape_kind(),
        };
        if !serves {
            return Some(s.kind.described().into());
        }
        if let Some(w) = wanted.width {
            if w > s.dimensions as i64 {
                return Some(format!(
                    "{} dimensions, the request asks for {w}",
                    s.dimensions
                ));
            }
            // An installed alternative's manifest knows the widths it may give (never one
            // below 1, nor one it was not trained for).
            if let Some(Err(why)) = self
                .get(alt)
                .map(|slot| slot.package.manifest.check_width(w))
            {
                return Some(why.to_string());
            }
        }
        if wanted.kind == ModelKind::Reranker || models.allow_dimension_mismatch {
            return None;
        }
        let requested = wanted.id;
        match self.shape(requested) {
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
}

/// Why the requested model did not answer.
enum Refused {
    /// For a reason an alternative may stand in for.
    Because(Reason, ModelError),
    /// For the caller's own mistake: answered as it is.
    Finally(ModelError),
}

/// The alternatives for `requested` under `strategy`, in order: none under `strict`; the
/// listed ones; under `auto` then `default`, unless it is the requested one or listed.
pub fn chain(
    requested: &str,
    strategy: crate::config::FallbackStrategy,
    listed: Option<&[String]>,
    default: Option<&str>,
) -> Vec<String> {
    use crate::config::FallbackStrategy;
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

/// Refuses the model of `slot` for a request that needs a model of `kind`.
fn check_kind(slot: &ModelSlot, kind: ModelKind) -> Result<(), ModelError> {
    let id = || slot.package.manifest.id.clone();
    match (slot.package.manifest.kind, kind) {
        _ if slot.package.manifest.serves(kind) => Ok(()),
        (ModelKind::Reranker, ModelKind::Embedding) => Err(ModelError::NotEmbedding(id())),
        (_, ModelKind::Reranker) => Err(ModelError::NotReranker(id())),
        (have, want) => Err(ModelError::WrongKind {
            id: id(),
            have: have.shape_kind().described(),
            want: want.shape_kind().described(),
        }),
    }
}

/// The width `width` asks of the model of `manifest`, checked.
fn width_on(manifest: &Manifest, width: Option<i64>) -> Result<Option<usize>, Mismatch> {
    width.map(|w| manifest.check_width(w)).transpose()
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
    use crate::config::FallbackStrategy;

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
