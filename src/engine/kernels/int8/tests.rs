//! Every int8 kernel this CPU runs, on ragged shapes, against the product computed in f64
//! from the same quantized weights and activations (exact up to the f32 sums of blocks), and
//! against the f32 product within the quantization's error.

use super::*;

/// A deterministic pseudo-random value in [-1, 1).
fn value(i: usize, salt: usize) -> f32 {
    let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (salt as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// `Wᵀ` with a few large weights, so blocks get different scales.
fn weights(inputs: usize, outputs: usize) -> Vec<f32> {
    (0..inputs * outputs)
        .map(|i| value(i, 1) * if i % 97 == 0 { 8.0 } else { 0.5 })
        .collect()
}

/// Rows with an outlier channel, as LayerNorm outputs have.
fn activations(rows: usize, inputs: usize) -> Vec<f32> {
    (0..rows * inputs)
        .map(|i| value(i, 2) * if i % inputs == 5 { 30.0 } else { 1.0 })
        .collect()
}

/// What the kernels must compute: the quantized operands multiplied in f64.
fn exact(p: &Packed, x: &[f32], rows: usize, bias: &[f32], residual: Option<&[f32]>) -> Vec<f64> {
    let (k, n) = (p.inputs, p.outputs);
    let mut out = vec![0f64; rows * n];
    for r in 0..rows {
        let row = &x[r * k..(r + 1) * k];
        let mut q = vec![0i16; k];
        let s = quantize::quantize_row_generic(row, &mut q) as f64;
        for o in 0..n {
            let (panel, c) = (o / NR, o % NR);
            let mut sum = 0f64;
            for b in 0..p.blocks {
                let mut block = 0i64;
                for kk in 0..BLOCK {
                    let i = b * BLOCK + kk;
                    if i >= k {
                        break;
                    }
                    let at =
                        (panel * p.blocks + b) * PANEL_BLOCK + (kk / 2) * 2 * NR + c * 2 + kk % 2;
                    block += i64::from(q[i]) * i64::from(p.weights[at]);
                }
                sum += block as f64 * f64::from(p.scales[(panel * p.blocks + b) * NR + c]);
            }
            out[r * n + o] = sum * s
                + f64::from(bias[o])
                + residual.map_or(0.0, |res| f64::from(res[r * n + o]));
        }
    }
    out
}

#[test]
fn every_kernel_here_computes_the_quantized_product_on_ragged_shapes() {
    println!("int8 kernels here: {:?}", Kernel::here());
    // 1 to 9 panels, the last one part-filled in most. A pool's thread count decides how many
    // panels a task (and so AVX-512's tile) spans: on 1 thread 4, so 48 and 40 outputs make
    // one tile of 3 panels (40's last part-filled) and 100 one of 4 and one of 3; on 16, 1.
    let shapes = [
        (37, 71),
        (384, 48),
        (64, 16),
        (1536, 40),
        (96, 130),
        (64, 100),
    ];
    for threads in [1, 2, 16] {
        tasks::on_threads(threads, || {
            for (inputs, outputs) in shapes {
                products_match_on(inputs, outputs, threads);
            }
        });
    }
}

/// Every kernel here, on `rows` from 1 to 69, against [`exact`].
fn products_match_on(inputs: usize, outputs: usize, threads: usize) {
    let wt = weights(inputs, outputs);
    let p = Packed::new(&wt, inputs, outputs);
    let bias: Vec<f32> = (0..outputs).map(|o| o as f32 * 0.25).collect();
    // From `WIDEN_ROWS` (32) rows a task (up to 64 rows) widens its panels first: 35
    // rows take that path, 69 take it for 64 rows and the plain one for the last 5.
    for rows in [1, 3, 4, 5, 8, 9, 35, 64 + 5] {
        let x = activations(rows, inputs);
        let res: Vec<f32> = (0..rows * outputs).map(|i| value(i, 3)).collect();
        for residual in [None, Some(&res[..])] {
            let want = exact(&p, &x, rows, &bias, residual);
            for kernel in Kernel::here() {
                let mut out = vec![f32::NAN; rows * outputs];
                p.forward_with(kernel, &x, rows, &bias, residual, &mut out);
                for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{} {inputs}→{outputs}, {rows} rows, {threads} threads, output {i}: \
                         {got} vs {want}",
                        kernel.name()
                    );
                }
            }
        }
    }
}

#[test]
fn the_product_is_within_the_quantization_error_of_f32() {
    let (inputs, outputs, rows) = (384, 64, 6);
    let wt = weights(inputs, outputs);
    let x = activations(rows, inputs);
    let p = Packed::new(&wt, inputs, outputs);
    let bias = vec![0f32; outputs];
    let mut out = vec![0f32; rows * outputs];
    p.forward(&x, rows, &bias, None, &mut out);
    for r in 0..rows {
        for o in 0..outputs {
            let want: f64 = (0..inputs)
                .map(|i| f64::from(x[r * inputs + i]) * f64::from(wt[i * outputs + o]))
                .sum();
            // Half a step of each weight (block max / 254) times the row's magnitudes.
            let bound: f64 = (0..inputs)
                .map(|i| f64::from(x[r * inputs + i].abs()) * 8.0 / 254.0)
                .sum::<f64>()
                + 1e-3;
            let got = f64::from(out[r * outputs + o]);
            assert!((got - want).abs() <= bound, "({r}, {o}): {got} vs {want}");
        }
    }
}

