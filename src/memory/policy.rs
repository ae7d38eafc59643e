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
    /// When a request last used it (or when it was loaded).
    pub last_use: Duration,
    /// Bytes it holds.
    pub bytes: u64,
}

/// Models the policy may unload, lowest value first: lowest priority (highest number), then
/// least recently used, then the larger one (it frees more). Pinned models never appear.
pub fn shed_order(models: &[Resident]) -> Vec<&Resident> {
    let mut order: Vec<&Resident> = models.iter().filter(|m| !m.pinned).collect();
    order.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.last_use.cmp(&b.last_use))
            .then(b.bytes.cmp(&a.bytes))
            .then(a.id.cmp(&b.id))
    });
    order
}

/// What bounds a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes all models may hold.
    pub budget: u64,
    /// Most models at once.
    pub max_models: usize,
    /// While pressure lasts: model memory may not grow past this.
    pub ceiling: Option<u64>,
}

/// A load that cannot be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why, naming the numbers and what holds the memory.
    pub reason: String,
    /// When a retry may succeed.
    pub retry_after: Duration,
}

/// Decides whether `id` (priority `priority`, needing `need` bytes) may load next to
/// `loaded`: `Ok(victims)` lists the models to unload first (lowest value first; only models
/// of the same or lower priority, which are also less recently used than a request arriving
/// now), or the refusal. `retry_after` is what a refusal suggests.
pub fn admit(
    id: &str,
    priority: u8,
    need: u64,
    loaded: &[Resident],
    limits: Limits,
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
        });
    }
    let mut used: u64 = loaded.iter().map(|m| m.bytes).sum();
    let mut count = loaded.len();
    let fits = |used: u64, count: usize| used + need <= cap && count < limits.max_models;
    let mut victims = Vec::new();
    for m in shed_order(loaded) {
        if fits(used, count) {
            break;
        }
        if m.priority < priority {
            // Everything after this one is worth more still.
            break;
        }
        victims.push(m.id.clone());
        used -= m.bytes;
        count -= 1;
    }
    if fits(used, count) {
        return Ok(victims);
    }
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
    let bound = if count >= limits.max_models {
        format!(
            "memory.max_loaded_models ({}) are loaded",
            limits.max_models
        )
    } else if cap < limits.budget {
        format!(
            "memory pressure holds model memory at {} MiB until it has been calm for a while",
            mib(cap)
        )
    } else {
        format!(
            "it needs about {} MiB and the budget of {} MiB has {} MiB free",
            mib(need),
            mib(limits.budget),
            mib(limits.budget.saturating_sub(used))
        )
    };
    Err(Refusal {
        reason: format!(
            "model {id} cannot be loaded now: {bound}, and nothing of priority {priority} or lower can make room (loaded: {}); retry later, unload a model, or raise memory.budget",
            if holders.is_empty() {
                "none".to_string()
            } else {
                holders.join(", ")
            }
        ),
        retry_after,
    })
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
    /// Shed the least valuable model once the pressure has lasted.
    Pressure,
    /// Near the hard limit: unload every unpinned model now.
    Critical,
}

/// What the shedder asks for after a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Nothing.
    Nothing,
    /// Unload the least valuable unpinned model.
    One,
    /// Unload every unpinned model.
    All,
}

/// Timings of the shedder (see `memory.pressure` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Pressure must last this long before the first shed.
    pub persist: Duration,
    /// At most one shed per this interval.
    pub cooldown: Duration,
    /// An episode ends after this long without pressure.
    pub calm: Duration,
}

