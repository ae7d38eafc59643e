//! The verified store under `state_dir/store`: packages unpacked after verification, one
//! directory per package keyed by the package's sha256, made visible only by an atomic rename.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::error::PackageError;
use super::manifest::{MANIFEST_NAME, Manifest};
use super::signature::SignaturePolicy;
use super::verify::{DiscardSink, EntrySink, check_sidecar, verify_reader};
use crate::config::StoreBound;

/// What the store holds, as `GET /api/memory/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StoreUsage {
    /// Bytes on disk of its entries.
    pub bytes: u64,
    /// Its entries (one per stored package version).
    pub entries: u64,
    /// `store.max_size` in bytes.
    pub max_bytes: u64,
}

/// Prefix of staging directories; anything with it is a leftover of an interrupted install.
const STAGING_PREFIX: &str = ".staging-";

/// The daemon's store of verified, unpacked packages.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// `store.max_size`.
    bound: StoreBound,
}

/// A package that verified and sits unpacked in the store.
#[derive(Debug, Clone)]
pub struct StoredPackage {
    /// The store directory holding the package's files.
    pub dir: PathBuf,
    /// The package's manifest.
    pub manifest: Manifest,
    /// sha256 of the package file (the directory's name).
    pub package_sha256: String,
}

impl Store {
    /// Opens (creating if needed) the store under `state_dir` and removes leftovers of
    /// installs that were interrupted.
    pub fn open(state_dir: &Path) -> Result<Store, PackageError> {
        let root = state_dir.join("store");
        fs::create_dir_all(&root).map_err(|e| PackageError::io("create", &root, e))?;
        let entries = fs::read_dir(&root).map_err(|e| PackageError::io("list", &root, e))?;
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                let path = entry.path();
                if let Err(e) = fs::remove_dir_all(&path) {
                    tracing::warn!(
                        "cannot remove leftover staging directory {}: {e}",
                        path.display()
                    );
                }
            }
        }
        Ok(Store {
            root,
            bound: StoreBound::Auto,
        })
    }

    /// The size of the store under `state_dir` and its bound (`store.max_size`), read now.
    /// Nothing is created or removed, so a status page may ask while a scan unpacks.
    pub fn usage(state_dir: &Path, bound: StoreBound) -> StoreUsage {
        let store = Store {
            root: state_dir.join("store"),
            bound,
        };
        let (bytes, entries) = store.measure();
        StoreUsage {
            bytes,
            entries,
            max_bytes: store.bound_bytes(),
        }
    }

    /// The same store, kept within `bound` (`store.max_size`) by the scans that use it.
    pub fn bounded(self, bound: StoreBound) -> Store {
        Store { bound, ..self }
    }

    /// `store.max_size` in bytes: `auto` is a share of the filesystem holding the store.
    pub fn bound_bytes(&self) -> u64 {
        // fsblkcnt_t and c_ulong are 32-bit on some targets (armv7 edge boards).
        #[allow(clippy::useless_conversion)]
        let filesystem = nix::sys::statvfs::statvfs(&self.root).map_or(0, |s| {
            u64::from(s.blocks()).saturating_mul(u64::from(s.fragment_size()))
        });
        let bytes = self.bound.bytes(filesystem);
        crate::metrics::get().store_bound.set(bytes as i64);
        bytes
    }

    /// Verifies `package` (sidecar and signature included) without unpacking it: a version
    /// the store does not keep (superseded) is still checked and reported. When the store
    /// already holds it, the stored entry is checked (and rebuilt if damaged) as by
    /// [`Store::install`]. [`StoredPackage::is_stored`] tells which.
    pub fn verify(
        &self,
        package: &Path,
        policy: &SignaturePolicy,
    ) -> Result<StoredPackage, PackageError> {
        self.admit(package, policy, false)
    }

    /// Verifies `package` (sidecar and signature included) and makes it available in the store.
    /// A package already stored under the same digest is not unpacked again, but its entry is
    /// re-hashed against its manifest and rebuilt from the package if it was damaged.
    ///
    /// The file is opened once and every pass reads that one descriptor: the digest and the
    /// signature are computed in the same pass, and the unpacking pass must reproduce the
    /// digest, so swapping or rewriting the file meanwhile cannot slip other bytes through.
    pub fn install(
        &self,
        package: &Path,
        policy: &SignaturePolicy,
    ) -> Result<StoredPackage, PackageError> {
        self.admit(package, policy, true)
    }

    fn admit(
        &self,
        package: &Path,
        policy: &SignaturePolicy,
        unpack: bool,
    ) -> Result<StoredPackage, PackageError> {
        let mut file = super::open_regular(package)?;
        let size = file
            .metadata()
            .map_err(|e| PackageError::io("stat", package, e))?
            .len();
        if size > super::MAX_PACKAGE_BYTES {
            return Err(PackageError::Malformed(format!(
                "{} is {size} bytes, more than the {} a package may have",
                package.display(),
                super::MAX_PACKAGE_BYTES
            )));
        }
        check_magic(&mut file, package)?;
        let mut hasher = Sha256::new();
        policy.stream_check(package, &mut file, |chunk| hasher.update(chunk))?;
        let sha = hex::encode(hasher.finalize());
        check_sidecar(package, &sha)?;
        let dir = self.root.join(&sha);
        if dir.is_dir() {
            match self
                .open_entry(&dir, &sha)
                .and_then(|stored| stored.validate().map(|()| stored))
            {
                Ok(stored) => return Ok(stored),
                Err(e) => {
                    tracing::warn!(
                        caxton_event = "store_entry_corrupt",
                        caxton_file = %package.display(),
                        caxton_reason = e.kind(),
                        "store entry {} is damaged ({e}); rebuilding it from {}",
                        dir.display(),
                        package.display()
                    );
                    self.remove_entry(&dir)
                        .map_err(|e| PackageError::io("remove", &dir, e))?;
                }
            }
        }

        if !unpack {
            file.seek(SeekFrom::Start(0))
                .map_err(|e| PackageError::io("rewind", package, e))?;
            let verified = verify_reader(file, size, &mut DiscardSink)?;
            if verified.package_sha256 != sha {
                return Err(PackageError::Malformed(
                    "the file changed while it was being verified".into(),
                ));
            }
            return Ok(StoredPackage {
                dir,
                manifest: verified.manifest,
                package_sha256: sha,
            });
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let staging = self.root.join(format!(
            "{STAGING_PREFIX}{sha}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&staging).map_err(|e| PackageError::io("create", &staging, e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| PackageError::io("rewind", package, e))?;
        let result = self.unpack_into(file, size, &sha, &staging, &dir);
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    fn unpack_into(
        &self,
        file: File,
        size: u64,
        sha: &str,
        staging: &Path,
        dir: &Path,
    ) -> Result<StoredPackage, PackageError> {
        let mut sink = DirSink {
            root: staging.to_path_buf(),
            dirs: Vec::new(),
        };
        let verified = verify_reader(file, size, &mut sink)?;
        // The directories the entries made (a sentence-transformers `2_Dense/`), deepest
        // first: their names must be on disk before the entry is renamed into place.
        sink.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &sink.dirs {
            sync_dir(d)?;
        }
        if verified.package_sha256 != sha {
            return Err(PackageError::Malformed(
                "the file changed while it was being verified".into(),
            ));
        }
        let manifest_path = staging.join(MANIFEST_NAME);
        write_synced(&manifest_path, verified.manifest.to_yaml().as_bytes())?;
        sync_dir(staging)?;
        match fs::rename(staging, dir) {
            Ok(()) => {}
            // Another install of the same bytes won the race; its copy is as good as ours.
            Err(_) if dir.is_dir() => {
                let _ = fs::remove_dir_all(staging);
            }
            Err(e) => return Err(PackageError::io("rename into", dir, e)),
        }
        sync_dir(&self.root)?;
        Ok(StoredPackage {
            dir: dir.to_path_buf(),
            manifest: verified.manifest,
            package_sha256: sha.to_string(),
        })
    }

    /// Removes the store entry `dir` so that a power cut leaves it whole or gone, never half
    /// deleted (see [`hide_entry`]).
    fn remove_entry(&self, dir: &Path) -> io::Result<()> {
        hide_entry(dir).and_then(|gone| finish_removal(dir, &gone))
    }

    /// Removes store entries whose digest is not in `keep`: packages removed, versions
    /// superseded beyond the one previous version kept, previous versions past
    /// `store.max_size`. Loaded models keep working: they hold their weights in memory, not
    /// the files. An entry a model slot leases (see [`lease`]) stays until the slot lets go.
    pub fn retain(&self, keep: &[String]) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGING_PREFIX)
                || name.len() != 64
                || !name.bytes().all(|b| b.is_ascii_hexdigit())
            {
                continue;
            }
            let path = entry.path();
            if keep.contains(&name) {
                lease::keep(&path);
                continue;
            }
            let what = self
                .open_entry(&path, &name)
                .map(|p| format!("{} version {}", p.manifest.id, p.manifest.version))
                .unwrap_or_else(|_| "an unreadable entry".into());
            match lease::prune(&path) {
                Pruned::Leased => tracing::info!(
                    caxton_event = "store_entry_held",
                    caxton_file = %path.display(),
                    "store entry {name} ({what}) is no longer kept, but a model is loading from it: removed once it is done"
                ),
                Pruned::Hidden(hidden) => {
                    match hidden.and_then(|gone| finish_removal(&path, &gone)) {
                        Err(e) => tracing::warn!(
                            "cannot remove unused store entry {} ({what}): {e}",
                            path.display()
                        ),
                        Ok(()) => tracing::info!(
                            caxton_event = "store_entry_removed",
                            caxton_file = %path.display(),
                            "store entry {name} ({what}) removed: no package version the daemon keeps refers to it (package removed, superseded beyond the one previous version kept, or a previous version past store.max_size)"
                        ),
                    }
                }
            }
        }
        self.measure();
    }

    /// Bytes on disk and number of the store's entries (staging directories left out); also
    /// published as `caxton_model_cache_size_bytes` and `caxton_model_cache_entries`.
    pub fn measure(&self) -> (u64, u64) {
        fn bytes_under(dir: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => bytes_under(&e.path()),
                    Ok(_) => e.metadata().map_or(0, |m| m.len()),
                    Err(_) => 0,
                })
                .sum()
        }
        let (mut bytes, mut entries) = (0, 0);
        if let Ok(list) = fs::read_dir(&self.root) {
            for entry in list.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bytes += bytes_under(&entry.path());
                    entries += 1;
                }
            }
        }
        let m = crate::metrics::get();
        m.store_bytes.set(bytes as i64);
        m.store_entries.set(entries as i64);
        (bytes, entries)
    }

    fn open_entry(&self, dir: &Path, sha: &str) -> Result<StoredPackage, PackageError> {
        let path = dir.join(MANIFEST_NAME);
        let bytes = fs::read(&path).map_err(|e| PackageError::io("read", &path, e))?;
        let manifest =
            Manifest::parse(&bytes).map_err(|e| PackageError::ManifestInvalid(e.to_string()))?;
        Ok(StoredPackage {
            dir: dir.to_path_buf(),
            manifest,
            package_sha256: sha.to_string(),
        })
    }
}

