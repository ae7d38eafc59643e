//! Linear layers `y = x·Wᵀ + b`: f32 weights through `gemm` for batches and a weight-streaming
//! kernel for a few rows, or bf16 weights on AMX tiles.

use rayon::prelude::*;

use super::elementwise::{PARALLEL_MIN, add_into, for_rows};
use super::gemm::{Mat, matmul, parallelism};
#[cfg(target_arch = "x86_64")]
use super::{Isa, isa};

/// A linear layer `y = x·Wᵀ + b`, in f32 or (on CPUs with AMX) with bf16 weights.
pub struct Linear {
    weights: Weights,
    /// `outputs` biases.
    pub bias: Vec<f32>,
    /// Width of an input row.
    pub inputs: usize,
    /// Width of an output row.
    pub outputs: usize,
}

/// How a [`Linear`] holds its weights.
enum Weights {
    /// `Wᵀ` (`[inputs, outputs]` row-major): the layout gemm runs fastest from here (up to
    /// 30% faster than PyTorch's `[outputs, inputs]` at 608 rows), and the one the few-row
    /// kernel reads a row of per input.
    F32(Vec<f32>),
    /// Rounded to bf16 and packed in AMX tiles.
    #[cfg(target_arch = "x86_64")]
    Bf16(super::amx::Packed),
    /// Quantized to int8 in panels ([`super::int8`]); the last outputs may stay f32 in a
    /// layer of their own.
    Int8(super::int8::Packed, Option<Box<Linear>>),
}

/// Up to this many rows, [`Linear::forward`] runs [`small_rows`] instead of `gemm`, which
/// packs its operands on every call: at a handful of rows that costs several times the
/// arithmetic (on a 384→1536 layer with the weights out of cache, 14 rows took 0.57 ms in
/// gemm, while reading its 2.4 MB of weights takes about 0.1 ms). Whole MiniLM passes,
/// interleaved: 14 rows 10.4 vs 18.7 ms, 56 rows 24.7 vs 28.1 ms, 84 rows 35.3 vs 30.6 ms.
pub const SMALL_ROWS: usize = 48;

