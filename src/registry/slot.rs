//! One verified model: its package, its usage, and its lazy, single-flight load (concurrent
//! requests for a model that is loading wait for that one load).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use super::usage_file::Record;
use super::{FailureInfo, LoadError, ModelInfo, ModelState, Source};
use crate::engine::{BatchLimits, EngineOptions, LoadedModel, Precision};
use crate::memory::footprints::Footprints;
use crate::memory::governor::Governor;
use crate::package::{Lease, PackageError, StoredPackage};

/// Usage numbers kept per model.
#[derive(Debug, Clone, Default)]
pub(super) struct Usage {
    pub(super) state: Option<ModelState>,
    pub(super) last_use: Option<SystemTime>,
    /// `last_use` (or the load, if later) on the monotonic clock, for idle expiry and recency.
    pub(super) last_use_at: Option<Instant>,
    /// When the load in memory finished, for `memory.min_residency`.
    pub(super) loaded_at: Option<Instant>,
    pub(super) use_count: u64,
    pub(super) memory_bytes: Option<u64>,
    /// What the loaded model computes in.
    pub(super) precision: Option<Precision>,
    /// What its linear layers run on.
    pub(super) kernel: Option<&'static str>,
    /// Tokens embedded (persisted with the use count).
    pub(super) tokens: u64,
    /// The last load failed: no new attempt before its backoff ends.
    pub(super) failure: Option<Failure>,
    /// Uses by hour of week (persisted with the use count).
    pub(super) habits: super::habits::Habits,
    /// Loaded by a prediction for this hour (since the epoch), and not used since.
    pub(super) predicted: Option<u64>,
    /// The idle limit a request set for this load (Ollama's `keep_alive`).
    pub(super) keep_alive: Option<crate::memory::policy::KeepAlive>,
}

/// A failed load and the backoff it started.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) reason: String,
    pub(super) kind: &'static str,
    pub(super) at: SystemTime,
    /// Failed loads in a row.
    pub(super) attempts: u32,
    pub(super) retry_at: Instant,
}

/// The first wait after a failed load; each further failure doubles it, up to [`BACKOFF_CAP`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// The longest wait between two attempts to load a model that keeps failing.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// The wait after `attempts` failed loads in a row.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP)
}

/// One verified model.
pub struct ModelSlot {
    /// The stored package.
    pub package: StoredPackage,
    /// The package file it came from.
    pub file: PathBuf,
    /// Where that file was found.
    pub source: Source,
    pub(super) loaded: tokio::sync::Mutex<Option<Arc<LoadedModel>>>,
    pub(super) usage: Mutex<Usage>,
    /// [`crate::engine::longest_pass_bytes`], read from the package once.
    longest_pass: std::sync::OnceLock<u64>,
    /// Its store entry stays while the slot lives: a request holding the slot may load it
    /// after a rescan superseded the version and pruned it from the store.
    _entry: Option<Lease>,
}

impl ModelSlot {
    /// A verified model found in `file`, not loaded, with the usage `record` kept of it.
    pub(super) fn new(
        package: StoredPackage,
        file: PathBuf,
        source: Source,
        record: &Record,
    ) -> ModelSlot {
        let last_use = record.last_use_time();
        // The monotonic clock of a last use before this start, for recency: as long ago as
        // the wall clock says, or unknown when that is before the machine's boot.
        let last_use_at = last_use
            .and_then(|t| crate::clock::now().duration_since(t).ok())
            .and_then(|ago| Instant::now().checked_sub(ago));
        ModelSlot {
            _entry: package.lease(),
            package,
            file,
            source,
            loaded: tokio::sync::Mutex::new(None),
            longest_pass: std::sync::OnceLock::new(),
            usage: Mutex::new(Usage {
                use_count: record.use_count,
                tokens: record.tokens,
                last_use,
                last_use_at,
                habits: record.habits.clone(),
                ..Usage::default()
            }),
        }
    }

