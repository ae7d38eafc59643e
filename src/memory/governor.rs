//! The memory governor: the running state of the policy. It holds the budget in force, the
//! per-model rules, the shedder's episode state, what each model really took when it loaded,
//! and the last pressure reading, and it serialises loads so admission decisions never race.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::budget::{self, Resolved};
use super::policy::{Level, Limits, Shedder, Timings};
use super::pressure::{Reading, SourceKind};
use crate::config::{MemorySettings, ModelMemorySettings};
use crate::package::StoredPackage;

/// What the pressure monitor last saw, for `/api/memory/status` and `STATUS=`.
#[derive(Debug, Clone, Serialize)]
pub struct PressureStatus {
    /// The source in use.
    pub source: SourceKind,
    /// What it watches.
    pub detail: String,
    /// The last reading, once one was taken.
    pub reading: Option<Reading>,
    /// Trigger firings (systemd or PSI sources).
    pub triggers: u64,
    /// Whether an episode of pressure is going on (no background loads, no growth).
    pub episode: bool,
    /// Cap on model memory during the episode.
    pub ceiling_bytes: Option<u64>,
}

/// The policy's running state; one per daemon, shared by the registry and the monitor.
pub struct Governor {
    started: Instant,
    settings: RwLock<MemorySettings>,
    budget: RwLock<Resolved>,
    shedder: Mutex<Shedder>,
    pressure: RwLock<PressureStatus>,
    /// Bytes each package really took when loaded, by package sha256.
    measured: Mutex<HashMap<String, u64>>,
    /// Estimates from package headers, by package sha256 (status pages ask every second).
    estimates: Mutex<HashMap<String, u64>>,
    /// Largest ratio of measured to estimated bytes seen: estimates of packages never loaded
    /// are scaled by it, so one low estimate is not repeated.
    correction: Mutex<f64>,
    /// Held for the whole of each load, so admission sees every byte already committed.
    pub admission: tokio::sync::Mutex<()>,
    sheds: AtomicU64,
    preload_requested: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Governor {
    /// A governor for `settings`, resolving an `auto` budget against the daemon's cgroup.
    pub fn new(settings: &MemorySettings) -> Governor {
        let g = Governor {
            started: Instant::now(),
            settings: RwLock::new(settings.clone()),
            budget: RwLock::new(Self::resolve(settings)),
            shedder: Mutex::new(Shedder::default()),
            pressure: RwLock::new(PressureStatus {
                source: SourceKind::Off,
                detail: "not started".into(),
                reading: None,
                triggers: 0,
                episode: false,
                ceiling_bytes: None,
            }),
            measured: Mutex::new(HashMap::new()),
            estimates: Mutex::new(HashMap::new()),
            correction: Mutex::new(1.0),
            admission: tokio::sync::Mutex::new(()),
            sheds: AtomicU64::new(0),
            preload_requested: AtomicBool::new(false),
        };
        let b = g.budget();
        crate::metrics::get().budget.set(b.bytes as i64);
        g
    }

    fn resolve(settings: &MemorySettings) -> Resolved {
        budget::resolve(
            settings.budget,
            super::cgroup::current().as_ref(),
            budget::physical_memory(),
        )
    }

    /// Applies changed settings (a reload); an `auto` budget is derived again.
    pub fn configure(&self, settings: &MemorySettings) {
        let resolved = Self::resolve(settings);
        crate::metrics::get().budget.set(resolved.bytes as i64);
        *self.budget.write().unwrap_or_else(|p| p.into_inner()) = resolved;
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings.clone();
    }

    /// The settings in force.
    pub fn settings(&self) -> MemorySettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The budget in force.
    pub fn budget(&self) -> Resolved {
        self.budget
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The rules for one model.
    pub fn rules(&self, id: &str) -> ModelMemorySettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .model(id)
    }

    /// Now, on the policy's clock.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// An instant, on the policy's clock.
    pub fn clock(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.started)
    }

    /// The bounds a load must fit.
    pub fn limits(&self) -> Limits {
        Limits {
            budget: self.budget().bytes,
            max_models: self.settings().max_loaded_models,
            ceiling: lock(&self.shedder).ceiling(),
        }
    }

