//! The aarch64 int8 tile: int16 activations × int8 weights with NEON `smlal` (by lane), int32
//! sums per block, scaled into f32. Every aarch64 CPU has NEON, so this is aarch64's kernel;
//! the dot-product extension (`sdot`) multiplies 8-bit activations only, which the fidelity
//! promise rules out (see the module above).
//!
//! A block of a panel is 16 pairs of inputs × 16 outputs × 2 int8, the two inputs of a pair
//! side by side; `ld2` splits a pair's 32 bytes into the first and second input's 16 weights.
//! Each is widened to two int16x8 and multiplied by one activation lane of the row into four
//! int32x4 sums: 16 outputs. Four rows share each widened weight.

use std::arch::aarch64::*;

use super::{Acc, BLOCK, NR, PANEL_BLOCK};

/// Rows per tile: 4 rows × 16 outputs of int32 sums are 16 of the 32 vector registers,
/// leaving room for the rows' activations and a pair's widened weights.
pub const ROWS: usize = 4;

/// `acc[r][c] += Σ_blocks scale[b][c] × Σ_{k in b} a[r][k] · w[k][c]` for `mr` ≤ [`ROWS`] rows.
///
/// # Safety
/// `a` must hold `mr` rows of `blocks × BLOCK` int16 at stride `lda`; `w` and `ws` one panel
/// (`blocks × PANEL_BLOCK` weights, `blocks × NR` scales).
pub unsafe fn tile(
    a: *const i16,
    lda: usize,
    mr: usize,
    w: &[i8],
    ws: &[f32],
    blocks: usize,
    acc: &mut Acc,
) {
    debug_assert!(w.len() >= blocks * PANEL_BLOCK && ws.len() >= blocks * NR);
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match mr {
            1 => rows::<1>(a, lda, w, ws, blocks, acc),
            2 => rows::<2>(a, lda, w, ws, blocks, acc),
            3 => rows::<3>(a, lda, w, ws, blocks, acc),
            _ => rows::<4>(a, lda, w, ws, blocks, acc),
        }
    }
}

/// One pair of inputs (activation lanes `L0`, `L1` of each row's 8) into the sums.
macro_rules! pair {
    ($sums:ident, $av:ident, $wp:expr, $l0:literal, $l1:literal, $mr:ident) => {{
        let wp = vld2q_s8($wp);
        let (w0l, w0h) = (vmovl_s8(vget_low_s8(wp.0)), vmovl_high_s8(wp.0));
        let (w1l, w1h) = (vmovl_s8(vget_low_s8(wp.1)), vmovl_high_s8(wp.1));
        for r in 0..$mr {
            let (s, a) = (&mut $sums[r], $av[r]);
            s[0] = vmlal_laneq_s16::<$l0>(s[0], vget_low_s16(w0l), a);
            s[1] = vmlal_high_laneq_s16::<$l0>(s[1], w0l, a);
            s[2] = vmlal_laneq_s16::<$l0>(s[2], vget_low_s16(w0h), a);
            s[3] = vmlal_high_laneq_s16::<$l0>(s[3], w0h, a);
            s[0] = vmlal_laneq_s16::<$l1>(s[0], vget_low_s16(w1l), a);
            s[1] = vmlal_high_laneq_s16::<$l1>(s[1], w1l, a);
            s[2] = vmlal_laneq_s16::<$l1>(s[2], vget_low_s16(w1h), a);
            s[3] = vmlal_high_laneq_s16::<$l1>(s[3], w1h, a);
        }
    }};
}

#[inline(always)]
unsafe fn rows<const MR: usize>(
    a: *const i16,
    lda: usize,
    w: &[i8],
    ws: &[f32],
    blocks: usize,
    acc: &mut Acc,
) {
    // SAFETY (the whole body): reads stay inside the rows and the panel the caller vouched
    // for; NEON is part of every aarch64 target.
    unsafe {
        let zero = vdupq_n_s32(0);
        for b in 0..blocks {
            let wb = w.as_ptr().add(b * PANEL_BLOCK);
            let mut sums = [[zero; 4]; MR];
            // Eight activations (four pairs) per row at a time.
            for quad in 0..BLOCK / 8 {
                let mut av = [vdupq_n_s16(0); MR];
                for (r, v) in av.iter_mut().enumerate() {
                    *v = vld1q_s16(a.add(r * lda + b * BLOCK + quad * 8));
                }
                let wq = wb.add(quad * 4 * 2 * NR);
                pair!(sums, av, wq, 0, 1, MR);
                pair!(sums, av, wq.add(2 * NR), 2, 3, MR);
                pair!(sums, av, wq.add(4 * NR), 4, 5, MR);
                pair!(sums, av, wq.add(6 * NR), 6, 7, MR);
            }
            let scale = ws.as_ptr().add(b * NR);
            for (r, s) in sums.iter().enumerate() {
                let out = acc[r].as_mut_ptr();
                for (i, &v) in s.iter().enumerate() {
                    let o = out.add(4 * i);
                    let sc = vld1q_f32(scale.add(4 * i));
                    vst1q_f32(o, vfmaq_f32(vld1q_f32(o), vcvtq_f32_s32(v), sc));
                }
            }
        }
    }
}
