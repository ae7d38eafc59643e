//! A trigger: a thread that waits on a watched file (a PSI file for `POLLPRI`, a FIFO or a
//! socket for data) and wakes the monitor each time it fires.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts trigger firings and wakes the monitor.
#[derive(Debug, Default)]
pub struct TriggerEvents {
    /// Firings so far.
    pub count: AtomicU64,
    /// Woken on each firing.
    pub notify: tokio::sync::Notify,
}

/// A running trigger: a thread polling the watched file. Dropping it stops the thread.
pub(super) struct Trigger {
    pub(super) events: Arc<TriggerEvents>,
    _stop: OwnedFd,
}

impl Trigger {
    /// Arms a trigger on `path` and starts the thread that waits on it. A PSI file gets
    /// `write` written and is polled for `POLLPRI`; a FIFO is polled for data; an `AF_UNIX`
    /// socket is connected, sent `write`, and polled for data (the three forms systemd's
    /// protocol allows).
    pub(super) fn start(path: &Path, write: &[u8]) -> Result<Trigger, String> {
        use nix::poll::PollFlags;
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (fd, flags): (OwnedFd, PollFlags) = if meta.file_type().is_socket() {
            let mut s = std::os::unix::net::UnixStream::connect(path)
                .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
            s.write_all(write)
                .map_err(|e| format!("cannot write the trigger to {}: {e}", path.display()))?;
            (s.into(), PollFlags::POLLIN)
        } else if meta.file_type().is_fifo() {
            // Read-write, so the FIFO never reports a hang-up while no writer has it open.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            (f.into(), PollFlags::POLLIN)
        } else {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| format!("cannot open {} read-write: {e}", path.display()))?;
            f.write_all(write).map_err(|e| {
                format!(
                    "the kernel refused the trigger {:?} on {}: {e}",
                    String::from_utf8_lossy(write),
                    path.display()
                )
            })?;
            (f.into(), PollFlags::POLLPRI)
        };
        let (stop_rx, stop_tx) =
            nix::unistd::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let events = Arc::new(TriggerEvents::default());
        let thread_events = events.clone();
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("caxton-pressure".into())
            .spawn(move || wait_for_triggers(fd, flags, stop_rx, &thread_events, &name))
            .map_err(|e| format!("cannot start the trigger thread: {e}"))?;
        Ok(Trigger {
            events,
            _stop: stop_tx,
        })
    }
}

fn wait_for_triggers(
    fd: OwnedFd,
    flags: nix::poll::PollFlags,
    stop: OwnedFd,
    events: &TriggerEvents,
    name: &str,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut file = std::fs::File::from(fd);
    let mut buf = [0u8; 512];
    loop {
        let (watched, stopped) = {
            let mut fds = [
                PollFd::new(file.as_fd(), flags),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("memory pressure trigger on {name} stopped: poll failed: {e}");
                    return;
                }
            }
            (
                fds[0].revents().unwrap_or(PollFlags::empty()),
                fds[1].revents().unwrap_or(PollFlags::empty()),
            )
        };
        if !stopped.is_empty() {
            return;
        }
        if watched.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
            tracing::warn!(
                "memory pressure trigger on {name} stopped: the file went away; polling continues"
            );
            return;
        }
        if watched.contains(PollFlags::POLLIN) {
            // FIFO or socket: drain what was written; end of stream ends the trigger.
            if let Ok(0) = file.read(&mut buf) {
                tracing::warn!("memory pressure trigger on {name} closed; polling continues");
                return;
            }
        }
        if watched.intersects(flags) {
            events.count.fetch_add(1, Ordering::Relaxed);
            events.notify.notify_one();
        }
    }
}
