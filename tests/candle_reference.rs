//! The engine against a second implementation in Rust: candle-transformers' BERT, ModernBERT
//! and Qwen3, run on the same weights and token ids, so `cargo test` checks the engine's
//! forward pass without Python (the committed sentence-transformers references check it and the
//! tokenizers against the original). BERT is the bundled MiniLM (real weights), ModernBERT and
//! Qwen3 the small seeded models of tests/fixtures/architectures/st6. Both sides run in f32:
//! they must agree to cosine 0.99999 on every text.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use caxton::engine::Precision;
use serde_json::{Value, json};

/// What two f32 implementations of one model must agree to.
const AGREE: f64 = 0.99999;

/// The engine's f32 vectors of `texts` from `package`, and the token ids it ran them on.
fn engine(package: &Path, state: &Path, texts: &[String]) -> (Vec<Vec<f32>>, Vec<Vec<u32>>) {
    let model = common::engine::load_package(package, state, Precision::F32);
    let ids = texts
        .iter()
        .map(|t| model.tokenizer.encode(t).expect("tokenize").ids)
        .collect();
    drop(model);
    let run = common::engine::run_package(package, &state.join("run"), texts, Precision::F32);
    (run.singles, ids)
}

/// `file`'s tensors with `prefix` before each name (the folders hold a bare model; candle's
/// loaders expect the task model's names), as a candle VarBuilder in f32.
fn weights(file: &Path, prefix: &str) -> VarBuilder<'static> {
    let tensors = candle_core::safetensors::load(file, &Device::Cpu).expect("safetensors");
    let renamed = tensors
        .into_iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t))
        .collect();
    VarBuilder::from_tensors(renamed, DType::F32, &Device::Cpu)
}

fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids")
}

/// `[1, tokens, width]` hidden states → the pooled, L2-normalised vector.
fn pooled(hidden: &Tensor, pooling: &str) -> Vec<f32> {
    let rows: Vec<Vec<f32>> = hidden
        .squeeze(0)
        .and_then(|h| h.to_dtype(DType::F32))
        .and_then(|h| h.to_vec2())
        .expect("hidden states");
    let v: Vec<f32> = match pooling {
        "cls" => rows[0].clone(),
        "last" => rows[rows.len() - 1].clone(),
        _ => (0..rows[0].len())
            .map(|j| rows.iter().map(|r| r[j]).sum::<f32>() / rows.len() as f32)
            .collect(),
    };
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

fn agree(arch: &str, ours: &[Vec<f32>], theirs: &[Vec<f32>]) {
    let worst = common::engine::min_cosine(ours, theirs);
    println!("{arch}: min cosine, engine vs candle-transformers: {worst:.9}");
    assert!(
        worst >= AGREE,
        "{arch}: engine vs candle-transformers {worst}"
    );
}

#[test]
fn bert_agrees_with_candle_transformers_on_the_bundled_minilm() {
    use candle_transformers::models::bert::{BertModel, Config};
    let tmp = tempfile::tempdir().expect("tempdir");
    let package = common::bundled_dir().join("all-MiniLM-L6-v2.tar.zst");
    let texts: Vec<String> = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/texts.json"),
        )
        .expect("texts"),
    )
    .expect("JSON");
    let (ours, ids) = engine(&package, tmp.path(), &texts);

    // The same verified files the engine read.
    let store = caxton::package::Store::open(&tmp.path().join("candle")).expect("store");
    let stored = store
        .install(
            &package,
            &caxton::package::signature::SignaturePolicy::none(),
        )
        .expect("verified");
    let config: Config =
        serde_json::from_slice(&stored.read_verified("config.json").expect("config"))
            .expect("BERT config");
    let file = tmp.path().join("model.safetensors");
    std::fs::write(
        &file,
        stored.read_verified("model.safetensors").expect("weights"),
    )
    .expect("write");
    let model = BertModel::load(weights(&file, ""), &config).expect("candle's BERT");
    let theirs: Vec<Vec<f32>> = ids
        .iter()
        .map(|ids| {
            let input = ids_tensor(ids);
            let types = input.zeros_like().expect("types");
            let mask = input.ones_like().expect("mask");
            pooled(
                &model.forward(&input, &types, Some(&mask)).expect("forward"),
                "mean",
            )
        })
        .collect();
    agree("bert (all-MiniLM-L6-v2)", &ours, &theirs);
}

