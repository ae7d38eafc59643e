//! sd-notify messages to systemd. Each is a no-op when not run by systemd (`NOTIFY_SOCKET`
//! unset), and a failure to notify is logged, never fatal.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=...`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `EXTEND_TIMEOUT_USEC`: the job under way (start-up, reload, stop) may take `by` more
/// before systemd gives up on it. Sent before each package is verified or unpacked, so that
/// rebuilding a store on a slow card after a power cut is not killed by the start timeout and
/// started over again, while a hang still is.
pub fn extend_timeout(by: std::time::Duration) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

/// `WATCHDOG=1`.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing in-flight requests"),
    ]);
}

/// `RELOADING=1` with `MONOTONIC_USEC`, as `Type=notify-reload` expects (and harmless under
/// `Type=notify`).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading configuration"),
        ]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}
