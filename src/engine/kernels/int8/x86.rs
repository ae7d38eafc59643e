//! The x86-64 int8 tiles: AVX2 (`vpmaddwd` then `vpaddd`), AVX-VNNI and AVX-512 VNNI
//! (`vpdpwssd`, which fuses the two; AVX-512's tile spans up to 4 panels, see
//! `Kernel::panels`). The VNNI tiles sign-extend a panel's int8 weights to int16 as they load
//! them (16 outputs × 2 inputs a register), and so does the AVX2 tile for a few rows; for
//! more, AVX2 reads a panel widened once for all its row tiles ([`widen`]). Each multiplies
//! the weights by a broadcast pair of a row's int16 activations, sums a block in int32, then
//! adds it into f32 with the block's scales.

use std::arch::x86_64::*;

use super::{Acc, BLOCK, Kernel, NR, PANEL_BLOCK};

/// One tile with `kernel` (see `Packed::tile`).
///
/// # Safety
/// The CPU must run `kernel`; `a` must hold `mr` rows of `blocks × BLOCK` int16 at stride
/// `lda`, `w` and `ws` the `np` panels' `blocks`, `mr ≤ kernel.rows()` and
/// `np ≤ kernel.panels()`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile(
    kernel: Kernel,
    a: *const i16,
    lda: usize,
    mr: usize,
    np: usize,
    w: &[i8],
    ws: &[f32],
    blocks: usize,
    acc: &mut Acc,
) {
    debug_assert!(w.len() >= np * blocks * PANEL_BLOCK && ws.len() >= np * blocks * NR);
    let (w, ws) = (w.as_ptr(), ws.as_ptr());
    macro_rules! rows {
        ($f:ident, $($m:literal),*) => {
            match mr {
                // SAFETY: the caller's contract, passed on.
                $($m => unsafe { $f::<$m>(a, lda, w, ws, blocks, acc) },)*
                _ => unreachable!("a tile of {mr} rows"),
            }
        };
    }
    debug_assert!(np <= kernel.panels());
    match kernel {
        Kernel::Avx512Vnni => {
            tile_shape!(
                avx512_vnni(a, lda, w, ws, blocks, acc),
                mr,
                [1, 2, 3, 4],
                np,
                [1, 2, 3, 4]
            )
        }
        Kernel::AvxVnni => rows!(avx_vnni, 1, 2, 3, 4),
        Kernel::Avx2 => {
            let w = Int8Panel(w);
            match mr {
                // SAFETY: the caller's contract, passed on.
                1 => unsafe { avx2::<1, _>(a, lda, w, ws, blocks, acc) },
                2 => unsafe { avx2::<2, _>(a, lda, w, ws, blocks, acc) },
                3 => unsafe { avx2::<3, _>(a, lda, w, ws, blocks, acc) },
                4 => unsafe { avx2::<4, _>(a, lda, w, ws, blocks, acc) },
                _ => unreachable!("a tile of {mr} rows"),
            }
        }
        Kernel::Neon | Kernel::Portable => unreachable!("the {} kernel is not x86", kernel.name()),
    }
}

/// The pair of activations `(a[k], a[k + 1])` of a row as one int32, for a broadcast.
#[inline(always)]
unsafe fn pair(a: *const i16, at: usize) -> i32 {
    // SAFETY: the caller reads inside its row.
    unsafe { (a.add(at) as *const i32).read_unaligned() }
}

/// Half a panel's block row: 8 outputs × 2 inputs, sign-extended to int16.
#[inline(always)]
unsafe fn weights8(w: *const i8) -> __m256i {
    // SAFETY: the caller reads inside the panel; an unaligned 16-byte load.
    unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(w as *const __m128i)) }
}

