//! The policy on a simulated clock.

use super::*;

const MIB: u64 = 1 << 20;

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// A model loaded at 0 s, last used at `last_use`.
fn m(id: &str, priority: u8, last_use: u64, mib: u64) -> Resident {
    Resident {
        id: id.into(),
        priority,
        pinned: false,
        default: false,
        loaded_at: s(0),
        last_use: s(last_use),
        bytes: mib * MIB,
        guess: false,
    }
}

fn ids(v: &[&Resident]) -> Vec<String> {
    v.iter().map(|r| r.id.clone()).collect()
}

/// Budget `budget` MiB, at 100 s, residency 10 s, no room reading.
fn limits(budget: u64) -> Limits {
    Limits {
        budget: budget * MIB,
        max_models: 4,
        ceiling: None,
        room: None,
        peak_room: None,
        last_resort_room: None,
        hard_room: None,
        alone: false,
        releasing: 0,
        now: s(100),
        min_residency: s(10),
    }
}

const T: Timings = Timings {
    persist: Duration::from_secs(3),
    cooldown: Duration::from_secs(5),
    calm: Duration::from_secs(30),
};

fn usage(level: Level) -> Observation {
    Observation {
        usage: level,
        stall: false,
        triggered: false,
        imminent: false,
    }
}

fn stall(triggered: bool) -> Observation {
    Observation {
        usage: Level::Normal,
        stall: !triggered,
        triggered,
        imminent: false,
    }
}

#[test]
fn shed_order_is_priority_then_the_default_last_then_recency_then_size_and_skips_pinned() {
    let mut pinned = m("pinned", 5, 0, 500);
    pinned.pinned = true;
    let mut default = m("default", 4, 0, 100);
    default.default = true;
    let all = vec![
        m("important", 1, 0, 100),
        m("old-small", 4, 10, 50),
        m("old-big", 4, 10, 300),
        default,
        m("recent", 4, 90, 100),
        m("lowest", 5, 100, 10),
        pinned,
    ];
    assert_eq!(
        ids(&shed_order(&all)),
        [
            "lowest",
            "old-big",
            "old-small",
            "recent",
            "default",
            "important"
        ]
    );
}

#[test]
fn admission_fits_evicts_lower_value_or_refuses() {
    let limits = limits(300);
    let loaded = vec![m("a", 3, 10, 100), m("b", 4, 20, 100)];
    assert_eq!(
        admit("c", 3, 100 * MIB, &loaded, &limits, s(10)),
        Ok(vec![])
    );
    // 150 MiB more needs 50 MiB freed: the priority-4 model goes first.
    assert_eq!(
        admit("c", 3, 150 * MIB, &loaded, &limits, s(10)),
        Ok(vec!["b".to_string()])
    );
    // A priority-1 request may evict both.
    assert_eq!(
        admit("c", 1, 250 * MIB, &loaded, &limits, s(10)),
        Ok(vec!["b".to_string(), "a".to_string()])
    );
    // A priority-5 request may evict neither, and waiting would not change that.
    let e = admit("c", 5, 150 * MIB, &loaded, &limits, s(10)).expect_err("refused");
    assert_eq!((e.retry_after, e.wait), (s(10), false));
    assert_eq!(
        e.reason,
        "model c cannot be loaded now: it needs about 150 MiB and the budget of 300 MiB has 100 MiB free, and nothing of priority 5 or lower can make room (loaded: a 100 MiB (priority 3), b 100 MiB (priority 4)); retry later, unload a model, or raise memory.budget"
    );
}

#[test]
fn admission_never_evicts_pinned_and_refuses_what_exceeds_the_budget() {
    let limits = limits(200);
    let mut p = m("p", 5, 0, 150);
    p.pinned = true;
    let e =
        admit("c", 1, 100 * MIB, std::slice::from_ref(&p), &limits, s(10)).expect_err("refused");
    assert!(e.reason.contains("p 150 MiB (pinned)"), "{}", e.reason);
    let e = admit("huge", 1, 201 * MIB, &[], &limits, s(60)).expect_err("refused");
    assert_eq!(
        e.reason,
        "model huge needs about 201 MiB, more than the whole memory budget of 200 MiB; raise memory.budget (or the service's memory limit when it is auto)"
    );
    assert!(!e.wait);
}

