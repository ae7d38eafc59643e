//! int8 linear layers (`models.precision: int8`): weights quantized once, at load, to int8 with
//! one scale per output and block of [`BLOCK`] inputs; activations quantized at every call to
//! int16 with one scale per row (token); products summed exactly in int32 within a block, the
//! blocks in f32. Everything else in the pass stays f32.
//!
//! Why 16-bit activations and not 8: on the reference texts, MiniLM with 8-bit activations
//! (blocks of 32, and even with the outlier channels kept in f32) reaches at best a min cosine
//! of 0.9989 to 0.9991 against sentence-transformers; the 0.999 the appliance promises needs
//! the activations' error far below the weights'. With int16 activations the weights decide,
//! and 8-bit weights in blocks of 32 stay above it (measured in `tests/fidelity.rs`). The
//! arithmetic is then `vpmaddwd` (AVX2) or `vpdpwssd` (AVX-VNNI, AVX-512 VNNI): per
//! instruction as many multiply-adds as int8 × int8 without VNNI, and the weights are a
//! quarter of f32's bytes, which is what a pass over a few texts waits for.
//!
//! Layout: the outputs are cut into panels of [`NR`]; a panel holds, block by block, 16 pairs
//! of inputs × 16 outputs × 2 int8 (`w[2j][c]`, `w[2j+1][c]` side by side), so one 32-byte
//! load is a register of 16 outputs × 2 inputs, multiplied by one broadcast pair of
//! activations. The kernels ([`x86`], and the portable one here) compute a tile of up to
//! [`MAX_ROWS`] rows × up to [`MAX_PANELS`] panels; [`quantize`] turns the activations to
//! int16; this file cuts the work into tiles and threads.

#[cfg(target_arch = "aarch64")]
mod neon;
mod quantize;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

use super::Cap;
use super::tasks;
#[cfg(target_arch = "x86_64")]
use super::{Isa, isa};
use crate::memory::mapped::Mapped;
use crate::package::to_int8;
use quantize::quantize_rows;

/// Inputs that share a weight scale.
pub const BLOCK: usize = 32;
/// Outputs in a panel.
pub const NR: usize = 16;
/// The most rows a kernel tile takes.
pub const MAX_ROWS: usize = 4;
/// The most panels a kernel tile takes (AVX-512 VNNI's; the others take one).
pub const MAX_PANELS: usize = 4;
/// Bytes of one block of one panel.
const PANEL_BLOCK: usize = BLOCK * NR;

/// A tile's sums in f32: `[row][panel × NR + output]`.
type Acc = [[f32; NR * MAX_PANELS]; MAX_ROWS];

/// The int8 kernels, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 with VNNI: `vpdpwssd` on 16 outputs at once, 4 rows × 4 panels a tile.
    Avx512Vnni,
    /// AVX-VNNI: `vpdpwssd` on 8 outputs, 4 rows a tile.
    AvxVnni,
    /// AVX2: `vpmaddwd` + `vpaddd` on 8 outputs, 4 rows a tile.
    Avx2,
    /// aarch64 NEON: `smlal` by lane on 4 outputs, 4 rows a tile.
    Neon,
    /// Plain Rust, for every other CPU (the compiler vectorises it for the target).
    Portable,
}

impl Kernel {
    /// Its name in logs, `GET /api/models` and `CAXTON_ISA`-forced test runs.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::AvxVnni => "avx-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Neon => "neon",
            Kernel::Portable => "portable",
        }
    }

    /// Rows per tile.
    fn rows(self) -> usize {
        match self {
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => neon::ROWS,
            _ => 4,
        }
    }

    /// Panels per tile: AVX-512 VNNI's tile shares each row's broadcast activations between
    /// up to 4 panels. As 8 rows × 1 panel it waited on those broadcasts and the weights'
    /// sign extension (9 of every 17 vector instructions): a 1536→384 layer over 64 rows of
    /// L2-resident activations ran 69-84 GMAC/s a core against 107 for 4 × 2 to 4 × 4
    /// (AMD EPYC Zen 4, a standalone copy of the tile; 5 rows or more spill or stall).
    fn panels(self) -> usize {
        match self {
            Kernel::Avx512Vnni => MAX_PANELS,
            _ => 1,
        }
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
            Kernel::Neon => Cap::Neon,
            Kernel::Portable => Cap::Portable,
        }
    }

    /// Every kernel this CPU can run, best first, whatever the cap (tests run them all).
    pub fn here() -> Vec<Kernel> {
        // aarch64 always has NEON.
        let mut k = if cfg!(target_arch = "aarch64") {
            vec![Kernel::Neon]
        } else {
            Vec::new()
        };
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") && has!("fma") {
                k.push(Kernel::Avx512Vnni);
            }
            if has!("avxvnni") && has!("avx2") && has!("fma") {
                k.push(Kernel::AvxVnni);
            }
            if has!("avx2") && has!("fma") {
                k.push(Kernel::Avx2);
            }
        }
        k.push(Kernel::Portable);
        k
    }
}

