//! Configuration: YAML files in the config directory (`caxton.yaml`, then `conf.d/*.yaml` in
//! lexical order) and `CAXTON_<SECTION>__<KEY>` environment variables, merged with figment and
//! validated into a typed [`Settings`]. Every section refuses unknown keys.

pub mod memory;
pub mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use serde::{Deserialize, Serialize};

pub use crate::engine::Precision;
pub use memory::{
    Budget, MemorySettings, ModelMemorySettings, PressureSettings, PressureSourceSetting,
};
pub use units::{ByteSize, Duration, Mode};

/// Default configuration directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/caxton";

/// Everything the daemon can be configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where and how the HTTP socket listens.
    pub socket: SocketSettings,
    /// Daemon-owned state (the verified store lives in `state_dir/store`).
    pub state_dir: PathBuf,
    /// Where models come from and which one answers by default.
    pub models: ModelSettings,
    /// Request limits.
    pub limits: LimitSettings,
    /// Memory budget, model lifecycle and pressure shedding.
    pub memory: MemorySettings,
    /// Logging.
    pub log: LogSettings,
}

/// The Unix socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketSettings {
    /// Socket path; needs a restart to change.
    pub path: PathBuf,
    /// Permission bits of the socket file.
    pub mode: Mode,
    /// Group whose members may use admin endpoints besides root and the daemon's user; empty
    /// for none.
    pub admin_group: String,
}

/// Model sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// Read-only packages shipped with the distribution.
    pub bundled_dir: PathBuf,
    /// Side-loaded packages dropped by users.
    pub package_dir: PathBuf,
    /// Model used when a request names none.
    pub default: String,
    /// Refuse packages without a minisign signature by a key in `trusted_keys_dir`.
    pub require_signature: bool,
    /// Directory of minisign public keys (`*.pub`) that may sign packages.
    pub trusted_keys_dir: PathBuf,
    /// How often the verified store is re-checked against its manifests (also at start).
    pub validation_interval: Duration,
    /// How long a dropped file must stay unchanged before it is verified when no
    /// close-after-write or rename told us it is complete.
    pub settle_time: Duration,
    /// Precision of each model's linear layers, by id (others run f32).
    pub precision: BTreeMap<String, Precision>,
}

/// Limits that protect the daemon from oversized requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Most texts in one request.
    pub max_inputs: usize,
    /// Largest request body.
    pub max_body_bytes: ByteSize,
    /// Most texts in one forward pass.
    pub max_batch_texts: usize,
    /// Most padded tokens in one forward pass.
    pub max_batch_tokens: usize,
    /// Requests that may wait per model before new ones get 503.
    pub queue_depth: usize,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a tracing filter directive.
    pub level: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            socket: SocketSettings::default(),
            state_dir: PathBuf::from("/var/lib/caxton"),
            models: ModelSettings::default(),
            limits: LimitSettings::default(),
            memory: MemorySettings::default(),
            log: LogSettings::default(),
        }
    }
}

impl Default for SocketSettings {
    fn default() -> Self {
        SocketSettings {
            path: PathBuf::from("/run/caxton/caxton.sock"),
            mode: Mode(0o660),
            admin_group: String::new(),
        }
    }
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            bundled_dir: PathBuf::from("/usr/share/caxton/models"),
            package_dir: PathBuf::from("/var/lib/caxton/packages"),
            default: "all-MiniLM-L6-v2".into(),
            require_signature: false,
            trusted_keys_dir: PathBuf::from("/etc/caxton/keys"),
            validation_interval: Duration(std::time::Duration::from_secs(24 * 3600)),
            settle_time: Duration(std::time::Duration::from_secs(10)),
            precision: BTreeMap::new(),
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_inputs: 512,
            max_body_bytes: ByteSize(4 << 20),
            max_batch_texts: 32,
            max_batch_tokens: 8192,
            queue_depth: 1024,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".into(),
        }
    }
}

/// A configuration that cannot be used; the message names the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Parsing or merging failed: the file (absolute) or variable, the key and the reason.
    #[error("{}", describe(.0))]
    Figment(Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// The config directory or a drop-in could not be listed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// `FILE: KEY: REASON` for every error figment collected, with absolute file paths (figment's
/// own Display makes them relative to the current directory, which means nothing in a journal).
fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let source = match e.metadata.as_ref() {
                Some(md) => match &md.source {
                    Some(figment::Source::File(path)) => path.display().to_string(),
                    _ if md.name.contains("environment") => format!(
                        "environment variable CAXTON_{}",
                        e.path.join("__").to_ascii_uppercase()
                    ),
                    _ => md.name.to_string(),
                },
                None => "configuration".to_string(),
            };
            if e.path.is_empty() {
                format!("{source}: {}", e.kind)
            } else {
                format!("{source}: {}: {}", e.path.join("."), e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The files that make up the configuration, in the order they apply.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = vec![dir.join("caxton.yaml")];
    let conf_d = dir.join("conf.d");
    match std::fs::read_dir(&conf_d) {
        Ok(entries) => {
            let mut dropins: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect();
            dropins.sort();
            files.extend(dropins);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ConfigError::Io {
                path: conf_d,
                source: e,
            });
        }
    }
    Ok(files)
}

/// A key given twice in one mapping would silently lose the first value (figment keeps the
/// last); refuse the file instead, naming the key and line.
fn reject_duplicate_keys(file: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Io {
        path: file.to_path_buf(),
        source: e,
    })?;
    match serde_yaml::from_str::<serde_yaml::Value>(&text) {
        Err(e) if e.to_string().contains("duplicate") => Err(ConfigError::Invalid {
            key: file.display().to_string(),
            reason: e.to_string(),
        }),
        // Other syntax errors are reported by figment with the same file and line.
        _ => Ok(()),
    }
}

