//! The `memory` section: how much the models may use, per-model lifecycle rules, and when
//! memory pressure sheds models.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::units::{ByteSize, Duration};

mod source;
pub use source::{PressureSource, PressureSourceSetting};

/// Memory budget, lifecycle and pressure settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySettings {
    /// Bytes the loaded models may hold together, or `auto` (from the cgroup limit, else a
    /// share of physical memory).
    pub budget: Budget,
    /// Most models in memory at once.
    pub max_loaded_models: usize,
    /// A model unused this long is unloaded; `0s` keeps models until pressure or a budget
    /// needs the room. Per-model `max_idle` overrides it.
    pub max_idle: Duration,
    /// A model stays loaded at least this long before another model's load may evict it or
    /// pressure short of critical may shed it, so concurrent clients of different models
    /// take turns instead of evicting each other's model on every request.
    pub min_residency: Duration,
    /// Bytes kept free below the pressure threshold of the binding limit when admitting a
    /// load and when shedding: room for forward passes' activations, so a load never brings
    /// on the pressure that would shed it.
    pub reserve: ByteSize,
    /// Requests waiting for their model to load.
    pub load_queue: LoadQueueSettings,
    /// When memory pressure sheds models.
    pub pressure: PressureSettings,
    /// Per-model rules, by model id.
    pub models: BTreeMap<String, ModelMemorySettings>,
    /// Load in the background, into free budget only, the models their usage history says
    /// are likely to be used in the coming hour.
    pub predictive_preload: bool,
    /// The probability of a use in the coming hour at or above which a model is preloaded.
    pub predictive_threshold: f64,
}

/// The queue of requests whose model must load first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadQueueSettings {
    /// Longest a request waits for its model to load (for room to be made, shed memory to
    /// come back, or the loads ahead of it) before it is answered 503 with `Retry-After`;
    /// `0s` answers at once. A load of its own model under way is waited for regardless. 1 s
    /// by default: with 20 s, two models taking turns beside a co-tenant held the other's
    /// requests for a whole residency (p99 3 to 10 s, issue 60); a client told `Retry-After`
    /// may try another model or come back.
    pub max_wait: Duration,
    /// Most requests waiting at once; more are answered 503 at once.
    pub max_waiting: usize,
}

impl Default for LoadQueueSettings {
    fn default() -> Self {
        LoadQueueSettings {
            max_wait: Duration(std::time::Duration::from_secs(1)),
            max_waiting: 256,
        }
    }
}

/// The memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Derived at start and on reload from the daemon's cgroup, else physical memory.
    Auto,
    /// A fixed number of bytes.
    Bytes(ByteSize),
}

/// Thresholds and timings of pressure shedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PressureSettings {
    /// Which source to watch.
    pub source: PressureSourceSetting,
    /// How often readings are taken (triggers wake the monitor at once).
    pub interval: Duration,
    /// PSI `some avg10` (percent of time stalled on memory) at or above which memory is
    /// under pressure.
    pub psi_avg10: f64,
    /// Usage as a share of the soft limit (cgroup `memory.high`, else the hard limit, else
    /// physical memory) at or above which memory is under pressure.
    pub shed_at: f64,
    /// Usage as a share of the hard limit at or above which every unpinned model is unloaded
    /// at once.
    pub unload_all_at: f64,
    /// Pressure must last this long before the first model is shed (triggers count as
    /// already lasting).
    pub persist: Duration,
    /// While pressure lasts, at most one model is shed per this interval.
    pub cooldown: Duration,
    /// Pressure is over once none was seen this long; until then models are not loaded back
    /// in the background and no load may grow model memory past what it was after shedding.
    pub calm: Duration,
}

/// Lifecycle rules of one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelMemorySettings {
    /// 1 (most valuable) to 5 (shed first).
    pub priority: u8,
    /// Never unloaded by idleness, budget or pressure (explicit unload still works).
    pub pinned: bool,
    /// Loaded at start and after reloads, not only on first use.
    pub preload: bool,
    /// Overrides `memory.max_idle` for this model.
    pub max_idle: Option<Duration>,
}

