//! How a package stores its weights (`weights:` in the manifest), and the int8 format.
//!
//! int8 keeps each large matrix as `I8` values with one f32 scale per row and block of
//! [`INT8_BLOCK`] values, under the matrix's name plus [`INT8_SCALES_SUFFIX`] (shape
//! `[rows, columns / INT8_BLOCK]`): a value is `q × scale`, and a block's largest magnitude is
//! stored as ±127. That is the engine's own int8 rule (`models.precision: int8` quantizes its
//! linear layers per output and block of 32 inputs the same way), so such a model in int8
//! computes with exactly the stored values; in f32 it runs them widened. Value projections
//! (which the engine's int8 keeps f32) are stored in bf16. Vectors (norms, biases), small
//! tables, matrices whose rows are not whole blocks and the Dense modules after pooling stay
//! as the folder had them.

use serde::{Deserialize, Serialize};

/// Values of a row that share an int8 scale.
pub const INT8_BLOCK: usize = 32;

/// Appended to a matrix's name to name its int8 scales.
pub const INT8_SCALES_SUFFIX: &str = ".int8_scales";

/// Matrices with fewer values stay in their float type: a scale table would save nothing
/// worth its rounding (token-type rows, a reranker's one-label output).
pub const INT8_MIN_VALUES: usize = 1 << 16;

/// Quantizes one block of values by the int8 rule (the block's largest magnitude → 127,
/// round to nearest, ties to even), appending them to `out`; returns the block's scale.
pub fn quantize_int8_block(block: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
    out.extend(
        block
            .iter()
            .map(|v| (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8),
    );
    max / 127.0
}

/// How the weights were stored by `caxton pack` (absent: as the source folder had them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredWeights {
    /// f32 as trained.
    F32,
    /// Floats rounded to f16: half of f32's size.
    F16,
    /// Floats rounded to bf16: half of f32's size, f32's range.
    Bf16,
    /// Large matrices in int8 with block scales (see the module): about 30% of f32's size.
    Int8,
}

impl StoredWeights {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StoredWeights::F32 => "f32",
            StoredWeights::F16 => "f16",
            StoredWeights::Bf16 => "bf16",
            StoredWeights::Int8 => "int8",
        }
    }
}
