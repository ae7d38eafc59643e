//! What the benchmark measured: the lines it prints and the JSON object `--json` writes
//! (`bench/compare` and `bench/scaling` read it; its keys are theirs).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use caxton::engine::Precision;
use serde_json::{Value, json};

use crate::common::percentile;
use crate::timing::{DaemonRun, Timed};
use crate::workload::{CLIENTS, LONG_BATCH, SHORT_BATCH, Workload};

/// Which sides ran (see the crate's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Twin,
    DaemonAlone,
    EngineAlone,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Twin => "twin",
            Mode::DaemonAlone => "daemon-alone",
            Mode::EngineAlone => "engine-alone",
        }
    }
}

/// The engine's figures from an `--engine-alone` run's JSON.
pub struct EngineFile {
    short_texts_per_s: f64,
    long_tokens_per_s: f64,
    single_p50_ms: f64,
    single_p99_ms: f64,
}

/// Reads an `--engine-alone` run's figures.
pub fn engine_figures(path: &Path) -> anyhow::Result<EngineFile> {
    let v: Value = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", path.display()))?;
    let get = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("{}: no {k} (not an --engine-alone run?)", path.display()))
    };
    Ok(EngineFile {
        short_texts_per_s: get("engine_short_texts_per_s")?,
        long_tokens_per_s: get("engine_long_tokens_per_s")?,
        single_p50_ms: get("engine_single_p50_ms")?,
        single_p99_ms: get("engine_single_p99_ms")?,
    })
}

