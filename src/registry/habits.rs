//! When a model tends to be used: per model, a histogram of uses by hour of week, decayed so
//! that old habits fade, from which the monitor predicts the models of the coming hour.
//!
//! Time is counted in whole hours since the Unix epoch (UTC), so a week is 168 buckets and
//! the arithmetic needs no calendar; a daylight-saving change shifts local habits by an hour
//! for the histogram, which the next weeks correct. Each bucket counts the *occurrences* of
//! that hour of week in which the model was used (once, however many requests), each past
//! occurrence weighted by [`WEEKLY_DECAY`] per week of age: last week counts ½, four weeks
//! ago 1/16. The probability of a use in an hour is the weighted share of its past
//! occurrences (those the history covers) that saw one. Everything is a pure function of the
//! stored history and the hour asked about, so tests drive it with a fixture and a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Hours in a week: the histogram's buckets.
pub const WEEK: u64 = 168;
/// Weight of an occurrence one week older than another: uses fade to 1/16 in four weeks.
pub const WEEKLY_DECAY: f64 = 0.5;
/// Past occurrences counted at most (older ones weigh under 1e-15).
const MAX_WEEKS: u64 = 52;

/// Whole hours since the Unix epoch at `t` (0 before it).
pub fn hour_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 3600)
}

/// The hour of week of hour `h`: 0 is Monday 00:00 UTC (the epoch was a Thursday).
pub fn hour_of_week(h: u64) -> u8 {
    ((h + 72) % WEEK) as u8
}

/// One hour of week: the decayed count of its occurrences with a use, as of the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Σ over occurrences with a use of `WEEKLY_DECAY ^ (weeks before `last`)`.
    pub weight: f64,
    /// The last occurrence with a use (hours since the epoch).
    pub last: u64,
}

/// A model's habits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Habits {
    /// The hour its history starts (its first recorded use).
    pub since: Option<u64>,
    /// Buckets by hour of week (0 = Monday 00:00 UTC); at most 168.
    pub hours: BTreeMap<u8, Bucket>,
    /// Hours of week for which it was predicted and then not used: not predicted for them
    /// again until it is used.
    pub missed: BTreeSet<u8>,
}

impl Habits {
    /// Whether nothing is recorded (then it is not stored).
    pub fn is_empty(&self) -> bool {
        self.since.is_none() && self.hours.is_empty() && self.missed.is_empty()
    }

    /// Records a use in hour `h`; a second use in the same hour changes nothing. A use ends
    /// every "predicted but not used" mark.
    pub fn record(&mut self, h: u64) {
        self.missed.clear();
        let since = *self.since.get_or_insert(h);
        if h < since {
            // The clock went back: keep the history's start where it is.
            return;
        }
        let b = self.hours.entry(hour_of_week(h)).or_insert(Bucket {
            weight: 0.0,
            last: h,
        });
        if b.weight > 0.0 && b.last >= h {
            return;
        }
        let weeks = (h - b.last) / WEEK;
        b.weight = b.weight * decay(weeks) + 1.0;
        b.last = h;
    }

    /// The probability of a use in hour `h`, from the occurrences of its hour of week before
    /// it that the history covers; 0 without a whole week of history, and for a missed hour.
    pub fn probability(&self, h: u64) -> f64 {
        let slot = hour_of_week(h);
        if self.missed.contains(&slot) {
            return 0.0;
        }
        let (Some(since), Some(b)) = (self.since, self.hours.get(&slot)) else {
            return 0.0;
        };
        let covered = (h.saturating_sub(since) / WEEK).min(MAX_WEEKS);
        if covered == 0 || b.last > h {
            return 0.0;
        }
        // What the occurrences before `h` weigh as seen from `h`: a use in `h` itself is
        // the present, not history.
        let past = if b.last == h {
            b.weight - 1.0
        } else {
            b.weight * decay((h - b.last) / WEEK)
        };
        // The weight of every covered occurrence, had each seen a use.
        let whole: f64 = (1..=covered).map(decay).sum();
        (past / whole).clamp(0.0, 1.0)
    }

