//! The daemon's life: assembles the shared state and the tasks that work on it (HTTP, reloads,
//! side-loading, the memory monitor, the watchdog), serves on a listener it is handed,
//! verifies packages, loads the default model, reports readiness, and on shutdown finishes
//! in-flight requests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;

use crate::api;
use crate::config::Settings;
use crate::engine::EngineOptions;
use crate::package::Store;
use crate::registry::{Registry, candidates, signature_policy};
use crate::reload;
use crate::state::{AppState, Health, batch_limits};
use crate::systemd;

/// The sockets the daemon serves on, bound or passed by systemd before [`run`].
pub struct Listeners {
    /// The API's Unix socket.
    pub api: UnixListener,
    /// It came from systemd (`caxton.socket`), which owns the socket file.
    pub socket_activated: bool,
    /// TCP sockets from systemd for metrics (`caxton-metrics.socket`), with their names;
    /// `metrics.listen` adds its own.
    pub metrics: Vec<(std::net::TcpListener, String)>,
    /// TCP sockets from systemd for the API (`caxton-api.socket`), with their names;
    /// `api.listen` adds its own.
    pub api_tcp: Vec<(std::net::TcpListener, String)>,
}

/// Serves on `listeners` with `settings` (read from `config_dir`, which is watched for
/// changes) until `shutdown` resolves, then drains and returns. A TCP listener that cannot
/// listen is logged (and an address of `metrics.listen` or `api.listen` tried again) while the
/// daemon serves.
pub async fn run(
    listeners: Listeners,
    settings: Settings,
    config_dir: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        api: listener,
        socket_activated,
        metrics,
        api_tcp,
    } = listeners;
    let wanted = (settings.metrics.addresses(), settings.api.addresses());
    let state = assemble(settings, config_dir.clone(), socket_activated);
    serve_tcp(&state, (metrics, api_tcp), &wanted);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    crate::connections::raise_fd_limit(state.settings().limits.max_connections);
    let server = tokio::spawn(crate::connections::serve(
        listener,
        api::router(state.clone()),
        state.clone(),
        stop_rx,
    ));

    // Handle SIGHUP from the start: its default action would kill the daemon mid start-up.
    if let Err(e) = reload::on_sighup(state.clone(), config_dir.clone()) {
        tracing::warn!("cannot handle SIGHUP: {e}");
    }
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        result = start(&state) => {
            // Keep the watcher alive until shutdown.
            let _watcher = come_up(&state, &config_dir, result);
            shutdown.as_mut().await;
        }
        () = shutdown.as_mut() => {}
    }

    tracing::info!(
        caxton_event = "stopping",
        "stopping: finishing in-flight requests"
    );
    systemd::stopping();
    // Scrapers see the target go down with the daemon; the routers they held let the state go.
    let scrapes = state.metrics_listeners.stop();
    let api_tcp = state.api_listeners.stop();
    let _ = stop_tx.send(true);
    let (served, (), ()) = tokio::join!(server, scrapes, api_tcp);
    served?;
    // Usage of the last requests, which the periodic save has not written yet.
    state.registry.save_usage();
    tracing::info!(caxton_event = "stopped", "stopped");
    Ok(())
}

/// TCP sockets systemd passed, with their names.
type Passed = Vec<(std::net::TcpListener, String)>;

/// Serves metrics and the API over TCP on the sockets systemd passed and on the addresses of
/// `metrics.listen` and `api.listen`.
fn serve_tcp(
    state: &Arc<AppState>,
    (metrics, api_tcp): (Passed, Passed),
    (metrics_wanted, api_wanted): &(Vec<std::net::SocketAddr>, Vec<std::net::SocketAddr>),
) {
    let scrapes = &state.metrics_listeners;
    scrapes.serve_with(
        api::metrics_router(state.clone()),
        crate::tcp_listeners::Policy::scrapes(),
    );
    let clients = &state.api_listeners;
    clients.serve_with(api::tcp_router(state.clone()), tcp_policy(state));
    for (listeners, passed) in [(scrapes, metrics), (clients, api_tcp)] {
        if let Err(e) = listeners.adopt(passed) {
            // The sockets are systemd's; the daemon's own job does not depend on them.
            tracing::error!(caxton_event = "tcp_listener_failed", "{e}");
        }
    }
    for endpoint in clients.endpoints() {
        if let Some(reason) = api::tokenless(state, endpoint.address) {
            tracing::error!(caxton_event = "api_listener_failed", "{reason}");
        }
    }
    scrapes.listen_or_retry(metrics_wanted);
    clients.listen_or_retry(api_wanted);
}

/// How long a stop waits for the requests under way on a TCP connection, as on the socket.
const TCP_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// The API's TCP listeners take the Unix socket's limits, per listener:
/// `limits.max_connections` at once (within the descriptors the process may open),
/// `limits.idle_timeout` to send a head, read at each connection; past the bound, 503
/// `too_many_connections` (no idle connection is closed for a new one, as on the socket: over
/// TCP the daemon cannot tell clients apart).
fn tcp_policy(state: &Arc<AppState>) -> crate::tcp_listeners::Policy {
    let state = Arc::downgrade(state);
    crate::tcp_listeners::Policy::api(
        move || match state.upgrade() {
            Some(s) => {
                let limits = &s.settings().limits;
                (
                    crate::connections::bound(limits.max_connections),
                    limits.idle_timeout.0,
                )
            }
            None => (0, std::time::Duration::from_secs(1)),
        },
        api::tcp_refusal,
        TCP_DRAIN,
    )
}

