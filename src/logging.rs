//! Logging set-up: to the journal with structured fields when stderr is the journal, otherwise
//! human-readable text on stderr; filtered by `log.level` (or `RUST_LOG`, which wins) and
//! changeable live on reload. Events carry fields such as `caxton_event` and `caxton_model`,
//! which become `CAXTON_EVENT` and `CAXTON_MODEL` in the journal, so
//! `journalctl -u caxton CAXTON_EVENT=model_unloaded` works.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Whether stderr is the journal: `$JOURNAL_STREAM` (`DEVICE:INODE`, set by systemd) names the
/// very file stderr is. Its mere presence is not enough: a child of a journald-logged process
/// inherits the variable with a different stderr.
pub fn is_journal_stream(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some((dev, ino))) = (journal_stream, stderr) else {
        return false;
    };
    let mut parts = value.trim().splitn(2, ':');
    let parsed = (
        parts.next().and_then(|d| d.parse::<u64>().ok()),
        parts.next().and_then(|i| i.parse::<u64>().ok()),
    );
    parsed == (Some(dev), Some(ino))
}

fn stderr_identity() -> Option<(u64, u64)> {
    let st = nix::sys::stat::fstat(std::io::stderr()).ok()?;
    #[allow(clippy::useless_conversion)] // dev_t and ino_t are narrower on some targets.
    Some((u64::from(st.st_dev), u64::from(st.st_ino)))
}

/// Installs the global subscriber; `level` comes from the validated config.
pub fn init(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    let journald = if is_journal_stream(journal_stream.as_deref(), stderr_identity()) {
        match tracing_journald::layer() {
            Ok(layer) => Some(
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("caxtond".to_string()),
            ),
            Err(e) => {
                eprintln!("caxtond: cannot reach the journal, logging to stderr: {e}");
                None
            }
        }
    } else {
        None
    };
    let text = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
    });
    if tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_detected_by_device_and_inode_not_by_presence() {
        assert!(is_journal_stream(Some("8:12345"), Some((8, 12345))));
        assert!(!is_journal_stream(Some("8:12345"), Some((8, 99))));
        assert!(!is_journal_stream(Some("garbage"), Some((8, 12345))));
        assert!(!is_journal_stream(None, Some((8, 12345))));
        assert!(!is_journal_stream(Some("8:12345"), None));
    }
}
