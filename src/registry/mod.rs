//! The registry of models: which packages were found, which verified (and which won when two
//! carry the same id), which were rejected and why, and the loaded engines. Loading is lazy
//! and single-flight: concurrent requests for a model that is loading wait for that one load;
//! how a load is admitted, queued and made room for is in [`admission`].

mod admission;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::MemorySettings;
use crate::engine::{BatchLimits, EngineOptions, LoadedModel, Precision};
use crate::memory::governor::Governor;
use crate::memory::policy::Resident;
use crate::package::manifest::compare_versions;
use crate::package::signature::SignaturePolicy;
use crate::package::{PackageError, Store, StoredPackage};

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

/// Usage numbers kept per model.
#[derive(Debug, Clone, Default)]
struct Usage {
    state: Option<ModelState>,
    last_use: Option<SystemTime>,
    /// `last_use` (or the load, if later) on the monotonic clock, for idle expiry and recency.
    last_use_at: Option<Instant>,
    /// When the load in memory finished, for `memory.min_residency`.
    loaded_at: Option<Instant>,
    use_count: u64,
    memory_bytes: Option<u64>,
    /// What the loaded model computes in.
    precision: Option<Precision>,
}

/// One verified model.
pub struct ModelSlot {
    /// The stored package.
    pub package: StoredPackage,
    /// The package file it came from.
    pub file: PathBuf,
    /// Where that file was found.
    pub source: Source,
    loaded: tokio::sync::Mutex<Option<Arc<LoadedModel>>>,
    usage: Mutex<Usage>,
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
    /// Vector length.
    pub dimensions: usize,
    /// Token limit per text.
    pub max_seq_length: usize,
    /// Bytes held in memory when loaded.
    pub memory_bytes: Option<u64>,
    /// Bytes it is expected to take when loaded (measured at its last load, else estimated).
    pub expected_bytes: u64,
    /// Last time a request used it.
    pub last_use: Option<SystemTime>,
    /// Requests served.
    pub use_count: u64,
    /// 1 (most valuable) to 5 (shed first).
    pub priority: u8,
    /// Never unloaded by idleness, budget or pressure.
    pub pinned: bool,
    /// Loaded at start and after reloads.
    pub preload: bool,
    /// Configured precision of its linear layers.
    pub precision: Precision,
    /// The precision it runs in, when loaded (f32 where the CPU cannot run bf16).
    pub loaded_precision: Option<Precision>,
}

/// Why a model could not serve.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// No verified package has this id.
    #[error("no model with id {0:?}")]
    Unknown(String),
    /// The package verified but the model would not load.
    #[error("model {id:?} failed to load: {reason}")]
    Failed {
        /// Model id.
        id: String,
        /// Why.
        reason: String,
    },
    /// Memory does not allow the load now.
    #[error("{reason}")]
    NoMemory {
        /// Model id.
        id: String,
        /// Why, with the numbers.
        reason: String,
        /// When a retry may succeed.
        retry_after: Duration,
        /// No wait would help (the model is larger than the budget, or only models of
        /// higher priority hold the memory): a change of configuration is needed.
        lasting: bool,
    },
}

/// The outcome of verifying a set of package files, not yet in force.
pub struct ScanResult {
    winners: BTreeMap<String, (StoredPackage, Candidate)>,
    rejected: Vec<Rejection>,
    /// Store digests of every verified package, winners and superseded versions alike (the
    /// latter are the fallback when a winner is removed).
    verified: Vec<String>,
    cache: HashMap<PathBuf, (Option<Stamp>, Verdict)>,
}

impl ScanResult {
    /// Whether a verified package carries `id`.
    pub fn has(&self, id: &str) -> bool {
        self.winners.contains_key(id)
    }

    /// Ids of the verified models.
    pub fn ids(&self) -> Vec<String> {
        self.winners.keys().cloned().collect()
    }

    /// Store digests of every verified package: what the store must keep.
    pub fn digests(&self) -> Vec<String> {
        self.verified.clone()
    }
}

/// What identifies a version of a package file and its sidecars without reading them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<FileId>>);

/// Size, mtime (s, ns), inode, ctime (s, ns): changes whenever the file is rewritten or replaced.
type FileId = (u64, i64, i64, u64, i64, i64);

impl Stamp {
    fn of(file: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let one = |p: &Path| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ino(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
        };
        let main = one(file)?;
        Some(Stamp(vec![
            Some(main),
            one(&crate::package::verify::sidecar_path(file)),
            one(&crate::package::signature::signature_path(file)),
        ]))
    }
}

type Verdict = Result<StoredPackage, Rejection>;

