//! The x86-64 int8-fast tiles. AVX-512 VNNI and AVX-VNNI multiply unsigned activations by
//! signed weights with `vpdpbusd` (four products summed into each int32 lane): a group row of
//! a panel (4 inputs × 16 outputs, 64 bytes) is one zmm or two ymm, and each row's 4
//! activations of the group one broadcast int32.
//!
//! AVX2 has no such instruction. `vpmaddubsw` multiplies unsigned by signed bytes into int16
//! pairs, which saturate where two products are large (255 × 127 × 2 > 32767); `vpmaddwd` by
//! ones then sums each two pairs into the int32 lane `vpdpbusd` would. The weights it takes
//! are packed so that no pair's magnitudes exceed 128 (`Packed::new`), which keeps every pair
//! exact (255 × 128 = 32640): the same integers as every other kernel on those weights.
//! The loop is bound by its vector instructions (3 per 32 products). The ways that keep all
//! 8 bits of the weights exact take 4: activations stored as 16 bits for `vpmaddwd` (this
//! tile before), or `vpsignb` moving the activations' signs onto the weights. Against the
//! first, this tile took a pass over 32 short texts from 95.1 to 80.1 ms and one text from
//! 2.72 to 2.24 ms (AMD EPYC Zen 3, `examples/single int8-fast`, p10, medians of 6
//! alternating runs); `vpsignb` was no faster than the first (one text 2.66-2.73 ms, not
//! alternated).

use std::arch::x86_64::*;

use super::{GROUP, Kernel, MAX_PANELS, MAX_ROWS, NR, PANEL_GROUP};

/// Stores a one-panel tile of ymm sums (outputs 0-7, 8-15) into `acc`.
macro_rules! store256 {
    ($s:expr, $acc:expr) => {
        for (out, s) in $acc.iter_mut().zip($s.iter()) {
            // SAFETY: `out` holds at least 16 int32; the stores are unaligned.
            unsafe {
                _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s[0]);
                _mm256_storeu_si256(out.as_mut_ptr().add(8) as *mut __m256i, s[1]);
            }
        }
    };
}

/// One tile with `kernel` (see `Packed::tile`).
///
/// # Safety
/// The CPU must run `kernel`; `a` must hold `mr` rows of `groups × GROUP` bytes at stride
/// `lda`, `w` the `np` panels of `groups` groups, and `mr`, `np` fit the kernel's tile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile(
    kernel: Kernel,
    a: *const u8,
    lda: usize,
    mr: usize,
    w: &[i8],
    np: usize,
    groups: usize,
    acc: &mut [[i32; NR * MAX_PANELS]; MAX_ROWS],
) {
    debug_assert!(w.len() >= np * groups * PANEL_GROUP);
    let w = w.as_ptr();
    match kernel {
        Kernel::Avx512Vnni => {
            tile_shape!(
                avx512_vnni(a, lda, w, groups, acc),
                mr,
                [1, 2, 3, 4, 5, 6],
                np,
                [1, 2, 3, 4]
            )
        }
        Kernel::AvxVnni => tile_shape!(
            avx_vnni(a, lda, w, groups, acc),
            mr,
            [1, 2, 3, 4, 5, 6],
            np,
            [1]
        ),
        Kernel::Avx2 => tile_shape!(avx2(a, lda, w, groups, acc), mr, [1, 2, 3, 4], np, [1]),
        _ => unreachable!("the {} kernel is not x86", kernel.name()),
    }
}

/// Row `r`'s 4 activations of group `g`, as one int32 to broadcast.
#[inline(always)]
unsafe fn group(a: *const u8, lda: usize, r: usize, g: usize) -> i32 {
    // SAFETY: the caller reads inside its rows.
    unsafe { (a.add(r * lda + g * GROUP) as *const i32).read_unaligned() }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn avx512_vnni<const M: usize, const P: usize>(
    a: *const u8,
    lda: usize,
    w: *const i8,
    groups: usize,
    acc: &mut [[i32; NR * MAX_PANELS]; MAX_ROWS],
) {
    let stride = groups * PANEL_GROUP;
    let mut s = [[_mm512_setzero_si512(); P]; M];
    // SAFETY (the loop): offsets stay inside the panels' groups and the rows' groups, as the
    // caller guarantees.
    unsafe {
        for g in 0..groups {
            let mut wv = [_mm512_setzero_si512(); P];
            for (p, wv) in wv.iter_mut().enumerate() {
                *wv = _mm512_loadu_si512(w.add(p * stride + g * PANEL_GROUP) as *const _);
            }
            for (r, s) in s.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(group(a, lda, r, g));
                for (s, &wv) in s.iter_mut().zip(&wv) {
                    *s = _mm512_dpbusd_epi32(*s, av, wv);
                }
            }
        }
    }
    for (out, s) in acc.iter_mut().zip(&s) {
        for (p, &s) in s.iter().enumerate() {
            // SAFETY: `out` holds MAX_PANELS × 16 int32.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(p * NR) as *mut _, s) };
        }
    }
}

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn avx_vnni<const M: usize, const P: usize>(
    a: *const u8,
    lda: usize,
    w: *const i8,
    groups: usize,
    acc: &mut [[i32; NR * MAX_PANELS]; MAX_ROWS],
) {
    debug_assert_eq!(P, 1);
    let mut s = [[_mm256_setzero_si256(); 2]; M];
    // SAFETY: as in `avx512_vnni`.
    unsafe {
        for g in 0..groups {
            let w0 = _mm256_loadu_si256(w.add(g * PANEL_GROUP) as *const __m256i);
            let w1 = _mm256_loadu_si256(w.add(g * PANEL_GROUP + 32) as *const __m256i);
            for (r, s) in s.iter_mut().enumerate() {
                let av = _mm256_set1_epi32(group(a, lda, r, g));
                s[0] = _mm256_dpbusd_avx_epi32(s[0], av, w0);
                s[1] = _mm256_dpbusd_avx_epi32(s[1], av, w1);
            }
        }
    }
    store256!(s, acc);
}

/// The AVX2 tile (see the module): `vpmaddubsw` multiplies each row's 4 unsigned activations
/// of a group by the panel's signed weights into int16 pairs, `vpmaddwd` by ones sums each
/// two pairs into the output's int32 lane, as `vpdpbusd` would.
#[target_feature(enable = "avx2")]
unsafe fn avx2<const M: usize, const P: usize>(
    a: *const u8,
    lda: usize,
    w: *const i8,
    groups: usize,
    acc: &mut [[i32; NR * MAX_PANELS]; MAX_ROWS],
) {
    debug_assert_eq!(P, 1);
    let ones = _mm256_set1_epi16(1);
    let mut s = [[_mm256_setzero_si256(); 2]; M];
    // SAFETY: as in `avx512_vnni`.
    unsafe {
        for g in 0..groups {
            let w0 = _mm256_loadu_si256(w.add(g * PANEL_GROUP) as *const __m256i);
            let w1 = _mm256_loadu_si256(w.add(g * PANEL_GROUP + 32) as *const __m256i);
            for (r, s) in s.iter_mut().enumerate() {
                let av = _mm256_set1_epi32(group(a, lda, r, g));
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, w1), ones);
                s[0] = _mm256_add_epi32(s[0], p0);
                s[1] = _mm256_add_epi32(s[1], p1);
            }
        }
    }
    store256!(s, acc);
}
