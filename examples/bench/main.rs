//! Caxton benchmark: package verify + load time in-process, then throughput, latency and RSS of
//! the real `caxtond` over its Unix socket. Run with `bench/run` (builds release first).
//!
//! Workloads (as in the speed issue): 1,000 short texts (~19 tokens) sent 32 per request
//! sorted by length; 256 texts of 256 tokens sent 16 per request; single short texts one at a
//! time over one keep-alive connection for latency; the 1,000 short texts again, one per
//! request, from 64 concurrent clients (64 keep-alive connections), which the engine batches.
//!
//! Beside the daemon, the same model runs in this process (`in_process`): the first three
//! workloads go to the daemon and to that engine in turns of a few requests, so the two are
//! measured under the same load and the difference is the request path (socket, HTTP, JSON,
//! tokenization's hand-off, the queue). The daemon's CPU time by thread (`cpu`: the compute
//! pool, the engine thread, the async workers) says where its time went. Both use as many
//! compute threads (RAYON_NUM_THREADS, else the CPUs this process may use).
//!
//! Flags: `--package FILE` benchmarks another model; `--json FILE` also writes every figure
//! (and Caxton's vectors of a few check texts) as one JSON object; `--texts FILE` writes the
//! exact workload texts as JSON, so a peer (`bench/compare`) runs the same inputs; `--quick`
//! runs smaller workloads (320 short texts, 32 long, 50 single); `--precision bf16` runs the
//! model's linear layers in bf16 (`models.precision`; f32 on CPUs without AMX, as the first
//! line then says), `--precision int8` in int8, `--precision int8-fast` in int8-fast.
//! `--reference FILE` (a JSON object with `texts`, as tests/fixtures/reference's) embeds each
//! of its texts alone after the timings and writes the vectors into the JSON (`reference`), for
//! a fidelity check against sentence-transformers. `CAXTON_ISA` (portable, avx2, avx-vnni)
//! caps the kernels, as for the daemon.

// The figures' one `json!` object is deeper than the macro's default limit.
#![recursion_limit = "256"]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

mod client;
#[path = "../common/mod.rs"]
mod common;
mod cpu;
mod in_process;

use client::{Conn, concurrent};
use common::{percentile, status_kib};
use cpu::Split;

const WORDS: &[&str] = &[
    "the",
    "device",
    "sensor",
    "reports",
    "a",
    "temperature",
    "of",
    "degrees",
    "while",
    "battery",
    "level",
    "drops",
    "slowly",
    "during",
    "night",
    "shift",
    "operator",
    "checks",
    "valve",
    "pressure",
    "pump",
    "station",
    "north",
    "river",
    "water",
    "quality",
    "alarm",
    "was",
    "raised",
    "after",
    "maintenance",
    "window",
    "closed",
    "network",
    "offline",
    "local",
    "cache",
    "holds",
    "recent",
    "readings",
    "for",
    "analysis",
    "model",
    "predicts",
];

