//! Linear layers `y = x·Wᵀ + b`: f32 weights in panels ([`panels`]) through `gemm` for batches
//! and a weight-streaming kernel for a few rows ([`few_rows`]), int8 weights with 16-bit
//! activations ([`super::int8`]) or 8-bit ones ([`super::int8_fast`]), or bf16 weights on AMX
//! tiles.

mod few_rows;
mod panels;

use rayon::prelude::*;

use super::elementwise::{PARALLEL_MIN, add_into, for_rows};
use super::gemm::{Mat, matmul};
use super::tasks;
use crate::memory::mapped::Mapped;
use panels::Panels;

/// The output's base pointer, shared by the panels' products (each writes its own columns).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the products that share it write disjoint columns, and `forward` outlives them.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A linear layer `y = x·Wᵀ + b`, in f32 or (on CPUs with AMX) with bf16 weights.
pub struct Linear {
    weights: Weights,
    /// `outputs` biases.
    pub bias: Mapped<f32>,
    /// Width of an input row.
    pub inputs: usize,
    /// Width of an output row.
    pub outputs: usize,
}

/// How a [`Linear`] holds its weights.
enum Weights {
    /// `Wᵀ` (`[inputs, outputs]`) in panels of 96 outputs, each row-major: gemm runs fastest
    /// from row-major `Wᵀ` (up to 30% faster than PyTorch's `[outputs, inputs]` at 608 rows),
    /// and the few-row kernel streams a panel front to back.
    F32(Panels),
    /// Rounded to bf16 and packed in AMX tiles.
    #[cfg(target_arch = "x86_64")]
    Bf16(super::amx::Packed),
    /// Quantized to int8 in panels ([`super::int8`]); the last outputs may stay f32 in a
    /// layer of their own.
    Int8(super::int8::Packed, Option<Box<Linear>>),
    /// Quantized to int8 for 8-bit activations ([`super::int8_fast`]).
    Int8Fast(super::int8_fast::Packed),
}

/// Up to this many rows, [`Linear::forward`] runs [`few_rows`] instead of `gemm`, which
/// packs its operands on every call: at a handful of rows that costs several times the
/// arithmetic (on a 384→1536 layer with the weights out of cache, 14 rows took 0.57 ms in
/// gemm, while reading its 2.4 MB of weights takes about 0.1 ms). Whole MiniLM passes,
/// interleaved: 14 rows 10.4 vs 18.7 ms, 56 rows 24.7 vs 28.1 ms, 84 rows 35.3 vs 30.6 ms.
/// Raised from 48 to 64 (Zen 4, 2 threads, f32, three interleaved runs each): MiniLM's pass
/// over one text of 50 tokens 7.0-8.4 ms against 8.2-9.3, of 59 tokens 8.6-9.2 against
/// 9.3-9.8; CLIP ViT-B/32's image tower (50 rows of 768) 53.5-56.0 ms against 60.9-61.4.
pub const SMALL_ROWS: usize = 64;

/// Rows per product in a batch: 256 rows of 384 (MiniLM) to 1,024 inputs (1 MiB) stay in L2
/// while the panels pass over them.
const ROW_BLOCK: usize = 256;

/// The fewest rows a batch's product is cut to when it has too few panels for the threads:
/// gemm packs its operands on every call, so a smaller task packs more for its arithmetic
/// (half of [`SMALL_ROWS`], below which a whole product takes `few_rows`).
const CHUNK_ROWS: usize = 32;

impl Linear {
    /// From PyTorch's `[outputs, inputs]` weight and its bias.
    pub fn from_torch(
        weight: &[f32],
        bias: impl Into<Mapped<f32>>,
        outputs: usize,
        inputs: usize,
    ) -> Self {
        Linear {
            weights: Weights::F32(Panels::from_torch(weight, outputs, inputs)),
            bias: bias.into(),
            inputs,
            outputs,
        }
    }

    /// From `Wᵀ` (`[inputs, outputs]` row-major) and the bias.
    fn from_wt(
        weight_t: Vec<f32>,
        bias: impl Into<Mapped<f32>>,
        inputs: usize,
        outputs: usize,
    ) -> Self {
        Linear {
            weights: Weights::F32(Panels::from_wt(&weight_t, inputs, outputs)),
            bias: bias.into(),
            inputs,
            outputs,
        }
    }

    /// An int8 layer from weights quantized already (a package's int8 storage, see
    /// [`super::int8::Packed::from_quantized`]) and its bias, with `tail`'s outputs after its
    /// own in f32 (as [`Linear::to_int8_but_last`] leaves a value projection).
    pub fn from_int8(packed: super::int8::Packed, bias: Vec<f32>, tail: Option<Linear>) -> Linear {
        let inputs = packed.inputs();
        let mut bias = bias;
        let mut outputs = packed.outputs();
        if let Some(t) = &tail {
            bias.extend_from_slice(&t.bias);
            outputs += t.outputs;
        }
        Linear {
            weights: Weights::Int8(packed, tail.map(Box::new)),
            bias: bias.into(),
            inputs,
            outputs,
        }
    }

