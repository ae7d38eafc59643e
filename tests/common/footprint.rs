//! What a test daemon holds when it holds no model: its settled RSS and its open descriptors,
//! for comparing a daemon with itself before and after a long run.

use std::time::{Duration, Instant};

use super::Daemon;

/// The daemon's RSS with no model loaded once it has served: a few full requests, then every
/// model flushed and its memory back (the pass buffers go after a quiet second).
pub fn settled_rss(d: &Daemon) -> u64 {
    let texts: Vec<String> = (0..16).map(|i| format!("warm-up text {i}")).collect();
    for _ in 0..3 {
        let body = serde_json::json!({"input": texts}).to_string();
        assert_eq!(d.request("POST", "/v1/embeddings", &body).0, 200);
    }
    let (s, v) = d.request("POST", "/api/memory/flush", "");
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = u64::MAX;
    loop {
        let s = d.request("GET", "/api/memory/status", "").1;
        let rss = s["process"]["rss_bytes"].as_u64().expect("rss");
        let settled =
            s["releasing"].as_array().is_some_and(|r| r.is_empty()) && s["model_memory_bytes"] == 0;
        // Settled, and no longer falling.
        if settled && rss >= last {
            return rss;
        }
        last = rss;
        assert!(Instant::now() < deadline, "the flush never settled: {s}");
        std::thread::sleep(Duration::from_millis(1500));
    }
}

/// How many descriptors the daemon has open.
pub fn open_fds(d: &Daemon) -> usize {
    let pid = d.child.as_ref().expect("a running daemon").id();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd: {e}"))
}

/// The daemon's anonymous resident memory (`RssAnon`): what it allocated and still holds,
/// without the file pages (its code, mapped weights) the kernel reclaims and brings back at will.
pub fn rss_anon(d: &Daemon) -> u64 {
    let pid = d.child.as_ref().expect("a running daemon").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib << 10)
        .unwrap_or_else(|| panic!("no RssAnon in /proc/{pid}/status"))
}
