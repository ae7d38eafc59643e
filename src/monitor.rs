//! The memory monitor: the daemon task that takes a pressure reading every `memory.pressure.interval`
//! (sooner as room shrinks, and at once when a trigger or a kernel notification fires), sheds
//! models as the shedder decides (as many as bring the working set back, not all), unloads
//! idle models, and loads `preload` models, and the models usage predicts for the coming
//! hour, in the background when no pressure episode forbids it.

use std::sync::Arc;
use std::time::Duration;

use crate::config::memory::DEFAULT_PRIORITY;
use crate::config::{MemorySettings, PressureSourceSetting};
use crate::memory::governor::Governor;
use crate::memory::hierarchy::Thresholds;
use crate::memory::notify::{self, KernelWatch};
use crate::memory::policy::{self, Resident, Shed};
use crate::memory::pressure::{self, Paths, Probe, SourceKind};
use crate::registry::Registry;
use crate::state::AppState;

/// Starts the monitor for the daemon's registry.
pub fn spawn(state: Arc<AppState>) {
    tokio::spawn(run(state));
}

/// The probe for `setting`, logging which source is active.
fn select(setting: PressureSourceSetting) -> Probe {
    let watch = pressure::watch_from_env(
        std::env::var_os("MEMORY_PRESSURE_WATCH"),
        std::env::var_os("MEMORY_PRESSURE_WRITE"),
    )
    .unwrap_or_else(|e| {
        tracing::warn!("ignoring systemd's memory pressure watch: {e}");
        None
    });
    let (probe, warning) = Probe::select(setting, &Paths::system(), watch);
    if let Some(w) = warning {
        tracing::warn!(caxton_event = "pressure_source_unavailable", "{w}");
    }
    tracing::info!(
        caxton_event = "pressure_source",
        caxton_reason = probe.kind.as_str(),
        "memory pressure source: {} ({})",
        probe.kind.as_str(),
        probe.detail
    );
    probe
}

/// Polling speeds up as room shrinks, as earlyoom does: the time to the pressure threshold
/// at this fill rate is the next interval (within 100 ms and `memory.pressure.interval`).
const FILL_RATE: f64 = 256.0 * (1 << 20) as f64;
/// The fastest poll.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The wait before the next reading: shorter the closer the binding level is to its threshold.
fn next_interval(
    reading: Option<&pressure::Reading>,
    reserve: u64,
    interval: Duration,
) -> Duration {
    let Some(room) = reading.and_then(|r| r.room_bytes) else {
        return interval;
    };
    let to_threshold = (room + reserve as i64).max(0) as f64;
    Duration::from_secs_f64(to_threshold / FILL_RATE).clamp(MIN_INTERVAL.min(interval), interval)
}

async fn run(state: Arc<AppState>) {
    let mut monitor = Monitor::new(state);
    loop {
        monitor.tick().await;
    }
}

/// What the monitor keeps from one tick to the next.
struct Monitor {
    state: Arc<AppState>,
    registry: Arc<Registry>,
    gov: Arc<Governor>,
    /// The setting the probe was chosen for: a reload that changes it chooses again.
    setting: Option<PressureSourceSetting>,
    probe: Option<Probe>,
    /// The kernel's usage notifications, armed at the thresholds of the last reading.
    watch: Option<KernelWatch>,
    /// What arming the notifications last failed for: not tried again until that changes.
    watch_failed: Option<notify::Key>,
    /// Trigger firings counted so far: more at a tick means the trigger fired.
    seen_triggers: u64,
    /// The `preload` models are due: at start, and when a pressure episode is over.
    preload_due: bool,
    /// Predictions are due before the hour changes: after pressure, or a load that met
    /// another one holding admission.
    predict_due: bool,
    /// The hour predictions were last made for.
    predicted_hour: Option<u64>,
    /// The hour missed predictions were last noted for.
    noted_hour: Option<u64>,
    /// The background task loading predictions; it returns whether to try again.
    predicting: Option<tokio::task::JoinHandle<bool>>,
    /// The status line last sent to systemd.
    status: String,
    /// "Nothing to shed" was logged in this pressure episode.
    idle_warned: bool,
    /// The last reading: the room it left sets the wait before the next one.
    last: Option<pressure::Reading>,
    last_read: tokio::time::Instant,
}