/// Once [`start`] ended (`started`): puts its outcome in force, starts the background work
/// and tells systemd the daemon is ready. The configuration watcher it returns works as long
/// as it is kept.
fn come_up(
    state: &Arc<AppState>,
    config_dir: &Path,
    started: Result<(), String>,
) -> Option<notify::RecommendedWatcher> {
    if let Err(reason) = started {
        tracing::error!(caxton_event = "unavailable", "{reason}");
        state.set_health(Health::Unavailable(reason));
    }
    let watcher = match reload::watch(state.clone(), config_dir.to_path_buf()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot watch the configuration directory, changes apply on SIGHUP or caxton reload only: {e}"
            );
            None
        }
    };
    crate::monitor::spawn(state.clone());
    spawn_usage_saver(state.clone());
    crate::watchdog::spawn(state.clone());
    if let Err(e) = crate::sideload::spawn(state.clone()) {
        tracing::warn!(
            "cannot watch for side-loaded packages, they are picked up on reload only: {e}"
        );
    }
    let status = state.status_line();
    systemd::ready(&status);
    tracing::info!(
        caxton_event = "ready",
        "caxtond ready on {}: {status}",
        state.settings().socket.path.display()
    );
    watcher
}

/// The shared state for `settings` (read from `config_dir`), with reloads served: what the HTTP
/// router needs. Nothing is verified or loaded yet ([`start`] does that). Call within a Tokio
/// runtime.
pub fn assemble(settings: Settings, config_dir: PathBuf, socket_activated: bool) -> Arc<AppState> {
    let options = EngineOptions {
        batch: batch_limits(&settings),
        queue: settings.limits.queue_depth,
    };
    let registry = Arc::new(Registry::new(options, &settings.memory));
    registry.set_precision(settings.models.precision.clone());
    registry.set_default(&settings.models.default);
    let (state, reload_requests) = AppState::new(settings, registry, socket_activated);
    let state = Arc::new(state);
    reload::serve(state.clone(), config_dir, reload_requests);
    state
}

/// How often changed usage is written to `state_dir/usage.json`. A crash loses at most this
/// much of it; a clean stop writes it at once.
const USAGE_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes changed usage every [`USAGE_SAVE_INTERVAL`].
fn spawn_usage_saver(state: Arc<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(USAGE_SAVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let registry = state.registry.clone();
            let _ = tokio::task::spawn_blocking(move || registry.save_usage()).await;
        }
    });
}

/// Verifies every package and loads the default model. An error means no model can serve.
/// (Public for in-process harnesses such as the HTTP fuzz target.)
pub async fn start(state: &Arc<AppState>) -> Result<(), String> {
    let _exclusive = state.exclusive_scan().await;
    let settings = state.settings();
    systemd::status("verifying model packages");
    let state_dir = settings.state_dir.clone();
    let candidates = candidates(&settings);
    let registry = state.registry.clone();
    let policy = signature_policy(&settings);
    let bound = settings.store.max_size;
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        registry.restore_usage(&state_dir);
        let store = Store::open(&state_dir)
            .map_err(|e| format!("cannot open the model store: {e}"))?
            .bounded(bound);
        registry.scan(&store, &candidates, &policy, true);
        Ok(())
    })
    .await
    .map_err(|e| format!("package verification panicked: {e}"))??;

    warn_unusable_default_reranker(state, &settings);
    if let Err(reason) = crate::config::fallback::check_shapes(
        &settings.models.fallbacks,
        settings.models.allow_dimension_mismatch,
        |id| state.registry.shape(id),
    ) {
        // Too late to refuse the configuration: say so, and substitution never uses such a
        // model (each one is checked again when it would answer).
        tracing::error!(caxton_event = "fallback_refused", "{reason}");
    }
    let default = &settings.models.default;
    if state.registry.get(default).is_none() {
        let rejected: Vec<String> = state
            .registry
            .rejected()
            .iter()
            .map(|r| format!("{}: {}", r.file.display(), r.reason))
            .collect();
        let mut reason = format!(
            "the default model {default:?} is not among the verified packages in {} and {}",
            settings.models.bundled_dir.display(),
            settings.models.package_dir.display()
        );
        if !rejected.is_empty() {
            reason.push_str(&format!(" (rejected: {})", rejected.join("; ")));
        }
        if state.registry.ids().is_empty() {
            return Err(reason);
        }
        tracing::error!(caxton_event = "default_model_missing", "{reason}");
        state.set_health(Health::Serving);
        return Ok(());
    }
    systemd::status(&format!("loading {default}"));
    match state.registry.acquire(default).await {
        Ok(_) => {}
        // Memory held by others now may be free soon: serve, and load on the first request.
        Err(crate::registry::LoadError::NoMemory {
            reason,
            lasting: false,
            ..
        }) => tracing::warn!(
            caxton_event = "default_model_deferred",
            caxton_model = %default,
            "the default model {default} is not loaded at start: {reason}; the first request for it will load it"
        ),
        Err(e) => return Err(e.to_string()),
    }
    state.set_health(Health::Serving);
    Ok(())
}

/// A `models.default_reranker` that names no verified reranker at start: rerank requests that
/// name no model get the 404 or 400 that says so; the journal says it once, here. (On reload
/// such a change is refused instead.)
fn warn_unusable_default_reranker(state: &AppState, settings: &crate::config::Settings) {
    let Some(id) = &settings.models.default_reranker else {
        return;
    };
    let problem = match state.registry.get(id) {
        None => "no verified package has this id",
        Some(slot) if slot.package.manifest.kind != crate::package::ModelKind::Reranker => {
            "it is an embedding model, not a reranker"
        }
        Some(_) => return,
    };
    tracing::warn!(
        caxton_event = "default_reranker_missing",
        caxton_model = %id,
        "models.default_reranker {id:?} cannot serve: {problem}; rerank requests must name a model until a reranker package with this id is installed"
    );
}
