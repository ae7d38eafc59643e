//! Refused loads in the journal once per episode: under lasting memory pressure every request
//! for a model that cannot be loaded is refused, and one journal line per refusal was 34,023
//! lines in a minute on a contended device (issue 32). The first refusal of a model says why;
//! while refusals go on, one line a minute says how many more there were and the latest
//! reason; a model refused again after a quiet minute starts a new episode. The counter
//! (`caxton_admission_refusals_total`) still counts each one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one line per model this often while its refusals go on; this long without one
/// ends an episode.
const EVERY: Duration = Duration::from_secs(60);

/// The refusal episodes under way, by model id.
#[derive(Default)]
pub struct RefusalLog(Mutex<HashMap<String, Episode>>);

struct Episode {
    /// When the journal last heard of this model's refusals.
    logged: Instant,
    /// The last refusal.
    seen: Instant,
    /// Refusals since the journal last heard.
    unlogged: u64,
}

impl RefusalLog {
    /// Notes a refusal of `id` at `now`; returns the journal line to write, if one is due.
    pub fn note(&self, id: &str, reason: &str, now: Instant) -> Option<String> {
        let mut episodes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match episodes.get_mut(id) {
            Some(e) if now.saturating_duration_since(e.seen) < EVERY => {
                e.seen = now;
                e.unlogged += 1;
                if now.saturating_duration_since(e.logged) < EVERY {
                    return None;
                }
                let more = std::mem::take(&mut e.unlogged);
                e.logged = now;
                Some(format!(
                    "{reason} ({more} refusals of {id} in the last {}s)",
                    EVERY.as_secs()
                ))
            }
            _ => {
                episodes.insert(
                    id.to_string(),
                    Episode {
                        logged: now,
                        seen: now,
                        unlogged: 0,
                    },
                );
                Some(reason.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_starts_an_episode_then_one_a_minute_with_the_count() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.note("m", "no room", at(0)).as_deref(), Some("no room"));
        // A request every 2 ms for the rest of the minute: silent.
        for ms in (2..60_000).step_by(2) {
            assert_eq!(log.note("m", "no room", at(ms)), None, "at {ms} ms");
        }
        // Another model has its own episode.
        assert_eq!(log.note("n", "other", at(100)).as_deref(), Some("other"));
        // A minute after the first line: one line with the count.
        assert_eq!(
            log.note("m", "still no room", at(60_000)).as_deref(),
            Some("still no room (30000 refusals of m in the last 60s)")
        );
        assert_eq!(log.note("m", "still no room", at(60_002)), None);
        // A quiet minute ends the episode; the next refusal is a new one.
        assert_eq!(
            log.note("m", "again", at(121_000)).as_deref(),
            Some("again")
        );
    }
}