/// Where [`Packed::weights`] keeps the weight of output `o` for input `kk` of block `b`
/// (`[panel][block][pair][output][2]`, `blocks` per panel).
#[inline]
fn weight_at(o: usize, b: usize, kk: usize, blocks: usize) -> usize {
    ((o / NR) * blocks + b) * PANEL_BLOCK + (kk / 2) * 2 * NR + (o % NR) * 2 + kk % 2
}

/// Where [`Packed::scales`] keeps the scale of output `o` in block `b` (`[panel][block][output]`).
#[inline]
fn scale_at(o: usize, b: usize, blocks: usize) -> usize {
    ((o / NR) * blocks + b) * NR + o % NR
}

/// A linear layer's weights in int8, packed in panels.
pub struct Packed {
    inputs: usize,
    outputs: usize,
    blocks: usize,
    panels: usize,
    /// `[panel][block][pair][output][2]`.
    weights: Mapped<i8>,
    /// `[panel][block][output]`: what one unit of a weight is worth.
    scales: Mapped<f32>,
}

impl Packed {
    /// Quantizes `Wᵀ` (`[inputs, outputs]` row-major): each output's weights block by block,
    /// symmetric, scaled so the block's largest magnitude is 127. Inputs and outputs are
    /// padded with zeros to whole blocks and panels.
    pub fn new(wt: &[f32], inputs: usize, outputs: usize) -> Packed {
        assert_eq!(wt.len(), inputs * outputs);
        let blocks = inputs.div_ceil(BLOCK);
        let panels = outputs.div_ceil(NR);
        let mut weights = Mapped::zeroed(panels * blocks * PANEL_BLOCK);
        let mut scales = Mapped::zeroed(panels * blocks * NR);
        // Row by row of Wᵀ (contiguous reads: a column walk is a cache miss per weight).
        let (mut max, mut inv) = (vec![0f32; outputs], vec![0f32; outputs]);
        for b in 0..blocks {
            let rows = wt[b * BLOCK * outputs..((b + 1) * BLOCK).min(inputs) * outputs]
                .chunks_exact(outputs);
            max.fill(0.0);
            for row in rows.clone() {
                for (m, &w) in max.iter_mut().zip(row) {
                    *m = m.max(w.abs());
                }
            }
            for (o, (&m, inv)) in max.iter().zip(&mut inv).enumerate() {
                *inv = if m > 0.0 { 127.0 / m } else { 0.0 };
                scales[scale_at(o, b, blocks)] = m / 127.0;
            }
            for (kk, row) in rows.enumerate() {
                for (o, (&w, &inv)) in row.iter().zip(&inv).enumerate() {
                    weights[weight_at(o, b, kk, blocks)] = to_int8(w, inv);
                }
            }
        }
        Packed {
            inputs,
            outputs,
            blocks,
            panels,
            weights,
            scales,
        }
    }

    /// From weights quantized already by [`Packed::new`]'s rule (a package's int8 storage):
    /// `value(o, i)` and `scale(o, b)` of output `o`, input `i`, block `b`, packed without a
    /// float in between. `inputs` must be whole blocks.
    pub fn from_quantized(
        inputs: usize,
        outputs: usize,
        value: impl Fn(usize, usize) -> i8,
        scale: impl Fn(usize, usize) -> f32,
    ) -> Packed {
        assert_eq!(inputs % BLOCK, 0, "int8 rows of whole blocks");
        let blocks = inputs / BLOCK;
        let panels = outputs.div_ceil(NR);
        let mut weights = Mapped::zeroed(panels * blocks * PANEL_BLOCK);
        let mut scales = Mapped::zeroed(panels * blocks * NR);
        for o in 0..outputs {
            for b in 0..blocks {
                scales[scale_at(o, b, blocks)] = scale(o, b);
                for kk in 0..BLOCK {
                    weights[weight_at(o, b, kk, blocks)] = value(o, b * BLOCK + kk);
                }
            }
        }
        Packed {
            inputs,
            outputs,
            blocks,
            panels,
            weights,
            scales,
        }
    }

