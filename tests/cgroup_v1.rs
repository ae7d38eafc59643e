//! Issue 5 on a real kernel: the daemon runs inside a cgroup v1 memory group made by the test,
//! with a hard limit. Models are requested in turn until the limit bites; the daemon must never
//! be OOM-killed, every request must get 200 or a clean 503 with Retry-After, and memory must
//! come back when models go. (Pressure shedding under a growing co-tenant, and concurrent
//! clients: tests/contention.rs.) Also: the kernel accepts our PSI trigger on the daemon's own
//! cgroup v2 group (the unified hierarchy of this hybrid machine). Skips, saying why, where no
//! such cgroup can be made (not root, or no v1 hierarchy: the VM test covers v2 with real PSI
//! stalls).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cgroups::{Group, Version};
use common::{Daemon, bundled_copy_with_id, wait_until, write_config};
use serde_json::Value;

/// A top-level v1 group with `limit`, or `None` (printing why) where none can be made.
fn v1_group(name: &str, limit: u64) -> Option<Group> {
    match Group::top(name, Some(limit)) {
        Ok(g) if g.version == Version::V1 => Some(g),
        Ok(_) => {
            common::skip::skip(
                "this host's memory controller is cgroup v2 (tests/contention.rs covers it)",
            );
            None
        }
        Err(e) => {
            common::skip::skip(&e);
            None
        }
    }
}

fn start_in(group: &Group, ids: &[&str], memory: &str) -> Daemon {
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let memory = memory.to_string();
    let d = Daemon::spawn_in(
        move |dir| {
            write_config(dir, &memory);
            std::fs::create_dir_all(dir.join("packages")).expect("mkdir");
            for id in &ids {
                bundled_copy_with_id(&dir.join(format!("packages/{id}.tar.zst")), id);
            }
        },
        &[],
        &[group.procs()],
    );
    d.wait_health(200);
    let pid = d.child.as_ref().expect("child").id();
    assert!(
        group.holds(pid),
        "caxtond ({pid}) is not in {}",
        group.dir.display()
    );
    d
}

fn embed_with(d: &Daemon, model: &str) -> (u16, Value, Option<String>) {
    let body =
        serde_json::json!({"model": model, "input": ["a short text", "another one"]}).to_string();
    let (status, head, body) = d
        .try_request_with_headers("POST", "/v1/embeddings", Some(&body))
        .expect("request");
    (
        status,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
        head.get("retry-after").cloned(),
    )
}

#[test]
fn under_a_hard_limit_models_are_admitted_shed_or_refused_but_never_oom_killed() {
    const LIMIT: u64 = 400 << 20;
    let Some(group) = v1_group("caxton-test-admit", LIMIT) else {
        return;
    };
    let ids = ["m-1", "m-2", "m-3", "m-4"];
    // Requests wait out the residents' residency (10 s) so that the third copy sheds one;
    // by default (1 s) they would be refused instead.
    let d = start_in(
        &group,
        &ids,
        "memory:\n  pressure:\n    source: cgroup-v1\n  load_queue:\n    max_wait: 20s\n",
    );
    let v = common::memory_status_probed(&d);
    assert_eq!(v["budget_bytes"], LIMIT * 3 / 4, "{v}");
    assert!(
        v["budget_from"].as_str().is_some_and(
            |s| s.starts_with("auto: 75% of cgroup v1 memory.limit_in_bytes (400 MiB)")
        ),
        "{v}"
    );
    assert_eq!(v["pressure"]["source"], "cgroup-v1", "{v}");

    let mut peak_working = 0;
    for round in 0..2 {
        for id in ids {
            let (s, v, retry) = embed_with(&d, id);
            match s {
                200 => {}
                503 => {
                    assert_eq!(v["error"]["code"], "insufficient_memory", "{v}");
                    assert!(retry.is_some(), "a 503 without Retry-After: {v}");
                }
                other => panic!("round {round}, {id}: unexpected {other}: {v}"),
            }
            d.assert_running();
            peak_working = peak_working.max(group.working_set());
            let (_, st) = d.request("GET", "/api/memory/status", "");
            let in_use = st["model_memory_bytes"].as_u64().expect("bytes");
            assert!(
                in_use <= LIMIT * 3 / 4,
                "model memory {in_use} over the budget: {st}"
            );
        }
    }
    assert_eq!(group.oom_kills(), 0, "OOM kills in the group");
    assert!(
        peak_working < LIMIT,
        "working set {peak_working} reached the limit"
    );
    // Three copies do not fit in 300 MiB with the runtime: shedding made room.
    assert!(
        d.log().contains("caxton_event=\"model_shed\""),
        "{}",
        d.log()
    );

    let before = group.number("memory.usage_in_bytes");
    let before_ws = group.working_set();
    let (s, v) = d.request("POST", "/api/memory/flush", "");
    assert_eq!(s, 200, "{v}");
    let released = v["bytes_released"].as_u64().expect("bytes");
    assert!(released > 150 << 20, "{v}");
    let started = Instant::now();
    // Page cache in the group comes and goes with the kernel's whims; what the models held
    // is anonymous memory, so the working set (usage less file cache) is what must fall.
    wait_until(&d, "the cgroup's working set to fall", || {
        before_ws.saturating_sub(group.working_set()) >= released * 9 / 10
    });
    let after = group.number("memory.usage_in_bytes");
    println!(
        "working set {} -> {} MiB",
        before_ws >> 20,
        group.working_set() >> 20
    );
    println!(
        "cgroup v1: peak working set {} MiB of {} MiB; flush released {} MiB; usage {} -> {} MiB ({:.0}% returned) in {:?}",
        peak_working >> 20,
        LIMIT >> 20,
        released >> 20,
        before >> 20,
        after >> 20,
        100.0 * before.saturating_sub(after) as f64 / released as f64,
        started.elapsed()
    );
}

/// A cgroup v2 group in the unified hierarchy (hybrid machines mount it at
/// /sys/fs/cgroup/unified), removed on drop.
struct UnifiedGroup(PathBuf);

impl Drop for UnifiedGroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn the_kernel_accepts_our_psi_trigger_on_the_daemons_own_cgroup() {
    let Some(base) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("memory.pressure").exists())
    else {
        common::skip::skip("no cgroup v2 hierarchy with PSI (memory.pressure) here");
        return;
    };
    let dir = base.join(format!("caxton-test-psi-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&dir) {
        common::skip::skip(&format!(
            "cannot create {} ({e}); run as root",
            dir.display()
        ));
        return;
    }
    let group = UnifiedGroup(dir);
    let d = Daemon::spawn_in(
        |dir| write_config(dir, "memory:\n  pressure:\n    source: psi\n"),
        &[],
        &[group.0.join("cgroup.procs")],
    );
    d.wait_health(200);
    let v = common::memory_status_probed(&d);
    assert_eq!(v["pressure"]["source"], "psi", "{v}");
    assert_eq!(
        v["pressure"]["detail"],
        format!(
            "PSI trigger (some 200ms per 2s) on {}",
            group.0.join("memory.pressure").display()
        ),
        "{v}"
    );
}
