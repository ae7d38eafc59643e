//! The memory limits that bind the daemon: its own cgroup, every ancestor up to the root (a
//! limit on a slice or a parent group binds as hard as one on the service), and the machine's
//! memory. Each level is read with what is charged to it, so a co-tenant's memory counts: the
//! room for a load is what the tightest level has left, not what the daemon alone holds.
//!
//! Reading is separate from the arithmetic: [`read`] walks the cgroup filesystem (fixture trees
//! in tests), [`Assessment::of`] is a pure function of the levels it found. One concern, at
//! length mostly for its fixture tests.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where the readers look: the running system, or a fixture tree in tests.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Text of `/proc/self/cgroup`.
    pub proc_self_cgroup: PathBuf,
    /// Where the cgroup filesystem is mounted.
    pub cgroup_root: PathBuf,
    /// System-wide PSI file.
    pub proc_pressure: PathBuf,
    /// `/proc/meminfo`, for the machine's total and available memory.
    pub proc_meminfo: PathBuf,
}

impl Paths {
    /// The running system's paths.
    pub fn system() -> Paths {
        Paths {
            proc_self_cgroup: "/proc/self/cgroup".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            proc_pressure: "/proc/pressure/memory".into(),
            proc_meminfo: "/proc/meminfo".into(),
        }
    }
}

/// What kind of level a [`Level`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A cgroup v2 group (`memory.max`, `memory.high`, `memory.current`).
    V2,
    /// A cgroup v1 memory group (`memory.limit_in_bytes`, `memory.usage_in_bytes`).
    V1,
    /// An ancestor the daemon cannot see (outside its cgroup namespace) whose limit shows only
    /// in v1's `hierarchical_memory_limit`; its usage is not readable, so ours stands in.
    V1Hidden,
    /// The machine: total memory, and what is not available.
    System,
}

/// One level that can bind the daemon's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Level {
    /// Which kind.
    pub kind: Kind,
    /// The cgroup directory, or `/proc/meminfo` for the machine.
    pub path: PathBuf,
    /// Whether this is the daemon's own group (or the machine when there is none).
    pub own: bool,
    /// Where pressure starts: `memory.high`, else the hard limit.
    pub soft_bytes: Option<u64>,
    /// The limit past which the kernel reclaims hard and then kills.
    pub hard_bytes: Option<u64>,
    /// Charged memory that reclaim cannot simply drop: usage less file cache.
    pub working_set_bytes: u64,
    /// The OOM kills the kernel counted in this group (`None` where it does not say).
    pub oom_kills: Option<u64>,
}

impl Level {
    /// The file that sets the soft limit, for messages.
    pub fn soft_name(&self) -> &'static str {
        match self.kind {
            Kind::V2 if self.soft_bytes != self.hard_bytes => "memory.high",
            Kind::V2 => "memory.max",
            Kind::V1 => "memory.limit_in_bytes",
            Kind::V1Hidden => "hierarchical_memory_limit",
            Kind::System => "MemTotal",
        }
    }

    /// The level's name: `cgroup v1 /sys/fs/cgroup/memory/x`.
    pub fn name(&self) -> String {
        let what = match self.kind {
            Kind::V2 => "cgroup v2",
            Kind::V1 => "cgroup v1",
            Kind::V1Hidden => "a cgroup v1 ancestor outside the daemon's view, above",
            Kind::System => "system memory",
        };
        format!("{what} {}", self.path.display())
    }

    /// The level in words: `cgroup v1 /sys/fs/cgroup/memory/x (memory.limit_in_bytes 314 MiB)`.
    pub fn describe(&self) -> String {
        match self.soft_bytes {
            Some(s) => format!("{} ({} {} MiB)", self.name(), self.soft_name(), s >> 20),
            None => format!("{} (no limit)", self.name()),
        }
    }
}

/// v1 reports "no limit" as a huge page-aligned number rather than `max`.
const V1_UNLIMITED: u64 = 1 << 62;

