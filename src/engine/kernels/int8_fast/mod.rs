//! int8-fast linear layers (`models.precision: int8-fast`): 8-bit activations × int8 weights,
//! the arithmetic the CPUs' 8-bit dot products multiply (`vpdpbusd` on AVX-512 VNNI and
//! AVX-VNNI, `vpmaddubsw` on AVX2, `sdot` on NEON with the dot-product extension, `smull` on
//! NEON without it, and a portable loop).
//!
//! The scheme, chosen by simulating candidates in torch on the real weights and the reference
//! texts (a by-hand study, not kept), then measured in the engine: MiniLM's worst reference
//! text 0.9985 against sentence-transformers, MPNet's 0.9989, and with AVX2's limited pairs
//! 0.9975 and 0.9987 (`tests/fidelity_engine.rs`, `tests/fidelity_mpnet.rs`). The
//! feed-forward block's output layer is not here: it runs on int8's 16-bit activations
//! (`Layer::quantize_fast` says why).
//! - smoothing (SmoothQuant), where the caller measured the inputs: input channel `k` is
//!   divided by `s[k]` and the weights of that input multiplied by it, with
//!   `s[k] = sqrt(max|x_k| / max|w_k|)` from a calibration pass at load ([`smoothing`]);
//! - rotation: each block of [`ROTATION`] inputs is turned by a Hadamard matrix, the
//!   activations as they are quantized and the weights once at packing (`(x·H)(H·Wᵀ)/n =
//!   x·Wᵀ`). It spreads a token's few large channels over the whole block, so the 8-bit steps
//!   of the rest are finer: without it MiniLM's worst text fell to 0.9971 with the feed-
//!   forward output layer in 16 bits, and to 0.9952 with it in 8;
//! - weights: int8, one scale per output, over the whole input row, so a product sums in
//!   int32 from the first input to the last and is scaled once (blocks of scales would cost a
//!   conversion per block and the registers that hold the float sums). For AVX2 the weights
//!   are packed with their pairs limited ([`Kernel::limits_pairs`], [`Packed::new`]);
//! - activations: per token (row), asymmetric: the row's range `[min(0, lo), max(0, hi)]` onto
//!   0..=255, so the one-sided distributions after an activation lose no bit to a sign;
//! - the zero point is taken out after the product: `Σ (q − z)·w = Σ q·w − z·Σ w`, with each
//!   output's `Σ w` computed once at packing.
//!
//! Layout: outputs in panels of [`NR`]; a panel holds, group by group of [`GROUP`] inputs, the
//! group's 4 weights of each of its 16 outputs side by side (`w[g][c][0..4]`): one 64-byte
//! row is what `vpdpbusd` multiplies by one broadcast group of a row's activations (a zmm, or
//! two ymm, or four NEON registers). Inputs are padded to whole [`ROW_ALIGN`]s with zero
//! weights, outputs to whole panels. The kernels ([`x86`], [`neon`], and the portable one
//! here) sum a tile of rows × panels in int32; [`finish`] turns the sums into floats.

#[cfg(target_arch = "aarch64")]
mod neon;
mod output;
mod pack;
mod quantize;
mod rotate;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::memory::mapped::Mapped;
use rayon::prelude::*;

use super::Cap;
use super::tasks;
use output::Columns;
pub use quantize::RowQuant;
use quantize::Scheme;

/// Outputs in a panel.
pub const NR: usize = 16;
/// Inputs one lane of a dot product sums (`vpdpbusd`, `sdot`).
pub const GROUP: usize = 4;
/// Inputs of a row are padded to a multiple of this (NEON loads 16 activations at a time).
const ROW_ALIGN: usize = 16;
/// Bytes of one group of one panel.
const PANEL_GROUP: usize = GROUP * NR;
/// The most rows a kernel tile takes.
pub const MAX_ROWS: usize = 6;
/// The most panels a kernel tile takes.
pub const MAX_PANELS: usize = 4;
/// Rows of tasks: a multiple of every kernel's tile rows (6, 4, 2), so only a pass's last
/// task has a ragged tile.
const TASK_ROWS: usize = 48;
/// Below this many multiply-adds a product stays on the calling thread.
const PARALLEL_MACS: usize = 1 << 19;
/// The largest block of inputs one Hadamard rotation turns (a layer whose width is no
/// multiple of it takes the largest power of two that divides its width). 128 measured best
/// of 32, 64 and 128 on MiniLM (whose width, 384, takes no larger power of two).
pub const ROTATION: usize = 128;

