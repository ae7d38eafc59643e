//! The arithmetic of the encoders' forward pass on plain `f32` slices: linear layers (the
//! `gemm` crate for batches, a weight-streaming dot product for a few rows), and the fused
//! elementwise steps around them (bias + residual, LayerNorm, softmax, GELU).
//!
//! The elementwise steps are written as straight-line loops the compiler vectorises. They are
//! compiled once per instruction set and picked at run time ([`simd!`]), so one binary runs
//! everywhere (aarch64 and plain x86-64 included) and still uses AVX2 or AVX-512 where the CPU
//! has them: in profiles of a naive pass, this elementwise work cost more than the GEMMs.

use rayon::prelude::*;

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

    /// Bytes of the weights and bias in memory.
    pub fn bytes(&self) -> usize {
        let weights = match &self.weights {
            Weights::F32(wt) => wt.len() * 4,
            #[cfg(target_arch = "x86_64")]
            Weights::Bf16(p) => p.bytes(),
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

/// A strided matrix operand: element `(i, j)` lives at `ptr + i·row + j·col`.
#[derive(Clone, Copy)]
pub struct Mat {
    /// Element `(0, 0)`.
    pub ptr: *mut f32,
    /// Elements from one row to the next.
    pub row: isize,
    /// Elements from one column to the next.
    pub col: isize,
}

impl Mat {
    /// Rows `row_stride` elements apart, columns adjacent.
    pub fn row_major(ptr: *mut f32, row_stride: usize) -> Mat {
        Mat {
            ptr,
            row: row_stride as isize,
            col: 1,
        }
    }
}

/// `dst (m×n) = scale · lhs (m×k) · rhs (k×n)`, added to what `dst` holds if `accumulate`.
///
/// # Safety
/// Every operand must be valid for its shape and strides, and `dst` must not overlap the
/// others.
pub unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: Mat,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.col,
            dst.row,
            accumulate,
            lhs.ptr,
            lhs.col,
            lhs.row,
            rhs.ptr,
            rhs.col,
            rhs.row,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Threads for a GEMM of `work` multiply-adds: tiny ones are not worth waking a second core.
pub fn parallelism(work: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && work >= 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// The instruction sets the kernels are compiled for, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Isa {
    /// AVX-512 F/BW/DQ/VL (with AVX2 and FMA).
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// Whatever the target guarantees (SSE2 on x86-64, NEON on aarch64).
    Baseline,
}

/// The best [`Isa`] this CPU runs (std caches the detection).
fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
        {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// Compiles `$generic` (an `#[inline(always)]` fn) again for AVX-512 and AVX2+FMA and calls
/// the best the CPU offers.
macro_rules! simd {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $generic:ident) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? { $generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? { $generic($($arg),*) }
                match isa() {
                    // SAFETY: `isa` found every feature the function was compiled for.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Baseline => {}
                }
            }
            $generic($($arg),*)
        }
    };
}

/// `e^x` for `x ≤ 0`-ish arguments, branch-free so it vectorises: range reduction by ln 2 and
/// a degree-6 polynomial (relative error ≈ 2e-7 over the clamped range).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let rounded = x * LOG2E + ROUND;
    let k = rounded - ROUND;
    // The integer k also sits in `rounded`'s low mantissa bits; reading it from there avoids
    // a float-to-int `as` cast, whose saturating semantics do not vectorise.
    let two_k = f32::from_bits(
        rounded
            .to_bits()
            .wrapping_sub(ROUND.to_bits())
            .wrapping_add(127)
            << 23,
    );
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    two_k * p
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7), branch-free.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

#[inline(always)]
fn gelu_erf_generic(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn gelu_tanh_generic(x: &mut [f32]) {
    // tanh(u) = 1 − 2 / (e^{2u} + 1), through the same vectorised exp.
    const C: f32 = 0.797_884_6; // √(2/π)
    for v in x {
        let u = C * (*v + 0.044_715 * *v * *v * *v);
        let tanh = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
        *v = 0.5 * *v * (1.0 + tanh);
    }
}

#[inline(always)]
fn relu_generic(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

#[inline(always)]
fn softmax_generic(row: &mut [f32]) {
    // Three separate loops, reductions in lanes: a running sum inside the exp loop would
    // keep the compiler from vectorising the exp (it was a fifth of a long pass).
    let max = max(row);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Largest element of `x`, in 16 lanes so it vectorises.
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = if v > *l { v } else { *l };
        }
    }
    lanes.iter().fold(tail, |a, &b| if b > a { b } else { a })
}

/// Sum of `x`, in 16 lanes so it vectorises.
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn layer_norm_generic(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    for v in x.iter_mut() {
        *v -= mean;
    }
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let var = (lanes.iter().sum::<f32>() + tail) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in x.iter_mut().zip(gamma).zip(beta) {
        *v = *v * inv * g + b;
    }
}

#[inline(always)]
fn add_into_generic(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = a + b;
    }
}