impl Monitor {
    fn new(state: Arc<AppState>) -> Monitor {
        let registry = state.registry.clone();
        let gov = registry.governor.clone();
        Monitor {
            state,
            registry,
            gov,
            setting: None,
            probe: None,
            watch: None,
            watch_failed: None,
            seen_triggers: 0,
            preload_due: true,
            predict_due: true,
            predicted_hour: None,
            noted_hour: None,
            predicting: None,
            status: String::new(),
            idle_warned: false,
            last: None,
            last_read: tokio::time::Instant::now(),
        }
    }

    /// One tick: a reading and the sheds it calls for, then the background work that memory
    /// and the queue allow.
    async fn tick(&mut self) {
        let settings = self.gov.settings();
        self.choose_probe(&settings);
        let Some(triggered) = self.wait_for_reading(&settings).await else {
            return;
        };
        self.read_and_shed(&settings, triggered).await;
        self.unload_idle(&settings).await;
        // Background loads never stand in the queue in front of requests.
        let queue_busy = self.gov.queue.counts().0 > 0 || self.gov.queue.admitting().is_some();
        let preloading = self.preload_configured(queue_busy);
        self.predict_and_preload(&settings, queue_busy, preloading)
            .await;
        self.report_status();
    }

    /// Chooses the probe at start, and again when a reload changes `memory.pressure.source`.
    fn choose_probe(&mut self, settings: &MemorySettings) {
        let source = settings.pressure.source;
        if self.setting != Some(source) || self.probe.is_none() {
            let p = select(source);
            self.gov.set_source(p.kind, p.detail.clone());
            self.probe = Some(p);
            self.setting = Some(source);
        }
    }

    /// Waits for the next reading: the interval's end, the source's trigger, or a kernel
    /// notification. Returns whether the trigger fired since the last reading (`None`
    /// without a probe).
    async fn wait_for_reading(&mut self, settings: &MemorySettings) -> Option<bool> {
        let p = self.probe.as_ref()?;
        let wait = next_interval(
            self.last.as_ref(),
            settings.reserve.0,
            settings.pressure.interval.0,
        );
        let trigger = p.events();
        let kernel = self.watch.as_ref().map(|w| w.events.clone());
        let woken_by_kernel = tokio::select! {
            _ = async { match &trigger { Some(t) => t.notify.notified().await, None => std::future::pending().await } } => false,
            _ = async { match &kernel { Some(k) => k.notify.notified().await, None => std::future::pending().await } } => true,
            _ = tokio::time::sleep(wait) => false,
        };
        // memory.events changes on every throttling event: readings stay MIN_INTERVAL apart.
        if woken_by_kernel {
            tokio::time::sleep_until(self.last_read + MIN_INTERVAL).await;
        }
        self.last_read = tokio::time::Instant::now();
        let triggers = trigger.map_or(0, |e| e.count.load(std::sync::atomic::Ordering::Relaxed));
        let triggered = triggers > self.seen_triggers;
        self.seen_triggers = triggers;
        self.gov.set_triggers(triggers);
        Some(triggered)
    }

    /// Takes a reading (unless monitoring is off) and sheds the models it calls for.
    async fn read_and_shed(&mut self, settings: &MemorySettings, triggered: bool) {
        let Some(p) = self.probe.as_mut() else { return };
        let kind = p.kind;
        if kind == SourceKind::Off {
            return;
        }
        let reading = p.read(&settings.pressure, settings.reserve.0);
        rearm(
            &mut self.watch,
            &mut self.watch_failed,
            &reading,
            self.gov.thresholds(settings),
        );
        let was_active = self.gov.under_pressure();
        let decision = self.gov.observe(&reading, triggered);
        let why = explain(kind, triggered, &reading);
        let residents = self.registry.residents();
        let victims = self.victims(decision, &reading, &residents, settings);
        if self.shed_wanted(decision, &reading) && victims.is_empty() {
            self.warn_nothing_to_shed(&residents, &why);
        }
        let cap = decision == Shed::Signal && own_stall(kind, triggered, &reading);
        for id in victims {
            self.registry
                .shed(&id, &format!("pressure: {why}"), cap)
                .await;
        }
        self.note_pressure_over(was_active);
        self.last = Some(reading);
    }

