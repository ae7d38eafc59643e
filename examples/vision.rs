//! Image-tower speed in process: a `CLIPModel` or `SiglipModel` folder (`config.json`,
//! `model.safetensors`) loaded by the engine, then images per second at a batch of 8 and one
//! image's p50, and the preprocessing of a photograph on its own (decode + resize + crop +
//! normalise), for `bench/vision` to set beside ONNX Runtime and Pillow on the same inputs.
//!
//!     cargo run --release --example vision -- DIR [f32|int8|int8-fast] [PHOTO]
//!
//! int8-fast calibrates on the daemon's own pictures through the folder's processor, as a
//! load does.
//!
//! Prints one JSON object. The pixels are the photograph's (or a synthetic picture's), the
//! same for every image of the batch; threads as `RAYON_NUM_THREADS`.

use std::time::{Duration, Instant};

use caxton::engine::Precision;
use caxton::engine::vision::ImageTower;
use caxton::images::{Limits, Preprocess, decode_bytes};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: vision DIR [f32|int8|int8-fast] [PHOTO]"))?,
    );
    let precision = Precision::try_from(args.next().unwrap_or_else(|| "f32".into()))
        .map_err(anyhow::Error::msg)?;
    let photo = args.next();
    let config = std::fs::read(dir.join("config.json"))?;
    let processor: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("preprocessor_config.json"))?)?;
    let recipe = Preprocess::from_processor_config(&processor).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)?;
    let calibration: Vec<Vec<f32>> = match precision {
        Precision::Int8Fast => caxton::engine::calibration::pictures()
            .iter()
            .map(|p| recipe.apply(p))
            .collect(),
        _ => Vec::new(),
    };
    let tower = ImageTower::load_calibrated(&config, tensors, precision, &calibration)
        .map_err(anyhow::Error::msg)?;
    let load = started.elapsed();
    let bytes = match &photo {
        Some(p) => std::fs::read(p)?,
        None => anyhow::bail!("give a photograph (PNG, JPEG or WebP)"),
    };
    // Preprocessing alone: decode, resize, crop, normalise.
    let mut pre = Vec::new();
    let mut pixels = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let image = decode_bytes(&bytes, &Limits::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
        pixels = recipe.apply(&image);
        pre.push(t.elapsed());
    }
    let batch: Vec<&[f32]> = (0..8).map(|_| pixels.as_slice()).collect();
    let one = &batch[..1];
    tower.embed(&batch).map_err(anyhow::Error::msg)?;
    let mut batch_times = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until || batch_times.len() < 3 {
        let t = Instant::now();
        tower.embed(&batch).map_err(anyhow::Error::msg)?;
        batch_times.push(t.elapsed());
    }
    let mut single = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until || single.len() < 5 {
        let t = Instant::now();
        tower.embed(one).map_err(anyhow::Error::msg)?;
        single.push(t.elapsed());
    }
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let vec = tower.embed(one).map_err(anyhow::Error::msg)?;
    let out = serde_json::json!({
        "precision": precision.name(),
        "threads": rayon::current_num_threads(),
        "load_ms": load.as_secs_f64() * 1e3,
        "weights_mb": tower.weight_bytes() as f64 / 1e6,
        "preprocess_p50_ms": p50(&mut pre),
        "batch8_images_per_s": 8.0 / (p50(&mut batch_times) / 1e3),
        "one_image_p50_ms": p50(&mut single),
        "vector": vec[0],
    });
    println!("{out}");
    Ok(())
}
