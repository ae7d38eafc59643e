//! The catalogue of packages: which files the configuration points at, their verification
//! into the store (with a verdict cache keyed by file stamps, so an unchanged file is not read
//! again), and which version of each id wins.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::retention;
use super::slot::ModelSlot;
use super::{Registry, Rejection, Source};
use crate::config::Settings;
use crate::package::manifest::compare_versions;
use crate::package::signature::SignaturePolicy;
use crate::package::{PackageError, Store, StoredPackage};

/// How long systemd is told one package may take to verify or unpack (a 1 GB package read
/// twice from an SD card at 20 MB/s takes under two minutes).
const PACKAGE_TIME: std::time::Duration = std::time::Duration::from_secs(300);

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

/// Package files in the configured directories: bundled first, then side-loaded.
pub fn candidates(settings: &Settings) -> Vec<Candidate> {
    let mut c = find_packages(&settings.models.bundled_dir, Source::Bundled);
    c.extend(find_packages(
        &settings.models.package_dir,
        Source::SideLoaded,
    ));
    c
}

/// The signature policy the configuration asks for.
pub fn signature_policy(settings: &Settings) -> SignaturePolicy {
    if settings.models.require_signature {
        SignaturePolicy::require(&settings.models.trusted_keys_dir)
    } else {
        SignaturePolicy::none()
    }
}

/// The outcome of verifying a set of package files, not yet in force.
pub struct ScanResult {
    winners: BTreeMap<String, (StoredPackage, Candidate)>,
    rejected: Vec<Rejection>,
    /// Store digests to keep: the serving versions and the previous versions within `store.max_size`.
    verified: Vec<String>,
    cache: HashMap<PathBuf, (Option<Stamp>, Verdict)>,
}

impl ScanResult {
    /// Whether a verified package carries `id`.
    pub fn has(&self, id: &str) -> bool {
        self.winners.contains_key(id)
    }

    /// What the verified model `id` is for.
    pub fn kind(&self, id: &str) -> Option<crate::package::ModelKind> {
        self.winners.get(id).map(|(p, _)| p.manifest.kind)
    }

    /// Whether the verified model `id` answers requests for a model of `kind` (its own, or
    /// an embedding model's extra outputs).
    pub fn serves(&self, id: &str, kind: crate::package::ModelKind) -> bool {
        self.winners
            .get(id)
            .is_some_and(|(p, _)| p.manifest.serves(kind))
    }

