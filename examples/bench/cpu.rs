//! The daemon's CPU time by kind of thread, read from /proc before and after a workload: how
//! much of a request's cost is the forward pass (the compute pool) and how much the path
//! around it (the async workers: HTTP, JSON, tokenization; the engine thread: batching,
//! pooling, normalisation), which does not shrink as cores are added.

use std::ops::Sub;
use std::time::Duration;

/// CPU time (user and system) of the daemon's threads, by what they do.
#[derive(Debug, Default, Clone, Copy)]
pub struct Split {
    /// `caxton-compute*`: the rayon pool that runs the forward passes.
    pub compute: Duration,
    /// `engine:*`: each model's engine thread (batching, the Dense modules, pooling, the
    /// finish), which hands the pass to the pool.
    pub engine: Duration,
    /// `caxton-async*`: tokio's workers and blocking threads (accept, HTTP, JSON, the
    /// tokenizer).
    pub serving: Duration,
    /// Every other thread (main, watchers, the monitor).
    pub other: Duration,
}

impl Split {
    /// The threads of process `pid` now; all zero when /proc cannot be read.
    pub fn sample(pid: u32) -> Split {
        let mut split = Split::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return split;
        };
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ...`: the name may hold spaces, so split at the parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = &stat[open + 1..close];
            let used = exact_runtime(&task.path()).unwrap_or_else(|| {
                let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
                // utime and stime are fields 14 and 15 of stat(5); the list starts at field 3.
                let used: u64 = [11, 12]
                    .iter()
                    .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
                    .sum();
                Duration::from_secs_f64(used as f64 / ticks)
            });
            let bucket = if name.starts_with("caxton-compute") {
                &mut split.compute
            } else if name.starts_with("engine:") {
                &mut split.engine
            } else if name.starts_with("caxton-async") {
                &mut split.serving
            } else {
                &mut split.other
            };
            *bucket += used;
        }
        split
    }

    /// Each kind's milliseconds per `n` (requests or texts), as one line's fields.
    pub fn per(&self, n: usize) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / n.max(1) as f64;
        format!(
            "pass {:.3}  engine thread {:.3}  HTTP+JSON+tokenizer {:.3}  other {:.3}",
            ms(self.compute),
            ms(self.engine),
            ms(self.serving),
            ms(self.other)
        )
    }

    /// The figures as JSON, in milliseconds.
    pub fn json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        serde_json::json!({
            "compute_ms": ms(self.compute),
            "engine_ms": ms(self.engine),
            "serving_ms": ms(self.serving),
            "other_ms": ms(self.other),
        })
    }
}

/// A thread's time on a CPU to the nanosecond (the scheduler's `se.sum_exec_runtime`, in
/// milliseconds, from `/proc/PID/task/TID/sched`), where the kernel has that file; `stat`'s
/// clock ticks (10 ms) are too coarse for a request's path.
fn exact_runtime(task: &std::path::Path) -> Option<Duration> {
    let sched = std::fs::read_to_string(task.join("sched")).ok()?;
    let line = sched
        .lines()
        .find(|l| l.starts_with("se.sum_exec_runtime"))?;
    let ms: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some(Duration::from_secs_f64(ms / 1e3))
}

impl Sub for Split {
    type Output = Split;
    fn sub(self, before: Split) -> Split {
        Split {
            compute: self.compute.saturating_sub(before.compute),
            engine: self.engine.saturating_sub(before.engine),
            serving: self.serving.saturating_sub(before.serving),
            other: self.other.saturating_sub(before.other),
        }
    }
}
