//! The config directory's watch: a burst of changes becomes one reload once the directory is
//! quiet and no config file is still open for writing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};

use super::reload_unless_superseded;
use crate::state::{AppState, Trigger};

/// How long the directory must be quiet before a burst of changes becomes one reload.
const QUIET: Duration = Duration::from_millis(200);
/// A burst longer than this reloads anyway, so a steady trickle of writes cannot starve it.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// How long a config file open for writing may hold the reload back. A writer that keeps a
/// file open longer than this (a stalled copy) gets its half-written file read, as before.
const WRITER_WAIT: Duration = Duration::from_secs(10);

/// Watches the config directory and reloads after each quiet burst of relevant changes, and
/// once as soon as the watch is armed (see below). The returned watcher must be kept alive.
pub fn watch(state: Arc<AppState>, dir: PathBuf) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    // Each message: whether a config file is open for writing after the event.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let armed = tx.clone();
    let watch_dir = dir.clone();
    let watching = Arc::downgrade(&state);
    // `api.token_file` in the directory (as /etc/caxton/api-token): writing a new token
    // applies it as a drop-in would.
    let token_file = move |p: &Path| {
        watching
            .upgrade()
            .is_some_and(|s| s.settings().api.token_file.as_deref() == Some(p))
    };
    let mut writers = Writers::default();
    // Relevant events so far: a reload whose reading overlapped one applies nothing (the
    // next quiet burst reads again). A writer that truncates a file just as the reload after
    // its previous write starts reading would otherwise have the empty file applied (issue
    // 61's tests/run: a refused default reranker's drop-in, rewritten in place, read empty,
    // and the default reranker went away).
    let changes = Arc::new(AtomicU64::new(0));
    let counted = changes.clone();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            // Opening or reading a file is no change: the reload itself opens every file, and
            // counting that as one made a refused drop-in reload (and log its refusal) five
            // times a second for as long as it stayed (issue 32's soak: 3,286 lines in an hour
            // for 23 bad drop-ins). A file closed after writing is one.
            Ok(event) if is_reading(&event.kind) => {}
            Ok(event) => {
                let paths: Vec<&PathBuf> = event
                    .paths
                    .iter()
                    .filter(|p| relevant(&watch_dir, p) || token_file(p))
                    .collect();
                if !paths.is_empty() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    writers.see(&event.kind, &paths);
                    let _ = tx.send(writers.busy());
                }
            }
            Err(e) => tracing::warn!("config directory watch error: {e}"),
        })?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
    // The configuration in force was read at exec, before this watch existed: a file written
    // in between (a playbook's drop-in while an upgrade restarts the service) raised no event
    // here. Read the directory once more now that every later write raises one; an unchanged
    // result applies nothing and logs nothing.
    changes.fetch_add(1, Ordering::SeqCst);
    let _ = armed.send(false);
    tokio::spawn(async move {
        // Messages taken from `rx`: a change counted but not yet taken came after them.
        let mut taken = 0u64;
        while let Some(mut busy) = rx.recv().await {
            taken += 1;
            let first = Instant::now();
            loop {
                // When the last change was taken: a config file modified after it is a
                // change whose event may still be on its way.
                let mut last_taken = SystemTime::now();
                let mut forced = false;
                loop {
                    let limit = if busy { WRITER_WAIT } else { MAX_DELAY };
                    match tokio::time::timeout(QUIET, rx.recv()).await {
                        Ok(None) => return,
                        Ok(Some(now_busy)) => {
                            taken += 1;
                            last_taken = SystemTime::now();
                            busy = now_busy;
                        }
                        // Quiet, but a file is still open for writing: `fs::write`, `cp`
                        // and shell redirection truncate it first, and an empty drop-in is
                        // valid, so reading it now would apply what nobody wrote (issue
                        // 52's CI: a writer stalled 200 ms between truncating and writing,
                        // and the default reranker it was refusing to change went away).
                        Err(_) if busy => {}
                        Err(_) => break,
                    }
                    if first.elapsed() >= limit {
                        if busy {
                            tracing::warn!(
                                "a config file has been open for writing for {}s; reloading with what it holds now",
                                WRITER_WAIT.as_secs()
                            );
                        }
                        forced = true;
                        break;
                    }
                }
                // A writer that truncates a file just as this read starts has its empty file
                // read (issue 61's tests/run, twice: a refused default reranker's drop-in
                // rewritten in place, and the default reranker went away). Such a read is
                // superseded: by a change counted but not yet taken, or, since its event may
                // lag on a busy machine, by a file modified after the last change taken. It
                // applies nothing and the files are read again once quiet. A forced reload
                // (a writer past its wait, a burst past its delay) takes what it reads.
                let was_superseded = AtomicBool::new(false);
                let superseded = || {
                    let late = changes.load(Ordering::SeqCst) != taken
                        || (!forced && modified_since(&dir, last_taken));
                    was_superseded.store(late, Ordering::SeqCst);
                    late
                };
                reload_unless_superseded(&state, &dir, Trigger::FileChange, &superseded).await;
                if !was_superseded.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    });
    Ok(watcher)
}

/// The config files written in place and not yet closed by their writer, with when each was
/// first seen so.
#[derive(Default)]
struct Writers(HashMap<PathBuf, Instant>);

impl Writers {
    fn see(&mut self, kind: &EventKind, paths: &[&PathBuf]) {
        for &path in paths {
            match kind {
                EventKind::Create(CreateKind::File | CreateKind::Any)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                    self.0.entry(path.clone()).or_insert_with(Instant::now);
                }
                // Closed, removed, or renamed away or into place (a rename moves a file
                // that is complete: its writer closed it under the old name).
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_)) => {
                    self.0.remove(path);
                }
                _ => {}
            }
        }
    }

    /// Whether a file is still being written: one gone since (its folder removed whole), or
    /// open past [`WRITER_WAIT`] (its writer stalled), no longer counts, so it cannot hold
    /// back every later reload.
    fn busy(&mut self) -> bool {
        self.0
            .retain(|path, since| since.elapsed() < WRITER_WAIT && path.exists());
        !self.0.is_empty()
    }
}