    /// Width of an input row.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Outputs.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Bytes of the weights and scales.
    pub fn bytes(&self) -> usize {
        self.weights.len() + self.scales.len() * 4
    }

    /// `out = x·Wᵀ + bias (+ residual)` for `rows` rows, with the best kernel.
    pub fn forward(
        &self,
        x: &[f32],
        rows: usize,
        bias: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        self.forward_with(Kernel::best(), x, rows, bias, residual, out);
    }

    /// [`Packed::forward`] with a given kernel, which this CPU must run ([`Kernel::here`]).
    pub fn forward_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        rows: usize,
        bias: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        self.forward_strided(kernel, x, rows, bias, residual, out, self.outputs);
    }

    /// [`Packed::forward_with`] into rows of `ldo` floats (`out` and `residual` alike), of
    /// which this layer writes the first `outputs`: a layer whose other outputs come from
    /// elsewhere.
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
        self.check_call(kernel, x, rows, bias, residual, out, ldo);
        let lda = self.blocks * BLOCK;
        // Taken out of the thread's slot, not borrowed in it: while this thread waits for the
        // parallel tiles it may run another pass's call, which finds the slot empty.
        let (mut a, mut scales) = ACTIVATIONS.with_borrow_mut(std::mem::take);
        {
            quantize_rows(&x[..rows * k], rows, k, lda, &mut a, &mut scales);
            let out = Out(out.as_mut_ptr());
            let tile_rows = kernel.rows();
            // Tasks: (rows, panels) blocks, so a task's weights (4 panels) stay in L2 while
            // its rows pass over them, and one text's pass still splits between threads.
            const TASK_ROWS: usize = 64;
            let row_tasks = rows.div_ceil(TASK_ROWS);
            // 4 panels a task, fewer when that leaves threads idle (one text on many cores).
            let threads = rayon::current_num_threads();
            let task_panels = tasks::units_per_task(self.panels, 4, row_tasks, threads);
            let panel_tasks = self.panels.div_ceil(task_panels);
            let (a, scales) = (&a[..], &scales[..]);
            let task = |t: usize| {
                let (rt, pt) = (t / panel_tasks, t % panel_tasks);
                let row_range = rt * TASK_ROWS..((rt + 1) * TASK_ROWS).min(rows);
                let panel_range = pt * task_panels..((pt + 1) * task_panels).min(self.panels);
                // One accumulator per task, its rows zeroed one by one: zeroing the whole
                // array for every tile was a `memset` call, 8% of an int8 pass over 32 short
                // texts.
                let mut acc: Acc = [[0f32; NR * MAX_PANELS]; MAX_ROWS];
                let mut wide = WIDE.with_borrow_mut(std::mem::take);
                let widen = row_range.len() >= WIDEN_ROWS;
                let mut p = panel_range.start;
                while p < panel_range.end {
                    let np = kernel.panels().min(panel_range.end - p);
                    let widened = widen && self.widen(kernel, p, &mut wide);
                    let mut r0 = row_range.start;
                    while r0 < row_range.end {
                        let mr = tile_rows.min(row_range.end - r0);
                        for row in acc.iter_mut().take(mr) {
                            row[..np * NR].fill(0.0);
                        }
                        let cols = p * NR..((p + np) * NR).min(n);
                        super::prefetch_tile(out.0, residual, r0..r0 + mr, ldo, cols);
                        if widened {
                            // Only one-panel kernels (AVX2) widen.
                            debug_assert_eq!(np, 1);
                            self.tile_wide(&a[r0 * lda..], lda, mr, p, &wide, &mut acc);
                        } else {
                            self.tile(kernel, &a[r0 * lda..], lda, mr, p, np, &mut acc);
                        }
                        // SAFETY: tasks cover disjoint (row, panel) blocks, so each writes
                        // only its own rows' outputs of its own panels.
                        unsafe {
                            self.finish(&acc[..mr], r0, p, np, scales, bias, residual, out, ldo)
                        };
                        r0 += mr;
                    }
                    p += np;
                }
                WIDE.with_borrow_mut(|slot| *slot = wide);
            };
            let tasks = row_tasks * panel_tasks;
            if rows * k * n < PARALLEL_MACS || tasks == 1 {
                (0..tasks).for_each(task);
            } else {
                (0..tasks).into_par_iter().for_each(task);
            }
        }
        ACTIVATIONS.with_borrow_mut(|slot| *slot = (a, scales));
    }

    /// Refuses a call whose buffers do not hold its `rows` (at least one) or whose kernel this
    /// CPU does not run: the tiles write through a raw pointer and the kernels' instructions.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn check_call(
        &self,
        kernel: Kernel,
        x: &[f32],
        rows: usize,
        bias: &[f32],
        residual: Option<&[f32]>,
        out: &[f32],
        ldo: usize,
    ) {
        let (k, n) = (self.inputs, self.outputs);
        let span = (rows - 1) * ldo + n;
        assert!(ldo >= n && x.len() >= rows * k && out.len() >= span && bias.len() == n);
        assert!(residual.is_none_or(|r| r.len() >= span));
        assert!(
            Kernel::here().contains(&kernel),
            "the {} kernel does not run on this CPU",
            kernel.name()
        );
    }

    /// One tile: `acc[r][q × NR + c]` = Σ over blocks of (int32 dot of row `r` with output
    /// `c` of panel `p + q`) × that block's scale, for the `mr` rows of `a` (stride `lda`) and
    /// the `np` panels from `p`.
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        kernel: Kernel,
        a: &[i16],
        lda: usize,
        mr: usize,
        p: usize,
        np: usize,
        acc: &mut Acc,
    ) {
        assert!(mr <= kernel.rows() && a.len() >= (mr - 1) * lda + self.blocks * BLOCK);
        assert!(np >= 1 && np <= kernel.panels() && p + np <= self.panels);
        let w = &self.weights[p * self.blocks * PANEL_BLOCK..(p + np) * self.blocks * PANEL_BLOCK];
        let ws = &self.scales[p * self.blocks * NR..(p + np) * self.blocks * NR];
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `forward_with` checked the CPU runs the kernel; the slices hold the
            // tile's rows and the `np` panels' blocks (asserted above).
            Kernel::Avx512Vnni | Kernel::AvxVnni | Kernel::Avx2 => unsafe {
                x86::tile(kernel, a.as_ptr(), lda, mr, np, w, ws, self.blocks, acc)
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above; NEON is part of every aarch64 target.
            Kernel::Neon => unsafe { neon::tile(a.as_ptr(), lda, mr, w, ws, self.blocks, acc) },
            _ => tile_portable(a, lda, mr, w, ws, self.blocks, acc),
        }
    }

    /// Widens panel `p` to int16 into `wide` when `kernel` multiplies from a widened panel
    /// (AVX2); says whether it did.
    fn widen(&self, kernel: Kernel, p: usize, wide: &mut Vec<i16>) -> bool {
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx2 {
            let w =
                &self.weights[p * self.blocks * PANEL_BLOCK..(p + 1) * self.blocks * PANEL_BLOCK];
            wide.resize(w.len(), 0);
            // SAFETY: `forward_with` checked the CPU runs AVX2.
            unsafe { x86::widen(w, wide) };
            return true;
        }
        let _ = (kernel, p, wide);
        false
    }

    /// [`Packed::tile`] on panel `p` widened by [`Packed::widen`].
    fn tile_wide(&self, a: &[i16], lda: usize, mr: usize, p: usize, wide: &[i16], acc: &mut Acc) {
        assert!(mr <= Kernel::Avx2.rows() && a.len() >= (mr - 1) * lda + self.blocks * BLOCK);
        assert!(wide.len() == self.blocks * PANEL_BLOCK);
        let ws = &self.scales[p * self.blocks * NR..(p + 1) * self.blocks * NR];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only AVX2 widens (see `widen`), which `forward_with` checked the CPU runs;
        // the slices hold the tile's rows and the panel's blocks (asserted above).
        unsafe {
            x86::tile_wide(a.as_ptr(), lda, mr, wide, ws, self.blocks, acc)
        };
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no kernel widens here ({a:?}, {lda}, {mr}, {ws:?}, {acc:?})");
    }

    /// Writes a tile's rows: `out = acc × row scale + bias (+ residual)`, for the real
    /// outputs of the `np` panels from `p`, in rows of `ldo`.
    ///
    /// # Safety
    /// `out` must hold the rows' `outputs` floats at stride `ldo`, and no other thread may
    /// write this tile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn finish(
        &self,
        acc: &[[f32; NR * MAX_PANELS]],
        r0: usize,
        p: usize,
        np: usize,
        row_scales: &[f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        out: Out,
        ldo: usize,
    ) {
        let n = self.outputs;
        let c0 = p * NR;
        let width = (np * NR).min(n - c0);
        for (i, sums) in acc.iter().enumerate() {
            let r = r0 + i;
            let s = row_scales[r];
            // SAFETY: row `r` < rows and columns `c0..c0 + width` ≤ outputs lie inside `out`
            // (the caller's contract); this tile is written by this task alone.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add(r * ldo + c0), width) };
            let b = &bias[c0..c0 + width];
            let res = residual.map(|res| &res[r * ldo + c0..r * ldo + c0 + width]);
            write_row(dst, &sums[..width], s, b, res);
        }
    }
}

