//! Kernel throughput: one linear layer (MiniLM's FFN shapes) in f32 and in int8 on every int8
//! kernel this CPU runs, at a few row counts. `cargo run --release --example kernels`.

use std::time::Instant;

use caxton::engine::kernels::Linear;
use caxton::engine::kernels::int8::{Kernel, Packed};

fn main() {
    let shapes = [(384usize, 1536usize), (1536, 384), (384, 1152)];
    for (inputs, outputs) in shapes {
        let w: Vec<f32> = (0..inputs * outputs)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let bias = vec![0.1f32; outputs];
        let f32_layer = Linear::from_torch(&w, bias.clone(), outputs, inputs);
        let mut wt = vec![0f32; inputs * outputs];
        for o in 0..outputs {
            for i in 0..inputs {
                wt[i * outputs + o] = w[o * inputs + i];
            }
        }
        let packed = Packed::new(&wt, inputs, outputs);
        for rows in [14usize, 64, 512, 4096] {
            let x: Vec<f32> = (0..rows * inputs)
                .map(|i| ((i * 31) % 997) as f32 / 997.0 - 0.5)
                .collect();
            let mut out = vec![0f32; rows * outputs];
            let macs = (rows * inputs * outputs) as f64;
            let reps = (4e9 / macs).clamp(3.0, 2000.0) as usize;
            let time = |f: &mut dyn FnMut()| {
                f();
                let t = Instant::now();
                for _ in 0..reps {
                    f();
                }
                t.elapsed().as_secs_f64() / reps as f64
            };
            let t = time(&mut || f32_layer.forward(&x, rows, None, &mut out));
            print!(
                "{inputs:>4}→{outputs:<4} {rows:>5} rows: f32 {:6.1} GMAC/s",
                macs / t / 1e9
            );
            for k in Kernel::here() {
                let t = time(&mut || packed.forward_with(k, &x, rows, &bias, None, &mut out));
                print!("  {} {:6.1}", k.name(), macs / t / 1e9);
            }
            println!();
        }
    }
}
