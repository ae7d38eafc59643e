//! The elementwise steps around the linear layers (bias + residual, LayerNorm, softmax, GELU):
//! straight-line loops the compiler vectorises, each compiled per instruction set by `simd!`.
//! In profiles of a naive pass this work cost more than the GEMMs.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::{Isa, isa};

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

/// erf(x) as a ratio of two polynomials in x² over x clamped to ±4 (Eigen's
/// `generic_fast_erf_float`; erf(4) is 1 to f32's precision): 11 multiply-adds and a divide.
/// Abramowitz & Stegun 7.1.26, before it, took an exp as well: GELU over a 221-token pair's
/// feed-forward width took 0.55 ms against 0.32 (AMD EPYC Zen 3, one thread), at 5% of a
/// one-pair rerank.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142e-10_f32;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506e-5,
        -7.349_906_4e-4,
        -2.954_600_5e-3,
        -1.609_603_1e-2,
    ] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5f32;
    for c in [
        -2.133_740_5e-4,
        -1.682_827_6e-3,
        -7.373_33e-3,
        -1.426_474_8e-2,
    ] {
        q = q * x2 + c;
    }
    p * x / q
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
fn silu_generic(x: &mut [f32]) {
    for v in x {
        *v /= 1.0 + exp(-*v);
    }
}

#[inline(always)]
fn quick_gelu_generic(x: &mut [f32]) {
    for v in x {
        *v /= 1.0 + exp(-1.702 * *v);
    }
}

