//! Minisign signatures: trusted keys from `models.trusted_keys_dir` and the streaming check of
//! a package against its detached `NAME.tar.zst.minisig`.

use std::io::Read;
use std::path::{Path, PathBuf};

use minisign_verify::{PublicKey, Signature};

use super::error::PackageError;

/// Whether and against what packages must be signed.
#[derive(Clone, Default)]
pub struct SignaturePolicy {
    /// `None`: signatures are not required. `Some(Ok(keys))`: required, checked against `keys`.
    /// `Some(Err(reason))`: required, but the keys could not be loaded, so every package is
    /// refused with that reason (a broken key file is never silently skipped).
    pub required: Option<Result<TrustedKeys, String>>,
}

impl SignaturePolicy {
    /// No signatures required.
    pub fn none() -> Self {
        SignaturePolicy { required: None }
    }

    /// Signatures required, with the keys in `dir`.
    pub fn require(dir: &Path) -> Self {
        SignaturePolicy {
            required: Some(TrustedKeys::load(dir)),
        }
    }

    /// Checks `package` under this policy, reading it from its path.
    pub fn check(&self, package: &Path) -> Result<(), PackageError> {
        let mut file = super::open_regular(package)?;
        self.stream_check(package, &mut file, |_| {})
    }

    /// Reads `reader` (the bytes of `package`) to the end once, handing every chunk to
    /// `on_chunk` and, when signatures are required, to a minisign verifier per trusted key:
    /// one pass serves both the digest and the signature, so they are of the same bytes.
    pub fn stream_check(
        &self,
        package: &Path,
        reader: &mut dyn Read,
        mut on_chunk: impl FnMut(&[u8]),
    ) -> Result<(), PackageError> {
        let keys = match &self.required {
            None => return read_all(package, reader, &mut on_chunk),
            Some(Err(reason)) => {
                return Err(PackageError::Signature {
                    kind: "trusted_key_error",
                    reason: reason.clone(),
                });
            }
            Some(Ok(keys)) => keys,
        };
        let signature = read_signature(package)?;
        let mut verifiers = Vec::new();
        let mut last = String::new();
        for (path, key) in &keys.keys {
            match key.verify_stream(&signature) {
                Ok(v) => verifiers.push((path, v)),
                Err(e) => last = format!("{}: {e}", path.display()),
            }
        }
        read_all(package, reader, &mut |chunk: &[u8]| {
            on_chunk(chunk);
            for (_, v) in verifiers.iter_mut() {
                v.update(chunk);
            }
        })?;
        for (path, mut v) in verifiers {
            match v.finalize() {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{}: {e}", path.display()),
            }
        }
        Err(PackageError::Signature {
            kind: "signature_untrusted",
            reason: format!(
                "{} does not verify against any trusted key in {} (last: {last})",
                signature_path(package).display(),
                keys.dir.display()
            ),
        })
    }
}

/// The public keys packages may be signed with.
#[derive(Clone)]
pub struct TrustedKeys {
    keys: Vec<(PathBuf, PublicKey)>,
    dir: PathBuf,
}

impl TrustedKeys {
    /// Loads every `*.pub` in `dir`; any unreadable or invalid one is an error naming it.
    pub fn load(dir: &Path) -> Result<TrustedKeys, String> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read models.trusted_keys_dir {}: {e}", dir.display()))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        files.sort();
        let mut keys = Vec::new();
        for f in files {
            keys.push((f.clone(), Self::load_one(&f)?));
        }
        if keys.is_empty() {
            return Err(format!(
                "models.require_signature is true but {} holds no *.pub key",
                dir.display()
            ));
        }
        Ok(TrustedKeys {
            keys,
            dir: dir.to_path_buf(),
        })
    }

    /// Loads one minisign public key file.
    pub fn load_one(path: &Path) -> Result<PublicKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read trusted key {}: {e}", path.display()))?;
        // A .pub file is an untrusted comment line and the base64 key; a bare key line works too.
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .unwrap_or_default();
        PublicKey::from_base64(line).map_err(|e| {
            format!(
                "trusted key {} is not a minisign public key: {e}",
                path.display()
            )
        })
    }

    /// Keys from explicit files (`caxton verify --key`).
    pub fn from_files(files: &[PathBuf]) -> Result<TrustedKeys, String> {
        let keys = files
            .iter()
            .map(|f| Self::load_one(f).map(|k| (f.clone(), k)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedKeys {
            keys,
            dir: files
                .first()
                .and_then(|f| f.parent())
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        })
    }
}

fn read_all(
    package: &Path,
    reader: &mut dyn Read,
    on_chunk: &mut dyn FnMut(&[u8]),
) -> Result<(), PackageError> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| PackageError::io("read", package, e))?;
        if n == 0 {
            return Ok(());
        }
        on_chunk(&buf[..n]);
    }
}

/// Reads and decodes `PACKAGE.minisig`: a regular file of at most 4 KiB.
fn read_signature(package: &Path) -> Result<Signature, PackageError> {
    let sig_path = signature_path(package);
    let file = match super::open_regular(&sig_path) {
        Ok(f) => f,
        Err(PackageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(PackageError::Signature {
                kind: "signature_missing",
                reason: format!(
                    "unsigned: {} is missing and models.require_signature is true",
                    sig_path.display()
                ),
            });
        }
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(|e| PackageError::io("read", &sig_path, e))?;
    Signature::decode(&text).map_err(|e| PackageError::Signature {
        kind: "signature_invalid",
        reason: format!("{} is not a minisign signature: {e}", sig_path.display()),
    })
}

/// `FILE.tar.zst.minisig` for `FILE.tar.zst`.
pub fn signature_path(package: &Path) -> PathBuf {
    let mut s = package.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}
