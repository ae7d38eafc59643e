//! Logging set-up: human-readable text on stderr, filtered by `log.level` (or `RUST_LOG`).
//! Events carry structured fields (`caxton_event`, `caxton_model`, ...) that map onto journald
//! fields (`CAXTON_EVENT`, ...).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `level` comes from the validated config.
pub fn init(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
