use super::*;

const MIB: u64 = 1 << 20;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

struct Tree(tempfile::TempDir);

impl Tree {
    fn new(proc_cgroup: &str) -> Tree {
        let t = Tree(tempfile::tempdir().expect("tempdir"));
        t.file("proc_self_cgroup", proc_cgroup);
        t.file(
            "meminfo",
            &format!(
                "MemTotal: {} kB\nMemFree: 1 kB\nMemAvailable: {} kB\n",
                8192 * 1024,
                6144 * 1024
            ),
        );
        t
    }
    fn file(&self, rel: &str, text: &str) {
        write(&self.0.path().join(rel), text);
    }
    fn paths(&self) -> Paths {
        Paths {
            proc_self_cgroup: self.0.path().join("proc_self_cgroup"),
            cgroup_root: self.0.path().join("cgroup"),
            proc_pressure: self.0.path().join("pressure"),
            proc_meminfo: self.0.path().join("meminfo"),
        }
    }
    fn v1(&self, rel: &str, usage_mib: u64, cache_mib: u64, limit: Option<u64>) {
        let g = format!("cgroup/memory/{rel}");
        self.file(
            &format!("{g}/memory.usage_in_bytes"),
            &(usage_mib * MIB).to_string(),
        );
        self.file(
            &format!("{g}/memory.stat"),
            &format!(
                "cache 0\nhierarchical_memory_limit 9223372036854771712\ntotal_active_file {}\ntotal_inactive_file 0\n",
                cache_mib * MIB
            ),
        );
        self.file(
            &format!("{g}/memory.limit_in_bytes"),
            &limit.map_or("9223372036854771712".into(), |l| (l * MIB).to_string()),
        );
        self.file(
            &format!("{g}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        );
    }
    fn v2(&self, rel: &str, current_mib: u64, high: Option<u64>, max: Option<u64>) {
        let g = format!("cgroup/{rel}");
        self.file(&format!("{g}/cgroup.procs"), "");
        self.file(
            &format!("{g}/memory.current"),
            &(current_mib * MIB).to_string(),
        );
        self.file(&format!("{g}/memory.stat"), "anon 1\nactive_file 0\n");
        let lim = |v: Option<u64>| v.map_or("max".into(), |v| (v * MIB).to_string());
        self.file(&format!("{g}/memory.high"), &lim(high));
        self.file(&format!("{g}/memory.max"), &lim(max));
    }
}

const T: Thresholds = Thresholds {
    shed_at: 0.9,
    unload_all_at: 0.97,
    reserve: 20 * MIB,
};

#[test]
fn a_v1_parent_limit_binds_with_the_co_tenants_usage() {
    // The daemon's group has no limit; its parent has 314 MiB and holds a co-tenant too.
    let t = Tree::new("4:memory:/slice/caxton\n0::/\n");
    t.v1("", 5000, 1000, None);
    t.v1("slice", 250, 10, Some(314));
    t.v1("slice/caxton", 130, 4, None);
    let levels = read(&t.paths());
    let kinds: Vec<(Kind, bool, Option<u64>)> = levels
        .iter()
        .map(|l| (l.kind, l.own, l.soft_bytes.map(|b| b / MIB)))
        .collect();
    assert_eq!(
        kinds,
        [
            (Kind::V1, true, None),
            (Kind::V1, false, Some(314)),
            (Kind::System, false, Some(8192))
        ]
    );
    assert_eq!(levels[0].working_set_bytes, 126 * MIB);
    let a = Assessment::of(&levels, T).expect("a limit");
    assert_eq!(a.binding, 1);
    // 90% of 314 MiB is 282.6 MiB; less 240 MiB charged to the parent, less the reserve.
    assert_eq!(
        a.room_bytes,
        (314 * MIB * 9 / 10) as i64 - (240 + 20) as i64 * MIB as i64
    );
    // A load's brief peak may go up to the critical threshold, 97%, less the reserve.
    assert_eq!(
        a.peak_room_bytes,
        (314.0 * MIB as f64 * 0.97) as i64 - (240 + 20) as i64 * MIB as i64
    );
    // The last resort: what stays below the critical threshold, its peak below the limit,
    // each less the reserve.
    assert_eq!(a.last_resort_room_bytes, a.peak_room_bytes);
    assert_eq!(a.hard_room_bytes, (314 - 240 - 20) as i64 * MIB as i64);
    assert_eq!(a.excess_bytes, 0);
    assert!(a.pressed.is_empty() && a.critical.is_empty());
    assert_eq!(
        lowest_limit(&levels).map(|l| l.path.clone()),
        Some(t.0.path().join("cgroup/memory/slice"))
    );
}

#[test]
fn past_the_threshold_the_excess_brings_back_the_reserve_and_the_hard_limit_is_critical() {
    let t = Tree::new("4:memory:/caxton\n");
    t.v1("caxton", 300, 0, Some(314));
    let levels = read(&t.paths());
    let a = Assessment::of(&levels, T).expect("a limit");
    let threshold = (314.0 * MIB as f64 * 0.9) as u64;
    assert_eq!(a.excess_bytes, 300 * MIB + 20 * MIB - threshold);
    assert!(a.room_bytes < 0);
    assert_eq!(a.pressed.len(), 1, "{a:?}");
    assert!(
        a.pressed[0].starts_with("working set 300 MiB >= 90% of cgroup v1 ")
            && a.pressed[0].ends_with("(memory.limit_in_bytes 314 MiB)"),
        "{a:?}"
    );
    assert!(a.critical.is_empty(), "300 < 97% of 314: {a:?}");
    t.v1("caxton", 306, 0, Some(314));
    let a = Assessment::of(&read(&t.paths()), T).expect("a limit");
    assert_eq!(a.critical.len(), 1, "{a:?}");
}

#[test]
fn a_hidden_v1_ancestor_shows_through_the_hierarchical_limit() {
    let t = Tree::new("4:memory:/caxton\n");
    t.v1("caxton", 100, 0, None);
    t.file(
        "cgroup/memory/caxton/memory.stat",
        &format!("hierarchical_memory_limit {}\n", 200 * MIB),
    );
    let levels = read(&t.paths());
    assert_eq!(levels[1].kind, Kind::V1Hidden);
    assert_eq!(levels[1].soft_bytes, Some(200 * MIB));
    assert_eq!(levels[1].working_set_bytes, 100 * MIB);
    let a = Assessment::of(&levels, T).expect("limit");
    assert_eq!(a.binding, 1);
}

#[test]
fn v2_takes_the_tighter_of_high_and_max_at_every_ancestor() {
    let t = Tree::new("0::/devices.slice/caxton.service\n");
    t.file("cgroup/cgroup.controllers", "memory\n");
    t.v2("devices.slice", 700, None, Some(1024));
    t.v2("devices.slice/caxton.service", 300, Some(512), Some(600));
    let levels = read(&t.paths());
    assert_eq!(levels.len(), 3, "{levels:?}");
    assert_eq!(
        (levels[0].soft_bytes, levels[0].hard_bytes),
        (Some(512 * MIB), Some(600 * MIB))
    );
    assert_eq!(levels[0].soft_name(), "memory.high");
    assert_eq!(levels[1].soft_name(), "memory.max");
    let a = Assessment::of(&levels, T).expect("limit");
    // Own: 460.8 - 300 - 20 = 140.8 MiB; parent: 921.6 - 700 - 20 = 201.6 MiB.
    assert_eq!(a.binding, 0);
    t.v2("devices.slice", 850, None, Some(1024));
    let a = Assessment::of(&read(&t.paths()), T).expect("limit");
    assert_eq!(
        a.binding, 1,
        "a co-tenant in the slice makes the slice bind"
    );
}

#[test]
fn without_any_cgroup_the_machine_binds() {
    let t = Tree::new("0::/nowhere\n");
    let levels = read(&t.paths());
    assert_eq!(levels.len(), 1);
    assert_eq!((levels[0].kind, levels[0].own), (Kind::System, true));
    assert_eq!(levels[0].working_set_bytes, 2048 * MIB);
    let a = Assessment::of(&levels, T).expect("limit");
    assert_eq!(a.binding, 0);
}