impl Default for MemorySettings {
    fn default() -> Self {
        MemorySettings {
            budget: Budget::Auto,
            max_loaded_models: 4,
            max_idle: Duration(std::time::Duration::from_secs(30 * 60)),
            min_residency: Duration(std::time::Duration::from_secs(10)),
            reserve: ByteSize(32 << 20),
            load_queue: LoadQueueSettings::default(),
            pressure: PressureSettings::default(),
            models: BTreeMap::new(),
            predictive_preload: true,
            predictive_threshold: 0.5,
        }
    }
}

impl Default for PressureSettings {
    fn default() -> Self {
        PressureSettings {
            source: PressureSourceSetting::Auto,
            interval: Duration(std::time::Duration::from_secs(1)),
            psi_avg10: 10.0,
            shed_at: 0.9,
            unload_all_at: 0.97,
            persist: Duration(std::time::Duration::from_secs(3)),
            cooldown: Duration(std::time::Duration::from_secs(5)),
            calm: Duration(std::time::Duration::from_secs(30)),
        }
    }
}

impl Default for ModelMemorySettings {
    fn default() -> Self {
        ModelMemorySettings {
            priority: DEFAULT_PRIORITY,
            pinned: false,
            preload: false,
            max_idle: None,
        }
    }
}

/// Priority of a model the configuration does not name.
pub const DEFAULT_PRIORITY: u8 = 3;

impl MemorySettings {
    /// The rules for `id` (defaults when the configuration does not name it).
    pub fn model(&self, id: &str) -> ModelMemorySettings {
        self.models.get(id).cloned().unwrap_or_default()
    }

    /// How long `id` may stay unused before it is unloaded; `None` for never.
    pub fn idle_limit(&self, id: &str) -> Option<std::time::Duration> {
        let limit = self.model(id).max_idle.unwrap_or(self.max_idle).0;
        (!limit.is_zero()).then_some(limit)
    }

