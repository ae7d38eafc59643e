//! The configuration as files and variables give it: defaults, layering, refusals.

use std::path::Path;

use super::*;

fn load(yaml: &str) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("caxton.yaml"), yaml).expect("write");
    Settings::load(dir.path())
}

#[test]
fn defaults_are_the_production_paths() {
    let s = load("").expect("empty config is valid");
    assert_eq!(s.socket.path, PathBuf::from("/run/caxton/caxton.sock"));
    assert_eq!(
        s.models.bundled_dir,
        PathBuf::from("/usr/share/caxton/models")
    );
    assert_eq!(s.socket.mode, Mode(0o660));
}

#[test]
fn the_shipped_config_lists_exactly_the_defaults() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/caxton");
    let shipped = Settings::load(&dir).expect("etc/caxton/caxton.yaml is valid");
    assert_eq!(shipped, Settings::default());
    // Every key of the defaults appears in the shipped file, so it documents them all.
    let text = std::fs::read_to_string(dir.join("caxton.yaml")).expect("read");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let defaults = serde_yaml::to_value(Settings::default()).expect("serialise");
    fn keys(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
        if let serde_yaml::Value::Mapping(m) = v {
            for (k, v) in m {
                let k = format!("{prefix}{}", k.as_str().unwrap_or("?"));
                keys(v, &format!("{k}."), out);
                out.push(k);
            }
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    keys(&yaml, "", &mut a);
    keys(&defaults, "", &mut b);
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn docs_configuration_documents_exactly_the_settings_keys() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .expect("docs/configuration.md");
    let mut documented: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("### `").and_then(|r| r.strip_suffix('`')))
        .map(str::to_owned)
        .collect();
    let mut keys: Vec<String> = explain(&Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/caxton"))
        .expect("shipped config")
        .into_iter()
        .map(|e| e.key)
        .collect();
    documented.sort();
    keys.sort();
    assert_eq!(documented, keys);
}

#[test]
fn modes_are_octal_whether_quoted_or_not_and_bare_decimals_are_refused() {
    assert_eq!(
        load("socket:\n  mode: \"0600\"\n")
            .expect("quoted")
            .socket
            .mode,
        Mode(0o600)
    );
    assert_eq!(
        load("socket:\n  mode: 0640\n")
            .expect("unquoted")
            .socket
            .mode,
        Mode(0o640)
    );
    let e = load("socket:\n  mode: 660\n")
        .expect_err("decimal")
        .to_string();
    assert!(e.contains("write the mode as a quoted octal string"), "{e}");
    assert!(e.contains("socket.mode"), "{e}");
}

#[test]
fn sizes_and_nested_unknown_keys() {
    assert_eq!(
        load("limits:\n  max_body_bytes: 1MiB\n")
            .expect("size")
            .limits
            .max_body_bytes,
        ByteSize(1 << 20)
    );
    let e = load("limits:\n  max_body_bytes: lots\n")
        .expect_err("bad size")
        .to_string();
    assert!(
        e.contains("\"lots\" is not a size") && e.contains("limits.max_body_bytes"),
        "{e}"
    );
    let e = load("limits:\n  max_inputz: 3\n")
        .expect_err("unknown")
        .to_string();
    assert!(e.contains("max_inputz") && e.contains("caxton.yaml"), "{e}");
}

#[test]
fn explain_names_the_source_of_each_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("caxton.yaml"), "limits:\n  max_inputs: 7\n").expect("write");
    std::fs::create_dir(dir.path().join("conf.d")).expect("mkdir");
    let dropin = dir.path().join("conf.d/10-log.yaml");
    std::fs::write(
        &dropin,
        "log:\n  level: debug\nmetrics:\n  listen: [\"127.0.0.1:9464\", \"[::1]:9464\"]\n",
    )
    .expect("write");
    let all = explain(dir.path()).expect("valid");
    let find = |k: &str| all.iter().find(|e| e.key == k).expect(k).clone();
    assert_eq!(find("limits.max_inputs").value, "7");
    assert_eq!(
        find("limits.max_inputs").source,
        dir.path().join("caxton.yaml").display().to_string()
    );
    assert_eq!(find("log.level").source, dropin.display().to_string());
    assert_eq!(find("socket.path").source, "default");
    assert_eq!(
        find("metrics.listen").value,
        "[127.0.0.1:9464, '[::1]:9464']"
    );
    assert_eq!(find("metrics.listen").source, dropin.display().to_string());
    assert_eq!(all.len(), 52);
}

