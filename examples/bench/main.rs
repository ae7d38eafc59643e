//! Caxton benchmark: package verify + load time in-process, then throughput, latency and RSS of
//! the real `caxtond` over its Unix socket. Run with `bench/run` (builds release first).
//!
//! Workloads (`workload`, as in the speed issue): 1,000 short texts (~19 tokens) sent 32 per
//! request sorted by length; 256 texts of 256 tokens sent 16 per request; single short texts
//! one at a time over one keep-alive connection for latency; the 1,000 short texts again, one
//! per request, from 64 concurrent clients (64 keep-alive connections), which the engine
//! batches.
//!
//! Three modes (`timing` says why each):
//! - the twin run (default): the same model also runs in this process (`in_process`), and the
//!   first three workloads go to the daemon and to that engine in turns of a few requests, so
//!   the difference is the request path (socket, HTTP, JSON, tokenization's hand-off, the
//!   queue);
//! - `--daemon-alone`: the daemon only, no model in this process; `--engine-json FILE` adds an
//!   `--engine-alone` run's figures (made before, in another process) for the ratios;
//!   `--daemon-cpus LIST` pins the daemon (`taskset -c`) apart from this client;
//! - `--engine-alone`: the engine in this process only, no daemon.
//!
//! The daemon's CPU time by thread (`cpu`: the compute pool, the engine thread, the async
//! workers) says where its time went. Every side uses as many compute threads
//! (RAYON_NUM_THREADS, else the CPUs this process may use).
//!
//! Flags: `--package FILE` benchmarks another model; `--json FILE` also writes every figure
//! (and the vectors of a few check texts) as one JSON object; `--texts FILE` writes the exact
//! workload texts as JSON, so a peer (`bench/compare`) runs the same inputs; `--tokens FILE`
//! writes their token ids as the model's tokenizer makes them, batch by batch, with the check
//! texts' ids and vectors, so a peer without a tokenizer runs the same token batches
//! (`bench/ort_peer.py tokens`); `--quick` runs smaller workloads (320 short texts, 32 long, 50
//! single); `--precision bf16|int8|int8-fast` runs the model's linear layers so
//! (`models.precision`; bf16 is f32 on CPUs without AMX, as the first line then says).
//! `--reference FILE` (a JSON object with `texts`, as tests/fixtures/reference's) embeds each
//! of its texts alone after the timings and writes the vectors into the JSON (`reference`), for
//! a fidelity check against sentence-transformers. `CAXTON_ISA` (portable, avx2, avx-vnni)
//! caps the kernels, as for the daemon.

// The figures' one `json!` object is deeper than the macro's default limit.
#![recursion_limit = "256"]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

mod client;
#[path = "../common/mod.rs"]
mod common;
mod cpu;
mod daemon;
mod in_process;
mod report;
mod timing;
mod workload;

use caxton::engine::{Cut, LoadedModel, Precision, TextTokenizer};
use client::{Conn, concurrent};
use common::status_kib;
use report::{Figures, Mode};
use workload::{CLIENTS, LONG_BATCH, SHORT_BATCH, Workload};

/// The command line.
#[derive(Default)]
struct Args {
    package: Option<PathBuf>,
    json: Option<PathBuf>,
    texts: Option<PathBuf>,
    tokens: Option<PathBuf>,
    reference: Option<PathBuf>,
    engine_json: Option<PathBuf>,
    daemon_cpus: Option<String>,
    quick: bool,
    mode: Mode,
    precision: Precision,
}

const USAGE: &str = "usage: bench [--package FILE] [--json FILE] [--texts FILE] [--tokens FILE] [--reference FILE] [--quick] [--precision f32|bf16|int8|int8-fast] [--daemon-alone [--engine-json FILE] [--daemon-cpus LIST] | --engine-alone]";

