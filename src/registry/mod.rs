//! The registry of models: which packages were found, which verified (and which won when two
//! carry the same id), which were rejected and why, and the loaded engines. Its files:
//! [`catalogue`] finds and verifies packages and picks each id's version (and [`retention`]
//! which versions the store keeps); [`slot`] is one verified model and its lazy, single-flight
//! load, under the settings of [`load_config`]; [`serving`] decides which model answers a
//! request (its fallback chain, with [`fallback`]'s episodes and order); [`admission`] is how a
//! load is admitted, queued and made room for, and [`refusals`] how its refusals reach the
//! journal (once per episode); [`loaded`] is what is in memory (unloads and sheds, the
//! residents the memory policy weighs); [`error`] says why a model cannot serve. Around them:
//! [`usage`] and [`usage_file`] keep usage across restarts; [`habits`] learns when each model
//! is used and [`prediction`] preloads from that.

mod admission;
mod catalogue;
mod error;
pub mod fallback;
pub mod habits;
mod load_config;
mod loaded;
mod prediction;
mod refusals;
pub mod retention;
mod serving;
mod slot;
mod usage;
pub mod usage_file;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::MemorySettings;
use crate::engine::{BatchLimits, EngineOptions, Precision};
use crate::memory::governor::Governor;
pub use catalogue::{Candidate, ScanResult, candidates, find_packages, signature_policy};
pub use error::{LoadError, ModelError};
use load_config::LoadConfig;
pub use loaded::Flushed;
pub use prediction::{Prediction, Preloaded};
pub use serving::{Served, Wanted};
pub use slot::ModelSlot;
use usage::UsageKeeper;

/// Where a package came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Shipped read-only with the distribution (`models.bundled_dir`).
    Bundled,
    /// Dropped into `models.package_dir`.
    SideLoaded,
}

/// Lifecycle state of a model, as `GET /api/models` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    /// Verified, not in memory.
    Available,
    /// Being loaded.
    Loading,
    /// In memory and serving.
    Loaded,
    /// Its last load failed; requests get 503 until the backoff ends, then it is tried again.
    Failed,
}

/// A model's last failed load, as `GET /api/models` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct FailureInfo {
    /// What went wrong.
    pub reason: String,
    /// Stable name of the failure (the package error's kind).
    pub reason_code: &'static str,
    /// When the last attempt failed.
    pub at: SystemTime,
    /// Failed attempts in a row.
    pub attempts: u32,
    /// The next attempt is not made before this time.
    pub retry_at: SystemTime,
}

/// A package that was refused, kept so it can be reported.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// The package file.
    pub file: PathBuf,
    /// Where it was found.
    pub source: Source,
    /// Stable name of the failed rule.
    pub kind: &'static str,
    /// Human-readable reason.
    pub reason: String,
}

/// A read-only view of one model for status endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Model id.
    pub id: String,
    /// Package version.
    pub version: String,
    /// Bundled or side-loaded.
    pub source: Source,
    /// Lifecycle state.
    pub state: ModelState,
    /// The package file.
    pub file: PathBuf,
    /// What it is for (embedding, or reranking with its activation).
    pub kind: crate::package::ModelKind,
    /// A reranker's activation on its logit.
    pub activation: Option<crate::package::ScoreActivation>,
    /// The outputs an embedding model's manifest lists, its vector among them (bge-m3:
    /// dense, sparse, multi_vector); empty for a model of one output.
    pub outputs: Vec<crate::package::OutputName>,
    /// Vector length.
    pub dimensions: usize,
    /// Token limit per text.
    pub max_seq_length: usize,
    /// Bytes held in memory when loaded.
    pub memory_bytes: Option<u64>,
    /// Bytes it is expected to take when loaded (measured at its last load, else estimated).
    pub expected_bytes: u64,
    /// Bytes a forward pass over its longest text needs beside it (admission leaves them).
    pub longest_pass_bytes: u64,
    /// Last time a request used it.
    pub last_use: Option<SystemTime>,
    /// Requests served.
    pub use_count: u64,
    /// When it was last used or (if later) loaded: the start of its idle time.
    pub idle_since: Option<SystemTime>,
    /// Tokens embedded.
    pub tokens: u64,
    /// The last load failed, and the backoff before the next.
    pub failure: Option<FailureInfo>,
    /// 1 (most valuable) to 5 (shed first).
    pub priority: u8,
    /// Never unloaded by idleness, budget or pressure.
    pub pinned: bool,
    /// Loaded at start and after reloads.
    pub preload: bool,
    /// `prediction` while it is loaded because its habits predicted a use this hour, and
    /// no request has used it yet (it is the first to go when memory is needed).
    pub preloaded_by: Option<&'static str>,
    /// Configured precision of its linear layers.
    pub precision: Precision,
    /// The precision it runs in, when loaded (f32 where the CPU cannot run bf16).
    pub loaded_precision: Option<Precision>,
    /// The kernels it runs on, when loaded (`avx512-vnni`, `avx2`, `amx`, ...).
    pub kernel: Option<&'static str>,
}