    /// Its usage as the usage file keeps it.
    pub(super) fn record(&self) -> Record {
        let u = self.usage();
        Record {
            use_count: u.use_count,
            last_use: u
                .last_use
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            tokens: u.tokens,
            dimensions: Some(self.package.manifest.dimensions),
            reranker: self.package.manifest.kind == crate::package::ModelKind::Reranker,
            sparse: self.package.manifest.kind == crate::package::ModelKind::Sparse,
            multi_vector: self.package.manifest.kind == crate::package::ModelKind::MultiVector,
            habits: u.habits.clone(),
        }
    }

    pub(super) fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn info(&self, governor: &Governor, precision: Precision) -> ModelInfo {
        let u = self.usage().clone();
        let m = &self.package.manifest;
        let rules = governor.rules(&m.id);
        ModelInfo {
            expected_bytes: u
                .memory_bytes
                .unwrap_or_else(|| self.footprint(governor, precision)),
            longest_pass_bytes: self.longest_pass(),
            priority: rules.priority,
            pinned: rules.pinned,
            preload: rules.preload,
            precision,
            loaded_precision: u.precision,
            kernel: u.kernel,
            id: m.id.clone(),
            version: m.version.clone(),
            source: self.source,
            // A retry under way (loading) or a success (loaded) shows over the last failure.
            state: match (u.state, &u.failure) {
                (Some(state @ (ModelState::Loading | ModelState::Loaded)), _) => state,
                (_, Some(_)) => ModelState::Failed,
                _ => ModelState::Available,
            },
            failure: u.failure.as_ref().map(|f| FailureInfo {
                reason: f.reason.clone(),
                reason_code: f.kind,
                at: f.at,
                attempts: f.attempts,
                retry_at: SystemTime::now() + f.retry_at.saturating_duration_since(Instant::now()),
            }),
            tokens: u.tokens,
            file: self.file.clone(),
            kind: m.kind,
            activation: m.activation,
            outputs: m.outputs.clone(),
            dimensions: m.dimensions,
            max_seq_length: m.max_seq_length,
            memory_bytes: u.memory_bytes,
            last_use: u.last_use,
            use_count: u.use_count,
            idle_since: u
                .last_use_at
                .and_then(|t| SystemTime::now().checked_sub(t.elapsed())),
            preloaded_by: u.predicted.map(|_| "prediction"),
        }
    }

    /// Bytes this model will take once loaded in `precision` (see [`Footprints::footprint`]).
    pub(super) fn footprint(&self, governor: &Governor, precision: Precision) -> u64 {
        governor
            .footprints
            .footprint(&self.footprint_key(precision), || {
                crate::engine::estimate_bytes(&self.package, precision)
            })
    }

    /// Room a forward pass over its longest text needs beyond the model's own memory.
    pub(super) fn longest_pass(&self) -> u64 {
        *self
            .longest_pass
            .get_or_init(|| crate::engine::longest_pass_bytes(&self.package))
    }

    /// Records that this model's load in `precision` took `bytes`; returns what to count for
    /// it (see [`Footprints::remember`]).
    pub(super) fn remember(&self, governor: &Governor, precision: Precision, bytes: u64) -> u64 {
        governor.footprints.remember(
            &self.footprint_key(precision),
            || crate::engine::estimate_bytes(&self.package, precision),
            bytes,
        )
    }

    fn footprint_key(&self, precision: Precision) -> String {
        Footprints::key(&self.package.package_sha256, precision)
    }

    /// Corrects what the loaded model is counted as holding (see [`Footprints::remember`]).
    pub(super) fn set_memory(&self, bytes: u64) {
        let mut u = self.usage();
        if u.memory_bytes.is_some() {
            u.memory_bytes = Some(bytes);
            crate::metrics::get()
                .memory
                .get_or_create(&crate::metrics::Metrics::model(&self.package.manifest.id))
                .set(bytes as i64);
        }
    }

