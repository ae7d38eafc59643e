//! A tile's int32 sums turned into the layer's outputs: the zero point's share taken out
//! (`Σ (q − z)·w = Σ q·w − z·Σ w`), scaled by the row's and the output's scales, the bias (and
//! a residual) added.

#[cfg(target_arch = "x86_64")]
use super::super::{Isa, isa};
use super::quantize::RowQuant;
#[cfg(target_arch = "x86_64")]
use super::{MAX_PANELS, NR};

/// What every row of a tile shares: per output, `Σ w`, its scale and its bias.
#[derive(Clone, Copy)]
pub(super) struct Columns<'a> {
    pub wsums: &'a [i32],
    pub scales: &'a [f32],
    pub bias: &'a [f32],
}

simd!(
    /// `dst = (sums − zero·Σw) × row scale × output scale + bias (+ residual)`.
    pub(super) fn write_row(dst: &mut [f32], sums: &[i32], q: RowQuant, c: Columns<'_>, residual: Option<&[f32]>) = write_row_generic
);

#[inline(always)]
fn write_row_generic(
    dst: &mut [f32],
    sums: &[i32],
    q: RowQuant,
    c: Columns<'_>,
    residual: Option<&[f32]>,
) {
    let n = dst.len();
    let (sums, wsums, scales, bias) = (&sums[..n], &c.wsums[..n], &c.scales[..n], &c.bias[..n]);
    let (z, s) = (q.zero, q.scale);
    // The int32 difference cannot overflow: both terms are below 255 × 127 × inputs.
    match residual {
        Some(res) => {
            let res = &res[..n];
            for i in 0..n {
                let v = sums[i].wrapping_sub(z.wrapping_mul(wsums[i])) as f32;
                dst[i] = v * (s * scales[i]) + bias[i] + res[i];
            }
        }
        None => {
            for i in 0..n {
                let v = sums[i].wrapping_sub(z.wrapping_mul(wsums[i])) as f32;
                dst[i] = v * (s * scales[i]) + bias[i];
            }
        }
    }
}

/// A whole tile's rows in one call, on any x86-64 CPU with AVX2 (every x86 int8-fast kernel
/// but the portable one), for a width of whole 8-lane vectors: [`write_row`] per row of 16
/// outputs cost a dispatch and a loop with a remainder for each, 7% of a one-pair rerank's
/// profile (AMD EPYC Zen 3). Same operations in the same order, so the same bits.
///
/// # Safety
/// The CPU must have AVX2; `acc` holds the tile's rows and `quant` one entry per row; `c`'s
/// slices hold `width` outputs, a multiple of 8; `dst` (and `residual`) point at the tile's
/// first output, with each row's `width` floats `ldo` apart inside their buffers, which no
/// other thread writes meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn write_tile_avx2(
    acc: &[[i32; NR * MAX_PANELS]],
    quant: &[RowQuant],
    c: Columns<'_>,
    dst: *mut f32,
    ldo: usize,
    residual: Option<*const f32>,
) {
    use std::arch::x86_64::*;
    let width = c.wsums.len();
    debug_assert!(width.is_multiple_of(8) && width <= NR * MAX_PANELS);
    debug_assert!(c.scales.len() == width && c.bias.len() == width && quant.len() >= acc.len());
    for (r, (sums, q)) in acc.iter().zip(quant).enumerate() {
        let (zero, scale) = (_mm256_set1_epi32(q.zero), _mm256_set1_ps(q.scale));
        for j in (0..width).step_by(8) {
            // SAFETY: `j + 8 <= width` and every slice holds `width`; the row's outputs (and
            // residuals) lie inside their buffers (the caller's contract).
            unsafe {
                let sum = _mm256_loadu_si256(sums.as_ptr().add(j).cast());
                let wsum = _mm256_loadu_si256(c.wsums.as_ptr().add(j).cast());
                let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum, _mm256_mullo_epi32(zero, wsum)));
                let s = _mm256_mul_ps(scale, _mm256_loadu_ps(c.scales.as_ptr().add(j)));
                let mut o =
                    _mm256_add_ps(_mm256_mul_ps(v, s), _mm256_loadu_ps(c.bias.as_ptr().add(j)));
                if let Some(res) = residual {
                    o = _mm256_add_ps(o, _mm256_loadu_ps(res.add(r * ldo + j)));
                }
                _mm256_storeu_ps(dst.add(r * ldo + j), o);
            }
        }
    }
}
