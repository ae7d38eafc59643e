//! What each model takes in memory: measured at its load, else estimated from its package and
//! scaled by how far estimates have been off; keyed by package digest and precision.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

/// Measured and estimated model sizes; one per daemon, in the governor.
pub struct Footprints {
    /// Bytes each package really took when loaded, by package sha256 and precision.
    measured: Mutex<HashMap<String, u64>>,
    /// Estimates from package headers, by package sha256 and precision (status pages ask
    /// every second).
    estimates: Mutex<HashMap<String, u64>>,
    /// Largest ratio of measured to estimated bytes seen: estimates of packages never loaded
    /// are scaled by it, so one low estimate is not repeated.
    correction: Mutex<f64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Footprints {
    fn default() -> Self {
        Footprints {
            measured: Mutex::new(HashMap::new()),
            estimates: Mutex::new(HashMap::new()),
            correction: Mutex::new(1.0),
        }
    }
}

impl Footprints {
    /// The key of a package's measurements: its digest and the precision it loads in (int8
    /// takes a quarter of f32). [`Self::forget_packages_except`] reads the digest back.
    pub fn key(digest: &str, precision: impl std::fmt::Display) -> String {
        format!("{digest}/{precision}")
    }

    /// Bytes the model known as `key` will take once loaded: what it took last time, else
    /// `estimate` (asked once per key) scaled by how far estimates have been off.
    pub fn footprint(&self, key: &str, estimate: impl FnOnce() -> u64) -> u64 {
        if let Some(&b) = lock(&self.measured).get(key) {
            return b;
        }
        (self.estimate(key, estimate) as f64 * *lock(&self.correction)) as u64
    }

    /// The package-based estimate, made once per key.
    fn estimate(&self, key: &str, estimate: impl FnOnce() -> u64) -> u64 {
        *lock(&self.estimates)
            .entry(key.to_string())
            .or_insert_with(estimate)
    }

    /// Remembers what the model known as `key` really took, and how far off its estimate
    /// was; returns what to count for it. A reload into memory the heap kept from an earlier
    /// unload grows the process less than the model takes, so the largest measurement
    /// stands.
    pub fn remember(&self, key: &str, estimate: impl FnOnce() -> u64, bytes: u64) -> u64 {
        let estimate = self.estimate(key, estimate).max(1);
        let ratio = (bytes as f64 / estimate as f64).clamp(1.0, 4.0);
        let mut c = lock(&self.correction);
        *c = c.max(ratio);
        let mut measured = lock(&self.measured);
        let m = measured.entry(key.to_string()).or_insert(0);
        *m = (*m).max(bytes);
        *m
    }

    /// Forgets the measurements and estimates of packages `live` no longer names: every
    /// side-loaded version adds its own, and a device upgraded for years must not keep them
    /// all.
    pub fn forget_packages_except(&self, live: &HashSet<&str>) {
        let keep = |key: &String| live.contains(key.split_once('/').map_or(key.as_str(), |k| k.0));
        lock(&self.measured).retain(|k, _| keep(k));
        lock(&self.estimates).retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurements_of_packages_gone_are_forgotten_and_the_others_kept() {
        let f = Footprints::default();
        let (a, b, b8) = (
            Footprints::key("aaa", "f32"),
            Footprints::key("bbb", "f32"),
            Footprints::key("bbb", "int8"),
        );
        f.remember(&a, || 100, 150);
        f.remember(&b, || 100, 120);
        f.remember(&b8, || 40, 50);
        f.forget_packages_except(&["bbb"].into_iter().collect());
        assert_eq!(lock(&f.measured).len(), 2);
        assert_eq!(lock(&f.estimates).len(), 2);
        assert_eq!(f.footprint(&b8, || 0), 50);
        // What is gone is estimated again, from the estimate given now (200) scaled by the
        // correction the measurements set (150 / 100); remembered, it would say 150.
        assert_eq!(f.footprint(&a, || 200), 300);
        assert_eq!(
            lock(&f.measured).len(),
            2,
            "a footprint asked measures nothing"
        );
    }
}
