//! Live configuration: a change to the config directory (see [`watch`]),
//! SIGHUP, or `POST /api/reload` re-reads every file; a valid result is applied with the
//! systemd reload protocol, an invalid one is refused whole and the running configuration stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Settings;
use crate::registry::{ScanResult, candidates, signature_policy};
use crate::state::{AppState, Health, Outcome, ReloadRequest, Trigger};
use crate::systemd;
use crate::tcp_listeners::Bound;

mod watch;
pub use watch::watch;

/// Keys that only take effect at the next start; a change is logged as such and not applied.
pub const RESTART_ONLY: [&str; 2] = ["socket.path", "state_dir"];

/// Answers the reload requests of `POST /api/reload` (sent through [`AppState::reload`]) for
/// the config directory `dir`, each as it comes.
pub fn serve(
    state: Arc<AppState>,
    dir: PathBuf,
    mut requests: mpsc::UnboundedReceiver<ReloadRequest>,
) {
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            // Each in a task of its own, so a client that hangs up cannot cut a reload short;
            // the scan lock keeps them one at a time.
            let (state, dir) = (state.clone(), dir.clone());
            tokio::spawn(async move {
                let outcome = reload(&state, &dir, request.trigger).await;
                let _ = request.reply.send(outcome);
            });
        }
    });
}

/// Re-reads the configuration in `dir` and applies it or refuses it whole.
async fn reload(state: &Arc<AppState>, dir: &Path, trigger: Trigger) -> Outcome {
    reload_unless_superseded(state, dir, trigger, &|| false).await
}

/// [`reload`], unless `superseded` says, once the files are read, that one changed while
/// they were read: what was read may be a file between its truncation and its writing (the
/// watch's next quiet burst reads it again).
async fn reload_unless_superseded(
    state: &Arc<AppState>,
    dir: &Path,
    trigger: Trigger,
    superseded: &(dyn Fn() -> bool + Sync),
) -> Outcome {
    let _exclusive = state.exclusive_scan().await;
    let dir = dir.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Settings::load(&dir))
        .await
        .map_err(|e| format!("the config loader panicked: {e}"));
    let new = match loaded {
        Ok(Ok(new)) => new,
        Ok(Err(e)) => return refuse(state, &e.to_string()),
        Err(e) => return refuse(state, &e),
    };
    if superseded() {
        tracing::debug!("a config file changed while it was read; reading it again once quiet");
        return Outcome {
            applied: false,
            message: "superseded by a later change".into(),
            changed: Vec::new(),
            restart_required: Vec::new(),
        };
    }
    let old = state.settings();
    if trigger == Trigger::FileChange && *old == new {
        tracing::debug!("configuration files changed but the effective configuration did not");
        return Outcome {
            applied: true,
            message: "configuration unchanged".into(),
            changed: Vec::new(),
            restart_required: Vec::new(),
        };
    }
    systemd::reloading();
    let outcome = apply(state, &old, new).await;
    let status = state.status_line();
    if outcome.applied {
        systemd::ready(&status);
    } else {
        systemd::ready(&format!(
            "{status}; configuration refused: {}",
            outcome.message
        ));
    }
    outcome
}

fn refuse(state: &Arc<AppState>, reason: &str) -> Outcome {
    tracing::error!(
        caxton_event = "config_rejected",
        caxton_reason = reason,
        "configuration change refused, the running configuration stays: {reason}"
    );
    systemd::status(&format!(
        "{}; configuration refused: {reason}",
        state.status_line()
    ));
    Outcome::refused(reason)
}

