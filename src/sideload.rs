//! Side-loading: watches `models.package_dir` (following it through a reload, and through the
//! directory being created, deleted or recreated), verifies a dropped file once it is complete,
//! and re-validates the store on `models.validation_interval`. Every change ends in a rescan.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::package::Store;
use crate::package::settle::{Change, Settler, package_of};
use crate::registry::{candidates, signature_policy};
use crate::state::{AppState, Health};

/// How long a closed or renamed-in file must see no further event before it is verified.
const QUIET: Duration = Duration::from_millis(500);
/// How often pending files and the directory itself are looked at.
const TICK: Duration = Duration::from_millis(250);

/// Verifies the package directories again and puts the result in force, leaving files that are
/// still being written alone. `force` re-reads files whose stamp did not change.
pub async fn rescan(state: &Arc<AppState>, force: bool) {
    let _exclusive = state.exclusive_scan().await;
    let settings = state.settings();
    let registry = state.registry.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let store = Store::open(&settings.state_dir)
            .map_err(|e| format!("cannot open the model store: {e}"))?
            .bounded(settings.store.max_size);
        registry.scan(
            &store,
            &candidates(&settings),
            &signature_policy(&settings),
            force,
        );
        Ok(())
    })
    .await;
    match result {
        Ok(Ok(())) => refresh_health(state),
        Ok(Err(e)) => tracing::error!(caxton_event = "rescan_failed", "{e}"),
        Err(e) => tracing::error!(
            caxton_event = "rescan_failed",
            "package rescan panicked: {e}"
        ),
    }
}

/// Serving while some model can serve; unavailable (with the reason) when none can.
pub fn refresh_health(state: &AppState) {
    if matches!(state.health(), Health::Starting) {
        return;
    }
    let settings = state.settings();
    if state.registry.ids().is_empty() {
        state.set_health(Health::Unavailable(format!(
            "no verified model package in {} or {}",
            settings.models.bundled_dir.display(),
            settings.models.package_dir.display()
        )));
    } else {
        if state.registry.get(&settings.models.default).is_none() {
            tracing::error!(
                caxton_event = "default_model_missing",
                caxton_model = %settings.models.default,
                "the default model {} has no verified package any more; requests naming another model still work",
                settings.models.default
            );
        }
        state.set_health(Health::Serving);
    }
    state.report_status();
}

fn classify(kind: &EventKind) -> Option<Change> {
    match kind {
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => Some(Change::Written),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Change::Completed),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
            Some(Change::Removed)
        }
        EventKind::Modify(ModifyKind::Name(_)) => Some(Change::Completed),
        EventKind::Modify(ModifyKind::Metadata(_)) | EventKind::Modify(ModifyKind::Any) => {
            Some(Change::Written)
        }
        _ => None,
    }
}

fn stamp(path: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.mtime(), m.mtime_nsec()))
}

fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// Starts the package-directory watcher and the periodic re-validation.
pub fn spawn(state: Arc<AppState>) -> notify::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(PathBuf, Change)>();
    let watcher = package_watcher(tx)?;
    tokio::spawn(watch_packages(state.clone(), watcher, rx));
    tokio::spawn(revalidate_periodically(state));
    Ok(())
}

/// A watcher that sends each change to a package file down `tx`.
fn package_watcher(tx: UnboundedSender<(PathBuf, Change)>) -> notify::Result<RecommendedWatcher> {
    notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            if let Some(change) = classify(&event.kind) {
                for path in &event.paths {
                    if let Some(pkg) = package_of(path) {
                        let _ = tx.send((pkg, change));
                    }
                }
            }
        }
        Err(e) => tracing::warn!("package directory watch error: {e}"),
    })
}

/// Notes the changes `rx` brings and, every [`TICK`], follows the package directory and
/// rescans once a file has settled or the directory changed.
async fn watch_packages(
    state: Arc<AppState>,
    mut watcher: RecommendedWatcher,
    mut rx: UnboundedReceiver<(PathBuf, Change)>,
) {
    let mut watched: Option<(PathBuf, (u64, u64))> = None;
    let mut settler = Settler::new(QUIET, state.settings().models.settle_time.0);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            Some((path, change)) = rx.recv() => {
                settler.note(path, change, Instant::now());
                continue;
            }
            _ = tick.tick() => {}
        }
        let settings = state.settings();
        settler.set_settle(settings.models.settle_time.0);
        let mut rescan_now = follow_dir(&mut watcher, &mut watched, &settings.models.package_dir);
        if !settler.is_empty() {
            let ready = settler.take_ready(Instant::now(), stamp);
            if !ready.is_empty() {
                tracing::debug!("complete: {ready:?}");
                rescan_now = true;
            }
        }
        state.registry.set_pending(settler.pending());
        if rescan_now {
            rescan(&state, false).await;
        }
    }
}

/// Follows the directory: created, deleted, recreated, or moved by a reload. True when what
/// is watched changed, so the directory is rescanned.
fn follow_dir(
    watcher: &mut RecommendedWatcher,
    watched: &mut Option<(PathBuf, (u64, u64))>,
    dir: &Path,
) -> bool {
    let identity = dir_identity(dir);
    let current = watched.as_ref().map(|(d, id)| (d.clone(), *id));
    if current.as_ref().map(|(d, id)| (d.as_path(), Some(*id))) == Some((dir, identity)) {
        return false;
    }
    if let Some((old, _)) = &current {
        let _ = watcher.unwatch(old);
    }
    *watched = None;
    if let Some(id) = identity {
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::info!("watching {} for side-loaded packages", dir.display());
                *watched = Some((dir.to_path_buf(), id));
            }
            Err(e) => tracing::warn!("cannot watch {}: {e}", dir.display()),
        }
    }
    current.is_some() || watched.is_some()
}

/// Re-verifies the store every `models.validation_interval`, as it is at each wait.
async fn revalidate_periodically(state: Arc<AppState>) {
    loop {
        let interval = state.settings().models.validation_interval.0;
        tokio::time::sleep(interval).await;
        tracing::info!(
            caxton_event = "store_revalidation",
            "re-validating the model store"
        );
        rescan(&state, true).await;
    }
}