simd!(
    /// Exact (erf) GELU in place, as BERT's `gelu`.
    fn gelu_erf_row(x: &mut [f32]) = gelu_erf_generic
);
simd!(
    /// tanh-approximated GELU in place (`gelu_new`, `gelu_pytorch_tanh`).
    fn gelu_tanh_row(x: &mut [f32]) = gelu_tanh_generic
);
simd!(fn relu_row(x: &mut [f32]) = relu_generic);
simd!(
    /// Softmax of one row in place.
    pub fn softmax(row: &mut [f32]) = softmax_generic
);
simd!(
    /// LayerNorm of one row in place (population variance, as PyTorch).
    pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) = layer_norm_generic
);
simd!(
    /// `out = a + b`, elementwise.
    pub fn add_into(out: &mut [f32], a: &[f32], b: &[f32]) = add_into_generic
);

/// The activation between a transformer layer's two feed-forward linears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: exact, through erf.
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

/// Below this many elements, row-wise work stays on the calling thread: handing it to the
/// pool and waiting costs more than doing it (it dominated a one-text pass). Waking a
/// sleeping pool thread costs tens of microseconds in a VM; GELU over 43k floats takes about
/// as long. With bf16, passes over 2, 4 and 8 texts of 14 tokens took 2.2, 3.9 and 10.3 ms
/// at 1 << 17 against 5.1, 8.9 and 14.5 ms at 1 << 15.
pub const PARALLEL_MIN: usize = 1 << 17;

/// Runs `f` on every `width`-wide chunk of `x`: on the pool when there is enough work.
pub fn for_rows(x: &mut [f32], width: usize, f: impl Fn(&mut [f32]) + Send + Sync) {
    let width = width.max(1);
    if x.len() < PARALLEL_MIN {
        x.chunks_mut(width).for_each(f);
    } else {
        x.par_chunks_mut(width).for_each(f);
    }
}

/// Applies `act` in place to `rows` of `width`.
pub fn activate(x: &mut [f32], width: usize, act: Activation) {
    let f = match act {
        Activation::GeluErf => gelu_erf_row,
        Activation::GeluTanh => gelu_tanh_row,
        Activation::Relu => relu_row,
    };
    for_rows(x, width * 16, f);
}

/// LayerNorm of every `width`-wide row of `x` in place.
pub fn layer_norm_rows(x: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    for_rows(x, width, |row| layer_norm(row, gamma, beta, eps));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn exp_matches_std_over_the_softmax_range() {
        for i in 0..=2000 {
            let x = -80.0 + i as f32 * 0.045;
            assert!(
                close(exp(x), x.exp(), 4e-7),
                "exp({x}) {} vs {}",
                exp(x),
                x.exp()
            );
        }
    }

    #[test]
    fn gelu_erf_matches_the_f64_reference() {
        // Reference: GELU in f64 through candle's f64 erf.
        let xs: Vec<f32> = (0..=1600).map(|i| -8.0 + i as f32 * 0.01).collect();
        let mut ours = xs.clone();
        gelu_erf_row(&mut ours);
        for (x, g) in xs.iter().zip(&ours) {
            let x64 = *x as f64;
            let want = 0.5 * x64 * (1.0 + candle_core::cpu::erf::erf_f64(x64 / 2f64.sqrt()));
            assert!(
                (*g as f64 - want).abs() < 2e-6,
                "gelu({x}) = {g}, want {want}"
            );
        }
    }

    #[test]
    fn gelu_tanh_matches_the_formula() {
        let xs: Vec<f32> = (0..=1600).map(|i| -8.0 + i as f32 * 0.01).collect();
        let mut ours = xs.clone();
        gelu_tanh_row(&mut ours);
        for (x, g) in xs.iter().zip(&ours) {
            let x64 = *x as f64;
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let want = 0.5 * x64 * (1.0 + u.tanh());
            assert!(
                (*g as f64 - want).abs() < 2e-6,
                "gelu_tanh({x}) = {g}, want {want}"
            );
        }
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let mut row = vec![1000.0, 999.0, -1000.0, 0.0];
        softmax(&mut row);
        assert!(close(row.iter().sum(), 1.0, 1e-6));
        assert!(close(row[0], 1.0 / (1.0 + (-1f32).exp()), 1e-6));
        // e^-2000 underflows; ours stops at e^-87, which is as good as zero beside 1.
        assert!(row[2] < 1e-37, "{}", row[2]);
    }

    #[test]
    fn softmax_matches_the_f64_reference_past_the_lane_width() {
        let logits: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin() * 9.0).collect();
        let mut row = logits.clone();
        softmax(&mut row);
        let max = logits.iter().fold(f64::MIN, |a, &b| a.max(b as f64));
        let total: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        for (got, &l) in row.iter().zip(&logits) {
            let want = (l as f64 - max).exp() / total;
            assert!(
                (*got as f64 - want).abs() < 1e-7 * (1.0 + want),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn layer_norm_normalises_a_row() {
        let mut x: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let gamma = vec![2.0; 37];
        let beta = vec![1.0; 37];
        layer_norm(&mut x, &gamma, &beta, 1e-12);
        let mean = x.iter().map(|v| (v - 1.0) / 2.0).sum::<f32>() / 37.0;
        let var = x.iter().map(|v| ((v - 1.0) / 2.0).powi(2)).sum::<f32>() / 37.0;
        assert!(mean.abs() < 1e-6, "mean {mean}");
        assert!(close(var, 1.0, 1e-5), "var {var}");
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
}
