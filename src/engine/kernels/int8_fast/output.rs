//! A tile's int32 sums turned into the layer's outputs: the zero point's share taken out
//! (`Σ (q − z)·w = Σ q·w − z·Σ w`), scaled by the row's and the output's scales, the bias (and
//! a residual) added.

#[cfg(target_arch = "x86_64")]
use super::super::{Isa, isa};
use super::quantize::RowQuant;

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
