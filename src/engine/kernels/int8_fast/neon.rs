//! The aarch64 int8-fast tiles, on signed activations (`q − 128`) × signed weights.
//!
//! With the dot-product extension (`dotprod`: Cortex-A55/A75 and later, Neoverse), `sdot` by
//! lane sums four products into each int32 lane: a panel's group row (4 inputs × 16 outputs,
//! 64 bytes) is four registers, and one register of a row's activations holds four groups,
//! picked by lane. Rust 1.95 has no stable intrinsic for it, so it is one instruction of
//! inline assembly. Without the extension, `smull` multiplies 8 pairs into int16 (at most
//! 128 × 127, no overflow) and `sadalp` adds neighbours into int32; the pairs of each
//! output's lanes are added at the end.

use std::arch::aarch64::*;
use std::arch::asm;

use super::{GROUP, Kernel, MAX_PANELS, MAX_ROWS, NR, PANEL_GROUP};

/// One tile of one panel with `kernel` (see `Packed::tile`).
///
/// # Safety
/// The CPU must run `kernel`; `a` must hold `mr` rows of `groups × GROUP` bytes at stride
/// `lda`, `w` one panel of `groups` groups (a multiple of 4), and `mr` fit the kernel's tile.
pub(super) unsafe fn tile(
    kernel: Kernel,
    a: *const u8,
    lda: usize,
    mr: usize,
    w: &[i8],
    groups: usize,
    acc: &mut [[i32; NR * MAX_PANELS]; MAX_ROWS],
) {
    debug_assert!(w.len() >= groups * PANEL_GROUP && groups.is_multiple_of(4));
    let (a, w) = (a as *const i8, w.as_ptr());
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match (kernel, mr) {
            (Kernel::NeonDot, 1) => dot::<1>(a, lda, w, groups, acc),
            (Kernel::NeonDot, 2) => dot::<2>(a, lda, w, groups, acc),
            (Kernel::NeonDot, 3) => dot::<3>(a, lda, w, groups, acc),
            (Kernel::NeonDot, 4) => dot::<4>(a, lda, w, groups, acc),
            (Kernel::Neon, 1) => widening::<1>(a, lda, w, groups, acc),
            (Kernel::Neon, 2) => widening::<2>(a, lda, w, groups, acc),
            _ => unreachable!("a {} tile of {mr} rows", kernel.name()),
        }
    }
}

/// `acc += Σ_4 w·a[lane]` with `sdot` (four int8 products per int32 lane).
#[inline(always)]
unsafe fn sdot<const LANE: i32>(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` reads and writes registers only; the caller runs with `dotprod`.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            lane = const LANE,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn dot<const M: usize>(
    a: *const i8,
    lda: usize,
    w: *const i8,
    groups: usize,
    acc: &mut [[i32; NR * MAX_PANELS]; MAX_ROWS],
) {
    // SAFETY (the body): reads stay inside the rows and the panel the caller vouched for.
    unsafe {
        let mut s = [[vdupq_n_s32(0); 4]; M];
        // Four groups (16 activations of each row) at a time.
        for g4 in 0..groups / 4 {
            let mut av = [vdupq_n_s8(0); M];
            for (r, v) in av.iter_mut().enumerate() {
                *v = vld1q_s8(a.add(r * lda + g4 * 4 * GROUP));
            }
            macro_rules! lane {
                ($l:literal) => {{
                    let wg = w.add((g4 * 4 + $l) * PANEL_GROUP);
                    let wv = [
                        vld1q_s8(wg),
                        vld1q_s8(wg.add(16)),
                        vld1q_s8(wg.add(32)),
                        vld1q_s8(wg.add(48)),
                    ];
                    for (s, &av) in s.iter_mut().zip(&av) {
                        for (s, &wv) in s.iter_mut().zip(&wv) {
                            *s = sdot::<$l>(*s, wv, av);
                        }
                    }
                }};
            }
            lane!(0);
            lane!(1);
            lane!(2);
            lane!(3);
        }
        for (out, s) in acc.iter_mut().zip(&s) {
            for (i, &v) in s.iter().enumerate() {
                vst1q_s32(out.as_mut_ptr().add(4 * i), v);
            }
        }
    }
}

#[target_feature(enable = "neon")]
unsafe fn widening<const M: usize>(
    a: *const i8,
    lda: usize,
    w: *const i8,
    groups: usize,
    acc: &mut [[i32; NR * MAX_PANELS]; MAX_ROWS],
) {
    // SAFETY (the body): reads stay inside the rows and the panel the caller vouched for.
    unsafe {
        // Per row, per 4 outputs: two int32x4 of pair sums (outputs 0-1 and 2-3 of the four).
        let mut s = [[vdupq_n_s32(0); 8]; M];
        for g in 0..groups {
            let wg = w.add(g * PANEL_GROUP);
            let wv = [
                vld1q_s8(wg),
                vld1q_s8(wg.add(16)),
                vld1q_s8(wg.add(32)),
                vld1q_s8(wg.add(48)),
            ];
            for (r, s) in s.iter_mut().enumerate() {
                // The row's 4 activations of the group, repeated for each of 4 outputs.
                let four = (a.add(r * lda + g * GROUP) as *const i32).read_unaligned();
                let av = vreinterpretq_s8_s32(vdupq_n_s32(four));
                for (i, &wv) in wv.iter().enumerate() {
                    let lo = vmull_s8(vget_low_s8(wv), vget_low_s8(av));
                    let hi = vmull_high_s8(wv, av);
                    s[2 * i] = vpadalq_s16(s[2 * i], lo);
                    s[2 * i + 1] = vpadalq_s16(s[2 * i + 1], hi);
                }
            }
        }
        for (out, s) in acc.iter_mut().zip(&s) {
            for i in 0..4 {
                // [o0 (k0+k1), o0 (k2+k3), o1 .., o1 ..] and the same for o2, o3.
                vst1q_s32(
                    out.as_mut_ptr().add(4 * i),
                    vpaddq_s32(s[2 * i], s[2 * i + 1]),
                );
            }
        }
    }
}
