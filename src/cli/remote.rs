//! The commands that talk to the daemon over its socket: `embed`, `rerank`, `reload`, `load`,
//! `unload`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use hyper::Method;

use super::client;

/// One request without a body whose answer must be a 2xx JSON document.
pub(super) fn call(socket: &Path, method: Method, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, bytes) = client::blocking_request(socket, method, path, None)?;
    if !status.is_success() {
        bail!("{}: {}", status, client::error_message(&bytes));
    }
    serde_json::from_slice(&bytes).context("caxtond sent invalid JSON")
}

/// POSTs `body` as JSON; the answer must be a 2xx JSON document (else the daemon's error).
fn post(socket: &Path, path: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let (status, bytes) =
        client::blocking_request(socket, Method::POST, path, Some(serde_json::to_vec(body)?))?;
    if !status.is_success() {
        bail!("{}: {}", status, client::error_message(&bytes));
    }
    serde_json::from_slice(&bytes).context("caxtond sent invalid JSON")
}

/// `caxton embed`: the vectors of `/v1/embeddings` for `body` as JSON, one array per text.
pub(super) fn embed(socket: &Path, body: serde_json::Value) -> anyhow::Result<ExitCode> {
    let v = post(socket, "/v1/embeddings", &body)?;
    let vectors: Vec<&serde_json::Value> = v["data"]
        .as_array()
        .context("caxtond's answer has no data")?
        .iter()
        .map(|d| &d["embedding"])
        .collect();
    println!("{}", serde_json::to_string(&vectors)?);
    Ok(ExitCode::SUCCESS)
}

/// `caxton rerank`: TEI's `/rerank` with the texts returned, printed as JSON, best first.
pub(super) fn rerank(
    socket: &Path,
    model: Option<String>,
    instruction: Option<String>,
    query: String,
    documents: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let v = post(
        socket,
        "/rerank",
        &serde_json::json!({"query": query, "texts": documents, "model": model, "instruction": instruction, "return_text": true}),
    )?;
    println!("{}", serde_json::to_string(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// `caxton reload`: exit 1 when the daemon refused the new configuration.
pub(super) fn reload(socket: &Path) -> anyhow::Result<ExitCode> {
    let (status, bytes) = client::blocking_request(socket, Method::POST, "/api/reload", None)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if status.is_success() && v["applied"] == true {
        println!(
            "{}",
            v["message"].as_str().unwrap_or("configuration applied")
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("caxton: {}", client::error_message(&bytes));
        Ok(ExitCode::FAILURE)
    }
}

/// `caxton load ID`.
pub(super) fn load(socket: &Path, id: &str) -> anyhow::Result<ExitCode> {
    let v = call(
        socket,
        Method::POST,
        &format!("/api/memory/models/{id}/load"),
    )?;
    println!(
        "{id}: loaded, {} MiB, {} ms",
        v["memory_bytes"].as_u64().unwrap_or(0) >> 20,
        v["load_ms"]
    );
    Ok(ExitCode::SUCCESS)
}

/// `caxton unload ID`.
pub(super) fn unload(socket: &Path, id: &str) -> anyhow::Result<ExitCode> {
    let v = call(socket, Method::DELETE, &format!("/api/memory/models/{id}"))?;
    if v["unloaded"] == true {
        println!(
            "{id}: unloaded, {} MiB released",
            v["bytes_released"].as_u64().unwrap_or(0) >> 20
        );
    } else {
        println!("{id}: was not loaded");
    }
    Ok(ExitCode::SUCCESS)
}