async fn apply(state: &Arc<AppState>, old: &Settings, mut new: Settings) -> Outcome {
    let restart_required = keep_restart_only(old, &mut new);
    let prepared = match prepare(state, old, &new).await {
        Ok(prepared) => prepared,
        Err(reason) => return refuse(state, &reason),
    };
    let changed = changed_keys(old, &new);
    commit(state, &new, prepared).await;
    let default = new.models.default.clone();
    state.set_settings(new);
    if !matches!(state.health(), Health::Starting) {
        state.set_health(Health::Serving);
    }
    tracing::info!(
        caxton_event = "config_reloaded",
        caxton_keys = %changed.join(","),
        "configuration reloaded; changed: {}",
        if changed.is_empty() { "nothing".to_string() } else { changed.join(", ") }
    );
    warm_default(state, default);
    let message = if restart_required.is_empty() {
        "configuration applied".to_string()
    } else {
        format!(
            "configuration applied; {} need a restart to take effect",
            restart_required.join(", ")
        )
    };
    Outcome {
        applied: true,
        message,
        changed,
        restart_required,
    }
}

/// Keeps the running values of the [`RESTART_ONLY`] keys, warning of each that changed;
/// returns those.
fn keep_restart_only(old: &Settings, new: &mut Settings) -> Vec<String> {
    let mut restart_required = Vec::new();
    if new.socket.path != old.socket.path {
        restart_required.push("socket.path".to_string());
        new.socket.path = old.socket.path.clone();
    }
    if new.state_dir != old.state_dir {
        restart_required.push("state_dir".to_string());
        new.state_dir = old.state_dir.clone();
    }
    for key in &restart_required {
        tracing::warn!(
            caxton_event = "config_restart_required",
            caxton_key = %key,
            "{key} changed; it takes effect only after a restart (systemctl restart caxton)"
        );
    }
    restart_required
}

/// What the checks verified and bound, put in force by [`commit`].
struct Prepared {
    scan: ScanResult,
    metrics_listeners: Bound,
    api_listeners: Bound,
}

/// Every step that may refuse the change, in order; the reason of the first that does.
/// Nothing is committed before all have passed.
async fn prepare(
    state: &Arc<AppState>,
    old: &Settings,
    new: &Settings,
) -> Result<Prepared, String> {
    let scan = verify_models(state, new).await?;
    check_models(state, new, &scan)?;
    // Bound now, served at the commit: an address that cannot be bound refuses the change
    // whole, and the listeners in force stay.
    let metrics_listeners = state.metrics_listeners.bind(&new.metrics.addresses())?;
    let api_listeners = state.api_listeners.bind(&new.api.addresses())?;
    set_socket_mode(state, old, new)?;
    // Last of the steps that may refuse (the level was checked when the files were read).
    crate::logging::set_level(&new.log.level).map_err(|e| format!("log.level: {e}"))?;
    Ok(Prepared {
        scan,
        metrics_listeners,
        api_listeners,
    })
}

/// Verifies what the (possibly new) model directories hold before committing anything, so a
/// refused change leaves the registry as it was.
async fn verify_models(state: &Arc<AppState>, new: &Settings) -> Result<ScanResult, String> {
    let candidates = candidates(new);
    let state_dir = new.state_dir.clone();
    let policy = signature_policy(new);
    if let Some(Err(reason)) = &policy.required {
        return Err(format!("models.trusted_keys_dir: {reason}"));
    }
    let registry = state.registry.clone();
    let bound = new.store.max_size;
    let scanned = tokio::task::spawn_blocking(move || {
        crate::package::Store::open(&state_dir)
            .map(|store| store.bounded(bound))
            .map(|store| registry.verify_all(&store, &candidates, &policy, true))
    })
    .await;
    match scanned {
        Ok(Ok(scan)) => Ok(scan),
        Ok(Err(e)) => Err(format!("cannot open the model store: {e}")),
        Err(e) => Err(format!("package verification panicked: {e}")),
    }
}

/// The default model, the default reranker and the fallbacks, against the verified packages
/// (and, for fallbacks' shapes, the models loaded now).
fn check_models(state: &Arc<AppState>, new: &Settings, scan: &ScanResult) -> Result<(), String> {
    if !scan.has(&new.models.default) {
        return Err(format!(
            "models.default: no verified package has id {:?} (available: {})",
            new.models.default,
            scan.ids().join(", ")
        ));
    }
    check_model_kinds(scan, new)?;
    crate::config::fallback::check_shapes(
        &new.models.fallbacks,
        new.models.allow_dimension_mismatch,
        |id| scan.shape(id).or_else(|| state.registry.shape(id)),
    )
}

