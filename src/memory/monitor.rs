//! The memory monitor: a task that takes a pressure reading every `memory.pressure.interval`
//! (or at once when a trigger fires), sheds models as the shedder decides, unloads idle
//! models, and loads `preload` models in the background when no pressure episode forbids it.

use std::sync::Arc;

use super::policy::{self, Shed};
use super::pressure::{self, Paths, Probe, SourceKind};
use crate::api::AppState;
use crate::config::PressureSourceSetting;

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

async fn run(state: Arc<AppState>) {
    let registry = state.registry.clone();
    let gov = registry.governor.clone();
    let mut setting = None;
    let mut probe: Option<Probe> = None;
    let mut seen_triggers = 0;
    let mut preload_due = true;
    let mut status = String::new();
    let mut idle_warned = false;
    loop {
        let settings = gov.settings();
        if setting != Some(settings.pressure.source) || probe.is_none() {
            let p = select(settings.pressure.source);
            gov.set_source(p.kind, p.detail.clone());
            probe = Some(p);
            setting = Some(settings.pressure.source);
        }
        let Some(p) = probe.as_mut() else { continue };

        let interval = settings.pressure.interval.0;
        match p.events() {
            Some(events) => {
                let _ = tokio::time::timeout(interval, events.notify.notified()).await;
            }
            None => tokio::time::sleep(interval).await,
        }
        let triggers = p
            .events()
            .map_or(0, |e| e.count.load(std::sync::atomic::Ordering::Relaxed));
        let triggered = triggers > seen_triggers;
        seen_triggers = triggers;
        gov.set_triggers(triggers);

        if p.kind != SourceKind::Off {
            let reading = p.read(&settings.pressure);
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
            let victims: Vec<String> = {
                let residents = registry.residents();
                let order = policy::shed_order(&residents);
                match decision {
                    Shed::Nothing => Vec::new(),
                    Shed::One => order.first().map(|r| r.id.clone()).into_iter().collect(),
                    Shed::All => order.iter().map(|r| r.id.clone()).collect(),
                }
            };
            if decision != Shed::Nothing && victims.is_empty() && !idle_warned {
                tracing::warn!(
                    caxton_event = "pressure_nothing_to_shed",
                    "memory is under pressure ({why}) but no unpinned model is loaded to shed"
                );
                idle_warned = true;
            }
            for id in victims {
                registry.shed(&id, &format!("pressure: {why}"), true).await;
            }
            if !gov.under_pressure() {
                idle_warned = false;
                if was_active {
                    tracing::info!(
                        caxton_event = "pressure_over",
                        "memory pressure is over; models may load in the background again"
                    );
                    preload_due = true;
                }
            }
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

        if (preload_due || gov.take_preload_request()) && !gov.under_pressure() {
            preload_due = false;
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

        let line = crate::server::status_line(&state);
        if line != status {
            crate::systemd::status(&line);
            status = line;
        }
    }
}
