//! Model packages: the manifest format, streaming verification, the verified store and
//! `caxton pack`.

pub mod error;
pub mod known;
pub mod manifest;
pub mod pack;
pub mod settle;
pub mod signature;
pub mod store;
pub mod towers_config;
pub mod verify;

pub use error::PackageError;
pub use manifest::{
    Architecture, Dense, DenseActivation, INT8_BLOCK, INT8_SCALES_SUFFIX, InputType,
    LateInteraction, LateSimilarity, MAX_SEQ_LENGTH, Manifest, Matryoshka, Mismatch, ModelKind,
    OutputHeads, OutputName, PairTemplate, Pooling, QueryExpansion, ScoreActivation,
    SparseActivation, StoredWeights, TokenWeights, quantize_int8_block, to_int8,
};
pub use store::{Lease, Store, StoredPackage};

/// Largest package file accepted, checked before a byte is read: a sparse or endless file
/// cannot keep the verifier (and the scan lock) busy without bound.
pub const MAX_PACKAGE_BYTES: u64 = manifest::MAX_TOTAL_BYTES;

/// Opens `path` for reading without blocking (a FIFO dropped in place of a file cannot hang
/// the scan) and only if it is a regular file.
pub fn open_regular(path: &std::path::Path) -> Result<std::fs::File, PackageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| PackageError::io("open", path, e))?;
    let md = file
        .metadata()
        .map_err(|e| PackageError::io("stat", path, e))?;
    if !md.is_file() {
        return Err(PackageError::Malformed(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}
