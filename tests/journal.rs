//! Journald output: when stderr is the journal (JOURNAL_STREAM names it), caxtond writes native
//! journal datagrams with plain field names (`CAXTON_EVENT`, not `F_CAXTON_EVENT`) and
//! `SYSLOG_IDENTIFIER=caxtond`. A test datagram socket stands in for journald at its fixed path:
//! as root, in a mount namespace of its own with a tmpfs over `/run/systemd/journal`, so it runs
//! beside a real journald too; else only where the path is free.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const JOURNAL: &str = "/run/systemd/journal/socket";

struct RemoveOnDrop;

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(JOURNAL);
    }
}

/// Set in the test's own mount namespace, where it runs the test itself.
// Not CAXTON_…: caxtond takes such variables for configuration keys and refuses unknown ones.
const IN_NAMESPACE: &str = "JOURNAL_TEST_IN_NAMESPACE";

/// Runs `test` of this binary again in a new mount namespace (private propagation) with a
/// tmpfs over the journal's directory; `None` when no namespace can be made (not root).
fn in_own_namespace(test: &str) -> Option<std::process::Output> {
    let exe = std::env::current_exe().ok()?;
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output()
        .ok()?;
    if !probe.status.success() {
        return None;
    }
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mkdir -p /run/systemd/journal && mount -t tmpfs tmpfs /run/systemd/journal && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(IN_NAMESPACE, "1")
        .output()
        .ok()
}

#[test]
fn under_journald_events_carry_plain_structured_fields() {
    if std::env::var_os(IN_NAMESPACE).is_none() {
        match in_own_namespace("under_journald_events_carry_plain_structured_fields") {
            Some(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && text.contains("1 passed"),
                    "in its own mount namespace: {}\n{text}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                return;
            }
            None if Path::new(JOURNAL).exists() => {
                common::skip::skip(&format!(
                    "a journald is listening at {JOURNAL} and no mount namespace can be made to stand in for it (needs root and unshare)"
                ));
                return;
            }
            None => {}
        }
    }
    if std::fs::create_dir_all("/run/systemd/journal").is_err() {
        common::skip::skip("cannot create /run/systemd/journal (not root?)");
        return;
    }
    let journal = UnixDatagram::bind(JOURNAL).expect("bind the stand-in journal");
    let _cleanup = RemoveOnDrop;
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");

    let dir = tempfile::tempdir().expect("tempdir");
    common::write_config(dir.path(), "");
    let stderr_path = dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let md = std::fs::metadata(&stderr_path).expect("stat");
    let mut child = Command::new(env!("CARGO_BIN_EXE_caxtond"))
        .arg("--config-dir")
        .arg(dir.path())
        .env("JOURNAL_STREAM", format!("{}:{}", md.dev(), md.ino()))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn caxtond");

    let deadline = Instant::now() + common::START_DEADLINE;
    let mut entries: Vec<Vec<(String, String)>> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let has = |entries: &[Vec<(String, String)>], k: &str, v: &str| {
        entries
            .iter()
            .any(|e| e.iter().any(|(a, b)| a == k && b == v))
    };
    while !has(&entries, "CAXTON_EVENT", "ready") {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no ready event in the journal; got {entries:?}");
        }
        if let Ok(n) = journal.recv(&mut buf) {
            entries.push(parse_native(&buf[..n]));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let loaded = entries
        .iter()
        .find(|e| {
            e.iter()
                .any(|(k, v)| k == "CAXTON_EVENT" && v == "model_loaded")
        })
        .expect("a model_loaded entry");
    let field = |k: &str| loaded.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
    assert_eq!(field("CAXTON_MODEL"), Some("all-MiniLM-L6-v2"));
    assert_eq!(field("SYSLOG_IDENTIFIER"), Some("caxtond"));
    assert!(field("MESSAGE").is_some_and(|m| m.starts_with("model all-MiniLM-L6-v2 loaded")));
    assert!(
        entries.iter().flatten().all(|(k, _)| !k.starts_with("F_")),
        "field names carry no prefix: {entries:?}"
    );
    let text = std::fs::read_to_string(&stderr_path).expect("stderr");
    assert!(
        !text.contains("caxtond ready"),
        "logs go to the journal, not stderr: {text}"
    );
}

/// Fields of one journald native-protocol datagram: `KEY=value\n`, or `KEY\n`, a 64-bit
/// little-endian length, the value and `\n`.
fn parse_native(mut data: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while let Some(nl) = data.iter().position(|&b| b == b'\n') {
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            data = &data[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &data[nl + 1..];
            if rest.len() < 8 {
                break;
            }
            let mut len = [0u8; 8];
            len.copy_from_slice(&rest[..8]);
            let len = u64::from_le_bytes(len) as usize;
            let value = &rest[8..(8 + len).min(rest.len())];
            fields.push((key, String::from_utf8_lossy(value).into_owned()));
            data = &rest[(8 + len + 1).min(rest.len())..];
        }
    }
    fields
}

#[test]
fn a_must_run_entry_names_a_target_or_one_test() {
    use common::skip::must_run;
    assert!(must_run("contention", "contention::a"));
    assert!(must_run("store, contention::a", "contention::a"));
    assert!(!must_run("contention::b", "contention::a"));
    assert!(!must_run("content", "contention::a"));
    assert!(!must_run("", "contention::a"));
    assert_eq!(
        common::skip::current_test(),
        "journal::a_must_run_entry_names_a_target_or_one_test"
    );
}
