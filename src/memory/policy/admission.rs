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
    /// When only models loaded less than `memory.min_residency` ago hold the room, and
    /// shedding them would make it: the time until the first of them may go.
    pub residency: Option<Duration>,
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
    let fit = Fit::new(need, loaded, limits);
    if need > limits.budget {
        return Err(Refusal {
            reason: format!(
                "model {id} needs about {} MiB, more than the whole memory budget of {} MiB; raise memory.budget (or the service's memory limit when it is auto)",
                mib(need),
                mib(limits.budget)
            ),
            retry_after,
            wait: false,
            residency: None,
        });
    }
    let start = Held {
        used: fit.held,
        count: loaded.len(),
        gained: 0,
    };
    // Shed memory still coming back counts as held: when it alone would make room, wait for
    // it rather than evict another model that is serving.
    if limits.releasing > 0 && fit.bound(start).is_some() && fit.fits_after_release(start) {
        return Err(Refusal {
            reason: format!(
                "model {id} cannot be loaded yet: {} MiB of shed models is still on its way back; retry shortly",
                mib(limits.releasing)
            ),
            retry_after: Duration::from_secs(1),
            wait: true,
            residency: None,
        });
    }
    let choice = fit.choose_victims(loaded, priority, start);
    match fit.bound(choice.left) {
        None => Ok(choice.victims),
        Some(b) => Err(fit.refusal(id, priority, b, &choice, loaded, retry_after)),
    }
}

/// What stops a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Count,
    Ceiling,
    Budget,
    Room,
}

/// A load's need against its limits.
struct Fit<'a> {
    need: u64,
    limits: &'a Limits,
    /// The budget, or a stall's ceiling below it.
    cap: u64,
    /// The room the load may take at the binding level.
    room: Option<i64>,
    /// Bytes the loaded models hold, shed memory not back yet included.
    held: u64,
}

/// What would stay in memory with the victims chosen so far gone.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// Bytes held.
    used: u64,
    /// Models loaded.
    count: usize,
    /// Bytes the victims give back, counted as room at the binding level.
    gained: i64,
}

/// The victims chosen, what is left with them gone, and the shortest `memory.min_residency`
/// left of the models that would make room but are still protected (`None` when none are, or
/// when even with them gone the load would not fit: waiting out their residency is no use).
struct Choice {
    victims: Vec<String>,
    left: Held,
    held_back: Option<Duration>,
}

impl<'a> Fit<'a> {
    fn new(need: u64, loaded: &[Resident], limits: &'a Limits) -> Fit<'a> {
        // A stall's ceiling yields only when nothing at all is loaded: with another model
        // serving, lifting it would load and shed the same model once per cooldown.
        let cap = match limits.ceiling {
            Some(c) if !(limits.alone && loaded.is_empty()) => c.min(limits.budget),
            _ => limits.budget,
        };
        let room = limits
            .room
            .as_ref()
            .map(|(r, _)| match limits.last_resort_room {
                Some(last) if limits.alone => last.max(*r),
                _ => *r,
            });
        let held = loaded.iter().map(|m| m.bytes).sum::<u64>() + limits.releasing;
        Fit {
            need,
            limits,
            cap,
            room,
            held,
        }
    }

    /// The first limit the load would break with `h` in memory; `None` when it fits.
    fn bound(&self, h: Held) -> Option<Bound> {
        if h.count >= self.limits.max_models {
            Some(Bound::Count)
        } else if h.used + self.need > self.cap {
            Some(if self.cap < self.limits.budget {
                Bound::Ceiling
            } else {
                Bound::Budget
            })
        } else if self.room.is_some_and(|r| r + h.gained < self.need as i64) {
            Some(Bound::Room)
        } else {
            None
        }
    }

    /// Whether the load fits with `h` in memory once the shed memory still coming back is.
    fn fits_after_release(&self, h: Held) -> bool {
        let releasing = self.limits.releasing;
        self.bound(Held {
            used: h.used - releasing,
            count: h.count,
            gained: h.gained + releasing as i64,
        })
        .is_none()
    }

    /// Unloads, in shed order, models of no more value than `priority` and past their
    /// residency, until the load fits or none is left.
    fn choose_victims(&self, loaded: &[Resident], priority: u8, mut left: Held) -> Choice {
        let mut victims = Vec::new();
        let mut held_back: Option<Duration> = None;
        // What would stay were the protected models shed too.
        let mut unprotected = left;
        let gone = |h: &mut Held, m: &Resident| {
            h.used -= m.bytes;
            h.count -= 1;
            h.gained += m.bytes as i64;
        };
        for m in shed_order(loaded) {
            if self.bound(left).is_none() {
                break;
            }
            if m.priority < priority && !m.guess {
                // Everything after this one is worth more still (guesses come first, whatever
                // their priority).
                break;
            }
            gone(&mut unprotected, m);
            if let Some(rest) = m.resident_for(self.limits.now, self.limits.min_residency) {
                held_back = Some(held_back.map_or(rest, |h| h.min(rest)));
                continue;
            }
            victims.push(m.id.clone());
            gone(&mut left, m);
        }
        if self.bound(unprotected).is_some() {
            held_back = None;
        }
        Choice {
            victims,
            left,
            held_back,
        }
    }

    /// The refusal of a load that `b` stops even with `choice`'s victims gone.
    fn refusal(
        &self,
        id: &str,
        priority: u8,
        b: Bound,
        choice: &Choice,
        loaded: &[Resident],
        retry_after: Duration,
    ) -> Refusal {
        let after_release = self.limits.releasing > 0 && self.fits_after_release(choice.left);
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
        let bound_text = self.describe(b);
        let (why_not, wait, retry) =
            self.why_nothing_helps(priority, b, after_release, choice.held_back, retry_after);
        let residency = choice.held_back.filter(|_| !after_release);
        Refusal {
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
            residency,
        }
    }

    /// The limit `b`, in words with its numbers.
    fn describe(&self, b: Bound) -> String {
        let limits = self.limits;
        match b {
            Bound::Count => format!(
                "memory.max_loaded_models ({}) are loaded",
                limits.max_models
            ),
            Bound::Ceiling => format!(
                "memory pressure holds model memory at {} MiB until it has been calm for a while",
                mib(self.cap)
            ),
            Bound::Budget => format!(
                "it needs about {} MiB and the budget of {} MiB has {} MiB free",
                mib(self.need),
                mib(limits.budget),
                mib(limits.budget.saturating_sub(self.held))
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
                    mib(self.need),
                    (self.room.unwrap_or(0).max(0) as u64) >> 20
                )
            }
        }
    }

    /// Why shedding cannot make room, whether waiting may, and when to retry.
    fn why_nothing_helps(
        &self,
        priority: u8,
        b: Bound,
        after_release: bool,
        held_back: Option<Duration>,
        retry_after: Duration,
    ) -> (String, bool, Duration) {
        if after_release {
            (
                format!(
                    "{} MiB of shed models is still on its way back",
                    mib(self.limits.releasing)
                ),
                true,
                Duration::from_secs(1),
            )
        } else if let Some(left) = held_back {
            (
                format!(
                    "the models that could make room loaded less than memory.min_residency ({}) ago, for {:.1} s more",
                    humantime::format_duration(self.limits.min_residency),
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
        }
    }
}
