//! Rerank benchmark, Caxton's side: drives a running `caxtond` over its Unix socket (started
//! by `bench/rerank`, which also runs the ONNX Runtime peer on the workload written here).
//!
//!   rerank_bench --socket SOCK --model ID --tokenizer tokenizer.json [--pid PID] [--quick]
//!                --json OUT.json [--workload W.json]
//!
//! Workloads, after unloading the other loaded models (the daemon's default embedding model,
//! `DELETE /api/memory/models/OTHER`, so that the RSS is the daemon's with the reranker
//! alone), `POST /api/memory/models/ID/load` (its `load_ms` is the daemon's load of
//! the reranker) and a warm-up (one batch request, one single pair):
//! - batch: one query (~10 tokens) against the same 20 documents (~200 tokens each) as ONE
//!   `POST /rerank` request, repeated (30 times; 5 with --quick): pairs/s and the per-request
//!   latency p50/p99;
//! - single: one query–document pair per request, sequentially, over one keep-alive
//!   connection (200 requests, each with another document; 30 with --quick): p50/p99.
//!
//! Then the raw scores (`raw_scores`: the logits) of a few check pairs, each alone, for the
//! peer to compare, the batch's documents scored together against each alone (fails if
//! they differ by more than 1e-3), and the ranking set: each of [`RANKING_QUERIES`] against
//! the batch's 20 documents, their logits in document order (the summary compares each
//! precision's top 5 and scores with f32's). With --pid, the daemon's VmRSS and VmHWM after the run.
//! The texts are deterministic English sentences; documents grow until the reranker's
//! tokenizer (--tokenizer, the package's tokenizer.json) counts 200 tokens.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

mod common;
use common::{percentile, status_kib};

const SENTENCES: &[&str] = &[
    "The library opened early on Saturday mornings, and the smell of old paper drifted out onto the street.",
    "Students arrived with thermoses of coffee, retirees came for the newspapers, and a few children waited for the story hour to begin.",
    "Unix domain sockets provide a fast way for processes on the same host to communicate.",
    "Unlike TCP sockets, they do not go through the network stack, and access can be controlled with ordinary file permissions on the socket path.",
    "Mean pooling averages the token embeddings produced by the transformer, weighting each position by the attention mask.",
    "The resulting vector is then normalized to unit length, which makes the dot product equal to cosine similarity.",
    "After three weeks of rain, the river finally burst its banks.",
    "Farmers moved their cattle to higher ground, and volunteers filled sandbags through the night.",
    "The old stone bridge, which had survived two centuries of floods, held firm once again.",
    "To make a simple tomato sauce, warm olive oil in a pan, add a sliced clove of garlic, and cook until fragrant.",
    "Pour in a can of crushed tomatoes, season with salt, and simmer for twenty minutes.",
    "Scientists discovered a new species of frog in the Amazon rainforest.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Please remember to water the plants while I am away on vacation.",
    "She finished the marathon in just under four hours.",
    "Rust guarantees memory safety without a garbage collector.",
    "The meeting has been moved to Thursday at three in the afternoon.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The children built a sandcastle before the tide came in.",
    "Embeddings map sentences to points in a high-dimensional vector space.",
    "Our flight was delayed by two hours because of fog over the airport.",
    "A bowl of hot soup is perfect on a cold winter evening.",
    "The operator checked the valve pressure at the north pump station before the night shift.",
    "A cross-encoder reads the query and the document together and scores how well they match.",
    "Search engines often retrieve a few hundred candidates quickly and rerank the best of them carefully.",
    "The device stores recent sensor readings in a local cache while the network is offline.",
    "Maintenance windows are announced a week in advance so that customers can plan around them.",
    "The museum's new wing displays tools, maps and letters from the early days of the railway.",
    "Good documentation explains not only how a system works but also why it was built that way.",
    "The committee agreed to review the budget again after the first quarter's figures arrive.",
    "Bees visit thousands of flowers every day, carrying pollen from one plant to the next.",
    "The recipe calls for two cups of flour, a pinch of salt and a spoonful of honey.",
];

const QUERY: &str = "how do unix sockets let local processes talk quickly";
/// Queries of the ranking set, each against the batch's documents.
const RANKING_QUERIES: &[&str] = &[
    QUERY,
    "what happened when the river flooded",
    "how to cook a simple tomato sauce",
    "why normalize sentence embeddings",
    "what does a cross-encoder do",
    "library opening hours on the weekend",
    "memory safety without garbage collection",
    "flight delays caused by weather",
    "new species found in the rainforest",
    "how do search engines rerank results",
];
const BATCH_DOCUMENTS: usize = 20;
const DOCUMENT_TOKENS: usize = 200;
/// A document longer than the model's 512 tokens, so the check covers truncation too.
const LONG_DOCUMENT_TOKENS: usize = 600;
const BATCH_TOLERANCE: f64 = 1e-3;

