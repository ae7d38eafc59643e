//! The daemon's shared state: the configuration in force, health, the registry, the lock every
//! package scan holds, and the way to ask for a reload. The HTTP API, the reloader, side-loading,
//! the watchdog and the memory monitor all work on it; it knows none of them, so each of them
//! can be read (and tested) without the others, and `server` alone wires them together.

use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::Settings;
use crate::engine::BatchLimits;
use crate::memory::policy::Level;
use crate::registry::Registry;
use crate::tcp_listeners::{Role, TcpListeners};

/// Whether the daemon can serve, as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Verifying packages; requests get 503.
    Starting,
    /// Serving.
    Serving,
    /// Up, but no model can serve; the reason says why.
    Unavailable(String),
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A file in the config directory changed.
    FileChange,
    /// SIGHUP (e.g. `systemctl reload` with a kill-based ExecReload).
    Sighup,
    /// `POST /api/reload` (`caxton reload`).
    Api,
}

/// The result of one reload, as `POST /api/reload` returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Whether the new configuration is in force.
    pub applied: bool,
    /// What happened, in a sentence.
    pub message: String,
    /// Keys whose value changed and was applied.
    pub changed: Vec<String>,
    /// Keys that changed but need a restart.
    pub restart_required: Vec<String>,
}

impl Outcome {
    /// Nothing applied, for `reason`.
    pub fn refused(reason: &str) -> Outcome {
        Outcome {
            applied: false,
            message: reason.to_string(),
            changed: Vec::new(),
            restart_required: Vec::new(),
        }
    }
}

/// A reload asked for through [`AppState::reload`]; `reload::serve` answers it.
pub struct ReloadRequest {
    /// What asked.
    pub trigger: Trigger,
    /// Where the outcome goes once the reload is applied or refused.
    pub reply: oneshot::Sender<Outcome>,
}

/// State shared by every part of the running daemon.
pub struct AppState {
    /// Known models.
    pub registry: Arc<Registry>,
    /// The socket came from systemd (`caxton.socket`): its file and mode are systemd's.
    pub socket_activated: bool,
    /// The TCP listeners for a fleet's Prometheus (`metrics.listen`, `caxton-metrics.socket`).
    pub metrics_listeners: TcpListeners,
    /// The TCP listeners for the API (`api.listen`, `caxton-api.socket`).
    pub api_listeners: TcpListeners,
    settings: RwLock<Arc<Settings>>,
    health: RwLock<Health>,
    /// Held by every scan of the package directories (start-up, reloads, side-load rescans,
    /// re-validation), so no two scans ever overlap.
    scans: tokio::sync::Mutex<()>,
    reloads: mpsc::UnboundedSender<ReloadRequest>,
}

impl AppState {
    /// New state, starting, and the receiving end of its reload requests (for `reload::serve`).
    pub fn new(
        settings: Settings,
        registry: Arc<Registry>,
        socket_activated: bool,
    ) -> (Self, mpsc::UnboundedReceiver<ReloadRequest>) {
        let (reloads, requests) = mpsc::unbounded_channel();
        let state = AppState {
            registry,
            socket_activated,
            metrics_listeners: TcpListeners::new(Role::Metrics),
            api_listeners: TcpListeners::new(Role::Api),
            settings: RwLock::new(Arc::new(settings)),
            health: RwLock::new(Health::Starting),
            scans: tokio::sync::Mutex::new(()),
            reloads,
        };
        (state, requests)
    }

    /// The configuration in force; a reload swaps it, requests in flight keep the one they
    /// started with.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a new configuration in force.
    pub fn set_settings(&self, settings: Settings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the health.
    pub fn set_health(&self, h: Health) {
        *self.health.write().unwrap_or_else(|p| p.into_inner()) = h;
    }

    /// Waits until no other scan of the package directories runs, and keeps it so.
    pub async fn exclusive_scan(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.scans.lock().await
    }

    /// Re-reads the configuration directory and waits until the change is applied or refused.
    pub async fn reload(&self, trigger: Trigger) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        if self.reloads.send(ReloadRequest { trigger, reply }).is_err() {
            return Outcome::refused("the reloader is not running (caxtond is stopping)");
        }
        outcome.await.unwrap_or_else(|_| {
            Outcome::refused("the reloader stopped before answering (caxtond is stopping)")
        })
    }

    /// The one-line state for systemd's `STATUS=`.
    pub fn status_line(&self) -> String {
        match self.health() {
            Health::Starting => "starting".into(),
            Health::Serving => {
                let loaded = self.registry.loaded_ids();
                let gov = &self.registry.governor;
                let pressure = gov.pressure();
                let level = pressure
                    .reading
                    .as_ref()
                    .map_or("unknown", |r| match r.level {
                        Level::Normal => "normal",
                        Level::Pressure => "pressure",
                        Level::Critical => "critical",
                    });
                format!(
                    "serving; default {}; {} model(s) verified; loaded: {} ({} of {} MiB); memory {level} ({}){}",
                    self.settings().models.default,
                    self.registry.ids().len(),
                    if loaded.is_empty() {
                        "none".to_string()
                    } else {
                        loaded.join(", ")
                    },
                    self.registry.model_memory() >> 20,
                    gov.budget().bytes >> 20,
                    pressure.source.as_str(),
                    if pressure.episode {
                        ", shedding episode"
                    } else {
                        ""
                    }
                )
            }
            Health::Unavailable(reason) => format!("unavailable: {reason}"),
        }
    }

    /// Tells systemd the current [`status_line`](Self::status_line), after anything that
    /// changes it.
    pub fn report_status(&self) {
        crate::systemd::status(&self.status_line());
    }
}

/// Forward-pass limits from the configuration.
pub fn batch_limits(settings: &Settings) -> BatchLimits {
    BatchLimits {
        max_texts: settings.limits.max_batch_texts,
        max_tokens: settings.limits.max_batch_tokens,
    }
}