/// Whether an event path concerns the configuration: the main file, a drop-in, or conf.d.
fn relevant(dir: &Path, path: &Path) -> bool {
    let conf_d = dir.join("conf.d");
    path == dir.join("caxton.yaml")
        || path == conf_d
        || (path.parent() == Some(conf_d.as_path())
            && path.extension().is_some_and(|e| e == "yaml"))
}

/// Whether the main file or a drop-in was modified after `since` (and not after a second
/// from now: a file stamped in the future, by a clock set back or by hand, must not hold
/// every reload back).
fn modified_since(dir: &Path, since: SystemTime) -> bool {
    let horizon = SystemTime::now() + Duration::from_secs(1);
    let drop_ins = std::fs::read_dir(dir.join("conf.d"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    std::iter::once(dir.join("caxton.yaml"))
        .chain(drop_ins)
        .filter(|p| relevant(dir, p))
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .any(|t| t > since && t < horizon)
}

/// Whether a notify event only says a file was opened, read or closed after reading.
fn is_reading(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(kind, EventKind::Access(a) if *a != AccessKind::Close(AccessMode::Write))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_a_file_is_no_change_but_closing_it_after_writing_is() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
        assert!(is_reading(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_reading(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_reading(&EventKind::Access(AccessKind::Read)));
        assert!(!is_reading(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_reading(&EventKind::Modify(ModifyKind::Any)));
        assert!(!is_reading(&EventKind::Create(CreateKind::File)));
    }

    #[test]
    fn a_config_file_modified_after_the_last_change_taken_supersedes_a_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).expect("mkdir");
        std::fs::write(conf_d.join("50-a.yaml"), "").expect("write");
        let taken = SystemTime::now() + Duration::from_millis(20);
        assert!(!modified_since(dir.path(), taken), "written before");
        let file = std::fs::File::options()
            .write(true)
            .open(conf_d.join("50-a.yaml"))
            .expect("open");
        file.set_modified(taken + Duration::from_millis(10))
            .expect("stamp");
        assert!(modified_since(dir.path(), taken), "written after");
        // Not a config file, or stamped an hour ahead: no.
        file.set_modified(taken - Duration::from_secs(1))
            .expect("stamp");
        std::fs::write(conf_d.join("notes.txt"), "").expect("write");
        let later = std::fs::File::options()
            .write(true)
            .open(conf_d.join("notes.txt"))
            .expect("open");
        later
            .set_modified(taken + Duration::from_millis(10))
            .expect("stamp");
        assert!(
            !modified_since(dir.path(), taken),
            "a file that is not a drop-in"
        );
        file.set_modified(SystemTime::now() + Duration::from_secs(3600))
            .expect("stamp");
        assert!(!modified_since(dir.path(), taken), "stamped in the future");
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
    #[test]
    fn a_file_is_being_written_from_its_first_write_until_its_writer_closes_it() {
        use notify::event::{DataChange, RemoveKind, RenameMode};
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("50-a.yaml"), dir.path().join("60-b.yaml"));
        for p in [&a, &b] {
            std::fs::write(p, "").expect("write");
        }
        let mut w = Writers::default();
        // fs::write on an existing file: truncated (a data change), written, closed.
        w.see(&EventKind::Modify(ModifyKind::Data(DataChange::Any)), &[&a]);
        assert!(w.busy());
        w.see(
            &EventKind::Access(AccessKind::Close(AccessMode::Write)),
            &[&a],
        );
        assert!(!w.busy());
        // Two files: busy until both are closed.
        w.see(&EventKind::Create(CreateKind::File), &[&a]);
        w.see(&EventKind::Modify(ModifyKind::Any), &[&b]);
        w.see(
            &EventKind::Access(AccessKind::Close(AccessMode::Write)),
            &[&a],
        );
        assert!(w.busy());
        w.see(&EventKind::Remove(RemoveKind::File), &[&b]);
        assert!(!w.busy());
        // Renamed into place: complete at once; metadata and folders are no write.
        w.see(&EventKind::Modify(ModifyKind::Name(RenameMode::To)), &[&a]);
        w.see(
            &EventKind::Modify(ModifyKind::Metadata(
                notify::event::MetadataKind::Permissions,
            )),
            &[&a],
        );
        w.see(&EventKind::Create(CreateKind::Folder), &[&b]);
        assert!(!w.busy());
        // A file gone without its own event (its folder removed whole) no longer counts.
        w.see(&EventKind::Modify(ModifyKind::Any), &[&b]);
        assert!(w.busy());
        std::fs::remove_file(&b).expect("rm");
        assert!(!w.busy());
    }
}