fn read_text(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// A number file; `max` and v1's huge "unlimited" are `None`.
fn read_limit(path: &Path) -> Option<u64> {
    let text = read_text(path)?;
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse().ok().filter(|&v| v < V1_UNLIMITED)
}

/// The value of `key` in a `key value` per line file (memory.stat, memory.events); 0 when
/// absent.
pub fn stat_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// The daemon's cgroup directories: `(v2 dir, v1 memory dir)`, either may be missing, and the
/// root of the v2 and v1 memory hierarchies they sit in.
#[derive(Debug, Clone, Default)]
pub struct Dirs {
    /// The daemon's group in the unified hierarchy.
    pub v2: Option<PathBuf>,
    /// Where the unified hierarchy is mounted.
    pub v2_root: PathBuf,
    /// The daemon's group in the v1 memory hierarchy.
    pub v1: Option<PathBuf>,
    /// Where the v1 memory hierarchy is mounted.
    pub v1_root: PathBuf,
}

/// Finds the daemon's groups from `/proc/self/cgroup`.
pub fn dirs(paths: &Paths) -> Dirs {
    let text = read_text(&paths.proc_self_cgroup).unwrap_or_default();
    let root = &paths.cgroup_root;
    // Unified hierarchy: at the root, or at root/unified on hybrid systems.
    let v2_root = if root.join("cgroup.controllers").exists() {
        root.to_path_buf()
    } else {
        root.join("unified")
    };
    let v1_root = root.join("memory");
    let mut d = Dirs {
        v2_root: v2_root.clone(),
        v1_root: v1_root.clone(),
        ..Dirs::default()
    };
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(rel)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = rel.trim_start_matches('/');
        if controllers.is_empty() {
            let dir = v2_root.join(rel);
            if dir.join("cgroup.procs").exists() || dir.join("memory.pressure").exists() {
                d.v2 = Some(dir);
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = v1_root.join(rel);
            if dir.join("memory.usage_in_bytes").exists() {
                d.v1 = Some(dir);
            }
        }
    }
    d
}

/// `dir` and its ancestors up to and including `root`, nearest first.
fn up_to(dir: &Path, root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if !d.starts_with(root) {
            break;
        }
        out.push(d.to_path_buf());
        if d == root {
            break;
        }
        cur = d.parent();
    }
    out
}

fn v1_level(dir: &Path, own: bool) -> Option<Level> {
    let usage = read_limit(&dir.join("memory.usage_in_bytes"))?;
    let stat = read_text(&dir.join("memory.stat")).unwrap_or_default();
    // total_* are hierarchical: the group and everything under it.
    let cache = stat_field(&stat, "total_active_file") + stat_field(&stat, "total_inactive_file");
    let limit = read_limit(&dir.join("memory.limit_in_bytes"));
    let oom = read_text(&dir.join("memory.oom_control")).map(|o| stat_field(&o, "oom_kill"));
    Some(Level {
        kind: Kind::V1,
        path: dir.to_path_buf(),
        own,
        soft_bytes: limit,
        hard_bytes: limit,
        working_set_bytes: usage.saturating_sub(cache),
        oom_kills: oom,
    })
}

fn v2_level(dir: &Path, own: bool) -> Option<Level> {
    let current = read_limit(&dir.join("memory.current"))?;
    let stat = read_text(&dir.join("memory.stat")).unwrap_or_default();
    let cache = stat_field(&stat, "active_file") + stat_field(&stat, "inactive_file");
    let max = read_limit(&dir.join("memory.max"));
    let high = read_limit(&dir.join("memory.high"));
    let events = read_text(&dir.join("memory.events")).map(|e| stat_field(&e, "oom_kill"));
    Some(Level {
        kind: Kind::V2,
        path: dir.to_path_buf(),
        own,
        soft_bytes: match (high, max) {
            (Some(h), Some(m)) => Some(h.min(m)),
            (h, m) => h.or(m),
        },
        hard_bytes: max,
        working_set_bytes: current.saturating_sub(cache),
        oom_kills: events,
    })
}

/// The machine's total and available memory from `/proc/meminfo`.
fn system_level(paths: &Paths, own: bool) -> Option<Level> {
    let text = read_text(&paths.proc_meminfo)?;
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .map(|v| v * 1024)
    };
    let total = kib("MemTotal:")?;
    let available = kib("MemAvailable:")?;
    Some(Level {
        kind: Kind::System,
        path: paths.proc_meminfo.clone(),
        own,
        soft_bytes: Some(total),
        hard_bytes: Some(total),
        working_set_bytes: total.saturating_sub(available),
        oom_kills: None,
    })
}