/// sha256 of a whole file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, PackageError> {
    let mut file = File::open(path).map_err(|e| PackageError::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| PackageError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Space left free on the store's filesystem after an unpack.
const FREE_SPACE_MARGIN: u64 = 64 << 20;

/// Refuses a file that is not zstd before hashing all of it.
fn check_magic(file: &mut File, package: &Path) -> Result<(), PackageError> {
    let mut head = [0u8; 4];
    let n = file
        .read(&mut head)
        .map_err(|e| PackageError::io("read", package, e))?;
    if head[..n] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(PackageError::NotZstd(
            "the file does not start with the zstd magic number".into(),
        ));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| PackageError::io("rewind", package, e))?;
    Ok(())
}

/// Writes verified entries into a staging directory, each file fsynced once complete.
struct DirSink {
    root: PathBuf,
    /// Directories made under `root` for the entries, to fsync before the rename.
    dirs: Vec<PathBuf>,
}

impl EntrySink for DirSink {
    type Writer = BufWriter<File>;

    fn start(&mut self, path: &str, size: u64) -> io::Result<BufWriter<File>> {
        // Refuse before writing rather than fill the disk the rest of the device needs.
        let stat = nix::sys::statvfs::statvfs(&self.root).map_err(io::Error::from)?;
        // fsblkcnt_t and c_ulong are 32-bit on some targets (armv7 edge boards).
        #[allow(clippy::useless_conversion)]
        let free =
            u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()));
        if free < size.saturating_add(FREE_SPACE_MARGIN) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "not enough disk space to unpack {path}: it needs {size} bytes and {} has {free} bytes free, of which {FREE_SPACE_MARGIN} are kept spare for the rest of the device; free some space (or lower store.max_size), the package is tried again at the next scan",
                    self.root.parent().unwrap_or(&self.root).display()
                ),
            ));
        }
        let target = self.root.join(path);
        if let Some(parent) = target.parent()
            && !parent.is_dir()
        {
            fs::create_dir_all(parent)?;
            let mut d = parent;
            while d != self.root && d.starts_with(&self.root) {
                if !self.dirs.iter().any(|known| known == d) {
                    self.dirs.push(d.to_path_buf());
                }
                match d.parent() {
                    Some(up) => d = up,
                    None => break,
                }
            }
        }
        Ok(BufWriter::with_capacity(
            1 << 16,
            File::options().write(true).create_new(true).open(target)?,
        ))
    }

    fn location(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn finish(&mut self, _path: &str, writer: BufWriter<File>) -> io::Result<()> {
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    let mut f = File::create(path).map_err(|e| PackageError::io("create", path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| PackageError::io("write", path, e))
}

/// The first half of removing the store entry `dir`: renamed to a staging name (the next
/// [`Store::open`] removes leftovers), so a power cut leaves it whole or gone, never half
/// deleted. Returns that name, for [`finish_removal`].
fn hide_entry(dir: &Path) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let root = dir.parent().unwrap_or(Path::new("."));
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let gone = root.join(format!(
        "{STAGING_PREFIX}{}-gone-{}-{}",
        name.unwrap_or_default(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    fs::rename(dir, &gone)?;
    Ok(gone)
}

/// The second half: the store directory of `dir` fsynced (the rename is durable), then the
/// hidden copy `gone` deleted (a scan's [`Store::open`] may have done it already).
fn finish_removal(dir: &Path, gone: &Path) -> io::Result<()> {
    File::open(dir.parent().unwrap_or(Path::new(".")))?.sync_all()?;
    match fs::remove_dir_all(gone) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), PackageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PackageError::io("sync", dir, e))
}

mod entry;
mod lease;

pub use lease::Lease;
use lease::Pruned;

#[cfg(test)]
mod tests;