/// The figment for `dir`: defaults < caxton.yaml < conf.d/*.yaml < environment.
pub fn figment(dir: &Path) -> Result<Figment, ConfigError> {
    let dir = &std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut fig = Figment::from(Serialized::defaults(Settings::default()));
    for file in config_files(dir)? {
        if file.exists() {
            // Yaml::file on an unreadable file would be skipped silently; read errors must show.
            std::fs::File::open(&file).map_err(|e| ConfigError::Io {
                path: file.clone(),
                source: e,
            })?;
            reject_duplicate_keys(&file)?;
            fig = fig.merge(Yaml::file_exact(&file));
        }
    }
    Ok(fig.merge(
        Env::prefixed("CAXTON_")
            .ignore(&["config_dir", "socket"])
            .split("__"),
    ))
}

impl Settings {
    /// Loads, merges and validates the configuration in `dir`. Relative paths in the files
    /// are taken relative to `dir`.
    pub fn load(dir: &Path) -> Result<Settings, ConfigError> {
        let mut settings: Settings = figment(dir)?
            .extract()
            .map_err(|e| ConfigError::Figment(Box::new(e)))?;
        settings.resolve_paths(dir);
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        for p in [
            &mut self.socket.path,
            &mut self.state_dir,
            &mut self.models.bundled_dir,
            &mut self.models.package_dir,
            &mut self.models.trusted_keys_dir,
        ] {
            if p.is_relative() {
                *p = lexically_normal(&dir.join(&*p));
            }
        }
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: key.into(),
            reason,
        };
        if !crate::package::manifest::is_valid_id(&self.models.default) {
            return Err(invalid(
                "models.default",
                format!(
                    "{:?} is not a model id (1 to 128 of [A-Za-z0-9._-])",
                    self.models.default
                ),
            ));
        }
        // sockaddr_un holds 108 bytes including the terminating NUL.
        if self.socket.path.as_os_str().len() > 107 {
            return Err(invalid(
                "socket.path",
                format!(
                    "{} is longer than the 107 bytes a Unix socket path may have",
                    self.socket.path.display()
                ),
            ));
        }
        let positive = [
            ("limits.max_inputs", self.limits.max_inputs),
            ("limits.max_batch_texts", self.limits.max_batch_texts),
            ("limits.max_batch_tokens", self.limits.max_batch_tokens),
            ("limits.queue_depth", self.limits.queue_depth),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if self.models.validation_interval.0 < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "models.validation_interval",
                "must be at least 1s".into(),
            ));
        }
        if self.limits.max_body_bytes.0 < 1024 {
            return Err(invalid(
                "limits.max_body_bytes",
                "must be at least 1KiB".into(),
            ));
        }
        if let Err((key, reason)) = self.memory.validate() {
            return Err(invalid(&key, reason));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not a level (error, warn, info, debug, trace) or filter",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }
}

/// `a/b/../c` → `a/c`, without touching the filesystem (the paths may not exist yet).
fn lexically_normal(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// One effective setting and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// Dotted key.
    pub key: String,
    /// Effective value, as YAML.
    pub value: String,
    /// `default`, a file path, or the environment variable that set it.
    pub source: String,
}

/// The effective configuration of `dir`, key by key, with the source of every value.
pub fn explain(dir: &Path) -> Result<Vec<Explained>, ConfigError> {
    let fig = figment(dir)?;
    let settings = Settings::load(dir)?;
    let value = serde_yaml::to_value(&settings).map_err(|e| ConfigError::Invalid {
        key: "(all)".into(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    collect(&value, "", &fig, &mut out);
    Ok(out)
}

fn collect(v: &serde_yaml::Value, prefix: &str, fig: &Figment, out: &mut Vec<Explained>) {
    // An empty mapping (memory.models with no rules) is shown as a value of its own.
    if let serde_yaml::Value::Mapping(m) = v
        && !m.is_empty()
    {
        for (k, v) in m {
            let key = format!("{prefix}{}", k.as_str().unwrap_or_default());
            collect(v, &format!("{key}."), fig, out);
        }
        return;
    }
    let key = prefix.trim_end_matches('.').to_string();
    let source = match fig.find_metadata(&key) {
        Some(md) => match &md.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            _ if md.name.contains("environment") => {
                format!("env CAXTON_{}", key.to_ascii_uppercase().replace('.', "__"))
            }
            _ => "default".to_string(),
        },
        None => "default".to_string(),
    };
    let value = serde_yaml::to_string(v)
        .unwrap_or_default()
        .trim_end()
        .to_string();
    out.push(Explained { key, value, source });
}

#[cfg(test)]
mod tests {
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
        let mut keys: Vec<String> =
            explain(&Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/caxton"))
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
        std::fs::write(dir.path().join("caxton.yaml"), "limits:\n  max_inputs: 7\n")
            .expect("write");
        std::fs::create_dir(dir.path().join("conf.d")).expect("mkdir");
        let dropin = dir.path().join("conf.d/10-log.yaml");
        std::fs::write(&dropin, "log:\n  level: debug\n").expect("write");
        let all = explain(dir.path()).expect("valid");
        let find = |k: &str| all.iter().find(|e| e.key == k).expect(k).clone();
        assert_eq!(find("limits.max_inputs").value, "7");
        assert_eq!(
            find("limits.max_inputs").source,
            dir.path().join("caxton.yaml").display().to_string()
        );
        assert_eq!(find("log.level").source, dropin.display().to_string());
        assert_eq!(find("socket.path").source, "default");
        assert_eq!(all.len(), 34);
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
        std::fs::write(dir.path().join("caxton.yaml"), "limits:\n  max_inputs: 1\n")
            .expect("write");
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
}