fn parse() -> anyhow::Result<Args> {
    let mut a = Args::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            // Another model (the daemon serves it as its default).
            "--package" => a.package = Some(value()?.into()),
            "--json" => a.json = Some(value()?.into()),
            "--texts" => a.texts = Some(value()?.into()),
            "--tokens" => a.tokens = Some(value()?.into()),
            "--reference" => a.reference = Some(value()?.into()),
            "--engine-json" => a.engine_json = Some(value()?.into()),
            "--daemon-cpus" => a.daemon_cpus = Some(value()?),
            "--quick" => a.quick = true,
            "--daemon-alone" => a.mode = Mode::DaemonAlone,
            "--engine-alone" => a.mode = Mode::EngineAlone,
            "--precision" => {
                a.precision = Precision::try_from(value()?)
                    .map_err(|e| anyhow::anyhow!("--precision: {e}"))?;
            }
            _ => bail!("unknown argument {arg}; {USAGE}"),
        }
    }
    if a.mode != Mode::DaemonAlone && (a.engine_json.is_some() || a.daemon_cpus.is_some()) {
        bail!("--engine-json and --daemon-cpus go with --daemon-alone; {USAGE}");
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let package = args
        .package
        .clone()
        .unwrap_or_else(|| repo.join("bundled-models/all-MiniLM-L6-v2.tar.zst"));
    let package = std::path::absolute(&package)?;
    let work = tempfile::tempdir()?;
    let mut f = Figures::new(args.mode);
    f.package_bytes = std::fs::metadata(&package)?.len();
    (f.verify, f.pipe) = verify_speed(&package)?;

    // In-process: verify + unpack into a fresh store, then (but daemon-alone) load.
    let t = Instant::now();
    let store = caxton::package::Store::open(&work.path().join("bench-state"))?;
    let stored = store.install(
        &package,
        &caxton::package::signature::SignaturePolicy::none(),
    )?;
    f.unpack_verify = t.elapsed();
    let manifest = stored.manifest.clone();
    f.model_id = manifest.id.clone();
    f.storage = storage(&stored);
    let model = match args.mode {
        Mode::DaemonAlone => None,
        Mode::Twin | Mode::EngineAlone => {
            let t = Instant::now();
            let m = LoadedModel::load(
                &stored,
                caxton::engine::EngineOptions::default(),
                Default::default(),
                args.precision,
            )?;
            f.load = Some(t.elapsed());
            (f.compute, f.kernel) = (m.precision, m.kernel.to_string());
            Some(m)
        }
    };
    let w = Workload::new(args.quick);
    if let Some(path) = &args.texts {
        write(path, &w.texts_json())?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let engine = model.as_ref().map(in_process::Engine::new);

    let check_texts = w.check_texts();
    if args.mode == Mode::EngineAlone {
        let engine = engine.as_ref().context("the engine is loaded")?;
        f.own = Some(rt.block_on(timing::engine(engine, &w))?);
        f.check = rt.block_on(async {
            let mut out = Vec::new();
            for t in &check_texts {
                let (_, v) = engine.vectors(std::slice::from_ref(t)).await?;
                out.extend(
                    v.into_iter()
                        .map(|v| v.into_iter().map(f64::from).collect()),
                );
            }
            anyhow::Ok(out)
        })?;
    } else {
        let packages = package.parent().context("the package has no directory")?;
        let caxtond = sibling_binary("caxtond")?;
        let d = daemon::Daemon::start(
            &daemon::Setup {
                caxtond: &caxtond,
                dir: work.path(),
                packages,
                model_id: &manifest.id,
                precision: args.precision,
                cpus: args.daemon_cpus.as_deref(),
            },
            &rt,
        )?;
        f.ready = Some(d.ready);
        f.idle_rss_kib = status_kib(d.pid, "VmRSS:");
        if model.is_none() {
            (f.compute, f.kernel, f.load) = rt.block_on(daemon_load(&d, &manifest.id))?;
        }
        let (run, own) = rt.block_on(async {
            let mut c = Conn::open(&d.socket).await?;
            timing::daemon(&mut c, d.pid, engine.as_ref(), &w).await
        })?;
        (f.daemon, f.own) = (Some(run), own);
        drop(model);
        f.peak_rss_kib = status_kib(d.pid, "VmHWM:");
        f.concurrent = Some(rt.block_on(concurrent(&d.socket, &w.short, CLIENTS))?);
        f.peak_concurrent_kib = status_kib(d.pid, "VmHWM:");
        f.check = rt.block_on(check_vectors(&d.socket, &check_texts))?;
        if let Some(path) = &args.reference {
            f.reference = rt.block_on(reference_vectors(&d.socket, path))?;
        }
        // Vectors of every short text, in order, for the ranking check against the f32
        // reference (outside the timings; only when the figures are written).
        if args.json.is_some() {
            f.corpus = rt.block_on(corpus(&d.socket, &w.short))?;
        }
    }
    if let Some(path) = &args.engine_json {
        f.engine_file = Some(report::engine_figures(path)?);
    }
    if let Some(path) = &args.tokens {
        let bytes = stored.read_verified("tokenizer.json")?;
        let tokenizer = TextTokenizer::from_bytes(&bytes, manifest.max_seq_length)
            .map_err(anyhow::Error::msg)?;
        write(path, &tokens_json(&tokenizer, &w, &check_texts, &f.check)?)?;
    }
    f.print(&w);
    if let Some(path) = &args.json {
        write(path, &f.json(&w, &check_texts))?;
    }
    Ok(())
}

/// Verification throughput against the plain pipeline `zstd -dc FILE | sha256sum` (medians
/// of 3, interleaved, in seconds); caxton's verifier also walks tar and hashes every entry.
fn verify_speed(package: &Path) -> anyhow::Result<(f64, f64)> {
    let (mut ours, mut pipe) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        caxton::package::verify::verify_file(package, &mut caxton::package::verify::DiscardSink)?;
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let ok = std::process::Command::new("sh")
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
    Ok((ours[1], pipe[1]))
}

/// How the package stores its weights: the manifest's int8 or bf16, else f16 or f32 as the
/// safetensors file's tensors are.
fn storage(stored: &caxton::package::StoredPackage) -> &'static str {
    let m = &stored.manifest;
    if let Some(w) = m.weights {
        return w.as_str();
    }
    let f16 = std::fs::read(stored.dir.join("model.safetensors"))
        .ok()
        .and_then(|b| {
            safetensors::SafeTensors::deserialize(&b).ok().map(|st| {
                st.tensors()
                    .iter()
                    .any(|(_, v)| v.dtype() == safetensors::Dtype::F16)
            })
        })
        .unwrap_or(false);
    if f16 { "f16" } else { "f32" }
}

