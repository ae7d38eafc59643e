//! The x86 few-row tiles, in intrinsics, one design for AVX2 and AVX-512 ([`Lanes`]). One text's pass through a model whose f32 weights
//! outgrow L3 (MiniLM's are 42 MB) waits on memory first and on arithmetic second; both are
//! tuned here. Figures from `examples/kernels` (`KERNELS_COLD=1` reads each call's weights
//! from memory), 13 rows of MiniLM's layers, 2 threads, AMD EPYC Zen 3:
//! - **Memory**: a panel block's weights are walked input row by input row, front to back, by
//!   the first row of `x` across the whole panel ([`wide_tile`]); only then do the other rows
//!   run in column tiles from L1. Walked a 16-column tile at a time (a 384-byte stride) the
//!   hardware's stream prefetcher never engaged: a one-row pass read 10.8 GB/s, front to back
//!   17.6 GB/s (the machine's two-thread streaming peak is about 19). Software prefetches
//!   ahead of that walk, one block or more ahead, in a burst or one line per step, to L1 or
//!   L2, changed nothing. Cold 13-row layers: 20-22 GMAC/s with column tiles only, 29-32 with
//!   the wide first row. While the other rows' tiles compute, though, nothing walks and the
//!   prefetcher idles: the next block is prefetched then, in shares between the tiles.
//! - **Arithmetic**: the generic tiles of the parent module compiled for AVX2 spent about 38
//!   instructions per input step of a 4 × 16 tile (bounds checks, the prefetch's branch and
//!   stack reloads around 8 multiply-adds). Here a step is its loads, broadcasts and
//!   multiply-adds, and the rows are cut into tiles of up to 6 so that every tile keeps 8 or
//!   more sums in flight (a multiply-add's latency is 4 cycles and two issue per cycle): 12
//!   rows after the wide one run as 6 + 6, not 4 + 4 + 4; 13 as 5 + 4 + 4, not 4 + 4 + 4 + 1,
//!   whose last tile waits on latency for a quarter of the work. Warm 13-row layers: 25-35
//!   GMAC/s before, 45-60 after.
//! - **AVX-512** runs the same design in 16-lane vectors with tiles of up to 12 rows (32
//!   registers). It replaced the parent's generic AVX-512 tiles (8 rows, column chunks in
//!   blocks of 64 inputs): a whole MiniLM pass of 13 tokens, 2 threads, AMD EPYC Zen 4
//!   (`examples/single f32`, interleaved): p50 3.8-4.1 ms before, 3.0-3.2 after; 1 thread
//!   5.8-6.0 before, 4.4-4.6 after. This design compiled for AVX2 on the same CPU: 3.35-3.42.

use std::arch::x86_64::{
    __m256, __m512, _MM_HINT_T1, _mm_prefetch, _mm256_broadcast_ss, _mm256_fmadd_ps,
    _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps, _mm512_fmadd_ps, _mm512_loadu_ps,
    _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};

/// One vector register of f32 lanes and the few operations the tiles use. The methods are
/// `#[inline(always)]` and run only inside the `#[target_feature]` entry points below, into
/// which they inline with the intrinsics.
trait Lanes {
    type V: Copy;
    /// f32 lanes in a vector.
    const L: usize;
    /// Most rows per tile: `2·MAX_ROWS` sums, the 2 weight vectors and the broadcast input
    /// fit the registers (16 for AVX2, 32 for AVX-512).
    const MAX_ROWS: usize;
    /// Most vectors the first row's pass covers at once (a panel is 96 outputs wide).
    const WIDE: usize;
    /// # Safety
    /// The CPU has the vector's instruction set.
    unsafe fn zero() -> Self::V;
    /// # Safety
    /// `p` is valid for `L` floats, and as for [`Lanes::zero`].
    unsafe fn load(p: *const f32) -> Self::V;
    /// # Safety
    /// As for [`Lanes::load`], for writing.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// # Safety
    /// `p` is valid for one float, and as for [`Lanes::zero`].
    unsafe fn splat(p: *const f32) -> Self::V;
    /// `a·b + c`.
    /// # Safety
    /// As for [`Lanes::zero`].
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
}

