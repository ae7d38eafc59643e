//! `caxton`, the command-line tool: talks to the daemon over its socket (`embed`) and works
//! on package files offline (`pack`, `verify`) with the same code the daemon uses.

pub mod client;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hyper::Method;

use crate::package::pack::{PackOptions, WeightStorage, pack};
use crate::package::verify::{DiscardSink, verify_file};

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/caxton/caxton.sock";

/// caxton: command-line tool for the Caxton embedding daemon.
#[derive(Debug, Parser)]
#[command(
    name = "caxton",
    version,
    about = "Command-line tool for the Caxton embedding daemon"
)]
pub struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "CAXTON_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embed texts and print the vectors as JSON (one array per text).
    Embed {
        /// Model id (default: the daemon's models.default).
        #[arg(long)]
        model: Option<String>,
        /// Texts to embed.
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Build a package from a sentence-transformers folder.
    Pack {
        /// The sentence-transformers folder (config.json, model.safetensors, tokenizer.json,
        /// modules.json, 1_Pooling/config.json, sentence_bert_config.json).
        model_dir: PathBuf,
        /// Output file, NAME.tar.zst.
        #[arg(short, long)]
        output: PathBuf,
        /// Model id (default: the folder's name).
        #[arg(long)]
        id: Option<String>,
        /// Package version.
        #[arg(long, default_value = "1")]
        version: String,
        /// Store f32 weights as f16 (half the size; computation stays f32).
        #[arg(long)]
        f16: bool,
        /// zstd compression level (1-22).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
        /// A prompt requests can name with prompt_name, as NAME=TEXT (e.g. query="query: ");
        /// repeatable; adds to those in config_sentence_transformers.json.
        #[arg(long = "prompt", value_parser = parse_prompt)]
        prompts: Vec<(String, String)>,
        /// The prompt applied when a request names none.
        #[arg(long)]
        default_prompt: Option<String>,
    },
    /// Ask the daemon to re-read its configuration and wait for the outcome; exit 1 if the
    /// new configuration was refused (the running one stays).
    Reload,
    /// Print the effective configuration of a config directory, with the file or variable
    /// that set each value.
    Config {
        /// Configuration directory.
        #[arg(long, env = "CAXTON_CONFIG_DIR", default_value = crate::config::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
    },
    /// Check a package offline with the daemon's rules; exit 1 naming the reason if it fails.
    Verify {
        /// Require a minisign signature (FILE.minisig) by this public key; repeatable.
        #[arg(long = "key", value_name = "PUB")]
        keys: Vec<PathBuf>,
        /// Package files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show memory: model memory in use, the process and its cgroup, loaded models.
    Status {
        /// Print the daemon's JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Load a model into memory now (admin).
    Load {
        /// Model id.
        id: String,
    },
    /// Unload a model from memory now; its package stays (admin).
    Unload {
        /// Model id.
        id: String,
    },
    /// List every model and package the daemon knows, with state and reason for rejections.
    Models {
        /// Print the daemon's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// One request without a body whose answer must be a 2xx JSON document.
fn call(socket: &std::path::Path, method: Method, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, bytes) = client::blocking_request(socket, method, path, None)?;
    if !status.is_success() {
        bail!("{}: {}", status, client::error_message(&bytes));
    }
    serde_json::from_slice(&bytes).context("caxtond sent invalid JSON")
}

/// A plain-text table of `GET /api/models`.
fn models_table(v: &serde_json::Value) -> String {
    let rows: Vec<[String; 7]> = v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let text = |k: &str| match &m[k] {
                        serde_json::Value::Null => "-".to_string(),
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let memory = m["memory_bytes"]
                        .as_u64()
                        .map_or("-".to_string(), |b| format!("{} MiB", b >> 20));
                    // What it runs in when loaded (saying so when that is not what the
                    // config asks), else what it will load in.
                    let precision = match (&m["loaded_precision"], &m["precision"]) {
                        (serde_json::Value::String(l), serde_json::Value::String(c)) if l != c => {
                            format!("{l} ({c} configured)")
                        }
                        (serde_json::Value::String(l), _) => l.clone(),
                        _ => text("precision"),
                    };
                    let detail = if m["state"] == "rejected" {
                        format!("{} ({})", text("file"), text("reason"))
                    } else {
                        text("file")
                    };
                    [
                        text("id"),
                        text("version"),
                        text("state"),
                        text("source"),
                        memory,
                        precision,
                        detail,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let header = [
        "ID",
        "VERSION",
        "STATE",
        "SOURCE",
        "MEMORY",
        "PRECISION",
        "FILE",
    ]
    .map(str::to_string);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (w, cell) in widths.iter().zip(row.iter()) {
            out.push_str(&format!("{cell:w$}  "));
        }
        out.push_str(&row[6]);
        out.push('\n');
    }
    out
}

/// `NAME=TEXT` of `--prompt`.
fn parse_prompt(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=TEXT, e.g. query=\"query: \""))
}

/// Entry point of the `caxton` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("caxton: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Embed { model, texts } => {
            let body = serde_json::json!({"input": texts, "model": model});
            let (status, bytes) = client::blocking_request(
                &cli.socket,
                Method::POST,
                "/v1/embeddings",
                Some(serde_json::to_vec(&body)?),
            )?;
            if !status.is_success() {
                bail!("{}: {}", status, client::error_message(&bytes));
            }
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).context("caxtond sent invalid JSON")?;
            let vectors: Vec<&serde_json::Value> = v["data"]
                .as_array()
                .context("caxtond's answer has no data")?
                .iter()
                .map(|d| &d["embedding"])
                .collect();
            println!("{}", serde_json::to_string(&vectors)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pack {
            model_dir,
            output,
            id,
            version,
            f16,
            level,
            prompts,
            default_prompt,
        } => {
            let opts = PackOptions {
                prompts,
                default_prompt,
                model_dir,
                id,
                version,
                weights: if f16 {
                    WeightStorage::F16
                } else {
                    WeightStorage::AsIs
                },
                level,
            };
            let summary = pack(&opts, &output)
                .with_context(|| format!("cannot pack {}", opts.model_dir.display()))?;
            let m = &summary.manifest;
            println!(
                "{}: {} version {} ({}, {} dimensions, {} pooling), {} bytes, sha256 {}",
                output.display(),
                m.id,
                m.version,
                m.architecture.as_str(),
                m.dimensions,
                if m.pooling == crate::package::Pooling::Mean {
                    "mean"
                } else {
                    "cls"
                },
                summary.package_size,
                summary.package_sha256
            );
            let known = crate::package::known::KNOWN.iter().any(|k| {
                k.id == m.id && k.weights_sha256 == Some(summary.source_weights_sha256.as_str())
            });
            println!(
                "source weights sha256 {}{}",
                summary.source_weights_sha256,
                if known { " (the known release)" } else { "" }
            );
            for w in &summary.warnings {
                eprintln!("caxton pack: warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload => {
            let (status, bytes) =
                client::blocking_request(&cli.socket, Method::POST, "/api/reload", None)?;
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
        Command::Config { config_dir } => {
            let all = crate::config::explain(&config_dir)
                .with_context(|| format!("invalid configuration in {}", config_dir.display()))?;
            let width = all
                .iter()
                .map(|e| e.key.len() + e.value.len() + 3)
                .max()
                .unwrap_or(0);
            for e in all {
                let line = format!("{} = {}", e.key, e.value);
                println!("{line:width$}  # {}", e.source);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let v = call(&cli.socket, Method::GET, "/api/memory/status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mib = |v: &serde_json::Value| {
                v.as_u64()
                    .map_or("-".to_string(), |b| format!("{} MiB", b >> 20))
            };
            println!(
                "model memory: {} of a {} budget ({})",
                mib(&v["model_memory_bytes"]),
                mib(&v["budget_bytes"]),
                v["budget_from"].as_str().unwrap_or("?")
            );
            if let Some(l) = v["limit"].as_object() {
                println!(
                    "limit:        {}; working set {}, room for loads {}",
                    l["from"].as_str().unwrap_or("?"),
                    mib(&l["working_set_bytes"]),
                    l["room_bytes"]
                        .as_i64()
                        .map_or("-".into(), |r| format!("{} MiB", r.max(0) >> 20))
                );
            }
            println!(
                "loads:        {} since start, {} in the last minute; {} request(s) waiting for loads, {} refused by the queue",
                v["loads"]["total"].as_u64().unwrap_or(0),
                v["loads"]["last_minute"].as_u64().unwrap_or(0),
                v["load_queue"]["waiting"].as_u64().unwrap_or(0),
                v["load_queue"]["refused"].as_u64().unwrap_or(0)
            );
            let p = &v["pressure"];
            println!(
                "pressure:     {} from {} ({}){}; {} model(s) shed since start",
                p["reading"]["level"].as_str().unwrap_or("not read yet"),
                p["source"].as_str().unwrap_or("?"),
                p["detail"].as_str().unwrap_or("?"),
                match (p["episode"].as_bool(), p["ceiling_bytes"].as_u64()) {
                    (Some(true), Some(c)) =>
                        format!(", episode going on: model memory held at {} MiB", c >> 20),
                    (Some(true), None) => ", episode going on: no background loads".into(),
                    _ => String::new(),
                },
                v["models_shed"].as_u64().unwrap_or(0)
            );
            if let Some(why) = p["reading"]["why"].as_str() {
                println!("              {why}");
            }
            println!(
                "process:      rss {}, peak {}",
                mib(&v["process"]["rss_bytes"]),
                mib(&v["process"]["peak_rss_bytes"])
            );
            match v["cgroup"].as_object() {
                Some(c) => println!(
                    "cgroup {}:    usage {}, max {}, high {} ({})",
                    c["version"].as_str().unwrap_or("?"),
                    mib(&c["usage_bytes"]),
                    c["max_bytes"]
                        .as_u64()
                        .map_or("none".into(), |b| format!("{} MiB", b >> 20)),
                    c["high_bytes"]
                        .as_u64()
                        .map_or("none".into(), |b| format!("{} MiB", b >> 20)),
                    c["path"].as_str().unwrap_or("?")
                ),
                None => println!("cgroup:       not readable"),
            }
            let loaded: Vec<String> = v["loaded"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|m| {
                            format!(
                                "{} ({})",
                                m["id"].as_str().unwrap_or("?"),
                                mib(&m["memory_bytes"])
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "loaded:       {}",
                if loaded.is_empty() {
                    "none".to_string()
                } else {
                    loaded.join(", ")
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Load { id } => {
            let v = call(
                &cli.socket,
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
        Command::Unload { id } => {
            let v = call(
                &cli.socket,
                Method::DELETE,
                &format!("/api/memory/models/{id}"),
            )?;
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
        Command::Models { json } => {
            let v = call(&cli.socket, Method::GET, "/api/models")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", models_table(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { keys, files } => {
            let policy = if keys.is_empty() {
                crate::package::signature::SignaturePolicy::none()
            } else {
                crate::package::signature::SignaturePolicy {
                    required: Some(crate::package::signature::TrustedKeys::from_files(&keys)),
                }
            };
            if let Some(Err(reason)) = &policy.required {
                bail!("{reason}");
            }
            let mut ok = true;
            for file in files {
                match verify_file(&file, &mut DiscardSink)
                    .and_then(|v| policy.check(&file).map(|()| v))
                {
                    Ok(v) => println!(
                        "{}: ok: {} version {}, {} files, sha256 {}",
                        file.display(),
                        v.manifest.id,
                        v.manifest.version,
                        v.manifest.files.len(),
                        v.package_sha256
                    ),
                    Err(e) => {
                        ok = false;
                        eprintln!("{}: rejected ({}): {e}", file.display(), e.kind());
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::models_table;

    #[test]
    fn the_models_table_says_what_each_model_runs_in() {
        let v = serde_json::json!({"data": [
            {"id": "a", "version": "1", "state": "loaded", "source": "bundled", "file": "a.tar.zst",
             "memory_bytes": 104857600u64, "precision": "bf16", "loaded_precision": "bf16"},
            {"id": "b", "version": "1", "state": "loaded", "source": "bundled", "file": "b.tar.zst",
             "memory_bytes": 1048576u64, "precision": "bf16", "loaded_precision": "f32"},
            {"id": "c", "version": "2", "state": "available", "source": "side-loaded",
             "file": "c.tar.zst", "precision": "f32", "loaded_precision": null},
            {"id": null, "state": "rejected", "source": "side-loaded", "file": "d.tar.zst",
             "reason": "sha256 mismatch"},
        ]});
        let table = models_table(&v);
        let lines: Vec<Vec<&str>> = table
            .lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            lines[0],
            [
                "ID",
                "VERSION",
                "STATE",
                "SOURCE",
                "MEMORY",
                "PRECISION",
                "FILE"
            ]
        );
        assert_eq!(lines[1][5], "bf16");
        assert_eq!(lines[2][5], "f32 (bf16 configured)");
        assert_eq!(lines[3][4..], ["-", "f32", "c.tar.zst"]);
        assert_eq!(lines[4][5..], ["-", "d.tar.zst (sha256 mismatch)"]);
    }
}
