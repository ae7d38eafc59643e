//! Substitution episodes of fallback chains (`models.fallbacks`): which models are being
//! answered for by an alternative, so the journal says it once when an episode starts
//! (`model_fallback`) and once when the model serves again (`model_fallback_end`), never once
//! per request; and the order alternatives are tried in, as a pure function.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Why a request's model did not answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No verified package has its id.
    Missing,
    /// Its load failed (it is in its backoff, or just failed again).
    Failed,
    /// Memory does not allow its load.
    InsufficientMemory,
    /// Memory is at the hard-limit level: nothing loads until it eases.
    MemoryPressure,
}

impl Reason {
    /// The stable spelling (header, metric label, journal field).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Failed => "failed",
            Reason::InsufficientMemory => "insufficient_memory",
            Reason::MemoryPressure => "memory_pressure",
        }
    }
}

/// An alternative that may be tried: whether it is in memory, and what it would take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    /// Model id.
    pub id: String,
    /// In memory now.
    pub loaded: bool,
    /// Bytes it takes (measured, else estimated).
    pub bytes: u64,
}

/// The order to try alternatives in: those already loaded first (in the configured order,
/// they cost nothing), then the others smallest first (the likeliest to fit).
pub fn order(mut options: Vec<Alternative>) -> Vec<String> {
    // A stable sort keeps the configured order among the loaded ones.
    options.sort_by_key(|o| (!o.loaded, if o.loaded { 0 } else { o.bytes }));
    options.into_iter().map(|o| o.id).collect()
}

struct Episode {
    served: String,
    reason: Reason,
    since: Instant,
    requests: u64,
}

/// The episodes under way, by requested model.
#[derive(Default)]
pub struct Episodes(Mutex<HashMap<String, Episode>>);

impl Episodes {
    /// Records a request for `requested` answered by `served` because of `reason` (the
    /// requested model's error being `why`): the counter always, the journal when an episode
    /// starts.
    pub fn substituted(
        &self,
        requested: &str,
        served: &str,
        reason: Reason,
        tried: &[String],
        why: &str,
    ) {
        crate::metrics::get()
            .fallbacks
            .get_or_create(&crate::metrics::FallbackLabels {
                requested: requested.to_string(),
                served: served.to_string(),
                reason: reason.as_str().to_string(),
            })
            .inc();
        let mut episodes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = episodes.get_mut(requested) {
            e.requests += 1;
            if e.served != served || e.reason != reason {
                // Within an episode the reason may flip with each pressure reading: not a
                // new episode.
                tracing::debug!(
                    caxton_model = %requested,
                    caxton_served_by = %served,
                    caxton_reason = reason.as_str(),
                    "requests for model {requested} are now answered by {served} ({})",
                    reason.as_str()
                );
                e.served = served.to_string();
                e.reason = reason;
            }
            return;
        }
        episodes.insert(
            requested.to_string(),
            Episode {
                served: served.to_string(),
                reason,
                since: Instant::now(),
                requests: 1,
            },
        );
        let skipped = if tried.is_empty() {
            String::new()
        } else {
            format!(" (not {})", tried.join(", "))
        };
        tracing::warn!(
            caxton_event = "model_fallback",
            caxton_model = %requested,
            caxton_served_by = %served,
            caxton_reason = reason.as_str(),
            "requests for model {requested} are answered by {served}{skipped}: {requested} is {} ({why}); this is logged once until {requested} serves again",
            describe(reason)
        );
    }

    /// Records a request `requested` answered itself: ends its episode, if one is under way.
    pub fn served(&self, requested: &str) {
        let ended = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(requested);
        if let Some(e) = ended {
            tracing::info!(
                caxton_event = "model_fallback_end",
                caxton_model = %requested,
                caxton_served_by = %e.served,
                requests = e.requests,
                "model {requested} serves its requests again; {} request{} were answered by {} over {:.0?}",
                e.requests,
                if e.requests == 1 { "" } else { "s" },
                e.served,
                e.since.elapsed()
            );
        }
    }
}

fn describe(reason: Reason) -> &'static str {
    match reason {
        Reason::Missing => "not installed (no verified package)",
        Reason::Failed => "failing to load",
        Reason::InsufficientMemory => "refused a load for lack of memory",
        Reason::MemoryPressure => "not loaded and memory is at its hard limit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(id: &str, loaded: bool, mib: u64) -> Alternative {
        Alternative {
            id: id.into(),
            loaded,
            bytes: mib << 20,
        }
    }

    #[test]
    fn loaded_alternatives_come_first_in_list_order_then_the_smallest() {
        let order = order(vec![
            o("big", false, 400),
            o("loaded-late", true, 500),
            o("small", false, 90),
            o("loaded-early", true, 100),
        ]);
        assert_eq!(order, ["loaded-late", "loaded-early", "small", "big"]);
    }
}