/// Deterministic pseudo-random words (xorshift), so every run embeds the same texts.
fn text(seed: u64, words: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..words)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            WORDS[(x % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Each request's time at the daemon and at the engine in this process, and the daemon's
/// token count.
#[derive(Default)]
struct Turns {
    daemon: Vec<Duration>,
    engine: Vec<Duration>,
    tokens: u64,
}

/// `texts` in requests of `batch`, to the daemon and to `engine` in turns of `per_turn`
/// requests each.
async fn in_turns(
    c: &mut Conn,
    engine: &in_process::Engine<'_>,
    texts: &[String],
    batch: usize,
    per_turn: usize,
) -> anyhow::Result<Turns> {
    let mut timed = Turns::default();
    for turn in texts.chunks(batch * per_turn) {
        for chunk in turn.chunks(batch) {
            let t = Instant::now();
            timed.tokens += c.embed(chunk).await?;
            timed.daemon.push(t.elapsed());
        }
        for chunk in turn.chunks(batch) {
            timed.engine.push(engine.embed(chunk).await?);
        }
    }
    Ok(timed)
}

/// The engine's times in this process on the daemon's requests.
struct Own {
    short: Duration,
    long: Duration,
    /// Sorted ascending.
    single: Vec<Duration>,
}

/// `n` with a thousands separator, as the human output has always printed it.
fn thousands(n: usize) -> String {
    if n >= 1000 {
        format!("{},{:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (mut package, mut json_out, mut texts_out, mut quick) = (None, None, None, false);
    let mut reference: Option<PathBuf> = None;
    let mut precision = caxton::engine::Precision::F32;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut file = || {
            args.next()
                .map(PathBuf::from)
                .with_context(|| format!("{arg} needs a FILE"))
        };
        match arg.as_str() {
            // Another model (the daemon serves it as its default).
            "--package" => package = Some(file()?),
            "--json" => json_out = Some(file()?),
            "--texts" => texts_out = Some(file()?),
            "--reference" => reference = Some(file()?),
            "--quick" => quick = true,
            "--precision" => {
                let name = args.next().unwrap_or_default();
                precision = caxton::engine::Precision::try_from(name.clone())
                    .map_err(|e| anyhow::anyhow!("--precision: {e}"))?;
            }
            _ => bail!(
                "unknown argument {arg}; usage: bench [--package FILE] [--json FILE] [--texts FILE] [--reference FILE] [--quick] [--precision f32|bf16|int8|int8-fast]"
            ),
        }
    }
    let package = package.unwrap_or_else(|| repo.join("bundled-models/all-MiniLM-L6-v2.tar.zst"));
    let package = std::path::absolute(&package)?;
    let packages_dir = package
        .parent()
        .context("the package has no directory")?
        .to_path_buf();
    let exe = std::env::current_exe()?;
    let caxtond = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("caxtond"))
        .context("cannot locate caxtond")?;
    if !caxtond.exists() {
        bail!(
            "{} is missing: run bench/run, which builds it",
            caxtond.display()
        );
    }
    let work = tempfile::tempdir()?;

    // Verification throughput against the plain pipeline `zstd -dc FILE | sha256sum`
    // (medians of 3, interleaved); caxton's verifier also walks tar and hashes every entry.
    let size = std::fs::metadata(&package)?.len() as f64;
    let (mut ours, mut pipe) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        caxton::package::verify::verify_file(&package, &mut caxton::package::verify::DiscardSink)?;
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "zstd -dc '{}' | sha256sum >/dev/null",
                package.display()
            ))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        pipe.push(if ok {
            t.elapsed().as_secs_f64()
        } else {
            f64::NAN
        });
    }
    ours.sort_by(f64::total_cmp);
    pipe.sort_by(f64::total_cmp);
    let (ours, pipe) = (ours[1], pipe[1]);

    // In-process: verify + unpack into a fresh store, then load.
    let t = Instant::now();
    let store = caxton::package::Store::open(&work.path().join("bench-state"))?;
    let stored = store.install(
        &package,
        &caxton::package::signature::SignaturePolicy::none(),
    )?;
    let verify = t.elapsed();
    let t = Instant::now();
    let model = caxton::engine::LoadedModel::load(
        &stored,
        caxton::engine::EngineOptions::default(),
        Default::default(),
        precision,
    )?;
    let compute = model.precision;
    let kernel = model.kernel;
    let load = t.elapsed();
    let (n_short, n_long, n_single) = if quick {
        (320, 32, 50)
    } else {
        (1000, 256, 300)
    };
    let (short_batch, long_batch, clients) = (32, 16, 64);
    let mut short: Vec<String> = (0..n_short)
        .map(|i| text(i, 10 + (i as usize % 12)))
        .collect();
    short.sort_by_key(String::len);
    let long: Vec<String> = (0..n_long).map(|i| text(10_000 + i, 400)).collect();
    let single: Vec<String> = (0..n_single).map(|i| text(50_000 + i, 12)).collect();
    if let Some(path) = &texts_out {
        let texts = json!({
            "short": short, "short_batch": short_batch,
            "long": long, "long_batch": long_batch,
            "single": single, "concurrent_clients": clients,
        });
        std::fs::write(path, serde_json::to_vec(&texts)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    let (model_id, storage) = {
        let m = &model.package.manifest;
        let f16 = m.weights.is_none()
            && std::fs::read(model.package.dir.join("model.safetensors"))
                .ok()
                .and_then(|b| {
                    safetensors::SafeTensors::deserialize(&b).ok().map(|st| {
                        st.tensors()
                            .iter()
                            .any(|(_, v)| v.dtype() == safetensors::Dtype::F16)
                    })
                })
                .unwrap_or(false);
        let storage = match m.weights {
            Some(w) => w.as_str(),
            None if f16 => "f16",
            None => "f32",
        };
        (m.id.clone(), storage)
    };
    // The engine in this process, beside the daemon (its pool's threads are as many).
    let engine = in_process::Engine::new(&model);

    // The daemon over its socket.
    let dir = work.path();
    std::fs::write(
        dir.join("caxton.yaml"),
        format!(
            "socket:\n  path: {}\nstate_dir: {}\nmodels:\n  bundled_dir: {}\n  package_dir: {}\n  default: {model_id}\n  precision: {{{model_id}: {precision}}}\nlog:\n  level: warn\n",
            dir.join("caxton.sock").display(),
            dir.join("state").display(),
            packages_dir.display(),
            dir.join("packages").display()
        ),
    )?;
    let started = Instant::now();
    let child = Command::new(&caxtond)
        .arg("--config-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()?;
    let mut daemon = Daemon(child);
    let pid = daemon.0.id();
    let socket = dir.join("caxton.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        loop {
            if let Ok(mut c) = Conn::open(&socket).await
                && c.embed(&["warm up".to_string()]).await.is_ok()
            {
                break;
            }
            if let Some(status) = daemon.0.try_wait()? {
                bail!("caxtond exited ({status}) before serving");
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("caxtond did not serve within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })?;
    let ready = started.elapsed();
    let idle_rss = status_kib(pid, "VmRSS:");

    // The daemon and the engine in this process take turns of a few requests each (sent back
    // to back, as a steady client sends them), on the same texts: a busy neighbour slows both
    // alike, and the threads of one, still spinning down after its turn, slow only the first
    // request of the other's (alternating every request, that cost ~0.4 ms of each one-text
    // request, on both sides).
    let (short_s, short_tokens, long_s, long_tokens, latencies, short_cpu, single_cpu, own) = rt
        .block_on(async {
            let mut c = Conn::open(&socket).await?;
            engine.embed(&["warm up".to_string()]).await?;
            let cpu = Split::sample(pid);
            let short = in_turns(&mut c, &engine, &short, short_batch, 4).await?;
            let short_cpu = Split::sample(pid) - cpu;
            let long = in_turns(&mut c, &engine, &long, long_batch, 2).await?;
            let cpu = Split::sample(pid);
            let mut single = in_turns(&mut c, &engine, &single, 1, 10).await?;
            let single_cpu = Split::sample(pid) - cpu;
            single.daemon.sort();
            single.engine.sort();
            let own = Own {
                short: short.engine.iter().sum(),
                long: long.engine.iter().sum(),
                single: single.engine,
            };
            anyhow::Ok((
                short.daemon.iter().sum::<Duration>().as_secs_f64(),
                short.tokens,
                long.daemon.iter().sum::<Duration>().as_secs_f64(),
                long.tokens,
                single.daemon,
                short_cpu,
                single_cpu,
                own,
            ))
        })?;
    drop(model);
    let peak = status_kib(pid, "VmHWM:");
    let (concurrent_time, concurrent_errors) = rt.block_on(concurrent(&socket, &short, clients))?;
    let concurrent_s = concurrent_time.as_secs_f64();
    let peak_concurrent = status_kib(pid, "VmHWM:");
    // Caxton's vectors of a few texts (a single one, the longest short one, a truncated long
    // one), for a peer to check that it computes the same thing.
    let check_texts = [
        single[0].clone(),
        short[short.len() - 1].clone(),
        long[0].clone(),
    ];
    let check_vectors = rt.block_on(async {
        let mut c = Conn::open(&socket).await?;
        let mut out = Vec::new();
        for t in &check_texts {
            out.extend(c.vectors(std::slice::from_ref(t)).await?);
        }
        // Batched (padded) and alone must agree, or the batch figures measure something else.
        let batched = c.vectors(&check_texts).await?;
        for (a, b) in out.iter().zip(&batched) {
            let cos = cosine(a, b);
            if cos < 0.9999 {
                bail!("a text embedded alone and in a batch differs: cosine {cos}");
            }
        }
        anyhow::Ok(out)
    })?;
    // Each reference text's vector, embedded alone, for the fidelity check (outside the
    // timings).
    let reference_vectors: Vec<Vec<f64>> = match &reference {
        None => Vec::new(),
        Some(path) => {
            #[derive(serde::Deserialize)]
            struct Texts {
                texts: Vec<String>,
            }
            let texts: Texts = serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            )
            .with_context(|| format!("{}: no `texts` list", path.display()))?;
            rt.block_on(async {
                let mut c = Conn::open(&socket).await?;
                let mut out = Vec::new();
                for t in &texts.texts {
                    out.extend(c.vectors(std::slice::from_ref(t)).await?);
                }
                anyhow::Ok(out)
            })?
        }
    };
    // Vectors of every short text, in order, for the ranking check against the f32 reference
    // (outside the timings; only when the figures are written).
    let corpus: Vec<Vec<f32>> = if json_out.is_some() {
        rt.block_on(async {
            let mut c = Conn::open(&socket).await?;
            let mut out = Vec::new();
            for chunk in short.chunks(short_batch) {
                out.extend(c.vectors(chunk).await?);
            }
            anyhow::Ok(out)
        })?
        .into_iter()
        .map(|v| v.into_iter().map(|x| x as f32).collect())
        .collect()
    } else {
        Vec::new()
    };

    let threads = rayon::current_num_threads();
    println!(
        "caxton benchmark: {model_id} ({storage} storage, {compute} compute on the {kernel} kernel, {} bytes package), {} CPUs, {threads} compute threads",
        size as u64,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  caxton verify (stream, tar, hashes)   {:>8.0} ms  {:>6.0} MB/s compressed",
        ours * 1e3,
        size / ours / 1e6
    );
    println!(
        "  zstd -dc | sha256sum                  {:>8.0} ms  {:>6.0} MB/s   ratio {:.2} (goal >= 0.8)",
        pipe * 1e3,
        size / pipe / 1e6,
        pipe / ours
    );
    println!(
        "  package verify + unpack (in-process)  {:>8.0} ms",
        verify.as_secs_f64() * 1e3
    );
    println!(
        "  model load (in-process)               {:>8.0} ms",
        load.as_secs_f64() * 1e3
    );
    println!(
        "  daemon start to first embedding       {:>8.0} ms",
        ready.as_secs_f64() * 1e3
    );
    let short_rate = short.len() as f64 / short_s;
    println!(
        "  {:<37}{:>8.1} texts/s  {:>8.0} tokens/s  ({:.1} tokens/text)",
        format!(
            "{} short texts, batch {short_batch}",
            thousands(short.len())
        ),
        short_rate,
        short_tokens as f64 / short_s,
        short_tokens as f64 / short.len() as f64
    );
    println!(
        "  {:<37}{:>8.1} texts/s  {:>8.0} tokens/s",
        format!("{} texts x 256 tokens, batch {long_batch}", long.len()),
        long.len() as f64 / long_s,
        long_tokens as f64 / long_s
    );
    println!(
        "  single short text over the socket     p50 {:.2} ms  p99 {:.2} ms  (n={})",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.len()
    );
    // The engine alone on the same texts, and what the daemon's request path adds to it.
    let own_short_rate = short.len() as f64 / own.short.as_secs_f64();
    let own_long_rate = long_tokens as f64 / own.long.as_secs_f64();
    let own_p50 = percentile(&own.single, 0.5);
    let requests = short.len().div_ceil(short_batch);
    println!(
        "  in-process engine, same texts         short {:.1} texts/s (daemon/engine {:.2})  long {:.0} tokens/s ({:.2})  single p50 {:.2} ms",
        own_short_rate,
        short_rate / own_short_rate,
        own_long_rate,
        long_tokens as f64 / long_s / own_long_rate,
        own_p50.as_secs_f64() * 1e3
    );
    println!(
        "  the request path (daemon - engine)    {:.3} ms per batch-{short_batch} request, {:.1} us per text; {:.3} ms per single text",
        (short_s - own.short.as_secs_f64()) * 1e3 / requests as f64,
        (short_s - own.short.as_secs_f64()) * 1e6 / short.len() as f64,
        (percentile(&latencies, 0.5).as_secs_f64() - own_p50.as_secs_f64()) * 1e3
    );
    println!(
        "  daemon CPU ms per batch-{short_batch} request    {}",
        short_cpu.per(requests)
    );
    println!(
        "  daemon CPU ms per single-text request {}",
        single_cpu.per(latencies.len())
    );
    let concurrent_rate = short.len() as f64 / concurrent_s;
    println!(
        "  {:<37}{:>8.1} texts/s  (ratio to batch-{short_batch}: {:.2}, goal >= 0.9)  errors {concurrent_errors}",
        format!("{clients} clients, single texts"),
        concurrent_rate,
        concurrent_rate / short_rate
    );
    println!(
        "  daemon RSS idle with model loaded     {:>8.0} MB",
        idle_rss as f64 / 1024.0
    );
    println!(
        "  daemon peak RSS (VmHWM)               {:>8.0} MB",
        peak as f64 / 1024.0
    );
    println!(
        "  {:<37}{:>8.0} MB",
        format!("daemon peak RSS after {clients} clients"),
        peak_concurrent as f64 / 1024.0
    );

    if let Some(path) = &json_out {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let check: Vec<_> = check_texts
            .iter()
            .zip(&check_vectors)
            .map(|(t, v)| json!({ "text": t, "embedding": v }))
            .collect();
        let figures = json!({
            "implementation": "caxton",
            "model_id": model_id,
            "storage": storage,
            "precision": compute.name(),
            "kernel": kernel,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "package_bytes": size as u64,
            "verify_ms": ours * 1e3,
            "verify_mb_per_s": size / ours / 1e6,
            "zstd_sha256_ms": pipe * 1e3,
            "verify_ratio": pipe / ours,
            "unpack_verify_ms": ms(verify),
            "load_ms": ms(load),
            "start_ms": ms(ready),
            "short_texts": short.len(),
            "short_batch": short_batch,
            "short_tokens": short_tokens,
            "short_s": short_s,
            "short_texts_per_s": short_rate,
            "short_tokens_per_s": short_tokens as f64 / short_s,
            "long_texts": long.len(),
            "long_batch": long_batch,
            "long_tokens": long_tokens,
            "long_s": long_s,
            "long_texts_per_s": long.len() as f64 / long_s,
            "long_tokens_per_s": long_tokens as f64 / long_s,
            "single_n": latencies.len(),
            "single_p50_ms": ms(percentile(&latencies, 0.5)),
            "single_p99_ms": ms(percentile(&latencies, 0.99)),
            "threads": threads,
            "engine_short_texts_per_s": own_short_rate,
            "engine_long_tokens_per_s": own_long_rate,
            "engine_single_p50_ms": ms(own_p50),
            "engine_single_p99_ms": ms(percentile(&own.single, 0.99)),
            "short_cpu": short_cpu.json(),
            "short_requests": requests,
            "single_cpu": single_cpu.json(),
            "idle_rss_mb": idle_rss as f64 / 1024.0,
            "peak_rss_mb": peak as f64 / 1024.0,
            "concurrent_clients": clients,
            "concurrent_texts": short.len(),
            "concurrent_s": concurrent_s,
            "concurrent_texts_per_s": concurrent_rate,
            "concurrent_ratio": concurrent_rate / short_rate,
            "concurrent_errors": concurrent_errors,
            "peak_rss_concurrent_mb": peak_concurrent as f64 / 1024.0,
            "check": check,
            "corpus": corpus,
            "reference": reference_vectors,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
