//! The memory monitor: the daemon task that takes a pressure reading every `memory.pressure.interval`
//! (sooner as room shrinks, and at once when a trigger or a kernel notification fires), sheds
//! models as the shedder decides (as many as bring the working set back, not all), unloads
//! idle models, and loads `preload` models, and the models usage predicts for the coming
//! hour, in the background when no pressure episode forbids it.

use std::sync::Arc;
use std::time::Duration;

use crate::config::PressureSourceSetting;
use crate::config::memory::DEFAULT_PRIORITY;
use crate::memory::hierarchy::Thresholds;
use crate::memory::notify::{self, KernelWatch};
use crate::memory::policy::{self, Shed};
use crate::memory::pressure::{self, Paths, Probe, SourceKind};
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
    let registry = state.registry.clone();
    let gov = registry.governor.clone();
    let mut setting = None;
    let mut probe: Option<Probe> = None;
    let mut watch: Option<KernelWatch> = None;
    let mut watch_failed: Option<notify::Key> = None;
    let mut seen_triggers = 0;
    let mut preload_due = true;
    let mut predict_due = true;
    let mut predicted_hour = None;
    let mut noted_hour = None;
    let mut predicting: Option<tokio::task::JoinHandle<bool>> = None;
    let mut status = String::new();
    let mut idle_warned = false;
    let mut last: Option<pressure::Reading> = None;
    let mut last_read = tokio::time::Instant::now();
    loop {
        let settings = gov.settings();
        if setting != Some(settings.pressure.source) || probe.is_none() {
            let p = select(settings.pressure.source);
            gov.set_source(p.kind, p.detail.clone());
            probe = Some(p);
            setting = Some(settings.pressure.source);
        }
        let Some(p) = probe.as_mut() else { continue };

        let wait = next_interval(
            last.as_ref(),
            settings.reserve.0,
            settings.pressure.interval.0,
        );
        let trigger = p.events();
        let kernel = watch.as_ref().map(|w| w.events.clone());
        let woken_by_kernel = tokio::select! {
            _ = async { match &trigger { Some(t) => t.notify.notified().await, None => std::future::pending().await } } => false,
            _ = async { match &kernel { Some(k) => k.notify.notified().await, None => std::future::pending().await } } => true,
            _ = tokio::time::sleep(wait) => false,
        };
        // memory.events changes on every throttling event: readings stay MIN_INTERVAL apart.
        if woken_by_kernel {
            tokio::time::sleep_until(last_read + MIN_INTERVAL).await;
        }
        last_read = tokio::time::Instant::now();
        let triggers = trigger.map_or(0, |e| e.count.load(std::sync::atomic::Ordering::Relaxed));
        let triggered = triggers > seen_triggers;
        seen_triggers = triggers;
        gov.set_triggers(triggers);

        if p.kind != SourceKind::Off {
            let reading = p.read(&settings.pressure, settings.reserve.0);
            rearm(
                &mut watch,
                &mut watch_failed,
                &reading,
                gov.thresholds(&settings),
            );
            let was_active = gov.under_pressure();
            let decision = gov.observe(&reading, triggered);
            let why = match (triggered, reading.level) {
                (true, policy::Level::Normal) => format!(
                    "{} trigger fired: memory stalled for a trigger window",
                    p.kind.as_str()
                ),
                (true, _) => format!("{} trigger fired; {}", p.kind.as_str(), reading.why),
                (false, _) => reading.why.clone(),
            };
            let residents = registry.residents();
            let now = gov.now();
            let min_residency = settings.min_residency.0;
            let victims: Vec<String> = match decision {
                Shed::Nothing => Vec::new(),
                Shed::Excess { urgent } => {
                    // Memory already on its way back counts against the excess.
                    let excess = reading.excess_bytes.saturating_sub(gov.releasing_bytes());
                    let critical = reading.level == policy::Level::Critical;
                    policy::shed_for_excess(
                        excess,
                        &residents,
                        now,
                        min_residency,
                        urgent,
                        critical,
                    )
                }
                Shed::Signal => {
                    policy::shed_for_signal(&residents, now, min_residency, DEFAULT_PRIORITY)
                        .into_iter()
                        .collect()
                }
            };
            let wanted = match decision {
                Shed::Nothing => false,
                Shed::Excess { .. } => reading.excess_bytes > gov.releasing_bytes(),
                Shed::Signal => true,
            };
            if wanted && victims.is_empty() && !idle_warned {
                if policy::shed_order(&residents).is_empty() {
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
                idle_warned = true;
            }
            // A stall of the daemon's own cgroup caps model memory until calm; a host-wide
            // one (other processes' stalls) is one signal among others and caps nothing.
            // systemd's watch is always the unit's own cgroup.
            let own = if triggered {
                p.kind == SourceKind::Systemd || !reading.psi_host_wide
            } else {
                !reading.psi_host_wide
            };
            let cap = decision == Shed::Signal && own;
            for id in victims {
                registry.shed(&id, &format!("pressure: {why}"), cap).await;
            }
            if !gov.under_pressure() {
                idle_warned = false;
                if was_active {
                    tracing::info!(
                        caxton_event = "pressure_over",
                        "memory pressure is over; models may load in the background again"
                    );
                    preload_due = true;
                    predict_due = true;
                }
            }
            last = Some(reading);
        }

        let now = gov.now();
        let loaded: Vec<_> = registry
            .residents()
            .into_iter()
            .map(|r| {
                let limit = settings.idle_limit(&r.id);
                (r, limit)
            })
            .collect();
        for m in policy::idle_expired(now, &loaded) {
            let _ = registry.unload(&m.id, "idle").await;
        }

        // Background loads never stand in the queue in front of requests.
        let queue_busy = gov.queue().0 > 0 || gov.admitting().is_some();
        let mut preloading = false;
        if !gov.under_pressure() && !queue_busy && (preload_due || gov.take_preload_request()) {
            preload_due = false;
            preloading = true;
            for id in registry.ids() {
                if gov.rules(&id).preload {
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        if let Err(e) = registry.acquire(&id).await {
                            tracing::warn!(
                                caxton_event = "preload_failed",
                                caxton_model = %id,
                                "preloading {id} failed: {e}"
                            );
                        }
                    });
                }
            }
        }

        let hour = crate::registry::habits::hour_of(crate::clock::now());
        if noted_hour != Some(hour) {
            // Before this hour's predictions: what was predicted for an ended hour and not
            // used is not predicted for it again.
            registry.note_missed_predictions(hour);
            noted_hour = Some(hour);
        }
        if let Some(task) = predicting.take_if(|t| t.is_finished()) {
            // A prediction that met another load holding admission is tried again.
            if task.await.unwrap_or(false) {
                predict_due = true;
            }
        }
        // Configured preloads go first: they are not guesses.
        if settings.predictive_preload
            && predicting.is_none()
            && !preloading
            && !gov.under_pressure()
            && !queue_busy
            && (predict_due || predicted_hour != Some(hour))
        {
            predict_due = false;
            predicted_hour = Some(hour);
            let predictions = registry.predictions(hour, settings.predictive_threshold);
            if !predictions.is_empty() {
                predicting = Some(tokio::spawn(preload_predicted(
                    registry.clone(),
                    predictions,
                )));
            }
        }

        let line = state.status_line();
        if line != status {
            crate::systemd::status(&line);
            status = line;
        }
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
        if registry.governor.queue().0 > 0 {
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