    /// Several layers over the same input as one (e.g. query, key and value): their outputs
    /// side by side, so one GEMM does the work of three. The parts are f32 (concatenate
    /// before [`Linear::to_bf16`]).
    pub fn concat(parts: &[Linear]) -> Linear {
        let inputs = parts.first().map_or(0, |p| p.inputs);
        let outputs: usize = parts.iter().map(|p| p.outputs).sum();
        let wts: Vec<Vec<f32>> = parts.iter().map(Linear::f32_weights).collect();
        let mut weight_t = Vec::with_capacity(inputs * outputs);
        for i in 0..inputs {
            for (p, wt) in parts.iter().zip(&wts) {
                assert_eq!(
                    wt.len(),
                    inputs * p.outputs,
                    "concat of packed or uneven layers"
                );
                weight_t.extend_from_slice(&wt[i * p.outputs..(i + 1) * p.outputs]);
            }
        }
        let bias: Vec<f32> = parts.iter().flat_map(|p| p.bias.iter().copied()).collect();
        Linear::from_wt(weight_t, bias, inputs, outputs)
    }

    /// `Wᵀ` of an f32 layer, row-major; empty once packed in another precision.
    fn f32_weights(&self) -> Vec<f32> {
        match &self.weights {
            Weights::F32(panels) => panels.to_wt(),
            #[cfg(target_arch = "x86_64")]
            Weights::Bf16(_) => Vec::new(),
            Weights::Int8(..) | Weights::Int8Fast(_) => Vec::new(),
        }
    }

    /// Rounds the weights to bf16 and packs them for AMX, dropping the f32 copy. Only when
    /// [`super::amx::available`] is `Ok`.
    #[cfg(target_arch = "x86_64")]
    pub fn to_bf16(&mut self) {
        if let Weights::F32(panels) = &self.weights {
            let packed = super::amx::Packed::new(&panels.to_wt(), self.inputs, self.outputs);
            self.weights = Weights::Bf16(packed);
        }
    }

    /// Quantizes the weights to int8 ([`super::int8`]), dropping the f32 copy.
    pub fn to_int8(&mut self) {
        self.to_int8_but_last(0);
    }

    /// Quantizes the weights of all outputs but the last `keep` to int8; those stay f32 (a
    /// fused layer part of which is too sensitive for int8).
    pub fn to_int8_but_last(&mut self, keep: usize) {
        let Weights::F32(panels) = &self.weights else {
            return;
        };
        let wt = panels.to_wt();
        let (k, n) = (self.inputs, self.outputs);
        let m = n - keep.min(n);
        let mut head = Vec::with_capacity(k * m);
        let mut tail = Vec::with_capacity(k * (n - m));
        for row in wt.chunks_exact(n) {
            head.extend_from_slice(&row[..m]);
            tail.extend_from_slice(&row[m..]);
        }
        let tail = (m < n).then(|| Box::new(Linear::from_wt(tail, &self.bias[m..], k, n - m)));
        self.weights = Weights::Int8(super::int8::Packed::new(&head, k, m), tail);
    }

    /// Quantizes the weights for int8-fast's 8-bit activations ([`super::int8_fast`]),
    /// smoothed by the largest magnitude each input took in a calibration pass (`act_max`, one
    /// per input), dropping the f32 copy.
    pub fn to_int8_fast(&mut self, act_max: &[f32]) {
        let Weights::F32(panels) = &self.weights else {
            return;
        };
        let wt = panels.to_wt();
        let (k, n) = (self.inputs, self.outputs);
        let smooth = super::int8_fast::smoothing(act_max, &wt, k, n);
        let limit_pairs = super::int8_fast::Kernel::best().limits_pairs();
        let packed = super::int8_fast::Packed::new(&wt, k, n, &smooth, limit_pairs);
        self.weights = Weights::Int8Fast(packed);
    }

    /// Bytes of the weights and bias in memory.
    pub fn bytes(&self) -> usize {
        let weights = match &self.weights {
            Weights::F32(panels) => panels.bytes(),
            #[cfg(target_arch = "x86_64")]
            Weights::Bf16(p) => p.bytes(),
            Weights::Int8(p, tail) => p.bytes() + tail.as_ref().map_or(0, |t| t.bytes()),
            Weights::Int8Fast(p) => p.bytes(),
        };
        weights + self.bias.len() * 4
    }

