//! A folder's encoder weights: its `model.safetensors`, or, where it has only
//! `pytorch_model.bin` (BAAI ships bge-m3 so, and Stanford ColBERT checkpoints often are),
//! that file read without Python (torch.save's zip format, candle's pickle reader) and written
//! as the safetensors a package stores.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::super::error::PackageError;

pub(super) const SAFETENSORS: &str = "model.safetensors";
const PYTORCH: &str = "pytorch_model.bin";

/// The weights of the folder `dir` as safetensors bytes, and the sha256 of the file they came
/// from.
pub(super) fn read(dir: &Path) -> Result<(Vec<u8>, String), PackageError> {
    let path = dir.join(SAFETENSORS);
    if path.exists() || !dir.join(PYTORCH).exists() {
        let bytes = std::fs::read(&path).map_err(|e| PackageError::io("read", &path, e))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        return Ok((bytes, sha));
    }
    let source = dir.join(PYTORCH);
    Ok((
        from_pytorch(&source)?,
        super::super::store::sha256_file(&source)?,
    ))
}

/// The sha256 of the file the folder's weights come from.
pub(super) fn source_sha256(dir: &Path) -> Result<String, PackageError> {
    match dir.join(SAFETENSORS) {
        p if p.exists() || !dir.join(PYTORCH).exists() => super::super::store::sha256_file(&p),
        _ => super::super::store::sha256_file(&dir.join(PYTORCH)),
    }
}

fn unusable(msg: String) -> PackageError {
    PackageError::Unusable(msg)
}

/// The state dict at `path` as safetensors bytes, each tensor as the file stores it.
fn from_pytorch(path: &Path) -> Result<Vec<u8>, PackageError> {
    let tensors = candle_core::pickle::read_all(path).map_err(|e| {
        unusable(format!(
            "{PYTORCH}: cannot read it as a PyTorch state dict (torch.save's zip format; save it again with torch 1.6 or later, or as {SAFETENSORS}): {e}"
        ))
    })?;
    if tensors.is_empty() {
        return Err(unusable(format!(
            "{PYTORCH}: the state dict holds no tensors"
        )));
    }
    let views = tensors.iter().map(|(name, t)| (name.as_str(), t));
    safetensors::serialize(views, None).map_err(|e| {
        unusable(format!(
            "{PYTORCH}: cannot write its tensors as safetensors: {e}"
        ))
    })
}