/// A changed `socket.mode` applies to our own socket at once; caxton.socket's socket belongs
/// to systemd, so there it is only a warning.
fn set_socket_mode(state: &Arc<AppState>, old: &Settings, new: &Settings) -> Result<(), String> {
    if new.socket.mode == old.socket.mode {
        return Ok(());
    }
    if state.socket_activated {
        tracing::warn!(
            caxton_event = "config_not_applied",
            caxton_key = "socket.mode",
            "socket.mode changed, but the socket belongs to caxton.socket; set SocketMode= there"
        );
        return Ok(());
    }
    std::fs::set_permissions(
        &new.socket.path,
        std::os::unix::fs::PermissionsExt::from_mode(new.socket.mode.0),
    )
    .map_err(|e| {
        format!(
            "socket.mode: cannot chmod {}: {e}",
            new.socket.path.display()
        )
    })
}

/// Puts the verified models, the bound listeners, and the new limits and memory rules in
/// force, and asks for the `preload` models.
async fn commit(state: &Arc<AppState>, new: &Settings, prepared: Prepared) {
    let keep = prepared.scan.digests();
    state.registry.commit(prepared.scan);
    state.metrics_listeners.commit(prepared.metrics_listeners);
    state.api_listeners.commit(prepared.api_listeners);
    if let Ok(store) = crate::package::Store::open(&new.state_dir) {
        store.bounded(new.store.max_size).retain(&keep);
    }
    state
        .registry
        .set_batch_limits(crate::state::batch_limits(new));
    state.registry.governor.configure(&new.memory);
    state.registry.set_default(&new.models.default);
    // A model loaded in the old precision is unloaded; the next request (or the preload
    // below, for preload models) loads it in the new one.
    for id in state.registry.set_precision(new.models.precision.clone()) {
        let precision = state.registry.precision_of(&id);
        let reason = format!("models.precision.{id} changed to {precision}");
        if let Err(e) = state.registry.unload(&id, &reason).await {
            tracing::warn!("cannot unload {id} after its precision changed: {e}");
        }
    }
    state.registry.governor.request_preload();
}

/// Warms the (possibly new) default model in the background, as at start-up, unless memory
/// pressure forbids background loads; the first request loads it then.
fn warm_default(state: &Arc<AppState>, default: String) {
    if !state.registry.governor.under_pressure() {
        let warm = state.clone();
        tokio::spawn(async move {
            let _ = warm.registry.acquire(&default).await;
        });
    }
}

/// Dotted keys whose values differ between two configurations, in the order the new one
/// lists them, then the keys only the old one had. Leaves are compared by key, not by
/// position: a map that gains or loses an entry (`models.fallbacks`) names that entry and
/// nothing after it.
pub fn changed_keys(old: &Settings, new: &Settings) -> Vec<String> {
    fn leaves(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<(String, serde_yaml::Value)>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                for (k, v) in m {
                    let name = match k {
                        serde_yaml::Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .map(|s| s.trim_end().to_string())
                            .unwrap_or_default(),
                    };
                    leaves(v, &format!("{prefix}{name}."), out);
                }
            }
            other => out.push((prefix.trim_end_matches('.').to_string(), other.clone())),
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    if let (Ok(va), Ok(vb)) = (serde_yaml::to_value(old), serde_yaml::to_value(new)) {
        leaves(&va, "", &mut a);
        leaves(&vb, "", &mut b);
    }
    let before: std::collections::HashMap<&str, &serde_yaml::Value> =
        a.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let after: std::collections::HashSet<&str> = b.iter().map(|(k, _)| k.as_str()).collect();
    let differ = b
        .iter()
        .filter(|(k, v)| before.get(k.as_str()) != Some(&v))
        .map(|(k, _)| k.clone());
    let dropped = a
        .iter()
        .filter(|(k, _)| !after.contains(k.as_str()))
        .map(|(k, _)| k.clone());
    differ.chain(dropped).collect()
}

