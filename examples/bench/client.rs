//! The benchmark's client: keep-alive HTTP/1.1 connections to the daemon's socket posting
//! `/v1/embeddings`, one after another or many at once.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;

pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(socket: &Path) -> anyhow::Result<Conn> {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender })
    }

    /// Embeds `texts`, returning the prompt tokens. The answer is read whole, but its vectors
    /// are skipped, not parsed into a JSON tree: that is the client's cost, not the daemon's,
    /// and a client sending requests one after another paid it between them (ORT's and the
    /// engine's figures, in process, pay nothing of the kind).
    pub async fn embed(&mut self, texts: &[String]) -> anyhow::Result<u64> {
        #[derive(serde::Deserialize)]
        struct Answer {
            usage: Usage,
        }
        #[derive(serde::Deserialize)]
        struct Usage {
            prompt_tokens: u64,
        }
        let body = serde_json::to_vec(&json!({ "input": texts, "truncate": true }))?;
        let bytes = self.call_bytes("POST", "/v1/embeddings", body).await?;
        let answer: Answer = serde_json::from_slice(&bytes).context("no usage")?;
        Ok(answer.usage.prompt_tokens)
    }

    /// Embeds `texts`, returning the vectors.
    pub async fn vectors(&mut self, texts: &[String]) -> anyhow::Result<Vec<Vec<f64>>> {
        let v = self.request(texts).await?;
        let data = v["data"].as_array().context("no data")?;
        data.iter()
            .map(|d| {
                d["embedding"]
                    .as_array()
                    .context("no embedding")?
                    .iter()
                    .map(|x| x.as_f64().context("not a number"))
                    .collect()
            })
            .collect()
    }

    /// POSTs `texts` to `/v1/embeddings`; any non-2xx answer is an error.
    async fn request(&mut self, texts: &[String]) -> anyhow::Result<serde_json::Value> {
        let body = serde_json::to_vec(&json!({ "input": texts, "truncate": true }))?;
        self.call("POST", "/v1/embeddings", body).await
    }

    /// `method path` with no body (the memory and status API); any non-2xx answer is an
    /// error.
    pub async fn send(&mut self, method: &str, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call(method, path, Vec::new()).await
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(
            &self.call_bytes(method, path, body).await?,
        )?)
    }

    /// `method path` with `body`; the answer's bytes, or an error for a non-2xx answer.
    async fn call_bytes(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Bytes> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .body(Full::new(Bytes::from(body)))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(bytes)
    }
}

/// `clients` keep-alive connections, each sending its share of `texts` (round robin) one text
/// per request, all at once. Returns the wall time and the failed requests (non-2xx answers
/// and transport errors; a client whose connection broke reconnects).
pub async fn concurrent(
    socket: &Path,
    texts: &[String],
    clients: usize,
) -> anyhow::Result<(Duration, u64)> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(socket).await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let t = Instant::now();
    for (k, mut conn) in conns.into_iter().enumerate() {
        let mine: Vec<String> = texts.iter().skip(k).step_by(clients).cloned().collect();
        let socket = socket.to_path_buf();
        tasks.spawn(async move {
            let mut errors = 0u64;
            for text in mine {
                if conn.embed(&[text]).await.is_err() {
                    errors += 1;
                    if conn.sender.is_closed() {
                        match Conn::open(&socket).await {
                            Ok(c) => conn = c,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
            }
            errors
        });
    }
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        errors += done?;
    }
    Ok((t.elapsed(), errors))
}
