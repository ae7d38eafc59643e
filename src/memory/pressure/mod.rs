//! Memory pressure sources, best first: systemd's `MemoryPressureWatch=` protocol, a PSI
//! trigger on the daemon's own cgroup v2 `memory.pressure`, polling cgroup v2, polling the
//! cgroup v1 memory controller, and system-wide readings. A [`Probe`] is the chosen source:
//! an optional trigger that wakes the monitor the moment the kernel reports a stall, plus the
//! files read at every tick to grade memory as normal, under pressure, or critical.
//!
//! Paths and the environment are parameters, so fixture trees drive every reader in tests.
//!
//! Each source is a file of its own: [`systemd`] (the protocol's variables), [`psi`] (our own
//! trigger and PSI lines), [`polling`] (cgroup v2, cgroup v1, system); [`trigger`] is the
//! thread that waits on a watched file for the first two.

mod polling;
mod psi;
mod systemd;
#[cfg(test)]
mod tests;
mod trigger;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

pub use super::hierarchy::Paths;
use super::hierarchy::{self, Assessment, Dirs, Thresholds};
use super::policy::Level;
use crate::config::{PressureSettings, PressureSourceSetting};
pub use psi::{PSI_TRIGGER, parse_psi_some};
pub use systemd::{Watch, watch_from_env};
use trigger::Trigger;
pub use trigger::TriggerEvents;

/// Which source is in use: the sources are declared once, with the setting that asks for one.
pub use crate::config::PressureSource as SourceKind;

/// One reading of memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    /// The grade: the worse of the usage grade and a stall.
    pub level: Level,
    /// The grade of the working sets against the limits (and OOM kills) alone.
    pub usage_level: Level,
    /// Memory stalls now: PSI `some avg10` at or past its threshold with the total growing.
    pub stall: bool,
    /// Whether the PSI file read is the whole host's (the root cgroup's, or
    /// `/proc/pressure/memory`): other processes' stalls show in it.
    pub psi_host_wide: bool,
    /// Why, in words (the numbers that decided it).
    pub why: String,
    /// PSI `some avg10`, percent.
    pub psi_some_avg10: Option<f64>,
    /// Working set (usage less file cache) of the binding level.
    pub working_set_bytes: Option<u64>,
    /// Where pressure starts at the binding level (`memory.high`, else the hard limit).
    pub soft_limit_bytes: Option<u64>,
    /// Hard limit of the binding level.
    pub hard_limit_bytes: Option<u64>,
    /// The binding level in words: the cgroup (or the machine) with the least room.
    pub limit_from: Option<String>,
    /// Room a load may take at the binding level (see [`super::hierarchy::Assessment`]).
    pub room_bytes: Option<i64>,
    /// Bytes to free to bring every level back under its threshold by `memory.reserve`.
    pub excess_bytes: u64,
    /// Every level read: the daemon's cgroup, its limited ancestors, the machine.
    pub levels: Vec<hierarchy::Level>,
}

/// The chosen pressure source and the state needed between readings.
pub struct Probe {
    /// Which source.
    pub kind: SourceKind,
    /// What it watches, in words.
    pub detail: String,
    psi_file: Option<PathBuf>,
    psi_host_wide: bool,
    paths: Paths,
    trigger: Option<Trigger>,
    last_psi_total: Option<u64>,
    /// OOM kills last counted, per level: a level that appears brings its old count, and v2
    /// counts a kill at every ancestor, so each is compared with itself.
    last_oom: std::collections::HashMap<PathBuf, u64>,
}

/// What the sources look at: the daemon's groups and its cgroup v2 PSI file.
struct Found<'a> {
    paths: &'a Paths,
    dirs: Dirs,
    /// The daemon's own cgroup v2 `memory.pressure`, when there is one.
    v2_psi: Option<PathBuf>,
}

impl Found<'_> {
    /// A probe of `kind` reading `psi_file` at every tick, woken by `trigger`.
    fn probe(
        &self,
        kind: SourceKind,
        detail: String,
        psi_file: Option<PathBuf>,
        trigger: Option<Trigger>,
    ) -> Probe {
        // The root group's PSI (a daemon in "0::/", as on hybrid v1 hosts) and
        // /proc/pressure/memory count every process of the host. Inside a cgroup
        // namespace "0::/" is the container's own group, which has a memory.max.
        let host_wide = psi_file.as_ref().is_some_and(|f| {
            *f == self.paths.proc_pressure
                || (f.parent() == Some(self.dirs.v2_root.as_path())
                    && !self.dirs.v2_root.join("memory.max").exists())
        });
        Probe {
            kind,
            detail,
            psi_file,
            psi_host_wide: host_wide,
            paths: self.paths.clone(),
            trigger,
            last_psi_total: None,
            last_oom: std::collections::HashMap::new(),
        }
    }
}

