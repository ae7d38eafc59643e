//! Memory pressure sources, best first: systemd's `MemoryPressureWatch=` protocol, a PSI
//! trigger on the daemon's own cgroup v2 `memory.pressure`, polling cgroup v2, polling the
//! cgroup v1 memory controller, and system-wide readings. A [`Probe`] is the chosen source:
//! an optional trigger that wakes the monitor the moment the kernel reports a stall, plus the
//! files read at every tick to grade memory as normal, under pressure, or critical.
//!
//! Paths and the environment are parameters, so fixture trees drive every reader in tests.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::hierarchy::{self, Assessment, Thresholds};
use super::policy::Level;
use crate::config::{PressureSettings, PressureSourceSetting};

/// Which source is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// systemd's `$MEMORY_PRESSURE_WATCH`.
    Systemd,
    /// Our own PSI trigger on the cgroup's `memory.pressure`.
    Psi,
    /// Polling cgroup v2 files.
    CgroupV2,
    /// Polling the cgroup v1 memory controller.
    CgroupV1,
    /// System-wide PSI and available memory.
    System,
    /// Monitoring is off.
    Off,
}

impl SourceKind {
    /// The name used in the configuration, logs and `/api/memory/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Systemd => "systemd",
            SourceKind::Psi => "psi",
            SourceKind::CgroupV2 => "cgroup-v2",
            SourceKind::CgroupV1 => "cgroup-v1",
            SourceKind::System => "system",
            SourceKind::Off => "off",
        }
    }
}

pub use super::hierarchy::Paths;

/// systemd's memory pressure protocol: the path to watch and the bytes to write to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// `$MEMORY_PRESSURE_WATCH`.
    pub path: PathBuf,
    /// `$MEMORY_PRESSURE_WRITE`, base64-decoded.
    pub write: Vec<u8>,
}

/// Reads the protocol's variables: `None` when unset or `/dev/null` (systemd's way of saying
/// monitoring is off), an error naming the variable when it cannot be used.
pub fn watch_from_env(
    watch: Option<OsString>,
    write: Option<OsString>,
) -> Result<Option<Watch>, String> {
    let Some(path) = watch.filter(|w| !w.is_empty()) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    if path == Path::new("/dev/null") {
        return Ok(None);
    }
    use base64::Engine as _;
    let write = match write {
        None => Vec::new(),
        Some(w) => base64::engine::general_purpose::STANDARD
            .decode(w.to_string_lossy().trim())
            .map_err(|e| format!("MEMORY_PRESSURE_WRITE is not base64: {e}"))?,
    };
    Ok(Some(Watch { path, write }))
}

/// The trigger we write ourselves: a stall of 200 ms within 2 s, systemd's default
/// (unprivileged triggers need windows that are multiples of 2 s).
pub const PSI_TRIGGER: &[u8] = b"some 200000 2000000";

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

/// Counts trigger firings and wakes the monitor.
#[derive(Debug, Default)]
pub struct TriggerEvents {
    /// Firings so far.
    pub count: AtomicU64,
    /// Woken on each firing.
    pub notify: tokio::sync::Notify,
}

/// A running trigger: a thread polling the watched file. Dropping it stops the thread.
struct Trigger {
    events: Arc<TriggerEvents>,
    _stop: OwnedFd,
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
        let v2 = dirs.v2.clone();
        let v2_psi = v2
            .as_ref()
            .map(|d| d.join("memory.pressure"))
            .filter(|p| p.exists());
        let new = |kind, detail, psi_file: Option<PathBuf>, trigger| {
            // The root group's PSI (a daemon in "0::/", as on hybrid v1 hosts) and
            // /proc/pressure/memory count every process of the host. Inside a cgroup
            // namespace "0::/" is the container's own group, which has a memory.max.
            let host_wide = psi_file.as_ref().is_some_and(|f| {
                *f == paths.proc_pressure
                    || (f.parent() == Some(dirs.v2_root.as_path())
                        && !dirs.v2_root.join("memory.max").exists())
            });
            Probe {
                kind,
                detail,
                psi_file,
                psi_host_wide: host_wide,
                paths: paths.clone(),
                trigger,
                last_psi_total: None,
                last_oom: std::collections::HashMap::new(),
            }
        };