#[test]
fn a_model_within_its_residency_is_not_evicted_and_the_refusal_says_how_long_to_wait() {
    let mut limits = limits(250);
    let mut young = m("young", 3, 99, 100);
    young.loaded_at = s(96);
    let loaded = vec![young.clone(), m("old", 3, 98, 100)];
    // "old" is past its residency and goes although "young" was used less recently.
    young.last_use = s(50);
    let loaded2 = vec![young.clone(), m("old", 3, 98, 100)];
    assert_eq!(
        admit("c", 3, 100 * MIB, &loaded2, &limits, s(5)),
        Ok(vec!["old".to_string()])
    );
    // Needing both, it must wait for "young": 6 s of its 10 s residency are left.
    let e = admit("c", 3, 200 * MIB, &loaded, &limits, s(5)).expect_err("refused");
    assert!(e.wait);
    assert_eq!(e.retry_after, s(6));
    assert!(
        e.reason.contains(
            "the models that could make room loaded less than memory.min_residency (10s) ago, for 6.0 s more"
        ),
        "{}",
        e.reason
    );
    // Residency 0: nothing is protected.
    limits.min_residency = Duration::ZERO;
    assert_eq!(
        admit("c", 3, 200 * MIB, &loaded, &limits, s(5)).map(|v| v.len()),
        Ok(2)
    );
}

/// Issue 60: beside a co-tenant, a model within its residency whose shedding would not make
/// room anyway was waited out (10 s), and the load refused after all.
#[test]
fn a_residency_that_could_not_make_room_is_not_waited_for() {
    let mut limits = limits(1024);
    limits.room = Some((0, "cgroup v1 /x (memory.limit_in_bytes 314 MiB)".into()));
    let mut young = m("young", 3, 99, 94);
    young.loaded_at = s(96);
    // Shedding "young" frees 94 MiB of the 100 needed: no residency to wait for.
    let e = admit(
        "c",
        3,
        100 * MIB,
        std::slice::from_ref(&young),
        &limits,
        s(5),
    )
    .expect_err("refused");
    assert_eq!((e.residency, e.retry_after), (None, s(5)));
    assert!(
        e.reason
            .contains("and nothing of priority 3 or lower can make room"),
        "{}",
        e.reason
    );
    // Had it freed enough, its 6 s left would be the wait.
    let e = admit(
        "c",
        3,
        90 * MIB,
        std::slice::from_ref(&young),
        &limits,
        s(5),
    )
    .expect_err("refused");
    assert_eq!((e.residency, e.retry_after), (Some(s(6)), s(6)));
}

#[test]
fn real_room_binds_even_when_the_budget_has_space() {
    let mut limits = limits(1024);
    limits.room = Some((
        60 * MIB as i64,
        "cgroup v1 /x (memory.limit_in_bytes 314 MiB)".into(),
    ));
    let loaded = vec![m("a", 3, 10, 96)];
    // 60 MiB of room plus a's 96 MiB covers a 100 MiB load only by shedding a.
    assert_eq!(
        admit("c", 3, 100 * MIB, &loaded, &limits, s(5)),
        Ok(vec!["a".to_string()])
    );
    let e = admit("c", 2, 200 * MIB, &loaded, &limits, s(5)).expect_err("refused");
    assert!(e.wait, "co-tenants may free memory: worth waiting");
    assert!(
        e.reason.starts_with(
            "model c cannot be loaded now: it needs about 200 MiB and cgroup v1 /x (memory.limit_in_bytes 314 MiB) has 60 MiB of room below its pressure threshold (less memory.reserve)"
        ),
        "{}",
        e.reason
    );
    // Room already past the threshold reads as none.
    limits.room = Some((-5 * MIB as i64, "x".into()));
    let e = admit("c", 3, 10 * MIB, &[], &limits, s(5)).expect_err("refused");
    assert!(e.reason.contains("x has 0 MiB of room"), "{}", e.reason);
}

