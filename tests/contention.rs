//! Issue 15: memory under contention. The daemon runs in memory cgroups this test makes (v2
//! where the memory controller is there, else v1; skipped, saying why, where neither can be
//! made) with a limit that fits about two models, while six clients ask for models at random
//! and, in two scenarios, a co-tenant process grows and frees memory beside it:
//!
//! 1. four models asked, nothing else in the cgroup;
//! 2. two models asked, a co-tenant in the same cgroup growing 8 MiB/s to a size that leaves
//!    room for the daemon and one model, holding, freeing, in cycles;
//! 3. the limit on the parent only: the daemon and the co-tenant in sibling groups.
//!
//! Each runs `CONTENTION_TEST_SECS` (not `CAXTON_…`: the daemon would take it for a key; default 60) and must end with the daemon alive, no OOM
//! kill in any group, every answer 200 or 503 with `Retry-After`, at least the share of them
//! 200 the scenario's room promises ([`Serves`]),
//! and the daemon's RSS within 15% of its base plus the models it reports loaded. The three
//! run one after another (a lock), so they never share the two cores.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cgroups::{CoTenant, Group};
use common::{Daemon, bundled_copy_with_id, write_config};
use serde_json::Value;

/// Fits the daemon and about two MiniLM copies (about 96 MiB each).
const LIMIT: u64 = 314 << 20;
const MIB: u64 = 1 << 20;
const DEFAULT: &str = "all-MiniLM-L6-v2";
const CLIENTS: usize = 6;
/// The co-tenant's growth.
const RATE: u64 = 8 << 20;

