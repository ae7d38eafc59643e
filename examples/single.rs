//! One short text at a time through a model loaded in-process: the forward pass without the
//! socket, for profiling (`perf record target/release/examples/single int8`).

use std::sync::{Arc, RwLock};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let precision = std::env::args().nth(1).unwrap_or_else(|| "f32".into());
    let precision = caxton::engine::Precision::try_from(precision).map_err(anyhow::Error::msg)?;
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let state = tempfile::tempdir()?;
    let store = caxton::package::Store::open(state.path())?;
    let stored = store.install(
        &repo.join("bundled-models/all-MiniLM-L6-v2.tar.zst"),
        &caxton::package::signature::SignaturePolicy::none(),
    )?;
    let model = caxton::engine::LoadedModel::load(
        &stored,
        Default::default(),
        Arc::new(RwLock::new(Default::default())),
        precision,
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let text = model
        .tokenizer
        .encode("The quick brown fox jumps over the lazy dog near the river bank.")
        .map_err(anyhow::Error::msg)?;
    let mut times = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        rt.block_on(model.embed(
            vec![text.clone()],
            caxton::engine::VectorShape {
                normalize: true,
                width: None,
            },
        ))?;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{} on {}: {} tokens, p50 {:?} p10 {:?}",
        model.precision,
        model.kernel,
        text.len(),
        times[1000],
        times[200]
    );
    Ok(())
}
