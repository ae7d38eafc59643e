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

/// Where the readers look: the real system, or a fixture tree in tests.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Text of `/proc/self/cgroup`.
    pub proc_self_cgroup: PathBuf,
    /// Where the cgroup filesystem is mounted.
    pub cgroup_root: PathBuf,
    /// System-wide PSI file.
    pub proc_pressure: PathBuf,
}

impl Paths {
    /// The running system's paths.
    pub fn system() -> Paths {
        Paths {
            proc_self_cgroup: "/proc/self/cgroup".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            proc_pressure: "/proc/pressure/memory".into(),
        }
    }
}

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
    /// The grade.
    pub level: Level,
    /// Why, in words (the numbers that decided it).
    pub why: String,
    /// PSI `some avg10`, percent.
    pub psi_some_avg10: Option<f64>,
    /// Bytes in use that reclaim cannot simply drop (usage minus file cache).
    pub working_set_bytes: Option<u64>,
    /// Limit at which pressure starts (`memory.high`, else the hard limit, else RAM).
    pub soft_limit_bytes: Option<u64>,
    /// Hard limit (`memory.max`, `memory.limit_in_bytes`, else RAM).
    pub hard_limit_bytes: Option<u64>,
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

#[derive(Debug, Clone)]
enum MemoryFiles {
    V2(PathBuf),
    V1(PathBuf),
    System,
}

/// The chosen pressure source and the state needed between readings.
pub struct Probe {
    /// Which source.
    pub kind: SourceKind,
    /// What it watches, in words.
    pub detail: String,
    psi_file: Option<PathBuf>,
    memory: Option<MemoryFiles>,
    trigger: Option<Trigger>,
    last_psi_total: Option<u64>,
    last_oom: Option<u64>,
    system: Option<sysinfo::System>,
}

/// The daemon's cgroup directories: `(v2 dir, v1 memory dir)`, either may be missing.
fn cgroup_dirs(paths: &Paths) -> (Option<PathBuf>, Option<PathBuf>) {
    let text = std::fs::read_to_string(&paths.proc_self_cgroup).unwrap_or_default();
    let root = &paths.cgroup_root;
    let mut v1 = None;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(rel)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = rel.trim_start_matches('/');
        if controllers.is_empty() {
            // Unified hierarchy: at the root, or at root/unified on hybrid systems.
            let base = if root.join("cgroup.controllers").exists() {
                root.to_path_buf()
            } else {
                root.join("unified")
            };
            let dir = base.join(rel);
            if dir.join("cgroup.procs").exists() || dir.join("memory.pressure").exists() {
                v2 = Some(dir);
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = root.join("memory").join(rel);
            if dir.join("memory.usage_in_bytes").exists() {
                v1 = Some(dir);
            }
        }
    }
    (v2, v1)
}