#[test]
fn memory_still_coming_back_from_a_shed_counts_as_held() {
    let mut limits = limits(250);
    limits.releasing = 100 * MIB;
    let loaded = vec![m("a", 3, 10, 100)];
    // Budget: 100 loaded + 100 releasing + 100 needed > 250; once released it fits.
    let e = admit("c", 1, 100 * MIB, &loaded, &limits, s(5)).expect_err("refused");
    assert!(e.wait);
    assert_eq!(e.retry_after, s(1));
    assert!(
        e.reason
            .contains("100 MiB of shed models is still on its way back"),
        "{}",
        e.reason
    );
    limits.releasing = 0;
    assert_eq!(admit("c", 1, 100 * MIB, &loaded, &limits, s(5)), Ok(vec![]));
}

#[test]
fn admission_honours_max_models_and_the_pressure_ceiling() {
    let loaded = vec![m("a", 3, 10, 10), m("b", 3, 20, 10)];
    let two = Limits {
        budget: 1 << 40,
        max_models: 2,
        ..limits(0)
    };
    assert_eq!(
        admit("c", 3, MIB, &loaded, &two, s(1)),
        Ok(vec!["a".to_string()])
    );
    let e = admit("c", 4, MIB, &loaded, &two, s(1)).expect_err("refused");
    assert!(
        e.reason.contains("memory.max_loaded_models (2) are loaded"),
        "{}",
        e.reason
    );
    let pressed = Limits {
        budget: 1 << 40,
        max_models: 8,
        ceiling: Some(20 * MIB),
        ..limits(0)
    };
    // Growth past the ceiling needs room made; a lower-priority request cannot make it.
    assert_eq!(
        admit("c", 3, MIB, &loaded, &pressed, s(7)),
        Ok(vec!["a".to_string()])
    );
    let e = admit("c", 4, MIB, &loaded, &pressed, s(7)).expect_err("refused");
    assert!(
        e.reason
            .contains("memory pressure holds model memory at 20 MiB")
    );
    assert_eq!(e.retry_after, s(7));
}

#[test]
fn excess_sheds_as_few_as_cover_it_and_keeps_the_default_while_it_fits() {
    let mut default = m("default", 3, 99, 96);
    default.default = true;
    let mut young = m("young", 5, 50, 96);
    young.loaded_at = s(95);
    let loaded = vec![default, m("a", 3, 10, 96), m("b", 3, 20, 96), young];
    // 50 MiB over: one model (the oldest non-default one past its residency).
    assert_eq!(
        shed_for_excess(50 * MIB, &loaded, s(100), s(10), false, false),
        ["a"]
    );
    // 150 MiB: two, still not the default.
    assert_eq!(
        shed_for_excess(150 * MIB, &loaded, s(100), s(10), false, false),
        ["a", "b"]
    );
    // More than the others hold: the default goes too.
    assert_eq!(
        shed_for_excess(250 * MIB, &loaded, s(100), s(10), false, false),
        ["a", "b", "default"]
    );
    // Critical overrides the residency, lowest priority first.
    assert_eq!(
        shed_for_excess(50 * MIB, &loaded, s(100), s(10), true, true),
        ["young"]
    );
    assert!(shed_for_excess(0, &loaded, s(100), s(10), true, true).is_empty());
}

#[test]
fn a_stall_signal_alone_sheds_neither_the_default_nor_more_valuable_models() {
    let mut default = m("default", 5, 0, 96);
    default.default = true;
    let loaded = vec![default.clone(), m("valuable", 2, 0, 96)];
    assert_eq!(shed_for_signal(&loaded, s(100), s(10), 3), None);
    let loaded = vec![default, m("valuable", 2, 0, 96), m("other", 3, 0, 96)];
    assert_eq!(
        shed_for_signal(&loaded, s(100), s(10), 3).as_deref(),
        Some("other")
    );
    assert_eq!(shed_for_signal(&loaded, s(5), s(10), 3), None, "resident");
}

