//! Every int8-fast kernel this CPU runs, on ragged shapes, against the product computed in
//! i64 from the same quantized weights and activations (the kernels' int32 sums are exact, so
//! all kernels that take the same weights agree bit for bit), and against the f32 product
//! within the quantization's error.

use super::*;

/// A deterministic pseudo-random value in [-1, 1).
fn value(i: usize, salt: usize) -> f32 {
    let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (salt as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// `Wᵀ` with a few large weights.
fn weights(inputs: usize, outputs: usize) -> Vec<f32> {
    (0..inputs * outputs)
        .map(|i| value(i, 1) * if i % 97 == 0 { 4.0 } else { 0.5 })
        .collect()
}

/// Rows with an outlier channel, as LayerNorm outputs have, and a one-sided row (as after
/// GELU) every third row.
fn activations(rows: usize, inputs: usize) -> Vec<f32> {
    (0..rows * inputs)
        .map(|i| {
            let v = value(i, 2) * if i % inputs == 5 { 30.0 } else { 1.0 };
            if (i / inputs) % 3 == 2 { v.abs() } else { v }
        })
        .collect()
}

/// The smoothing a calibration over `x` would give.
fn smooth_for(x: &[f32], wt: &[f32], inputs: usize, outputs: usize) -> Vec<f32> {
    let mut max = vec![0f32; inputs];
    for row in x.chunks_exact(inputs) {
        for (m, &v) in max.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    smoothing(&max, wt, inputs, outputs)
}

/// What the kernels must compute: the quantized operands multiplied in i64, scaled in f64.
fn exact(p: &Packed, x: &[f32], rows: usize, bias: &[f32], residual: Option<&[f32]>) -> Vec<f64> {
    let (k, n) = (p.inputs, p.outputs);
    let groups = p.padded / GROUP;
    let scheme = Scheme {
        unsmooth: &p.unsmooth,
        rotation: p.rotation,
        signed: false,
    };
    let mut out = vec![0f64; rows * n];
    for r in 0..rows {
        let mut q = vec![0u8; p.padded];
        let mut scratch = vec![0f32; k];
        let row = &x[r * k..(r + 1) * k];
        let rq = quantize::quantize_row(row, scheme, &mut scratch, &mut q);
        let value = |i: usize| i64::from(q[i]);
        for o in 0..n {
            let (panel, c) = (o / NR, o % NR);
            let mut sum = 0i64;
            for i in 0..k {
                let at = (panel * groups + i / GROUP) * PANEL_GROUP + c * GROUP + i % GROUP;
                sum += (value(i) - i64::from(rq.zero)) * i64::from(p.weights[at]);
            }
            out[r * n + o] = sum as f64 * f64::from(rq.scale) * f64::from(p.scales[o])
                + f64::from(bias[o])
                + residual.map_or(0.0, |res| f64::from(res[r * n + o]));
        }
    }
    out
}

/// The kernels here that take `p`'s weights.
fn kernels_for(p: &Packed) -> Vec<Kernel> {
    Kernel::here()
        .into_iter()
        .filter(|k| p.pairs_limited || !k.limits_pairs())
        .collect()
}

#[test]
fn every_kernel_here_computes_the_quantized_product_on_ragged_shapes() {
    println!("int8-fast kernels here: {:?}", Kernel::here());
    // Rotations of 1 (37 inputs), 4, 16 and 128.
    for (inputs, outputs) in [
        (37, 71),
        (384, 48),
        (64, 16),
        (1536, 40),
        (20, 200),
        (48, 33),
    ] {
        let wt = weights(inputs, outputs);
        let bias: Vec<f32> = (0..outputs).map(|o| o as f32 * 0.25).collect();
        for rows in [1, 2, 3, 4, 5, 6, 7, 13, 48 + 5, 100] {
            let x = activations(rows, inputs);
            let smooth = smooth_for(&x, &wt, inputs, outputs);
            let res: Vec<f32> = (0..rows * outputs).map(|i| value(i, 3)).collect();
            for (limit_pairs, residual) in [(false, None), (true, None), (true, Some(&res[..]))] {
                let p = Packed::new(&wt, inputs, outputs, &smooth, limit_pairs);
                let want = exact(&p, &x, rows, &bias, residual);
                let mut first: Option<Vec<f32>> = None;
                for kernel in kernels_for(&p) {
                    let mut out = vec![f32::NAN; rows * outputs];
                    p.forward_strided(kernel, &x, rows, &bias, residual, &mut out, outputs);
                    for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{} {inputs}→{outputs}, {rows} rows, output {i}: {got} vs {want}",
                            kernel.name()
                        );
                    }
                    // Exact int32 sums and one shared finish: every kernel, the same bits.
                    match &first {
                        None => first = Some(out),
                        Some(f) => assert!(
                            f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{} differs from {} on {inputs}→{outputs}, {rows} rows",
                            kernel.name(),
                            kernels_for(&p)[0].name()
                        ),
                    }
                }
            }
        }
    }
}

#[test]
fn the_extremes_of_both_operands_sum_exactly() {
    // Activations of 0 and 255 (signed: −128 and 127) against weights of ±127, the largest
    // products any kernel sums. 17 inputs: an odd width, so no rotation changes the weights.
    let (inputs, outputs) = (17, 32);
    let wt: Vec<f32> = (0..inputs * outputs)
        .map(|i| {
            if (i / outputs + i % outputs) % 3 == 0 {
                1.0
            } else {
                -1.0
            }
        })
        .collect();
    let patterns: [fn(usize) -> u8; 4] = [
        |_| 0,
        |_| 255,
        |k| if k % 2 == 0 { 0 } else { 255 },
        |k| (k * 37 % 256) as u8,
    ];
    for kernel in Kernel::here() {
        // Pairs limited, every pair of same-signed weights sums to 128: 255 × 128 in int16.
        let p = Packed::new(&wt, inputs, outputs, &[], kernel.limits_pairs());
        let top = if kernel.limits_pairs() { 64 } else { 127 };
        assert_eq!(p.rotation, 1);
        assert!(p.weights.iter().all(|&w| w.abs() == top || w == 0));
        let (tile_rows, _) = kernel.tile();
        let mr = tile_rows.min(patterns.len());
        let lda = p.padded;
        let mut a = vec![0u8; mr * lda];
        for (r, row) in a.chunks_exact_mut(lda).enumerate() {
            // As the kernel reads them: signed kernels take `q − 128`.
            for (k, q) in row.iter_mut().enumerate().take(inputs) {
                *q = patterns[r](k) ^ if kernel.signed() { 0x80 } else { 0 };
            }
        }
        let mut acc = [[0i32; NR * MAX_PANELS]; MAX_ROWS];
        for p0 in 0..p.panels {
            p.tile(kernel, &a, lda, mr, p0, 1, &mut acc);
            for (r, sums) in acc.iter().enumerate().take(mr) {
                for (c, &got) in sums.iter().enumerate().take(NR) {
                    let o = p0 * NR + c;
                    let want: i32 = (0..inputs)
                        .map(|k| {
                            let q =
                                i32::from(patterns[r](k)) - if kernel.signed() { 128 } else { 0 };
                            let at = (o / NR * (p.padded / GROUP) + k / GROUP) * PANEL_GROUP
                                + c * GROUP
                                + k % GROUP;
                            q * i32::from(p.weights[at])
                        })
                        .sum();
                    assert_eq!(got, want, "{} row {r} output {o}", kernel.name());
                }
            }
        }
    }
}

/// One text through a 384-wide layer on 16 threads takes tiles of fewer panels (every thread
/// has a task) than on 2; the sums are exact, so the products must not change by a bit.
#[test]
fn one_text_cut_for_sixteen_threads_gives_the_same_product() {
    let (rows, inputs, outputs) = (13, 384, 384);
    assert!(rows * inputs * outputs >= PARALLEL_MACS);
    let wt = weights(inputs, outputs);
    let x = activations(rows, inputs);
    let smooth = smooth_for(&x, &wt, inputs, outputs);
    let bias: Vec<f32> = (0..outputs).map(|o| o as f32 * 0.25).collect();
    for kernel in Kernel::here() {
        let p = Packed::new(&wt, inputs, outputs, &smooth, kernel.limits_pairs());
        let (_, most) = kernel.tile();
        let run = |threads: usize| {
            let mut out = vec![f32::NAN; rows * outputs];
            tasks::on_threads(threads, || {
                p.forward_strided(kernel, &x, rows, &bias, None, &mut out, outputs)
            });
            out
        };
        let two = run(2);
        let want = exact(&p, &x, rows, &bias, None);
        for (i, (&got, &want)) in two.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{} output {i}: {got} vs {want}",
                kernel.name()
            );
        }
        let sixteen = run(16);
        assert!(
            two.iter()
                .zip(&sixteen)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{} (tiles of {} panels on 16 threads, {most} on 2)",
            kernel.name(),
            tasks::units_per_task(p.panels, most, 1, 16)
        );
    }
}

