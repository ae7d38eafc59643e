//! Skips that are counted and can be refused: a test that cannot run on this machine says so
//! with one `SKIP` line naming it, the line is appended to `TESTS_SKIP_LOG` (which `tests/run`
//! sums up after the run), and where the machine must run the test (`TESTS_MUST_RUN`, set by
//! CI) the skip fails the test instead. A skip is never reported as a pass. (Not `CAXTON_…`
//! names: caxtond reads those as configuration keys and refuses unknown ones.)

use std::io::Write;

/// The running test as `target::test`: libtest names each test's thread after the test.
pub fn current_test() -> String {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("main").to_string();
    format!("{}::{test}", env!("CARGO_CRATE_NAME"))
}

/// Whether `test` (`target::test`) matches an entry of `must_run`: a comma-separated list of
/// `target` (every test of it) or `target::test`.
pub fn must_run(must_run: &str, test: &str) -> bool {
    let target = test.split("::").next().unwrap_or(test);
    must_run
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|e| e == test || e == target)
}

/// Says the running test cannot run here, and `why`; fails it instead when `TESTS_MUST_RUN`
/// names it. The caller returns after this.
pub fn skip(why: &str) {
    let test = current_test();
    if let Ok(list) = std::env::var("TESTS_MUST_RUN")
        && must_run(&list, &test)
    {
        panic!("{test} must run on this machine (TESTS_MUST_RUN={list}) but cannot: {why}");
    }
    let line = format!("SKIP {test}: {why}");
    println!("{line}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("TESTS_SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{test}: {why}");
    }
}