    /// The models `decision` sheds now.
    fn victims(
        &self,
        decision: Shed,
        reading: &pressure::Reading,
        residents: &[Resident],
        settings: &MemorySettings,
    ) -> Vec<String> {
        let now = self.gov.now();
        let min_residency = settings.min_residency.0;
        match decision {
            Shed::Nothing => Vec::new(),
            Shed::Excess { urgent } => {
                // Memory already on its way back counts against the excess.
                let excess = reading
                    .excess_bytes
                    .saturating_sub(self.gov.releasing.bytes());
                let critical = reading.level == policy::Level::Critical;
                policy::shed_for_excess(excess, residents, now, min_residency, urgent, critical)
            }
            Shed::Signal => {
                policy::shed_for_signal(residents, now, min_residency, DEFAULT_PRIORITY)
                    .into_iter()
                    .collect()
            }
        }
    }

    /// Whether `decision` asks for memory that is not already on its way back.
    fn shed_wanted(&self, decision: Shed, reading: &pressure::Reading) -> bool {
        match decision {
            Shed::Nothing => false,
            Shed::Excess { .. } => reading.excess_bytes > self.gov.releasing.bytes(),
            Shed::Signal => true,
        }
    }

    /// Warns, once per pressure episode, that pressure wants a shed no model may give.
    fn warn_nothing_to_shed(&mut self, residents: &[Resident], why: &str) {
        if self.idle_warned {
            return;
        }
        if policy::shed_order(residents).is_empty() {
            tracing::warn!(
                caxton_event = "pressure_nothing_to_shed",
                "memory is under pressure ({why}) but no unpinned model is loaded to shed"
            );
        } else {
            tracing::warn!(
                caxton_event = "pressure_nothing_to_shed",
                "memory is under pressure ({why}) but no model may be shed for it: the default model and priorities 1-2 stay for a stall signal alone, and models loaded less than memory.min_residency ago stay until memory is critical or about to be"
            );
        }
        self.idle_warned = true;
    }

    /// Once pressure is over, the `preload` models and predictions are due again.
    fn note_pressure_over(&mut self, was_active: bool) {
        if self.gov.under_pressure() {
            return;
        }
        self.idle_warned = false;
        if was_active {
            tracing::info!(
                caxton_event = "pressure_over",
                "memory pressure is over; models may load in the background again"
            );
            self.preload_due = true;
            self.predict_due = true;
        }
    }

    /// Unloads the models unused for longer than their `max_idle` (or the `keep_alive` a
    /// request set for the load).
    async fn unload_idle(&self, settings: &MemorySettings) {
        let now = self.gov.now();
        let loaded: Vec<_> = self
            .registry
            .residents()
            .into_iter()
            .map(|r| {
                let limit = self.registry.idle_limit(&r.id, settings);
                (r, limit)
            })
            .collect();
        for m in policy::idle_expired(now, &loaded) {
            let _ = self.registry.unload(&m.id, "idle").await;
        }
    }

    /// Loads the `preload` models in the background when they are due (or asked for) and
    /// neither pressure nor queued requests forbid it; returns whether it started.
    fn preload_configured(&mut self, queue_busy: bool) -> bool {
        let due = !self.gov.under_pressure()
            && !queue_busy
            && (self.preload_due || self.gov.take_preload_request());
        if !due {
            return false;
        }
        self.preload_due = false;
        for id in self.registry.ids() {
            if self.gov.rules(&id).preload {
                tokio::spawn(preload(self.registry.clone(), id));
            }
        }
        true
    }

    /// Loads in the background what usage predicts for this hour: once an hour, and again
    /// when due, after configured preloads and never under pressure or before queued requests.
    async fn predict_and_preload(
        &mut self,
        settings: &MemorySettings,
        queue_busy: bool,
        preloading: bool,
    ) {
        let hour = crate::registry::habits::hour_of(crate::clock::now());
        if self.noted_hour != Some(hour) {
            // Before this hour's predictions: what was predicted for an ended hour and not
            // used is not predicted for it again.
            self.registry.note_missed_predictions(hour);
            self.noted_hour = Some(hour);
        }
        if let Some(task) = self.predicting.take_if(|t| t.is_finished()) {
            // A prediction that met another load holding admission is tried again.
            if task.await.unwrap_or(false) {
                self.predict_due = true;
            }
        }
        // Configured preloads go first: they are not guesses.
        if settings.predictive_preload
            && self.predicting.is_none()
            && !preloading
            && !self.gov.under_pressure()
            && !queue_busy
            && (self.predict_due || self.predicted_hour != Some(hour))
        {
            self.predict_due = false;
            self.predicted_hour = Some(hour);
            let predictions = self
                .registry
                .predictions(hour, settings.predictive_threshold);
            if !predictions.is_empty() {
                self.predicting = Some(tokio::spawn(preload_predicted(
                    self.registry.clone(),
                    predictions,
                )));
            }
        }
    }

