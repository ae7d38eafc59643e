//! Reading the configuration: the files in order, figment's layers (defaults < caxton.yaml <
//! conf.d/*.yaml < environment), paths made absolute, and the checks serde cannot express.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};

use super::{ConfigError, Settings};

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
            .ignore(&["config_dir", "socket", "isa", "test_clock"])
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
        settings
            .api
            .read_token()
            .map_err(|(key, reason)| ConfigError::Invalid { key, reason })?;
        Ok(settings)
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        if let Some(p) = &mut self.api.token_file
            && p.is_relative()
        {
            *p = lexically_normal(&dir.join(&*p));
        }
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
        self.check_rules()
            .map_err(|(key, reason)| ConfigError::Invalid { key, reason })
    }

    /// Each section's rules in turn: `(key, reason)` of the first violation.
    fn check_rules(&self) -> Result<(), (String, String)> {
        self.check_model_ids()?;
        self.check_socket_path()?;
        self.check_limits()?;
        super::fallback::validate(&self.models.fallbacks)?;
        self.memory.validate()?;
        self.metrics.validate()?;
        self.api.validate()?;
        self.check_log_level()
    }

    /// The default model and the default reranker are model ids.
    fn check_model_ids(&self) -> Result<(), (String, String)> {
        if !super::is_valid_model_id(&self.models.default) {
            return Err((
                "models.default".into(),
                format!(
                    "{:?} is not a model id (1 to 128 of [A-Za-z0-9._-])",
                    self.models.default
                ),
            ));
        }
        for (key, id) in [
            ("models.default_reranker", &self.models.default_reranker),
            ("models.default_sparse", &self.models.default_sparse),
            (
                "models.default_multi_vector",
                &self.models.default_multi_vector,
            ),
        ] {
            if let Some(id) = id
                && !super::is_valid_model_id(id)
            {
                return Err((
                    key.into(),
                    format!("{id:?} is not a model id (1 to 128 of [A-Za-z0-9._-])"),
                ));
            }
        }
        Ok(())
    }

    fn check_socket_path(&self) -> Result<(), (String, String)> {
        // sockaddr_un holds 108 bytes including the terminating NUL.
        if self.socket.path.as_os_str().len() > 107 {
            return Err((
                "socket.path".into(),
                format!(
                    "{} is longer than the 107 bytes a Unix socket path may have",
                    self.socket.path.display()
                ),
            ));
        }
        Ok(())
    }

    /// The request limits, and how often packages are verified again.
    fn check_limits(&self) -> Result<(), (String, String)> {
        let positive = [
            ("limits.max_inputs", self.limits.max_inputs),
            ("limits.max_batch_texts", self.limits.max_batch_texts),
            ("limits.max_batch_tokens", self.limits.max_batch_tokens),
            ("limits.queue_depth", self.limits.queue_depth),
            ("limits.max_connections", self.limits.max_connections),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err((key.into(), "must be at least 1".into()));
            }
        }
        if self.models.validation_interval.0 < std::time::Duration::from_secs(1) {
            return Err((
                "models.validation_interval".into(),
                "must be at least 1s".into(),
            ));
        }
        for (key, d) in [
            ("limits.idle_timeout", self.limits.idle_timeout),
            ("limits.body_timeout", self.limits.body_timeout),
        ] {
            if d.0 < std::time::Duration::from_millis(100) {
                return Err((key.into(), format!("{d} is too short; use at least 100ms")));
            }
        }
        if self.limits.max_image_bytes.0 == 0 || self.limits.max_image_pixels == 0 {
            let key = match self.limits.max_image_bytes.0 {
                0 => "limits.max_image_bytes",
                _ => "limits.max_image_pixels",
            };
            return Err((key.into(), "must be at least 1".into()));
        }
        if self.limits.max_body_bytes.0 < 1024 {
            return Err((
                "limits.max_body_bytes".into(),
                "must be at least 1KiB".into(),
            ));
        }
        Ok(())
    }

    fn check_log_level(&self) -> Result<(), (String, String)> {
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err((
                "log.level".into(),
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
