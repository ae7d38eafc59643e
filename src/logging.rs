//! Logging set-up: human-readable text on stderr, filtered by `log.level` (or `RUST_LOG`, which
//! wins), changeable live on reload. Events carry structured fields (`caxton_event`,
//! `caxton_model`, ...) that map onto journald fields (`CAXTON_EVENT`, ...).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber; `level` comes from the validated config.
pub fn init(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
}

/// Applies a new `log.level`, unless `RUST_LOG` overrides it.
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(());
    }
    let filter = EnvFilter::try_new(level).map_err(|e| format!("{level:?}: {e}"))?;
    match FILTER.get() {
        Some(handle) => handle.modify(|f| *f = filter).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}
