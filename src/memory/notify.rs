//! The kernel's own memory notifications, so the monitor reads at once when usage crosses a
//! threshold instead of at its next poll: on cgroup v1, `cgroup.event_control` usage
//! thresholds (at each limited level's pressure and critical thresholds) and OOM events; on
//! cgroup v2, changes of `memory.events` (the `high`, `max` and `oom` counters) at each
//! limited level. They only wake the monitor; its reading decides. Where they cannot be
//! armed (a read-only cgroup filesystem, say), polling alone carries on.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::hierarchy::{Kind, Level, Thresholds};
use super::pressure::TriggerEvents;

/// What a watch is armed for: the files and thresholds, so a change of limits re-arms it.
pub type Key = Vec<(PathBuf, u64)>;

/// The armed notifications and the thread that waits on them; dropping it stops the thread
/// (and closes the eventfds, which unregisters the v1 events).
pub struct KernelWatch {
    /// Woken on every notification.
    pub events: Arc<TriggerEvents>,
    /// What is watched, in words.
    pub detail: String,
    key: Key,
    _stop: OwnedFd,
}

/// One file descriptor the thread waits on.
enum Source {
    /// A v1 eventfd: readable when the event fired.
    Event(EventFd),
    /// A v2 `memory.events`: `POLLPRI` when it changed, re-armed by reading it.
    Kernfs(std::fs::File),
}

/// What `levels` call for: v1 usage thresholds at shed and critical levels, v2 levels whose
/// `memory.events` to watch.
pub fn key(levels: &[Level], t: Thresholds) -> Key {
    let mut key = Vec::new();
    for l in levels {
        match (l.kind, l.soft_bytes) {
            (Kind::V1, Some(limit)) => {
                key.push((l.path.clone(), (limit as f64 * t.shed_at) as u64));
                key.push((l.path.clone(), (limit as f64 * t.unload_all_at) as u64));
            }
            (Kind::V2, Some(_)) => key.push((l.path.clone(), 0)),
            _ => {}
        }
    }
    key
}

impl KernelWatch {
    /// Whether the watch is armed for `key`.
    pub fn is_for(&self, key: &Key) -> bool {
        self.key == *key
    }

    /// Arms every notification `key` names and starts the waiting thread. Fails, saying why,
    /// when nothing could be armed.
    pub fn start(key: Key) -> Result<KernelWatch, String> {
        let mut sources = Vec::new();
        let mut armed = Vec::new();
        let mut errors = Vec::new();
        let mut oom_done: Vec<PathBuf> = Vec::new();
        for (dir, threshold) in &key {
            let result = if dir.join("memory.usage_in_bytes").exists() {
                let usage = v1_event(dir, "memory.usage_in_bytes", Some(*threshold)).map(|e| {
                    armed.push(format!(
                        "usage {} MiB in {}",
                        threshold >> 20,
                        dir.display()
                    ));
                    sources.push(e);
                });
                if !oom_done.contains(dir) {
                    oom_done.push(dir.clone());
                    if let Ok(e) = v1_event(dir, "memory.oom_control", None) {
                        sources.push(e);
                    }
                }
                usage
            } else {
                std::fs::File::open(dir.join("memory.events"))
                    .map(|f| {
                        armed.push(format!("{}", dir.join("memory.events").display()));
                        sources.push(Source::Kernfs(f));
                    })
                    .map_err(|e| format!("{}: {e}", dir.join("memory.events").display()))
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        if sources.is_empty() {
            return Err(if errors.is_empty() {
                "no limited cgroup to watch".into()
            } else {
                errors.join("; ")
            });
        }
        let (stop_rx, stop_tx) =
            nix::unistd::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let events = Arc::new(TriggerEvents::default());
        let thread_events = events.clone();
        std::thread::Builder::new()
            .name("caxton-memevents".into())
            .spawn(move || wait(sources, stop_rx, &thread_events))
            .map_err(|e| format!("cannot start the notification thread: {e}"))?;
        Ok(KernelWatch {
            events,
            detail: armed.join(", "),
            key,
            _stop: stop_tx,
        })
    }
}

/// Registers an eventfd for `file` of the v1 group `dir` (with a usage threshold, or none for
/// `memory.oom_control`).
fn v1_event(dir: &Path, file: &str, threshold: Option<u64>) -> Result<Source, String> {
    use std::os::fd::AsRawFd;
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| format!("eventfd: {e}"))?;
    let target = std::fs::File::open(dir.join(file))
        .map_err(|e| format!("{}: {e}", dir.join(file).display()))?;
    let line = match threshold {
        Some(t) => format!("{} {} {t}", efd.as_raw_fd(), target.as_raw_fd()),
        None => format!("{} {}", efd.as_raw_fd(), target.as_raw_fd()),
    };
    let control = dir.join("cgroup.event_control");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&control)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| format!("cannot register with {}: {e}", control.display()))?;
    // The kernel holds its own reference to the target once registered.
    drop(target);
    Ok(Source::Event(efd))
}

fn wait(mut sources: Vec<Source>, stop: OwnedFd, events: &TriggerEvents) {
    let mut buf = [0u8; 1024];
    loop {
        let ready: Vec<PollFlags> = {
            let mut fds: Vec<PollFd> = sources
                .iter()
                .map(|s| match s {
                    Source::Event(e) => PollFd::new(e.as_fd(), PollFlags::POLLIN),
                    Source::Kernfs(f) => PollFd::new(f.as_fd(), PollFlags::POLLPRI),
                })
                .collect();
            fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("memory notifications stopped: poll failed: {e}");
                    return;
                }
            }
            fds.iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect()
        };
        if ready.last().is_some_and(|r| !r.is_empty()) {
            return;
        }
        let mut fired = false;
        for (s, r) in sources.iter_mut().zip(&ready) {
            if r.is_empty() {
                continue;
            }
            fired = true;
            match s {
                Source::Event(e) => {
                    let _ = e.read();
                }
                Source::Kernfs(f) => {
                    // Reading the file acknowledges the change, so the next poll waits again.
                    let _ = f.rewind().and_then(|_| f.read(&mut buf));
                }
            }
        }
        if fired {
            events.count.fetch_add(1, Ordering::Relaxed);
            events.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(kind: Kind, path: &str, limit: Option<u64>) -> Level {
        Level {
            kind,
            path: path.into(),
            own: false,
            soft_bytes: limit,
            hard_bytes: limit,
            working_set_bytes: 0,
            oom_kills: None,
        }
    }

    #[test]
    fn thresholds_are_armed_at_each_limited_level() {
        let t = Thresholds {
            shed_at: 0.5,
            unload_all_at: 0.75,
            reserve: 0,
        };
        let levels = [
            level(Kind::V1, "/m/own", None),
            level(Kind::V1, "/m/parent", Some(400)),
            level(Kind::V2, "/u/slice", Some(1000)),
            level(Kind::System, "/proc/meminfo", Some(8000)),
        ];
        assert_eq!(
            key(&levels, t),
            [
                (PathBuf::from("/m/parent"), 200),
                (PathBuf::from("/m/parent"), 300),
                (PathBuf::from("/u/slice"), 0)
            ]
        );
    }

    #[test]
    fn nothing_to_arm_says_so() {
        let e = KernelWatch::start(Vec::new()).err();
        assert_eq!(e.as_deref(), Some("no limited cgroup to watch"));
    }
}
