//! Admission: whether a model may load next to those in memory, what must be shed for it
//! (only models past `memory.min_residency` and of no more value), or why not and whether
//! waiting may help.

use std::time::Duration;

use super::{Resident, mib, shed_order};

/// What bounds a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes all models may hold.
    pub budget: u64,
    /// Most models at once.
    pub max_models: usize,
    /// While a pressure episode lasts: model memory may not grow past this.
    pub ceiling: Option<u64>,
    /// Real room at the binding cgroup level (its pressure threshold less its working set,
    /// co-tenants included, less the reserve), and that level in words; `None` when no level
    /// could be read.
    pub room: Option<(i64, String)>,
    /// Room below the critical threshold of every level, for a load's brief peak.
    pub peak_room: Option<i64>,
    /// Room for a model loaded as the last resort (see `alone`): below every level's critical
    /// threshold less the reserve, with its load's brief peak below the hard limits.
    pub last_resort_room: Option<i64>,
    /// Room below every level's hard limit less the reserve, for a last-resort load's peak.
    pub hard_room: Option<i64>,
    /// Nothing of the model's fallback chain is loaded, so without this load its requests get
    /// nothing: the room is `last_resort_room` rather than `room` (the pressure threshold),
    /// and a stall signal's ceiling does not apply. A device never idles while a model fits.
    pub alone: bool,
    /// Bytes of shed models whose memory is not back yet: still held.
    pub releasing: u64,
    /// Now, on the policy's clock.
    pub now: Duration,
    /// A model loaded more recently than this is not evicted to make room.
    pub min_residency: Duration,
}

/// A load that cannot be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why, naming the numbers and what holds the memory.
    pub reason: String,
    /// When a retry may succeed.
    pub retry_after: Duration,
    /// Whether waiting may change the answer: models leave their residency, shed memory
    /// comes back, other processes free memory. `false` when only a change of configuration
    /// or an explicit unload would.
    pub wait: bool,
}