#[test]
fn the_product_is_within_the_quantization_error_of_f32() {
    let (inputs, outputs, rows) = (384, 96, 9);
    let wt = weights(inputs, outputs);
    let x = activations(rows, inputs);
    let bias = vec![0f32; outputs];
    for smooth in [Vec::new(), smooth_for(&x, &wt, inputs, outputs)] {
        let p = Packed::new(&wt, inputs, outputs, &smooth, Kernel::best().limits_pairs());
        let mut out = vec![0f32; rows * outputs];
        p.forward_strided(Kernel::best(), &x, rows, &bias, None, &mut out, outputs);
        for r in 0..rows {
            let (mut err, mut norm) = (0f64, 0f64);
            for o in 0..outputs {
                let want: f64 = (0..inputs)
                    .map(|i| f64::from(x[r * inputs + i]) * f64::from(wt[i * outputs + o]))
                    .sum();
                err += (want - f64::from(out[r * outputs + o])).powi(2);
                norm += want * want;
            }
            assert!(
                err.sqrt() <= 0.05 * norm.sqrt(),
                "row {r}: relative error {} (smoothing: {})",
                err.sqrt() / norm.sqrt(),
                !smooth.is_empty()
            );
        }
    }
}

#[test]
fn a_strided_output_keeps_the_columns_it_does_not_own() {
    let (inputs, outputs, rows, ldo) = (48, 20, 5, 27);
    let wt = weights(inputs, outputs);
    let x = activations(rows, inputs);
    let p = Packed::new(&wt, inputs, outputs, &[], true);
    let bias = vec![0.5f32; outputs];
    for kernel in Kernel::here() {
        let mut out = vec![7f32; (rows - 1) * ldo + outputs + 3];
        p.forward_strided(kernel, &x, rows, &bias, None, &mut out, ldo);
        for r in 0..rows {
            assert!(
                out[r * ldo + outputs..(r * ldo + ldo).min(out.len())]
                    .iter()
                    .all(|&v| v == 7.0)
            );
        }
    }
}