    /// Tells systemd the status line when it changed.
    fn report_status(&mut self) {
        let line = self.state.status_line();
        if line != self.status {
            crate::systemd::status(&line);
            self.status = line;
        }
    }
}

/// Why memory is being shed, in words: the trigger that fired, else the reading's reasons.
fn explain(kind: SourceKind, triggered: bool, reading: &pressure::Reading) -> String {
    match (triggered, reading.level) {
        (true, policy::Level::Normal) => format!(
            "{} trigger fired: memory stalled for a trigger window",
            kind.as_str()
        ),
        (true, _) => format!("{} trigger fired; {}", kind.as_str(), reading.why),
        (false, _) => reading.why.clone(),
    }
}

/// Whether the stall is the daemon's own. A stall of the daemon's own cgroup caps model
/// memory until calm; a host-wide one (other processes' stalls) is one signal among others
/// and caps nothing. systemd's watch is always the unit's own cgroup.
fn own_stall(kind: SourceKind, triggered: bool, reading: &pressure::Reading) -> bool {
    if triggered {
        kind == SourceKind::Systemd || !reading.psi_host_wide
    } else {
        !reading.psi_host_wide
    }
}

/// Loads the configured `preload` model `id`, logging a failure.
async fn preload(registry: Arc<Registry>, id: String) {
    if let Err(e) = registry.acquire(&id).await {
        tracing::warn!(
            caxton_event = "preload_failed",
            caxton_model = %id,
            "preloading {id} failed: {e}"
        );
    }
}

/// Loads `predictions` one after another, most likely first, each only if it fits the free
/// room then; a refusal is the budget speaking, not a fault, so it is logged at debug level.
/// Returns whether some were left because another load held admission (or a request queued):
/// the monitor tries again.
async fn preload_predicted(
    registry: Arc<crate::registry::Registry>,
    predictions: Vec<crate::registry::Prediction>,
) -> bool {
    for p in predictions {
        // A request that started meanwhile goes first.
        if registry.governor.queue.counts().0 > 0 {
            return true;
        }
        if registry.governor.under_pressure() {
            return false;
        }
        match registry.preload_predicted(&p).await {
            Ok(crate::registry::Preloaded::Busy) => return true,
            Ok(_) => {}
            Err(e) => tracing::debug!(
                caxton_event = "prediction_skipped",
                caxton_model = %p.id,
                "model {} is likely to be used in the coming hour (probability {:.2}) but is not preloaded: {e}",
                p.id,
                p.probability
            ),
        }
    }
    false
}

/// Keeps the kernel's notifications armed at the thresholds of the levels just read; a
/// failure is logged once per change of what it was armed for.
fn rearm(
    watch: &mut Option<KernelWatch>,
    failed: &mut Option<notify::Key>,
    reading: &pressure::Reading,
    t: Thresholds,
) {
    let key = notify::key(&reading.levels, t);
    if watch.as_ref().is_some_and(|w| w.is_for(&key)) || failed.as_ref() == Some(&key) {
        return;
    }
    *watch = None;
    if key.is_empty() {
        return;
    }
    match KernelWatch::start(key.clone()) {
        Ok(w) => {
            tracing::info!(
                caxton_event = "memory_notifications",
                "kernel memory notifications armed: {}",
                w.detail
            );
            *failed = None;
            *watch = Some(w);
        }
        Err(e) => {
            tracing::info!(
                caxton_event = "memory_notifications_unavailable",
                "kernel memory notifications are not available ({e}); polling alone watches memory"
            );
            *failed = Some(key);
        }
    }
}