/// Decides whether `id` (priority `priority`, needing `need` bytes) may load next to
/// `loaded`: `Ok(victims)` lists the models to unload first (lowest value first; only models
/// of the same or lower priority, past `memory.min_residency`), or the refusal.
/// `retry_after` is what a refusal suggests when nothing sooner is known. A victim's memory
/// counts as room here; the caller loads only once it is really back.
pub fn admit(
    id: &str,
    priority: u8,
    need: u64,
    loaded: &[Resident],
    limits: &Limits,
    retry_after: Duration,
) -> Result<Vec<String>, Refusal> {
    // A stall's ceiling yields only when nothing at all is loaded: with another model
    // serving, lifting it would load and shed the same model once per cooldown.
    let cap = match limits.ceiling {
        Some(c) if !(limits.alone && loaded.is_empty()) => c.min(limits.budget),
        _ => limits.budget,
    };
    if need > limits.budget {
        return Err(Refusal {
            reason: format!(
                "model {id} needs about {} MiB, more than the whole memory budget of {} MiB; raise memory.budget (or the service's memory limit when it is auto)",
                mib(need),
                mib(limits.budget)
            ),
            retry_after,
            wait: false,
        });
    }
    let room = limits
        .room
        .as_ref()
        .map(|(r, _)| match limits.last_resort_room {
            Some(last) if limits.alone => last.max(*r),
            _ => *r,
        });
    let held: u64 = loaded.iter().map(|m| m.bytes).sum::<u64>() + limits.releasing;
    let mut used = held;
    let mut count = loaded.len();
    let mut gained: i64 = 0;
    let bound = |used: u64, count: usize, gained: i64| -> Option<Bound> {
        if count >= limits.max_models {
            Some(Bound::Count)
        } else if used + need > cap {
            Some(if cap < limits.budget {
                Bound::Ceiling
            } else {
                Bound::Budget
            })
        } else if room.is_some_and(|r| r + gained < need as i64) {
            Some(Bound::Room)
        } else {
            None
        }
    };
    // Shed memory still coming back counts as held: when it alone would make room, wait for
    // it rather than evict another model that is serving.
    let releasing = limits.releasing as i64;
    let after_release = |used: u64, count: usize, gained: i64| {
        bound(used - limits.releasing, count, gained + releasing).is_none()
    };
    if limits.releasing > 0
        && bound(used, count, gained).is_some()
        && after_release(used, count, gained)
    {
        return Err(Refusal {
            reason: format!(
                "model {id} cannot be loaded yet: {} MiB of shed models is still on its way back; retry shortly",
                mib(limits.releasing)
            ),
            retry_after: Duration::from_secs(1),
            wait: true,
        });
    }
    let mut victims = Vec::new();
    let mut held_back: Option<Duration> = None;
    for m in shed_order(loaded) {
        if bound(used, count, gained).is_none() {
            break;
        }
        if m.priority < priority && !m.guess {
            // Everything after this one is worth more still (guesses come first, whatever
            // their priority).
            break;
        }
        if let Some(left) = m.resident_for(limits.now, limits.min_residency) {
            held_back = Some(held_back.map_or(left, |h| h.min(left)));
            continue;
        }
        victims.push(m.id.clone());
        used -= m.bytes;
        count -= 1;
        gained += m.bytes as i64;
    }
    let Some(b) = bound(used, count, gained) else {
        return Ok(victims);
    };
    let after_release = limits.releasing > 0 && after_release(used, count, gained);
    let holders: Vec<String> = loaded
        .iter()
        .map(|m| {
            let why = if m.pinned {
                "pinned".to_string()
            } else {
                format!("priority {}", m.priority)
            };
            format!("{} {} MiB ({why})", m.id, mib(m.bytes))
        })
        .collect();
    let bound_text = match b {
        Bound::Count => format!(
            "memory.max_loaded_models ({}) are loaded",
            limits.max_models
        ),
        Bound::Ceiling => format!(
            "memory pressure holds model memory at {} MiB until it has been calm for a while",
            mib(cap)
        ),
        Bound::Budget => format!(
            "it needs about {} MiB and the budget of {} MiB has {} MiB free",
            mib(need),
            mib(limits.budget),
            mib(limits.budget.saturating_sub(held))
        ),
        Bound::Room => {
            let (_, from) = limits.room.clone().unwrap_or_default();
            let below = if limits.alone {
                "its critical threshold (less memory.reserve; nothing of its fallback chain is loaded, so it may use more than the pressure threshold leaves)"
            } else {
                "its pressure threshold (less memory.reserve)"
            };
            format!(
                "it needs about {} MiB and {from} has {} MiB of room below {below}",
                mib(need),
                (room.unwrap_or(0).max(0) as u64) >> 20
            )
        }
    };
    let (why_not, wait, retry) = if after_release {
        (
            format!(
                "{} MiB of shed models is still on its way back",
                mib(limits.releasing)
            ),
            true,
            Duration::from_secs(1),
        )
    } else if let Some(left) = held_back {
        (
            format!(
                "the models that could make room loaded less than memory.min_residency ({}) ago, for {:.1} s more",
                humantime::format_duration(limits.min_residency),
                left.as_secs_f64()
            ),
            true,
            left,
        )
    } else {
        (
            format!("nothing of priority {priority} or lower can make room"),
            b == Bound::Room,
            retry_after,
        )
    };
    Err(Refusal {
        reason: format!(
            "model {id} cannot be loaded now: {bound_text}, and {why_not} (loaded: {}); retry later, unload a model, or raise memory.budget",
            if holders.is_empty() {
                "none".to_string()
            } else {
                holders.join(", ")
            }
        ),
        retry_after: retry.max(Duration::from_secs(1)),
        wait,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Count,
    Ceiling,
    Budget,
    Room,
}
