//! `/metrics` read the way Prometheus reads it.

use std::path::Path;
use std::process::{Command, Stdio};

use super::Daemon;

/// The daemon's `/metrics`, parsed by the Python `prometheus_client` OpenMetrics parser (the
/// Debian package `python3-prometheus-client`, which `tests/run` installs): every sample as
/// (name, labels, value). A parse error fails the test with the exposition; a missing parser
/// fails it with one line that names the package.
pub fn scrape(d: &Daemon) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    use std::io::Write;
    let (status, _, body) = d
        .try_request_with_headers("GET", "/metrics", None)
        .expect("GET /metrics");
    assert_eq!(status, 200);
    const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    // Debian's python3, where apt puts the parser (a pyenv python3 on PATH lacks it).
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| Path::new(p).exists() || !p.starts_with('/'))
        .expect("python3");
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} cannot run ({e}): {MISSING}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&body)
        .expect("write the exposition");
    let out = child.wait_with_output().expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'prometheus_client'") {
        panic!("{python} has no prometheus_client: {MISSING}");
    }
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}\n{}",
        stderr,
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

/// What to do when the parser is not there: one line, the package to install.
const MISSING: &str = "apt-get install python3-prometheus-client (or run tests/run, which installs what the tests need)";

/// The value of the sample `name` whose labels include every pair of `labels`.
pub fn sample(
    samples: &[(String, std::collections::BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}