        let systemd = |watch: Option<Watch>| -> Result<Probe, String> {
            let w = watch.ok_or("$MEMORY_PRESSURE_WATCH is not set (MemoryPressureWatch= needs systemd 254 or later)")?;
            let trigger = Trigger::start(&w.path, &w.write)?;
            let is_psi = w.path.file_name().is_some_and(|n| n == "memory.pressure");
            Ok(new(
                SourceKind::Systemd,
                format!("systemd MemoryPressureWatch on {}", w.path.display()),
                is_psi.then(|| w.path.clone()).or(v2_psi.clone()),
                Some(trigger),
            ))
        };
        let psi = || -> Result<Probe, String> {
            let file = v2_psi
                .clone()
                .ok_or("the daemon's cgroup v2 has no memory.pressure")?;
            let trigger = Trigger::start(&file, PSI_TRIGGER)?;
            Ok(new(
                SourceKind::Psi,
                format!("PSI trigger (some 200ms per 2s) on {}", file.display()),
                Some(file),
                Some(trigger),
            ))
        };
        let cgroup_v2 = || -> Result<Probe, String> {
            let Some(dir) = v2.clone().filter(|d| d.join("memory.current").exists()) else {
                return Err("the daemon is in no cgroup v2 with the memory controller".into());
            };
            Ok(new(
                SourceKind::CgroupV2,
                format!("polling {}", dir.display()),
                v2_psi.clone(),
                None,
            ))
        };
        let cgroup_v1 = || -> Result<Probe, String> {
            let Some(dir) = dirs.v1.clone() else {
                return Err("the daemon is in no cgroup v1 memory controller".into());
            };
            Ok(new(
                SourceKind::CgroupV1,
                format!("polling {}", dir.display()),
                None,
                None,
            ))
        };
        let system = || {
            let psi = Some(paths.proc_pressure.clone()).filter(|p| p.exists());
            new(
                SourceKind::System,
                "system-wide available memory and /proc/pressure/memory".into(),
                psi,
                None,
            )
        };
        let auto = |watch: Option<Watch>| {
            systemd(watch)
                .or_else(|_| psi())
                .or_else(|_| cgroup_v2())
                .or_else(|_| cgroup_v1())
                .unwrap_or_else(|_| system())
        };
        let chosen: Result<Probe, String> = match setting {
            S::Auto => return (auto(watch), None),
            S::Off => {
                return (
                    new(
                        SourceKind::Off,
                        "memory.pressure.source is off".into(),
                        None,
                        None,
                    ),
                    None,
                );
            }
            S::Systemd => systemd(watch.clone()),
            S::Psi => psi(),
            S::CgroupV2 => cgroup_v2(),
            S::CgroupV1 => cgroup_v1(),
            S::System => Ok(system()),
        };
        match chosen {
            Ok(p) => (p, None),
            Err(why) => {
                let p = auto(watch);
                let warning = format!(
                    "memory.pressure.source: {} is not available here ({why}); using {} instead",
                    serde_yaml::to_string(&setting)
                        .unwrap_or_default()
                        .trim_end(),
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

/// `(avg10, total)` of the `some` line of a PSI file.
pub fn parse_psi_some(text: &str) -> Option<(f64, u64)> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let mut avg10 = None;
    let mut total = None;
    for field in line.split_whitespace().skip(1) {
        match field.split_once('=') {
            Some(("avg10", v)) => avg10 = v.parse().ok(),
            Some(("total", v)) => total = v.parse().ok(),
            _ => {}
        }
    }
    Some((avg10?, total?))
}

impl Trigger {
    /// Arms a trigger on `path` and starts the thread that waits on it. A PSI file gets
    /// `write` written and is polled for `POLLPRI`; a FIFO is polled for data; an `AF_UNIX`
    /// socket is connected, sent `write`, and polled for data (the three forms systemd's
    /// protocol allows).
    fn start(path: &Path, write: &[u8]) -> Result<Trigger, String> {
        use nix::poll::PollFlags;
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (fd, flags): (OwnedFd, PollFlags) = if meta.file_type().is_socket() {
            let mut s = std::os::unix::net::UnixStream::connect(path)
                .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
            s.write_all(write)
                .map_err(|e| format!("cannot write the trigger to {}: {e}", path.display()))?;
            (s.into(), PollFlags::POLLIN)
        } else if meta.file_type().is_fifo() {
            // Read-write, so the FIFO never reports a hang-up while no writer has it open.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            (f.into(), PollFlags::POLLIN)
        } else {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| format!("cannot open {} read-write: {e}", path.display()))?;
            f.write_all(write).map_err(|e| {
                format!(
                    "the kernel refused the trigger {:?} on {}: {e}",
                    String::from_utf8_lossy(write),
                    path.display()
                )
            })?;
            (f.into(), PollFlags::POLLPRI)
        };
        let (stop_rx, stop_tx) =
            nix::unistd::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let events = Arc::new(TriggerEvents::default());
        let thread_events = events.clone();
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("caxton-pressure".into())
            .spawn(move || wait_for_triggers(fd, flags, stop_rx, &thread_events, &name))
            .map_err(|e| format!("cannot start the trigger thread: {e}"))?;
        Ok(Trigger {
            events,
            _stop: stop_tx,
        })
    }
}

fn wait_for_triggers(
    fd: OwnedFd,
    flags: nix::poll::PollFlags,
    stop: OwnedFd,
    events: &TriggerEvents,
    name: &str,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut file = std::fs::File::from(fd);
    let mut buf = [0u8; 512];
    loop {
        let (watched, stopped) = {
            let mut fds = [
                PollFd::new(file.as_fd(), flags),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("memory pressure trigger on {name} stopped: poll failed: {e}");
                    return;
                }
            }
            (
                fds[0].revents().unwrap_or(PollFlags::empty()),
                fds[1].revents().unwrap_or(PollFlags::empty()),
            )
        };
        if !stopped.is_empty() {
            return;
        }
        if watched.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
            tracing::warn!(
                "memory pressure trigger on {name} stopped: the file went away; polling continues"
            );
            return;
        }
        if watched.contains(PollFlags::POLLIN) {
            // FIFO or socket: drain what was written; end of stream ends the trigger.
            if let Ok(0) = file.read(&mut buf) {
                tracing::warn!("memory pressure trigger on {name} closed; polling continues");
                return;
            }
        }
        if watched.intersects(flags) {
            events.count.fetch_add(1, Ordering::Relaxed);
            events.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PressureSettings;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    fn psi(avg10: f64, total: u64) -> String {
        format!(
            "some avg10={avg10:.2} avg60=0.00 avg300=0.00 total={total}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        )
    }

    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new(proc_cgroup: &str) -> Tree {
            let dir = tempfile::tempdir().expect("tempdir");
            write(&dir.path().join("proc_self_cgroup"), proc_cgroup);
            Tree { dir }
        }
        fn paths(&self) -> Paths {
            Paths {
                proc_self_cgroup: self.dir.path().join("proc_self_cgroup"),
                cgroup_root: self.dir.path().join("cgroup"),
                proc_pressure: self.dir.path().join("proc_pressure_memory"),
                proc_meminfo: self.dir.path().join("meminfo"),
            }
        }
        fn file(&self, rel: &str, text: &str) {
            write(&self.dir.path().join(rel), text);
        }
    }

    fn v2_tree() -> Tree {
        let t = Tree::new("0::/system.slice/caxton.service\n");
        t.file("cgroup/cgroup.controllers", "memory\n");
        let g = "cgroup/system.slice/caxton.service";
        t.file(&format!("{g}/cgroup.procs"), "");
        t.file(&format!("{g}/memory.current"), &format!("{}", 600u64 << 20));
        t.file(
            &format!("{g}/memory.stat"),
            &format!(
                "anon 1\nactive_file {}\ninactive_file {}\n",
                50u64 << 20,
                50u64 << 20
            ),
        );
        t.file(&format!("{g}/memory.high"), &format!("{}", 768u64 << 20));
        t.file(&format!("{g}/memory.max"), &format!("{}", 1024u64 << 20));
        t.file(
            &format!("{g}/memory.events"),
            "low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\n",
        );
        t.file(&format!("{g}/memory.pressure"), &psi(0.0, 100));
        t
    }

    #[test]
    fn polling_v2_grades_the_working_set_against_high_and_max() {
        let t = v2_tree();
        let g = "cgroup/system.slice/caxton.service";
        let settings = PressureSettings::default();
        let (mut p, warning) = Probe::select(PressureSourceSetting::CgroupV2, &t.paths(), None);
        assert_eq!((p.kind, warning), (SourceKind::CgroupV2, None));
        // 600 MiB charged, 100 MiB of it file cache: 500 of 768 MiB high.
        let r = p.read(&settings, 0);
        assert_eq!(r.level, Level::Normal, "{r:?}");
        assert_eq!(r.working_set_bytes, Some(500 << 20));
        assert_eq!(
            (r.soft_limit_bytes, r.hard_limit_bytes),
            (Some(768 << 20), Some(1 << 30))
        );
        t.file(&format!("{g}/memory.current"), &format!("{}", 800u64 << 20));
        let r = p.read(&settings, 0);
        assert_eq!(r.level, Level::Pressure);
        assert_eq!(
            r.why,
            format!(
                "working set 700 MiB >= 90% of cgroup v2 {} (memory.high 768 MiB)",
                t.dir.path().join(g).display()
            )
        );
        t.file(
            &format!("{g}/memory.current"),
            &format!("{}", 1100u64 << 20),
        );
        let r = p.read(&settings, 0);
        assert_eq!(r.level, Level::Critical);
        assert_eq!(
            r.why,
            format!(
                "working set 1000 MiB >= 97% of the hard limit 1024 MiB of cgroup v2 {}",
                t.dir.path().join(g).display()
            )
        );
        assert_eq!(r.usage_level, Level::Critical);
        assert!(!r.stall && !r.psi_host_wide);
    }

    #[test]
    fn psi_of_the_root_group_is_marked_host_wide() {
        // A hybrid v1 host: the daemon sits at the root of the unified hierarchy.
        let t = Tree::new("4:memory:/caxton\n0::/\n");
        t.file("cgroup/unified/cgroup.procs", "");
        t.file("cgroup/unified/memory.pressure", "");
        t.file("cgroup/memory/caxton/memory.usage_in_bytes", "1000");
        let (mut p, _) = Probe::select(PressureSourceSetting::Auto, &t.paths(), None);
        assert_eq!(p.kind, SourceKind::Psi);
        // Written after the trigger, which a fixture file takes as plain text.
        t.file("cgroup/unified/memory.pressure", &psi(30.0, 10));
        p.read(&PressureSettings::default(), 0);
        t.file("cgroup/unified/memory.pressure", &psi(30.0, 20));
        let r = p.read(&PressureSettings::default(), 0);
        assert_eq!(
            (r.level, r.usage_level, r.stall),
            (Level::Pressure, Level::Normal, true)
        );
        assert!(r.psi_host_wide);
        assert_eq!(r.why, "host-wide PSI some avg10 30.0% >= 10.0%");
    }

    #[test]
    fn an_oom_kill_in_the_cgroup_is_critical() {
        let t = v2_tree();
        let g = "cgroup/system.slice/caxton.service";
        let (mut p, _) = Probe::select(PressureSourceSetting::CgroupV2, &t.paths(), None);
        assert_eq!(p.read(&PressureSettings::default(), 0).level, Level::Normal);
        t.file(
            &format!("{g}/memory.events"),
            "high 3\nmax 9\noom 1\noom_kill 1\n",
        );
        let r = p.read(&PressureSettings::default(), 0);
        assert_eq!(
            (r.level, r.why.as_str()),
            (Level::Critical, "1 OOM kill(s) in the cgroup")
        );
    }

    #[test]
    fn psi_counts_only_while_the_stall_total_grows() {
        let t = v2_tree();
        let g = "cgroup/system.slice/caxton.service";
        let (mut p, _) = Probe::select(PressureSourceSetting::CgroupV2, &t.paths(), None);
        let s = PressureSettings::default();
        t.file(&format!("{g}/memory.pressure"), &psi(25.0, 1000));
        // The first reading has nothing to compare the total with.
        assert_eq!(p.read(&s, 0).level, Level::Normal);
        t.file(&format!("{g}/memory.pressure"), &psi(25.0, 5000));
        let r = p.read(&s, 0);
        assert_eq!(
            (r.level, r.why.as_str()),
            (Level::Pressure, "PSI some avg10 25.0% >= 10.0%")
        );
        assert_eq!(r.psi_some_avg10, Some(25.0));
        // avg10 still high, but the stall is over.
        assert_eq!(p.read(&s, 0).level, Level::Normal);
    }

    #[test]
    fn v1_subtracts_file_cache_and_ignores_the_unlimited_value() {
        let t = Tree::new("4:memory:/caxton\n0::/\n");
        t.file(
            "cgroup/memory/caxton/memory.usage_in_bytes",
            &format!("{}", 300u64 << 20),
        );
        t.file(
            "cgroup/memory/caxton/memory.stat",
            &format!(
                "cache 1\ntotal_active_file {}\ntotal_inactive_file {}\n",
                10u64 << 20,
                20u64 << 20
            ),
        );
        t.file(
            "cgroup/memory/caxton/memory.limit_in_bytes",
            &format!("{}", 300u64 << 20),
        );
        t.file(
            "cgroup/memory/caxton/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        );
        let (mut p, w) = Probe::select(PressureSourceSetting::Auto, &t.paths(), None);
        assert_eq!((p.kind, w), (SourceKind::CgroupV1, None));
        let r = p.read(&PressureSettings::default(), 0);
        // 270 of 300 MiB = 90%.
        assert_eq!(
            (r.level, r.working_set_bytes),
            (Level::Pressure, Some(270 << 20))
        );
        t.file(
            "cgroup/memory/caxton/memory.limit_in_bytes",
            "9223372036854771712",
        );
        let r = p.read(&PressureSettings::default(), 0);
        assert_eq!((r.level, r.hard_limit_bytes), (Level::Normal, None));
    }

    #[test]
    fn auto_prefers_systemd_then_psi_then_polling_and_falls_back_with_a_reason() {
        let t = v2_tree();
        let watch = Watch {
            path: t
                .dir
                .path()
                .join("cgroup/system.slice/caxton.service/memory.pressure"),
            write: PSI_TRIGGER.to_vec(),
        };
        let (p, _) = Probe::select(PressureSourceSetting::Auto, &t.paths(), Some(watch));
        assert_eq!(p.kind, SourceKind::Systemd);
        // A fixture file accepts the trigger text as a real PSI file would.
        let (p, _) = Probe::select(PressureSourceSetting::Auto, &t.paths(), None);
        assert_eq!(p.kind, SourceKind::Psi);
        let (p, w) = Probe::select(PressureSourceSetting::CgroupV1, &t.paths(), None);
        assert_eq!(p.kind, SourceKind::Psi);
        assert_eq!(
            w.as_deref(),
            Some(
                "memory.pressure.source: cgroup-v1 is not available here (the daemon is in no cgroup v1 memory controller); using psi instead"
            )
        );
        let nothing = Tree::new("0::/gone\n");
        nothing.file("proc_pressure_memory", &psi(0.0, 0));
        nothing.file("meminfo", "MemTotal: 1024 kB\nMemAvailable: 512 kB\n");
        let (p, _) = Probe::select(PressureSourceSetting::Auto, &nothing.paths(), None);
        assert_eq!(p.kind, SourceKind::System);
        let r = {
            let mut p = p;
            p.read(&PressureSettings::default(), 0)
        };
        assert!(r.hard_limit_bytes.is_some_and(|total| total > 0), "{r:?}");
    }

    #[test]
    fn the_systemd_variables_are_read_and_checked() {
        assert_eq!(watch_from_env(None, None), Ok(None));
        assert_eq!(watch_from_env(Some("/dev/null".into()), None), Ok(None));
        assert_eq!(
            watch_from_env(
                Some("/x/memory.pressure".into()),
                Some("c29tZSAyMDAwMDAgMjAwMDAwMAA=".into())
            ),
            Ok(Some(Watch {
                path: "/x/memory.pressure".into(),
                write: b"some 200000 2000000\0".to_vec()
            }))
        );
        let e = watch_from_env(Some("/x".into()), Some("not base64!".into())).expect_err("bad");
        assert!(e.starts_with("MEMORY_PRESSURE_WRITE is not base64"), "{e}");
    }

    #[test]
    fn a_fifo_watch_wakes_the_monitor_on_each_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("pressure.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let trigger = Trigger::start(&fifo, b"").expect("armed");
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .expect("open");
        writer.write_all(b"x").expect("write");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while trigger.events.count.load(Ordering::Relaxed) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the trigger never fired"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn parses_psi_lines() {
        assert_eq!(parse_psi_some(&psi(12.5, 42)), Some((12.5, 42)));
        assert_eq!(parse_psi_some("full avg10=1.00 total=3\n"), None);
    }
}