#[inline(always)]
fn mul_into_generic(out: &mut [f32], a: &[f32]) {
    for (o, a) in out.iter_mut().zip(a) {
        *o *= a;
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
    // The sum runs in 16 lanes beside the exp, so both vectorise (a running scalar sum kept
    // the compiler from vectorising the exp: it was a fifth of a long pass), and a ragged tail
    // goes through the same lanes padded: a row of 221 scores (a one-pair rerank) otherwise
    // took its last 13 exps one at a time.
    let max = max(row);
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for c in &mut chunks {
        for (v, l) in c.iter_mut().zip(lanes.iter_mut()) {
            *v = exp(*v - max);
            *l += *v;
        }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let n = tail.len();
        let mut pad = [max; 16];
        pad[..n].copy_from_slice(tail);
        for (i, (v, l)) in pad.iter_mut().zip(lanes.iter_mut()).enumerate() {
            *v = exp(*v - max);
            *l += if i < n { *v } else { 0.0 };
        }
        tail.copy_from_slice(&pad[..n]);
    }
    let inv = 1.0 / lanes.iter().sum::<f32>();
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
fn rms_norm_generic(x: &mut [f32], gamma: &[f32], eps: f32) {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let mean = (lanes.iter().sum::<f32>() + tail) / x.len() as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    for (v, g) in x.iter_mut().zip(gamma) {
        *v = *v * inv * g;
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
    /// SiLU (swish) in place: `x · sigmoid(x)`, the gate of SwiGLU.
    fn silu_row(x: &mut [f32]) = silu_generic
);
simd!(
    /// CLIP's `quick_gelu` in place: `x · sigmoid(1.702 x)`.
    fn quick_gelu_row(x: &mut [f32]) = quick_gelu_generic
);
simd!(
    /// `out *= a`, elementwise.
    fn mul_into(out: &mut [f32], a: &[f32]) = mul_into_generic
);
simd!(
    /// Softmax of one row in place.
    pub fn softmax(row: &mut [f32]) = softmax_generic
);
simd!(
    /// LayerNorm of one row in place (population variance, as PyTorch).
    pub fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) = layer_norm_generic
);
simd!(
    /// RMSNorm of one row in place: `x / sqrt(mean(x²) + eps) · gamma`, as transformers'
    /// `Qwen3RMSNorm` (in f32, the weight applied last).
    pub fn rms_norm(x: &mut [f32], gamma: &[f32], eps: f32) = rms_norm_generic
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
    /// `silu` / `swish` (SwiGLU's gate).
    Silu,
    /// `quick_gelu`: `x · sigmoid(1.702 x)` (CLIP's towers).
    QuickGelu,
}

impl Activation {
    fn row(self) -> fn(&mut [f32]) {
        match self {
            Activation::GeluErf => gelu_erf_row,
            Activation::GeluTanh => gelu_tanh_row,
            Activation::Relu => relu_row,
            Activation::Silu => silu_row,
            Activation::QuickGelu => quick_gelu_row,
        }
    }
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
    for_rows(x, width * 16, act.row());
}

/// A gated linear unit over `rows` of `2 × width` (the gate's values, then the values it
/// scales): `out` gets `act(gate) · up`, `width` per row.
pub fn gate(x: &[f32], rows: usize, width: usize, act: Activation, out: &mut [f32]) {
    let f = act.row();
    let one = |(o, x): (&mut [f32], &[f32])| {
        let (gate, up) = x.split_at(width);
        o.copy_from_slice(gate);
        f(o);
        mul_into(o, up);
    };
    let (x, out) = (&x[..rows * 2 * width], &mut out[..rows * width]);
    if out.len() < PARALLEL_MIN {
        out.chunks_exact_mut(width)
            .zip(x.chunks_exact(2 * width))
            .for_each(one);
    } else {
        out.par_chunks_exact_mut(width)
            .zip(x.par_chunks_exact(2 * width))
            .for_each(one);
    }
}

/// LayerNorm of every `width`-wide row of `x` in place.
pub fn layer_norm_rows(x: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    for_rows(x, width, |row| layer_norm(row, gamma, beta, eps));
}

/// RMSNorm of every `width`-wide row of `x` in place.
pub fn rms_norm_rows(x: &mut [f32], width: usize, gamma: &[f32], eps: f32) {
    for_rows(x, width, |row| rms_norm(row, gamma, eps));
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
    fn gelu_erf_is_zero_far_below_and_the_identity_far_above() {
        // erf is clamped at ±4, where it must be ±1 exactly: one step short of 1 would make
        // GELU(-1e30) -1e22.
        let xs = [-1e30, -1e4, -12.0, 12.0, 1e4, 1e30];
        let mut ours = xs;
        gelu_erf_row(&mut ours);
        assert_eq!(ours, [-0.0, -0.0, -0.0, 12.0, 1e4, 1e30]);
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
    fn quick_gelu_matches_the_formula() {
        let xs: Vec<f32> = (0..=1600).map(|i| -8.0 + i as f32 * 0.01).collect();
        let mut ours = xs.clone();
        activate(&mut ours, 1, Activation::QuickGelu);
        for (x, g) in xs.iter().zip(&ours) {
            let want = *x as f64 / (1.0 + (-1.702 * *x as f64).exp());
            assert!(
                (*g as f64 - want).abs() < 2e-6,
                "quick_gelu({x}) = {g}, want {want}"
            );
        }
    }

    #[test]
    fn silu_and_the_gate_match_the_formula() {
        let xs: Vec<f32> = (0..=1600).map(|i| -8.0 + i as f32 * 0.01).collect();
        let mut ours = xs.clone();
        silu_row(&mut ours);
        for (x, g) in xs.iter().zip(&ours) {
            let want = *x as f64 / (1.0 + (-*x as f64).exp());
            assert!(
                (*g as f64 - want).abs() < 2e-6,
                "silu({x}) = {g}, want {want}"
            );
        }
        // Two rows of width 2: [gate | up].
        let x = [1.0, -2.0, 3.0, 4.0, 0.5, 0.0, -1.0, 2.0];
        let mut out = [0f32; 4];
        gate(&x, 2, 2, Activation::Relu, &mut out);
        assert_eq!(out, [3.0, 0.0, -0.5, 0.0]);
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
    fn rms_norm_matches_the_f64_formula_past_the_lane_width() {
        let x: Vec<f32> = (0..37)
            .map(|i| (i as f32 * 0.3).cos() * 4.0 + 0.5)
            .collect();
        let gamma: Vec<f32> = (0..37).map(|i| 0.5 + i as f32 / 37.0).collect();
        let mut ours = x.clone();
        rms_norm(&mut ours, &gamma, 1e-6);
        let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 37.0;
        for ((o, &v), &g) in ours.iter().zip(&x).zip(&gamma) {
            let want = v as f64 / (ms + 1e-6).sqrt() * g as f64;
            assert!(
                (*o as f64 - want).abs() < 1e-6 * (1.0 + want.abs()),
                "{o} vs {want}"
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
}
