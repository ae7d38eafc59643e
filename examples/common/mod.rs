//! What the benchmark examples (`bench.rs`, `rerank_bench.rs`) share: the daemon's memory as
//! /proc reports it, and latency percentiles.

use std::time::Duration;

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`), 0 when unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// The `p` quantile (0 to 1) of durations sorted ascending (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
