//! `x·Wᵀ + b` for a few rows (one short text), where `gemm`'s packing of its operands on every
//! call would cost several times the arithmetic: each compute thread takes whole weight
//! panels, streams each one from memory once, and runs every row over it in register tiles.

#[cfg(target_arch = "x86_64")]
mod x86;

use super::SendPtr;
use super::panels::{Panels, WIDTH};
use crate::engine::kernels::elementwise::add_into;
use crate::engine::kernels::tasks;
#[cfg(target_arch = "x86_64")]
use crate::engine::kernels::{Isa, isa};

/// The fewest rows a chunk is cut to when the panels are too few for the threads: AVX2's
/// tile height, so a chunk still fills a tile.
const CHUNK_ROWS: usize = 6;

/// `out = x·Wᵀ + b (+ residual)` for `rows` rows of `x` (each `k` wide) over the panels of a
/// layer of `n` outputs.
pub fn forward(
    x: &[f32],
    rows: usize,
    panels: &Panels,
    bias: &[f32],
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    let (k, n) = (panels.inputs(), bias.len());
    assert!(x.len() == rows * k && out.len() == rows * n);
    assert!(residual.is_none_or(|r| r.len() == rows * n));
    let dst = SendPtr(out.as_mut_ptr());
    // One task per panel, or per panel and chunk of rows when the panels are too few for the
    // threads (a 384-wide layer is 4 panels). Each writes its own rows and columns of `out`
    // with the bias (and residual) as it finishes, so there is no batch-wide buffer to
    // allocate and no serial pass after.
    tasks::for_each_chunk(
        rows,
        panels.count(),
        CHUNK_ROWS,
        rayon::current_num_threads(),
        |first_row, rows, p| {
            let panel = panels.panel_at(p * WIDTH);
            let (first, width) = (panel.first, panel.width);
            let mut block = vec![0f32; rows * width];
            let x = &x[first_row * k..(first_row + rows) * k];
            tile_rows(x, rows, k, panel.data, width, &mut block);
            for (r, src) in block.chunks_exact(width).enumerate() {
                let r = first_row + r;
                // SAFETY: columns `first..first + width` of row `r` lie inside `out` (`rows × n`,
                // checked above), and only this panel's task writes them.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(dst.get().add(r * n + first), width) };
                add_into(dst, src, &bias[first..first + width]);
                if let Some(res) = residual {
                    let res = &res[r * n + first..r * n + first + width];
                    dst.iter_mut().zip(res).for_each(|(o, r)| *o += r);
                }
            }
        },
    );
}

/// `block[r·width + c] = x_r · w_c` for `rows` rows of `x` over one panel `w` (`k` rows of
/// `width` floats), in tiles of `R` rows × `V` vectors of `L` outputs: each input broadcasts
/// a row's value against the panel's row, `R·V` independent accumulators hide the
/// multiply-add latency, and each weight loaded serves `R` rows.
/// `FMA`: whether the CPU fuses multiply-add (without it `mul_add` is a library call).
#[inline(always)]
fn tiles<const L: usize, const R: usize, const V: usize, const FMA: bool, const KB: usize>(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    width: usize,
    block: &mut [f32],
) {
    let tiled = width - width % (V * L);
    // The panel in blocks of `KB` of its rows, each kept in L1 while every tile of rows and
    // columns passes over it, the tiles' sums carried in `block` from one block to the next,
    // and the next block prefetched by the first row tile meanwhile. One text's pass reads
    // every weight once and waits on memory: column chunk by column chunk (a stride through
    // the whole panel) the AVX-512 tiles took 5.6 ms for a MiniLM pass of 13 tokens, in blocks
    // of 64 rows 3.5 ms (AMD EPYC Zen 4, 2 threads). x86 runs tiles of its own ([`x86`]),
    // which also walk each block front to back: on the same Zen 4 they took the pass from
    // 3.8-4.1 ms to 3.0-3.2 ms. Only the portable build (aarch64) runs these.
    let mut k0 = 0;
    while k0 < k {
        let ks = k0..(k0 + KB).min(k);
        let mut c = 0;
        while c < tiled {
            let mut r = 0;
            while r + R <= rows {
                tile::<L, R, V, FMA, KB>(x, r, k, ks.clone(), w, width, c, block);
                r += R;
            }
            // The last rows in smaller tiles, so none is computed twice.
            if R > 4 && rows - r >= 4 {
                tile::<L, 4, V, FMA, KB>(x, r, k, ks.clone(), w, width, c, block);
                r += 4;
            }
            match rows - r {
                0 => {}
                1 => tile::<L, 1, V, FMA, KB>(x, r, k, ks.clone(), w, width, c, block),
                2 => tile::<L, 2, V, FMA, KB>(x, r, k, ks.clone(), w, width, c, block),
                3 => tile::<L, 3, V, FMA, KB>(x, r, k, ks.clone(), w, width, c, block),
                left => unreachable!("{left} rows left after tiles of {R} and 4"),
            }
            c += V * L;
        }
        k0 = ks.end;
    }
    leftover_columns(x, rows, k, w, width, tiled, block);
}

/// Columns `tiled..width` of `block`, which the tiles leave (a narrow last panel).
fn leftover_columns(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    width: usize,
    tiled: usize,
    block: &mut [f32],
) {
    for c in tiled..width {
        for r in 0..rows {
            let xr = &x[r * k..][..k];
            block[r * width + c] = (0..k).map(|kk| xr[kk] * w[kk * width + c]).sum();
        }
    }
}

