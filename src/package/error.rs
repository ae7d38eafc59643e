//! Why a package was refused: one variant per rule, each with a stable `kind` string that the
//! API, the journal (`CAXTON_REASON`) and metrics share.

use std::io;
use std::path::{Path, PathBuf};

/// A package that cannot be used, and why. Messages name the entry or file and the reason;
/// the package file itself is named by whoever reports the error.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Reading or writing a file failed (permissions, disk full, ...).
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not a zstd stream.
    #[error("not a zstd-compressed package: {0}")]
    NotZstd(String),
    /// The zstd or tar stream is damaged.
    #[error("corrupt package: {0}")]
    Corrupt(String),
    /// The stream ends early.
    #[error("truncated package: {0}")]
    Truncated(String),
    /// Decompression produced more than the manifest declares (a zstd bomb or a lying manifest).
    #[error("decompresses past the sizes its manifest declares; stopped there")]
    DecompressionBound,
    /// Structurally wrong in some other way.
    #[error("malformed package: {0}")]
    Malformed(String),
    /// The archive holds no manifest at all.
    #[error("manifest.yaml is missing")]
    ManifestMissing,
    /// Something other than the manifest came first.
    #[error("the first entry must be manifest.yaml, found {found:?}")]
    ManifestNotFirst {
        /// Name of the first entry.
        found: String,
    },
    /// The manifest is unreadable or breaks the schema.
    #[error("invalid manifest: {0}")]
    ManifestInvalid(String),
    /// An entry is a link, a device, a directory, has an unsafe path or a non-UTF-8 name.
    #[error("unsafe entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// The entry name as stored.
        entry: String,
        /// What makes it unsafe.
        reason: String,
    },
    /// The same name occurs twice.
    #[error("duplicate entry {entry:?}")]
    DuplicateEntry {
        /// The repeated name.
        entry: String,
    },
    /// An entry the manifest does not list.
    #[error("entry {entry:?} is not listed in the manifest")]
    ExtraEntry {
        /// The unlisted name.
        entry: String,
    },
    /// Listed entries that are absent.
    #[error("listed in the manifest but missing from the package: {}", entries.join(", "))]
    MissingEntries {
        /// The missing names.
        entries: Vec<String>,
    },
    /// An entry's size differs from the manifest.
    #[error(
        "size mismatch for {entry:?}: the manifest says {declared} bytes, the package has {actual}"
    )]
    SizeMismatch {
        /// The entry.
        entry: String,
        /// Size in the manifest.
        declared: u64,
        /// Size in the tar header.
        actual: u64,
    },
    /// An entry's digest differs from the manifest.
    #[error(
        "sha256 mismatch for {entry:?}: the manifest says {expected}, the content has {actual}"
    )]
    HashMismatch {
        /// The entry.
        entry: String,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the bytes.
        actual: String,
    },
    /// The sidecar `.sha256` is unreadable, malformed or does not match.
    #[error("sidecar checksum: {0}")]
    Sidecar(String),
    /// The signature is missing, malformed, or not by a trusted key, or the keys are broken.
    #[error("signature: {reason}")]
    Signature {
        /// `signature_missing`, `signature_invalid`, `signature_untrusted` or `trusted_key_error`.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The package verified but its content cannot run (config.json disagrees with the
    /// manifest, the tokenizer does not parse, ...).
    #[error("unusable model: {0}")]
    Unusable(String),
    /// The model loaded but its first embedding, computed at load, is not a vector it may
    /// serve (not finite, the wrong width, not unit length where the manifest normalizes).
    #[error("self-test at load failed: {0}")]
    SelfTest(String),
}

/// Marker carried in the io::Error when the decompressed stream passes its budget, so the
/// error can be told apart from a corrupt stream.
#[derive(Debug)]
pub(crate) struct BudgetExceeded;

impl std::fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decompressed data exceeds what the manifest declares")
    }
}

impl std::error::Error for BudgetExceeded {}

impl PackageError {
    /// Wraps an OS error with the operation and file.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        PackageError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Classifies an error raised while reading the decompressed stream.
    pub(crate) fn from_stream(e: io::Error) -> Self {
        if e.get_ref()
            .is_some_and(|inner| inner.is::<BudgetExceeded>())
        {
            return PackageError::DecompressionBound;
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof => PackageError::Truncated(e.to_string()),
            _ => PackageError::Corrupt(e.to_string()),
        }
    }

    /// Stable, machine-readable name of the rule that failed.
    pub fn kind(&self) -> &'static str {
        match self {
            PackageError::Io { .. } => "io_error",
            PackageError::NotZstd(_) => "not_zstd",
            PackageError::Corrupt(_) => "corrupt",
            PackageError::Truncated(_) => "truncated",
            PackageError::DecompressionBound => "decompression_bound",
            PackageError::Malformed(_) => "malformed",
            PackageError::ManifestMissing => "manifest_missing",
            PackageError::ManifestNotFirst { .. } => "manifest_not_first",
            PackageError::ManifestInvalid(_) => "manifest_invalid",
            PackageError::UnsafeEntry { .. } => "unsafe_entry",
            PackageError::DuplicateEntry { .. } => "duplicate_entry",
            PackageError::ExtraEntry { .. } => "extra_entry",
            PackageError::MissingEntries { .. } => "missing_entry",
            PackageError::SizeMismatch { .. } => "size_mismatch",
            PackageError::HashMismatch { .. } => "sha256_mismatch",
            PackageError::Sidecar(_) => "sidecar_mismatch",
            PackageError::Signature { kind, .. } => kind,
            PackageError::Unusable(_) => "unusable_model",
            PackageError::SelfTest(_) => "self_test_failed",
        }
    }
}