    /// `out = x·Wᵀ + b (+ residual)` for `rows` rows; `out` must hold `rows × outputs`.
    pub fn forward(&self, x: &[f32], rows: usize, residual: Option<&[f32]>, out: &mut [f32]) {
        let (k, n) = (self.inputs, self.outputs);
        assert!(x.len() >= rows * k && out.len() >= rows * n && self.bias.len() == n);
        let x = &x[..rows * k];
        let out = &mut out[..rows * n];
        let residual = residual.map(|r| &r[..rows * n]);
        match &self.weights {
            Weights::F32(panels) if rows <= SMALL_ROWS => {
                few_rows::forward(x, rows, panels, &self.bias, residual, out)
            }
            Weights::F32(panels) => self.forward_panels(panels, x, rows, residual, out),
            #[cfg(target_arch = "x86_64")]
            Weights::Bf16(packed) => {
                // Without a residual the output tiles start from the bias itself.
                match residual {
                    Some(_) => {
                        self.prefill(residual, out);
                        packed.forward(x, rows, None, out);
                    }
                    None => packed.forward(x, rows, Some(&self.bias), out),
                }
            }
            Weights::Int8(packed, tail) => {
                self.forward_int8(packed, tail.as_deref(), x, rows, residual, out)
            }
            Weights::Int8Fast(packed) => {
                let kernel = super::int8_fast::Kernel::best();
                packed.forward_strided(kernel, x, rows, &self.bias, residual, out, n);
            }
        }
    }

    /// [`Linear::forward`] on int8 weights, whose last outputs may come from an f32 `tail`.
    fn forward_int8(
        &self,
        packed: &super::int8::Packed,
        tail: Option<&Linear>,
        x: &[f32],
        rows: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let n = self.outputs;
        let m = n - tail.map_or(0, |t| t.outputs);
        let kernel = super::int8::Kernel::best();
        packed.forward_strided(kernel, x, rows, &self.bias[..m], residual, out, n);
        if let Some(tail) = tail {
            let t = tail.outputs;
            let mut part = vec![0f32; rows * t];
            tail.forward(x, rows, None, &mut part);
            for (r, src) in part.chunks_exact(t).enumerate() {
                let dst = &mut out[r * n + m..(r + 1) * n];
                match residual {
                    Some(res) => add_into(dst, src, &res[r * n + m..(r + 1) * n]),
                    None => dst.copy_from_slice(src),
                }
            }
        }
    }

    /// [`Linear::forward`] on f32 panels for more than [`SMALL_ROWS`] rows: one `gemm` product
    /// per panel and block of rows, each on one thread. A block's rows stay in L2 while every
    /// panel passes over them; a product over all the rows per panel would stream the whole
    /// batch from memory once per panel (4-10% slower on 4,096 rows).
    fn forward_panels(
        &self,
        panels: &Panels,
        x: &[f32],
        rows: usize,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let (k, n) = (self.inputs, self.outputs);
        self.prefill(residual, out);
        let threads = rayon::current_num_threads();
        let dst = SendPtr(out.as_mut_ptr());
        let product = |first_row: usize, count: usize, panel: &panels::Panel<'_>| {
            // SAFETY: rows `first_row..first_row + count` of `x` (`rows × k`), the panel
            // (`k × width`, row-major), and the same rows of the output's columns
            // `first..first + width`, which no other product writes.
            unsafe {
                matmul(
                    (count, panel.width, k),
                    Mat::row_major(dst.get().add(first_row * n + panel.first), n),
                    Mat::row_major(x.as_ptr().add(first_row * k) as *mut f32, k),
                    Mat::row_major(panel.data.as_ptr() as *mut f32, panel.width),
                    1.0,
                    true,
                    gemm::Parallelism::None,
                );
            }
        };
        let blocks = rows.div_ceil(ROW_BLOCK);
        if blocks >= 2 * threads {
            (0..blocks).into_par_iter().for_each(|b| {
                let first_row = b * ROW_BLOCK;
                let count = ROW_BLOCK.min(rows - first_row);
                panels.iter().for_each(|p| product(first_row, count, &p));
            });
        } else {
            // Chunks of rows × panels: by panels alone, a 384-wide layer (4 panels) ran on 4
            // threads of 16.
            tasks::for_each_chunk(rows, panels.count(), CHUNK_ROWS, threads, |first, n, p| {
                product(first, n, &panels.panel_at(p * panels::WIDTH))
            });
        }
    }

    /// Fills `out` with the bias (and residual), which the product then accumulates onto.
    fn prefill(&self, residual: Option<&[f32]>, out: &mut [f32]) {
        let n = self.outputs;
        let add = |(o, r): (&mut [f32], &[f32])| add_into(o, r, &self.bias);
        match residual {
            // A few rows: waking the other thread costs more than the copy.
            Some(r) if out.len() < PARALLEL_MIN => out.chunks_mut(n).zip(r.chunks(n)).for_each(add),
            Some(r) => out.par_chunks_mut(n).zip(r.par_chunks(n)).for_each(add),
            None => for_rows(out, n, |o| o.copy_from_slice(&self.bias)),
        }
    }
}

#[cfg(test)]
mod tests;