/// From this many rows a task widens each panel to int16 once for all its row tiles (AVX2).
/// Below, widening costs more than it saves: at one text of 13 tokens it was 10% of the pass;
/// at 64 rows it made a 384→1536 layer 6% faster.
const WIDEN_ROWS: usize = 32;

/// Below this many multiply-adds a product stays on the calling thread (as the f32 kernels:
/// waking the pool costs more than the work).
const PARALLEL_MACS: usize = 1 << 20;

/// The output buffer, shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint tiles (see `forward_with`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Frees this thread's activation buffers (a large pass's are megabytes). The encoder calls
/// it on every pool thread once its model is idle, as it frees its own pass buffers.
pub fn release_thread_buffers() {
    ACTIVATIONS.with_borrow_mut(|(a, s)| {
        *a = Vec::new();
        *s = Vec::new();
    });
}

thread_local! {
    /// A panel's weights widened to int16 for the AVX2 tiles (see [`Packed::widen`]).
    static WIDE: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The quantized activations of the call in progress and their row scales, kept for the
    /// next call on this thread (see [`release_thread_buffers`]).
    static ACTIVATIONS: std::cell::RefCell<(Vec<i16>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

simd!(
    /// `dst = sums × s + bias (+ residual)`: a tile's row written out.
    fn write_row(dst: &mut [f32], sums: &[f32], s: f32, bias: &[f32], residual: Option<&[f32]>) = write_row_generic
);

#[inline(always)]
fn write_row_generic(
    dst: &mut [f32],
    sums: &[f32],
    s: f32,
    bias: &[f32],
    residual: Option<&[f32]>,
) {
    match residual {
        Some(res) => {
            for (((o, &v), &b), &x) in dst.iter_mut().zip(sums).zip(bias).zip(res) {
                *o = v * s + b + x;
            }
        }
        None => {
            for ((o, &v), &b) in dst.iter_mut().zip(sums).zip(bias) {
                *o = v * s + b;
            }
        }
    }
}

/// The portable kernel: plain loops over int32 sums (for CPUs with neither AVX2 nor NEON, and
/// the reference the others are tested against). Compiled on its own: inlined into the task
/// loop once that loop walked tiles of up to 4 panels, LLVM left its sums scalar
/// (`KERNELS_INT8=portable examples/kernels`, 1536→384: 8.5 → 3.4 GMAC/s, AMD EPYC Zen 4).
#[inline(never)]
fn tile_portable(
    a: &[i16],
    lda: usize,
    mr: usize,
    w: &[i8],
    ws: &[f32],
    blocks: usize,
    acc: &mut Acc,
) {
    for b in 0..blocks {
        let wb = &w[b * PANEL_BLOCK..(b + 1) * PANEL_BLOCK];
        for r in 0..mr {
            let ab = &a[r * lda + b * BLOCK..r * lda + (b + 1) * BLOCK];
            let mut sums = [0i32; NR];
            for (pair, wp) in ab.chunks_exact(2).zip(wb.chunks_exact(2 * NR)) {
                let (a0, a1) = (i32::from(pair[0]), i32::from(pair[1]));
                for (s, w) in sums.iter_mut().zip(wp.chunks_exact(2)) {
                    *s += a0 * i32::from(w[0]) + a1 * i32::from(w[1]);
                }
            }
            let scale = &ws[b * NR..(b + 1) * NR];
            for ((o, &s), &sc) in acc[r].iter_mut().zip(&sums).zip(scale) {
                *o += s as f32 * sc;
            }
        }
    }
}

#[cfg(test)]
mod tests;
