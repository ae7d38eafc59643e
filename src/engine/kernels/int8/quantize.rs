//! int8's activations: each row (token) quantized to int16 with its own scale, at every call.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::super::{Isa, isa};

/// Largest magnitude of a quantized activation. With weights up to 127, a block's int32 sum
/// stays far from overflow (32 × 32767 × 127 < 2²⁷).
const A_MAX: f32 = 32767.0;

/// Quantizes each row of `x` (`rows × inputs`) to int16 with its own scale (largest magnitude
/// → 32767) into `a` (`rows × lda`, zero-padded) and `scales`.
pub(super) fn quantize_rows(
    x: &[f32],
    rows: usize,
    inputs: usize,
    lda: usize,
    a: &mut Vec<i16>,
    scales: &mut Vec<f32>,
) {
    // Grown, never cleared: every value of the rows is written below (zeroing the whole
    // buffer first was a `memset` of every layer's activations, 3% of a pass).
    if a.len() < rows * lda {
        a.resize(rows * lda, 0);
    }
    scales.clear();
    scales.resize(rows, 0.0);
    let one = |((row, q), s): ((&[f32], &mut [i16]), &mut f32)| {
        q[inputs..].fill(0);
        *s = quantize_row(row, &mut q[..inputs]);
    };
    let rows_iter = x
        .chunks_exact(inputs)
        .zip(a.chunks_exact_mut(lda))
        .zip(scales.iter_mut());
    if x.len() < super::super::PARALLEL_MIN {
        rows_iter.for_each(one);
    } else {
        x.par_chunks_exact(inputs)
            .zip(a.par_chunks_exact_mut(lda))
            .zip(scales.par_iter_mut())
            .for_each(one);
    }
}

simd!(
    /// Quantizes one row to int16; returns its scale.
    fn quantize_row(x: &[f32], q: &mut [i16]) -> f32 = quantize_row_generic
);

#[inline(always)]
pub(super) fn quantize_row_generic(x: &[f32], q: &mut [i16]) -> f32 {
    // Largest magnitude, and whether anything is not finite, in 16 lanes so it vectorises.
    let (mut lanes, mut bad) = ([0f32; 16], [false; 16]);
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for ((l, b), &v) in lanes.iter_mut().zip(&mut bad).zip(c) {
            let a = v.abs();
            *l = if a > *l { a } else { *l };
            *b |= !a.is_finite();
        }
    }
    for &v in tail {
        let a = v.abs();
        lanes[0] = if a > lanes[0] { a } else { lanes[0] };
        bad[0] |= !a.is_finite();
    }
    let max = lanes.iter().fold(0f32, |m, &l| if l > m { l } else { m });
    if bad.iter().any(|&b| b) {
        // A NaN or infinity poisons the f32 pass too; the row's NaN scale passes it on.
        q.fill(0);
        return f32::NAN;
    }
    if max == 0.0 {
        q.fill(0);
        return 1.0;
    }
    let inv = A_MAX / max;
    for (q, &v) in q.iter_mut().zip(x) {
        // SAFETY: every v is finite (checked above) and |v × inv| ≤ 32767, so the value is
        // in range; the checked `as` conversion would not vectorise.
        *q = unsafe { (v * inv).round_ties_even().to_int_unchecked::<i32>() } as i16;
    }
    max / A_MAX
}