/// The rotation block of a layer of `inputs`: the largest power of two up to [`ROTATION`]
/// that divides it.
fn rotation_block(inputs: usize) -> usize {
    let mut b = ROTATION;
    while b > 1 && !inputs.is_multiple_of(b) {
        b /= 2;
    }
    b
}

/// The int8-fast kernels, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI: `vpdpbusd` on zmm, tiles of 6 rows × 64 outputs.
    Avx512Vnni,
    /// AVX-VNNI: `vpdpbusd` on ymm, tiles of 6 rows × 16 outputs.
    AvxVnni,
    /// AVX2: `vpmaddubsw` into int16 pairs, then `vpmaddwd` by ones into int32, tiles of 4
    /// rows × 16 outputs; it takes weights packed with their pairs limited.
    Avx2,
    /// aarch64 with the dot-product extension: `sdot` by lane, tiles of 4 rows × 16 outputs.
    NeonDot,
    /// aarch64 without it: `smull` and `sadalp`, tiles of 2 rows × 16 outputs.
    Neon,
    /// Plain Rust, for every other CPU, and the reference the others are tested against.
    Portable,
}

impl Kernel {
    /// Its name in logs, `GET /api/models` and `CAXTON_ISA`-forced test runs.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::NeonDot => "neon-dotprod",
            Kernel::Neon => "neon",
            Kernel::Portable => "portable",
        }
    }

    /// Rows and panels of a tile.
    fn tile(self) -> (usize, usize) {
        match self {
            Kernel::Avx512Vnni => (6, 4),
            Kernel::AvxVnni => (6, 1),
            Kernel::Avx2 | Kernel::NeonDot | Kernel::Portable => (4, 1),
            Kernel::Neon => (2, 1),
        }
    }

    /// Whether the kernel multiplies signed activations (`q − 128`): NEON's signed products;
    /// the others take them unsigned.
    fn signed(self) -> bool {
        matches!(self, Kernel::NeonDot | Kernel::Neon)
    }

    /// Whether the kernel sums two products in int16 before it widens them (AVX2's
    /// `vpmaddubsw`, which saturates there): its weights must be packed so that no pair of
    /// inputs `2j, 2j + 1` of an output holds magnitudes over 128 in all (255 × 128 < 2¹⁵).
    pub fn limits_pairs(self) -> bool {
        matches!(self, Kernel::Avx2)
    }

    /// The best kernel this CPU runs within `CAXTON_ISA`, decided once.
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            Kernel::here()
                .into_iter()
                .find(|k| k.cap() <= super::cap())
                .unwrap_or(Kernel::Portable)
        })
    }

    /// The least [`Cap`] that allows this kernel.
    fn cap(self) -> Cap {
        match self {
            Kernel::Avx512Vnni => Cap::Avx512,
            Kernel::AvxVnni => Cap::AvxVnni,
            Kernel::Avx2 => Cap::Avx2,
            Kernel::NeonDot => Cap::NeonDot,
            Kernel::Neon => Cap::Neon,
            Kernel::Portable => Cap::Portable,
        }
    }

    /// Every kernel this CPU can run, best first, whatever the cap (tests run them all).
    pub fn here() -> Vec<Kernel> {
        let mut k = Vec::new();
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                k.push(Kernel::NeonDot);
            }
            k.push(Kernel::Neon);
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                k.push(Kernel::Avx512Vnni);
            }
            if has!("avxvnni") && has!("avx2") {
                k.push(Kernel::AvxVnni);
            }
            if has!("avx2") {
                k.push(Kernel::Avx2);
            }
        }
        k.push(Kernel::Portable);
        k
    }
}

