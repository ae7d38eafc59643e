//! The memory governor: the running state of the policy. It holds the settings and budget in
//! force, the shedder's episode state and trend, and the last pressure reading; and, as parts
//! named for what they own, the load queue with its admission lock ([`LoadQueue`]), what each
//! model takes ([`Footprints`]) and the memory of unloaded models not back yet
//! ([`Releasing`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::budget::{self, Resolved};
use super::footprints::Footprints;
use super::hierarchy::{self, Assessment, Paths, Thresholds};
use super::load_queue::LoadQueue;
use super::policy::{Level, Limits, Observation, Shedder, Timings, Trend};
use super::pressure::{Reading, SourceKind};
use super::releasing::Releasing;
use crate::config::{MemorySettings, ModelMemorySettings};

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
    /// Growth of the binding level's working set.
    trend: Mutex<Trend>,
    pressure: RwLock<PressureStatus>,
    /// The load queue and the admission lock every load holds.
    pub queue: LoadQueue,
    /// What each model takes: measured, else estimated.
    pub footprints: Footprints,
    /// Models unloaded whose memory is not back yet: counted as held until it is.
    pub releasing: Releasing,
    sheds: AtomicU64,
    preload_requested: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The rooms of one reading of the cgroup tree, in bytes (see [`Assessment`]).
struct Rooms {
    room: i64,
    /// The binding level, in words.
    from: String,
    peak: i64,
    last_resort: i64,
    hard: i64,
}

impl Governor {
    /// A governor for `settings`, resolving an `auto` budget against the daemon's cgroup.
    pub fn new(settings: &MemorySettings) -> Governor {
        let g = Governor {
            started: Instant::now(),
            settings: RwLock::new(settings.clone()),
            budget: RwLock::new(Self::resolve(settings)),
            shedder: Mutex::new(Shedder::default()),
            trend: Mutex::new(Trend::default()),
            pressure: RwLock::new(PressureStatus {
                source: SourceKind::Off,
                detail: "not started".into(),
                reading: None,
                triggers: 0,
                episode: false,
                ceiling_bytes: None,
            }),
            queue: LoadQueue::default(),
            footprints: Footprints::default(),
            releasing: Releasing::default(),
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
            &hierarchy::read(&Paths::system()),
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

    /// The bounds a load must fit, with the room read now from the cgroup tree (what other
    /// processes use counts) and the memory of unloaded models that is not back yet.
    pub fn limits(&self) -> Limits {
        let settings = self.settings();
        let room = self.room(&settings);
        Limits {
            budget: self.budget().bytes,
            max_models: settings.max_loaded_models,
            ceiling: lock(&self.shedder).ceiling(),
            room: room.as_ref().map(|r| (r.room, r.from.clone())),
            peak_room: room.as_ref().map(|r| r.peak),
            last_resort_room: room.as_ref().map(|r| r.last_resort),
            hard_room: room.as_ref().map(|r| r.hard),
            alone: false,
            releasing: self.releasing.bytes(),
            now: self.now(),
            min_residency: settings.min_residency.0,
        }
    }

    /// The rooms of the cgroup tree now (see [`Assessment`]).
    fn room(&self, settings: &MemorySettings) -> Option<Rooms> {
        let levels = hierarchy::read(&Paths::system());
        let a = Assessment::of(&levels, self.thresholds(settings))?;
        Some(Rooms {
            room: a.room_bytes,
            from: levels[a.binding].describe(),
            peak: a.peak_room_bytes,
            last_resort: a.last_resort_room_bytes,
            hard: a.hard_room_bytes,
        })
    }

    /// The thresholds of the settings in force.
    pub fn thresholds(&self, settings: &MemorySettings) -> Thresholds {
        Thresholds {
            shed_at: settings.pressure.shed_at,
            unload_all_at: settings.pressure.unload_all_at,
            reserve: settings.reserve.0,
        }
    }

    /// Records a finished load.
    pub fn note_load(&self) {
        self.queue.note_load();
        // The step the load made in the working set would read as growth heading for the
        // critical threshold, and shed the model just loaded.
        lock(&self.trend).clear();
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
        let now = self.now();
        let imminent = match (
            reading.working_set_bytes,
            reading.hard_limit_bytes,
            &reading.limit_from,
        ) {
            (Some(ws), Some(hard), Some(level)) => {
                let mut trend = lock(&self.trend);
                trend.push(now, ws, level);
                let critical = (hard as f64 * self.settings().pressure.unload_all_at) as u64;
                trend.time_to(critical).is_some_and(|d| d < t.persist)
            }
            _ => false,
        };
        let mut shedder = lock(&self.shedder);
        let o = Observation {
            usage: reading.usage_level,
            stall: reading.stall,
            triggered,
            imminent,
        };
        let shed = shedder.observe(now, o, t);
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
}
