//! The memory governor: the running state of the policy. It holds the budget in force, the
//! per-model rules, the shedder's episode state, what each model really took when it loaded,
//! the memory of unloaded models that is not back yet, the last pressure reading and the
//! load queue's counters, and it serialises loads so admission decisions never race. One
//! concern (the policy's state), at length mostly for its tests.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::budget::{self, Resolved};
use super::hierarchy::{self, Assessment, Paths, Thresholds};
use super::policy::{Level, Limits, Observation, Shedder, Timings, Trend};
use super::pressure::{Reading, SourceKind};
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
    /// Bytes each package really took when loaded, by package sha256 and precision.
    measured: Mutex<HashMap<String, u64>>,
    /// Estimates from package headers, by package sha256 and precision (status pages ask every second).
    estimates: Mutex<HashMap<String, u64>>,
    /// Largest ratio of measured to estimated bytes seen: estimates of packages never loaded
    /// are scaled by it, so one low estimate is not repeated.
    correction: Mutex<f64>,
    /// Held for the whole of each load, so admission sees every byte already committed. A
    /// fair (FIFO) lock: requests waiting for loads queue on it in arrival order.
    pub admission: Arc<tokio::sync::Mutex<()>>,
    /// Models unloaded whose memory is not back yet (in-flight requests still hold them, or
    /// the engine thread is still freeing): counted as held until their signal turns true.
    releasing: Mutex<Vec<Releasing>>,
    /// When each load of the last minute finished.
    recent_loads: Mutex<VecDeque<Instant>>,
    loads: AtomicU64,
    /// Requests waiting in the load queue now.
    waiting: AtomicUsize,
    /// The model whose load holds the admission lock (waiting for room, or loading).
    admitting: Mutex<Option<String>>,
    /// Requests answered 503 because the queue was full or their wait ran out.
    queue_refusals: AtomicU64,
    sheds: AtomicU64,
    preload_requested: AtomicBool,
}

/// An unloaded model whose memory is on its way back.
struct Releasing {
    id: String,
    bytes: u64,
    freed: tokio::sync::watch::Receiver<bool>,
}