    /// The kind and width of the verified model `id`.
    pub fn shape(&self, id: &str) -> Option<crate::config::fallback::Shape> {
        self.winners
            .get(id)
            .map(|(p, _)| crate::config::fallback::Shape {
                kind: p.manifest.kind.shape_kind(),
                dimensions: p.manifest.dimensions,
            })
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
pub(super) struct Stamp(Vec<Option<FileId>>);

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

pub(super) type Verdict = Result<StoredPackage, Rejection>;

/// What the last committed scan decided of each package file (by its stamp, so an unchanged
/// file is not read again), and the files still being written, which every scan leaves alone.
#[derive(Default)]
pub(super) struct Verdicts {
    cache: Mutex<HashMap<PathBuf, (Option<Stamp>, Verdict)>>,
    pending: Mutex<HashSet<PathBuf>>,
}

impl Registry {
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

    /// Verifies every candidate and picks the version of each id that serves, changing nothing
    /// in the registry's view; only what the store keeps is unpacked into it (see
    /// [`super::retention`]). A file whose stamp (size, times, inode of it and its sidecars)
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
        let pending = self
            .verdicts
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut scan = self.judge(store, candidates, &pending, policy, force);
        let mut winners = BTreeMap::new();
        let mut serving = Vec::new();
        let mut previous = Vec::new();
        for (id, versions) in std::mem::take(&mut scan.by_id) {
            let Some((pkg, c, kept)) = scan.pick(store, policy, &id, versions) else {
                continue;
            };
            previous.extend(kept);
            serving.push((pkg.package_sha256.clone(), pkg.unpacked_bytes()));
            winners.insert(id, (pkg, c));
        }
        if !pending.is_empty() {
            for (pkg, c) in self.kept_while_arriving(&winners, &pending) {
                serving.push((pkg.package_sha256.clone(), pkg.unpacked_bytes()));
                winners.insert(pkg.manifest.id.clone(), (pkg, c));
            }
        }
        let bound = store.bound_bytes();
        let kept = retention::retain(&serving, &previous, bound);
        warn_over_bound(kept.bytes, bound);
        ScanResult {
            cache: scan.next_cache,
            winners,
            rejected: scan.rejected,
            verified: kept.keep,
        }
    }

    /// Each candidate's verdict (the cached one while its stamp is unchanged, unless `force`),
    /// the verified ones grouped by id. Files still arriving (`pending`) are left out.
    fn judge(
        &self,
        store: &Store,
        candidates: &[Candidate],
        pending: &HashSet<PathBuf>,
        policy: &SignaturePolicy,
        force: bool,
    ) -> Judged {
        // Verdicts only enter the cache when this scan is committed, so a refused reload (say,
        // one that dropped require_signature) leaves no verdicts made under its policy behind.
        let mut cache = self
            .verdicts
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut judged = Judged::default();
        for c in candidates.iter().filter(|c| !pending.contains(&c.file)) {
            let stamp = Stamp::of(&c.file);
            let cached = cache
                .remove(&c.file)
                .filter(|(s, _)| !force && stamp.is_some() && *s == stamp);
            let verdict = match cached {
                Some((_, verdict)) => verdict,
                None => verify(store, c, policy),
            };
            // An I/O failure (a full disk, say) is not a property of the file: try it again at the
            // next scan instead of remembering it.
            if !matches!(&verdict, Err(r) if r.kind == "io_error") {
                judged
                    .next_cache
                    .insert(c.file.clone(), (stamp, verdict.clone()));
            }
            match verdict {
                Ok(pkg) => judged
                    .by_id
                    .entry(pkg.manifest.id.clone())
                    .or_default()
                    .push((pkg, c.clone())),
                Err(r) => judged.rejected.push(r),
            }
        }
        judged
    }

    /// The models serving now whose package file is gone while other files in its directory
    /// (`arriving`) are still being written: each keeps serving as it is until those are
    /// verified, since one may be its next version (a package manager puts the new version's
    /// file in place, then removes the old one's, and the new file settles before it is
    /// read). Without this, the model would be missing for that moment and its requests
    /// answered 404. A model whose file is still there but refused, or whose directory no file
    /// is arriving in (a reload that moved `models.package_dir`), is not kept.
    fn kept_while_arriving(
        &self,
        winners: &BTreeMap<String, (StoredPackage, Candidate)>,
        arriving: &HashSet<PathBuf>,
    ) -> Vec<(StoredPackage, Candidate)> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models
            .iter()
            .filter(|(id, slot)| {
                !winners.contains_key(*id)
                    && !slot.file.exists()
                    && arriving.iter().any(|f| f.parent() == slot.file.parent())
            })
            .map(|(id, slot)| {
                let arriving = arriving.len();
                tracing::info!(
                    caxton_event = "model_kept_while_arriving",
                    caxton_model = %id,
                    "{id}: its package {} is gone, but {arriving} package file(s) are still arriving; version {} keeps serving until they are verified",
                    slot.file.display(),
                    slot.package.manifest.version
                );
                let c = Candidate {
                    file: slot.file.clone(),
                    source: slot.source,
                };
                (slot.package.clone(), c)
            })
            .collect()
    }

    /// Makes a scan's result the registry's view, keeping loaded engines whose package is
    /// unchanged.
    pub fn commit(&self, scan: ScanResult) {
        *self
            .verdicts
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = scan.cache;
        let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
        let mut remembered = self.usage.remembered();
        let mut next = BTreeMap::new();
        for (id, (pkg, c)) in scan.winners {
            let slot = match models.remove(&id) {
                Some(slot) if slot.package.package_sha256 == pkg.package_sha256 => slot,
                // A new version keeps the model's usage: it is the same model to its clients.
                Some(old) => Arc::new(ModelSlot::new(pkg, c.file, c.source, &old.record())),
                None => Arc::new(ModelSlot::new(
                    pkg,
                    c.file,
                    c.source,
                    &remembered.remove(&id).unwrap_or_default(),
                )),
            };
            next.insert(id, slot);
        }
        // Models whose package went away: their usage waits for the package to come back.
        for (id, slot) in models.iter() {
            remembered.insert(id.clone(), slot.record());
        }
        drop(remembered);
        // Memory the governor measured for versions no longer served: not kept for ever.
        let live = next
            .values()
            .map(|s| s.package.package_sha256.as_str())
            .collect::<HashSet<_>>();
        self.governor.footprints.forget_packages_except(&live);
        *models = next;
        *self.rejected.write().unwrap_or_else(|p| p.into_inner()) = scan.rejected;
    }

