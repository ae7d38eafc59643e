//! systemd's watchdog (`WatchdogSec=`): `WATCHDOG=1` is sent only after every loaded model's
//! engine thread has made a round trip, so a wedged engine (or a stopped process) stops the
//! pings and systemd restarts the daemon. A timer that always fired would prove nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::state::AppState;

/// Starts the watchdog loop when systemd asked for one (`WATCHDOG_USEC` for this pid).
pub fn spawn(state: Arc<AppState>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    tracing::info!("systemd watchdog every {period:?}: pinging after each engine round trip");
    tokio::spawn(run(state, period));
}

/// Whether every loaded model's engine answers within `timeout`: `Err` lists those that
/// do not.
pub async fn check(state: &AppState, timeout: Duration) -> Result<(), Vec<String>> {
    let mut checks = tokio::task::JoinSet::new();
    for model in state.registry.loaded_models() {
        checks.spawn(async move { model.alive(timeout).await });
    }
    let mut problems = Vec::new();
    while let Some(result) = checks.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(e),
            Err(e) => problems.push(format!("an engine check panicked: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

async fn run(state: Arc<AppState>, period: Duration) {
    // Ping twice per period, as sd_watchdog_enabled(3) advises; each check may take a quarter.
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withheld = false;
    loop {
        tick.tick().await;
        match check(&state, period / 4).await {
            Ok(()) => {
                crate::systemd::watchdog();
                if withheld {
                    tracing::info!(
                        caxton_event = "watchdog_resumed",
                        "every engine answers again; watchdog pings resumed"
                    );
                    withheld = false;
                }
            }
            Err(problems) => {
                if !withheld {
                    tracing::error!(
                        caxton_event = "watchdog_withheld",
                        "withholding the watchdog ping, so systemd restarts caxtond if this lasts: {}",
                        problems.join("; ")
                    );
                }
                withheld = true;
            }
        }
    }
}
