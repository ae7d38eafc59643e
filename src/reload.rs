//! Live configuration: a change to the config directory (watched with notify, debounced),
//! SIGHUP, or `POST /api/reload` re-reads every file; a valid result is applied with the
//! systemd reload protocol, an invalid one is refused whole and the running configuration stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::{AppState, Health};
use crate::config::Settings;
use crate::registry::{Source, find_packages};
use crate::systemd;

/// Keys that only take effect at the next start; a change is logged as such and not applied.
pub const RESTART_ONLY: [&str; 2] = ["socket.path", "state_dir"];

/// How long the directory must be quiet before a burst of changes becomes one reload.
const QUIET: Duration = Duration::from_millis(200);
/// A burst longer than this reloads anyway, so a steady trickle of writes cannot starve it.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// What asked for the reload.
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

/// Serialises reloads and remembers the directory they read.
#[derive(Clone)]
pub struct Reloader {
    dir: PathBuf,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    /// A reloader for the config directory `dir`.
    pub fn new(dir: PathBuf) -> Reloader {
        Reloader {
            dir,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Held while start-up verifies packages, so a reload cannot race it.
    pub async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Re-reads the configuration and applies it or refuses it whole.
    pub async fn reload(&self, state: &Arc<AppState>, trigger: Trigger) -> Outcome {
        let _guard = self.lock.lock().await;
        let dir = self.dir.clone();
        let loaded = tokio::task::spawn_blocking(move || Settings::load(&dir))
            .await
            .map_err(|e| format!("the config loader panicked: {e}"));
        let new = match loaded {
            Ok(Ok(new)) => new,
            Ok(Err(e)) => return refuse(state, &e.to_string()),
            Err(e) => return refuse(state, &e),
        };
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
        let status = crate::server::status_line(state);
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
}

fn refuse(state: &Arc<AppState>, reason: &str) -> Outcome {
    tracing::error!(
        caxton_event = "config_rejected",
        caxton_reason = reason,
        "configuration change refused, the running configuration stays: {reason}"
    );
    systemd::status(&format!(
        "{}; configuration refused: {reason}",
        crate::server::status_line(state)
    ));
    Outcome {
        applied: false,
        message: reason.to_string(),
        changed: Vec::new(),
        restart_required: Vec::new(),
    }
}

async fn apply(state: &Arc<AppState>, old: &Settings, mut new: Settings) -> Outcome {
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

    // Models: verify what the (possibly new) directories hold before committing anything, so a
    // refused change leaves the registry as it was.
    let candidates = candidates(&new);
    let state_dir = new.state_dir.clone();
    let policy = crate::sideload::policy(&new);
    if let Some(Err(reason)) = &policy.required {
        return refuse(state, &format!("models.trusted_keys_dir: {reason}"));
    }
    let registry = state.registry.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        crate::package::Store::open(&state_dir)
            .map(|store| registry.verify_all(&store, &candidates, &policy, true))
    })
    .await;
    let scan = match scanned {
        Ok(Ok(scan)) => scan,
        Ok(Err(e)) => return refuse(state, &format!("cannot open the model store: {e}")),
        Err(e) => return refuse(state, &format!("package verification panicked: {e}")),
    };
    if !scan.has(&new.models.default) {
        return refuse(
            state,
            &format!(
                "models.default: no verified package has id {:?} (available: {})",
                new.models.default,
                scan.ids().join(", ")
            ),
        );
    }
    if let Err(e) = crate::logging::set_level(&new.log.level) {
        return refuse(state, &format!("log.level: {e}"));
    }
    if new.socket.mode != old.socket.mode && state.socket_activated {
        tracing::warn!(
            caxton_event = "config_not_applied",
            caxton_key = "socket.mode",
            "socket.mode changed, but the socket belongs to caxton.socket; set SocketMode= there"
        );
    } else if new.socket.mode != old.socket.mode
        && let Err(e) = std::fs::set_permissions(
            &new.socket.path,
            std::os::unix::fs::PermissionsExt::from_mode(new.socket.mode.0),
        )
    {
        return refuse(
            state,
            &format!(
                "socket.mode: cannot chmod {}: {e}",
                new.socket.path.display()
            ),
        );
    }

    let changed = changed_keys(old, &new);
    let keep = scan.digests();
    state.registry.commit(scan);
    if let Ok(store) = crate::package::Store::open(&new.state_dir) {
        store.retain(&keep);
    }
    state
        .registry
        .set_batch_limits(crate::server::batch_limits(&new));
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
    // Warm the (possibly new) default model in the background, as at start-up, unless memory
    // pressure forbids background loads; the first request loads it then.
    if !state.registry.governor.under_pressure() {
        let warm = state.clone();
        tokio::spawn(async move {
            let _ = warm.registry.acquire(&default).await;
        });
    }
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

/// Package files in the configured directories.
pub fn candidates(settings: &Settings) -> Vec<crate::registry::Candidate> {
    let mut c = find_packages(&settings.models.bundled_dir, Source::Bundled);
    c.extend(find_packages(
        &settings.models.package_dir,
        Source::SideLoaded,
    ));
    c
}

/// Dotted keys whose values differ between two configurations.
pub fn changed_keys(old: &Settings, new: &Settings) -> Vec<String> {
    fn leaves(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<(String, serde_yaml::Value)>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                for (k, v) in m {
                    let key = format!("{prefix}{}", k.as_str().unwrap_or_default());
                    leaves(v, &format!("{key}."), out);
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
    a.into_iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .map(|(_, (k, _))| k)
        .collect()
}

/// Whether an event path concerns the configuration: the main file, a drop-in, or conf.d.
fn relevant(dir: &Path, path: &Path) -> bool {
    let conf_d = dir.join("conf.d");
    path == dir.join("caxton.yaml")
        || path == conf_d
        || (path.parent() == Some(conf_d.as_path())
            && path.extension().is_some_and(|e| e == "yaml"))
}

/// Watches the config directory and reloads after each quiet burst of relevant changes. The
/// returned watcher must be kept alive.
pub fn watch(
    state: Arc<AppState>,
    reloader: Reloader,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = reloader.dir.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watch_dir = dir.clone();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if event.paths.iter().any(|p| relevant(&watch_dir, p)) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("config directory watch error: {e}"),
        })?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            let first = Instant::now();
            loop {
                match tokio::time::timeout(QUIET, rx.recv()).await {
                    Ok(Some(())) if first.elapsed() < MAX_DELAY => continue,
                    Ok(None) => return,
                    _ => break,
                }
            }
            reloader.reload(&state, Trigger::FileChange).await;
        }
    });
    Ok(watcher)
}

/// Reloads on every SIGHUP.
pub fn on_sighup(state: Arc<AppState>, reloader: Reloader) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            reloader.reload(&state, Trigger::Sighup).await;
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

    #[test]
    fn only_config_files_are_relevant() {
        let d = Path::new("/etc/caxton");
        assert!(relevant(d, Path::new("/etc/caxton/caxton.yaml")));
        assert!(relevant(d, Path::new("/etc/caxton/conf.d/10-x.yaml")));
        assert!(relevant(d, Path::new("/etc/caxton/conf.d")));
        assert!(!relevant(d, Path::new("/etc/caxton/conf.d/.10-x.yaml.swp")));
        assert!(!relevant(d, Path::new("/etc/caxton/other.txt")));
    }
}
