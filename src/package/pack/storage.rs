//! How `caxton pack` stores the weights: as the folder has them, floats rounded to f16 or bf16
//! (half the size), or large matrices in int8 with block scales (about 30% of f32's size; the
//! format is [`crate::package::manifest::StoredWeights::Int8`]'s), value projections in bf16
//! and Dense modules as they are. Names, shapes, the other
//! tensors and the metadata are kept; the safetensors serialiser fixes the order, so the output
//! is reproducible.

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::super::error::PackageError;
use super::super::manifest::{
    INT8_BLOCK, INT8_MIN_VALUES, INT8_SCALES_SUFFIX, StoredWeights, quantize_int8_block,
};
use super::infer::unusable;

/// How the weights are stored in the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightStorage {
    /// As in the source folder.
    AsIs,
    /// Floats rounded to f16; the engine computes in f32 either way.
    F16,
    /// Floats rounded to bf16 (f32's range, 8 bits of precision).
    Bf16,
    /// Large matrices in int8, a scale per row and block of 32 values; the rest as is.
    Int8,
}

impl WeightStorage {
    /// What the manifest records. f16 leaves the key out, as packages made before it did
    /// (the bundled package rebuilds byte for byte); its tensors say f16 themselves.
    pub fn in_manifest(self) -> Option<StoredWeights> {
        match self {
            WeightStorage::AsIs | WeightStorage::F16 => None,
            WeightStorage::Bf16 => Some(StoredWeights::Bf16),
            WeightStorage::Int8 => Some(StoredWeights::Int8),
        }
    }

    /// The name in the provenance record.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightStorage::AsIs => "as-is",
            WeightStorage::F16 => "f16",
            WeightStorage::Bf16 => "bf16",
            WeightStorage::Int8 => "int8",
        }
    }
}

/// A tensor of the output: name, dtype, shape, little-endian bytes.
type Stored = (String, Dtype, Vec<usize>, Vec<u8>);

/// The safetensors file `bytes` (named `file` in errors) stored as `storage` asks.
pub fn convert(
    bytes: Vec<u8>,
    storage: WeightStorage,
    file: &str,
) -> Result<Vec<u8>, PackageError> {
    if storage == WeightStorage::AsIs {
        return Ok(bytes);
    }
    let bad = |e: safetensors::SafeTensorError| unusable(format!("{file}: {e}"));
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let mut out: Vec<Stored> = Vec::new();
    for (name, view) in tensors.tensors() {
        let floats = widen(view.dtype(), view.data());
        let shape = view.shape().to_vec();
        match (storage, floats) {
            (_, None) => out.push((name, view.dtype(), shape, view.data().to_vec())),
            (WeightStorage::F16, Some(v)) => out.push((name, Dtype::F16, shape, f16_bytes(&v))),
            (WeightStorage::Bf16, Some(v)) => out.push((name, Dtype::BF16, shape, bf16_bytes(&v))),
            (WeightStorage::Int8, Some(v)) if is_value_projection(&name) => {
                out.push((name, Dtype::BF16, shape, bf16_bytes(&v)))
            }
            (WeightStorage::Int8, Some(v)) if int8_eligible(&shape) => {
                let scales_name = format!("{name}{INT8_SCALES_SUFFIX}");
                if tensors.names().contains(&scales_name.as_str()) {
                    return Err(unusable(format!(
                        "{file}: a tensor is already named {scales_name}, which int8 storage needs for {name}'s scales; pack without --weights int8"
                    )));
                }
                let (q, scales) = quantize(&v, shape[1])
                    .map_err(|row| unusable(format!("{file}: tensor {name} has a value that is not finite in row {row}; int8 cannot store it")))?;
                let blocks = shape[1] / INT8_BLOCK;
                out.push((
                    scales_name,
                    Dtype::F32,
                    vec![shape[0], blocks],
                    f32_bytes(&scales),
                ));
                out.push((name, Dtype::I8, shape, q.iter().map(|&q| q as u8).collect()));
            }
            (_, Some(_)) => out.push((name, view.dtype(), shape, view.data().to_vec())),
        }
    }
    drop(tensors);
    let views = out
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    safetensors::serialize(views, metadata.metadata().clone()).map_err(bad)
}