    /// Records one request served, of `tokens` tokens.
    pub fn touch(&self, tokens: u64) {
        let now = crate::clock::now();
        let mut u = self.usage();
        u.last_use = Some(now);
        u.last_use_at = Some(Instant::now());
        u.use_count += 1;
        u.tokens += tokens;
        u.habits.record(super::habits::hour_of(now));
        u.predicted = None;
    }

    /// While the backoff of a failed load runs: the error a request gets instead of another
    /// attempt (503 with the time left).
    pub(super) fn backing_off(&self) -> Option<LoadError> {
        let u = self.usage();
        let f = u.failure.as_ref()?;
        let left = f.retry_at.checked_duration_since(Instant::now())?;
        Some(LoadError::Failed {
            id: self.package.manifest.id.clone(),
            reason: format!(
                "{} ({} failed attempt{} in a row; the next one is not before {}s from now)",
                f.reason,
                f.attempts,
                if f.attempts == 1 { "" } else { "s" },
                left.as_secs_f64().ceil()
            ),
            retry_after: left,
        })
    }

    /// Forgets a failed load's backoff, so the next request tries at once (an operator's
    /// explicit load).
    pub(super) fn clear_backoff(&self) {
        if let Some(f) = self.usage().failure.as_mut() {
            f.retry_at = Instant::now();
        }
    }

    /// The loaded model, loading it first (once, however many requests wait for it); a failed
    /// load starts the backoff.
    pub(super) async fn acquire(
        &self,
        options: EngineOptions,
        batch: Arc<RwLock<BatchLimits>>,
        precision: Precision,
    ) -> Result<Arc<LoadedModel>, LoadError> {
        let mut loaded = self.loaded.lock().await;
        if let Some(model) = loaded.as_ref() {
            return Ok(model.clone());
        }
        self.usage().state = Some(ModelState::Loading);
        match load(self.package.clone(), options, batch, precision).await {
            Ok((model, grown)) => {
                let model = Arc::new(model);
                self.loaded(&model, grown.max(model.weight_bytes), precision);
                *loaded = Some(model.clone());
                Ok(model)
            }
            Err(e) => Err(self.failed(&e)),
        }
    }

    /// Records `model`'s load (taking `bytes`): its usage, the journal, the metrics.
    fn loaded(&self, model: &LoadedModel, bytes: u64, precision: Precision) {
        let id = &self.package.manifest.id;
        if let Some(reason) = &model.precision_fallback {
            tracing::warn!(
                caxton_event = "precision_fallback",
                caxton_model = %id,
                caxton_reason = %reason,
                "model {id} is configured for {precision} (models.precision) but runs f32: {reason}"
            );
        }
        tracing::info!(
            caxton_event = "model_loaded",
            caxton_model = %id,
            load_ms = model.load_time.as_millis() as u64,
            memory_bytes = bytes,
            precision = model.precision.name(),
            kernel = model.kernel,
            "model {id} loaded in {:.0?} ({} MiB in memory, {} MiB of it weights; {} on the {} kernel)",
            model.load_time,
            bytes >> 20,
            model.weight_bytes >> 20,
            model.precision,
            model.kernel
        );
        {
            let mut u = self.usage();
            u.failure = None;
            u.state = Some(ModelState::Loaded);
            u.precision = Some(model.precision);
            u.kernel = Some(model.kernel);
            u.memory_bytes = Some(bytes);
            u.last_use_at = Some(Instant::now());
            u.loaded_at = Some(Instant::now());
        }
        let m = crate::metrics::get();
        let label = crate::metrics::Metrics::model(id);
        m.load_time
            .get_or_create(&label)
            .set(model.load_time.as_secs_f64());
        m.load_duration
            .get_or_create(&label)
            .observe(model.load_time.as_secs_f64());
        m.memory.get_or_create(&label).set(bytes as i64);
    }