/// `name` beside this example's directory (`target/release/caxtond` for
/// `target/release/examples/bench`).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .context("cannot locate the binaries' directory")?;
    if !path.exists() {
        bail!(
            "{} is missing: run bench/run, which builds it",
            path.display()
        );
    }
    Ok(path)
}

/// With no model in this process: the precision and kernel the daemon runs model `id` in,
/// and its load time, from an unload and a load through its memory API.
async fn daemon_load(
    d: &daemon::Daemon,
    id: &str,
) -> anyhow::Result<(Precision, String, Option<Duration>)> {
    let mut c = Conn::open(&d.socket).await?;
    c.send("DELETE", &format!("/api/memory/models/{id}"))
        .await?;
    let v = c
        .send("POST", &format!("/api/memory/models/{id}/load"))
        .await?;
    let load = v["load_ms"].as_u64().map(Duration::from_millis);
    let models = c.send("GET", "/api/models").await?;
    let entry = models["data"]
        .as_array()
        .and_then(|all| all.iter().find(|m| m["id"] == id))
        .with_context(|| format!("/api/models does not list {id}"))?;
    let precision = entry["loaded_precision"]
        .as_str()
        .and_then(|p| Precision::try_from(p.to_string()).ok())
        .with_context(|| format!("no loaded_precision for {id}: {entry}"))?;
    let kernel = entry["kernel"].as_str().unwrap_or("?").to_string();
    Ok((precision, kernel, load))
}

/// The daemon's vectors of `texts`, each alone; a batch of them must give the same, or the
/// batch figures measure something else.
async fn check_vectors(socket: &Path, texts: &[String]) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut c = Conn::open(socket).await?;
    let mut out = Vec::new();
    for t in texts {
        out.extend(c.vectors(std::slice::from_ref(t)).await?);
    }
    let batched = c.vectors(texts).await?;
    for (a, b) in out.iter().zip(&batched) {
        let cos = report::cosine(a, b);
        if cos < 0.9999 {
            bail!("a text embedded alone and in a batch differs: cosine {cos}");
        }
    }
    Ok(out)
}

/// Each text of `path`'s `texts` list embedded alone by the daemon (outside the timings), for
/// the fidelity check.
async fn reference_vectors(socket: &Path, path: &Path) -> anyhow::Result<Vec<Vec<f64>>> {
    #[derive(serde::Deserialize)]
    struct Texts {
        texts: Vec<String>,
    }
    let texts: Texts = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{}: no `texts` list", path.display()))?;
    let mut c = Conn::open(socket).await?;
    let mut out = Vec::new();
    for t in &texts.texts {
        out.extend(c.vectors(std::slice::from_ref(t)).await?);
    }
    Ok(out)
}

/// The daemon's vectors of every short text, in order.
async fn corpus(socket: &Path, short: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut c = Conn::open(socket).await?;
    let mut out = Vec::new();
    for chunk in short.chunks(SHORT_BATCH) {
        out.extend(c.vectors(chunk).await?);
    }
    Ok(out
        .into_iter()
        .map(|v| v.into_iter().map(|x| x as f32).collect())
        .collect())
}

/// The workloads as token ids, as the model's tokenizer cuts them (at its length, the end
/// cut, as the benchmark's requests ask), and the check texts' ids with their vectors.
fn tokens_json(
    tokenizer: &TextTokenizer,
    w: &Workload,
    check_texts: &[String],
    check: &[Vec<f64>],
) -> anyhow::Result<serde_json::Value> {
    let ids = |texts: &[String]| -> anyhow::Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| tokenizer.encode_cut(t, Cut::End).map(|e| e.ids))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)
    };
    let check: Vec<_> = ids(check_texts)?
        .into_iter()
        .zip(check)
        .map(|(ids, v)| json!({"ids": ids, "embedding": v}))
        .collect();
    Ok(json!({
        "short": ids(&w.short)?, "short_batch": SHORT_BATCH,
        "long": ids(&w.long)?, "long_batch": LONG_BATCH,
        "single": ids(&w.single)?,
        "check": check,
    }))
}

fn write(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec(value)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