/// All models the daemon knows of: the verified ones (each a [`ModelSlot`]) and the refused
/// packages; what the rest of the registry needs is held by parts named for what they own.
pub struct Registry {
    /// How models load and rank: engine options, batch limits, precisions, the default model.
    load: LoadConfig,
    /// What the last scans decided of each package file, and the files still arriving.
    verdicts: catalogue::Verdicts,
    models: RwLock<BTreeMap<String, Arc<ModelSlot>>>,
    rejected: RwLock<Vec<Rejection>>,
    /// Woken whenever a model finishes loading, so requests queued for it stop waiting.
    loaded_event: tokio::sync::Notify,
    /// The memory policy's state: budget, rules, shedding.
    pub governor: Arc<Governor>,
    /// Usage of models not here now, and the file all usage is kept in.
    usage: UsageKeeper,
    /// Models being answered for by an alternative (`models.fallbacks`).
    pub fallbacks: fallback::Episodes,
    /// Refused loads, for the journal's one line per episode.
    refusals: refusals::RefusalLog,
}

impl Registry {
    /// An empty registry whose models will run with `options` under `memory`'s rules.
    pub fn new(options: EngineOptions, memory: &MemorySettings) -> Registry {
        Registry {
            governor: Arc::new(Governor::new(memory)),
            load: LoadConfig::new(options),
            verdicts: catalogue::Verdicts::default(),
            models: RwLock::new(BTreeMap::new()),
            rejected: RwLock::new(Vec::new()),
            loaded_event: tokio::sync::Notify::new(),
            usage: UsageKeeper::default(),
            fallbacks: fallback::Episodes::default(),
            refusals: refusals::RefusalLog::default(),
        }
    }

    /// Reads the usage kept under `state_dir` (before the first scan, whose models take it)
    /// and keeps it there from now on.
    pub fn restore_usage(&self, state_dir: &std::path::Path) {
        self.usage.restore(state_dir);
    }

    /// Every model's usage: the verified models', and what is remembered of the others.
    pub fn usage_records(&self) -> BTreeMap<String, usage_file::Record> {
        let mut records = self.usage.remembered().clone();
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        for (id, slot) in models.iter() {
            records.insert(id.clone(), slot.record());
        }
        records
    }

    /// Writes the usage file when usage changed since the last write; a failure is logged
    /// (with the file and the reason) and tried again at the next call.
    pub fn save_usage(&self) {
        self.usage.save(self.usage_records());
    }

    /// Changes forward-pass limits for every model, loaded or not.
    pub fn set_batch_limits(&self, limits: BatchLimits) {
        self.load.set_batch_limits(limits);
    }

    /// Sets each model's precision (`models.precision`); returns the loaded models whose
    /// precision this changes, which run the old one until they are loaded again.
    pub fn set_precision(&self, precision: BTreeMap<String, Precision>) -> Vec<String> {
        let stale = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(id, slot)| {
                let configured = precision.get(*id).copied().unwrap_or_default();
                slot.usage().state == Some(ModelState::Loaded)
                    && configured != self.precision_of(id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        self.load.set_precision(precision);
        stale
    }

    /// Sets `models.default`, the model shed last among those of its priority.
    pub fn set_default(&self, id: &str) {
        self.load.set_default(id);
    }

    /// The configured precision of `id`.
    pub fn precision_of(&self, id: &str) -> Precision {
        self.load.precision_of(id)
    }

    /// The slot for `id`, if a verified package carries it.
    pub fn get(&self, id: &str) -> Option<Arc<ModelSlot>> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The kind and width of `id`: its verified package's, else remembered from its last one.
    pub fn shape(&self, id: &str) -> Option<crate::config::fallback::Shape> {
        if let Some(slot) = self.get(id) {
            let m = &slot.package.manifest;
            return Some(crate::config::fallback::Shape {
                kind: m.kind.shape_kind(),
                dimensions: m.dimensions,
            });
        }
        let remembered = self.usage.remembered();
        let r = remembered.get(id)?;
        Some(crate::config::fallback::Shape {
            kind: r.kind(),
            dimensions: r.dimensions?,
        })
    }

    /// `id` as an alternative: whether it is in memory and the bytes it takes (`None` when no
    /// verified package has it).
    pub fn alternative(&self, id: &str) -> Option<fallback::Alternative> {
        let slot = self.get(id)?;
        // Read under the lock, without copying the usage (its habits included).
        let (loaded, held) = {
            let u = slot.usage();
            (u.state == Some(ModelState::Loaded), u.memory_bytes)
        };
        Some(fallback::Alternative {
            id: id.to_string(),
            loaded,
            bytes: held.unwrap_or_else(|| slot.footprint(&self.governor, self.precision_of(id))),
        })
    }

    /// Ids of all verified models.
    pub fn ids(&self) -> Vec<String> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Status of every verified model.
    pub fn models(&self) -> Vec<ModelInfo> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models
            .values()
            .map(|s| s.info(&self.governor, self.precision_of(&s.package.manifest.id)))
            .collect()
    }

    /// Packages refused at the last scan.
    pub fn rejected(&self) -> Vec<Rejection> {
        self.rejected
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_usage_file_is_rewritten_at_the_next_save_even_with_no_usage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = usage_file::path(dir.path());
        std::fs::write(&path, b"{\"format\": 1, \"models\": {\"m\": ").expect("torn");
        let registry = Registry::new(
            EngineOptions::default(),
            &crate::config::MemorySettings::default(),
        );
        registry.restore_usage(dir.path());
        registry.save_usage();
        let (records, sound) = usage_file::read(&path);
        assert!(sound && records.is_empty(), "the torn file is still there");
    }
}