/// xorshift64, deterministic.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Sentences drawn from `seed` until `tokenizer` counts at least `tokens` (no special tokens).
fn document(tokenizer: &tokenizers::Tokenizer, seed: u64, tokens: usize) -> anyhow::Result<String> {
    let mut rng = Rng::new(seed);
    let mut doc = String::new();
    while count(tokenizer, &doc)? < tokens {
        if !doc.is_empty() {
            doc.push(' ');
        }
        doc.push_str(SENTENCES[(rng.next() % SENTENCES.len() as u64) as usize]);
    }
    Ok(doc)
}

fn count(tokenizer: &tokenizers::Tokenizer, text: &str) -> anyhow::Result<usize> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?
        .get_ids()
        .len())
}

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(socket: &Path) -> anyhow::Result<Conn> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender })
    }

    /// POSTs `/rerank`; any non-2xx answer, or an answer that is not a ranking of every
    /// document best first, is an error. Returns (index, score) best first.
    async fn rerank(
        &mut self,
        query: &str,
        texts: &[String],
        raw: bool,
    ) -> anyhow::Result<Vec<(usize, f64)>> {
        // `truncate`: the check's long document is cut to the model's 512 tokens, as the peer
        // cuts it (without it the daemon refuses the pair, 413).
        let body = serde_json::to_vec(
            &json!({ "query": query, "texts": texts, "raw_scores": raw, "truncate": true }),
        )?;
        let req = hyper::Request::post("/rerank")
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "POST /rerank: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let v: Value = serde_json::from_slice(&bytes)?;
        let ranks = v.as_array().context("POST /rerank: not a list")?;
        let out: Vec<(usize, f64)> = ranks
            .iter()
            .map(|r| {
                Ok((
                    r["index"].as_u64().context("no index")? as usize,
                    r["score"].as_f64().context("no score")?,
                ))
            })
            .collect::<anyhow::Result<_>>()
            .with_context(|| format!("POST /rerank answered {v}"))?;
        let mut seen: Vec<usize> = out.iter().map(|r| r.0).collect();
        seen.sort_unstable();
        if seen != (0..texts.len()).collect::<Vec<_>>() {
            bail!(
                "POST /rerank ranked {:?}, not each of the {} documents once",
                out,
                texts.len()
            );
        }
        if out.windows(2).any(|w| w[0].1 < w[1].1) {
            bail!("POST /rerank: scores not best first: {out:?}");
        }
        Ok(out)
    }

    /// Each document's raw score (logit), in the documents' order.
    async fn logits(&mut self, query: &str, texts: &[String]) -> anyhow::Result<Vec<f64>> {
        let ranked = self.rerank(query, texts, true).await?;
        let mut out = vec![f64::NAN; texts.len()];
        for (i, s) in ranked {
            out[i] = s;
        }
        Ok(out)
    }
}

