//! Issue 21, preloading learned from use: a fixture history (written with the daemon's own
//! habit recorder) and a test clock drive the real caxtond. A model used every weekday at
//! 09:00 is loaded before the first request when the daemon starts at 08:55, marked
//! `preloaded_by: prediction`, and is the first to go when memory is needed; a model last
//! used five weeks ago is not loaded; a full budget sheds nothing for a guess; a prediction
//! that did not come is remembered as missed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use caxton::registry::habits::{Habits, WEEK, hour_of};
use caxton::registry::usage_file::{self, Record};
use common::packages::bundled_copy_with_id;
use common::{Daemon, model_entry, wait_until, write_config};
use serde_json::Value;

/// Monday 2026-11-23 09:00 UTC, in hours since the epoch.
fn monday_nine() -> u64 {
    hour_of(humantime::parse_rfc3339("2026-11-23T09:00:00Z").expect("time"))
}

/// The usage file of a device where `side` was used every weekday at 09:00 for the last four
/// weeks, and `old` once, on a Monday at 09:00 five weeks ago.
fn history(state: &Path) {
    let mut side = Habits::default();
    for week in (1..=4).rev() {
        for day in 0..5 {
            side.record(monday_nine() - week * WEEK + day * 24);
        }
    }
    let mut old = Habits::default();
    old.record(monday_nine() - 5 * WEEK);
    let record = |habits: Habits, uses: u64| Record {
        use_count: uses,
        last_use: None,
        tokens: uses * 7,
        dimensions: Some(384),
        reranker: false,
        sparse: false,
        multi_vector: false,
        habits,
    };
    let models = BTreeMap::from([
        ("side".to_string(), record(side, 20)),
        ("old".to_string(), record(old, 1)),
    ]);
    std::fs::create_dir_all(state).expect("mkdir");
    usage_file::write(&usage_file::path(state), &models).expect("usage.json");
}

/// A daemon with `side` and `old` side-loaded, the history, `yaml` as its drop-in, and its
/// clock starting at `clock`.
fn start(yaml: &str, clock: &str) -> Daemon {
    let yaml = yaml.to_string();
    Daemon::start_with(
        move |dir| {
            write_config(dir, "");
            std::fs::create_dir(dir.join("packages")).expect("mkdir");
            for id in ["side", "old"] {
                bundled_copy_with_id(&dir.join(format!("packages/{id}.tar.zst")), id);
            }
            history(&dir.join("state"));
            std::fs::create_dir(dir.join("conf.d")).expect("mkdir");
            std::fs::write(dir.join("conf.d/50-test.yaml"), yaml).expect("write");
        },
        &[("CAXTON_TEST_CLOCK", clock)],
    )
}

fn lines(d: &Daemon, event: &str) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| l.contains(&format!("caxton_event=\"{event}\"")))
        .map(str::to_string)
        .collect()
}

fn field<'a>(m: &'a Option<Value>, key: &str) -> &'a Value {
    &m.as_ref().expect("listed")[key]
}

#[test]
fn a_weekday_habit_is_loaded_before_the_first_request_and_goes_first() {
    // side is worth most by priority: only being an unused guess makes it go first.
    let d = start(
        // The last request waits out a residency (the default of 1 s would refuse it).
        "memory:\n  max_loaded_models: 2\n  load_queue:\n    max_wait: 20s\n  models:\n    side: {priority: 1}\n",
        "2026-11-23T08:55:00Z",
    );
    assert_eq!(lines(&d, "test_clock").len(), 1, "{}", d.log());
    wait_until(&d, "side preloaded on its prediction", || {
        model_entry(&d, "side").is_some_and(|m| m["state"] == "loaded")
    });
    let side = model_entry(&d, "side");
    assert_eq!(field(&side, "preloaded_by"), "prediction");
    assert_eq!(field(&side, "use_count"), 20, "no request used it");
    let predicted = lines(&d, "model_predicted");
    assert_eq!(predicted.len(), 1, "{predicted:?}");
    assert!(
        predicted[0].contains("model side preloaded: its usage history gives a use in the coming hour a probability of 1.00"),
        "{}",
        predicted[0]
    );
    // Five weeks ago is a habit faded: old stays on disk.
    let old = model_entry(&d, "old");
    assert_eq!(field(&old, "state"), "available");
    assert_eq!(*field(&old, "preloaded_by"), Value::Null);
    let out = common::caxton(&d, &["models"], None);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("side ") && l.contains("loaded (preloaded by prediction)")),
        "{table}"
    );

    // old's load needs one of the two places: the unused guess goes, not the default model
    // (priority 3, in use since start), though side's priority is 1 and its residency runs.
    let (status, v) = common::embed_with(&d, "old");
    assert_eq!(status, 200, "{v}");
    let shed = lines(&d, "model_shed");
    assert_eq!(shed.len(), 1, "{shed:?}");
    assert!(
        shed[0].contains("model side shed to free memory (making room for old)"),
        "{}",
        shed[0]
    );
    assert_eq!(
        field(&model_entry(&d, "all-MiniLM-L6-v2"), "state"),
        "loaded"
    );

    // Used, a model is no guess any more.
    let (status, v) = common::embed_with(&d, "side");
    assert_eq!(status, 200, "{v}");
    let side = model_entry(&d, "side");
    assert_eq!(field(&side, "state"), "loaded");
    assert_eq!(*field(&side, "preloaded_by"), Value::Null);
    assert_eq!(field(&side, "use_count"), 21);
}

#[test]
fn a_full_budget_sheds_nothing_for_a_prediction() {
    let d = start(
        "log:\n  level: debug\nmemory:\n  max_loaded_models: 1\n  min_residency: 0s\n",
        "2026-11-23T08:55:00Z",
    );
    wait_until(&d, "the prediction refused for room", || {
        !lines(&d, "prediction_skipped").is_empty()
    });
    let skipped = lines(&d, "prediction_skipped");
    assert!(
        skipped[0].contains("model side is likely to be used in the coming hour (probability 1.00) but is not preloaded: loading side would shed all-MiniLM-L6-v2 (a prediction never sheds)"),
        "{}",
        skipped[0]
    );
    assert_eq!(
        field(&model_entry(&d, "all-MiniLM-L6-v2"), "state"),
        "loaded"
    );
    assert_eq!(field(&model_entry(&d, "side"), "state"), "available");
    assert!(lines(&d, "model_shed").is_empty(), "{}", d.log());
    assert!(
        lines(&d, "model_load_refused").is_empty(),
        "a guess is not a refusal"
    );
}

#[test]
fn a_prediction_that_did_not_come_is_not_repeated_for_that_hour() {
    // Ten seconds before 10:00: side is predicted for the 09:00 hour, which ends unused.
    let mut d = start("", "2026-11-23T09:59:50Z");
    wait_until(&d, "side preloaded", || {
        model_entry(&d, "side").is_some_and(|m| m["preloaded_by"] == "prediction")
    });
    wait_until(&d, "the missed prediction", || {
        !lines(&d, "prediction_missed").is_empty()
    });
    assert!(
        lines(&d, "prediction_missed")[0].contains(
            "model side was preloaded for a use that did not come; it is not predicted for this hour of the week again until it is used"
        )
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0));
    let (usage, _) = usage_file::read(&usage_file::path(&d.dir.path().join("state")));
    assert_eq!(
        usage["side"]
            .habits
            .missed
            .iter()
            .copied()
            .collect::<Vec<u8>>(),
        vec![9],
        "Monday 09:00 is hour 9 of the week"
    );
    assert_eq!(usage["side"].use_count, 20);
}