/// All models the daemon knows of.
pub struct Registry {
    options: EngineOptions,
    verdicts: Mutex<HashMap<PathBuf, (Option<Stamp>, Verdict)>>,
    /// Files still being written into the package directory: every scan leaves them alone.
    pending: Mutex<HashSet<PathBuf>>,
    batch: Arc<RwLock<BatchLimits>>,
    /// `models.precision`: each model's configured precision (f32 when absent).
    precision: RwLock<BTreeMap<String, Precision>>,
    models: RwLock<BTreeMap<String, Arc<ModelSlot>>>,
    rejected: RwLock<Vec<Rejection>>,
    /// `models.default`: among models of its priority it is shed last.
    default: RwLock<String>,
    /// Woken whenever a model finishes loading, so requests queued for it stop waiting.
    loaded_event: tokio::sync::Notify,
    /// The memory policy's state: budget, rules, shedding.
    pub governor: Arc<Governor>,
}

/// A package found on disk.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The file.
    pub file: PathBuf,
    /// Where it was found.
    pub source: Source,
}

/// Lists `*.tar.zst` files in `dir` in name order; a missing directory has none.
pub fn find_packages(dir: &Path, source: Source) -> Vec<Candidate> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(".tar.zst"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| Candidate { file, source })
        .collect()
}

