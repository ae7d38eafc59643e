//! A layer's input rows on their way into the kernels: divided by the smoothing, rotated
//! ([`super::rotate`]), and quantized per row, asymmetric: the row's range
//! `[min(0, lo), max(0, hi)]` onto 0..=255.
//!
//! A kernel that multiplies signed activations reads every stored byte as `b − 128`; the row's
//! zero is shifted to match, so `value = (q − zero) × scale` holds whichever way it is read.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::super::{Isa, isa};
use super::rotate;

/// How a row was quantized: its value at `k` is `(q[k] − zero) × scale`, with `q` as the
/// kernel reads it (signed bytes as `b − 128`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowQuant {
    /// What one step of the row is worth (NaN when the row held a NaN or infinity).
    pub scale: f32,
    /// The stored value of 0.0.
    pub zero: i32,
}

/// How a layer quantizes its inputs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scheme<'a> {
    /// `1 / s[k]` of the smoothing, per input.
    pub unsmooth: &'a [f32],
    /// The rotation's block.
    pub rotation: usize,
    /// Whether the kernel reads bytes signed.
    pub signed: bool,
}

/// Quantizes each row of `x` (`rows × inputs`) into `a` (rows of `lda` bytes; padding values
/// hold the row's zero) and `quant`.
pub(super) fn quantize_rows(
    x: &[f32],
    (inputs, lda): (usize, usize),
    scheme: Scheme<'_>,
    a: &mut Vec<u8>,
    quant: &mut Vec<RowQuant>,
) {
    let rows = x.len() / inputs.max(1);
    // Grown, never cleared: `quantize_row` writes every byte of a row, padding included.
    if a.len() < rows * lda {
        a.resize(rows * lda, 0);
    }
    quant.clear();
    quant.resize(rows, RowQuant::default());
    let one = |scratch: &mut Vec<f32>, ((row, q), rq): ((&[f32], &mut [u8]), &mut RowQuant)| {
        scratch.resize(inputs, 0.0);
        *rq = quantize_row(row, scheme, scratch, q);
    };
    if x.len() < super::super::PARALLEL_MIN {
        let mut scratch = Vec::new();
        x.chunks_exact(inputs)
            .zip(a.chunks_exact_mut(lda))
            .zip(quant.iter_mut())
            .for_each(|r| one(&mut scratch, r));
    } else {
        x.par_chunks_exact(inputs)
            .zip(a.par_chunks_exact_mut(lda))
            .zip(quant.par_iter_mut())
            .for_each_init(Vec::new, one);
    }
}

/// Quantizes one row through `scratch` (as long as `x`) into `q` (at least as long).
pub(super) fn quantize_row(
    x: &[f32],
    scheme: Scheme<'_>,
    scratch: &mut [f32],
    q: &mut [u8],
) -> RowQuant {
    let t = &mut scratch[..x.len()];
    smooth(x, scheme.unsmooth, t);
    rotate::hadamard(t, scheme.rotation);
    let Some((lo, hi)) = range(t) else {
        // A NaN or infinity poisons the f32 pass too; the row's NaN scale passes it on.
        q.fill(0);
        return RowQuant {
            scale: f32::NAN,
            zero: 0,
        };
    };
    if hi - lo == 0.0 {
        // All zeros: 0 stands for 0 whether read signed or not.
        q.fill(0);
        return RowQuant {
            scale: 1.0,
            zero: 0,
        };
    }
    let bits = if scheme.signed { 0x80u8 } else { 0 };
    let scale = (hi - lo) / 255.0;
    let zero = to_steps(t, (lo, scale), bits, q);
    RowQuant {
        scale,
        zero: zero - if scheme.signed { 128 } else { 0 },
    }
}

simd!(
    /// `t = x / s`.
    fn smooth(x: &[f32], unsmooth: &[f32], t: &mut [f32]) = smooth_generic
);

#[inline(always)]
fn smooth_generic(x: &[f32], unsmooth: &[f32], t: &mut [f32]) {
    for ((t, &v), &u) in t.iter_mut().zip(x).zip(unsmooth) {
        *t = v * u;
    }
}

simd!(
    /// The range `(min(0, lo), max(0, hi))` of `t`, or `None` when a value is not finite.
    fn range(t: &[f32]) -> Option<(f32, f32)> = range_generic
);

#[inline(always)]
fn range_generic(t: &[f32]) -> Option<(f32, f32)> {
    // In 16 lanes, so it vectorises.
    let (mut lo, mut hi, mut bad) = ([0f32; 16], [0f32; 16], [false; 16]);
    let tail = t.len() - t.len() % 16;
    for c in t.chunks_exact(16) {
        for i in 0..16 {
            let v = c[i];
            lo[i] = if v < lo[i] { v } else { lo[i] };
            hi[i] = if v > hi[i] { v } else { hi[i] };
            bad[i] |= !v.is_finite();
        }
    }
    for &v in &t[tail..] {
        lo[0] = if v < lo[0] { v } else { lo[0] };
        hi[0] = if v > hi[0] { v } else { hi[0] };
        bad[0] |= !v.is_finite();
    }
    if bad.iter().any(|&b| b) {
        return None;
    }
    let lo = lo.iter().fold(0f32, |m, &l| if l < m { l } else { m });
    let hi = hi.iter().fold(0f32, |m, &h| if h > m { h } else { m });
    Some((lo, hi))
}

/// Writes `t` in steps of `scale` above its zero (returned; `lo`, the range's bottom, is step
/// 0), clamped to `0..=255`, into `q`, XORed with `bits` (0x80 for a kernel that reads them
/// signed). The bytes past `t` get the zero.
fn to_steps(t: &[f32], (lo, scale): (f32, f32), bits: u8, q: &mut [u8]) -> i32 {
    let inv = 1.0 / scale;
    // The range holds 0, so the zero point lies in 0..=255.
    let zero = (-lo * inv).round_ties_even().clamp(0.0, 255.0);
    steps(t, inv, zero, bits, q);
    let z = zero as i32;
    q.iter_mut().skip(t.len()).for_each(|q| *q = z as u8 ^ bits);
    z
}

simd!(
    /// The quantization loop of [`to_steps`].
    fn steps(t: &[f32], inv: f32, zero: f32, bits: u8, q: &mut [u8]) = steps_generic
);

#[inline(always)]
fn steps_generic(t: &[f32], inv: f32, zero: f32, bits: u8, q: &mut [u8]) {
    for (q, &v) in q.iter_mut().zip(t) {
        let r = (v * inv + zero).round_ties_even().clamp(0.0, 255.0);
        // SAFETY: r is finite (the caller checked) and within 0..=255; the checked `as`
        // conversion would not vectorise.
        *q = unsafe { r.to_int_unchecked::<i32>() } as u8 ^ bits;
    }
}
