//! Kernel throughput: one linear layer (MiniLM's shapes) in f32, in int8 on every int8 kernel
//! this CPU runs and in int8-fast on every int8-fast kernel, at a few row counts, in GMAC/s.
//! `cargo run --release --example kernels`; `KERNELS_ROWS=18,576` picks the row counts,
//! `KERNELS_INT8=avx2` one kernel of each, `KERNELS_F32_ONLY=1` none. `KERNELS_COLD=1` cycles
//! through copies of the f32 layer worth 96 MiB, more than any L3 here, so each call reads its
//! weights from memory as one text's pass through a whole model does.

use std::time::Instant;

use caxton::engine::kernels::Linear;
use caxton::engine::kernels::int8::{Kernel, Packed};
use caxton::engine::kernels::int8_fast;

fn main() {
    let shapes = [(384usize, 1536usize), (1536, 384), (384, 1152)];
    for (inputs, outputs) in shapes {
        let w: Vec<f32> = (0..inputs * outputs)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let bias = vec![0.1f32; outputs];
        let copies = match std::env::var_os("KERNELS_COLD") {
            Some(_) => (96 << 20) / (inputs * outputs * 4),
            None => 1,
        };
        let f32_layers: Vec<Linear> = (0..copies.max(1))
            .map(|_| Linear::from_torch(&w, bias.clone(), outputs, inputs))
            .collect();
        let mut next = 0;
        let mut wt = vec![0f32; inputs * outputs];
        for o in 0..outputs {
            for i in 0..inputs {
                wt[i * outputs + o] = w[o * inputs + i];
            }
        }
        let packed = Packed::new(&wt, inputs, outputs);
        // Pairs limited, so every kernel here takes them (none is faster for which weights).
        let fast = int8_fast::Packed::new(&wt, inputs, outputs, &[], true);
        let rows_list: Vec<usize> = std::env::var("KERNELS_ROWS")
            .ok()
            .map(|v| v.split(',').filter_map(|r| r.parse().ok()).collect())
            .unwrap_or_else(|| vec![14, 64, 512, 4096]);
        for &rows in &rows_list {
            let x: Vec<f32> = (0..rows * inputs)
                .map(|i| ((i * 31) % 997) as f32 / 997.0 - 0.5)
                .collect();
            let mut out = vec![0f32; rows * outputs];
            let macs = (rows * inputs * outputs) as f64;
            let reps = (4e9 / macs).clamp(3.0, 2000.0) as usize;
            // The best of five timings: a neighbour's burst only ever slows one down.
            let time = |f: &mut dyn FnMut()| {
                f();
                (0..5)
                    .map(|_| {
                        let t = Instant::now();
                        for _ in 0..reps / 5 + 1 {
                            f();
                        }
                        t.elapsed().as_secs_f64() / (reps / 5 + 1) as f64
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let t = time(&mut || {
                next = (next + 1) % f32_layers.len();
                f32_layers[next].forward(&x, rows, None, &mut out)
            });
            print!(
                "{inputs:>4}→{outputs:<4} {rows:>5} rows: f32 {:6.1} GMAC/s",
                macs / t / 1e9
            );
            let int8_kernels = if std::env::var_os("KERNELS_F32_ONLY").is_some() {
                Vec::new()
            } else {
                Kernel::here()
            };
            // `KERNELS_INT8=avx2` times that kernel alone (for a profile of it).
            let only = std::env::var("KERNELS_INT8").ok();
            for k in int8_kernels
                .into_iter()
                .filter(|k| only.as_deref().is_none_or(|o| o == k.name()))
            {
                let t = time(&mut || packed.forward_with(k, &x, rows, &bias, None, &mut out));
                print!("  {} {:6.1}", k.name(), macs / t / 1e9);
            }
            let fast_kernels = if std::env::var_os("KERNELS_F32_ONLY").is_some() {
                Vec::new()
            } else {
                int8_fast::Kernel::here()
            };
            print!("  | int8-fast:");
            for k in fast_kernels
                .into_iter()
                .filter(|k| only.as_deref().is_none_or(|o| o == k.name()))
            {
                let t =
                    time(&mut || fast.forward_strided(k, &x, rows, &bias, None, &mut out, outputs));
                print!("  {} {:6.1}", k.name(), macs / t / 1e9);
            }
            println!();
        }
    }
}