#[test]
fn idle_models_expire_on_the_clock_but_pinned_and_unlimited_do_not() {
    let mut pinned = m("pinned", 3, 0, 1);
    pinned.pinned = true;
    let loaded = vec![
        (m("a", 3, 0, 1), Some(s(60))),
        (m("b", 3, 30, 1), Some(s(60))),
        (m("never", 3, 0, 1), None),
        (pinned, Some(s(1))),
    ];
    assert!(idle_expired(s(59), &loaded).is_empty());
    assert_eq!(ids(&idle_expired(s(60), &loaded)), ["a"]);
    assert_eq!(ids(&idle_expired(s(90), &loaded)), ["a", "b"]);
}

#[test]
fn pressure_must_persist_then_sheds_are_spaced() {
    let mut sh = Shedder::default();
    let p = usage(Level::Pressure);
    let excess = Shed::Excess { urgent: false };
    assert_eq!(sh.observe(s(0), p, T), Shed::Nothing);
    assert_eq!(sh.observe(s(2), p, T), Shed::Nothing);
    assert_eq!(sh.observe(s(3), p, T), excess);
    assert_eq!(sh.observe(s(4), p, T), Shed::Nothing);
    assert_eq!(sh.observe(s(7), p, T), Shed::Nothing);
    assert_eq!(sh.observe(s(8), p, T), excess);
}

#[test]
fn a_blip_does_not_shed_a_trigger_does_at_once_and_a_stall_alone_is_a_signal_shed() {
    let mut sh = Shedder::default();
    assert_eq!(sh.observe(s(0), usage(Level::Pressure), T), Shed::Nothing);
    assert_eq!(sh.observe(s(1), usage(Level::Normal), T), Shed::Nothing);
    assert_eq!(sh.observe(s(3), usage(Level::Pressure), T), Shed::Nothing);
    assert_eq!(sh.observe(s(4), stall(true), T), Shed::Signal);
    let mut sh = Shedder::default();
    assert_eq!(sh.observe(s(0), stall(false), T), Shed::Nothing);
    assert_eq!(sh.observe(s(3), stall(false), T), Shed::Signal);
    // A stall during usage pressure sheds by the excess.
    let both = Observation {
        usage: Level::Pressure,
        stall: true,
        triggered: true,
        imminent: false,
    };
    assert_eq!(
        Shedder::default().observe(s(0), both, T),
        Shed::Excess { urgent: false }
    );
}

#[test]
fn growth_toward_the_critical_threshold_sheds_without_waiting_to_persist() {
    let mut trend = Trend::default();
    let ms = Duration::from_millis;
    trend.push(ms(0), 200 * MIB, "a");
    assert_eq!(trend.time_to(300 * MIB), None, "one sample tells nothing");
    trend.push(ms(500), 204 * MIB, "a");
    trend.push(ms(1000), 208 * MIB, "a");
    // 8 MiB/s: 92 MiB to go is 11.5 s.
    assert_eq!(
        trend.time_to(300 * MIB),
        Some(Duration::from_millis(11_500))
    );
    trend.push(ms(3000), 208 * MIB, "a");
    assert_eq!(trend.time_to(300 * MIB), None, "flat over the window");
    trend.push(ms(3500), 4096 * MIB, "the parent");
    assert_eq!(
        trend.time_to(8192 * MIB),
        None,
        "another level is no growth"
    );
    let mut sh = Shedder::default();
    let mut o = usage(Level::Pressure);
    o.imminent = true;
    assert_eq!(sh.observe(s(0), o, T), Shed::Excess { urgent: true });
}

#[test]
fn critical_sheds_at_once_and_without_cooldown() {
    let mut sh = Shedder::default();
    let c = usage(Level::Critical);
    assert_eq!(sh.observe(s(0), c, T), Shed::Excess { urgent: true });
    assert_eq!(sh.observe(s(0), c, T), Shed::Excess { urgent: true });
}