impl Probe {
    /// Picks the source `setting` asks for, or the best available for `auto`; a requested
    /// source that is not available falls back to the best one, and the returned warning
    /// says why. Whatever the source, every reading grades the daemon's cgroup, its limited
    /// ancestors and the machine ([`super::hierarchy::read`]).
    pub fn select(
        setting: PressureSourceSetting,
        paths: &Paths,
        watch: Option<Watch>,
    ) -> (Probe, Option<String>) {
        use PressureSourceSetting as S;
        let dirs = hierarchy::dirs(paths);
        let v2_psi = dirs
            .v2
            .as_ref()
            .map(|d| d.join("memory.pressure"))
            .filter(|p| p.exists());
        let found = Found {
            paths,
            dirs,
            v2_psi,
        };
        let auto = |watch: Option<Watch>| {
            systemd::probe(&found, watch)
                .or_else(|_| psi::probe(&found))
                .or_else(|_| polling::cgroup_v2(&found))
                .or_else(|_| polling::cgroup_v1(&found))
                .unwrap_or_else(|_| polling::system(&found))
        };
        let requested = match setting {
            S::Auto => return (auto(watch), None),
            S::Requested(kind) => kind,
        };
        let chosen: Result<Probe, String> = match requested {
            SourceKind::Off => {
                return (
                    found.probe(
                        SourceKind::Off,
                        "memory.pressure.source is off".into(),
                        None,
                        None,
                    ),
                    None,
                );
            }
            SourceKind::Systemd => systemd::probe(&found, watch.clone()),
            SourceKind::Psi => psi::probe(&found),
            SourceKind::CgroupV2 => polling::cgroup_v2(&found),
            SourceKind::CgroupV1 => polling::cgroup_v1(&found),
            SourceKind::System => Ok(polling::system(&found)),
        };
        match chosen {
            Ok(p) => (p, None),
            Err(why) => {
                let p = auto(watch);
                let warning = format!(
                    "memory.pressure.source: {} is not available here ({why}); using {} instead",
                    requested.as_str(),
                    p.kind.as_str()
                );
                (p, Some(warning))
            }
        }
    }

    /// The trigger's event counter and wake-up, if the source has a trigger.
    pub fn events(&self) -> Option<Arc<TriggerEvents>> {
        self.trigger.as_ref().map(|t| t.events.clone())
    }

    /// Where the probe reads, for the kernel's usage notifications.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Takes one reading and grades it against the thresholds, with `reserve` bytes kept
    /// below each pressure threshold.
    pub fn read(&mut self, t: &PressureSettings, reserve: u64) -> Reading {
        let mut why = Vec::new();
        let mut stall = false;
        let mut avg10 = None;
        if let Some(text) = self
            .psi_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            && let Some((a, total)) = parse_psi_some(&text)
        {
            avg10 = Some(a);
            // avg10 decays over tens of seconds after a stall ends; only a growing total
            // means memory is stalling now, so a shed is not followed by more for old stalls.
            let stalling = self.last_psi_total.is_some_and(|last| total > last);
            self.last_psi_total = Some(total);
            if a >= t.psi_avg10 && stalling {
                stall = true;
                why.push(format!(
                    "{}PSI some avg10 {a:.1}% >= {:.1}%",
                    if self.psi_host_wide { "host-wide " } else { "" },
                    t.psi_avg10
                ));
            }
        }

        let levels = hierarchy::read(&self.paths);
        let mut usage_level = Level::Normal;
        // The nearest level that counted new kills says how many (v2 repeats them above).
        let mut killed = None;
        for l in &levels {
            let Some(n) = l.oom_kills else { continue };
            let last = self.last_oom.insert(l.path.clone(), n);
            if killed.is_none()
                && let Some(last) = last.filter(|&last| n > last)
            {
                killed = Some((n - last, l.path.clone()));
            }
        }
        if let Some((n, path)) = killed {
            usage_level = Level::Critical;
            why.push(if levels.first().is_some_and(|l| l.path == path) {
                format!("{n} OOM kill(s) in the cgroup")
            } else {
                format!("{n} OOM kill(s) in {}", path.display())
            });
        }
        let thresholds = Thresholds {
            shed_at: t.shed_at,
            unload_all_at: t.unload_all_at,
            reserve,
        };
        let assessment = Assessment::of(&levels, thresholds);
        if let Some(a) = &assessment {
            if !a.critical.is_empty() {
                usage_level = Level::Critical;
                why.extend(a.critical.iter().cloned());
            } else if !a.pressed.is_empty() {
                usage_level = usage_level.max(Level::Pressure);
                why.extend(a.pressed.iter().cloned());
            }
        }
        let binding = assessment.as_ref().map(|a| &levels[a.binding]);
        Reading {
            level: if stall {
                usage_level.max(Level::Pressure)
            } else {
                usage_level
            },
            usage_level,
            stall,
            psi_host_wide: self.psi_host_wide,
            why: if why.is_empty() {
                "no pressure".into()
            } else {
                why.join("; ")
            },
            psi_some_avg10: avg10,
            working_set_bytes: binding.map(|l| l.working_set_bytes),
            soft_limit_bytes: binding.and_then(|l| l.soft_bytes),
            hard_limit_bytes: binding.and_then(|l| l.hard_bytes),
            limit_from: binding.map(hierarchy::Level::describe),
            room_bytes: assessment.as_ref().map(|a| a.room_bytes),
            excess_bytes: assessment.as_ref().map_or(0, |a| a.excess_bytes),
            levels,
        }
    }
}