/// One scenario at a time: they are timed and must not share the cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn duration() -> Duration {
    let secs = std::env::var("CONTENTION_TEST_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// A top-level group, or `None` with the reason printed.
fn top(name: &str, limit: Option<u64>) -> Option<Group> {
    Group::top(name, limit)
        .map_err(|e| common::skip::skip(&e))
        .ok()
}

/// The daemon with `side_loaded` copies of the bundled model, in the groups of `procs`.
fn start(procs: &Group, side_loaded: &[&str]) -> Daemon {
    let ids: Vec<String> = side_loaded.iter().map(|s| s.to_string()).collect();
    let d = Daemon::spawn_in(
        move |dir| {
            write_config(dir, "");
            std::fs::create_dir_all(dir.join("packages")).expect("mkdir");
            for id in &ids {
                bundled_copy_with_id(&dir.join(format!("packages/{id}.tar.zst")), id);
            }
        },
        &[],
        &[procs.procs()],
    );
    d.wait_health(200);
    let pid = d.child.as_ref().expect("child").id();
    assert!(
        procs.holds(pid),
        "caxtond is not in {}",
        procs.dir.display()
    );
    d
}

fn status(d: &Daemon) -> Value {
    d.request("GET", "/api/memory/status", "").1
}

/// What the daemon holds with no model loaded once it has served.
fn base(d: &Daemon) -> u64 {
    common::footprint::settled_rss(d)
}

/// What the clients got.
#[derive(Default)]
struct Tally {
    ok: u64,
    /// 503 answers with Retry-After, by error code.
    unavailable: BTreeMap<String, u64>,
    /// Anything else: the status and body.
    wrong: Vec<String>,
    /// Every request's time, with its model, status and when it was sent (since the start).
    times: Vec<(Duration, &'static str, u16, Duration)>,
}

impl Tally {
    fn total(&self) -> u64 {
        self.ok + self.unavailable.values().sum::<u64>() + self.wrong.len() as u64
    }
}

/// A small xorshift, so each client's choices are reproducible.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Six clients, each in a loop until `until`: a model at random, 1 to 16 texts.
fn run_clients(socket: &Path, models: &[&'static str], until: Instant) -> Tally {
    let start = Instant::now();
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|scope| {
        for c in 0..CLIENTS {
            let tally = &tally;
            scope.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
                let mut n = 0u64;
                while Instant::now() < until {
                    let model = models[(next(&mut rng) % models.len() as u64) as usize];
                    let texts: Vec<String> = (0..1 + next(&mut rng) % 16)
                        .map(|i| format!("client {c} request {n} text {i}: the quick brown fox"))
                        .collect();
                    n += 1;
                    let body = serde_json::json!({"model": model, "input": texts}).to_string();
                    let sent = Instant::now();
                    let answer = rt.block_on(caxton::cli::client::request_with_headers(
                        socket,
                        hyper::Method::POST,
                        "/v1/embeddings",
                        Some(body.into_bytes()),
                    ));
                    let took = sent.elapsed();
                    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                    let status = answer.as_ref().map_or(0, |a| a.0.as_u16());
                    t.times.push((took, model, status, sent - start));
                    match answer {
                        Ok((s, _, _)) if s == 200 => t.ok += 1,
                        Ok((s, h, b)) if s == 503 && h.contains_key("retry-after") => {
                            let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                            let code = v["error"]["code"].as_str().unwrap_or("?").to_string();
                            *t.unavailable.entry(code).or_default() += 1;
                            drop(t);
                            // As a well-behaved client does (openai-python's retries honour
                            // Retry-After): an immediate retry would make a refusal free.
                            std::thread::sleep(common::retry_after(&h).min(common::BACKOFF_CAP));
                        }
                        Ok((s, _, b)) => t
                            .wrong
                            .push(format!("{s}: {}", String::from_utf8_lossy(&b))),
                        Err(e) => t.wrong.push(format!("transport: {e:#}")),
                    }
                }
            });
        }
    });
    tally.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Samples the peak working set of `group` until `stop`.
fn watch_peak(group: &Group, stop: &AtomicBool, peak: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        peak.fetch_max(group.working_set(), Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The least share of answers that must be 200. The clients pick a model at random for each
/// request, and a model that cannot come in (its room is held by models within
/// `memory.min_residency`) is refused at once with `Retry-After` rather than held (since the
/// load queue's 1 s bound), so the share is about the share of picks that name a model
/// loaded at the time.
#[derive(Clone, Copy)]
enum Serves {
    /// Two models asked, both in but while the co-tenant holds its peak, when they take
    /// turns: at least half (75-90% measured).
    MostOfTheTime,
    /// Two of the four models asked fit at once: half the picks name one of them, less the
    /// turns' changeovers (47%, 50% and 53% in three runs of the test build on a 2-core Zen
    /// 4), so at least a third. A daemon that kept only one model in (a quarter of the
    /// picks), or refused more than its room makes it, fails.
    TwoOfFour,
}

impl Serves {
    fn least(self) -> (u64, u64) {
        match self {
            Serves::MostOfTheTime => (1, 2),
            Serves::TwoOfFour => (1, 3),
        }
    }
}

/// Runs the clients (and samples `limited`) for the scenario's duration, then checks every
/// promise of the issue and prints the summary.
#[allow(clippy::too_many_arguments)]
fn exercise(
    name: &str,
    serves: Serves,
    d: &Daemon,
    base: u64,
    models: &[&'static str],
    limited: &Group,
    groups: &[&Group],
    mut cotenant: Option<&mut CoTenant>,
) {
    let started = Instant::now();
    let until = started + duration();
    let stop = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let tally = std::thread::scope(|scope| {
        scope.spawn(|| watch_peak(limited, &stop, &peak));
        let t = run_clients(&d.socket, models, until);
        stop.store(true, Ordering::Relaxed);
        t
    });
    d.assert_running();
    if let Some(c) = cotenant.as_mut() {
        c.assert_running();
    }
    for g in groups {
        assert_eq!(g.oom_kills(), 0, "OOM kills in {}", g.dir.display());
    }
    assert!(
        tally.wrong.is_empty(),
        "{name}: answers other than 200 or 503 with Retry-After: {:?}",
        &tally.wrong[..tally.wrong.len().min(5)]
    );
    let (num, den) = serves.least();
    assert!(
        tally.ok * den >= tally.total() * num,
        "{name}: only {} of {} answers were 200, fewer than {num}/{den} ({:?}); log:\n{}",
        tally.ok,
        tally.total(),
        tally.unavailable,
        d.log()
    );
    // Once the clients are gone and the engine threads have handed back their pass buffers
    // (after a quiet second), the daemon holds its base and its models, no more.
    let settle = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let s = status(d);
        let rss = s["process"]["rss_bytes"].as_u64().unwrap_or(u64::MAX);
        let models = s["model_memory_bytes"].as_u64().unwrap_or(0)
            + s["releasing"]
                .as_array()
                .map_or(0, |r| r.iter().filter_map(|m| m["bytes"].as_u64()).sum());
        if rss as f64 <= 1.15 * (base + models) as f64 {
            break (rss, models);
        }
        assert!(
            Instant::now() < settle,
            "{name}: RSS {} MiB stays above 115% of base {} MiB + models {} MiB: {s}",
            rss / MIB,
            base / MIB,
            models / MIB
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let s = status(d);
    let shed = d.log().matches("caxton_event=\"model_shed\"").count();
    let mut times = tally.times.clone();
    times.sort_by_key(|t| std::cmp::Reverse(t.0));
    let quantile = |q: f64| times[((times.len() - 1) as f64 * (1.0 - q)).round() as usize].0;
    println!(
        "{name}: latency p50 {:?}, p99 {:?}, max {:?}; the slowest: {:?}",
        quantile(0.5),
        quantile(0.99),
        times[0].0,
        &times[..times.len().min(8)]
    );
    if std::env::var_os("CONTENTION_TEST_LOG").is_some() {
        eprintln!("{}", d.log());
    }
    println!(
        "{name}: {:.0} s, {} answers: {} 200, 503 {:?}; {} loads ({} in the last minute), {} sheds; peak working set {} of {} MiB in {}; rss {} MiB = base {} + models {} MiB",
        started.elapsed().as_secs_f64(),
        tally.total(),
        tally.ok,
        tally.unavailable,
        s["loads"]["total"],
        s["loads"]["last_minute"],
        shed,
        peak.load(Ordering::Relaxed) / MIB,
        LIMIT / MIB,
        limited.dir.display(),
        last.0 / MIB,
        base / MIB,
        last.1 / MIB,
    );
    // Loads stay bounded: min_residency (10 s) keeps each model at least that long.
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let loads = s["loads"]["total"].as_u64().unwrap_or(0) as f64;
    assert!(
        loads <= 1.0 + minutes * 30.0,
        "{name}: {loads} loads in {minutes:.1} min: thrashing"
    );
}

#[test]
fn four_models_asked_by_six_clients_take_turns_without_an_oom_kill() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(group) = top("caxton-contention-1", Some(LIMIT)) else {
        return;
    };
    let d = start(&group, &["m-1", "m-2", "m-3"]);
    let base = base(&d);
    exercise(
        "four models, six clients",
        Serves::TwoOfFour,
        &d,
        base,
        &[DEFAULT, "m-1", "m-2", "m-3"],
        &group,
        &[&group],
        None,
    );
    let log = d.log();
    assert!(
        log.contains("making room for") && log.contains("caxton_event=\"model_shed\""),
        "four models never took turns: {log}"
    );
}

/// What one model needs to be admitted: its measured memory and its longest pass.
fn model_need(d: &Daemon) -> u64 {
    let m = common::model_entry(d, DEFAULT).expect("the default model");
    let bytes = m["memory_bytes"]
        .as_u64()
        .or(m["expected_memory_bytes"].as_u64())
        .expect("a measured or expected size");
    bytes + m["longest_pass_bytes"].as_u64().unwrap_or(0)
}

/// Starts the co-tenant in `group` beside the daemon, whose base with no model is `daemon_ws`
/// (the larger of its RSS and the limited group's working set: v1 charges what a process
/// used before it joined a group to the group it left): growing at 8 MiB/s to what leaves room for the
/// daemon and one model under the pressure threshold, less the reserve and 8 MiB of slack,
/// whatever this machine's base is; holding 10 s, freeing, quiet 5 s, again. `None` when
/// python3 is missing (said).
fn cotenant_beside(d: &Daemon, daemon_ws: u64, group: &Group) -> Option<CoTenant> {
    let need = model_need(d);
    let reserve = 32 * MIB;
    let peak = ((LIMIT as f64 * 0.9) as u64)
        .checked_sub(daemon_ws + need + reserve + 8 * MIB)
        .filter(|&p| p >= 32 * MIB)
        .unwrap_or_else(|| {
            panic!(
                "the daemon's base ({} MiB) and a model ({} MiB) leave no room for a co-tenant under {} MiB",
                daemon_ws / MIB,
                need / MIB,
                LIMIT / MIB
            )
        });
    println!(
        "co-tenant peak {} MiB: daemon base {} MiB + one model {} MiB + reserve, under 90% of {} MiB",
        peak / MIB,
        daemon_ws / MIB,
        need / MIB,
        LIMIT / MIB
    );
    CoTenant::start(
        group,
        RATE,
        peak,
        Duration::from_secs(10),
        Duration::from_secs(5),
    )
}

#[test]
fn a_co_tenant_in_the_same_cgroup_is_made_room_for_not_run_into() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(group) = top("caxton-contention-2", Some(LIMIT)) else {
        return;
    };
    let d = start(&group, &["m-1"]);
    let base = base(&d);
    let Some(mut cotenant) = cotenant_beside(&d, group.working_set().max(base), &group) else {
        return;
    };
    exercise(
        "two models, co-tenant in the cgroup",
        Serves::MostOfTheTime,
        &d,
        base,
        &[DEFAULT, "m-1"],
        &group,
        &[&group],
        Some(&mut cotenant),
    );
    // Both models loaded while the co-tenant was small; as it grew, one was shed by the
    // working set (not all), and no stall signal held model memory down.
    let log = d.log();
    assert!(
        log.contains("shed to free memory (pressure: working set "),
        "the growing co-tenant never shed a model: {log}"
    );
}

#[test]
fn a_limit_on_the_parent_binds_the_daemon_and_its_sibling_co_tenant() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(parent) = top("caxton-contention-3", Some(LIMIT)) else {
        return;
    };
    let own = parent.child("daemon", None);
    let sibling = parent.child("cotenant", None);
    let d = start(&own, &["m-1"]);
    let s = status(&d);
    assert_eq!(s["budget_bytes"], LIMIT * 3 / 4, "{s}");
    let from = s["budget_from"].as_str().expect("budget_from");
    assert!(
        from.ends_with(&format!(
            " ({} MiB) in {}",
            LIMIT / MIB,
            parent.dir.display()
        )),
        "the budget does not come from the parent's limit: {from}"
    );
    assert_eq!(
        s["limit"]["path"].as_str().map(PathBuf::from),
        Some(parent.dir.clone()),
        "{s}"
    );
    // `caxton status` names the cgroup that sets the limit.
    let out = common::caxton(&d, &["status"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("limit:") && l.contains(&parent.dir.display().to_string())),
        "{text}"
    );
    let base = base(&d);
    let Some(mut cotenant) = cotenant_beside(&d, parent.working_set().max(base), &sibling) else {
        return;
    };
    exercise(
        "two models, co-tenant in a sibling cgroup, limit on the parent",
        Serves::MostOfTheTime,
        &d,
        base,
        &[DEFAULT, "m-1"],
        &parent,
        &[&parent, &own, &sibling],
        Some(&mut cotenant),
    );
}