/// `models.default` must embed (it answers `/embed` and `/v1/embeddings`), and
/// `models.default_reranker`, when set, must be a verified reranker.
fn check_model_kinds(scan: &ScanResult, new: &Settings) -> Result<(), String> {
    use crate::package::ModelKind;
    match scan.kind(&new.models.default) {
        Some(ModelKind::Reranker) => {
            return Err(format!(
                "models.default: {:?} is a reranker, and the default model answers embedding requests; name an embedding model (and the reranker in models.default_reranker)",
                new.models.default
            ));
        }
        Some(ModelKind::Sparse) => {
            return Err(format!(
                "models.default: {:?} is a sparse model, and the default model answers embedding requests; name an embedding model (and the sparse one in models.default_sparse)",
                new.models.default
            ));
        }
        Some(ModelKind::MultiVector) => {
            return Err(format!(
                "models.default: {:?} is a multi-vector model, and the default model answers embedding requests; name an embedding model (and the multi-vector one in models.default_multi_vector)",
                new.models.default
            ));
        }
        _ => {}
    }
    for (key, id, kind) in [
        (
            "models.default_sparse",
            &new.models.default_sparse,
            ModelKind::Sparse,
        ),
        (
            "models.default_multi_vector",
            &new.models.default_multi_vector,
            ModelKind::MultiVector,
        ),
    ] {
        let Some(id) = id else { continue };
        match scan.kind(id) {
            Some(_) if scan.serves(id, kind) => {}
            None => return Err(format!("{key}: no verified package has id {id:?}")),
            Some(other) => {
                return Err(format!(
                    "{key}: {id:?} is {}, not {}",
                    other.shape_kind().described(),
                    kind.shape_kind().described()
                ));
            }
        }
    }
    if let Some(id) = &new.models.default_reranker {
        let rerankers: Vec<String> = scan
            .ids()
            .into_iter()
            .filter(|i| scan.kind(i) == Some(ModelKind::Reranker))
            .collect();
        match scan.kind(id) {
            Some(ModelKind::Reranker) => {}
            found => {
                return Err(format!(
                    "models.default_reranker: {}; verified rerankers: {}",
                    match found {
                        None => format!("no verified package has id {id:?}"),
                        Some(_) => format!("{id:?} is an embedding model, not a reranker"),
                    },
                    if rerankers.is_empty() {
                        "none".to_string()
                    } else {
                        rerankers.join(", ")
                    }
                ));
            }
        }
    }
    Ok(())
}

/// Reloads on every SIGHUP.
pub fn on_sighup(state: Arc<AppState>, dir: PathBuf) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            reload(&state, &dir, Trigger::Sighup).await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_names_leaves() {
        let a = Settings::default();
        let mut b = a.clone();
        b.limits.max_inputs = 3;
        b.models.default = "other".into();
        assert_eq!(
            changed_keys(&a, &b),
            vec!["models.default", "limits.max_inputs"]
        );
        assert!(changed_keys(&a, &a).is_empty());
    }

    /// Issue 50: a fallback chain added by a drop-in logged 31 keys (every leaf after
    /// `models.fallbacks`, compared by position), where one changed.
    #[test]
    fn changed_keys_names_a_map_entry_added_or_removed_and_nothing_else() {
        let a = Settings::default();
        let mut b = a.clone();
        b.models.fallback_strategy = crate::config::FallbackStrategy::Listed;
        b.models
            .fallbacks
            .insert("broken-model".into(), vec!["all-MiniLM-L6-v2".into()]);
        assert_eq!(
            changed_keys(&a, &b),
            vec!["models.fallbacks.broken-model", "models.fallback_strategy"]
        );
        assert_eq!(
            changed_keys(&b, &a),
            vec!["models.fallback_strategy", "models.fallbacks.broken-model"]
        );
        let mut c = b.clone();
        c.models
            .fallbacks
            .insert("broken-model".into(), vec!["other".into()]);
        assert_eq!(changed_keys(&b, &c), vec!["models.fallbacks.broken-model"]);
    }
}