#[test]
fn a_row_of_zeros_gives_the_bias_and_rows_do_not_depend_on_each_other() {
    let (inputs, outputs) = (40, 20);
    let p = Packed::new(&weights(inputs, outputs), inputs, outputs);
    let bias: Vec<f32> = (0..outputs).map(|o| o as f32).collect();
    let mut x = activations(5, inputs);
    x[2 * inputs..3 * inputs].fill(0.0);
    for kernel in Kernel::here() {
        let mut all = vec![0f32; 5 * outputs];
        p.forward_with(kernel, &x, 5, &bias, None, &mut all);
        assert_eq!(
            &all[2 * outputs..3 * outputs],
            &bias[..],
            "{}",
            kernel.name()
        );
        for r in 0..5 {
            let mut one = vec![0f32; outputs];
            p.forward_with(
                kernel,
                &x[r * inputs..(r + 1) * inputs],
                1,
                &bias,
                None,
                &mut one,
            );
            assert_eq!(
                &all[r * outputs..(r + 1) * outputs],
                &one[..],
                "{} row {r}",
                kernel.name()
            );
        }
    }
}

#[test]
fn weights_take_a_quarter_of_f32_and_the_scales_an_eighth_more() {
    let p = Packed::new(&weights(384, 1536), 384, 1536);
    assert_eq!(p.bytes(), 384 * 1536 + 384 * 1536 / BLOCK * 4);
}

/// One text through a 384-wide layer on 16 threads takes tasks of fewer panels (every thread
/// has one) than on 2; the products must not change by a bit.
#[test]
fn one_text_cut_for_sixteen_threads_gives_the_same_product() {
    let (rows, inputs, outputs) = (13, 384, 384);
    assert!(rows * inputs * outputs >= PARALLEL_MACS);
    let p = Packed::new(&weights(inputs, outputs), inputs, outputs);
    assert!(tasks::units_per_task(p.panels, 4, 1, 16) < 4);
    let x = activations(rows, inputs);
    let bias = vec![0.25f32; outputs];
    let run = |threads: usize| {
        let mut out = vec![f32::NAN; rows * outputs];
        tasks::on_threads(threads, || p.forward(&x, rows, &bias, None, &mut out));
        out
    };
    let two = run(2);
    let want = exact(&p, &x, rows, &bias, None);
    for (i, (&got, &want)) in two.iter().zip(&want).enumerate() {
        assert!(
            (f64::from(got) - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "{i}: {got} vs {want}"
        );
    }
    assert_eq!(run(16), two);
    release_thread_buffers();
}

/// Passes run on the pool's threads, and a thread waiting for its call's tiles runs other
/// tasks, other calls among them: a call must not hold its thread's buffers borrowed while
/// it waits (it did, and such a nested call panicked with "RefCell already borrowed").
#[test]
fn calls_running_on_the_pool_at_once_each_get_their_own_product() {
    use rayon::prelude::*;
    // Large enough to split into parallel tiles.
    let (rows, inputs, outputs) = (128, 384, 384);
    assert!(rows * inputs * outputs >= PARALLEL_MACS);
    let p = Packed::new(&weights(inputs, outputs), inputs, outputs);
    let bias = vec![0.25f32; outputs];
    let inputs_of: Vec<Vec<f32>> = (0..16)
        .map(|i| {
            activations(rows, inputs)
                .iter()
                .map(|v| v * (i + 1) as f32)
                .collect()
        })
        .collect();
    let alone: Vec<Vec<f32>> = inputs_of
        .iter()
        .map(|x| {
            let mut out = vec![0f32; rows * outputs];
            p.forward(x, rows, &bias, None, &mut out);
            out
        })
        .collect();
    // More threads than cores: threads are preempted mid-call, so others wait on their
    // tiles and, waiting, pick up other calls.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(8)
        .build()
        .expect("a thread pool");
    pool.install(|| {
        for _ in 0..20 {
            let together: Vec<Vec<f32>> = inputs_of
                .par_iter()
                .map(|x| {
                    let mut out = vec![0f32; rows * outputs];
                    p.forward(x, rows, &bias, None, &mut out);
                    out
                })
                .collect();
            assert_eq!(together, alone);
        }
    });
    release_thread_buffers();
}

#[test]
fn weights_quantized_elsewhere_by_the_same_rule_pack_to_the_same_layer() {
    // A package's int8 storage: each output's row in blocks of 32, scale max / 127.
    let (inputs, outputs) = (96, 21);
    let wt = weights(inputs, outputs);
    let w = |o: usize, i: usize| wt[i * outputs + o];
    let mut q = vec![0i8; outputs * inputs];
    let mut s = vec![0f32; outputs * inputs / BLOCK];
    for o in 0..outputs {
        for b in 0..inputs / BLOCK {
            let max = (0..BLOCK).fold(0f32, |m, k| m.max(w(o, b * BLOCK + k).abs()));
            s[o * (inputs / BLOCK) + b] = max / 127.0;
            for k in 0..BLOCK {
                let i = b * BLOCK + k;
                q[o * inputs + i] = (w(o, i) * (127.0 / max)).round_ties_even() as i8;
            }
        }
    }
    let direct = Packed::from_quantized(
        inputs,
        outputs,
        |o, i| q[o * inputs + i],
        |o, b| s[o * (inputs / BLOCK) + b],
    );
    let packed = Packed::new(&wt, inputs, outputs);
    assert_eq!(direct.weights, packed.weights);
    assert_eq!(direct.scales, packed.scales);
    assert_eq!((direct.inputs(), direct.outputs()), (inputs, outputs));
}