/// An st6 fixture packed as the engine serves it; its config.json, its weights' file, its
/// texts, and the engine's vectors and token ids.
struct Fixture {
    config: Value,
    weights: std::path::PathBuf,
    ours: Vec<Vec<f32>>,
    ids: Vec<Vec<u32>>,
    _dir: tempfile::TempDir,
}

fn fixture(arch: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join(arch);
    let r = common::fixtures::family_folder(&format!("st6/{arch}"), &folder);
    let package = dir.path().join(format!("{arch}.tar.zst"));
    common::fixtures::pack_folder(&folder, arch, &package);
    let (ours, ids) = engine(&package, &dir.path().join("state"), &r.texts);
    let config = serde_json::from_slice(&std::fs::read(folder.join("config.json")).expect("read"))
        .expect("config");
    Fixture {
        config,
        weights: folder.join("model.safetensors"),
        ours,
        ids,
        _dir: dir,
    }
}

#[test]
fn modernbert_agrees_with_candle_transformers() {
    use candle_transformers::models::modernbert::{Config, ModernBert};
    let f = fixture("modernbert");
    let c = &f.config;
    let config: Config = serde_json::from_value(json!({
        "vocab_size": c["vocab_size"], "hidden_size": c["hidden_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "intermediate_size": c["intermediate_size"],
        "max_position_embeddings": c["max_position_embeddings"],
        "layer_norm_eps": c["norm_eps"], "pad_token_id": c["pad_token_id"],
        "global_attn_every_n_layers": c["global_attn_every_n_layers"],
        "local_attention": c["local_attention"],
        // transformers 5 writes the rotary bases per layer type.
        "global_rope_theta": c["rope_parameters"]["full_attention"]["rope_theta"],
        "local_rope_theta": c["rope_parameters"]["sliding_attention"]["rope_theta"],
    }))
    .expect("candle's ModernBERT config");
    let model =
        ModernBert::load(weights(&f.weights, "model."), &config).expect("candle's ModernBERT");
    let theirs: Vec<Vec<f32>> = f
        .ids
        .iter()
        .map(|ids| {
            let input = ids_tensor(ids);
            let mask = input.ones_like().expect("mask");
            pooled(&model.forward(&input, &mask).expect("forward"), "cls")
        })
        .collect();
    agree("modernbert", &f.ours, &theirs);
}

#[test]
fn qwen3_agrees_with_candle_transformers() {
    use candle_transformers::models::qwen3::{Config, Model};
    let f = fixture("qwen3");
    let c = &f.config;
    let config: Config = serde_json::from_value(json!({
        "vocab_size": c["vocab_size"], "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"], "head_dim": c["head_dim"],
        "attention_bias": c["attention_bias"], "num_key_value_heads": c["num_key_value_heads"],
        "max_position_embeddings": c["max_position_embeddings"], "sliding_window": null,
        "max_window_layers": c["num_hidden_layers"],
        "tie_word_embeddings": c["tie_word_embeddings"],
        "rope_theta": c["rope_parameters"]["rope_theta"], "rms_norm_eps": c["rms_norm_eps"],
        "use_sliding_window": false, "hidden_act": c["hidden_act"],
    }))
    .expect("candle's Qwen3 config");
    let vb = weights(&f.weights, "model.");
    let theirs: Vec<Vec<f32>> = f
        .ids
        .iter()
        .map(|ids| {
            // A fresh model per text: candle's keeps a key-value cache between calls.
            let mut model = Model::new(&config, vb.clone()).expect("candle's Qwen3");
            pooled(
                &model.forward(&ids_tensor(ids), 0).expect("forward"),
                "last",
            )
        })
        .collect();
    agree("qwen3", &f.ours, &theirs);
}
