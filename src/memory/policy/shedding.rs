//! Which models to shed: for an excess of memory (as few as cover it), for a stall signal
//! alone (one model of low value), and for idleness.

use std::time::Duration;

use super::{Resident, shed_order};

/// The models to shed so that `excess` bytes come back (lowest value first, models still in
/// their residency skipped unless `urgent`): as few as cover it, never more. Pinned models
/// never go, and the default and more valuable models go only when the rest does not cover it.
/// Unless `critical`, the last model loaded stays: pressure, even growing, never leaves the
/// device serving nothing (a model admitted as the last resort stays until memory is
/// critical; see `Limits::alone`). A pass's own memory reads as growth, so growth alone must
/// not shed the model serving it.
pub fn shed_for_excess(
    excess: u64,
    loaded: &[Resident],
    now: Duration,
    min_residency: Duration,
    urgent: bool,
    critical: bool,
) -> Vec<String> {
    let mut freed = 0;
    let mut victims = Vec::new();
    for m in shed_order(loaded) {
        if freed >= excess {
            break;
        }
        if !urgent && m.resident_for(now, min_residency).is_some() {
            continue;
        }
        if !critical && victims.len() + 1 >= loaded.len() {
            break;
        }
        freed += m.bytes;
        victims.push(m.id.clone());
    }
    victims
}

/// The model to shed for a stall signal alone (PSI or a trigger, while no limit is near): the
/// least valuable model of at most default priority `default_priority` that is not the default
/// model and is past its residency. A signal that may come from the whole host never costs
/// the device its default or more valuable models, nor its last model.
pub fn shed_for_signal(
    loaded: &[Resident],
    now: Duration,
    min_residency: Duration,
    default_priority: u8,
) -> Option<String> {
    if loaded.len() <= 1 {
        return None;
    }
    shed_order(loaded)
        .into_iter()
        .find(|m| {
            m.guess
                || !m.default
                    && m.priority >= default_priority
                    && m.resident_for(now, min_residency).is_none()
        })
        .map(|m| m.id.clone())
}

/// Loaded models whose idle limit has passed at `now`, with the limit of each (`None`: never).
pub fn idle_expired(now: Duration, loaded: &[(Resident, Option<Duration>)]) -> Vec<&Resident> {
    loaded
        .iter()
        .filter(|(m, limit)| {
            !m.pinned && limit.is_some_and(|l| now.saturating_sub(m.last_use) >= l)
        })
        .map(|(m, _)| m)
        .collect()
}
