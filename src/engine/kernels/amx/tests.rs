use super::*;

fn round(x: f32) -> f32 {
    f32::from_bits((bf16(x) as u32) << 16)
}

#[test]
fn rounding_is_to_nearest_even() {
    assert_eq!(bf16(1.0), 0x3f80);
    // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
    assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
    // Just above halfway rounds up.
    assert_eq!(bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3f81);
    assert_eq!(bf16(-2.5), half::bf16::from_f32(-2.5).to_bits());
    assert!(f32::from_bits((bf16(f32::NAN) as u32) << 16).is_nan());
}

/// Against a plain product of the same bf16-rounded operands, summed in f64, on shapes
/// with ragged rows, columns and depth, on one and several threads.
#[test]
fn matches_a_product_of_rounded_operands() {
    if let Err(reason) = available() {
        eprintln!("skipped: {reason}");
        return;
    }
    // Single rows, a tail of ≤ 16 and one of 17–31 rows, two row chunks, ragged depth
    // and columns.
    for &(rows, k, n) in &[
        (1, 384, 384),
        (14, 384, 1536),
        (37, 70, 45),
        (50, 96, 64),
        (150, 64, 40),
        (100, 1536, 384),
    ] {
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 90.0)
            .collect();
        let init: Vec<f32> = (0..rows * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let bias: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
        let packed = Packed::new(&w, k, n);
        // Onto what `out` holds, and from the bias (over a buffer of NaNs it must ignore).
        let mut onto = init.clone();
        packed.forward(&x, rows, None, &mut onto);
        let mut from_bias = vec![f32::NAN; rows * n];
        packed.forward(&x, rows, Some(&bias), &mut from_bias);
        for r in 0..rows {
            for c in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| round(x[r * k + i]) as f64 * round(w[i * n + c]) as f64)
                    .sum();
                for (got, start, how) in [
                    (onto[r * n + c], init[r * n + c], "onto"),
                    (from_bias[r * n + c], bias[c], "bias"),
                ] {
                    let want = start as f64 + dot;
                    assert!(
                        (got as f64 - want).abs() <= 1e-3 * (1.0 + want.abs()),
                        "{how} ({rows}×{k}→{n}) [{r}, {c}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