/// Rows `r..r + R` × columns `c..c + V·L` of `block`, over the panel's rows `ks` (`k` inputs
/// in all): from zero for the first block, else adding to what `block` holds; the first row
/// tile (`r == 0`) prefetches the same columns of the next block of `KB` rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<const L: usize, const R: usize, const V: usize, const FMA: bool, const KB: usize>(
    x: &[f32],
    r: usize,
    k: usize,
    ks: std::ops::Range<usize>,
    w: &[f32],
    width: usize,
    c: usize,
    block: &mut [f32],
) {
    // The first row tile of a column chunk fetches ahead for the others.
    let prefetch_next = r == 0;
    let xs: [&[f32]; R] = std::array::from_fn(|i| &x[(r + i) * k..][..k]);
    let mut acc = [[[0f32; L]; V]; R];
    if ks.start > 0 {
        for (i, acc) in acc.iter_mut().enumerate() {
            let src = &block[(r + i) * width + c..][..V * L];
            for (v, a) in acc.iter_mut().enumerate() {
                a.copy_from_slice(&src[v * L..(v + 1) * L]);
            }
        }
    }
    for (kk, wrow) in w[ks.start * width..ks.end * width]
        .chunks_exact(width)
        .enumerate()
    {
        let kk = ks.start + kk;
        if prefetch_next && kk + KB < k {
            // Every 64 bytes of the tile's columns, the next block's row.
            let next = &w[(kk + KB) * width + c..][..V * L];
            for line in next.chunks(16) {
                super::super::prefetch(line.as_ptr());
            }
        }
        let (wv, _) = wrow[c..c + V * L].as_chunks::<L>();
        for i in 0..R {
            let xv = xs[i][kk];
            for v in 0..V {
                broadcast_madd::<L, FMA>(&mut acc[i][v], xv, &wv[v]);
            }
        }
    }
    for i in 0..R {
        let dst = &mut block[(r + i) * width + c..][..V * L];
        for v in 0..V {
            dst[v * L..(v + 1) * L].copy_from_slice(&acc[i][v]);
        }
    }
}

#[inline(always)]
fn broadcast_madd<const L: usize, const FMA: bool>(acc: &mut [f32; L], x: f32, w: &[f32; L]) {
    for l in 0..L {
        acc[l] = if FMA {
            x.mul_add(w[l], acc[l])
        } else {
            x * w[l] + acc[l]
        };
    }
}

/// Anything else: 4 rows × 2 groups of 8 (two NEON or SSE registers each); aarch64 always
/// fuses multiply-add.
fn portable(x: &[f32], rows: usize, k: usize, w: &[f32], width: usize, b: &mut [f32]) {
    tiles::<8, 4, 2, { cfg!(target_arch = "aarch64") }, 64>(x, rows, k, w, width, b)
}

/// [`tiles`] for the CPU at hand (within `CAXTON_ISA`).
fn tile_rows(x: &[f32], rows: usize, k: usize, w: &[f32], width: usize, block: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match isa() {
        // SAFETY: `isa` found every feature the function was compiled for.
        Isa::Avx512 => return unsafe { x86::avx512(x, rows, k, w, width, block) },
        // SAFETY: as above.
        Isa::Avx2 => return unsafe { x86::avx2(x, rows, k, w, width, block) },
        Isa::Baseline => {}
    }
    portable(x, rows, k, w, width, block)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature every tile shape is compiled to.
    type TileFn = fn(&[f32], usize, usize, &[f32], usize, &mut [f32]);

    /// Every tile shape this CPU can run, whatever `CAXTON_ISA` says, so the AVX2 and portable
    /// tiles are proved on an AVX-512 machine too.
    fn runnable() -> Vec<(&'static str, TileFn)> {
        let all: Vec<(&'static str, TileFn)> = vec![("portable", portable)];
        #[cfg(target_arch = "x86_64")]
        let all = {
            let mut all = all;
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA.
                all.push(("avx2", |x, rows, k, w, width, b| unsafe {
                    x86::avx2(x, rows, k, w, width, b)
                }));
            }
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the CPU has every feature `avx512` is compiled for.
                all.push(("avx512", |x, rows, k, w, width, b| unsafe {
                    x86::avx512(x, rows, k, w, width, b)
                }));
            }
            all
        };
        all
    }

    #[test]
    fn every_tile_shape_computes_the_product_of_each_row_on_ragged_shapes() {
        // Widths: a whole panel, one narrower than a tile, one with a tile and a remainder,
        // and 1, 3, 4 and 5 tiles of 16 (each width of AVX2's first-row pass); row counts
        // below, at and between the tile heights (up to 6 for AVX2, 12 AVX-512, 4 portable),
        // with every remainder each leaves; 150 inputs span several blocks of the panel.
        let widths = [
            (37, 96),
            (19, 7),
            (33, 45),
            (150, 100),
            (40, 16),
            (20, 50),
            (70, 64),
            (35, 80),
        ];
        for (k, width) in widths {
            let w: Vec<f32> = (0..k * width).map(|i| (i as f32 * 0.37).sin()).collect();
            for rows in [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 14, 15, 17, 20, 25] {
                let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.11).cos()).collect();
                for (name, tile) in runnable() {
                    let mut block = vec![f32::NAN; rows * width];
                    tile(&x, rows, k, &w, width, &mut block);
                    for r in 0..rows {
                        for c in 0..width {
                            let want: f32 = (0..k).map(|i| x[r * k + i] * w[i * width + c]).sum();
                            let got = block[r * width + c];
                            assert!(
                                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{name}: k {k}, width {width}, rows {rows}, ({r}, {c}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