#[test]
fn store_max_size_is_auto_or_a_size() {
    use crate::config::StoreBound;
    assert_eq!(load("").expect("default").store.max_size, StoreBound::Auto);
    assert_eq!(
        StoreBound::Auto.bytes(1000),
        250,
        "a quarter of the filesystem"
    );
    assert_eq!(
        load("store:\n  max_size: 2GiB\n")
            .expect("size")
            .store
            .max_size,
        StoreBound::Bytes(ByteSize(2 << 30))
    );
    assert_eq!(StoreBound::Bytes(ByteSize(7)).bytes(1000), 7);
    let e = load("store:\n  max_size: lots\n")
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("store.max_size") && e.contains(", or auto for a quarter of the filesystem"),
        "{e}"
    );
    let e = load("store:\n  max_size: -1\n")
        .expect_err("refused")
        .to_string();
    assert!(e.contains("-1 is negative; a size cannot be"), "{e}");
}

#[test]
fn a_key_given_twice_is_refused() {
    let e = load("socket:\n  mode: \"0600\"\nsocket:\n  path: /tmp/x.sock\n")
        .expect_err("duplicate")
        .to_string();
    assert!(
        e.contains("caxton.yaml") && e.contains("duplicate") && e.contains("socket"),
        "{e}"
    );
}

#[test]
fn relative_paths_are_relative_to_the_config_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("caxton.yaml"), "state_dir: state\n").expect("write");
    let s = Settings::load(dir.path()).expect("valid");
    assert_eq!(s.state_dir, dir.path().join("state"));
}

#[test]
fn conf_d_applies_after_the_main_file_in_lexical_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("caxton.yaml"), "limits:\n  max_inputs: 1\n").expect("write");
    std::fs::create_dir(dir.path().join("conf.d")).expect("mkdir");
    std::fs::write(
        dir.path().join("conf.d/20-b.yaml"),
        "limits:\n  max_inputs: 3\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("conf.d/10-a.yaml"),
        "limits:\n  max_inputs: 2\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("conf.d/30-c.yml.disabled"),
        "limits:\n  max_inputs: 9\n",
    )
    .expect("write");
    assert_eq!(
        Settings::load(dir.path()).expect("valid").limits.max_inputs,
        3
    );
}

#[test]
fn connection_limits_and_timeouts_are_refused_when_unusable() {
    let err = load("limits:\n  max_connections: 0\n").expect_err("0 connections");
    assert!(
        err.to_string()
            .contains("limits.max_connections: must be at least 1"),
        "{err}"
    );
    let err = load("limits:\n  idle_timeout: 10ms\n").expect_err("10ms");
    assert!(
        err.to_string()
            .contains("limits.idle_timeout: 10ms is too short; use at least 100ms"),
        "{err}"
    );
    let err = load("limits:\n  body_timeout: 0s\n").expect_err("0s");
    assert!(
        err.to_string()
            .contains("limits.body_timeout: 0s is too short; use at least 100ms"),
        "{err}"
    );
    let ok = load("limits:\n  max_connections: 64\n  idle_timeout: 2s\n  body_timeout: 5s\n")
        .expect("valid");
    assert_eq!(ok.limits.max_connections, 64);
    assert_eq!(ok.limits.idle_timeout.0, std::time::Duration::from_secs(2));
}
