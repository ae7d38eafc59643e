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
    flushed_rss(d)
}

/// Flushes every model and returns the RSS once the unload is through (nothing releasing, no
/// model memory, no weight mapping left) and RSS stopped falling (the pass buffers go after a
/// quiet second).
pub fn flushed_rss(d: &Daemon) -> u64 {
    let (s, v) = d.request("POST", "/api/memory/flush", "");
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = u64::MAX;
    loop {
        let s = d.request("GET", "/api/memory/status", "").1;
        let rss = s["process"]["rss_bytes"].as_u64().expect("rss");
        let settled = s["releasing"].as_array().is_some_and(|r| r.is_empty())
            && s["model_memory_bytes"] == 0
            && s["process"]["weights_mapped_bytes"] == 0;
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
    let kib = status_field(d, "RssAnon");
    kib.trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .map(|kib| kib << 10)
        .unwrap_or_else(|e| panic!("RssAnon {kib:?}: {e}"))
}

/// The daemon's thread count (`Threads`).
pub fn threads(d: &Daemon) -> usize {
    let n = status_field(d, "Threads");
    n.parse().unwrap_or_else(|e| panic!("Threads {n:?}: {e}"))
}

/// The daemon's threads by name (`/proc/PID/task/*/comm`), to say which ones a change in the
/// count is.
pub fn thread_names(d: &Daemon) -> std::collections::BTreeMap<String, usize> {
    let pid = d.child.as_ref().expect("a running daemon").id();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/task: {e}"));
    let mut names = std::collections::BTreeMap::new();
    for task in tasks.flatten() {
        // A thread that exits between the listing and the read is simply not counted.
        if let Ok(name) = std::fs::read_to_string(task.path().join("comm")) {
            *names.entry(name.trim().to_string()).or_insert(0) += 1;
        }
    }
    names
}

/// One field of the daemon's `/proc/PID/status`, trimmed.
fn status_field(d: &Daemon, field: &str) -> String {
    proc_file(d, "status")
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in the daemon's /proc status"))
}

/// The daemon's `/proc/PID/NAME`.
fn proc_file(d: &Daemon, name: &str) -> String {
    let pid = d.child.as_ref().expect("a running daemon").id();
    std::fs::read_to_string(format!("/proc/{pid}/{name}"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/{name}: {e}"))
}

/// The resident bytes of each of the daemon's anonymous mappings (`/proc/PID/smaps`), keyed by
/// its start address and name (`[heap]`, `[stack]`, or none; not its end, which moves as a
/// heap grows): where a footprint's growth lives (malloc's main heap, an arena, a thread's
/// stack).
pub fn anonymous_mappings(d: &Daemon) -> std::collections::BTreeMap<String, u64> {
    let smaps = proc_file(d, "smaps");
    let mut out = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range, perms, offset, dev, inode, [path].
            let path: Vec<&str> = fields.skip(4).collect();
            let path = path.join(" ");
            let start = first.split('-').next().unwrap_or(first);
            current = (path.is_empty() || path.starts_with('[')).then(|| format!("{start} {path}"));
        } else if first == "Anonymous:"
            && let (Some(key), Some(kib)) =
                (&current, fields.next().and_then(|v| v.parse::<u64>().ok()))
        {
            *out.entry(key.clone()).or_insert(0) += kib << 10;
        }
    }
    out
}

/// The anonymous mappings whose resident bytes grew most from `before` to `after`, largest
/// first, as lines for a test's log.
pub fn grown_mappings(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    most: usize,
) -> Vec<String> {
    let mut grown: Vec<(i64, &String)> = after
        .iter()
        .map(|(k, &a)| (a as i64 - before.get(k).copied().unwrap_or(0) as i64, k))
        .filter(|(g, _)| *g != 0)
        .collect();
    grown.sort_by_key(|(g, _)| std::cmp::Reverse(*g));
    let gone: i64 = before
        .iter()
        .filter(|(k, _)| !after.contains_key(*k))
        .map(|(_, &b)| b as i64)
        .sum();
    let mut lines: Vec<String> = grown
        .iter()
        .take(most)
        .map(|(g, k)| format!("{:+.2} MiB {k}", *g as f64 / (1 << 20) as f64))
        .collect();
    lines.push(format!(
        "{} mappings before, {} after ({:.2} MiB in mappings gone)",
        before.len(),
        after.len(),
        gone as f64 / (1 << 20) as f64
    ));
    lines
}
