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
    out.extend(block.iter().map(|&v| to_int8(v, inv)));
    max / 127.0
}

/// `v × inv` rounded to the nearest integer, ties to even, within ±127: the int8 rule of
/// every quantized weight, stored by `caxton pack` or packed at load.
#[inline(always)]
pub fn to_int8(v: f32, inv: f32) -> i8 {
    // 1.5 × 2^23, added and taken away, leaves no fraction bits in any |x| < 2^22 and rounds
    // as the FPU does, ties to even; larger values are clamped all the same. `round_ties_even`
    // is a call to libm's `rintf` on x86-64's baseline (no SSE4.1), which does not vectorise:
    // MiniLM's int8-fast load made 22 million of them.
    const SHIFT: f32 = 12_582_912.0;
    let x = v * inv;
    ((x + SHIFT) - SHIFT).clamp(-127.0, 127.0) as i8
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_int8_rounds_as_round_ties_even_does() {
        let rule = |x: f32| x.round_ties_even().clamp(-127.0, 127.0) as i8;
        // Every tie and its neighbours within the range, then values past it.
        for i in -300..=300 {
            for x in [i as f32 * 0.5, i as f32 * 0.5 + 1e-3, i as f32 * 0.5 - 1e-3] {
                assert_eq!(to_int8(x, 1.0), rule(x), "{x}");
            }
        }
        let steps = (0..100_000).map(|i| (i as f32 * 0.618_034).sin() * 131.0);
        let far = [
            1e6,
            -1e6,
            4.2e6,
            1e30,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for x in steps.chain(far) {
            assert_eq!(to_int8(x, 1.0), rule(x), "{x}");
        }
        assert_eq!(to_int8(f32::NAN, 1.0), 0);
        assert_eq!(to_int8(3.0, 127.0 / 6.0), 64);
    }
}
