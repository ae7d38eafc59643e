//! systemd's memory pressure protocol (`MemoryPressureWatch=`, systemd 254+): the file or
//! socket to watch from `$MEMORY_PRESSURE_WATCH` and the trigger to write from
//! `$MEMORY_PRESSURE_WRITE`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::trigger::Trigger;
use super::{Found, Probe, SourceKind};

/// systemd's memory pressure protocol: the path to watch and the bytes to write to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// `$MEMORY_PRESSURE_WATCH`.
    pub path: PathBuf,
    /// `$MEMORY_PRESSURE_WRITE`, base64-decoded.
    pub write: Vec<u8>,
}

/// Reads the protocol's variables: `None` when unset or `/dev/null` (systemd's way of saying
/// monitoring is off), an error naming the variable when it cannot be used.
pub fn watch_from_env(
    watch: Option<OsString>,
    write: Option<OsString>,
) -> Result<Option<Watch>, String> {
    let Some(path) = watch.filter(|w| !w.is_empty()) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    if path == Path::new("/dev/null") {
        return Ok(None);
    }
    use base64::Engine as _;
    let write = match write {
        None => Vec::new(),
        Some(w) => base64::engine::general_purpose::STANDARD
            .decode(w.to_string_lossy().trim())
            .map_err(|e| format!("MEMORY_PRESSURE_WRITE is not base64: {e}"))?,
    };
    Ok(Some(Watch { path, write }))
}

/// The systemd source, when the protocol's variables name something we can watch.
pub(super) fn probe(found: &Found, watch: Option<Watch>) -> Result<Probe, String> {
    let w = watch.ok_or(
        "$MEMORY_PRESSURE_WATCH is not set (MemoryPressureWatch= needs systemd 254 or later)",
    )?;
    let trigger = Trigger::start(&w.path, &w.write)?;
    let is_psi = w.path.file_name().is_some_and(|n| n == "memory.pressure");
    Ok(found.probe(
        SourceKind::Systemd,
        format!("systemd MemoryPressureWatch on {}", w.path.display()),
        is_psi.then(|| w.path.clone()).or(found.v2_psi.clone()),
        Some(trigger),
    ))
}