#[test]
fn a_row_with_a_nan_gives_nan_and_a_zero_row_gives_the_bias() {
    let (inputs, outputs) = (32, 16);
    let wt = weights(inputs, outputs);
    let p = Packed::new(&wt, inputs, outputs, &[], true);
    let mut x = vec![0f32; 2 * inputs];
    x[inputs + 3] = f32::NAN;
    let bias = vec![0.25f32; outputs];
    for kernel in Kernel::here() {
        let mut out = vec![0f32; 2 * outputs];
        p.forward_strided(kernel, &x, 2, &bias, None, &mut out, outputs);
        assert!(
            out[..outputs].iter().all(|&v| v == 0.25),
            "{}",
            kernel.name()
        );
        assert!(
            out[outputs..].iter().all(|v| v.is_nan()),
            "{}",
            kernel.name()
        );
    }
}

#[test]
fn smoothing_balances_the_ranges_and_leaves_dead_channels_alone() {
    // Input 0 reaches 16 against weights of at most 1; input 1 reaches 1 against weights of
    // 4; input 2 was never seen; input 3 has no weight.
    let wt = vec![1.0, -0.5, 4.0, 2.0, 1.0, 1.0, 0.0, 0.0];
    let s = smoothing(&[16.0, 1.0, 0.0, 3.0], &wt, 4, 2);
    assert_eq!(s, vec![4.0, 0.5, 1.0, 1.0]);
}

#[test]
fn the_rotation_is_its_own_inverse_up_to_its_size() {
    let x: Vec<f32> = (0..256).map(|i| value(i, 4)).collect();
    let mut y = x.clone();
    rotate::hadamard(&mut y, 128);
    rotate::hadamard(&mut y, 128);
    for (a, b) in x.iter().zip(&y) {
        assert!((a * 128.0 - b).abs() < 1e-4, "{a} × 128 vs {b}");
    }
    assert_eq!(rotation_block(384), 128);
    assert_eq!(rotation_block(48), 16);
    assert_eq!(rotation_block(37), 1);
}

