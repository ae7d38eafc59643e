//! One short text at a time through a model loaded in-process: the forward pass without the
//! socket, for profiling (`perf record target/release/examples/single int8`). A second
//! argument N sends N short texts (of 10 to 20 words) per call instead, as a batch request
//! does (`single int8 32`); `SINGLE_WORDS=N` makes every text N words long.

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
    let batch: usize = match std::env::args().nth(2) {
        None => 1,
        Some(n) => n.parse()?,
    };
    const WORDS: &[&str] = &[
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "near",
        "river",
        "bank",
        "device",
        "memory",
        "sentence",
        "embedding",
        "offline",
        "appliance",
        "model",
        "vector",
    ];
    // `SINGLE_WORDS=N`: texts of N words (long texts for a profile of a batch's pass).
    let fixed: Option<usize> = std::env::var("SINGLE_WORDS")
        .ok()
        .and_then(|v| v.parse().ok());
    let texts = (0..batch)
        .map(|i| {
            let words = fixed.unwrap_or(10 + i % 11);
            let text: Vec<&str> = (0..words)
                .map(|w| WORDS[(i * 7 + w * 3) % WORDS.len()])
                .collect();
            model
                .tokenizer
                .encode(&text.join(" "))
                .map_err(anyhow::Error::msg)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let text = &texts[0];
    let calls = (2000 / batch).max(50);
    let mut times = Vec::new();
    // `SINGLE_GAP_US=300`: idle this long between calls, as a client over the socket does
    // while it reads one answer and sends the next request.
    let gap = std::env::var("SINGLE_GAP_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_micros);
    for _ in 0..calls {
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
        let t = Instant::now();
        rt.block_on(model.embed(
            texts.clone(),
            caxton::engine::VectorShape {
                normalize: true,
                width: None,
            },
        ))?;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{} on {}: {} texts of {} tokens and more, p50 {:?} p10 {:?}",
        model.precision,
        model.kernel,
        batch,
        text.len(),
        times[calls / 2],
        times[calls / 10]
    );
    Ok(())
}