impl Registry {
    /// An empty registry whose models will run with `options` under `memory`'s rules.
    pub fn new(options: EngineOptions, memory: &MemorySettings) -> Registry {
        Registry {
            governor: Arc::new(Governor::new(memory)),
            batch: Arc::new(RwLock::new(options.batch)),
            precision: RwLock::new(BTreeMap::new()),
            options,
            models: RwLock::new(BTreeMap::new()),
            rejected: RwLock::new(Vec::new()),
            default: RwLock::new(String::new()),
            loaded_event: tokio::sync::Notify::new(),
            verdicts: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashSet::new()),
        }
    }

    /// Verifies every candidate into `store` and replaces the registry's view with the result.
    /// Blocking (hashing, decompression): call from a blocking context.
    pub fn scan(
        &self,
        store: &Store,
        candidates: &[Candidate],
        policy: &SignaturePolicy,
        force: bool,
    ) {
        let scan = self.verify_all(store, candidates, policy, force);
        let keep = scan.digests();
        self.commit(scan);
        store.retain(&keep);
    }

    /// Verifies every candidate into `store` and picks the winner of each id, changing nothing
    /// in the registry's view. A file whose stamp (size, times, inode of it and its sidecars)
    /// is unchanged since the last scan keeps its verdict without being read again, so a
    /// rejection is logged once, not on every rescan; `force` re-verifies everything (start-up,
    /// reload, periodic re-validation). Blocking.
    pub fn verify_all(
        &self,
        store: &Store,
        candidates: &[Candidate],
        policy: &SignaturePolicy,
        force: bool,
    ) -> ScanResult {
        let mut winners: BTreeMap<String, (StoredPackage, Candidate)> = BTreeMap::new();
        let mut rejected = Vec::new();
        let mut verified = Vec::new();
        // Verdicts only enter the cache when this scan is committed, so a refused reload (say,
        // one that dropped require_signature) leaves no verdicts made under its policy behind.
        let mut cache = self
            .verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut next_cache = HashMap::new();
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for c in candidates.iter().filter(|c| !pending.contains(&c.file)) {
            let stamp = Stamp::of(&c.file);
            let cached = cache
                .remove(&c.file)
                .filter(|(s, _)| !force && stamp.is_some() && *s == stamp);
            let verdict = match cached {
                Some((_, verdict)) => verdict,
                None => match store.install(&c.file, policy) {
                    Ok(pkg) => {
                        tracing::info!(
                            caxton_event = "package_verified",
                            caxton_model = %pkg.manifest.id,
                            caxton_file = %c.file.display(),
                            "package {} verified: {} version {}",
                            c.file.display(),
                            pkg.manifest.id,
                            pkg.manifest.version
                        );
                        Ok(pkg)
                    }
                    Err(e) => {
                        report_rejection(&c.file, &e);
                        Err(Rejection {
                            file: c.file.clone(),
                            source: c.source,
                            kind: e.kind(),
                            reason: e.to_string(),
                        })
                    }
                },
            };
            // An I/O failure (a full disk, say) is not a property of the file: try it again at the
            // next scan instead of remembering it.
            if !matches!(&verdict, Err(r) if r.kind == "io_error") {
                next_cache.insert(c.file.clone(), (stamp, verdict.clone()));
            }
            let pkg = match verdict {
                Ok(pkg) => {
                    verified.push(pkg.package_sha256.clone());
                    pkg
                }
                Err(r) => {
                    rejected.push(r);
                    continue;
                }
            };
            let id = pkg.manifest.id.clone();
            let replaces = match winners.get(&id) {
                None => true,
                Some((other, other_c)) => {
                    let newer =
                        compare_versions(&pkg.manifest.version, &other.manifest.version).is_gt();
                    let ((win, win_c), (lose, lose_c)) = if newer {
                        ((&pkg, c), (other, other_c))
                    } else {
                        ((other, other_c), (&pkg, c))
                    };
                    tracing::info!(
                        caxton_event = "package_superseded",
                        caxton_model = %id,
                        "{id}: version {} from {} wins over version {} from {}",
                        win.manifest.version,
                        win_c.file.display(),
                        lose.manifest.version,
                        lose_c.file.display()
                    );
                    newer
                }
            };
            if replaces {
                winners.insert(id, (pkg, c.clone()));
            }
        }
        drop(cache);
        ScanResult {
            cache: next_cache,
            winners,
            rejected,
            verified,
        }
    }

    /// Makes a scan's result the registry's view, keeping loaded engines whose package is
    /// unchanged.
    pub fn commit(&self, scan: ScanResult) {
        *self.verdicts.lock().unwrap_or_else(|p| p.into_inner()) = scan.cache;
        let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
        let mut next = BTreeMap::new();
        for (id, (pkg, c)) in scan.winners {
            let slot = match models.remove(&id) {
                Some(slot) if slot.package.package_sha256 == pkg.package_sha256 => slot,
                _ => Arc::new(ModelSlot {
                    package: pkg,
                    file: c.file,
                    source: c.source,
                    loaded: tokio::sync::Mutex::new(None),
                    usage: Mutex::new(Usage::default()),
                }),
            };
            next.insert(id, slot);
        }
        *models = next;
        *self.rejected.write().unwrap_or_else(|p| p.into_inner()) = scan.rejected;
    }

    /// Records which files are still being written (see [`crate::package::settle`]).
    pub fn set_pending(&self, files: HashSet<PathBuf>) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = files;
    }

    /// Changes forward-pass limits for every model, loaded or not.
    pub fn set_batch_limits(&self, limits: BatchLimits) {
        *self.batch.write().unwrap_or_else(|p| p.into_inner()) = limits;
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
        *self.precision.write().unwrap_or_else(|p| p.into_inner()) = precision;
        stale
    }

    /// Sets `models.default`, the model shed last among those of its priority.
    pub fn set_default(&self, id: &str) {
        *self.default.write().unwrap_or_else(|p| p.into_inner()) = id.to_string();
    }

    /// The configured precision of `id`.
    pub fn precision_of(&self, id: &str) -> Precision {
        self.precision
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
            .unwrap_or_default()
    }

    /// The slot for `id`, if a verified package carries it.
    pub fn get(&self, id: &str) -> Option<Arc<ModelSlot>> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
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

    /// Unloads `id` from memory (the package stays). Requests already holding the model finish
    /// first: the engine thread stops, and its memory is trimmed, when the last one is done.
    /// Returns the bytes the model held, or `None` if it was not loaded.
    pub async fn unload(&self, id: &str, reason: &str) -> Result<Option<u64>, LoadError> {
        Ok(self.unload_model(id, reason).await?.map(|(bytes, _)| bytes))
    }

    /// [`Registry::unload`], also returning the signal that turns `true` once the memory is
    /// really freed.
    async fn unload_model(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<Option<(u64, tokio::sync::watch::Receiver<bool>)>, LoadError> {
        let slot = self
            .get(id)
            .ok_or_else(|| LoadError::Unknown(id.to_string()))?;
        let model = slot.loaded.lock().await.take();
        let Some(model) = model else {
            return Ok(None);
        };
        let freed = model.freed();
        let bytes = {
            let mut u = slot.usage();
            let bytes = u.memory_bytes.unwrap_or(model.weight_bytes);
            // Until the engine thread has freed it, the model's memory is still held:
            // admission counts it (from before it stops counting as loaded) and waits for it
            // instead of loading into memory that is not back.
            self.governor.releasing(id, bytes, freed.clone());
            u.state = Some(ModelState::Available);
            u.precision = None;
            u.loaded_at = None;
            u.memory_bytes = None;
            bytes
        };
        drop(model);
        let m = crate::metrics::get();
        let label = crate::metrics::Metrics::model(id);
        m.memory.get_or_create(&label).set(0);
        m.unloads.get_or_create(&label).inc();
        tracing::info!(
            caxton_event = "model_unloaded",
            caxton_model = %id,
            caxton_reason = reason,
            memory_bytes = bytes,
            "model {id} unloaded ({reason}); {} MiB held until its in-flight requests finish",
            bytes >> 20
        );
        Ok(Some((bytes, freed)))
    }

    /// Bytes held by the loaded models.
    pub fn model_memory(&self) -> u64 {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models.values().filter_map(|s| s.usage().memory_bytes).sum()
    }

    /// The loaded models as the memory policy sees them.
    pub fn residents(&self) -> Vec<Resident> {
        let default = self
            .default
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models
            .values()
            .filter_map(|slot| {
                let u = slot.usage().clone();
                let bytes = u.memory_bytes?;
                let id = &slot.package.manifest.id;
                let rules = self.governor.rules(id);
                Some(Resident {
                    id: id.clone(),
                    priority: rules.priority,
                    pinned: rules.pinned,
                    default: *id == *default,
                    loaded_at: u
                        .loaded_at
                        .map_or(Duration::ZERO, |t| self.governor.clock(t)),
                    last_use: u
                        .last_use_at
                        .map_or(Duration::ZERO, |t| self.governor.clock(t)),
                    bytes,
                })
            })
            .collect()
    }

    /// The models in memory (a model being loaded is not among them yet).
    pub fn loaded_models(&self) -> Vec<Arc<LoadedModel>> {
        let slots: Vec<Arc<ModelSlot>> = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter_map(|s| s.loaded.try_lock().ok().and_then(|m| m.clone()))
            .collect()
    }

    /// Ids of the models in memory.
    pub fn loaded_ids(&self) -> Vec<String> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models
            .iter()
            .filter(|(_, s)| s.usage().state == Some(ModelState::Loaded))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

impl ModelSlot {
    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn info(&self, governor: &Governor, precision: Precision) -> ModelInfo {
        let u = self.usage().clone();
        let m = &self.package.manifest;
        let rules = governor.rules(&m.id);
        ModelInfo {
            expected_bytes: u
                .memory_bytes
                .unwrap_or_else(|| governor.footprint(&self.package)),
            priority: rules.priority,
            pinned: rules.pinned,
            preload: rules.preload,
            precision,
            loaded_precision: u.precision,
            id: m.id.clone(),
            version: m.version.clone(),
            source: self.source,
            state: u.state.unwrap_or(ModelState::Available),
            file: self.file.clone(),
            dimensions: m.dimensions,
            max_seq_length: m.max_seq_length,
            memory_bytes: u.memory_bytes,
            last_use: u.last_use,
            use_count: u.use_count,
        }
    }

    /// Corrects what the loaded model is counted as holding (see [`Governor::remember`]).
    fn set_memory(&self, bytes: u64) {
        let mut u = self.usage();
        if u.memory_bytes.is_some() {
            u.memory_bytes = Some(bytes);
            crate::metrics::get()
                .memory
                .get_or_create(&crate::metrics::Metrics::model(&self.package.manifest.id))
                .set(bytes as i64);
        }
    }

    /// Records one request served.
    pub fn touch(&self) {
        let mut u = self.usage();
        u.last_use = Some(SystemTime::now());
        u.last_use_at = Some(Instant::now());
        u.use_count += 1;
    }

    async fn acquire(
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
        let package = self.package.clone();
        let id = package.manifest.id.clone();
        // What the load really takes is the growth of the process (weights, tokenizer tables,
        // the engine thread); loads are serialised by admission, so little else moves it.
        let result = tokio::task::spawn_blocking(move || {
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
        .and_then(|r| r);
        match result {
            Ok((model, grown)) => {
                let model = Arc::new(model);
                let bytes = grown.max(model.weight_bytes);
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
                    "model {id} loaded in {:.0?} ({} MiB in memory, {} MiB of it {} weights)",
                    model.load_time,
                    bytes >> 20,
                    model.weight_bytes >> 20,
                    model.precision
                );
                {
                    let mut u = self.usage();
                    u.state = Some(ModelState::Loaded);
                    u.precision = Some(model.precision);
                    u.memory_bytes = Some(bytes);
                    u.last_use_at = Some(Instant::now());
                    u.loaded_at = Some(Instant::now());
                }
                let m = crate::metrics::get();
                let label = crate::metrics::Metrics::model(&id);
                m.load_time
                    .get_or_create(&label)
                    .set(model.load_time.as_secs_f64());
                m.memory.get_or_create(&label).set(bytes as i64);
                *loaded = Some(model.clone());
                Ok(model)
            }
            Err(e) => {
                self.usage().state = Some(ModelState::Available);
                tracing::error!(
                    caxton_event = "model_load_failed",
                    caxton_model = %id,
                    caxton_reason = e.kind(),
                    "model {id} failed to load: {e}"
                );
                Err(LoadError::Failed {
                    id,
                    reason: e.to_string(),
                })
            }
        }
    }
}

fn report_rejection(file: &Path, e: &PackageError) {
    crate::metrics::get()
        .validation_failures
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: e.kind().to_string(),
        })
        .inc();
    tracing::error!(
        caxton_event = "package_rejected",
        caxton_file = %file.display(),
        caxton_reason = e.kind(),
        "package {} rejected: {e}. It is left untouched and will not be loaded; replace it with a good package.",
        file.display()
    );
}
