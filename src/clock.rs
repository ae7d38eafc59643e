//! The daemon's wall clock, for what depends on the time of day (usage habits and the
//! predictions made from them): the system's, or, for tests only, one that starts at the time
//! `CAXTON_TEST_CLOCK` gives (RFC 3339, e.g. `2026-11-23T08:55:00Z`) and runs at the normal
//! rate. The variable is read once, at start; a daemon running on it says so in its journal.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// The environment variable of the test clock.
pub const TEST_CLOCK_VAR: &str = "CAXTON_TEST_CLOCK";

static START: OnceLock<Option<(SystemTime, Instant)>> = OnceLock::new();

/// Reads `CAXTON_TEST_CLOCK` (once; later calls return the first answer): `Ok(None)` for the
/// system clock, the start time of the test clock, or why the value is not a time.
pub fn init() -> Result<Option<SystemTime>, String> {
    let mut error = None;
    let start = START.get_or_init(|| {
        let value = std::env::var(TEST_CLOCK_VAR).ok()?;
        match humantime::parse_rfc3339_weak(value.trim()) {
            Ok(t) => Some((t, Instant::now())),
            Err(e) => {
                error = Some(format!(
                    "{TEST_CLOCK_VAR}={value:?} is not an RFC 3339 time ({e}), e.g. 2026-11-23T08:55:00Z"
                ));
                None
            }
        }
    });
    match error {
        Some(e) => Err(e),
        None => Ok(start.map(|(t, _)| t)),
    }
}

/// The time now.
pub fn now() -> SystemTime {
    match START.get().copied().flatten() {
        Some((t, at)) => t + at.elapsed(),
        None => SystemTime::now(),
    }
}