impl Linear {
    /// From PyTorch's `[outputs, inputs]` weight and its bias.
    pub fn from_torch(weight: &[f32], bias: Vec<f32>, outputs: usize, inputs: usize) -> Self {
        debug_assert_eq!(weight.len(), outputs * inputs);
        let mut weight_t = vec![0f32; inputs * outputs];
        for (o, row) in weight.chunks_exact(inputs).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                weight_t[i * outputs + o] = w;
            }
        }
        Linear {
            weights: Weights::F32(weight_t),
            bias,
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
        let mut weight_t = Vec::with_capacity(inputs * outputs);
        for i in 0..inputs {
            for p in parts {
                let wt = p.f32_weights();
                assert_eq!(
                    wt.len(),
                    inputs * p.outputs,
                    "concat of packed or uneven layers"
                );
                weight_t.extend_from_slice(&wt[i * p.outputs..(i + 1) * p.outputs]);
            }
        }
        let bias = parts.iter().flat_map(|p| p.bias.iter().copied()).collect();
        Linear {
            weights: Weights::F32(weight_t),
            bias,
            inputs,
            outputs,
        }
    }

    /// `Wᵀ` of an f32 layer; empty once packed.
    fn f32_weights(&self) -> &[f32] {
        match &self.weights {
            Weights::F32(wt) => wt,
            #[cfg(target_arch = "x86_64")]
            Weights::Bf16(_) => &[],
            Weights::Int8(..) => &[],
        }
    }

    /// Rounds the weights to bf16 and packs them for AMX, dropping the f32 copy. Only when
    /// [`super::amx::available`] is `Ok`.
    #[cfg(target_arch = "x86_64")]
    pub fn to_bf16(&mut self) {
        if let Weights::F32(wt) = &self.weights {
            let packed = super::amx::Packed::new(wt, self.inputs, self.outputs);
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
        let Weights::F32(wt) = &self.weights else {
            return;
        };
        let (k, n) = (self.inputs, self.outputs);
        let m = n - keep.min(n);
        let mut head = Vec::with_capacity(k * m);
        let mut tail = Vec::with_capacity(k * (n - m));
        for row in wt.chunks_exact(n) {
            head.extend_from_slice(&row[..m]);
            tail.extend_from_slice(&row[m..]);
        }
        let tail = (m < n).then(|| {
            Box::new(Linear {
                weights: Weights::F32(tail),
                bias: self.bias[m..].to_vec(),
                inputs: k,
                outputs: n - m,
            })
        });
        self.weights = Weights::Int8(super::int8::Packed::new(&head, k, m), tail);
    }

    /// Bytes of the weights and bias in memory.
    pub fn bytes(&self) -> usize {
        let weights = match &self.weights {
            Weights::F32(wt) => wt.len() * 4,
            #[cfg(target_arch = "x86_64")]
            Weights::Bf16(p) => p.bytes(),
            Weights::Int8(p, tail) => p.bytes() + tail.as_ref().map_or(0, |t| t.bytes()),
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
        let wt = match &self.weights {
            Weights::F32(wt) => wt,
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
                return;
            }
            Weights::Int8(packed, tail) => {
                let m = n - tail.as_ref().map_or(0, |t| t.outputs);
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
                return;
            }
        };
        assert!(wt.len() == n * k);
        if rows <= SMALL_ROWS {
            small_rows(x, rows, self, residual, out);
            return;
        }
        self.prefill(residual, out);
        // SAFETY: the slices above are exactly `rows × k`, `k × n` and `rows × n`.
        unsafe {
            matmul(
                (rows, n, k),
                Mat::row_major(out.as_mut_ptr(), n),
                Mat::row_major(x.as_ptr() as *mut f32, k),
                Mat::row_major(wt.as_ptr() as *mut f32, n),
                1.0,
                true,
                parallelism(rows * n * k),
            );
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

/// `out = x·Wᵀ + b (+ residual)` for a few rows: the outputs are split into column blocks
/// between the compute threads; each block's weights are read from memory once and stay in
/// cache while every group of rows passes over them.
fn small_rows(x: &[f32], rows: usize, l: &Linear, residual: Option<&[f32]>, out: &mut [f32]) {
    let n = l.outputs;
    // Columns per task: a multiple of every kernel tile width (32 floats), whose weights
    // (64 × 1,536 floats at most here) fit in L2.
    const COLUMNS: usize = 64;
    let tasks = n.div_ceil(COLUMNS);
    let mut blocks = vec![0f32; rows * n];
    blocks
        .par_chunks_mut(rows * COLUMNS)
        .enumerate()
        .for_each(|(t, block)| {
            let first = t * COLUMNS;
            let count = COLUMNS.min(n - first);
            axpy_rows(x, rows, l, first, count, block);
        });
    // `blocks` holds each task's outputs row by row; scatter them into place with the bias.
    for r in 0..rows {
        let row = &mut out[r * n..(r + 1) * n];
        for t in 0..tasks {
            let first = t * COLUMNS;
            let count = COLUMNS.min(n - first);
            let src = &blocks[first * rows + r * count..first * rows + (r + 1) * count];
            let dst = &mut row[first..first + count];
            add_into(dst, src, &l.bias[first..first + count]);
        }
        if let Some(res) = residual {
            let res = &res[r * n..(r + 1) * n];
            row.iter_mut().zip(res).for_each(|(o, r)| *o += r);
        }
    }
}

/// `block[r·count + c] = x_r · W_{first + c}` for `rows` rows of `x` and `count` outputs from
/// `first`, in tiles of 4 rows × 2 vectors of `L` outputs: each input broadcasts a row value
/// against a slice of its Wᵀ row, 8 independent accumulators hide the multiply-add latency.
/// `FMA`: whether the CPU fuses multiply-add (without it `mul_add` is a library call).
#[inline(always)]
fn axpy_rows_generic<const L: usize, const FMA: bool>(
    x: &[f32],
    rows: usize,
    l: &Linear,
    first: usize,
    count: usize,
    block: &mut [f32],
) {
    let (k, n) = (l.inputs, l.outputs);
    let wt = l.f32_weights();
    let mut r = 0;
    while r < rows {
        let take = (rows - r).min(4);
        // A short group repeats its last row; the repeats are computed and dropped.
        let row = |i: usize| &x[(r + i.min(take - 1)) * k..][..k];
        let (x0, x1, x2, x3) = (row(0), row(1), row(2), row(3));
        let mut c = 0;
        while c + 2 * L <= count {
            let mut acc = [[0f32; L]; 8];
            for kk in 0..k {
                let (w, _) = wt[kk * n + first + c..][..2 * L].as_chunks::<L>();
                let (w0, w1) = (&w[0], &w[1]);
                broadcast_madd::<L, FMA>(&mut acc[0], x0[kk], w0);
                broadcast_madd::<L, FMA>(&mut acc[1], x0[kk], w1);
                broadcast_madd::<L, FMA>(&mut acc[2], x1[kk], w0);
                broadcast_madd::<L, FMA>(&mut acc[3], x1[kk], w1);
                broadcast_madd::<L, FMA>(&mut acc[4], x2[kk], w0);
                broadcast_madd::<L, FMA>(&mut acc[5], x2[kk], w1);
                broadcast_madd::<L, FMA>(&mut acc[6], x3[kk], w0);
                broadcast_madd::<L, FMA>(&mut acc[7], x3[kk], w1);
            }
            for i in 0..take {
                let dst = &mut block[(r + i) * count + c..][..2 * L];
                dst[..L].copy_from_slice(&acc[2 * i]);
                dst[L..].copy_from_slice(&acc[2 * i + 1]);
            }
            c += 2 * L;
        }
        // Outputs left over by the tiles (only when the width is not a multiple of 2·L).
        for c in c..count {
            for i in 0..take {
                let xr = &x[(r + i) * k..][..k];
                let dot: f32 = (0..k).map(|kk| xr[kk] * wt[kk * n + first + c]).sum();
                block[(r + i) * count + c] = dot;
            }
        }
        r += take;
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

/// [`axpy_rows_generic`] for the CPU at hand: 16-float vectors with AVX-512, 8 with AVX2,
/// 8 (two NEON or SSE registers) elsewhere.
fn axpy_rows(x: &[f32], rows: usize, l: &Linear, first: usize, count: usize, block: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        fn avx512(x: &[f32], rows: usize, l: &Linear, first: usize, count: usize, b: &mut [f32]) {
            axpy_rows_generic::<16, true>(x, rows, l, first, count, b)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(x: &[f32], rows: usize, l: &Linear, first: usize, count: usize, b: &mut [f32]) {
            axpy_rows_generic::<8, true>(x, rows, l, first, count, b)
        }
        match isa() {
            // SAFETY: `isa` found every feature the function was compiled for.
            Isa::Avx512 => return unsafe { avx512(x, rows, l, first, count, block) },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { avx2(x, rows, l, first, count, block) },
            Isa::Baseline => {}
        }
    }
    // aarch64 always has fused multiply-add.
    axpy_rows_generic::<8, { cfg!(target_arch = "aarch64") }>(x, rows, l, first, count, block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn linear_matches_a_naive_product_with_bias_and_residual() {
        // 71 outputs: a task of 64 (whole tiles) and one of 7 (left-over outputs).

        let (inputs, outputs) = (37, 71);
        let w: Vec<f32> = (0..outputs * inputs)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let b: Vec<f32> = (0..outputs).map(|i| i as f32).collect();
        let lin = Linear::from_torch(&w, b.clone(), outputs, inputs);
        // Few rows take the streaming path (including a partial group of four), many take gemm.
        for rows in [1, 6, SMALL_ROWS, SMALL_ROWS + 3] {
            let x: Vec<f32> = (0..rows * inputs)
                .map(|i| (i as f32 * 0.11).cos())
                .collect();
            let res: Vec<f32> = (0..rows * outputs).map(|i| i as f32 * 0.5).collect();
            for residual in [None, Some(&res[..])] {
                let mut out = vec![f32::NAN; rows * outputs];
                lin.forward(&x, rows, residual, &mut out);
                for r in 0..rows {
                    for o in 0..outputs {
                        let want = (0..inputs)
                            .map(|i| x[r * inputs + i] * w[o * inputs + i])
                            .sum::<f32>()
                            + b[o]
                            + residual.map_or(0.0, |res| res[r * outputs + o]);
                        let got = out[r * outputs + o];
                        assert!(
                            close(got, want, 1e-5),
                            "rows {rows} ({r}, {o}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn concat_puts_outputs_side_by_side() {
        let a = Linear::from_torch(&[1.0, 2.0], vec![0.5], 1, 2);
        let b = Linear::from_torch(&[3.0, 4.0, 5.0, 6.0], vec![1.0, 2.0], 2, 2);
        let ab = Linear::concat(&[a, b]);
        let mut out = vec![0f32; 3];
        ab.forward(&[1.0, 1.0], 1, None, &mut out);
        assert_eq!(out, vec![3.5, 8.0, 13.0]);
    }

    #[test]
    fn int8_with_an_f32_tail_keeps_the_tail_exact_and_the_rest_close() {
        let (inputs, outputs, tail) = (70, 48, 16);
        let w: Vec<f32> = (0..outputs * inputs)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let b: Vec<f32> = (0..outputs).map(|i| i as f32).collect();
        let f32_layer = Linear::from_torch(&w, b.clone(), outputs, inputs);
        let mut mixed = Linear::from_torch(&w, b, outputs, inputs);
        mixed.to_int8_but_last(tail);
        assert!(mixed.bytes() < f32_layer.bytes(), "{}", mixed.bytes());
        for rows in [1, 5, SMALL_ROWS + 3] {
            let x: Vec<f32> = (0..rows * inputs)
                .map(|i| (i as f32 * 0.11).cos())
                .collect();
            let res: Vec<f32> = (0..rows * outputs).map(|i| i as f32 * 0.5).collect();
            let (mut want, mut got) = (vec![0f32; rows * outputs], vec![0f32; rows * outputs]);
            f32_layer.forward(&x, rows, Some(&res), &mut want);
            mixed.forward(&x, rows, Some(&res), &mut got);
            for r in 0..rows {
                for o in 0..outputs {
                    let (g, w) = (got[r * outputs + o], want[r * outputs + o]);
                    let tol = if o >= outputs - tail { 1e-5 } else { 2e-2 };
                    assert!(close(g, w, tol), "rows {rows} ({r}, {o}): {g} vs {w}");
                }
            }
        }
    }
}
