//! The steps of [`super::Packed::new`]: `Wᵀ` smoothed and rotated, each output's step, the
//! weights quantized into panels (their pairs limited for the kernels that need it), and each
//! output's sum for the zero point.

use super::{GROUP, NR, PANEL_GROUP};
use crate::memory::mapped::Mapped;
use crate::package::to_int8;

/// `H·S·Wᵀ / n` of `wt` (`[inputs, outputs]`): rows of `Wᵀ` scaled by `s(k) / rotation`, then
/// each block of `rotation` rows turned as a whole (a butterfly on rows is a butterfly on every
/// output at once).
pub(super) fn turn(
    wt: &[f32],
    outputs: usize,
    rotation: usize,
    s: impl Fn(usize) -> f32,
) -> Vec<f32> {
    let mut turned = wt.to_vec();
    for (k, row) in turned.chunks_exact_mut(outputs.max(1)).enumerate() {
        let f = s(k) / rotation as f32;
        row.iter_mut().for_each(|w| *w *= f);
    }
    for block in turned.chunks_exact_mut(rotation * outputs.max(1)) {
        let mut h = 1;
        while h < rotation {
            for pair in block.chunks_exact_mut(2 * h * outputs) {
                let (lo, hi) = pair.split_at_mut(h * outputs);
                for (l, r) in lo.iter_mut().zip(hi.iter_mut()) {
                    let (a, c) = (*l, *r);
                    *l = a + c;
                    *r = a - c;
                }
            }
            h *= 2;
        }
    }
    turned
}

/// What each output's weights in `turned` must fit in 127 steps: their largest magnitude, or
/// with `limit_pairs` that of their largest pair of inputs `2j, 2j + 1` over 128, if larger.
pub(super) fn output_max(turned: &[f32], outputs: usize, limit_pairs: bool) -> Vec<f32> {
    let mut max = vec![0f32; outputs];
    for row in turned.chunks_exact(outputs.max(1)) {
        for (m, &w) in max.iter_mut().zip(row) {
            *m = m.max(w.abs());
        }
    }
    if limit_pairs {
        // An odd last input pairs with a padding zero.
        for pair in turned.chunks(2 * outputs.max(1)) {
            let (first, second) = pair.split_at(outputs.min(pair.len()));
            for (o, m) in max.iter_mut().enumerate() {
                let both = first[o].abs() + second.get(o).map_or(0.0, |w| w.abs());
                *m = m.max(both * (127.0 / 128.0));
            }
        }
    }
    max
}

/// One unit of each output's weights (`[panels × NR]`, the padding outputs 0).
pub(super) fn scales(max: &[f32], panels: usize) -> Mapped<f32> {
    let mut scales = Mapped::zeroed(panels * NR);
    for (o, &m) in max.iter().enumerate() {
        scales[o] = m / 127.0;
    }
    scales
}

/// `turned` rounded to each output's steps of `max / 127`, laid out as
/// `[panel][group][output][GROUP]` (inputs padded to `groups` groups with zeros).
pub(super) fn quantize(
    turned: &[f32],
    max: &[f32],
    outputs: usize,
    panels: usize,
    groups: usize,
) -> Mapped<i8> {
    let inv: Vec<f32> = max
        .iter()
        .map(|&m| if m > 0.0 { 127.0 / m } else { 0.0 })
        .collect();
    let mut weights = Mapped::zeroed(panels * groups * PANEL_GROUP);
    for (k, row) in turned.chunks_exact(outputs.max(1)).enumerate() {
        let (g, kk) = (k / GROUP, k % GROUP);
        for (o, (&w, &inv)) in row.iter().zip(&inv).enumerate() {
            let at = ((o / NR) * groups + g) * PANEL_GROUP + (o % NR) * GROUP + kk;
            weights[at] = to_int8(w, inv);
        }
    }
    weights
}

/// Brings every pair of an output's inputs `2j, 2j + 1` to at most 128 in magnitude: rounding
/// (and f32's) may leave a pair one over; its larger weight gives it up. An output's inputs
/// `2j, 2j + 1` are adjacent bytes of its group.
pub(super) fn limit_pairs(weights: &mut [i8]) {
    for pair in weights.chunks_exact_mut(2) {
        let over = i32::from(pair[0]).abs() + i32::from(pair[1]).abs() - 128;
        if over > 0 {
            let big = usize::from(pair[1].abs() > pair[0].abs());
            pair[big] -= pair[big].signum() * over as i8;
        }
    }
}

/// The sum of each output's quantized weights (`[panels × NR]`).
pub(super) fn sums(weights: &[i8], panels: usize, groups: usize) -> Mapped<i32> {
    let mut sums = Mapped::zeroed(panels * NR);
    for (p, panel) in weights.chunks_exact(groups * PANEL_GROUP).enumerate() {
        for group in panel.chunks_exact(PANEL_GROUP) {
            for (c, w) in group.chunks_exact(GROUP).enumerate() {
                sums[p * NR + c] += w.iter().map(|&q| i32::from(q)).sum::<i32>();
            }
        }
    }
    sums
}