/// Every level that can bind the daemon, its own group first (always present when readable,
/// limited or not), then each limited ancestor, then the machine. The v1 memory controller
/// wins where both hierarchies exist (hybrid hosts bind memory to v1).
pub fn read(paths: &Paths) -> Vec<Level> {
    let d = dirs(paths);
    let mut levels = Vec::new();
    if let Some(own) = &d.v1 {
        for (i, dir) in up_to(own, &d.v1_root).iter().enumerate() {
            if let Some(l) = v1_level(dir, i == 0)
                && (i == 0 || l.soft_bytes.is_some())
            {
                levels.push(l);
            }
        }
        // An ancestor outside our view still shows in the hierarchical limit.
        let stat = read_text(&own.join("memory.stat")).unwrap_or_default();
        let hierarchical = stat_field(&stat, "hierarchical_memory_limit");
        let seen = levels.iter().filter_map(|l| l.soft_bytes).min();
        if hierarchical > 0
            && hierarchical < V1_UNLIMITED
            && seen.is_none_or(|s| hierarchical < s)
            && let Some(own_level) = levels.first()
        {
            levels.push(Level {
                kind: Kind::V1Hidden,
                path: own.clone(),
                own: false,
                soft_bytes: Some(hierarchical),
                hard_bytes: Some(hierarchical),
                working_set_bytes: own_level.working_set_bytes,
                oom_kills: None,
            });
        }
    } else if let Some(own) = &d.v2 {
        // Even where the daemon's own group has no memory controller (not delegated), a
        // limited ancestor binds it.
        for (i, dir) in up_to(own, &d.v2_root).iter().enumerate() {
            if let Some(l) = v2_level(dir, i == 0)
                && (i == 0 || l.soft_bytes.is_some())
            {
                levels.push(l);
            }
        }
    }
    let own = levels.is_empty();
    if let Some(s) = system_level(paths, own) {
        levels.push(s);
    }
    levels
}

/// Thresholds the arithmetic needs, from `memory.pressure` and `memory.reserve`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Share of the soft limit at which pressure starts.
    pub shed_at: f64,
    /// Share of the hard limit at which memory is critical.
    pub unload_all_at: f64,
    /// Bytes kept free below the pressure threshold for forward passes' activations.
    pub reserve: u64,
}

/// What the levels say together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    /// Index of the binding level: the one with the least room.
    pub binding: usize,
    /// Bytes a load may still take at the binding level: its pressure threshold, less its
    /// working set, less the reserve. Negative when already past.
    pub room_bytes: i64,
    /// Bytes a brief peak (a load's transient copies) may take: the least room below any
    /// level's critical threshold, less the reserve. Negative when already past.
    pub peak_room_bytes: i64,
    /// Bytes a model may take when nothing of its fallback chain is loaded (the device would
    /// otherwise serve nothing): the least room below any level's critical threshold (its
    /// soft limit where that is lower, or where it has no hard one), less the reserve. The
    /// reserve is the hysteresis: a model loaded into it stays until the critical threshold.
    pub last_resort_room_bytes: i64,
    /// Bytes a load's brief peak may take at the last resort: the least room below any
    /// level's hard limit, less the reserve; `i64::MAX` where no level has one.
    pub hard_room_bytes: i64,
    /// Bytes to free to bring every level back to the reserve below its threshold; 0 while no
    /// level is at its threshold.
    pub excess_bytes: u64,
    /// The levels at their pressure threshold, in words.
    pub pressed: Vec<String>,
    /// The levels at their critical threshold, in words.
    pub critical: Vec<String>,
}