/// Turns a stream of readings into shedding decisions, with hysteresis: pressure must last
/// before anything is shed, sheds are spaced, and an episode of pressure ends only after a
/// calm period. During an episode, model memory may not grow back (the ceiling) and nothing
/// is loaded in the background, so shedding does not flap with reloading.
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
    /// Takes one reading at `now`. `triggered` means a kernel or systemd trigger fired since
    /// the last reading: the stall has already lasted a trigger window, so no `persist` wait.
    pub fn observe(&mut self, now: Duration, level: Level, triggered: bool, t: Timings) -> Shed {
        let level = if triggered {
            level.max(Level::Pressure)
        } else {
            level
        };
        if level == Level::Normal {
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
        if level == Level::Critical {
            self.last_shed = Some(now);
            return Shed::All;
        }
        let lasted = triggered || now.saturating_sub(streak) >= t.persist;
        let spaced = self
            .last_shed
            .is_none_or(|s| now.saturating_sub(s) >= t.cooldown);
        if lasted && spaced {
            self.last_shed = Some(now);
            Shed::One
        } else {
            Shed::Nothing
        }
    }

    /// Records what model memory is left after a shed: loads may not grow past it until the
    /// episode ends.
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

    fn m(id: &str, priority: u8, last_use: u64, mib: u64) -> Resident {
        Resident {
            id: id.into(),
            priority,
            pinned: false,
            last_use: s(last_use),
            bytes: mib * MIB,
        }
    }

    fn ids(v: &[&Resident]) -> Vec<String> {
        v.iter().map(|r| r.id.clone()).collect()
    }

    const T: Timings = Timings {
        persist: Duration::from_secs(3),
        cooldown: Duration::from_secs(5),
        calm: Duration::from_secs(30),
    };

    #[test]
    fn shed_order_is_priority_then_recency_then_size_and_skips_pinned() {
        let mut pinned = m("pinned", 5, 0, 500);
        pinned.pinned = true;
        let all = vec![
            m("important", 1, 0, 100),
            m("old-small", 4, 10, 50),
            m("old-big", 4, 10, 300),
            m("recent", 4, 90, 100),
            m("lowest", 5, 100, 10),
            pinned,
        ];
        assert_eq!(
            ids(&shed_order(&all)),
            ["lowest", "old-big", "old-small", "recent", "important"]
        );
    }

    #[test]
    fn admission_fits_evicts_lower_value_or_refuses() {
        let limits = Limits {
            budget: 300 * MIB,
            max_models: 4,
            ceiling: None,
        };
        let loaded = vec![m("a", 3, 10, 100), m("b", 4, 20, 100)];
        assert_eq!(admit("c", 3, 100 * MIB, &loaded, limits, s(10)), Ok(vec![]));
        // 150 MiB more needs 50 MiB freed: the priority-4 model goes first.
        assert_eq!(
            admit("c", 3, 150 * MIB, &loaded, limits, s(10)),
            Ok(vec!["b".to_string()])
        );
        // A priority-1 request may evict both.
        assert_eq!(
            admit("c", 1, 250 * MIB, &loaded, limits, s(10)),
            Ok(vec!["b".to_string(), "a".to_string()])
        );
        // A priority-5 request may evict neither.
        let e = admit("c", 5, 150 * MIB, &loaded, limits, s(10)).expect_err("refused");
        assert_eq!(e.retry_after, s(10));
        assert_eq!(
            e.reason,
            "model c cannot be loaded now: it needs about 150 MiB and the budget of 300 MiB has 100 MiB free, and nothing of priority 5 or lower can make room (loaded: a 100 MiB (priority 3), b 100 MiB (priority 4)); retry later, unload a model, or raise memory.budget"
        );
    }

    #[test]
    fn admission_never_evicts_pinned_and_refuses_what_exceeds_the_budget() {
        let limits = Limits {
            budget: 200 * MIB,
            max_models: 4,
            ceiling: None,
        };
        let mut p = m("p", 5, 0, 150);
        p.pinned = true;
        let e =
            admit("c", 1, 100 * MIB, std::slice::from_ref(&p), limits, s(10)).expect_err("refused");
        assert!(e.reason.contains("p 150 MiB (pinned)"), "{}", e.reason);
        let e = admit("huge", 1, 201 * MIB, &[], limits, s(60)).expect_err("refused");
        assert_eq!(
            e.reason,
            "model huge needs about 201 MiB, more than the whole memory budget of 200 MiB; raise memory.budget (or the service's memory limit when it is auto)"
        );
    }

    #[test]
    fn admission_honours_max_models_and_the_pressure_ceiling() {
        let loaded = vec![m("a", 3, 10, 10), m("b", 3, 20, 10)];
        let two = Limits {
            budget: 1 << 40,
            max_models: 2,
            ceiling: None,
        };
        assert_eq!(
            admit("c", 3, MIB, &loaded, two, s(1)),
            Ok(vec!["a".to_string()])
        );
        let e = admit("c", 4, MIB, &loaded, two, s(1)).expect_err("refused");
        assert!(
            e.reason.contains("memory.max_loaded_models (2) are loaded"),
            "{}",
            e.reason
        );
        let pressed = Limits {
            budget: 1 << 40,
            max_models: 8,
            ceiling: Some(20 * MIB),
        };
        // Growth past the ceiling needs room made; a lower-priority request cannot make it.
        assert_eq!(
            admit("c", 3, MIB, &loaded, pressed, s(7)),
            Ok(vec!["a".to_string()])
        );
        let e = admit("c", 4, MIB, &loaded, pressed, s(7)).expect_err("refused");
        assert!(
            e.reason
                .contains("memory pressure holds model memory at 20 MiB")
        );
        assert_eq!(e.retry_after, s(7));
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
        let p = Level::Pressure;
        assert_eq!(sh.observe(s(0), p, false, T), Shed::Nothing);
        assert_eq!(sh.observe(s(2), p, false, T), Shed::Nothing);
        assert_eq!(sh.observe(s(3), p, false, T), Shed::One);
        assert_eq!(sh.observe(s(4), p, false, T), Shed::Nothing);
        assert_eq!(sh.observe(s(7), p, false, T), Shed::Nothing);
        assert_eq!(sh.observe(s(8), p, false, T), Shed::One);
    }

    #[test]
    fn a_blip_does_not_shed_and_a_trigger_does_at_once() {
        let mut sh = Shedder::default();
        assert_eq!(sh.observe(s(0), Level::Pressure, false, T), Shed::Nothing);
        assert_eq!(sh.observe(s(1), Level::Normal, false, T), Shed::Nothing);
        assert_eq!(sh.observe(s(3), Level::Pressure, false, T), Shed::Nothing);
        assert_eq!(sh.observe(s(4), Level::Normal, true, T), Shed::One);
    }

    #[test]
    fn critical_unloads_everything_at_once() {
        let mut sh = Shedder::default();
        assert_eq!(sh.observe(s(0), Level::Critical, false, T), Shed::All);
    }

    #[test]
    fn the_episode_and_its_ceiling_last_until_calm() {
        let mut sh = Shedder::default();
        sh.observe(s(0), Level::Pressure, true, T);
        sh.note_shed(100);
        sh.note_shed(150);
        assert_eq!(sh.ceiling(), Some(100));
        assert!(sh.active());
        assert_eq!(sh.observe(s(10), Level::Normal, false, T), Shed::Nothing);
        assert_eq!(sh.calm_in(s(10), T.calm), Some(s(20)));
        sh.observe(s(29), Level::Normal, false, T);
        assert!(sh.active(), "29 s after the last pressure is not yet calm");
        sh.observe(s(30), Level::Normal, false, T);
        assert!(!sh.active());
        assert_eq!(sh.ceiling(), None);
    }
}