/// The smoothing of a layer's inputs (SmoothQuant, α = ½): `s[k] = sqrt(max|x_k| / max|w_k|)`
/// from the largest magnitude each input channel took in the calibration pass and the
/// largest weight that multiplies it (`wt`: `Wᵀ`, `[inputs, outputs]`). A channel the pass
/// never saw, or whose weights are all zero, keeps 1. α = ½ measured best of 0.3 to 0.8 on
/// MiniLM's reference texts (0.9973 at 0.4, 0.9978 at 0.5, 0.9971 at 0.6).
pub fn smoothing(act_max: &[f32], wt: &[f32], inputs: usize, outputs: usize) -> Vec<f32> {
    assert!(act_max.len() == inputs && wt.len() == inputs * outputs);
    act_max
        .iter()
        .zip(wt.chunks_exact(outputs.max(1)))
        .map(|(&a, row)| {
            let w = row.iter().fold(0f32, |m, &v| m.max(v.abs()));
            let s = (a / w).sqrt();
            if a > 0.0 && w > 0.0 && s.is_finite() {
                s.clamp(1e-4, 1e4)
            } else {
                1.0
            }
        })
        .collect()
}

/// A linear layer's weights for the int8-fast kernels.
pub struct Packed {
    inputs: usize,
    outputs: usize,
    /// Inputs padded to [`ROW_ALIGN`]: the stride of a quantized activation row.
    padded: usize,
    panels: usize,
    /// `[panel][group][output][GROUP]`.
    weights: Mapped<i8>,
    /// `[panel × NR]`: what one unit of an output's weights is worth.
    scales: Mapped<f32>,
    /// `[panel × NR]`: the sum of each output's quantized weights (the zero point's share).
    sums: Mapped<i32>,
    /// `1 / s[k]` of [`smoothing`], per input.
    unsmooth: Mapped<f32>,
    /// The rotation's block ([`rotation_block`]).
    rotation: usize,
    /// Whether every pair of inputs `2j, 2j + 1` of an output sums to at most 128 in
    /// magnitude ([`Kernel::limits_pairs`]).
    pairs_limited: bool,
}

impl Packed {
    /// Quantizes `Wᵀ` (`[inputs, outputs]` row-major), its inputs first multiplied by
    /// `smooth` (one per input; empty: none) and rotated, symmetric per output: the output's
    /// largest magnitude becomes 127. With `limit_pairs` (for a kernel that
    /// [`Kernel::limits_pairs`]) the output's step is widened until its largest pair of
    /// magnitudes (inputs `2j, 2j + 1`) is 128 instead. MiniLM in `bench/int8_fast_study.py`:
    /// worst reference text 0.99789 and 98.3% of the top-10 neighbours kept, against
    /// 0.99870 / 98.1% unlimited; shrinking just the 5.4% of pairs over 128 fell to 0.900 /
    /// 86.3%, and `vpmaddubsw` left to saturate them to 0.9932 / 94.5% in the engine.
    pub fn new(
        wt: &[f32],
        inputs: usize,
        outputs: usize,
        smooth: &[f32],
        limit_pairs: bool,
    ) -> Packed {
        assert_eq!(wt.len(), inputs * outputs);
        assert!(smooth.is_empty() || smooth.len() == inputs);
        let s = |k: usize| smooth.get(k).copied().unwrap_or(1.0);
        let rotation = rotation_block(inputs);
        let turned = pack::turn(wt, outputs, rotation, s);
        let padded = inputs.div_ceil(ROW_ALIGN) * ROW_ALIGN;
        let groups = padded / GROUP;
        let panels = outputs.div_ceil(NR);
        let max = pack::output_max(&turned, outputs, limit_pairs);
        let scales = pack::scales(&max, panels);
        let mut weights = pack::quantize(&turned, &max, outputs, panels, groups);
        if limit_pairs {
            pack::limit_pairs(&mut weights);
        }
        let sums = pack::sums(&weights, panels, groups);
        Packed {
            inputs,
            outputs,
            padded,
            panels,
            weights,
            scales,
            sums,
            unsmooth: (0..inputs).map(|k| 1.0 / s(k)).collect(),
            rotation,
            pairs_limited: limit_pairs,
        }
    }

    /// Bytes of the weights, scales, sums and smoothing.
    pub fn bytes(&self) -> usize {
        self.weights.len() + (self.scales.len() + self.sums.len() + self.unsmooth.len()) * 4
    }

