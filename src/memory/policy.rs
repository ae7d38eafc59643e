//! The memory policy as pure functions of readings and a clock, so it can be tested on a
//! simulated clock: which model is worth least, whether a load fits the budget (and what must
//! go to make room), which models have been idle too long, and when pressure sheds.
//!
//! Times are offsets on one monotonic clock (`Duration` since the daemon started).

use std::time::Duration;

/// A model in memory, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident {
    /// Model id.
    pub id: String,
    /// 1 (most valuable) to 5 (shed first).
    pub priority: u8,
    /// Never unloaded by the policy.
    pub pinned: bool,
    /// The default model: among models of its priority it goes last, and a stall signal
    /// alone never sheds it.
    pub default: bool,
    /// When it finished loading.
    pub loaded_at: Duration,
    /// When a request last used it (or when it was loaded).
    pub last_use: Duration,
    /// Bytes it holds.
    pub bytes: u64,
}

impl Resident {
    /// Whether `memory.min_residency` still protects it at `now`; the time left if so.
    fn resident_for(&self, now: Duration, min_residency: Duration) -> Option<Duration> {
        let left = self
            .loaded_at
            .saturating_add(min_residency)
            .saturating_sub(now);
        (!left.is_zero()).then_some(left)
    }
}

/// Models the policy may unload, lowest value first: lowest priority (highest number), the
/// default model after the others of its priority, then least recently used, then the larger
/// one (it frees more). Pinned models never appear.
pub fn shed_order(models: &[Resident]) -> Vec<&Resident> {
    let mut order: Vec<&Resident> = models.iter().filter(|m| !m.pinned).collect();
    order.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.default.cmp(&b.default))
            .then(a.last_use.cmp(&b.last_use))
            .then(b.bytes.cmp(&a.bytes))
            .then(a.id.cmp(&b.id))
    });
    order
}

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
    let cap = limits
        .ceiling
        .map_or(limits.budget, |c| c.min(limits.budget));
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
    let room = limits.room.as_ref().map(|(r, _)| *r);
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
        if m.priority < priority {
            // Everything after this one is worth more still.
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
            let (r, from) = limits.room.clone().unwrap_or_default();
            format!(
                "it needs about {} MiB and {from} has {} MiB of room below its pressure threshold (less memory.reserve)",
                mib(need),
                (r.max(0) as u64) >> 20
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

/// The models to shed so that `excess` bytes come back (lowest value first, models still in
/// their residency skipped unless `urgent`): as few as cover it, never more. Pinned models
/// never go, and the default and more valuable models go only when the rest does not cover it.
pub fn shed_for_excess(
    excess: u64,
    loaded: &[Resident],
    now: Duration,
    min_residency: Duration,
    urgent: bool,
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
        freed += m.bytes;
        victims.push(m.id.clone());
    }
    victims
}

/// The model to shed for a stall signal alone (PSI or a trigger, while no limit is near): the
/// least valuable model of at most default priority `default_priority` that is not the default
/// model and is past its residency. A signal that may come from the whole host never costs
/// the device its default or more valuable models.
pub fn shed_for_signal(
    loaded: &[Resident],
    now: Duration,
    min_residency: Duration,
    default_priority: u8,
) -> Option<String> {
    shed_order(loaded)
        .into_iter()
        .find(|m| {
            !m.default
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

/// How strained memory is, from one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Nothing to do.
    Normal,
    /// A limit's pressure threshold is reached, or memory stalls: shed once it has lasted.
    Pressure,
    /// Near a hard limit (or an OOM kill): shed what brings the working set back, now.
    Critical,
}

/// What the shedder asks for after a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Nothing.
    Nothing,
    /// Shed what the reading's excess asks for ([`shed_for_excess`]); `urgent` overrides
    /// `memory.min_residency`.
    Excess {
        /// Memory is critical, or will be within `persist` at its current growth.
        urgent: bool,
    },
    /// A stall signal without a limit near: shed one model of low value
    /// ([`shed_for_signal`]).
    Signal,
}

/// The recent growth of a working set, so pressure that will reach the critical threshold
/// before `persist` is over sheds at once instead of waiting for it.
#[derive(Debug, Clone, Default)]
pub struct Trend {
    samples: std::collections::VecDeque<(Duration, u64)>,
    /// The level the samples are of: another level's working set is no growth.
    level: Option<String>,
}

/// How far back the trend looks.
const TREND_WINDOW: Duration = Duration::from_secs(2);

impl Trend {
    /// Adds the working set `bytes` of `level` read at `now`; a change of level starts over.
    pub fn push(&mut self, now: Duration, bytes: u64, level: &str) {
        if self.level.as_deref() != Some(level) {
            self.samples.clear();
            self.level = Some(level.to_string());
        }
        self.samples.push_back((now, bytes));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > TREND_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// When, at the growth seen over the window, the working set reaches `target`: `None`
    /// while it does not grow (or there are too few samples to tell).
    pub fn time_to(&self, target: u64) -> Option<Duration> {
        let (&(t0, b0), &(t1, b1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.saturating_sub(t0).as_secs_f64();
        if span < 0.3 || b1 <= b0 {
            return None;
        }
        let rate = (b1 - b0) as f64 / span;
        Some(Duration::from_secs_f64(
            target.saturating_sub(b1) as f64 / rate,
        ))
    }
}

/// One reading as the shedder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Grade of the working set against the limits (and OOM kills).
    pub usage: Level,
    /// Memory stalls now (PSI growing past its threshold).
    pub stall: bool,
    /// A kernel or systemd trigger fired since the last reading: a stall already lasted a
    /// trigger window, so no `persist` wait.
    pub triggered: bool,
    /// At its current growth the working set reaches the critical threshold within
    /// `persist`: waiting for pressure to persist would wait for the critical shed.
    pub imminent: bool,
}

/// Timings of the shedder (see `memory.pressure` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Pressure must last this long before the first shed.
    pub persist: Duration,
    /// At most one shed per this interval, unless memory is critical.
    pub cooldown: Duration,
    /// An episode ends after this long without pressure.
    pub calm: Duration,
}

/// Turns a stream of readings into shedding decisions, with hysteresis: pressure must last
/// before anything is shed, sheds are spaced (except when critical), and an episode of
/// pressure ends only after a calm period, during which nothing loads in the background.
/// Sheds for a stall signal also cap model memory at what they left until the episode ends
/// (the signal says nothing about how much memory would be enough); usage sheds need no cap,
/// since admission already keeps loads below the threshold that sheds.
#[derive(Debug, Clone, Default)]
pub struct Shedder {
    /// Start of the current unbroken run of pressure readings.
    streak_start: Option<Duration>,
    /// Last pressure reading of the episode, if one is active.
    last_pressure: Option<Duration>,
    last_shed: Option<Duration>,
    ceiling: Option<u64>,
}

impl Shedder {
    /// Takes one reading at `now`.
    pub fn observe(&mut self, now: Duration, o: Observation, t: Timings) -> Shed {
        let signal = o.stall || o.triggered;
        if o.usage == Level::Normal && !signal {
            self.streak_start = None;
            if self
                .last_pressure
                .is_some_and(|p| now.saturating_sub(p) >= t.calm)
            {
                self.last_pressure = None;
                self.ceiling = None;
            }
            return Shed::Nothing;
        }
        let streak = *self.streak_start.get_or_insert(now);
        self.last_pressure = Some(now);
        if o.usage == Level::Critical {
            self.last_shed = Some(now);
            return Shed::Excess { urgent: true };
        }
        let lasted = o.triggered || o.imminent || now.saturating_sub(streak) >= t.persist;
        let spaced = self
            .last_shed
            .is_none_or(|s| now.saturating_sub(s) >= t.cooldown);
        if !(lasted && spaced) {
            return Shed::Nothing;
        }
        self.last_shed = Some(now);
        if o.usage == Level::Pressure {
            Shed::Excess { urgent: o.imminent }
        } else {
            Shed::Signal
        }
    }

    /// Records what model memory is left after a signal shed: loads may not grow past it
    /// until the episode ends.
    pub fn note_shed(&mut self, remaining: u64) {
        self.ceiling = Some(self.ceiling.map_or(remaining, |c| c.min(remaining)));
    }

    /// Whether an episode of pressure is going on.
    pub fn active(&self) -> bool {
        self.last_pressure.is_some()
    }

    /// The cap on model memory while an episode lasts.
    pub fn ceiling(&self) -> Option<u64> {
        self.ceiling
    }

    /// How long until the episode can end, if one is active.
    pub fn calm_in(&self, now: Duration, calm: Duration) -> Option<Duration> {
        self.last_pressure
            .map(|p| calm.saturating_sub(now.saturating_sub(p)))
    }
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// A model loaded at 0 s, last used at `last_use`.
    fn m(id: &str, priority: u8, last_use: u64, mib: u64) -> Resident {
        Resident {
            id: id.into(),
            priority,
            pinned: false,
            default: false,
            loaded_at: s(0),
            last_use: s(last_use),
            bytes: mib * MIB,
        }
    }

    fn ids(v: &[&Resident]) -> Vec<String> {
        v.iter().map(|r| r.id.clone()).collect()
    }

    /// Budget `budget` MiB, at 100 s, residency 10 s, no room reading.
    fn limits(budget: u64) -> Limits {
        Limits {
            budget: budget * MIB,
            max_models: 4,
            ceiling: None,
            room: None,
            peak_room: None,
            releasing: 0,
            now: s(100),
            min_residency: s(10),
        }
    }

    const T: Timings = Timings {
        persist: Duration::from_secs(3),
        cooldown: Duration::from_secs(5),
        calm: Duration::from_secs(30),
    };

    fn usage(level: Level) -> Observation {
        Observation {
            usage: level,
            stall: false,
            triggered: false,
            imminent: false,
        }
    }

    fn stall(triggered: bool) -> Observation {
        Observation {
            usage: Level::Normal,
            stall: !triggered,
            triggered,
            imminent: false,
        }
    }

    #[test]
    fn shed_order_is_priority_then_the_default_last_then_recency_then_size_and_skips_pinned() {
        let mut pinned = m("pinned", 5, 0, 500);
        pinned.pinned = true;
        let mut default = m("default", 4, 0, 100);
        default.default = true;
        let all = vec![
            m("important", 1, 0, 100),
            m("old-small", 4, 10, 50),
            m("old-big", 4, 10, 300),
            default,
            m("recent", 4, 90, 100),
            m("lowest", 5, 100, 10),
            pinned,
        ];
        assert_eq!(
            ids(&shed_order(&all)),
            [
                "lowest",
                "old-big",
                "old-small",
                "recent",
                "default",
                "important"
            ]
        );
    }

    #[test]
    fn admission_fits_evicts_lower_value_or_refuses() {
        let limits = limits(300);
        let loaded = vec![m("a", 3, 10, 100), m("b", 4, 20, 100)];
        assert_eq!(
            admit("c", 3, 100 * MIB, &loaded, &limits, s(10)),
            Ok(vec![])
        );
        // 150 MiB more needs 50 MiB freed: the priority-4 model goes first.
        assert_eq!(
            admit("c", 3, 150 * MIB, &loaded, &limits, s(10)),
            Ok(vec!["b".to_string()])
        );
        // A priority-1 request may evict both.
        assert_eq!(
            admit("c", 1, 250 * MIB, &loaded, &limits, s(10)),
            Ok(vec!["b".to_string(), "a".to_string()])
        );
        // A priority-5 request may evict neither, and waiting would not change that.
        let e = admit("c", 5, 150 * MIB, &loaded, &limits, s(10)).expect_err("refused");
        assert_eq!((e.retry_after, e.wait), (s(10), false));
        assert_eq!(
            e.reason,
            "model c cannot be loaded now: it needs about 150 MiB and the budget of 300 MiB has 100 MiB free, and nothing of priority 5 or lower can make room (loaded: a 100 MiB (priority 3), b 100 MiB (priority 4)); retry later, unload a model, or raise memory.budget"
        );
    }

    #[test]
    fn admission_never_evicts_pinned_and_refuses_what_exceeds_the_budget() {
        let limits = limits(200);
        let mut p = m("p", 5, 0, 150);
        p.pinned = true;
        let e = admit("c", 1, 100 * MIB, std::slice::from_ref(&p), &limits, s(10))
            .expect_err("refused");
        assert!(e.reason.contains("p 150 MiB (pinned)"), "{}", e.reason);
        let e = admit("huge", 1, 201 * MIB, &[], &limits, s(60)).expect_err("refused");
        assert_eq!(
            e.reason,
            "model huge needs about 201 MiB, more than the whole memory budget of 200 MiB; raise memory.budget (or the service's memory limit when it is auto)"
        );
        assert!(!e.wait);
    }

    #[test]
    fn a_model_within_its_residency_is_not_evicted_and_the_refusal_says_how_long_to_wait() {
        let mut limits = limits(250);
        let mut young = m("young", 3, 99, 100);
        young.loaded_at = s(96);
        let loaded = vec![young.clone(), m("old", 3, 98, 100)];
        // "old" is past its residency and goes although "young" was used less recently.
        young.last_use = s(50);
        let loaded2 = vec![young.clone(), m("old", 3, 98, 100)];
        assert_eq!(
            admit("c", 3, 100 * MIB, &loaded2, &limits, s(5)),
            Ok(vec!["old".to_string()])
        );
        // Needing both, it must wait for "young": 6 s of its 10 s residency are left.
        let e = admit("c", 3, 200 * MIB, &loaded, &limits, s(5)).expect_err("refused");
        assert!(e.wait);
        assert_eq!(e.retry_after, s(6));
        assert!(
            e.reason.contains(
                "the models that could make room loaded less than memory.min_residency (10s) ago, for 6.0 s more"
            ),
            "{}",
            e.reason
        );
        // Residency 0: nothing is protected.
        limits.min_residency = Duration::ZERO;
        assert_eq!(
            admit("c", 3, 200 * MIB, &loaded, &limits, s(5)).map(|v| v.len()),
            Ok(2)
        );
    }

    #[test]
    fn real_room_binds_even_when_the_budget_has_space() {
        let mut limits = limits(1024);
        limits.room = Some((
            60 * MIB as i64,
            "cgroup v1 /x (memory.limit_in_bytes 314 MiB)".into(),
        ));
        let loaded = vec![m("a", 3, 10, 96)];
        // 60 MiB of room plus a's 96 MiB covers a 100 MiB load only by shedding a.
        assert_eq!(
            admit("c", 3, 100 * MIB, &loaded, &limits, s(5)),
            Ok(vec!["a".to_string()])
        );
        let e = admit("c", 2, 200 * MIB, &loaded, &limits, s(5)).expect_err("refused");
        assert!(e.wait, "co-tenants may free memory: worth waiting");
        assert!(
            e.reason.starts_with(
                "model c cannot be loaded now: it needs about 200 MiB and cgroup v1 /x (memory.limit_in_bytes 314 MiB) has 60 MiB of room below its pressure threshold (less memory.reserve)"
            ),
            "{}",
            e.reason
        );
        // Room already past the threshold reads as none.
        limits.room = Some((-5 * MIB as i64, "x".into()));
        let e = admit("c", 3, 10 * MIB, &[], &limits, s(5)).expect_err("refused");
        assert!(e.reason.contains("x has 0 MiB of room"), "{}", e.reason);
    }

    #[test]
    fn memory_still_coming_back_from_a_shed_counts_as_held() {
        let mut limits = limits(250);
        limits.releasing = 100 * MIB;
        let loaded = vec![m("a", 3, 10, 100)];
        // Budget: 100 loaded + 100 releasing + 100 needed > 250; once released it fits.
        let e = admit("c", 1, 100 * MIB, &loaded, &limits, s(5)).expect_err("refused");
        assert!(e.wait);
        assert_eq!(e.retry_after, s(1));
        assert!(
            e.reason
                .contains("100 MiB of shed models is still on its way back"),
            "{}",
            e.reason
        );
        limits.releasing = 0;
        assert_eq!(admit("c", 1, 100 * MIB, &loaded, &limits, s(5)), Ok(vec![]));
    }

    #[test]
    fn admission_honours_max_models_and_the_pressure_ceiling() {
        let loaded = vec![m("a", 3, 10, 10), m("b", 3, 20, 10)];
        let two = Limits {
            budget: 1 << 40,
            max_models: 2,
            ..limits(0)
        };
        assert_eq!(
            admit("c", 3, MIB, &loaded, &two, s(1)),
            Ok(vec!["a".to_string()])
        );
        let e = admit("c", 4, MIB, &loaded, &two, s(1)).expect_err("refused");
        assert!(
            e.reason.contains("memory.max_loaded_models (2) are loaded"),
            "{}",
            e.reason
        );
        let pressed = Limits {
            budget: 1 << 40,
            max_models: 8,
            ceiling: Some(20 * MIB),
            ..limits(0)
        };
        // Growth past the ceiling needs room made; a lower-priority request cannot make it.
        assert_eq!(
            admit("c", 3, MIB, &loaded, &pressed, s(7)),
            Ok(vec!["a".to_string()])
        );
        let e = admit("c", 4, MIB, &loaded, &pressed, s(7)).expect_err("refused");
        assert!(
            e.reason
                .contains("memory pressure holds model memory at 20 MiB")
        );
        assert_eq!(e.retry_after, s(7));
    }

    #[test]
    fn excess_sheds_as_few_as_cover_it_and_keeps_the_default_while_it_fits() {
        let mut default = m("default", 3, 99, 96);
        default.default = true;
        let mut young = m("young", 5, 50, 96);
        young.loaded_at = s(95);
        let loaded = vec![default, m("a", 3, 10, 96), m("b", 3, 20, 96), young];
        // 50 MiB over: one model (the oldest non-default one past its residency).
        assert_eq!(
            shed_for_excess(50 * MIB, &loaded, s(100), s(10), false),
            ["a"]
        );
        // 150 MiB: two, still not the default.
        assert_eq!(
            shed_for_excess(150 * MIB, &loaded, s(100), s(10), false),
            ["a", "b"]
        );
        // More than the others hold: the default goes too.
        assert_eq!(
            shed_for_excess(250 * MIB, &loaded, s(100), s(10), false),
            ["a", "b", "default"]
        );
        // Critical overrides the residency, lowest priority first.
        assert_eq!(
            shed_for_excess(50 * MIB, &loaded, s(100), s(10), true),
            ["young"]
        );
        assert!(shed_for_excess(0, &loaded, s(100), s(10), true).is_empty());
    }

    #[test]
    fn a_stall_signal_alone_sheds_neither_the_default_nor_more_valuable_models() {
        let mut default = m("default", 5, 0, 96);
        default.default = true;
        let loaded = vec![default.clone(), m("valuable", 2, 0, 96)];
        assert_eq!(shed_for_signal(&loaded, s(100), s(10), 3), None);
        let loaded = vec![default, m("valuable", 2, 0, 96), m("other", 3, 0, 96)];
        assert_eq!(
            shed_for_signal(&loaded, s(100), s(10), 3).as_deref(),
            Some("other")
        );
        assert_eq!(shed_for_signal(&loaded, s(5), s(10), 3), None, "resident");
    }

    #[test]
    fn idle_models_expire_on_the_clock_but_pinned_and_unlimited_do_not() {
        let mut pinned = m("pinned", 3, 0, 1);
        pinned.pinned = true;
        let loaded = vec![
            (m("a", 3, 0, 1), Some(s(60))),
            (m("b", 3, 30, 1), Some(s(60))),
            (m("never", 3, 0, 1), None),
            (pinned, Some(s(1))),
        ];
        assert!(idle_expired(s(59), &loaded).is_empty());
        assert_eq!(ids(&idle_expired(s(60), &loaded)), ["a"]);
        assert_eq!(ids(&idle_expired(s(90), &loaded)), ["a", "b"]);
    }

    #[test]
    fn pressure_must_persist_then_sheds_are_spaced() {
        let mut sh = Shedder::default();
        let p = usage(Level::Pressure);
        let excess = Shed::Excess { urgent: false };
        assert_eq!(sh.observe(s(0), p, T), Shed::Nothing);
        assert_eq!(sh.observe(s(2), p, T), Shed::Nothing);
        assert_eq!(sh.observe(s(3), p, T), excess);
        assert_eq!(sh.observe(s(4), p, T), Shed::Nothing);
        assert_eq!(sh.observe(s(7), p, T), Shed::Nothing);
        assert_eq!(sh.observe(s(8), p, T), excess);
    }

    #[test]
    fn a_blip_does_not_shed_a_trigger_does_at_once_and_a_stall_alone_is_a_signal_shed() {
        let mut sh = Shedder::default();
        assert_eq!(sh.observe(s(0), usage(Level::Pressure), T), Shed::Nothing);
        assert_eq!(sh.observe(s(1), usage(Level::Normal), T), Shed::Nothing);
        assert_eq!(sh.observe(s(3), usage(Level::Pressure), T), Shed::Nothing);
        assert_eq!(sh.observe(s(4), stall(true), T), Shed::Signal);
        let mut sh = Shedder::default();
        assert_eq!(sh.observe(s(0), stall(false), T), Shed::Nothing);
        assert_eq!(sh.observe(s(3), stall(false), T), Shed::Signal);
        // A stall during usage pressure sheds by the excess.
        let both = Observation {
            usage: Level::Pressure,
            stall: true,
            triggered: true,
            imminent: false,
        };
        assert_eq!(
            Shedder::default().observe(s(0), both, T),
            Shed::Excess { urgent: false }
        );
    }

    #[test]
    fn growth_toward_the_critical_threshold_sheds_without_waiting_to_persist() {
        let mut trend = Trend::default();
        let ms = Duration::from_millis;
        trend.push(ms(0), 200 * MIB, "a");
        assert_eq!(trend.time_to(300 * MIB), None, "one sample tells nothing");
        trend.push(ms(500), 204 * MIB, "a");
        trend.push(ms(1000), 208 * MIB, "a");
        // 8 MiB/s: 92 MiB to go is 11.5 s.
        assert_eq!(
            trend.time_to(300 * MIB),
            Some(Duration::from_millis(11_500))
        );
        trend.push(ms(3000), 208 * MIB, "a");
        assert_eq!(trend.time_to(300 * MIB), None, "flat over the window");
        trend.push(ms(3500), 4096 * MIB, "the parent");
        assert_eq!(
            trend.time_to(8192 * MIB),
            None,
            "another level is no growth"
        );
        let mut sh = Shedder::default();
        let mut o = usage(Level::Pressure);
        o.imminent = true;
        assert_eq!(sh.observe(s(0), o, T), Shed::Excess { urgent: true });
    }

    #[test]
    fn critical_sheds_at_once_and_without_cooldown() {
        let mut sh = Shedder::default();
        let c = usage(Level::Critical);
        assert_eq!(sh.observe(s(0), c, T), Shed::Excess { urgent: true });
        assert_eq!(sh.observe(s(0), c, T), Shed::Excess { urgent: true });
    }

    #[test]
    fn the_episode_and_its_ceiling_last_until_calm() {
        let mut sh = Shedder::default();
        sh.observe(s(0), stall(true), T);
        sh.note_shed(100);
        sh.note_shed(150);
        assert_eq!(sh.ceiling(), Some(100));
        assert!(sh.active());
        assert_eq!(sh.observe(s(10), usage(Level::Normal), T), Shed::Nothing);
        assert_eq!(sh.calm_in(s(10), T.calm), Some(s(20)));
        sh.observe(s(29), usage(Level::Normal), T);
        assert!(sh.active(), "29 s after the last pressure is not yet calm");
        sh.observe(s(30), usage(Level::Normal), T);
        assert!(!sh.active());
        assert_eq!(sh.ceiling(), None);
    }
}