impl Assessment {
    /// Grades `levels` against `t`. Levels without a limit bind nothing.
    pub fn of(levels: &[Level], t: Thresholds) -> Option<Assessment> {
        let mut best: Option<(usize, i64)> = None;
        let mut peak_room = i64::MAX;
        let mut last_resort = i64::MAX;
        let mut hard_room = i64::MAX;
        let mut excess = 0u64;
        let mut pressed = Vec::new();
        let mut critical = Vec::new();
        for (i, l) in levels.iter().enumerate() {
            let Some(soft) = l.soft_bytes else { continue };
            let threshold = (soft as f64 * t.shed_at) as u64;
            let ws = l.working_set_bytes;
            let room = threshold as i64 - ws as i64 - t.reserve as i64;
            if best.is_none_or(|(_, r)| room < r) {
                best = Some((i, room));
            }
            if ws >= threshold {
                excess = excess.max((ws + t.reserve).saturating_sub(threshold));
                pressed.push(format!(
                    "working set {} MiB >= {:.0}% of {}",
                    ws >> 20,
                    t.shed_at * 100.0,
                    l.describe()
                ));
            }
            let mut ceiling = soft as i64;
            if let Some(hard) = l.hard_bytes {
                let critical = (hard as f64 * t.unload_all_at) as i64;
                peak_room = peak_room.min(critical - ws as i64 - t.reserve as i64);
                hard_room = hard_room.min(hard as i64 - ws as i64 - t.reserve as i64);
                ceiling = ceiling.min(critical);
            }
            last_resort = last_resort.min(ceiling - ws as i64 - t.reserve as i64);
            if let Some(hard) = l.hard_bytes
                && ws as f64 >= t.unload_all_at * hard as f64
            {
                critical.push(format!(
                    "working set {} MiB >= {:.0}% of the hard limit {} MiB of {}",
                    ws >> 20,
                    t.unload_all_at * 100.0,
                    hard >> 20,
                    l.name()
                ));
            }
        }
        let (binding, room_bytes) = best?;
        Some(Assessment {
            binding,
            room_bytes,
            peak_room_bytes: peak_room.max(room_bytes),
            last_resort_room_bytes: last_resort.max(room_bytes),
            hard_room_bytes: hard_room,
            excess_bytes: excess,
            pressed,
            critical,
        })
    }
}

/// The cgroup tree as `GET /api/memory/status` reports it: the binding limit and its room,
/// and what the process and the machine may still grow by.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The level with the least room, when any level has a limit.
    pub limit: Option<BindingLimit>,
    /// Room before the hard limits.
    pub available: Available,
}

/// The level that binds, and the room a load has under it.
#[derive(Debug, Clone, Serialize)]
pub struct BindingLimit {
    /// The level, in words.
    pub from: String,
    /// Its cgroup directory (or `/proc/meminfo`).
    pub path: PathBuf,
    /// Which kind of level.
    pub kind: Kind,
    /// Where pressure starts.
    pub soft_bytes: Option<u64>,
    /// Its hard limit.
    pub hard_bytes: Option<u64>,
    /// Its working set.
    pub working_set_bytes: u64,
    /// Bytes a load may still take there (see [`Assessment::room_bytes`]).
    pub room_bytes: i64,
}

/// What may still be taken before a hard limit.
#[derive(Debug, Clone, Serialize)]
pub struct Available {
    /// What the process may still grow by before the tightest hard limit above it.
    pub process_bytes: Option<u64>,
    /// What the machine has available (MemAvailable).
    pub system_bytes: Option<u64>,
}

impl Report {
    /// Reports on `levels` under thresholds `t`.
    pub fn of(levels: &[Level], t: Thresholds) -> Report {
        let room = |l: &Level| l.hard_bytes.map(|h| h.saturating_sub(l.working_set_bytes));
        let limit = Assessment::of(levels, t).map(|a| {
            let l = &levels[a.binding];
            BindingLimit {
                from: l.describe(),
                path: l.path.clone(),
                kind: l.kind,
                soft_bytes: l.soft_bytes,
                hard_bytes: l.hard_bytes,
                working_set_bytes: l.working_set_bytes,
                room_bytes: a.room_bytes,
            }
        });
        Report {
            limit,
            available: Available {
                process_bytes: levels.iter().filter_map(room).min(),
                system_bytes: levels
                    .iter()
                    .find(|l| l.kind == Kind::System)
                    .and_then(room),
            },
        }
    }
}

/// The lowest limit of all levels (the one an `auto` budget derives from), if any is set.
pub fn lowest_limit(levels: &[Level]) -> Option<&Level> {
    levels
        .iter()
        .filter(|l| l.soft_bytes.is_some())
        .min_by_key(|l| l.soft_bytes)
}

#[cfg(test)]
mod tests;