    /// Records a failed load: the backoff it starts, the metric, one journal line per
    /// attempt (requests during the backoff are refused without one); the refusal.
    fn failed(&self, e: &PackageError) -> LoadError {
        let id = self.package.manifest.id.clone();
        let wait = {
            let mut u = self.usage();
            u.state = Some(ModelState::Available);
            let attempts = u.failure.as_ref().map_or(0, |f| f.attempts) + 1;
            let wait = backoff(attempts);
            u.failure = Some(Failure {
                reason: e.to_string(),
                kind: e.kind(),
                at: SystemTime::now(),
                attempts,
                retry_at: Instant::now() + wait,
            });
            wait
        };
        crate::metrics::get()
            .load_failures
            .get_or_create(&crate::metrics::ModelReasonLabels {
                model: id.clone(),
                reason: e.kind().to_string(),
            })
            .inc();
        tracing::error!(
            caxton_event = "model_load_failed",
            caxton_model = %id,
            caxton_reason = e.kind(),
            retry_after_s = wait.as_secs(),
            "model {id} failed to load: {e}; requests get 503 and the next attempt is not before {}s from now",
            wait.as_secs()
        );
        LoadError::Failed {
            id,
            reason: e.to_string(),
            retry_after: wait,
        }
    }
}

/// Loads `package` off the async workers; with the model, what the process grew by. What the
/// load really takes is that growth (weights, tokenizer tables, the engine thread); loads are
/// serialised by admission, so little else moves it.
async fn load(
    package: StoredPackage,
    options: EngineOptions,
    batch: Arc<RwLock<BatchLimits>>,
    precision: Precision,
) -> Result<(LoadedModel, u64), PackageError> {
    tokio::task::spawn_blocking(move || {
        let before = crate::memory::process_rss().0;
        LoadedModel::load(&package, options, batch, precision).map(|m| {
            // Loading widens f16 weights through temporary copies; hand those back before
            // measuring, or they count as the model's (and stay resident).
            crate::memory::trim();
            let grown = crate::memory::process_rss()
                .0
                .zip(before)
                .map_or(0, |(a, b)| a.saturating_sub(b));
            (m, grown)
        })
    })
    .await
    .map_err(|e| PackageError::Unusable(format!("the loader panicked: {e}")))
    .and_then(|r| r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::manifest::MANIFEST_NAME;
    use crate::package::{Manifest, Store};

    /// Issue 50: a request holds its model's slot while it waits and loads; a rescan that
    /// superseded the version meanwhile pruned its store entry, and the load failed ("cannot
    /// open …/config.json"). The slot's lease keeps the entry until the slot goes.
    #[test]
    fn a_slot_keeps_its_store_entry_through_a_prune() {
        let state = tempfile::tempdir().expect("tempdir");
        let store = Store::open(state.path()).expect("store");
        let sha = "e".repeat(64);
        let dir = state.path().join("store").join(&sha);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = |name: &str| {
            format!(
                "- {{path: {name}, size: 1, sha256: \"{}\"}}\n",
                "0".repeat(64)
            )
        };
        let yaml = format!(
            "format: 1\nid: m\nversion: \"1\"\narchitecture: bert\ndimensions: 4\n\
             max_seq_length: 8\npooling: mean\nnormalize: true\nfiles:\n{}{}{}",
            file("model.safetensors"),
            file("tokenizer.json"),
            file("config.json")
        );
        std::fs::write(dir.join(MANIFEST_NAME), &yaml).expect("write");
        let package = StoredPackage {
            dir,
            manifest: Manifest::parse(yaml.as_bytes()).expect("manifest"),
            package_sha256: sha,
        };
        let slot = ModelSlot::new(
            package.clone(),
            PathBuf::from("m-1.tar.zst"),
            Source::SideLoaded,
            &Record::default(),
        );
        store.retain(&[]);
        assert!(package.is_stored(), "pruned while a slot held it");
        drop(slot);
        assert!(!package.dir.exists(), "kept after its slot went");
    }
}