    /// `out = x·Wᵀ + bias (+ residual)` for `rows` rows into rows of `ldo` floats (`out` and
    /// `residual` alike), of which this layer writes the first `outputs`, with `kernel`,
    /// which this CPU must run ([`Kernel::here`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_strided(
        &self,
        kernel: Kernel,
        x: &[f32],
        rows: usize,
        bias: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
        ldo: usize,
    ) {
        let (k, n) = (self.inputs, self.outputs);
        if rows == 0 {
            return;
        }
        let span = (rows - 1) * ldo + n;
        assert!(ldo >= n && x.len() >= rows * k && out.len() >= span && bias.len() == n);
        assert!(residual.is_none_or(|r| r.len() >= span));
        assert!(
            self.pairs_limited || !kernel.limits_pairs(),
            "the {} kernel would saturate on weights packed without their pairs limited",
            kernel.name()
        );
        assert!(
            Kernel::here().contains(&kernel),
            "the {} kernel does not run on this CPU",
            kernel.name()
        );
        // Taken out of the thread's slot, not borrowed in it: while this thread waits for the
        // parallel tiles it may run another pass's call, which finds the slot empty.
        let (mut a, mut quant) = ACTIVATIONS.with_borrow_mut(std::mem::take);
        {
            let scheme = Scheme {
                unsmooth: &self.unsmooth,
                rotation: self.rotation,
                signed: kernel.signed(),
            };
            let lda = self.padded;
            quantize::quantize_rows(&x[..rows * k], (k, lda), scheme, &mut a, &mut quant);
            let (a, quant) = (&a[..], &quant[..]);
            let out = Out(out.as_mut_ptr());
            let (tile_rows, most_panels) = kernel.tile();
            let row_tasks = rows.div_ceil(TASK_ROWS);
            let threads = rayon::current_num_threads();
            // Fewer panels a tile when whole tiles leave threads idle (one text on many cores).
            let tile_panels = tasks::units_per_task(self.panels, most_panels, row_tasks, threads);
            let panel_tasks = self.panels.div_ceil(tile_panels);
            let task = |t: usize| {
                // Panel groups outer within a row block: a tile's panels stay in L1 while the
                // block's rows pass over them.
                let (rt, pt) = (t / panel_tasks, t % panel_tasks);
                let row_range = rt * TASK_ROWS..((rt + 1) * TASK_ROWS).min(rows);
                let p0 = pt * tile_panels;
                let np = tile_panels.min(self.panels - p0);
                let mut acc = [[0i32; NR * MAX_PANELS]; MAX_ROWS];
                let mut r0 = row_range.start;
                while r0 < row_range.end {
                    let mr = tile_rows.min(row_range.end - r0);
                    let cols = p0 * NR..(p0 * NR + np * NR).min(n);
                    super::prefetch_tile(out.0, residual, r0..r0 + mr, ldo, cols);
                    self.tile(kernel, &a[r0 * lda..], lda, mr, p0, np, &mut acc);
                    // SAFETY: tasks cover disjoint (row, panel) blocks, so each writes only
                    // its own rows' outputs of its own panels.
                    unsafe { self.finish(&acc[..mr], r0, p0, np, quant, bias, residual, out, ldo) };
                    r0 += mr;
                }
            };
            let tasks = row_tasks * panel_tasks;
            if rows * k * n < PARALLEL_MACS || tasks == 1 {
                (0..tasks).for_each(task);
            } else {
                (0..tasks).into_par_iter().for_each(task);
            }
        }
        ACTIVATIONS.with_borrow_mut(|slot| *slot = (a, quant));
    }

    /// One tile: `acc[r][c]` = the int32 dot of row `r` of `a` (rows `lda` bytes apart) with
    /// output `c` of panels `p0..p0 + np`, for `mr` rows.
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        kernel: Kernel,
        a: &[u8],
        lda: usize,
        mr: usize,
        p0: usize,
        np: usize,
        acc: &mut [[i32; NR * MAX_PANELS]; MAX_ROWS],
    ) {
        let (tile_rows, tile_panels) = kernel.tile();
        let groups = self.padded / GROUP;
        let stride = groups * PANEL_GROUP;
        assert!(mr >= 1 && mr <= tile_rows && np >= 1 && np <= tile_panels);
        assert!(a.len() >= (mr - 1) * lda + self.padded);
        let w = &self.weights[p0 * stride..(p0 + np) * stride];
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `forward_strided` checked the CPU runs the kernel; the slices hold the
            // tile's rows and panels (asserted above).
            Kernel::Avx512Vnni | Kernel::AvxVnni | Kernel::Avx2 => unsafe {
                x86::tile(kernel, a.as_ptr(), lda, mr, w, np, groups, acc)
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above.
            Kernel::NeonDot | Kernel::Neon => unsafe {
                neon::tile(kernel, a.as_ptr(), lda, mr, w, groups, acc)
            },
            _ => tile_portable(kernel, a, lda, mr, w, np, groups, acc),
        }
    }

    /// Writes a tile's rows for the panels' real outputs, in rows of `ldo` (see [`output`]).
    ///
    /// # Safety
    /// `out` must hold the rows' `outputs` floats at stride `ldo`, and no other thread may
    /// write this tile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn finish(
        &self,
        acc: &[[i32; NR * MAX_PANELS]],
        r0: usize,
        p0: usize,
        np: usize,
        quant: &[RowQuant],
        bias: &[f32],
        residual: Option<&[f32]>,
        out: Out,
        ldo: usize,
    ) {
        let c0 = p0 * NR;
        let width = (np * NR).min(self.outputs - c0);
        let cols = c0..c0 + width;
        let columns = Columns {
            wsums: &self.sums[cols.clone()],
            scales: &self.scales[cols.clone()],
            bias: &bias[cols],
        };
        #[cfg(target_arch = "x86_64")]
        if width.is_multiple_of(8) && super::isa() != super::Isa::Baseline {
            let at = r0 * ldo + c0;
            // SAFETY: the CPU has AVX2 (`isa`); the tile's rows and columns lie inside `out`
            // and `residual` (the caller's contract, and `forward_strided` checked the
            // residual's length), and this task alone writes them.
            unsafe {
                output::write_tile_avx2(
                    acc,
                    &quant[r0..r0 + acc.len()],
                    columns,
                    out.0.add(at),
                    ldo,
                    residual.map(|res| res.as_ptr().add(at)),
                )
            };
            return;
        }
        for (i, sums) in acc.iter().enumerate() {
            let r = r0 + i;
            // SAFETY: row `r` < rows and the columns lie inside `out` (the caller's
            // contract); this tile is written by this task alone.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add(r * ldo + c0), width) };
            let res = residual.map(|res| &res[r * ldo + c0..r * ldo + c0 + width]);
            output::write_row(dst, &sums[..width], quant[r], columns, res);
        }
    }
}

