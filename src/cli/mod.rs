//! `caxton`, the command-line tool: talks to the daemon over its socket (`embed`, `models`,
//! `status`, `load`, `unload`, `reload`) and works offline (`pack`, `verify`, `config`) with the
//! same code the daemon uses. This file is the command line itself; each group of commands
//! has a file.

pub mod client;
mod models;
mod offline;
mod remote;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::package::pack::{PackOptions, WeightStorage};

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
        /// Cut texts past the model's length instead of failing (default: the daemon's
        /// limits.auto_truncate).
        #[arg(long)]
        truncate: bool,
        /// Cut the vectors to this many dimensions (a width the model was trained for).
        #[arg(long)]
        dimensions: Option<u32>,
        /// What the texts are, which picks the model's prompt: query or document.
        #[arg(long, value_parser = ["query", "document"])]
        input_type: Option<String>,
        /// Texts to embed.
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Rank documents against a query with a reranker and print the ranking as JSON, best
    /// first: `[{"index", "score", "text"}]`.
    Rerank {
        /// Reranker id (default: models.default_reranker, else the one installed).
        #[arg(long)]
        model: Option<String>,
        /// The task instruction, for a reranker whose template takes one (Qwen3-Reranker).
        #[arg(long)]
        instruction: Option<String>,
        /// The query.
        query: String,
        /// The documents to rank.
        #[arg(required = true)]
        documents: Vec<String>,
    },
    /// Build a package from a sentence-transformers folder (or a CrossEncoder's).
    Pack {
        /// The sentence-transformers folder (config.json, model.safetensors, tokenizer.json,
        /// modules.json, 1_Pooling/config.json, sentence_bert_config.json), or a CrossEncoder
        /// folder (config.json of a *ForSequenceClassification, model.safetensors,
        /// tokenizer.json, tokenizer_config.json).
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
        /// Store the weights as f16 or bf16 (half of f32's size), or their large matrices as
        /// int8 with a scale per row and block of 32 values (about 30% of f32's size;
        /// value projections in bf16, Dense modules as they are); the
        /// engine computes in the configured precision either way.
        #[arg(long, value_enum)]
        weights: Option<StorageArg>,
        /// Same as --weights f16.
        #[arg(long, conflicts_with = "weights")]
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
        /// The widths the model was trained to be cut to (Matryoshka), e.g. 768,512,256,128;
        /// default: those the folder's README.md quotes as matryoshka_dims, else none (any
        /// width may be asked for).
        #[arg(long, value_delimiter = ',')]
        matryoshka: Option<Vec<usize>>,
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
        /// Print one JSON object per file and line: {"file", "ok": true, "package_sha256",
        /// "manifest"} or {"file", "ok": false, "kind", "reason"}.
        #[arg(long)]
        json: bool,
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

/// `NAME=TEXT` of `--prompt`.
/// `caxton pack --weights`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StorageArg {
    /// Floats as f16.
    F16,
    /// Floats as bf16.
    Bf16,
    /// Large matrices as int8 with block scales.
    Int8,
}

/// `--weights` (or the older `--f16`) as the packer's storage.
fn storage(weights: Option<StorageArg>, f16: bool) -> WeightStorage {
    match (weights, f16) {
        (Some(StorageArg::F16), _) | (None, true) => WeightStorage::F16,
        (Some(StorageArg::Bf16), _) => WeightStorage::Bf16,
        (Some(StorageArg::Int8), _) => WeightStorage::Int8,
        (None, false) => WeightStorage::AsIs,
    }
}

fn parse_prompt(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=TEXT, e.g. query=\"query: \""))
}

/// Entry point of the `caxton` binary.
pub fn main() -> ExitCode {
    // Output into a pipe its reader closed (`caxton status | grep -q ...`, `| head`) ends the
    // process quietly, as it does any Unix tool, instead of Rust's panic on EPIPE (which made
    // the pipeline fail under `set -o pipefail` although grep had found its line).
    // SAFETY: first thing in main, before any other thread exists; SIG_DFL installs no handler.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
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
    let socket = &cli.socket;
    match cli.command {
        Command::Embed {
            model,
            truncate,
            dimensions,
            input_type,
            texts,
        } => {
            let mut body = serde_json::json!({"input": texts, "model": model});
            if truncate {
                body["truncate"] = true.into();
            }
            if let Some(d) = dimensions {
                body["dimensions"] = d.into();
            }
            if let Some(t) = input_type {
                body["input_type"] = t.into();
            }
            remote::embed(socket, body)
        }
        Command::Rerank {
            model,
            instruction,
            query,
            documents,
        } => remote::rerank(socket, model, instruction, query, documents),
        Command::Pack {
            model_dir,
            output,
            id,
            version,
            weights,
            f16,
            level,
            prompts,
            default_prompt,
            matryoshka,
        } => {
            let opts = PackOptions {
                prompts,
                default_prompt,
                matryoshka,
                model_dir,
                id,
                version,
                weights: storage(weights, f16),
                level,
            };
            offline::pack_folder(opts, &output)
        }
        Command::Reload => remote::reload(socket),
        Command::Config { config_dir } => offline::config(&config_dir),
        Command::Status { json } => status::status(socket, json),
        Command::Load { id } => remote::load(socket, &id),
        Command::Unload { id } => remote::unload(socket, &id),
        Command::Models { json } => models::models(socket, json),
        Command::Verify { keys, json, files } => offline::verify(&keys, files, json),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn pack_storage(args: &[&str]) -> Result<WeightStorage, String> {
        let argv = ["caxton", "pack", "dir", "-o", "m.tar.zst"]
            .iter()
            .chain(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Pack { weights, f16, .. } => Ok(storage(weights, f16)),
            _ => Err("not pack".into()),
        }
    }

    #[test]
    fn pack_takes_weights_or_the_older_f16_flag_but_not_both() {
        assert_eq!(pack_storage(&[]), Ok(WeightStorage::AsIs));
        assert_eq!(pack_storage(&["--f16"]), Ok(WeightStorage::F16));
        assert_eq!(pack_storage(&["--weights", "f16"]), Ok(WeightStorage::F16));
        assert_eq!(
            pack_storage(&["--weights", "bf16"]),
            Ok(WeightStorage::Bf16)
        );
        assert_eq!(
            pack_storage(&["--weights", "int8"]),
            Ok(WeightStorage::Int8)
        );
        let both = pack_storage(&["--weights", "int8", "--f16"]).unwrap_err();
        assert!(
            both.starts_with(
                "error: the argument '--weights <WEIGHTS>' cannot be used with '--f16'"
            ),
            "{both}"
        );
        let bad = pack_storage(&["--weights", "int4"]).unwrap_err();
        assert!(
            bad.starts_with("error: invalid value 'int4' for '--weights <WEIGHTS>'"),
            "{bad}"
        );
    }
}
