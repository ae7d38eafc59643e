//! The AVX2 few-row tiles, in intrinsics. One text's pass through a model whose f32 weights
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

use std::arch::x86_64::{
    __m256, _MM_HINT_T1, _mm_prefetch, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps,
    _mm256_setzero_ps, _mm256_storeu_ps,
};

/// Outputs per tile: two vectors of 8.
const COLS: usize = 16;

/// Inputs per block: a block's weights for one tile's columns (32 rows of 64 bytes) stay in
/// L1 while every row tile passes over them.
const BLOCK: usize = 32;

/// Most column tiles the first row's pass covers at once: 6 × 2 sums fill 12 registers, and
/// a panel is 96 outputs wide.
const WIDE_CHUNKS: usize = 6;

/// Most rows per tile: 6 × 2 sums, the 2 weight vectors and the broadcast input fill 15 of
/// the 16 registers.
const MAX_ROWS: usize = 6;

/// `block[r·width + c] = x_r · w_c` for `rows` rows of `x` (each `k` wide) over one panel `w`
/// (`k` rows of `width` floats).
#[target_feature(enable = "avx2,fma")]
pub(super) fn tiles(x: &[f32], rows: usize, k: usize, w: &[f32], width: usize, block: &mut [f32]) {
    assert!(x.len() >= rows * k && w.len() >= k * width && block.len() >= rows * width);
    let tiled = width - width % COLS;
    let chunks = tiled / COLS;
    // The first row runs across the whole panel, the others in tiles of `COLS` columns.
    let wide = rows > 0 && (1..=WIDE_CHUNKS).contains(&chunks);
    let first = usize::from(wide);
    let cuts = row_tiles(rows - first).map(move |(r, n)| (r + first, n));
    let mut k0 = 0;
    while k0 < k {
        let k1 = (k0 + BLOCK).min(k);
        if wide {
            // SAFETY: row 0 of `x` and of `block`, inputs `k0..k1 ≤ k` and columns
            // `0..tiled ≤ width` lie inside the slices (asserted above); the CPU has AVX2 and
            // FMA (this function's own features).
            unsafe {
                let (xp, out, wp) = (x.as_ptr(), block.as_mut_ptr(), w.as_ptr());
                match chunks {
                    1 => wide_tile::<2>(xp, k0..k1, wp, width, out),
                    2 => wide_tile::<4>(xp, k0..k1, wp, width, out),
                    3 => wide_tile::<6>(xp, k0..k1, wp, width, out),
                    4 => wide_tile::<8>(xp, k0..k1, wp, width, out),
                    5 => wide_tile::<10>(xp, k0..k1, wp, width, out),
                    _ => wide_tile::<12>(xp, k0..k1, wp, width, out),
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
        for (t, c) in (0..tiled).step_by(COLS).enumerate() {
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
                // columns `c..c + COLS ≤ width` lie inside the slices (asserted above); the
                // CPU has AVX2 and FMA (this function's own features).
                unsafe {
                    let (x, out) = (x.as_ptr().add(r * k), block.as_mut_ptr().add(r * width + c));
                    let w = w.as_ptr().add(c);
                    match n {
                        1 => tile::<1>(x, k, k0..k1, w, width, out),
                        2 => tile::<2>(x, k, k0..k1, w, width, out),
                        3 => tile::<3>(x, k, k0..k1, w, width, out),
                        4 => tile::<4>(x, k, k0..k1, w, width, out),
                        5 => tile::<5>(x, k, k0..k1, w, width, out),
                        6 => tile::<6>(x, k, k0..k1, w, width, out),
                        _ => unreachable!("row tiles hold 1 to {MAX_ROWS} rows"),
                    }
                }
            }
        }
        k0 = k1;
    }
    super::leftover_columns(x, rows, k, w, width, tiled, block);
}

/// `rows` cut into tiles (first row, count) of at most [`MAX_ROWS`] rows, as few and as even
/// as they come: of 4 rows or more each from 8 rows on (7 is 4 + 3; fewer are one tile).
/// An iterator, not a list: this runs once per panel on one text's hot path.
fn row_tiles(rows: usize) -> impl Iterator<Item = (usize, usize)> + Clone {
    let count = rows.div_ceil(MAX_ROWS).max(1);
    let (base, extra) = (rows / count, rows % count);
    // Tile `t` starts after `t` tiles of `base` rows and the `extra` ones before it.
    (0..count)
        .map(move |t| (t * base + t.min(extra), base + usize::from(t < extra)))
        .filter(|&(_, n)| n > 0)
}

/// Rows `0..R` × columns `0..COLS` of `out` (rows `width` apart) over inputs `ks` of `x`
/// (rows `k` apart) and `w` (rows `width` apart): from zero for the first block, else adding
/// to what `out` holds.
///
/// # Safety
/// `x`, `w` and `out` must be valid for those rows, inputs and columns, and the CPU must have
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize>(
    x: *const f32,
    k: usize,
    ks: std::ops::Range<usize>,
    w: *const f32,
    width: usize,
    out: *mut f32,
) {
    // SAFETY: every pointer below stays inside the ranges the caller vouches for.
    unsafe {
        let mut acc: [[__m256; 2]; R] = [[_mm256_setzero_ps(); 2]; R];
        if ks.start > 0 {
            for (i, acc) in acc.iter_mut().enumerate() {
                acc[0] = _mm256_loadu_ps(out.add(i * width));
                acc[1] = _mm256_loadu_ps(out.add(i * width + 8));
            }
        }
        let xs: [*const f32; R] = std::array::from_fn(|i| x.add(i * k + ks.start));
        for j in 0..ks.len() {
            // Each step's row from the start (a pointer stepped past the last row would leave
            // the panel).
            let wp = w.add((ks.start + j) * width);
            let w0 = _mm256_loadu_ps(wp);
            let w1 = _mm256_loadu_ps(wp.add(8));
            for i in 0..R {
                let b = _mm256_broadcast_ss(&*xs[i].add(j));
                acc[i][0] = _mm256_fmadd_ps(b, w0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(b, w1, acc[i][1]);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(i * width), acc[0]);
            _mm256_storeu_ps(out.add(i * width + 8), acc[1]);
        }
    }
}

/// Row 0 × columns `0..V·8` of `out` over inputs `ks` of `x` and `w` (rows `width` apart),
/// walking each input's row of weights front to back: from zero for the first block, else
/// adding to what `out` holds.
///
/// # Safety
/// As for [`tile`].
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn wide_tile<const V: usize>(
    x: *const f32,
    ks: std::ops::Range<usize>,
    w: *const f32,
    width: usize,
    out: *mut f32,
) {
    // SAFETY: every pointer below stays inside the ranges the caller vouches for.
    unsafe {
        let mut acc: [__m256; V] = [_mm256_setzero_ps(); V];
        if ks.start > 0 {
            for (v, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_loadu_ps(out.add(v * 8));
            }
        }
        for kk in ks {
            let wp = w.add(kk * width);
            let b = _mm256_broadcast_ss(&*x.add(kk));
            for (v, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(b, _mm256_loadu_ps(wp.add(v * 8)), *acc);
            }
        }
        for (v, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(v * 8), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_cut_into_even_tiles_of_at_most_six_that_cover_each_row_once() {
        assert_eq!(row_tiles(1).collect::<Vec<_>>(), [(0, 1)]);
        assert_eq!(row_tiles(3).collect::<Vec<_>>(), [(0, 3)]);
        assert_eq!(row_tiles(6).collect::<Vec<_>>(), [(0, 6)]);
        assert_eq!(row_tiles(7).collect::<Vec<_>>(), [(0, 4), (4, 3)]);
        assert_eq!(row_tiles(13).collect::<Vec<_>>(), [(0, 5), (5, 4), (9, 4)]);
        for rows in 8..=60 {
            let cuts: Vec<_> = row_tiles(rows).collect();
            let mut next = 0;
            for &(first, n) in &cuts {
                assert_eq!(first, next, "{rows} rows: {cuts:?}");
                assert!((4..=MAX_ROWS).contains(&n), "{rows} rows: {cuts:?}");
                next += n;
            }
            assert_eq!(next, rows, "{rows} rows: {cuts:?}");
        }
    }
}