/// One request on a fresh connection (caxton's own client); the status and the JSON body.
async fn call(socket: &Path, method: hyper::Method, path: &str) -> anyhow::Result<(u16, Value)> {
    let (status, body) = caxton::cli::client::request(socket, method, path, None).await?;
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((status.as_u16(), v))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let (mut socket, mut model, mut tokenizer_path) = (None, None, None);
    let (mut pid, mut json_out, mut workload_out, mut quick) = (None, None, None, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--model" => model = Some(value()?),
            "--tokenizer" => tokenizer_path = Some(PathBuf::from(value()?)),
            "--pid" => pid = Some(value()?.parse::<u32>().context("--pid")?),
            "--json" => json_out = Some(PathBuf::from(value()?)),
            "--workload" => workload_out = Some(PathBuf::from(value()?)),
            "--quick" => quick = true,
            _ => bail!(
                "unknown argument {arg}; usage: rerank_bench --socket SOCK --model ID --tokenizer FILE [--pid PID] [--quick] --json OUT [--workload FILE]"
            ),
        }
    }
    let socket = socket.context("--socket is required")?;
    let model = model.context("--model is required")?;
    let tokenizer_path = tokenizer_path.context("--tokenizer is required")?;
    let json_out = json_out.context("--json is required")?;
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer_path.display()))?;

    let (batch_repeats, n_single) = if quick { (5, 30) } else { (30, 200) };
    let docs: Vec<String> = (0..BATCH_DOCUMENTS as u64)
        .map(|i| document(&tokenizer, 1 + i, DOCUMENT_TOKENS))
        .collect::<anyhow::Result<_>>()?;
    let singles: Vec<String> = (0..n_single as u64)
        .map(|i| document(&tokenizer, 10_000 + i, DOCUMENT_TOKENS))
        .collect::<anyhow::Result<_>>()?;
    let long_doc = document(&tokenizer, 99_999, LONG_DOCUMENT_TOKENS)?;
    let query_tokens = count(&tokenizer, QUERY)?;
    let doc_tokens: Vec<usize> = docs
        .iter()
        .map(|d| count(&tokenizer, d))
        .collect::<anyhow::Result<_>>()?;
    let check: Vec<(String, String)> = docs[..4]
        .iter()
        .chain([&singles[0], &long_doc])
        .map(|d| (QUERY.to_string(), d.clone()))
        .chain([(
            "what is the capital of australia?".to_string(),
            "Canberra is the capital city of Australia, chosen as a compromise between Sydney and Melbourne.".to_string(),
        )])
        .collect();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // The daemon must serve and know the model as a reranker.
        let (s, health) = call(&socket, hyper::Method::GET, "/health").await?;
        if s != 200 {
            bail!("GET /health: {s} {health}");
        }
        let (_, models) = call(&socket, hyper::Method::GET, "/api/models").await?;
        let entry = |models: &Value| {
            models["data"]
                .as_array()
                .and_then(|d| d.iter().find(|m| m["id"] == model.as_str()).cloned())
        };
        let before = entry(&models).with_context(|| format!("{model} is not in {models}"))?;
        if before["kind"] != "reranker" {
            bail!("{model} is not a reranker: {before}");
        }
        let max_seq_length = before["max_seq_length"].as_u64().unwrap_or(0) as usize;
        let batch_pair_tokens: Vec<usize> = doc_tokens
            .iter()
            .map(|d| (query_tokens + d + 3).min(max_seq_length))
            .collect();

        // The daemon loads its default (embedding) model at start: unloaded, so that its RSS
        // after the run is that of the daemon serving the reranker alone.
        let mut unloaded = Vec::new();
        for m in models["data"].as_array().into_iter().flatten() {
            let Some(other) = m["id"].as_str().filter(|i| *i != model && m["state"] == "loaded")
            else {
                continue;
            };
            let (s, v) = call(
                &socket,
                hyper::Method::DELETE,
                &format!("/api/memory/models/{other}"),
            )
            .await?;
            if s == 200 {
                unloaded.push(other.to_string());
            } else {
                eprintln!("  note: could not unload {other} ({s} {v}); the daemon's RSS includes it");
            }
        }

        // The daemon's load of the reranker.
        let t = Instant::now();
        let (s, load) = call(
            &socket,
            hyper::Method::POST,
            &format!("/api/memory/models/{model}/load"),
        )
        .await?;
        let load_call = t.elapsed();
        if s != 200 {
            bail!("POST /api/memory/models/{model}/load: {s} {load}");
        }
        let load_ms = load["load_ms"].as_f64().context("no load_ms")?;

        let mut c = Conn::open(&socket).await?;
        c.rerank(QUERY, &docs, false).await?;
        c.rerank(QUERY, &docs[..1], false).await?;
        let idle_rss = pid.map(|p| status_kib(p, "VmRSS:"));

        let mut batch = Vec::with_capacity(batch_repeats);
        let t = Instant::now();
        for _ in 0..batch_repeats {
            let t = Instant::now();
            c.rerank(QUERY, &docs, false).await?;
            batch.push(t.elapsed());
        }
        let batch_s = t.elapsed().as_secs_f64();
        let mut single = Vec::with_capacity(singles.len());
        for d in &singles {
            let t = Instant::now();
            c.rerank(QUERY, std::slice::from_ref(d), false).await?;
            single.push(t.elapsed());
        }
        batch.sort();
        single.sort();
        let rss = pid.map(|p| status_kib(p, "VmRSS:"));
        let hwm = pid.map(|p| status_kib(p, "VmHWM:"));

        // Check pairs, each alone; the batch's documents together against alone.
        let mut check_logits = Vec::new();
        for (q, d) in &check {
            check_logits.push(c.logits(q, std::slice::from_ref(d)).await?[0]);
        }
        let together = c.logits(QUERY, &docs).await?;
        let mut alone = Vec::new();
        for d in &docs {
            alone.push(c.logits(QUERY, std::slice::from_ref(d)).await?[0]);
        }
        let batch_diff = together
            .iter()
            .zip(&alone)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let mut ranking = Vec::new();
        for q in RANKING_QUERIES {
            ranking.push(c.logits(q, &docs).await?);
        }

        let (_, models) = call(&socket, hyper::Method::GET, "/api/models").await?;
        let after = entry(&models).context("the reranker left /api/models")?;
        let loaded: Vec<Value> = models["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter(|m| m["state"] == "loaded")
                    .map(|m| json!({"id": m["id"], "kind": m["kind"], "memory_bytes": m["memory_bytes"]}))
                    .collect()
            })
            .unwrap_or_default();

        let pairs = (docs.len() * batch_repeats) as f64;
        let mb = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
        let figures = json!({
            "implementation": "caxton",
            "model_id": model,
            "precision": after["loaded_precision"].as_str().or(after["precision"].as_str()).unwrap_or("?"),
            "kernel": after["kernel"],
            "max_seq_length": max_seq_length,
            "model_memory_bytes": after["memory_bytes"],
            "loaded_models": loaded,
            "unloaded_before_run": unloaded,
            "load_ms": load_ms,
            "load_call_ms": ms(load_call),
            "query_tokens": query_tokens,
            "document_tokens_mean": doc_tokens.iter().sum::<usize>() as f64 / docs.len() as f64,
            "batch_documents": docs.len(),
            "batch_requests": batch_repeats,
            "batch_pair_tokens_mean": batch_pair_tokens.iter().sum::<usize>() as f64 / docs.len() as f64,
            "batch_s": batch_s,
            "batch_pairs_per_s": pairs / batch_s,
            "batch_p50_ms": ms(percentile(&batch, 0.5)),
            "batch_p99_ms": ms(percentile(&batch, 0.99)),
            "single_n": single.len(),
            "single_p50_ms": ms(percentile(&single, 0.5)),
            "single_p99_ms": ms(percentile(&single, 0.99)),
            "idle_rss_mb": mb(idle_rss),
            "rss_mb": mb(rss),
            "peak_rss_mb": mb(hwm),
            "batch_vs_single_max_abs_diff": batch_diff,
            "check": check.iter().zip(&check_logits).map(|((q, d), l)| json!({"query": q, "document": d, "logit": l})).collect::<Vec<_>>(),
            "ranking": ranking,
        });
        std::fs::write(&json_out, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("cannot write {}", json_out.display()))?;
        if let Some(path) = &workload_out {
            let w = json!({
                "query": QUERY,
                "batch_documents": docs,
                "batch_repeats": batch_repeats,
                "batch_pair_tokens": batch_pair_tokens,
                "single_documents": singles,
                "check": check.iter().map(|(q, d)| json!({"query": q, "document": d})).collect::<Vec<_>>(),
                "ranking_queries": RANKING_QUERIES,
            });
            std::fs::write(path, serde_json::to_vec(&w)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let f = &figures;
        println!(
            "  caxton {} ({}): batch {:.1} pairs/s (p50 {:.1} ms, p99 {:.1} ms), single p50 {:.2} ms p99 {:.2} ms, load {load_ms:.0} ms, RSS {} MB (peak {} MB)",
            f["precision"].as_str().unwrap_or("?"),
            f["kernel"].as_str().unwrap_or("?"),
            f["batch_pairs_per_s"].as_f64().unwrap_or(f64::NAN),
            f["batch_p50_ms"].as_f64().unwrap_or(f64::NAN),
            f["batch_p99_ms"].as_f64().unwrap_or(f64::NAN),
            f["single_p50_ms"].as_f64().unwrap_or(f64::NAN),
            f["single_p99_ms"].as_f64().unwrap_or(f64::NAN),
            f["rss_mb"].as_f64().map_or("?".into(), |v| format!("{v:.0}")),
            f["peak_rss_mb"].as_f64().map_or("?".into(), |v| format!("{v:.0}")),
        );
        println!(
            "    models loaded after the run: {} (unloaded before it: {}); batch vs alone max |logit diff| {batch_diff:.1e}",
            loaded
                .iter()
                .map(|m| format!(
                    "{} ({}, {} MiB)",
                    m["id"].as_str().unwrap_or("?"),
                    m["kind"].as_str().unwrap_or("?"),
                    m["memory_bytes"].as_u64().unwrap_or(0) >> 20
                ))
                .collect::<Vec<_>>()
                .join(", "),
            if unloaded.is_empty() { "none".to_string() } else { unloaded.join(", ") }
        );
        if batch_diff > BATCH_TOLERANCE {
            bail!(
                "caxton scored the batch's documents together differently from alone: max |diff| {batch_diff} > {BATCH_TOLERANCE} (together {together:?}, alone {alone:?})"
            );
        }
        anyhow::Ok(())
    })
}