/// A float tensor's values in f32; `None` for other dtypes (ids, masks), which stay as they are.
pub(super) fn widen(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    let pairs = || data.chunks_exact(2).map(|c| [c[0], c[1]]);
    match dtype {
        Dtype::F32 => Some(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            pairs()
                .map(|b| half::f16::from_le_bytes(b).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            pairs()
                .map(|b| half::bf16::from_le_bytes(b).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// Parts of the names of the value projections (alone, or fused with query and key) of the
/// families Caxton runs: BERT, XLM-RoBERTa, DistilBERT, MPNet, the decoders; NomicBERT and
/// ModernBERT, GTE.
const VALUE_PROJECTIONS: [&str; 6] = [
    ".value.",
    ".v_lin.",
    ".attn.v.",
    ".v_proj.",
    ".Wqkv.",
    ".qkv_proj.",
];

/// Whether float tensor `name` is a value projection (alone or fused with the query and
/// key). The engine's int8 keeps those f32 (alone they decide whether the hardest texts stay
/// above cosine 0.999, see `kernels::int8`), so int8 storage keeps them in bf16, the type
/// the decoders are released in. Real EmbeddingGemma-300m run in f32 from int8 storage, min
/// cosine over 154 texts: value projections in int8 0.99893, in f32 0.99933, in bf16 0.99932;
/// in f32 they made Qwen3-0.6B's package 716 MB, 63 MB over bf16's and past the 700 it must
/// fit in.
fn is_value_projection(name: &str) -> bool {
    VALUE_PROJECTIONS.iter().any(|v| name.contains(v))
}

/// Whether a float tensor of `shape` goes int8: a matrix of whole blocks, large enough for
/// its scales to pay.
fn int8_eligible(shape: &[usize]) -> bool {
    matches!(shape, [rows, cols] if cols % INT8_BLOCK == 0 && rows * cols >= INT8_MIN_VALUES)
}

/// Each row of `values` (`cols` wide) in blocks of [`INT8_BLOCK`]: the block's largest
/// magnitude maps to 127, rounding to nearest, ties to even, as the engine's int8 layers
/// quantize. `Err(row)`: a value that is not finite.
pub(crate) fn quantize(values: &[f32], cols: usize) -> Result<(Vec<i8>, Vec<f32>), usize> {
    let mut q = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(values.len() / INT8_BLOCK);
    for (i, block) in values.chunks_exact(INT8_BLOCK).enumerate() {
        if block.iter().any(|v| !v.is_finite()) {
            return Err(i * INT8_BLOCK / cols);
        }
        scales.push(quantize_int8_block(block, &mut q));
    }
    Ok((q, scales))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::safetensors_file as file;
    use super::*;

    #[test]
    fn int8_stores_large_matrices_with_block_scales_and_leaves_the_rest() {
        let big: Vec<f32> = (0..256 * 256)
            .map(|i| ((i % 97) as f32 - 48.0) / 100.0)
            .collect();
        let bias = vec![0.5f32; 256];
        let bytes = file(&[
            ("w", Dtype::F32, vec![256, 256], f32_bytes(&big)),
            ("b", Dtype::F32, vec![256], f32_bytes(&bias)),
            (
                "small",
                Dtype::F32,
                vec![2, 256],
                f32_bytes(&bias[..].repeat(2)),
            ),
            ("ids", Dtype::I64, vec![2], vec![0; 16]),
            (
                "layers.0.self_attn.v_proj.weight",
                Dtype::F32,
                vec![256, 256],
                f32_bytes(&big),
            ),
        ]);
        let out = convert(bytes, WeightStorage::Int8, "model.safetensors").unwrap();
        let t = SafeTensors::deserialize(&out).unwrap();
        let w = t.tensor("w").unwrap();
        assert_eq!((w.dtype(), w.shape()), (Dtype::I8, &[256, 256][..]));
        let s = t.tensor("w.int8_scales").unwrap();
        assert_eq!((s.dtype(), s.shape()), (Dtype::F32, &[256, 8][..]));
        for name in ["b", "small"] {
            assert_eq!(t.tensor(name).unwrap().dtype(), Dtype::F32, "{name}");
        }
        let v = t.tensor("layers.0.self_attn.v_proj.weight").unwrap();
        assert_eq!(v.dtype(), Dtype::BF16);
        assert_eq!(t.tensor("ids").unwrap().dtype(), Dtype::I64);
        // Every value within half a step of its block's scale.
        let q = w.data();
        let s: Vec<f32> = widen(Dtype::F32, s.data()).unwrap();
        for (i, &v) in big.iter().enumerate() {
            let back = f32::from(q[i] as i8) * s[i / INT8_BLOCK];
            assert!((back - v).abs() <= s[i / INT8_BLOCK] / 2.0 + 1e-7, "{i}");
        }
    }

    #[test]
    fn a_value_that_is_not_finite_is_refused_by_row() {
        let mut big = vec![0.1f32; 256 * 256];
        big[3 * 256 + 7] = f32::NAN;
        let bytes = file(&[("w", Dtype::F32, vec![256, 256], f32_bytes(&big))]);
        let e = convert(bytes, WeightStorage::Int8, "model.safetensors").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unusable model: model.safetensors: tensor w has a value that is not finite in row 3; int8 cannot store it"
        );
    }

    #[test]
    fn a_tensor_already_named_like_the_scales_is_refused() {
        let big = vec![0.1f32; 256 * 256];
        let bytes = file(&[
            ("w", Dtype::F32, vec![256, 256], f32_bytes(&big)),
            ("w.int8_scales", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0])),
        ]);
        let e = convert(bytes, WeightStorage::Int8, "model.safetensors").unwrap_err();
        assert!(e.to_string().contains("already named w.int8_scales"), "{e}");
    }

    #[test]
    fn bf16_and_f16_round_every_float() {
        let bytes = file(&[("w", Dtype::F32, vec![4], f32_bytes(&[1.0, -2.5, 3.1, 0.0]))]);
        for (storage, dtype) in [
            (WeightStorage::Bf16, Dtype::BF16),
            (WeightStorage::F16, Dtype::F16),
        ] {
            let out = convert(bytes.clone(), storage, "m").unwrap();
            let t = SafeTensors::deserialize(&out).unwrap();
            let w = t.tensor("w").unwrap();
            assert_eq!(w.dtype(), dtype);
            let back = widen(dtype, w.data()).unwrap();
            assert_eq!(back[..2], [1.0, -2.5]);
            assert!((back[2] - 3.1).abs() < 0.02);
        }
    }
}