/// The output buffer, shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint tiles (see `forward_strided`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Frees this thread's activation buffers (a large pass's are megabytes). The encoder calls
/// it on every pool thread once its model is idle, as it frees its own pass buffers.
pub fn release_thread_buffers() {
    ACTIVATIONS.with_borrow_mut(|(a, q)| {
        *a = Vec::new();
        *q = Vec::new();
    });
}

thread_local! {
    /// The quantized activations of the call in progress and how each row was quantized,
    /// kept for the next call on this thread (see [`release_thread_buffers`]).
    static ACTIVATIONS: std::cell::RefCell<(Vec<u8>, Vec<RowQuant>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The portable kernel: plain loops over int32 sums (for CPUs with neither AVX2 nor NEON, and
/// the reference the others are tested against). Reads activations as `kernel` stores them.
#[allow(clippy::too_many_arguments)]
fn tile_portable(
    kernel: Kernel,
    a: &[u8],
    lda: usize,
    mr: usize,
    w: &[i8],
    np: usize,
    groups: usize,
    acc: &mut [[i32; NR * MAX_PANELS]; MAX_ROWS],
) {
    let signed = kernel.signed();
    for (r, acc) in acc.iter_mut().enumerate().take(mr) {
        let row = &a[r * lda..r * lda + groups * GROUP];
        for p in 0..np {
            let panel = &w[p * groups * PANEL_GROUP..(p + 1) * groups * PANEL_GROUP];
            let mut sums = [0i32; NR];
            for (ag, wg) in row.chunks_exact(GROUP).zip(panel.chunks_exact(PANEL_GROUP)) {
                let av: [i32; GROUP] = std::array::from_fn(|i| match signed {
                    true => i32::from(ag[i] as i8),
                    false => i32::from(ag[i]),
                });
                for (s, wc) in sums.iter_mut().zip(wg.chunks_exact(GROUP)) {
                    *s += av[0] * i32::from(wc[0])
                        + av[1] * i32::from(wc[1])
                        + av[2] * i32::from(wc[2])
                        + av[3] * i32::from(wc[3]);
                }
            }
            acc[p * NR..(p + 1) * NR].copy_from_slice(&sums);
        }
    }
}

#[cfg(test)]
mod tests;
