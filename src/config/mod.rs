//! Configuration: YAML files in the config directory (`caxton.yaml`, then `conf.d/*.yaml` in
//! lexical order) and `CAXTON_<SECTION>__<KEY>` environment variables, merged with figment and
//! validated into a typed [`Settings`]. Every section refuses unknown keys.

pub mod api;
mod explain;
pub mod fallback;
mod load;
pub mod memory;
pub mod metrics;
mod precision;
pub mod store;
#[cfg(test)]
mod tests;
pub mod units;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use api::ApiSettings;
pub use explain::{Explained, explain};
pub use fallback::FallbackStrategy;
pub use load::{config_files, figment};
pub use memory::{
    Budget, MemorySettings, ModelMemorySettings, PressureSettings, PressureSource,
    PressureSourceSetting,
};
pub use metrics::{ListenAddress, MetricsSettings};
pub use precision::Precision;
pub use store::{StoreBound, StoreSettings};
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
    /// Disk kept by the verified store.
    pub store: StoreSettings,
    /// The opt-in TCP listener for the API.
    pub api: ApiSettings,
    /// The opt-in TCP listener for a fleet's Prometheus.
    pub metrics: MetricsSettings,
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
    /// Reranker used when a rerank request names none; unset, the one verified reranker
    /// serves (and a request must name one when there are several).
    pub default_reranker: Option<String>,
    /// Sparse model used when a `/embed_sparse` request names none; unset, the one verified
    /// sparse model serves (and a request must name one when there are several).
    pub default_sparse: Option<String>,
    /// Multi-vector (late-interaction) model used when a `/embed_all` request names none;
    /// unset, the one verified multi-vector model serves.
    pub default_multi_vector: Option<String>,
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
    /// Alternatives for a model that cannot serve, by id, in order.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// Whether (and from what) a request is served by another model than the one it asked.
    pub fallback_strategy: FallbackStrategy,
    /// Allow an alternative of another vector width than its model's.
    pub allow_dimension_mismatch: bool,
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
    /// Whether a text past its model's length is cut when the request does not say
    /// (`truncate`); false refuses it with 413. Either way a cut is never silent: the answer's
    /// `X-Caxton-Truncated` header lists the inputs cut.
    pub auto_truncate: bool,
    /// Most connections open at once. A new one past it closes the oldest connection with no
    /// request under way (of the client holding the most), or is answered 503 when every one
    /// has a request under way.
    pub max_connections: usize,
    /// How long a connection may take to send a whole request head, counted from when it
    /// connects or got its last answer: idle keep-alive connections and clients that send
    /// their headers slowly are closed after it.
    pub idle_timeout: Duration,
    /// How long a request's body may take to arrive (408 `body_timeout` after it).
    pub body_timeout: Duration,
    /// Largest picture a request may send, counted from its data URI before any decoding
    /// (413 `image_too_large`).
    pub max_image_bytes: ByteSize,
    /// Most pixels a picture may have, read from its header before any pixel is decoded (413
    /// `image_too_many_pixels`), so a decompression bomb costs nothing.
    pub max_image_pixels: u64,
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
            store: StoreSettings::default(),
            api: ApiSettings::default(),
            metrics: MetricsSettings::default(),
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
            default_reranker: None,
            default_sparse: None,
            default_multi_vector: None,
            require_signature: false,
            trusted_keys_dir: PathBuf::from("/etc/caxton/keys"),
            validation_interval: Duration(std::time::Duration::from_secs(24 * 3600)),
            settle_time: Duration(std::time::Duration::from_secs(10)),
            precision: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            fallback_strategy: FallbackStrategy::Strict,
            allow_dimension_mismatch: false,
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
            auto_truncate: false,
            max_connections: 512,
            idle_timeout: Duration(std::time::Duration::from_secs(30)),
            body_timeout: Duration(std::time::Duration::from_secs(30)),
            max_image_bytes: ByteSize(10 << 20),
            max_image_pixels: 40_000_000,
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

/// Whether `id` is a valid model id: 1 to 128 of `[A-Za-z0-9._-]`. Configuration keys name
/// models by id, and package manifests carry one, so both check it here.
pub fn is_valid_model_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