    /// Checks the rules serde cannot express: `(key, reason)` of the first violation.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.check_sizes()?;
        self.check_prediction()?;
        self.pressure.check()?;
        check_model_rules(&self.models)
    }

    /// How many models, how much memory, how long a model stays and a request waits.
    fn check_sizes(&self) -> Result<(), (String, String)> {
        if self.max_loaded_models == 0 {
            return Err((
                "memory.max_loaded_models".into(),
                "must be at least 1".into(),
            ));
        }
        if let Budget::Bytes(b) = self.budget
            && b.0 < 16 << 20
        {
            return Err((
                "memory.budget".into(),
                format!("{b} cannot hold any model; give at least 16MiB, or auto"),
            ));
        }
        for (key, value, max) in [
            ("memory.min_residency", self.min_residency.0, 24 * 3600),
            (
                "memory.load_queue.max_wait",
                self.load_queue.max_wait.0,
                3600,
            ),
        ] {
            if value > std::time::Duration::from_secs(max) {
                return Err((
                    key.into(),
                    format!(
                        "{} is too long; at most {}",
                        humantime::format_duration(value),
                        humantime::format_duration(std::time::Duration::from_secs(max))
                    ),
                ));
            }
        }
        if self.reserve.0 >= 1 << 40 {
            return Err((
                "memory.reserve".into(),
                format!(
                    "{} is not a reserve a device has; give less than 1TiB",
                    self.reserve
                ),
            ));
        }
        if self.load_queue.max_waiting == 0 {
            return Err((
                "memory.load_queue.max_waiting".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The prediction threshold is a probability.
    fn check_prediction(&self) -> Result<(), (String, String)> {
        if !(self.predictive_threshold > 0.0 && self.predictive_threshold <= 1.0) {
            return Err((
                "memory.predictive_threshold".into(),
                format!(
                    "{} is not a probability above 0 and at most 1 (0.5: a use in at least half of the weeks)",
                    self.predictive_threshold
                ),
            ));
        }
        Ok(())
    }
}

impl PressureSettings {
    /// The thresholds are shares in order, the interval one a device can keep.
    fn check(&self) -> Result<(), (String, String)> {
        if !(self.psi_avg10 > 0.0 && self.psi_avg10 <= 100.0) {
            return Err((
                "memory.pressure.psi_avg10".into(),
                format!(
                    "{} is not a percentage above 0 and at most 100",
                    self.psi_avg10
                ),
            ));
        }
        for (key, v) in [
            ("memory.pressure.shed_at", self.shed_at),
            ("memory.pressure.unload_all_at", self.unload_all_at),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err((
                    key.into(),
                    format!("{v} is not a share of the limit above 0 and at most 1 (0.9 = 90%)"),
                ));
            }
        }
        if self.unload_all_at < self.shed_at {
            return Err((
                "memory.pressure.unload_all_at".into(),
                format!(
                    "{} is below memory.pressure.shed_at ({}); unloading everything must come after shedding",
                    self.unload_all_at, self.shed_at
                ),
            ));
        }
        if self.interval.0 < std::time::Duration::from_millis(100) {
            return Err((
                "memory.pressure.interval".into(),
                "must be at least 100ms".into(),
            ));
        }
        Ok(())
    }
}

/// Each per-model rule names a model id and a priority from 1 to 5.
fn check_model_rules(
    models: &BTreeMap<String, ModelMemorySettings>,
) -> Result<(), (String, String)> {
    for (id, m) in models {
        if !super::is_valid_model_id(id) {
            return Err((
                format!("memory.models.{id}"),
                format!("{id:?} is not a model id (1 to 128 of [A-Za-z0-9._-])"),
            ));
        }
        if !(1..=5).contains(&m.priority) {
            return Err((
                format!("memory.models.{id}.priority"),
                format!(
                    "{} is out of range; 1 is the most valuable, 5 is shed first",
                    m.priority
                ),
            ));
        }
    }
    Ok(())
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Auto => f.write_str("auto"),
            Budget::Bytes(b) => b.fmt(f),
        }
    }
}

impl Serialize for Budget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::units::auto_or_size(d, "to derive it from the memory limit")
            .map(|size| size.map_or(Budget::Auto, Budget::Bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(edit: impl FnOnce(&mut MemorySettings)) -> (String, String) {
        let mut s = MemorySettings::default();
        edit(&mut s);
        s.validate().expect_err("refused")
    }

    #[test]
    fn the_load_queue_and_residency_are_checked() {
        assert_eq!(
            refused(|s| s.load_queue.max_waiting = 0),
            (
                "memory.load_queue.max_waiting".into(),
                "must be at least 1".into()
            )
        );
        assert_eq!(
            refused(|s| s.load_queue.max_wait = Duration(std::time::Duration::from_secs(7200))),
            (
                "memory.load_queue.max_wait".into(),
                "2h is too long; at most 1h".into()
            )
        );
        assert_eq!(
            refused(|s| s.min_residency = Duration(std::time::Duration::from_secs(2 * 86_400))),
            (
                "memory.min_residency".into(),
                "2days is too long; at most 1day".into()
            )
        );
        assert_eq!(
            refused(|s| s.reserve = ByteSize(1 << 40)),
            (
                "memory.reserve".into(),
                "1024GiB is not a reserve a device has; give less than 1TiB".into()
            )
        );
        assert_eq!(
            refused(|s| s.predictive_threshold = 0.0),
            (
                "memory.predictive_threshold".into(),
                "0 is not a probability above 0 and at most 1 (0.5: a use in at least half of the weeks)".into()
            )
        );
        assert_eq!(MemorySettings::default().validate(), Ok(()));
    }
}
