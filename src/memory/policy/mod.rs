//! The memory policy as pure functions of readings and a clock, so it can be tested on a
//! simulated clock: which model is worth least, whether a load fits the budget (and what must
//! go to make room), which models have been idle too long, and when pressure sheds.
//!
//! Times are offsets on one monotonic clock (`Duration` since the daemon started).
//!
//! [`admission`] decides whether a load fits and what must go for it, [`shedding`] what to
//! shed for an excess, a stall signal or idleness, and [`shedder`] turns a stream of readings
//! into shedding decisions. What they share, the residents and their order of value, is here.

mod admission;
mod shedder;
mod shedding;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use admission::{Limits, Refusal, admit};
pub use shedder::{Observation, Shed, Shedder, Timings, Trend};
pub use shedding::{idle_expired, shed_for_excess, shed_for_signal};

/// How long a model may stay unused, as a request last asked (Ollama's `keep_alive`): it
/// replaces the configured `max_idle` of that model until the model unloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unloaded once unused this long (zero: at the monitor's next check).
    For(Duration),
    /// Never unloaded for idleness (memory pressure still sheds it).
    Forever,
}

impl KeepAlive {
    /// The idle limit it sets; `None` for never.
    pub fn limit(self) -> Option<Duration> {
        match self {
            KeepAlive::For(d) => Some(d),
            KeepAlive::Forever => None,
        }
    }
}

/// A model in memory, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident {
    /// Model id.
    pub id: String,
    /// 1 (most valuable) to 5 (shed first).
    pub priority: u8,
    /// Never unloaded by the policy.
    pub pinned: bool,
    /// The default model: among models of its priority it goes last, and a stall signal
    /// alone never sheds it.
    pub default: bool,
    /// When it finished loading.
    pub loaded_at: Duration,
    /// When a request last used it (or when it was loaded).
    pub last_use: Duration,
    /// Bytes it holds.
    pub bytes: u64,
    /// Loaded on a prediction and not used since: the first to go, residency or not.
    pub guess: bool,
}

impl Resident {
    /// Whether `memory.min_residency` still protects it at `now`; the time left if so.
    pub(super) fn resident_for(&self, now: Duration, min_residency: Duration) -> Option<Duration> {
        if self.guess {
            return None;
        }
        let left = self
            .loaded_at
            .saturating_add(min_residency)
            .saturating_sub(now);
        (!left.is_zero()).then_some(left)
    }
}

/// Models the policy may unload, lowest value first: models loaded on a prediction nobody has
/// used yet, then lowest priority (highest number), the default model after the others of its
/// priority, then least recently used, then the larger one (it frees more). Pinned models
/// never appear.
pub fn shed_order(models: &[Resident]) -> Vec<&Resident> {
    let mut order: Vec<&Resident> = models.iter().filter(|m| !m.pinned).collect();
    order.sort_by(|a, b| {
        b.guess
            .cmp(&a.guess)
            .then(b.priority.cmp(&a.priority))
            .then(a.default.cmp(&b.default))
            .then(a.last_use.cmp(&b.last_use))
            .then(b.bytes.cmp(&a.bytes))
            .then(a.id.cmp(&b.id))
    });
    order
}

/// How strained memory is, from one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Nothing to do.
    Normal,
    /// A limit's pressure threshold is reached, or memory stalls: shed once it has lasted.
    Pressure,
    /// Near a hard limit (or an OOM kill): shed what brings the working set back, now.
    Critical,
}

/// Bytes in MiB, rounded up, for messages.
pub(super) fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}
