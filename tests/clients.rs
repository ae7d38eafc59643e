//! Issue 53, goal 3: the clients people already run, as their docs say to use them, against
//! the real daemon: the `ollama` Python client (`embed`, the legacy `embeddings`, and over the
//! Unix socket through an httpx transport), LangChain's `OllamaEmbeddings` and
//! `OpenAIEmbeddings`, LlamaIndex's `OllamaEmbedding`, and openai-python over TCP with the
//! token and over the socket. Each must give `/v1/embeddings`' vectors (cosine 1.0), and a wrong
//! token must be refused. The clients run from a venv that `tests/run` makes from
//! `tests/clients/requirements.txt` (pinned); without it the test says SKIP.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::{Daemon, cosine, write_config};
use serde_json::{Value, json};

const TOKEN: &str = "0e8b4a7f3c21d9655a0c1f7e2b8d4c39";

/// The venv's python (`TESTS_CLIENTS_VENV`, else where `tests/run` makes it).
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("TESTS_CLIENTS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/caxton-clients/venv"));
    venv.join("bin/python")
}

#[test]
fn every_client_gets_the_daemons_vectors_over_tcp_with_the_token_and_over_the_socket() {
    let python = venv_python();
    if !python.exists() {
        common::skip::skip(&format!(
            "{} is missing: tests/run makes the clients' venv from tests/clients/requirements.txt",
            python.display()
        ));
        return;
    }
    let d = Daemon::start_with(
        |dir| {
            let token = dir.join("api-token");
            std::fs::write(&token, format!("{TOKEN}\n")).expect("write the token");
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            write_config(
                dir,
                "api:\n  listen: [\"127.0.0.1:0\"]\n  token_file: api-token\n",
            );
        },
        &[],
    );
    let (_, status) = d.request("GET", "/api/status", "");
    let address = status["api_listeners"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no API listener: {status}"))
        .to_string();
    let model = "all-MiniLM-L6-v2";
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Edge devices embed text without a network.",
        "Part number XJ-4410-B failed its self-test.",
        "what does the appliance do offline?",
    ];
    let (s, reference) = d.request(
        "POST",
        "/v1/embeddings",
        &json!({"model": model, "input": texts}).to_string(),
    );
    assert_eq!(s, 200, "{reference}");
    let reference: Vec<Vec<f32>> = reference["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| floats(&d["embedding"]))
        .collect();

    let out = std::process::Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/run_clients.py"))
        .args(["--url", &format!("http://{address}")])
        .args(["--token", TOKEN])
        .arg("--socket")
        .arg(&d.socket)
        .args(["--model", model])
        .args(["--texts", &json!(texts).to_string()])
        .output()
        .expect("run the clients");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run_clients.py failed:\n{stderr}");
    let results: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    println!("client versions: {}", results["versions"]);
    let clients = &results["clients"];
    for name in [
        "ollama.embed",
        "ollama.embeddings",
        "ollama.embed over the Unix socket",
        "langchain_ollama.OllamaEmbeddings",
        "langchain_openai.OpenAIEmbeddings",
        "llama_index OllamaEmbedding",
        "openai over TCP",
        "openai over the Unix socket",
    ] {
        let r = &clients[name];
        assert!(
            r.get("error").is_none(),
            "{name}: {}\n{}",
            r["error"],
            r["trace"].as_str().unwrap_or("")
        );
        let vectors = r["vectors"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no vectors: {r}"));
        assert_eq!(vectors.len(), texts.len(), "{name}");
        let mut lowest = f64::MAX;
        for (i, (v, want)) in vectors.iter().zip(&reference).enumerate() {
            let v = floats(v);
            assert_eq!(v.len(), want.len(), "{name}, text {i}");
            let c = cosine(&v, want);
            assert!(c >= 0.999_999, "{name}, text {i}: cosine {c}");
            lowest = lowest.min(c);
        }
        println!(
            "{name}: {} vectors, lowest cosine to /v1/embeddings' {lowest:.9}",
            vectors.len()
        );
    }
    let refused = &clients["openai with a wrong token"];
    assert_eq!(refused["refused"], 401, "{refused}");
    assert_eq!(
        refused["message"],
        "the bearer token sent is not the one in the daemon's api.token_file; send that token (after a change of the file, the daemon reads it on reload)",
        "{refused}"
    );
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a vector: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}
