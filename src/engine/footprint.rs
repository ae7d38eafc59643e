//! What a package costs in memory before it is loaded: the weights' bytes read from the
//! safetensors headers (the admission's expected size), and the room a pass over its longest
//! input needs.

use super::{Precision, checkpoint, encoder, sparse};
use crate::package::{Architecture, ModelKind, StoredPackage};

/// Memory not in the weights that a loaded model holds: the engine thread's stack, per-model
/// buffers and allocator slack (all-MiniLM-L6-v2 measures 98 MiB for 86.6 MiB of weights).
const ENGINE_OVERHEAD: u64 = 12 << 20;

/// Bytes `package` is expected to take once loaded in `precision`, before it ever was: the
/// weights widened to f32 (read from the safetensors headers alone; a third of that in int8,
/// whose scales and f32 parts add to the quarter), the tokenizer and a fixed overhead.
pub fn estimate_bytes(package: &StoredPackage, precision: Precision) -> u64 {
    let m = &package.manifest;
    let mut weights: u64 = m
        .files
        .iter()
        .filter(|f| f.path.ends_with(".safetensors"))
        .map(|f| safetensors_header_f32_bytes(&package.dir.join(&f.path)).unwrap_or(f.size * 2))
        .sum();
    if m.kind == ModelKind::Sparse {
        // The decoder is a second copy of the word table (vocabulary × hidden): tied to it in
        // the checkpoint, packed on its own for the head's products.
        let hidden = std::fs::read(package.dir.join("config.json"))
            .ok()
            .and_then(|c| checkpoint::blueprint(m.architecture, &c).ok())
            .map_or(0, |b| b.hidden);
        weights += (m.dimensions * hidden * 4) as u64;
    }
    if matches!(precision, Precision::Int8 | Precision::Int8Fast) {
        weights /= 3;
    }
    let tokenizer = m.file("tokenizer.json").map_or(0, |f| f.size);
    weights + tokenizer * 4 + ENGINE_OVERHEAD
}

/// Bytes a forward pass over `package`'s longest text holds beyond the weights
/// ([`encoder::activation_bytes`], from its `config.json`): room a load must leave free, since
/// serving one such text needs it (hundreds of MiB at 8,192 tokens). Not resident while idle,
/// so not counted as the loaded model's memory.
pub fn longest_pass_bytes(package: &StoredPackage) -> u64 {
    let m = &package.manifest;
    let Ok(config) = std::fs::read(package.dir.join("config.json")) else {
        return 0;
    };
    let text = checkpoint::blueprint(m.architecture, &config).map_or(0, |b| {
        let len = m.max_seq_length.min(b.max_positions());
        let head = match m.kind {
            ModelKind::Sparse => sparse::pass_bytes(b.hidden, m.dimensions, len, 1),
            _ => 0,
        };
        encoder::activation_bytes(&b, len, len) + head as u64
    });
    text.max(picture_pass_bytes(m.architecture, &config).unwrap_or(0))
}

/// Bytes the image tower's pass over one picture holds (a two-tower model's: its patches,
/// and CLIP's class row, are its tokens), from its `config.json`.
fn picture_pass_bytes(architecture: Architecture, config: &[u8]) -> Option<u64> {
    let (b, shape, class) = match architecture {
        Architecture::Clip => {
            let (b, shape) = checkpoint::clip::vision_blueprint(config).ok()?;
            (b, shape, 1)
        }
        Architecture::Siglip => {
            let (b, shape) = checkpoint::siglip::vision_blueprint(config).ok()?;
            (b, shape, 0)
        }
        _ => return None,
    };
    let tokens = shape.grid() * shape.grid() + class;
    Some(encoder::activation_bytes(&b, tokens, tokens))
}

/// f32 bytes of the tensors a safetensors file declares, from its JSON header only.
fn safetensors_header_f32_bytes(path: &std::path::Path) -> Option<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // safetensors itself caps headers at 100 MB.
    if len > 100_000_000 {
        return None;
    }
    let mut header = vec![0u8; usize::try_from(len).ok()?];
    f.read_exact(&mut header).ok()?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).ok()?;
    Some(
        header
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .filter_map(|(_, v)| v.get("shape")?.as_array().cloned())
            .map(|shape| shape.iter().filter_map(|d| d.as_u64()).product::<u64>() * 4)
            .sum(),
    )
}