#[test]
fn the_episode_and_its_ceiling_last_until_calm() {
    let mut sh = Shedder::default();
    sh.observe(s(0), stall(true), T);
    sh.note_shed(100);
    sh.note_shed(150);
    assert_eq!(sh.ceiling(), Some(100));
    assert!(sh.active());
    assert_eq!(sh.observe(s(10), usage(Level::Normal), T), Shed::Nothing);
    assert_eq!(sh.calm_in(s(10), T.calm), Some(s(20)));
    sh.observe(s(29), usage(Level::Normal), T);
    assert!(sh.active(), "29 s after the last pressure is not yet calm");
    sh.observe(s(30), usage(Level::Normal), T);
    assert!(!sh.active());
    assert_eq!(sh.ceiling(), None);
}

#[test]
fn a_guess_goes_first_even_within_its_residency() {
    let mut guess = m("guess", 1, 99, 50);
    guess.guess = true;
    guess.loaded_at = s(99);
    let residents = vec![m("old", 5, 1, 50), guess];
    assert_eq!(ids(&shed_order(&residents)), ["guess", "old"]);
    // Room for a 60 MiB load in a 110 MiB budget: the unused guess goes, not the used model.
    assert_eq!(
        admit("new", 3, 60 * MIB, &residents, &limits(110), s(1)).expect("fits"),
        vec!["guess".to_string()]
    );
}

#[test]
fn with_nothing_of_its_chain_loaded_a_model_loads_up_to_the_last_resort_room_and_past_a_ceiling() {
    let mut limits = limits(1024);
    limits.room = Some((60 * MIB as i64, "x".into()));
    limits.last_resort_room = Some(120 * MIB as i64);
    limits.ceiling = Some(0);
    // Not alone: the pressure threshold's room (60 MiB) and the stall's ceiling bind.
    let e = admit("c", 3, 100 * MIB, &[], &limits, s(5)).expect_err("refused");
    assert!(
        e.reason
            .contains("memory pressure holds model memory at 0 MiB"),
        "{}",
        e.reason
    );
    limits.ceiling = None;
    let e = admit("c", 3, 100 * MIB, &[], &limits, s(5)).expect_err("refused");
    assert!(
        e.reason
            .contains("x has 60 MiB of room below its pressure threshold"),
        "{}",
        e.reason
    );
    limits.ceiling = Some(0);
    // Alone: the device would serve nothing; the room below the critical threshold binds.
    limits.alone = true;
    assert_eq!(admit("c", 3, 100 * MIB, &[], &limits, s(5)), Ok(vec![]));
    let e = admit("c", 3, 130 * MIB, &[], &limits, s(5)).expect_err("refused");
    assert!(
        e.reason.contains(
            "it needs about 130 MiB and x has 120 MiB of room below its critical threshold"
        ),
        "{}",
        e.reason
    );
    // With another model loaded, the stall's ceiling holds even for a model alone in its
    // chain.
    let other = vec![m("a", 3, 10, 10)];
    let e = admit("c", 3, 100 * MIB, &other, &limits, s(5)).expect_err("refused");
    assert!(
        e.reason
            .contains("memory pressure holds model memory at 0 MiB"),
        "{}",
        e.reason
    );
    // The budget still binds.
    let e = admit("c", 3, 2000 * MIB, &[], &limits, s(5)).expect_err("refused");
    assert!(!e.wait, "{}", e.reason);
}

#[test]
fn the_last_model_stays_unless_memory_is_critical_or_about_to_be() {
    let only = vec![m("a", 3, 10, 96)];
    assert!(shed_for_excess(50 * MIB, &only, s(100), s(10), false, false).is_empty());
    assert_eq!(
        shed_for_excess(50 * MIB, &only, s(100), s(10), true, true),
        ["a"]
    );
    // Growth toward critical (urgent) is not critical: the pass serving it reads as growth.
    assert!(shed_for_excess(50 * MIB, &only, s(100), s(10), true, false).is_empty());
    assert_eq!(shed_for_signal(&only, s(100), s(10), 3), None);
    // With two, the excess takes one and leaves the other, however large the excess.
    let two = vec![m("a", 3, 10, 96), m("b", 3, 20, 96)];
    assert_eq!(
        shed_for_excess(500 * MIB, &two, s(100), s(10), false, false),
        ["a"]
    );
    assert_eq!(
        shed_for_signal(&two, s(100), s(10), 3).as_deref(),
        Some("a")
    );
}