impl Probe {
    /// Picks the source `setting` asks for, or the best available for `auto`; a requested
    /// source that is not available falls back to the best one, and the returned warning
    /// says why.
    pub fn select(
        setting: PressureSourceSetting,
        paths: &Paths,
        watch: Option<Watch>,
    ) -> (Probe, Option<String>) {
        use PressureSourceSetting as S;
        let (v2, v1) = cgroup_dirs(paths);
        let v2_memory = v2
            .clone()
            .filter(|d| d.join("memory.current").exists())
            .map(MemoryFiles::V2);
        let v1_memory = v1.clone().map(MemoryFiles::V1);
        // Usage is read from whichever memory controller holds us, whatever wakes us.
        let usage = v2_memory.clone().or(v1_memory.clone());
        let v2_psi = v2
            .as_ref()
            .map(|d| d.join("memory.pressure"))
            .filter(|p| p.exists());

        let systemd = |watch: Option<Watch>| -> Result<Probe, String> {
            let w = watch.ok_or("$MEMORY_PRESSURE_WATCH is not set (MemoryPressureWatch= needs systemd 254 or later)")?;
            let trigger = Trigger::start(&w.path, &w.write)?;
            let is_psi = w.path.file_name().is_some_and(|n| n == "memory.pressure");
            Ok(Probe::new(
                SourceKind::Systemd,
                format!("systemd MemoryPressureWatch on {}", w.path.display()),
                is_psi.then(|| w.path.clone()).or(v2_psi.clone()),
                usage.clone(),
                Some(trigger),
            ))
        };
        let psi = || -> Result<Probe, String> {
            let file = v2_psi
                .clone()
                .ok_or("the daemon's cgroup v2 has no memory.pressure")?;
            let trigger = Trigger::start(&file, PSI_TRIGGER)?;
            Ok(Probe::new(
                SourceKind::Psi,
                format!("PSI trigger (some 200ms per 2s) on {}", file.display()),
                Some(file),
                usage.clone(),
                Some(trigger),
            ))
        };
        let cgroup_v2 = || -> Result<Probe, String> {
            let Some(MemoryFiles::V2(dir)) = v2_memory.clone() else {
                return Err("the daemon is in no cgroup v2 with the memory controller".into());
            };
            Ok(Probe::new(
                SourceKind::CgroupV2,
                format!("polling {}", dir.display()),
                v2_psi.clone(),
                Some(MemoryFiles::V2(dir)),
                None,
            ))
        };
        let cgroup_v1 = || -> Result<Probe, String> {
            let Some(MemoryFiles::V1(dir)) = v1_memory.clone() else {
                return Err("the daemon is in no cgroup v1 memory controller".into());
            };
            Ok(Probe::new(
                SourceKind::CgroupV1,
                format!("polling {}", dir.display()),
                None,
                Some(MemoryFiles::V1(dir)),
                None,
            ))
        };
        let system = || {
            let psi = Some(paths.proc_pressure.clone()).filter(|p| p.exists());
            Probe::new(
                SourceKind::System,
                "system-wide available memory and /proc/pressure/memory".into(),
                psi,
                Some(MemoryFiles::System),
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
                    Probe::new(
                        SourceKind::Off,
                        "memory.pressure.source is off".into(),
                        None,
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

    fn new(
        kind: SourceKind,
        detail: String,
        psi_file: Option<PathBuf>,
        memory: Option<MemoryFiles>,
        trigger: Option<Trigger>,
    ) -> Probe {
        Probe {
            kind,
            detail,
            psi_file,
            memory,
            trigger,
            last_psi_total: None,
            last_oom: None,
            system: None,
        }
    }

    /// The trigger's event counter and wake-up, if the source has a trigger.
    pub fn events(&self) -> Option<Arc<TriggerEvents>> {
        self.trigger.as_ref().map(|t| t.events.clone())
    }

    /// Takes one reading and grades it against the thresholds.
    pub fn read(&mut self, t: &PressureSettings) -> Reading {
        let mut why = Vec::new();
        let mut level = Level::Normal;

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
                level = Level::Pressure;
                why.push(format!("PSI some avg10 {a:.1}% >= {:.1}%", t.psi_avg10));
            }
        }

        let usage = self.memory.clone().and_then(|m| self.read_usage(&m));
        let (mut working, mut soft, mut hard) = (None, None, None);
        if let Some(u) = usage {
            working = Some(u.working);
            soft = u.high.or(u.max);
            hard = u.max;
            if let Some(oom) = u.oom_kills {
                if self.last_oom.is_some_and(|last| oom > last) {
                    level = Level::Critical;
                    why.push(format!("{} OOM kill(s) in the cgroup", oom));
                }
                self.last_oom = Some(oom);
            }
            if let Some(h) = hard
                && u.working as f64 >= t.unload_all_at * h as f64
            {
                level = Level::Critical;
                why.push(format!(
                    "working set {} MiB >= {:.0}% of the hard limit {} MiB",
                    u.working >> 20,
                    t.unload_all_at * 100.0,
                    h >> 20
                ));
            } else if let Some(s) = soft
                && u.working as f64 >= t.shed_at * s as f64
            {
                level = level.max(Level::Pressure);
                why.push(format!(
                    "working set {} MiB >= {:.0}% of the limit {} MiB",
                    u.working >> 20,
                    t.shed_at * 100.0,
                    s >> 20
                ));
            }
        }
        Reading {
            level,
            why: if why.is_empty() {
                "no pressure".into()
            } else {
                why.join("; ")
            },
            psi_some_avg10: avg10,
            working_set_bytes: working,
            soft_limit_bytes: soft,
            hard_limit_bytes: hard,
        }
    }

    fn read_usage(&mut self, files: &MemoryFiles) -> Option<Usage> {
        match files {
            MemoryFiles::V2(dir) => {
                let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
                let cache = stat_field(&stat, "active_file") + stat_field(&stat, "inactive_file");
                let current = read_limit(&dir.join("memory.current"))?;
                let events = std::fs::read_to_string(dir.join("memory.events")).ok();
                Some(Usage {
                    working: current.saturating_sub(cache),
                    high: read_limit(&dir.join("memory.high")),
                    max: read_limit(&dir.join("memory.max")),
                    oom_kills: events.map(|e| stat_field(&e, "oom_kill")),
                })
            }
            MemoryFiles::V1(dir) => {
                let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
                let cache = stat_field(&stat, "total_active_file")
                    + stat_field(&stat, "total_inactive_file");
                let usage = read_limit(&dir.join("memory.usage_in_bytes"))?;
                let oom = std::fs::read_to_string(dir.join("memory.oom_control")).ok();
                Some(Usage {
                    working: usage.saturating_sub(cache),
                    high: None,
                    max: read_limit(&dir.join("memory.limit_in_bytes"))
                        .filter(|&l| l < V1_UNLIMITED),
                    oom_kills: oom.map(|o| stat_field(&o, "oom_kill")),
                })
            }
            MemoryFiles::System => {
                let sys = self.system.get_or_insert_with(sysinfo::System::new);
                sys.refresh_memory();
                let total = sys.total_memory();
                Some(Usage {
                    working: total.saturating_sub(sys.available_memory()),
                    high: None,
                    max: Some(total),
                    oom_kills: None,
                })
            }
        }
    }
}

struct Usage {
    working: u64,
    high: Option<u64>,
    max: Option<u64>,
    oom_kills: Option<u64>,
}

/// v1 reports "no limit" as a huge page-aligned number rather than `max`.
const V1_UNLIMITED: u64 = 1 << 62;

fn read_limit(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file (memory.stat, memory.events); 0 when
/// absent.
fn stat_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
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
        let r = p.read(&settings);
        assert_eq!(r.level, Level::Normal, "{r:?}");
        assert_eq!(r.working_set_bytes, Some(500 << 20));
        assert_eq!(
            (r.soft_limit_bytes, r.hard_limit_bytes),
            (Some(768 << 20), Some(1 << 30))
        );
        t.file(&format!("{g}/memory.current"), &format!("{}", 800u64 << 20));
        let r = p.read(&settings);
        assert_eq!(r.level, Level::Pressure);
        assert_eq!(r.why, "working set 700 MiB >= 90% of the limit 768 MiB");
        t.file(
            &format!("{g}/memory.current"),
            &format!("{}", 1100u64 << 20),
        );
        let r = p.read(&settings);
        assert_eq!(r.level, Level::Critical);
        assert_eq!(
            r.why,
            "working set 1000 MiB >= 97% of the hard limit 1024 MiB"
        );
    }

    #[test]
    fn an_oom_kill_in_the_cgroup_is_critical() {
        let t = v2_tree();
        let g = "cgroup/system.slice/caxton.service";
        let (mut p, _) = Probe::select(PressureSourceSetting::CgroupV2, &t.paths(), None);
        assert_eq!(p.read(&PressureSettings::default()).level, Level::Normal);
        t.file(
            &format!("{g}/memory.events"),
            "high 3\nmax 9\noom 1\noom_kill 1\n",
        );
        let r = p.read(&PressureSettings::default());
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
        assert_eq!(p.read(&s).level, Level::Normal);
        t.file(&format!("{g}/memory.pressure"), &psi(25.0, 5000));
        let r = p.read(&s);
        assert_eq!(
            (r.level, r.why.as_str()),
            (Level::Pressure, "PSI some avg10 25.0% >= 10.0%")
        );
        assert_eq!(r.psi_some_avg10, Some(25.0));
        // avg10 still high, but the stall is over.
        assert_eq!(p.read(&s).level, Level::Normal);
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
        let r = p.read(&PressureSettings::default());
        // 270 of 300 MiB = 90%.
        assert_eq!(
            (r.level, r.working_set_bytes),
            (Level::Pressure, Some(270 << 20))
        );
        t.file(
            "cgroup/memory/caxton/memory.limit_in_bytes",
            "9223372036854771712",
        );
        let r = p.read(&PressureSettings::default());
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
        let (p, _) = Probe::select(PressureSourceSetting::Auto, &nothing.paths(), None);
        assert_eq!(p.kind, SourceKind::System);
        let r = {
            let mut p = p;
            p.read(&PressureSettings::default())
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