/// Where the AVX2 tile reads a panel's weights from: the int8 panel, sign-extended as it
/// loads, or a copy [`widen`]ed to int16 once.
trait Panel: Copy {
    /// The panel from element `at` on.
    ///
    /// # Safety
    /// `at` lies inside the panel.
    unsafe fn at(self, at: usize) -> Self;
    /// 8 outputs × 2 inputs at the panel's start, as int16.
    ///
    /// # Safety
    /// The panel holds 16 more elements.
    unsafe fn load(self) -> __m256i;
}

#[derive(Clone, Copy)]
struct Int8Panel(*const i8);

impl Panel for Int8Panel {
    #[inline(always)]
    unsafe fn at(self, at: usize) -> Self {
        // SAFETY: the caller's contract.
        Int8Panel(unsafe { self.0.add(at) })
    }
    #[inline(always)]
    unsafe fn load(self) -> __m256i {
        // SAFETY: the caller's contract.
        unsafe { weights8(self.0) }
    }
}

#[derive(Clone, Copy)]
struct WidePanel(*const i16);

impl Panel for WidePanel {
    #[inline(always)]
    unsafe fn at(self, at: usize) -> Self {
        // SAFETY: the caller's contract.
        WidePanel(unsafe { self.0.add(at) })
    }
    #[inline(always)]
    unsafe fn load(self) -> __m256i {
        // SAFETY: the caller's contract; an unaligned 32-byte load.
        unsafe { _mm256_loadu_si256(self.0 as *const __m256i) }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<const M: usize, P: Panel>(
    a: *const i16,
    lda: usize,
    w: P,
    ws: *const f32,
    blocks: usize,
    acc: &mut Acc,
) {
    let mut f = [[_mm256_setzero_ps(); 2]; M];
    for b in 0..blocks {
        let mut s = [[_mm256_setzero_si256(); 2]; M];
        // SAFETY (the block): offsets stay inside the panel's block `b` and the rows' block
        // `b`, as the caller guarantees.
        unsafe {
            let wb = w.at(b * PANEL_BLOCK);
            for j in 0..BLOCK / 2 {
                let w0 = wb.at(j * 2 * NR).load();
                let w1 = wb.at(j * 2 * NR + NR).load();
                for (r, s) in s.iter_mut().enumerate() {
                    let av = _mm256_set1_epi32(pair(a, r * lda + b * BLOCK + 2 * j));
                    s[0] = _mm256_add_epi32(s[0], _mm256_madd_epi16(av, w0));
                    s[1] = _mm256_add_epi32(s[1], _mm256_madd_epi16(av, w1));
                }
            }
            let sc = [
                _mm256_loadu_ps(ws.add(b * NR)),
                _mm256_loadu_ps(ws.add(b * NR + 8)),
            ];
            for (f, s) in f.iter_mut().zip(&s) {
                for h in 0..2 {
                    f[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[h]), sc[h], f[h]);
                }
            }
        }
    }
    for (out, f) in acc.iter_mut().zip(&f) {
        // SAFETY: `out` holds 16 floats.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), f[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), f[1]);
        }
    }
}

/// Sign-extends a panel's int8 weights to int16 into `wide` (same layout), so the tiles that
/// share the panel multiply straight from memory: `vpmovsxbw` in the loop takes a vector slot
/// from the multiply-adds (four vector µops issue a cycle on Zen 3). Worth it only when
/// enough row tiles share the panel (see `WIDEN_ROWS`).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn widen(w: &[i8], wide: &mut [i16]) {
    for (d, &s) in wide.iter_mut().zip(w) {
        *d = i16::from(s);
    }
}

/// The AVX2 tile on a panel [`widen`]ed to int16.
///
/// # Safety
/// As [`tile`], with `w` the widened panel (`blocks × PANEL_BLOCK` int16).
pub(super) unsafe fn tile_wide(
    a: *const i16,
    lda: usize,
    mr: usize,
    w: &[i16],
    ws: &[f32],
    blocks: usize,
    acc: &mut Acc,
) {
    debug_assert!(w.len() >= blocks * PANEL_BLOCK && ws.len() >= blocks * NR);
    let (w, ws) = (WidePanel(w.as_ptr()), ws.as_ptr());
    match mr {
        // SAFETY: the caller's contract, passed on.
        1 => unsafe { avx2::<1, _>(a, lda, w, ws, blocks, acc) },
        2 => unsafe { avx2::<2, _>(a, lda, w, ws, blocks, acc) },
        3 => unsafe { avx2::<3, _>(a, lda, w, ws, blocks, acc) },
        4 => unsafe { avx2::<4, _>(a, lda, w, ws, blocks, acc) },
        _ => unreachable!("a tile of {mr} rows"),
    }
}

