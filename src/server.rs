//! The daemon's life: serve HTTP on a listener it is handed, verify packages, load the
//! default model, report readiness, and on shutdown finish in-flight requests.

use std::future::Future;
use std::sync::Arc;

use tokio::net::UnixListener;

use crate::api::{self, AppState, Health};
use crate::config::Settings;
use crate::engine::{BatchLimits, EngineOptions};
use crate::package::Store;
use crate::registry::{Registry, Source, find_packages};
use crate::systemd;

/// Serves on `listener` with `settings` until `shutdown` resolves, then drains and returns.
/// Socket activation and tests hand in their own listener.
pub async fn run(
    listener: UnixListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let options = EngineOptions {
        batch: BatchLimits {
            max_texts: settings.limits.max_batch_texts,
            max_tokens: settings.limits.max_batch_tokens,
        },
        queue: settings.limits.queue_depth,
    };
    let registry = Arc::new(Registry::new(options));
    let state = Arc::new(AppState::new(settings, registry.clone()));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, api::router(state.clone())).with_graceful_shutdown(async {
        let _ = stop_rx.await;
    });
    let server = tokio::spawn(async move { server.await });

    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        result = start(&state) => {
            let status = match result {
                Ok(()) => "serving".to_string(),
                Err(reason) => {
                    tracing::error!(caxton_event = "unavailable", "{reason}");
                    state.set_health(Health::Unavailable(reason.clone()));
                    format!("unavailable: {reason}")
                }
            };
            systemd::ready(&status);
            tracing::info!(caxton_event = "ready", "caxtond ready on {}: {status}", state.settings.socket.path.display());
            shutdown.as_mut().await;
        }
        () = shutdown.as_mut() => {}
    }

    tracing::info!(
        caxton_event = "stopping",
        "stopping: finishing in-flight requests"
    );
    systemd::stopping();
    let _ = stop_tx.send(());
    server.await??;
    tracing::info!(caxton_event = "stopped", "stopped");
    Ok(())
}

/// Verifies every package and loads the default model. An error means no model can serve.
async fn start(state: &Arc<AppState>) -> Result<(), String> {
    let settings = &state.settings;
    systemd::status("verifying model packages");
    let state_dir = settings.state_dir.clone();
    let mut candidates = find_packages(&settings.models.bundled_dir, Source::Bundled);
    candidates.extend(find_packages(
        &settings.models.package_dir,
        Source::SideLoaded,
    ));
    let registry = state.registry.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let store =
            Store::open(&state_dir).map_err(|e| format!("cannot open the model store: {e}"))?;
        registry.scan(&store, &candidates);
        Ok(())
    })
    .await
    .map_err(|e| format!("package verification panicked: {e}"))??;

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
    state
        .registry
        .acquire(default)
        .await
        .map_err(|e| e.to_string())?;
    state.set_health(Health::Serving);
    Ok(())
}
