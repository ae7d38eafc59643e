//! Caxton benchmark: package verify + load time in-process, then throughput, latency and RSS of
//! the real `caxtond` over its Unix socket. Run with `bench/run` (builds release first).
//!
//! Workloads (as in the speed issue): 1,000 short texts (~19 tokens) sent 32 per request
//! sorted by length; 256 texts of 256 tokens sent 16 per request; single short texts one at a
//! time over one keep-alive connection for latency.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

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

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(socket: &Path) -> anyhow::Result<Conn> {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender })
    }

    /// Embeds `texts`, returning the prompt tokens.
    async fn embed(&mut self, texts: &[String]) -> anyhow::Result<u64> {
        let body = serde_json::to_vec(&serde_json::json!({ "input": texts }))?;
        let req = hyper::Request::post("/v1/embeddings")
            .header(hyper::header::HOST, "localhost")
            .body(Full::new(Bytes::from(body)))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&bytes));
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes)?;
        v["usage"]["prompt_tokens"].as_u64().context("no usage")
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
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
    // `--package FILE` benchmarks another model (the daemon serves it as its default).
    let args: Vec<String> = std::env::args().collect();
    let package = match args.iter().position(|a| a == "--package") {
        Some(i) => PathBuf::from(args.get(i + 1).context("--package needs a FILE")?),
        None => repo.join("bundled-models/all-MiniLM-L6-v2.tar.zst"),
    };
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
    )?;
    let load = t.elapsed();
    let (model_id, storage) = {
        let m = &model.package.manifest;
        let f16 = std::fs::read(model.package.dir.join("model.safetensors"))
            .ok()
            .and_then(|b| {
                safetensors::SafeTensors::deserialize(&b).ok().map(|st| {
                    st.tensors()
                        .iter()
                        .any(|(_, v)| v.dtype() == safetensors::Dtype::F16)
                })
            })
            .unwrap_or(false);
        (m.id.clone(), if f16 { "f16" } else { "f32" })
    };
    drop(model);

    // The daemon over its socket.
    let dir = work.path();
    std::fs::write(
        dir.join("caxton.yaml"),
        format!(
            "socket:\n  path: {}\nstate_dir: {}\nmodels:\n  bundled_dir: {}\n  package_dir: {}\n  default: {model_id}\nlog:\n  level: warn\n",
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
    let daemon = Daemon(child);
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
            if started.elapsed() > Duration::from_secs(120) {
                bail!("caxtond did not serve within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })?;
    let ready = started.elapsed();
    let idle_rss = status_kib(pid, "VmRSS:");

    let mut short: Vec<String> = (0..1000).map(|i| text(i, 10 + (i as usize % 12))).collect();
    short.sort_by_key(String::len);
    let long: Vec<String> = (0..256).map(|i| text(10_000 + i, 400)).collect();

    let (short_s, short_tokens, long_s, long_tokens, latencies) = rt.block_on(async {
        let mut c = Conn::open(&socket).await?;
        let t = Instant::now();
        let mut short_tokens = 0;
        for chunk in short.chunks(32) {
            short_tokens += c.embed(chunk).await?;
        }
        let short_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut long_tokens = 0;
        for chunk in long.chunks(16) {
            long_tokens += c.embed(chunk).await?;
        }
        let long_s = t.elapsed().as_secs_f64();
        let mut latencies = Vec::new();
        for i in 0..300u64 {
            let one = [text(50_000 + i, 12)];
            let t = Instant::now();
            c.embed(&one).await?;
            latencies.push(t.elapsed());
        }
        latencies.sort();
        anyhow::Ok((short_s, short_tokens, long_s, long_tokens, latencies))
    })?;
    let peak = status_kib(pid, "VmHWM:");

    println!(
        "caxton benchmark: {model_id} ({storage} storage, f32 compute, {} bytes package), {} CPUs",
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
    println!(
        "  1,000 short texts, batch 32           {:>8.1} texts/s  {:>8.0} tokens/s  ({:.1} tokens/text)",
        1000.0 / short_s,
        short_tokens as f64 / short_s,
        short_tokens as f64 / 1000.0
    );
    println!(
        "  256 texts x 256 tokens, batch 16      {:>8.1} texts/s  {:>8.0} tokens/s",
        256.0 / long_s,
        long_tokens as f64 / long_s
    );
    println!(
        "  single short text over the socket     p50 {:.2} ms  p99 {:.2} ms  (n={})",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.len()
    );
    println!(
        "  daemon RSS idle with model loaded     {:>8.0} MB",
        idle_rss as f64 / 1024.0
    );
    println!(
        "  daemon peak RSS (VmHWM)               {:>8.0} MB",
        peak as f64 / 1024.0
    );
    Ok(())
}