/// AVX2 with FMA: 8 lanes, 16 registers.
struct Avx2;

impl Lanes for Avx2 {
    type V = __m256;
    const L: usize = 8;
    const MAX_ROWS: usize = 6;
    const WIDE: usize = 12;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: the caller vouches for the CPU.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller vouches for the pointer and the CPU.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m256 {
        // SAFETY: as above.
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: the caller vouches for the CPU.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
}

/// AVX-512 F: 16 lanes, 32 registers (so tiles of up to 12 rows: one text's 13 tokens are
/// the wide first row and one tile, each weight loaded serving 12 rows).
struct Avx512;

impl Lanes for Avx512 {
    type V = __m512;
    const L: usize = 16;
    const MAX_ROWS: usize = 12;
    const WIDE: usize = 6;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: the caller vouches for the CPU.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the caller vouches for the pointer and the CPU.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m512 {
        // SAFETY: as above.
        unsafe { _mm512_set1_ps(*p) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: the caller vouches for the CPU.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
}

/// Inputs per block: a block's weights for one tile's columns (32 rows of 64 or 128 bytes)
/// stay in L1 while every row tile passes over them.
const BLOCK: usize = 32;

/// `block[r·width + c] = x_r · w_c` for `rows` rows of `x` (each `k` wide) over one panel `w`
/// (`k` rows of `width` floats), in AVX2.
#[target_feature(enable = "avx2,fma")]
pub(super) fn avx2(x: &[f32], rows: usize, k: usize, w: &[f32], width: usize, block: &mut [f32]) {
    // SAFETY: the CPU has AVX2 and FMA (this function's own features).
    unsafe { tiles::<Avx2>(x, rows, k, w, width, block) }
}

/// As [`avx2`], in AVX-512.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) fn avx512(x: &[f32], rows: usize, k: usize, w: &[f32], width: usize, block: &mut [f32]) {
    // SAFETY: the CPU has AVX-512 F (this function's own features).
    unsafe { tiles::<Avx512>(x, rows, k, w, width, block) }
}

/// The tiles over one panel, a column tile being two vectors of `S`.
///
/// # Safety
/// The CPU has `S`'s instruction set.
#[inline(always)]
unsafe fn tiles<S: Lanes>(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    width: usize,
    block: &mut [f32],
) {
    assert!(x.len() >= rows * k && w.len() >= k * width && block.len() >= rows * width);
    let cols = 2 * S::L;
    let tiled = width - width % cols;
    let chunks = tiled / cols;
    // The first row runs across the whole panel, the others in tiles of `cols` columns.
    let wide = rows > 0 && (1..=S::WIDE / 2).contains(&chunks);
    let first = usize::from(wide);
    let cuts = row_tiles(rows - first, S::MAX_ROWS).map(move |(r, n)| (r + first, n));
    let mut k0 = 0;
    while k0 < k {
        let k1 = (k0 + BLOCK).min(k);
        if wide {
            // SAFETY: row 0 of `x` and of `block`, inputs `k0..k1 ≤ k` and columns
            // `0..tiled ≤ width` lie inside the slices (asserted above); the caller vouches
            // for the CPU.
            unsafe {
                let (xp, out, wp) = (x.as_ptr(), block.as_mut_ptr(), w.as_ptr());
                match 2 * chunks {
                    2 => wide_tile::<S, 2>(xp, k0..k1, wp, width, out),
                    4 => wide_tile::<S, 4>(xp, k0..k1, wp, width, out),
                    6 => wide_tile::<S, 6>(xp, k0..k1, wp, width, out),
                    8 => wide_tile::<S, 8>(xp, k0..k1, wp, width, out),
                    10 => wide_tile::<S, 10>(xp, k0..k1, wp, width, out),
                    _ => wide_tile::<S, 12>(xp, k0..k1, wp, width, out),
                }
            }
        }
        // The next block's weights, into L2, a share before each column tile: the stream
        // prefetcher only runs ahead while the wide row walks, so without this the tiles'
        // arithmetic and the next block's fetch from memory take turns. Cold 13-row layers:
        // 27-31 GMAC/s without, 31-40 with (into L1 the same; two blocks ahead 28-35).
        let next = (k1 < k).then(|| {
            let bytes = ((k1 + BLOCK).min(k) - k1) * width * 4;
            (w[k1 * width..].as_ptr(), bytes.div_ceil(64))
        });
        let per_tile = next.map_or(0, |(_, lines)| lines.div_ceil(chunks.max(1)));
        for (t, c) in (0..tiled).step_by(cols).enumerate() {
            if let Some((start, lines)) = next {
                let first = t * per_tile;
                for line in first..(first + per_tile).min(lines) {
                    // SAFETY: a prefetch never faults; the address is inside the next block.
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T1>(start.cast::<i8>().add(line * 64));
                    }
                }
            }
            for (r, n) in cuts.clone() {
                // SAFETY: rows `r..r + n` of `x` and of `block`, inputs `k0..k1 ≤ k` and
                // columns `c..c + cols ≤ width` lie inside the slices (asserted above); the
                // caller vouches for the CPU.
                unsafe {
                    let (x, out) = (x.as_ptr().add(r * k), block.as_mut_ptr().add(r * width + c));
                    let w = w.as_ptr().add(c);
                    let ks = k0..k1;
                    match n {
                        1 => tile::<S, 1>(x, k, ks, w, width, out),
                        2 => tile::<S, 2>(x, k, ks, w, width, out),
                        3 => tile::<S, 3>(x, k, ks, w, width, out),
                        4 => tile::<S, 4>(x, k, ks, w, width, out),
                        5 => tile::<S, 5>(x, k, ks, w, width, out),
                        6 => tile::<S, 6>(x, k, ks, w, width, out),
                        7 => tile::<S, 7>(x, k, ks, w, width, out),
                        8 => tile::<S, 8>(x, k, ks, w, width, out),
                        9 => tile::<S, 9>(x, k, ks, w, width, out),
                        10 => tile::<S, 10>(x, k, ks, w, width, out),
                        11 => tile::<S, 11>(x, k, ks, w, width, out),
                        12 => tile::<S, 12>(x, k, ks, w, width, out),
                        _ => unreachable!("row tiles hold 1 to {} rows", S::MAX_ROWS),
                    }
                }
            }
        }
        k0 = k1;
    }
    super::leftover_columns(x, rows, k, w, width, tiled, block);
}

/// `rows` cut into tiles (first row, count) of at most `max` rows, as few and as even as
/// they come: for AVX2 (`max` 6) of 4 rows or more each from 8 rows on (7 is 4 + 3; fewer
/// are one tile). An iterator, not a list: this runs once per panel on one text's hot path.
fn row_tiles(rows: usize, max: usize) -> impl Iterator<Item = (usize, usize)> + Clone {
    let count = rows.div_ceil(max).max(1);
    let (base, extra) = (rows / count, rows % count);
    // Tile `t` starts after `t` tiles of `base` rows and the `extra` ones before it.
    (0..count)
        .map(move |t| (t * base + t.min(extra), base + usize::from(t < extra)))
        .filter(|&(_, n)| n > 0)
}

/// Rows `0..R` × columns `0..2·S::L` of `out` (rows `width` apart) over inputs `ks` of `x`
/// (rows `k` apart) and `w` (rows `width` apart): from zero for the first block, else adding
/// to what `out` holds.
///
/// # Safety
/// `x`, `w` and `out` must be valid for those rows, inputs and columns, and the CPU must have
/// `S`'s instruction set.
#[inline(always)]
unsafe fn tile<S: Lanes, const R: usize>(
    x: *const f32,
    k: usize,
    ks: std::ops::Range<usize>,
    w: *const f32,
    width: usize,
    out: *mut f32,
) {
    // SAFETY: every pointer below stays inside the ranges the caller vouches for.
    unsafe {
        let mut acc: [[S::V; 2]; R] = [[S::zero(); 2]; R];
        if ks.start > 0 {
            for (i, acc) in acc.iter_mut().enumerate() {
                acc[0] = S::load(out.add(i * width));
                acc[1] = S::load(out.add(i * width + S::L));
            }
        }
        let xs: [*const f32; R] = std::array::from_fn(|i| x.add(i * k + ks.start));
        for j in 0..ks.len() {
            // Each step's row from the start (a pointer stepped past the last row would leave
            // the panel).
            let wp = w.add((ks.start + j) * width);
            let w0 = S::load(wp);
            let w1 = S::load(wp.add(S::L));
            for i in 0..R {
                let b = S::splat(xs[i].add(j));
                acc[i][0] = S::fmadd(b, w0, acc[i][0]);
                acc[i][1] = S::fmadd(b, w1, acc[i][1]);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            S::store(out.add(i * width), acc[0]);
            S::store(out.add(i * width + S::L), acc[1]);
        }
    }
}

/// Row 0 × columns `0..V·S::L` of `out` over inputs `ks` of `x` and `w` (rows `width`
/// apart), walking each input's row of weights front to back: from zero for the first block,
/// else adding to what `out` holds.
///
/// # Safety
/// As for [`tile`].
#[inline(always)]
unsafe fn wide_tile<S: Lanes, const V: usize>(
    x: *const f32,
    ks: std::ops::Range<usize>,
    w: *const f32,
    width: usize,
    out: *mut f32,
) {
    // SAFETY: every pointer below stays inside the ranges the caller vouches for.
    unsafe {
        let mut acc: [S::V; V] = [S::zero(); V];
        if ks.start > 0 {
            for (v, acc) in acc.iter_mut().enumerate() {
                *acc = S::load(out.add(v * S::L));
            }
        }
        for kk in ks {
            let wp = w.add(kk * width);
            let b = S::splat(x.add(kk));
            for (v, acc) in acc.iter_mut().enumerate() {
                *acc = S::fmadd(b, S::load(wp.add(v * S::L)), *acc);
            }
        }
        for (v, acc) in acc.iter().enumerate() {
            S::store(out.add(v * S::L), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_cut_into_even_tiles_of_at_most_six_that_cover_each_row_once() {
        assert_eq!(row_tiles(1, 6).collect::<Vec<_>>(), [(0, 1)]);
        assert_eq!(row_tiles(3, 6).collect::<Vec<_>>(), [(0, 3)]);
        assert_eq!(row_tiles(6, 6).collect::<Vec<_>>(), [(0, 6)]);
        assert_eq!(row_tiles(7, 6).collect::<Vec<_>>(), [(0, 4), (4, 3)]);
        assert_eq!(
            row_tiles(13, 6).collect::<Vec<_>>(),
            [(0, 5), (5, 4), (9, 4)]
        );
        for rows in 8..=60 {
            let cuts: Vec<_> = row_tiles(rows, 6).collect();
            let mut next = 0;
            for &(first, n) in &cuts {
                assert_eq!(first, next, "{rows} rows: {cuts:?}");
                assert!((4..=Avx2::MAX_ROWS).contains(&n), "{rows} rows: {cuts:?}");
                next += n;
            }
            assert_eq!(next, rows, "{rows} rows: {cuts:?}");
        }
        // AVX-512's tiles of up to 12: one text's 12 rows after the wide one are one tile.
        assert_eq!(row_tiles(12, 12).collect::<Vec<_>>(), [(0, 12)]);
        assert_eq!(row_tiles(19, 12).collect::<Vec<_>>(), [(0, 10), (10, 9)]);
    }
}
