//! The shedder: turns a stream of readings into shedding decisions with hysteresis (pressure
//! must last, sheds are spaced, an episode ends only after calm), and the working set's growth
//! trend that lets pressure about to turn critical shed at once.

use std::time::Duration;

use super::Level;

/// What the shedder asks for after a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Nothing.
    Nothing,
    /// Shed what the reading's excess asks for ([`shed_for_excess`](super::shed_for_excess)); `urgent` overrides
    /// `memory.min_residency`.
    Excess {
        /// Memory is critical, or will be within `persist` at its current growth.
        urgent: bool,
    },
    /// A stall signal without a limit near: shed one model of low value
    /// ([`shed_for_signal`](super::shed_for_signal)).
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

    /// Forgets the samples: the daemon's own load is a step, not a growth to extrapolate.
    pub fn clear(&mut self) {
        self.samples.clear();
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
