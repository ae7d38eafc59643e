//! A stored package's files, read only through the hash check against its manifest: the
//! way model bytes reach the engine, so a store damaged after verification is caught before
//! anything uses it.

use std::fs::File;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::super::error::PackageError;
use super::super::manifest::MANIFEST_NAME;
use super::{Lease, StoredPackage};

impl StoredPackage {
    /// Whether its files are unpacked in the store (a superseded version may be verified
    /// without being kept there).
    pub fn is_stored(&self) -> bool {
        self.dir.join(MANIFEST_NAME).is_file()
    }

    /// A hold on its store entry, which keeps pruning from removing the files while a load
    /// may read them; `None` when it is not in the store.
    pub fn lease(&self) -> Option<Lease> {
        Lease::take(&self.dir)
    }

    /// Bytes its files take unpacked.
    pub fn unpacked_bytes(&self) -> u64 {
        self.manifest.files.iter().map(|f| f.size).sum()
    }

    /// Re-hashes every file of the entry against the manifest, streaming.
    pub fn validate(&self) -> Result<(), PackageError> {
        for entry in &self.manifest.files {
            let path = self.dir.join(&entry.path);
            let mut file = File::open(&path).map_err(|e| PackageError::io("open", &path, e))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut size = 0u64;
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| PackageError::io("read", &path, e))?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                hasher.update(&buf[..n]);
            }
            let actual = hex::encode(hasher.finalize());
            if size != entry.size {
                return Err(PackageError::SizeMismatch {
                    entry: format!("{} (store copy)", entry.path),
                    declared: entry.size,
                    actual: size,
                });
            }
            if actual != entry.sha256 {
                return Err(PackageError::HashMismatch {
                    entry: format!("{} (store copy)", entry.path),
                    expected: entry.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Reads one file of the package, checking its size and sha256 against the manifest as
    /// it reads: the only way model bytes reach the engine, so a store damaged after
    /// verification is caught before anything uses it.
    pub fn read_verified(&self, name: &str) -> Result<Vec<u8>, PackageError> {
        self.read_verified_with(name, |r, size| {
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            r.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
            Ok(bytes)
        })
    }

    /// Streams one file of the package through `read` (given a reader and the file's
    /// declared size) while hashing it, and returns what `read` made only once the whole
    /// file's size and sha256 match the manifest: a model is built from the file as it
    /// arrives without holding its bytes, and still never from bytes that did not verify.
    /// `read`'s error is reported as the package's (unusable) only when the bytes verified.
    pub fn read_verified_with<T>(
        &self,
        name: &str,
        read: impl FnOnce(&mut dyn Read, u64) -> Result<T, String>,
    ) -> Result<T, PackageError> {
        let entry = self
            .manifest
            .file(name)
            .ok_or_else(|| PackageError::MissingEntries {
                entries: vec![name.to_string()],
            })?;
        let path = self.dir.join(&entry.path);
        let file = File::open(&path).map_err(|e| PackageError::io("open", &path, e))?;
        let mut hashing = Hashing {
            inner: io::BufReader::with_capacity(1 << 16, file).take(entry.size + 1),
            hasher: Sha256::new(),
            size: 0,
            error: None,
        };
        let made = read(&mut hashing, entry.size);
        // The rest of the file, hashed too, whether or not `read` took all of it.
        let drained = io::copy(&mut hashing, &mut io::sink());
        if let Some(e) = hashing.error.take().or(drained.err()) {
            return Err(PackageError::io("read", &path, e));
        }
        if hashing.size != entry.size {
            return Err(PackageError::SizeMismatch {
                entry: format!("{} (store copy)", entry.path),
                declared: entry.size,
                actual: hashing.size,
            });
        }
        let actual = hex::encode(hashing.hasher.finalize());
        if actual != entry.sha256 {
            return Err(PackageError::HashMismatch {
                entry: format!("{} (store copy)", entry.path),
                expected: entry.sha256.clone(),
                actual,
            });
        }
        made.map_err(PackageError::Unusable)
    }
}

/// A reader that hashes what passes through it and keeps its first I/O error (a consumer
/// that fails may drop it, but the disk's error is the cause worth reporting).
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    error: Option<io::Error>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.size += n as u64;
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                if self.error.is_none() {
                    self.error = Some(e);
                }
                Err(io::Error::new(kind, "read failed"))
            }
        }
    }
}