    /// The shedder's timings from the settings.
    pub fn timings(&self) -> Timings {
        let p = self.settings().pressure;
        Timings {
            persist: p.persist.0,
            cooldown: p.cooldown.0,
            calm: p.calm.0,
        }
    }

    /// What a refused load should suggest: the rest of the calm period during an episode,
    /// else one cooldown (by then an idle or lower-value model may have gone).
    pub fn retry_after(&self) -> Duration {
        let t = self.timings();
        lock(&self.shedder)
            .calm_in(self.now(), t.calm)
            .unwrap_or(t.cooldown)
            .max(Duration::from_secs(1))
    }

    /// Whether a pressure episode is going on.
    pub fn under_pressure(&self) -> bool {
        lock(&self.shedder).active()
    }

    /// Whether the last reading was critical.
    pub fn critical(&self) -> bool {
        self.pressure
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .reading
            .as_ref()
            .is_some_and(|r| r.level == Level::Critical)
    }

    /// Feeds one reading to the shedder.
    pub fn observe(&self, reading: &Reading, triggered: bool) -> super::policy::Shed {
        let t = self.timings();
        let mut shedder = lock(&self.shedder);
        let shed = shedder.observe(self.now(), reading.level, triggered, t);
        let mut p = self.pressure.write().unwrap_or_else(|p| p.into_inner());
        p.reading = Some(reading.clone());
        p.episode = shedder.active();
        p.ceiling_bytes = shedder.ceiling();
        crate::metrics::get()
            .pressure_level
            .set(reading.level as i64);
        shed
    }

    /// Records a shed; a pressure shed passes the model memory it left, the cap until the
    /// episode ends.
    pub fn note_shed(&self, remaining: Option<u64>) {
        self.sheds.fetch_add(1, Ordering::Relaxed);
        let mut shedder = lock(&self.shedder);
        if let Some(remaining) = remaining {
            shedder.note_shed(remaining);
        }
        self.pressure
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .ceiling_bytes = shedder.ceiling();
    }

    /// Records the source the monitor uses.
    pub fn set_source(&self, source: SourceKind, detail: String) {
        let mut p = self.pressure.write().unwrap_or_else(|p| p.into_inner());
        p.source = source;
        p.detail = detail;
        p.reading = None;
    }

    /// Records the trigger count.
    pub fn set_triggers(&self, n: u64) {
        self.pressure
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .triggers = n;
    }

    /// What the monitor last saw.
    pub fn pressure(&self) -> PressureStatus {
        self.pressure
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the monitor to load `preload` models (after a reload changed the models or rules).
    pub fn request_preload(&self) {
        self.preload_requested.store(true, Ordering::Relaxed);
    }

    /// Whether a preload was asked for since the last call.
    pub fn take_preload_request(&self) -> bool {
        self.preload_requested.swap(false, Ordering::Relaxed)
    }

    /// Models shed (pressure or admission) since start.
    pub fn sheds(&self) -> u64 {
        self.sheds.load(Ordering::Relaxed)
    }

    /// Bytes `package` will take once loaded: what it took last time, else an estimate.
    pub fn footprint(&self, package: &StoredPackage) -> u64 {
        if let Some(&b) = lock(&self.measured).get(&package.package_sha256) {
            return b;
        }
        (self.estimate(package) as f64 * *lock(&self.correction)) as u64
    }

    /// The package-based estimate, read from its safetensors header once per package.
    fn estimate(&self, package: &StoredPackage) -> u64 {
        *lock(&self.estimates)
            .entry(package.package_sha256.clone())
            .or_insert_with(|| crate::engine::estimate_bytes(package))
    }

    /// Remembers what `package` really took, and how far off its estimate was.
    pub fn remember(&self, package: &StoredPackage, bytes: u64) {
        let estimate = self.estimate(package).max(1);
        let ratio = (bytes as f64 / estimate as f64).clamp(1.0, 4.0);
        let mut c = lock(&self.correction);
        *c = c.max(ratio);
        lock(&self.measured).insert(package.package_sha256.clone(), bytes);
    }
}
