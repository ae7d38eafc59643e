//! Deciding when a file dropped into the package directory is complete, from filesystem events
//! and stat results. Pure logic with the clock passed in, so tests can drive it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What an event says about a package file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Created or written to: may still be growing.
    Written,
    /// Closed after writing, or renamed into place: complete unless more events follow.
    Completed,
    /// Removed or renamed away.
    Removed,
}

/// Size and modification time, the stamp a settling file must keep.
pub type FileStamp = (u64, i64, i64);

#[derive(Debug)]
struct Pending {
    last_event: Instant,
    completed: bool,
    stamp: Option<FileStamp>,
    stable_since: Instant,
}

/// Files that changed and are not yet known to be complete.
#[derive(Debug)]
pub struct Settler {
    pending: HashMap<PathBuf, Pending>,
    quiet: Duration,
    settle: Duration,
}

/// The package file an event path concerns: the package itself or one of its sidecars
/// (`.sha256`, `.minisig`). Anything else is not ours.
pub fn package_of(path: &Path) -> Option<PathBuf> {
    let s = path.to_str()?;
    let base = s
        .strip_suffix(".sha256")
        .or_else(|| s.strip_suffix(".minisig"))
        .unwrap_or(s);
    base.ends_with(".tar.zst").then(|| PathBuf::from(base))
}

impl Settler {
    /// `quiet`: how long a completed file must see no further event; `settle`: how long an
    /// unannounced file's stamp must stay the same.
    pub fn new(quiet: Duration, settle: Duration) -> Settler {
        Settler {
            pending: HashMap::new(),
            quiet,
            settle,
        }
    }

    /// Changes the settle time (it is live configuration).
    pub fn set_settle(&mut self, settle: Duration) {
        self.settle = settle;
    }

    /// Records an event for `path` (a package file, see [`package_of`]).
    pub fn note(&mut self, path: PathBuf, change: Change, now: Instant) {
        let p = self.pending.entry(path).or_insert(Pending {
            last_event: now,
            completed: false,
            stamp: None,
            stable_since: now,
        });
        p.last_event = now;
        // A write after a close means another round of writing: wait for its close.
        p.completed = matches!(change, Change::Completed | Change::Removed);
        p.stable_since = now;
    }

    /// Files still being written; scans must leave them alone.
    pub fn pending(&self) -> HashSet<PathBuf> {
        self.pending.keys().cloned().collect()
    }

    /// Whether any file is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes the files that are complete at `now`. `stat` gives a file's stamp, `None` when it
    /// does not exist (a removed file is "complete": the scan will drop it).
    pub fn take_ready(
        &mut self,
        now: Instant,
        stat: impl Fn(&Path) -> Option<FileStamp>,
    ) -> Vec<PathBuf> {
        let mut ready = Vec::new();
        for (path, p) in self.pending.iter_mut() {
            let stamp = stat(path);
            let done = if stamp.is_none() {
                true
            } else if p.completed {
                now.duration_since(p.last_event) >= self.quiet
            } else {
                if stamp != p.stamp {
                    p.stamp = stamp;
                    p.stable_since = now;
                }
                now.duration_since(p.stable_since) >= self.settle
            };
            if done {
                ready.push(path.clone());
            }
        }
        for path in &ready {
            self.pending.remove(path);
        }
        ready.sort();
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(500);
    const SETTLE: Duration = Duration::from_secs(10);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn sidecars_map_to_their_package_and_other_files_are_ignored() {
        assert_eq!(
            package_of(Path::new("/d/m.tar.zst")),
            Some(PathBuf::from("/d/m.tar.zst"))
        );
        assert_eq!(
            package_of(Path::new("/d/m.tar.zst.sha256")),
            Some(PathBuf::from("/d/m.tar.zst"))
        );
        assert_eq!(
            package_of(Path::new("/d/m.tar.zst.minisig")),
            Some(PathBuf::from("/d/m.tar.zst"))
        );
        assert_eq!(package_of(Path::new("/d/m.tar.zst.part")), None);
        assert_eq!(package_of(Path::new("/d/notes.txt")), None);
    }

    #[test]
    fn a_closed_file_is_ready_after_the_quiet_period() {
        let t0 = Instant::now();
        let mut s = Settler::new(QUIET, SETTLE);
        let f = PathBuf::from("/d/m.tar.zst");
        s.note(f.clone(), Change::Written, t0);
        s.note(f.clone(), Change::Completed, at(t0, 100));
        let stat = |_: &Path| Some((10, 1, 0));
        assert!(s.take_ready(at(t0, 400), stat).is_empty());
        assert_eq!(s.take_ready(at(t0, 600), stat), vec![f]);
        assert!(s.is_empty());
    }

    #[test]
    fn a_slow_copy_is_not_ready_while_it_grows_even_without_events() {
        let t0 = Instant::now();
        let mut s = Settler::new(QUIET, SETTLE);
        let f = PathBuf::from("/d/m.tar.zst");
        s.note(f.clone(), Change::Written, t0);
        // Growing: the stamp changes at every look.
        for i in 1..30u64 {
            let size = i * 1000;
            assert!(
                s.take_ready(at(t0, i * 1000), |_| Some((size, i as i64, 0)))
                    .is_empty(),
                "step {i}"
            );
        }
        // Stops growing: ready once unchanged for the settle time.
        assert!(
            s.take_ready(at(t0, 35_000), |_| Some((29_000, 29, 0)))
                .is_empty()
        );
        assert_eq!(
            s.take_ready(at(t0, 45_000), |_| Some((29_000, 29, 0))),
            vec![f]
        );
    }

    #[test]
    fn writing_again_after_a_close_waits_for_the_next_close() {
        let t0 = Instant::now();
        let mut s = Settler::new(QUIET, SETTLE);
        let f = PathBuf::from("/d/m.tar.zst");
        s.note(f.clone(), Change::Completed, t0);
        s.note(f.clone(), Change::Written, at(t0, 100));
        let stat = |_: &Path| Some((10, 1, 0));
        assert!(s.take_ready(at(t0, 1000), stat).is_empty());
        assert_eq!(s.pending().len(), 1);
    }

    #[test]
    fn a_removed_file_is_ready_at_once() {
        let t0 = Instant::now();
        let mut s = Settler::new(QUIET, SETTLE);
        let f = PathBuf::from("/d/m.tar.zst");
        s.note(f.clone(), Change::Removed, t0);
        assert_eq!(s.take_ready(t0, |_| None), vec![f]);
    }
}