    /// Records which files are still being written (see [`crate::package::settle`]).
    pub fn set_pending(&self, files: HashSet<PathBuf>) {
        *self
            .verdicts
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = files;
    }
}

/// The verdicts of one scan before versions are picked.
#[derive(Default)]
struct Judged {
    /// Verified packages by id, every version.
    by_id: BTreeMap<String, Vec<(StoredPackage, Candidate)>>,
    rejected: Vec<Rejection>,
    /// The verdict cache once this scan is committed.
    next_cache: HashMap<PathBuf, (Option<Stamp>, Verdict)>,
}

impl Judged {
    /// The version of `id` that serves: the newest that is in the store or can be unpacked
    /// into it now; with it, the newest older version already stored (the previous version
    /// the store may keep). A version that cannot be unpacked is rejected.
    fn pick(
        &mut self,
        store: &Store,
        policy: &SignaturePolicy,
        id: &str,
        mut versions: Vec<(StoredPackage, Candidate)>,
    ) -> Option<(StoredPackage, Candidate, Option<retention::Previous>)> {
        versions
            .sort_by(|(a, _), (b, _)| compare_versions(&b.manifest.version, &a.manifest.version));
        let mut versions = versions.into_iter();
        let mut winner = None;
        for (pkg, c) in versions.by_ref() {
            if pkg.is_stored() {
                winner = Some((pkg, c));
                break;
            }
            crate::systemd::extend_timeout(PACKAGE_TIME);
            match store.install(&c.file, policy) {
                Ok(stored) => {
                    winner = Some((stored, c));
                    break;
                }
                Err(e) => self.refused_unpacking(&c, &e),
            }
        }
        let (pkg, c) = winner?;
        let rest: Vec<_> = versions.collect();
        for (lose, lose_c) in &rest {
            tracing::info!(
                caxton_event = "package_superseded",
                caxton_model = %id,
                "{id}: version {} from {} wins over version {} from {}",
                pkg.manifest.version,
                c.file.display(),
                lose.manifest.version,
                lose_c.file.display()
            );
        }
        let previous = rest.iter().find(|(p, _)| p.is_stored()).map(|(f, f_c)| {
            use std::os::unix::fs::MetadataExt;
            retention::Previous {
                sha: f.package_sha256.clone(),
                bytes: f.unpacked_bytes(),
                arrived: std::fs::metadata(&f_c.file).map_or(0, |m| m.mtime()),
            }
        });
        Some((pkg, c, previous))
    }

    /// A verified version that could not be unpacked: rejected, and its cached verdict too
    /// (forgotten instead when the cause was I/O, which may pass).
    fn refused_unpacking(&mut self, c: &Candidate, e: &PackageError) {
        let r = rejection(c, e);
        match self.next_cache.get_mut(&c.file) {
            _ if r.kind == "io_error" => {
                self.next_cache.remove(&c.file);
            }
            Some(entry) => entry.1 = Err(r.clone()),
            None => {}
        }
        self.rejected.push(r);
    }
}

/// Verifies candidate `c` (without unpacking it) into its verdict.
fn verify(store: &Store, c: &Candidate, policy: &SignaturePolicy) -> Verdict {
    crate::systemd::extend_timeout(PACKAGE_TIME);
    match store.verify(&c.file, policy) {
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
        Err(e) => Err(rejection(c, &e)),
    }
}

/// Logs and counts `e`, the refusal of candidate `c`, and makes it the rejection reported.
fn rejection(c: &Candidate, e: &PackageError) -> Rejection {
    report_rejection(&c.file, e);
    Rejection {
        file: c.file.clone(),
        source: c.source,
        kind: e.kind(),
        reason: e.to_string(),
    }
}

/// Warns, once each time it starts, that the versions in use alone take more than
/// `store.max_size`: nothing more can be removed without making a model unusable.
fn warn_over_bound(bytes: u64, bound: u64) {
    static OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let over = bytes > bound;
    if over && !OVER.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            caxton_event = "store_over_bound",
            bytes,
            bound,
            "the verified store needs {} MiB for the model versions that serve, more than store.max_size ({} MiB); they are kept (no previous versions are); raise store.max_size or remove packages",
            bytes >> 20,
            bound >> 20
        );
    } else if !over {
        OVER.store(false, std::sync::atomic::Ordering::Relaxed);
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