/// A place in the load queue; leaving it (drop) frees the place.
pub struct QueuePlace<'a>(&'a Governor);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        let n = self.0.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
        crate::metrics::get().queue_waiting.set(n as i64);
    }
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
            measured: Mutex::new(HashMap::new()),
            estimates: Mutex::new(HashMap::new()),
            correction: Mutex::new(1.0),
            admission: Arc::new(tokio::sync::Mutex::new(())),
            releasing: Mutex::new(Vec::new()),
            recent_loads: Mutex::new(VecDeque::new()),
            loads: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            admitting: Mutex::new(None),
            queue_refusals: AtomicU64::new(0),
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
            releasing: self.releasing_bytes(),
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

    /// Records an unloaded model whose memory comes back when `freed` turns true.
    pub fn releasing(&self, id: &str, bytes: u64, freed: tokio::sync::watch::Receiver<bool>) {
        lock(&self.releasing).push(Releasing {
            id: id.to_string(),
            bytes,
            freed,
        });
    }

    /// Bytes of unloaded models not back yet.
    pub fn releasing_bytes(&self) -> u64 {
        let mut r = lock(&self.releasing);
        r.retain(|m| !*m.freed.borrow());
        r.iter().map(|m| m.bytes).sum()
    }

    /// The unloaded models whose memory is not back yet, with their bytes.
    pub fn releasing_models(&self) -> Vec<(String, u64)> {
        let mut r = lock(&self.releasing);
        r.retain(|m| !*m.freed.borrow());
        r.iter().map(|m| (m.id.clone(), m.bytes)).collect()
    }

    /// Records a finished load.
    pub fn note_load(&self) {
        self.loads.fetch_add(1, Ordering::Relaxed);
        // The step the load made in the working set would read as growth heading for the
        // critical threshold, and shed the model just loaded.
        lock(&self.trend).clear();
        let mut recent = lock(&self.recent_loads);
        recent.push_back(Instant::now());
        while recent
            .front()
            .is_some_and(|t| t.elapsed() > Duration::from_secs(60))
        {
            recent.pop_front();
        }
    }

    /// Loads since start, and in the last minute.
    pub fn loads(&self) -> (u64, usize) {
        let recent = lock(&self.recent_loads);
        let minute = recent
            .iter()
            .filter(|t| t.elapsed() <= Duration::from_secs(60))
            .count();
        (self.loads.load(Ordering::Relaxed), minute)
    }

    /// Takes a place in the load queue, or `None` when `memory.load_queue.max_waiting`
    /// requests already wait.
    pub fn enter_queue(&self) -> Option<QueuePlace<'_>> {
        let max = self.settings().load_queue.max_waiting;
        let taken = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            });
        let n = taken.ok()? + 1;
        crate::metrics::get().queue_waiting.set(n as i64);
        Some(QueuePlace(self))
    }

    /// Records which model's load holds the admission lock (`None` when it is released).
    pub fn set_admitting(&self, id: Option<&str>) {
        *lock(&self.admitting) = id.map(str::to_owned);
    }

    /// The model whose load holds the admission lock.
    pub fn admitting(&self) -> Option<String> {
        lock(&self.admitting).clone()
    }

    /// Records a request refused by the queue (full, or its wait ran out).
    pub fn note_queue_refusal(&self) {
        self.queue_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests waiting in the load queue now, and refused by it since start.
    pub fn queue(&self) -> (usize, u64) {
        (
            self.waiting.load(Ordering::Relaxed),
            self.queue_refusals.load(Ordering::Relaxed),
        )
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

    /// Bytes the model known as `key` (a package digest and precision) will take once
    /// loaded: what it took last time, else `estimate` (asked once per key) scaled by how far
    /// estimates have been off.
    pub fn footprint(&self, key: &str, estimate: impl FnOnce() -> u64) -> u64 {
        if let Some(&b) = lock(&self.measured).get(key) {
            return b;
        }
        (self.estimate(key, estimate) as f64 * *lock(&self.correction)) as u64
    }

    /// The package-based estimate, made once per key.
    fn estimate(&self, key: &str, estimate: impl FnOnce() -> u64) -> u64 {
        *lock(&self.estimates)
            .entry(key.to_string())
            .or_insert_with(estimate)
    }

    /// Remembers what the model known as `key` really took, and how far off its estimate
    /// was; returns what to count for it. A reload into memory the heap kept from an earlier
    /// unload grows the process less than the model takes, so the largest measurement
    /// stands.
    pub fn remember(&self, key: &str, estimate: impl FnOnce() -> u64, bytes: u64) -> u64 {
        let estimate = self.estimate(key, estimate).max(1);
        let ratio = (bytes as f64 / estimate as f64).clamp(1.0, 4.0);
        let mut c = lock(&self.correction);
        *c = c.max(ratio);
        let mut measured = lock(&self.measured);
        let m = measured.entry(key.to_string()).or_insert(0);
        *m = (*m).max(bytes);
        *m
    }

    /// The key of a package's measurements: its digest and the precision it loads in (int8
    /// takes a quarter of f32). [`Self::forget_packages_except`] reads the digest back.
    pub fn key(digest: &str, precision: impl std::fmt::Display) -> String {
        format!("{digest}/{precision}")
    }

    /// Forgets the measurements and estimates of packages `live` no longer names: every
    /// side-loaded version adds its own, and a device upgraded for years must not keep them
    /// all.
    pub fn forget_packages_except(&self, live: &std::collections::HashSet<&str>) {
        let keep = |key: &String| live.contains(key.split_once('/').map_or(key.as_str(), |k| k.0));
        lock(&self.measured).retain(|k, _| keep(k));
        lock(&self.estimates).retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn governor(max_waiting: usize) -> Governor {
        let mut s = MemorySettings::default();
        s.load_queue.max_waiting = max_waiting;
        Governor::new(&s)
    }

    #[test]
    fn the_load_queue_is_bounded_and_a_place_comes_back_when_left() {
        let g = governor(2);
        let a = g.enter_queue().expect("first place");
        let b = g.enter_queue().expect("second place");
        assert!(
            g.enter_queue().is_none(),
            "a third request past max_waiting"
        );
        assert_eq!(g.queue().0, 2);
        drop(a);
        let c = g.enter_queue().expect("a place freed by one that left");
        g.note_queue_refusal();
        assert_eq!(g.queue(), (2, 1));
        drop((b, c));
        assert_eq!(g.queue().0, 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_admission_lock_serves_waiters_in_arrival_order() {
        let g = Arc::new(governor(8));
        let order = Arc::new(Mutex::new(Vec::new()));
        let head = g.admission.clone().lock_owned().await;
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (lock, order) = (g.admission.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = lock.lock_owned().await;
                lock_order(&order).push(i);
                // Holding the lock across a yield: the next in line must still wait.
                tokio::task::yield_now().await;
            }));
            // Each waiter is queued before the next one is spawned.
            tokio::task::yield_now().await;
        }
        drop(head);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(*lock_order(&order), [0, 1, 2, 3, 4]);
    }

    fn lock_order(m: &Mutex<Vec<usize>>) -> MutexGuard<'_, Vec<usize>> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[test]
    fn unloaded_memory_counts_until_its_engine_has_freed_it() {
        let g = governor(1);
        let (tx, rx) = tokio::sync::watch::channel(false);
        g.releasing("m-1", 96 << 20, rx);
        assert_eq!(g.releasing_bytes(), 96 << 20);
        assert_eq!(g.releasing_models(), [("m-1".to_string(), 96 << 20)]);
        tx.send(true).expect("send");
        assert_eq!(g.releasing_bytes(), 0);
        assert!(g.releasing_models().is_empty());
    }

    #[test]
    fn measurements_of_packages_gone_are_forgotten_and_the_others_kept() {
        let g = governor(1);
        let (a, b, b8) = (
            Governor::key("aaa", "f32"),
            Governor::key("bbb", "f32"),
            Governor::key("bbb", "int8"),
        );
        g.remember(&a, || 100, 150);
        g.remember(&b, || 100, 120);
        g.remember(&b8, || 40, 50);
        g.forget_packages_except(&["bbb"].into_iter().collect());
        assert_eq!(lock(&g.measured).len(), 2);
        assert_eq!(lock(&g.estimates).len(), 2);
        assert_eq!(g.footprint(&b8, || 0), 50);
        // What is gone is estimated again, from the estimate given now (200) scaled by the
        // correction the measurements set (150 / 100); remembered, it would say 150.
        assert_eq!(g.footprint(&a, || 200), 300);
        assert_eq!(
            lock(&g.measured).len(),
            2,
            "a footprint asked measures nothing"
        );
    }

    #[test]
    fn loads_are_counted_over_the_last_minute() {
        let g = governor(1);
        g.note_load();
        g.note_load();
        assert_eq!(g.loads(), (2, 2));
    }
}