/// Everything measured, filled in as the run goes.
#[derive(Default)]
pub struct Figures {
    pub mode: Mode,
    pub model_id: String,
    pub storage: &'static str,
    pub compute: Precision,
    pub kernel: String,
    pub package_bytes: u64,
    /// Seconds: caxton's verifier, and `zstd -dc | sha256sum`.
    pub verify: f64,
    pub pipe: f64,
    pub unpack_verify: Duration,
    /// In this process, or the daemon's (daemon-alone).
    pub load: Option<Duration>,
    pub ready: Option<Duration>,
    pub daemon: Option<DaemonRun>,
    /// The engine in this process (twin or engine-alone).
    pub own: Option<Timed>,
    /// An earlier `--engine-alone` run's (daemon-alone with `--engine-json`).
    pub engine_file: Option<EngineFile>,
    /// Wall time and failed requests of the concurrent clients.
    pub concurrent: Option<(Duration, u64)>,
    pub idle_rss_kib: u64,
    pub peak_rss_kib: u64,
    pub peak_concurrent_kib: u64,
    pub check: Vec<Vec<f64>>,
    pub reference: Vec<Vec<f64>>,
    pub corpus: Vec<Vec<f32>>,
}

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// `n` with a thousands separator, as the human output has always printed it.
fn thousands(n: usize) -> String {
    if n >= 1000 {
        format!("{},{:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The engine's short texts/s, long tokens/s and one text's p50 and p99 (ms), from this
/// process or an earlier engine-alone run.
struct EngineRates {
    short: f64,
    long: f64,
    p50: f64,
    p99: f64,
}

impl Figures {
    pub fn new(mode: Mode) -> Figures {
        Figures {
            mode,
            ..Figures::default()
        }
    }

    fn engine_rates(&self, w: &Workload) -> Option<EngineRates> {
        if let Some(own) = &self.own {
            // Token counts are the daemon's where it ran, else the engine's own.
            let tokens = self
                .daemon
                .as_ref()
                .map_or(own.long_tokens, |d| d.timed.long_tokens);
            return Some(EngineRates {
                short: w.short.len() as f64 / own.short.as_secs_f64(),
                long: tokens as f64 / own.long.as_secs_f64(),
                p50: ms(percentile(&own.single, 0.5)),
                p99: ms(percentile(&own.single, 0.99)),
            });
        }
        self.engine_file.as_ref().map(|e| EngineRates {
            short: e.short_texts_per_s,
            long: e.long_tokens_per_s,
            p50: e.single_p50_ms,
            p99: e.single_p99_ms,
        })
    }

    pub fn print(&self, w: &Workload) {
        let threads = rayon::current_num_threads();
        println!(
            "caxton benchmark ({}): {} ({} storage, {} compute on the {} kernel, {} bytes package), {} CPUs, {threads} compute threads",
            self.mode.name(),
            self.model_id,
            self.storage,
            self.compute,
            self.kernel,
            self.package_bytes,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let size = self.package_bytes as f64;
        println!(
            "  caxton verify (stream, tar, hashes)   {:>8.0} ms  {:>6.0} MB/s compressed",
            self.verify * 1e3,
            size / self.verify / 1e6
        );
        println!(
            "  zstd -dc | sha256sum                  {:>8.0} ms  {:>6.0} MB/s   ratio {:.2} (goal >= 0.8)",
            self.pipe * 1e3,
            size / self.pipe / 1e6,
            self.pipe / self.verify
        );
        println!(
            "  package verify + unpack (in-process)  {:>8.0} ms",
            ms(self.unpack_verify)
        );
        if let Some(load) = self.load {
            let whose = match self.mode {
                Mode::DaemonAlone => "model load (the daemon's)",
                _ => "model load (in-process)",
            };
            println!("  {whose:<38}{:>8.0} ms", ms(load));
        }
        if let Some(ready) = self.ready {
            println!(
                "  daemon start to first embedding       {:>8.0} ms",
                ms(ready)
            );
        }
        let engine = self.engine_rates(w);
        let Some(d) = &self.daemon else {
            if let (Some(e), Some(own)) = (&engine, &self.own) {
                println!(
                    "  in-process engine alone               short {:.1} texts/s ({:.1} tokens/text)  long {:.0} tokens/s  single p50 {:.2} ms  p99 {:.2} ms",
                    e.short,
                    own.short_tokens as f64 / w.short.len() as f64,
                    e.long,
                    e.p50,
                    e.p99
                );
            }
            return;
        };
        let t = &d.timed;
        let short_rate = w.short.len() as f64 / t.short.as_secs_f64();
        println!(
            "  {:<37}{:>8.1} texts/s  {:>8.0} tokens/s  ({:.1} tokens/text)",
            format!(
                "{} short texts, batch {SHORT_BATCH}",
                thousands(w.short.len())
            ),
            short_rate,
            t.short_tokens as f64 / t.short.as_secs_f64(),
            t.short_tokens as f64 / w.short.len() as f64
        );
        println!(
            "  {:<37}{:>8.1} texts/s  {:>8.0} tokens/s",
            format!("{} texts x 256 tokens, batch {LONG_BATCH}", w.long.len()),
            w.long.len() as f64 / t.long.as_secs_f64(),
            t.long_tokens as f64 / t.long.as_secs_f64()
        );
        let p50 = ms(percentile(&t.single, 0.5));
        println!(
            "  single short text over the socket     p50 {p50:.2} ms  p99 {:.2} ms  (n={})",
            ms(percentile(&t.single, 0.99)),
            t.single.len()
        );
        let requests = w.short.len().div_ceil(SHORT_BATCH);
        if let Some(e) = &engine {
            let whose = match self.own {
                Some(_) => "in-process engine, same texts   ",
                None => "engine alone (--engine-json)    ",
            };
            println!(
                "  {whose}      short {:.1} texts/s (daemon/engine {:.2})  long {:.0} tokens/s ({:.2})  single p50 {:.2} ms",
                e.short,
                short_rate / e.short,
                e.long,
                t.long_tokens as f64 / t.long.as_secs_f64() / e.long,
                e.p50
            );
            let engine_short_s = w.short.len() as f64 / e.short;
            println!(
                "  the request path (daemon - engine)    {:.3} ms per batch-{SHORT_BATCH} request, {:.1} us per text; {:.3} ms per single text",
                (t.short.as_secs_f64() - engine_short_s) * 1e3 / requests as f64,
                (t.short.as_secs_f64() - engine_short_s) * 1e6 / w.short.len() as f64,
                p50 - e.p50
            );
        }
        println!(
            "  daemon CPU ms per batch-{SHORT_BATCH} request    {}",
            d.short_cpu.per(requests)
        );
        println!(
            "  daemon CPU ms per single-text request {}",
            d.single_cpu.per(t.single.len())
        );
        if let Some((took, errors)) = self.concurrent {
            let rate = w.short.len() as f64 / took.as_secs_f64();
            println!(
                "  {:<37}{:>8.1} texts/s  (ratio to batch-{SHORT_BATCH}: {:.2}, goal >= 0.9)  errors {errors}",
                format!("{CLIENTS} clients, single texts"),
                rate,
                rate / short_rate
            );
        }
        println!(
            "  daemon RSS idle with model loaded     {:>8.0} MB",
            self.idle_rss_kib as f64 / 1024.0
        );
        println!(
            "  daemon peak RSS (VmHWM)               {:>8.0} MB",
            self.peak_rss_kib as f64 / 1024.0
        );
        println!(
            "  {:<37}{:>8.0} MB",
            format!("daemon peak RSS after {CLIENTS} clients"),
            self.peak_concurrent_kib as f64 / 1024.0
        );
    }

    pub fn json(&self, w: &Workload, check_texts: &[String]) -> Value {
        let size = self.package_bytes as f64;
        let check: Vec<_> = check_texts
            .iter()
            .zip(&self.check)
            .map(|(t, v)| json!({ "text": t, "embedding": v }))
            .collect();
        let mut v = json!({
            "implementation": "caxton",
            "mode": self.mode.name(),
            "model_id": self.model_id,
            "storage": self.storage,
            "precision": self.compute.name(),
            "kernel": self.kernel,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "threads": rayon::current_num_threads(),
            "package_bytes": self.package_bytes,
            "verify_ms": self.verify * 1e3,
            "verify_mb_per_s": size / self.verify / 1e6,
            "zstd_sha256_ms": self.pipe * 1e3,
            "verify_ratio": self.pipe / self.verify,
            "unpack_verify_ms": ms(self.unpack_verify),
            "load_ms": self.load.map(ms),
            "check": check,
            "corpus": self.corpus,
            "reference": self.reference,
        });
        let fields = v.as_object_mut().expect("an object");
        let mut put = |k: &str, x: Value| {
            fields.insert(k.to_string(), x);
        };
        if let Some(e) = self.engine_rates(w) {
            put("engine_short_texts_per_s", e.short.into());
            put("engine_long_tokens_per_s", e.long.into());
            put("engine_single_p50_ms", e.p50.into());
            put("engine_single_p99_ms", e.p99.into());
        }
        if let (Mode::EngineAlone, Some(own)) = (self.mode, &self.own) {
            put("short_texts", w.short.len().into());
            put("short_tokens", own.short_tokens.into());
            put("long_tokens", own.long_tokens.into());
        }
        let Some(d) = &self.daemon else {
            return v;
        };
        let t = &d.timed;
        let (short_s, long_s) = (t.short.as_secs_f64(), t.long.as_secs_f64());
        let short_rate = w.short.len() as f64 / short_s;
        let requests = w.short.len().div_ceil(SHORT_BATCH);
        let more = json!({
            "start_ms": self.ready.map(ms),
            "short_texts": w.short.len(),
            "short_batch": SHORT_BATCH,
            "short_tokens": t.short_tokens,
            "short_s": short_s,
            "short_texts_per_s": short_rate,
            "short_tokens_per_s": t.short_tokens as f64 / short_s,
            "long_texts": w.long.len(),
            "long_batch": LONG_BATCH,
            "long_tokens": t.long_tokens,
            "long_s": long_s,
            "long_texts_per_s": w.long.len() as f64 / long_s,
            "long_tokens_per_s": t.long_tokens as f64 / long_s,
            "single_n": t.single.len(),
            "single_p50_ms": ms(percentile(&t.single, 0.5)),
            "single_p99_ms": ms(percentile(&t.single, 0.99)),
            "short_cpu": d.short_cpu.json(),
            "short_requests": requests,
            "single_cpu": d.single_cpu.json(),
            "idle_rss_mb": self.idle_rss_kib as f64 / 1024.0,
            "peak_rss_mb": self.peak_rss_kib as f64 / 1024.0,
            "peak_rss_concurrent_mb": self.peak_concurrent_kib as f64 / 1024.0,
        });
        if let (Some(fields), Some(more)) = (v.as_object_mut(), more.as_object()) {
            fields.extend(more.clone());
        }
        if let Some((took, errors)) = self.concurrent {
            let rate = w.short.len() as f64 / took.as_secs_f64();
            let fields = v.as_object_mut().expect("an object");
            fields.insert("concurrent_clients".into(), CLIENTS.into());
            fields.insert("concurrent_texts".into(), w.short.len().into());
            fields.insert("concurrent_s".into(), took.as_secs_f64().into());
            fields.insert("concurrent_texts_per_s".into(), rate.into());
            fields.insert("concurrent_ratio".into(), (rate / short_rate).into());
            fields.insert("concurrent_errors".into(), errors.into());
        }
        v
    }
}
