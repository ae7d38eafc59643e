//! Every source and reading driven by fixture trees.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

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
    let (mut p, warning) = Probe::select(
        PressureSourceSetting::Requested(SourceKind::CgroupV2),
        &t.paths(),
        None,
    );
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
    let (mut p, _) = Probe::select(
        PressureSourceSetting::Requested(SourceKind::CgroupV2),
        &t.paths(),
        None,
    );
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
    let (mut p, _) = Probe::select(
        PressureSourceSetting::Requested(SourceKind::CgroupV2),
        &t.paths(),
        None,
    );
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
    let (p, w) = Probe::select(
        PressureSourceSetting::Requested(SourceKind::CgroupV1),
        &t.paths(),
        None,
    );
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
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
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