#[test]
fn limited_pairs_stay_within_128_and_lose_little() {
    let (inputs, outputs, rows) = (384, 96, 9);
    let wt = weights(inputs, outputs);
    let x = activations(rows, inputs);
    let smooth = smooth_for(&x, &wt, inputs, outputs);
    let free = Packed::new(&wt, inputs, outputs, &smooth, false);
    let limited = Packed::new(&wt, inputs, outputs, &smooth, true);
    let pair_sum = |p: &[i8]| i32::from(p[0]).abs() + i32::from(p[1]).abs();
    assert!(free.weights.chunks_exact(2).any(|p| pair_sum(p) > 128));
    assert!(limited.weights.chunks_exact(2).all(|p| pair_sum(p) <= 128));
    // The step widens by at most the pair's 2 × 127 / 128, and never narrows.
    for (f, l) in free.scales.iter().zip(&limited.scales) {
        assert!(
            l >= f && *l <= f * (254.0 / 128.0) * 1.0001,
            "{l} against {f}"
        );
    }
}

#[test]
fn the_avx2_kernel_refuses_weights_whose_pairs_could_saturate() {
    // Checked before whether the CPU runs it, so this holds on every machine.
    let (inputs, outputs) = (32, 16);
    let p = Packed::new(&weights(inputs, outputs), inputs, outputs, &[], false);
    let x = activations(1, inputs);
    let mut out = vec![0f32; outputs];
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.forward_strided(Kernel::Avx2, &x, 1, &[0.0; 16], None, &mut out, outputs)
    }));
    let message = run.expect_err("the AVX2 kernel ran on unlimited pairs");
    assert_eq!(
        message.downcast_ref::<String>().map(String::as_str),
        Some("the avx2 kernel would saturate on weights packed without their pairs limited")
    );
}

/// The AVX2 tile epilogue writes the bits [`output::write_row`]'s loop does, with and without
/// a residual, on rows `ldo` apart, and touches nothing outside the tile.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx2_tile_epilogue_writes_what_the_row_loop_does() {
    if !std::is_x86_feature_detected!("avx2") {
        eprintln!("SKIP: this CPU has no AVX2");
        return;
    }
    let (rows, width, ldo) = (5, 32, 40);
    let mut acc = [[0i32; NR * MAX_PANELS]; MAX_ROWS];
    for (r, row) in acc.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (value(r * 64 + c, 3) * 4e7) as i32;
        }
    }
    let quant: Vec<RowQuant> = (0..rows)
        .map(|r| RowQuant {
            scale: 0.01 + value(r, 4).abs() * 0.1,
            zero: (value(r, 5).abs() * 255.0) as i32,
        })
        .collect();
    let wsums: Vec<i32> = (0..width).map(|c| (value(c, 6) * 9e4) as i32).collect();
    let scales: Vec<f32> = (0..width).map(|c| value(c, 7).abs() * 1e-3).collect();
    let bias: Vec<f32> = (0..width).map(|c| value(c, 8)).collect();
    let residual: Vec<f32> = (0..rows * ldo).map(|i| value(i, 9) * 3.0).collect();
    let c = output::Columns {
        wsums: &wsums,
        scales: &scales,
        bias: &bias,
    };
    for res in [None, Some(&residual[..])] {
        let mut want = vec![f32::NAN; rows * ldo];
        for r in 0..rows {
            let res = res.map(|res| &res[r * ldo..r * ldo + width]);
            output::write_row(
                &mut want[r * ldo..r * ldo + width],
                &acc[r][..width],
                quant[r],
                c,
                res,
            );
        }
        let mut got = vec![f32::NAN; rows * ldo];
        // SAFETY: AVX2 checked above; `got` and `residual` hold `rows` rows of `ldo` >= width.
        unsafe {
            output::write_tile_avx2(
                &acc[..rows],
                &quant,
                c,
                got.as_mut_ptr(),
                ldo,
                res.map(|res| res.as_ptr()),
            )
        };
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "element {i} (row {}, column {}): {g} vs {w}",
                i / ldo,
                i % ldo
            );
        }
    }
}
