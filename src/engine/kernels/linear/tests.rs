use super::*;

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

/// Asserts that `out` is `x·Wᵀ + b (+ residual)` computed naively, `w` in PyTorch's layout.
fn assert_naive(x: &[f32], w: &[f32], b: &[f32], residual: Option<&[f32]>, out: &[f32]) {
    let (inputs, outputs) = (w.len() / b.len(), b.len());
    let rows = out.len() / outputs;
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

#[test]
fn linear_matches_a_naive_product_with_bias_and_residual() {
    // 203 outputs: two whole panels and one of 11 (a tile's worth short, left-over outputs).
    let (inputs, outputs) = (37, 203);
    let w: Vec<f32> = (0..outputs * inputs)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let b: Vec<f32> = (0..outputs).map(|i| i as f32).collect();
    let lin = Linear::from_torch(&w, b.clone(), outputs, inputs);
    // Few rows take the streaming path (including a partial group of a tile), more take gemm
    // per panel, and a batch of enough blocks of rows per thread takes gemm per block.
    let blocked = 2 * rayon::current_num_threads() * ROW_BLOCK + 5;
    for rows in [1, 6, SMALL_ROWS, SMALL_ROWS + 3, blocked] {
        let x: Vec<f32> = (0..rows * inputs)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let res: Vec<f32> = (0..rows * outputs).map(|i| i as f32 * 0.5).collect();
        for residual in [None, Some(&res[..])] {
            let mut out = vec![f32::NAN; rows * outputs];
            lin.forward(&x, rows, residual, &mut out);
            assert_naive(&x, &w, &b, residual, &out);
        }
    }
}

#[test]
fn a_batch_cut_into_chunks_of_rows_for_many_threads_computes_every_row() {
    // Sixteen threads and 4 panels (a 384-wide layer): the product is cut into chunks of rows
    // × panels, the last chunk short, in gemm and in the few-row kernel (chunks of at least 6
    // rows there). Each row must come out as a naive product.
    let (inputs, outputs) = (29, 4 * panels::WIDTH - 7);
    let w: Vec<f32> = (0..outputs * inputs)
        .map(|i| (i as f32 * 0.29).sin())
        .collect();
    let b: Vec<f32> = (0..outputs).map(|i| i as f32 * 0.25).collect();
    let lin = Linear::from_torch(&w, b.clone(), outputs, inputs);
    assert!(tasks::row_chunks(13, 4, 6, 16) >= 2);
    for rows in [13, SMALL_ROWS, SMALL_ROWS + 1, 203, 2 * ROW_BLOCK + 9] {
        if rows > SMALL_ROWS {
            let chunks = tasks::row_chunks(rows, 4, CHUNK_ROWS, 16);
            assert!(chunks >= 2, "{rows} rows in {chunks} chunks");
        }
        let x: Vec<f32> = (0..rows * inputs)
            .map(|i| (i as f32 * 0.13).cos())
            .collect();
        let res: Vec<f32> = (0..rows * outputs).map(|i| i as f32 * 0.5).collect();
        let mut out = vec![f32::NAN; rows * outputs];
        tasks::on_threads(16, || lin.forward(&x, rows, Some(&res), &mut out));
        assert_naive(&x, &w, &b, Some(&res), &out);
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