    /// Marks hour of week of `h` as predicted and not used.
    pub fn miss(&mut self, h: u64) {
        self.missed.insert(hour_of_week(h));
    }
}

fn decay(weeks: u64) -> f64 {
    WEEKLY_DECAY.powi(weeks.min(1 << 20) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-11-23 09:00 UTC.
    const MONDAY_9: u64 = 1_795_424_400 / 3600;

    #[test]
    fn hours_of_week_start_on_monday() {
        assert_eq!(hour_of_week(MONDAY_9), 9);
        assert_eq!(hour_of_week(MONDAY_9 + 24 * 4 + 8), 4 * 24 + 17);
        assert_eq!(hour_of_week(0), 72, "the epoch was a Thursday");
    }

    #[test]
    fn a_weekly_habit_is_likely_and_fades_once_it_stops() {
        let mut h = Habits::default();
        // Every weekday at 09:00 for four weeks, several requests each time.
        for week in (1..=4).rev() {
            for day in 0..5 {
                let at = MONDAY_9 - week * WEEK + day * 24;
                h.record(at);
                h.record(at);
            }
        }
        assert_eq!(h.hours.len(), 5, "{h:?}");
        assert_eq!(h.hours[&9].weight, 1.0 + 0.5 + 0.25 + 0.125);
        assert_eq!(h.probability(MONDAY_9), 1.0);
        assert_eq!(h.probability(MONDAY_9 + 24), 1.0, "Tuesday");
        assert_eq!(h.probability(MONDAY_9 - 1), 0.0, "08:00 was never used");
        assert_eq!(h.probability(MONDAY_9 + 5 * 24), 0.0, "Saturday");
        // Used this very hour: the present does not count as history.
        let mut now = h.clone();
        now.record(MONDAY_9);
        assert_eq!(now.probability(MONDAY_9), 1.0);
        // Stopped: one week on it is 1/2 + 1/4 + ... of the five weeks, then it fades.
        let p = |weeks: u64| h.probability(MONDAY_9 + weeks * WEEK);
        assert!((p(1) - 0.9375 / 2.0 / 0.96875).abs() < 1e-12, "{}", p(1));
        assert!(p(1) < 0.5);
        assert!(p(4) < 0.1, "{}", p(4));
    }

    #[test]
    fn a_use_five_weeks_ago_predicts_nothing() {
        let mut h = Habits::default();
        h.record(MONDAY_9 - 5 * WEEK);
        assert!((h.probability(MONDAY_9) - 1.0 / 32.0 / (31.0 / 32.0)).abs() < 1e-12);
        assert!(h.probability(MONDAY_9) < 0.05);
    }

    #[test]
    fn no_whole_week_of_history_predicts_nothing() {
        let mut h = Habits::default();
        h.record(MONDAY_9 - 3);
        assert_eq!(h.probability(MONDAY_9 - 3), 0.0);
        assert_eq!(h.probability(MONDAY_9 - 3 + WEEK - 1), 0.0);
        assert_eq!(h.probability(MONDAY_9 - 3 + WEEK), 1.0);
    }

    #[test]
    fn a_missed_hour_is_not_predicted_until_the_next_use() {
        let mut h = Habits::default();
        h.record(MONDAY_9 - WEEK);
        h.miss(MONDAY_9);
        assert_eq!(h.probability(MONDAY_9), 0.0);
        assert_eq!(h.probability(MONDAY_9 + WEEK), 0.0);
        h.record(MONDAY_9 + 30);
        assert_eq!(h.probability(MONDAY_9 + WEEK), 0.25 / 0.75);
    }

    #[test]
    fn habits_survive_json() {
        let mut h = Habits::default();
        h.record(MONDAY_9);
        h.miss(MONDAY_9 + 1);
        let back: Habits =
            serde_json::from_str(&serde_json::to_string(&h).expect("json")).expect("parse");
        assert_eq!(back, h);
    }
}
