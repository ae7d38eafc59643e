//! Our own PSI trigger on the daemon's cgroup v2 `memory.pressure`, and the PSI line format.

use super::trigger::Trigger;
use super::{Found, Probe, SourceKind};

/// The trigger we write ourselves: a stall of 200 ms within 2 s, systemd's default
/// (unprivileged triggers need windows that are multiples of 2 s).
pub const PSI_TRIGGER: &[u8] = b"some 200000 2000000";

/// The PSI source, when the daemon's cgroup v2 has a `memory.pressure` that takes a trigger.
pub(super) fn probe(found: &Found) -> Result<Probe, String> {
    let file = found
        .v2_psi
        .clone()
        .ok_or("the daemon's cgroup v2 has no memory.pressure")?;
    let trigger = Trigger::start(&file, PSI_TRIGGER)?;
    Ok(found.probe(
        SourceKind::Psi,
        format!("PSI trigger (some 200ms per 2s) on {}", file.display()),
        Some(file),
        Some(trigger),
    ))
}

/// `(avg10, total)` of the `some` line of a PSI file.
pub fn parse_psi_some(text: &str) -> Option<(f64, u64)> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let mut avg10 = None;
    let mut total = None;
    for field in line.split_whitespace().skip(1) {
        match field.split_once('=') {
            Some(("avg10", v)) => avg10 = v.parse().ok(),
            Some(("total", v)) => total = v.parse().ok(),
            _ => {}
        }
    }
    Some((avg10?, total?))
}