#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn avx_vnni<const M: usize>(
    a: *const i16,
    lda: usize,
    w: *const i8,
    ws: *const f32,
    blocks: usize,
    acc: &mut Acc,
) {
    let mut f = [[_mm256_setzero_ps(); 2]; M];
    for b in 0..blocks {
        let mut s = [[_mm256_setzero_si256(); 2]; M];
        // SAFETY: as in `avx2`.
        unsafe {
            let wb = w.add(b * PANEL_BLOCK);
            for j in 0..BLOCK / 2 {
                let w0 = weights8(wb.add(j * 2 * NR));
                let w1 = weights8(wb.add(j * 2 * NR + NR));
                for (r, s) in s.iter_mut().enumerate() {
                    let av = _mm256_set1_epi32(pair(a, r * lda + b * BLOCK + 2 * j));
                    s[0] = _mm256_dpwssd_avx_epi32(s[0], av, w0);
                    s[1] = _mm256_dpwssd_avx_epi32(s[1], av, w1);
                }
            }
            let sc = [
                _mm256_loadu_ps(ws.add(b * NR)),
                _mm256_loadu_ps(ws.add(b * NR + 8)),
            ];
            for (f, s) in f.iter_mut().zip(&s) {
                for h in 0..2 {
                    f[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[h]), sc[h], f[h]);
                }
            }
        }
    }
    for (out, f) in acc.iter_mut().zip(&f) {
        // SAFETY: `out` holds 16 floats.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), f[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), f[1]);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
unsafe fn avx512_vnni<const M: usize, const P: usize>(
    a: *const i16,
    lda: usize,
    w: *const i8,
    ws: *const f32,
    blocks: usize,
    acc: &mut Acc,
) {
    // Panel `q`'s weights and scales start `q` panels on.
    let (w_stride, s_stride) = (blocks * PANEL_BLOCK, blocks * NR);
    let mut f = [[_mm512_setzero_ps(); P]; M];
    for b in 0..blocks {
        let mut s = [[_mm512_setzero_si512(); P]; M];
        // SAFETY: as in `avx2`, for each of the `P` panels; a 32-byte load is a panel's block
        // row of 16 outputs × 2 inputs.
        unsafe {
            for j in 0..BLOCK / 2 {
                let mut wv = [_mm512_setzero_si512(); P];
                for (q, wv) in wv.iter_mut().enumerate() {
                    let at = w.add(q * w_stride + b * PANEL_BLOCK + j * 2 * NR);
                    *wv = _mm512_cvtepi8_epi16(_mm256_loadu_si256(at as *const __m256i));
                }
                for (r, s) in s.iter_mut().enumerate() {
                    let av = _mm512_set1_epi32(pair(a, r * lda + b * BLOCK + 2 * j));
                    for (s, &wv) in s.iter_mut().zip(&wv) {
                        *s = _mm512_dpwssd_epi32(*s, av, wv);
                    }
                }
            }
            for q in 0..P {
                let sc = _mm512_loadu_ps(ws.add(q * s_stride + b * NR));
                for (f, s) in f.iter_mut().zip(&s) {
                    f[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[q]), sc, f[q]);
                }
            }
        }
    }
    for (out, f) in acc.iter_mut().zip(&f) {
        for (q, f) in f.iter().enumerate() {
            // SAFETY: `out` holds MAX_PANELS × 16 floats.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(q * NR), *f) };
        }
    }
}
