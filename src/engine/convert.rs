//! Checkpoints of BERT's close relatives, mapped onto the one BERT encoder: DistilBERT (BERT
//! without token types, other tensor names) and XLM-RoBERTa (BERT's tensor names, positions
//! counted from `pad_token_id + 1`). Mapping weights, not copying model code, keeps one
//! forward pass to make fast and exact (erf GELU, masked attention) for all of them.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct, PositionEmbeddingType};
use serde::Deserialize;

use crate::package::Architecture;

type Tensors = HashMap<String, Tensor>;

/// The BERT configuration and tensors equivalent to a checkpoint of `architecture`.
pub fn to_bert(
    architecture: Architecture,
    config_json: &[u8],
    tensors: Tensors,
) -> Result<(Config, Tensors), String> {
    match architecture {
        Architecture::Bert => {
            let config: Config =
                serde_json::from_slice(config_json).map_err(|e| format!("config.json: {e}"))?;
            Ok((config, strip_prefix(tensors, "bert.")))
        }
        Architecture::DistilBert => distilbert(config_json, tensors),
        Architecture::XlmRoberta => xlm_roberta(config_json, tensors),
        Architecture::Mpnet => super::mpnet::to_bert(config_json, tensors),
    }
}

fn activation(name: &str) -> Result<HiddenAct, String> {
    match name {
        "gelu" => Ok(HiddenAct::Gelu),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_approximate" => Ok(HiddenAct::GeluApproximate),
        "relu" => Ok(HiddenAct::Relu),
        other => Err(format!(
            "config.json: activation {other:?} is not supported (gelu, gelu_new, relu)"
        )),
    }
}

fn strip_prefix(tensors: Tensors, prefix: &str) -> Tensors {
    tensors
        .into_iter()
        .map(|(k, v)| match k.strip_prefix(prefix) {
            Some(rest) => (rest.to_string(), v),
            None => (k, v),
        })
        .collect()
}

#[derive(Deserialize)]
struct DistilBertConfig {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "default_gelu")]
    activation: String,
    max_position_embeddings: usize,
    #[serde(default)]
    sinusoidal_pos_embds: bool,
    #[serde(default)]
    pad_token_id: usize,
}

fn default_gelu() -> String {
    "gelu".into()
}

fn distilbert(config_json: &[u8], tensors: Tensors) -> Result<(Config, Tensors), String> {
    let c: DistilBertConfig =
        serde_json::from_slice(config_json).map_err(|e| format!("config.json: {e}"))?;
    if c.sinusoidal_pos_embds {
        return Err("config.json: sinusoidal_pos_embds is not supported".into());
    }
    let config = Config {
        vocab_size: c.vocab_size,
        hidden_size: c.dim,
        num_hidden_layers: c.n_layers,
        num_attention_heads: c.n_heads,
        intermediate_size: c.hidden_dim,
        hidden_act: activation(&c.activation)?,
        hidden_dropout_prob: 0.0,
        max_position_embeddings: c.max_position_embeddings,
        type_vocab_size: 1,
        initializer_range: 0.02,
        // DistilBERT's LayerNorms use 1e-12, as BERT's.
        layer_norm_eps: 1e-12,
        pad_token_id: c.pad_token_id,
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: false,
        classifier_dropout: None,
        model_type: Some("distilbert".into()),
    };
    let renames: [(&str, &str); 8] = [
        ("attention.q_lin.", "attention.self.query."),
        ("attention.k_lin.", "attention.self.key."),
        ("attention.v_lin.", "attention.self.value."),
        ("attention.out_lin.", "attention.output.dense."),
        ("sa_layer_norm.", "attention.output.LayerNorm."),
        ("ffn.lin1.", "intermediate.dense."),
        ("ffn.lin2.", "output.dense."),
        ("output_layer_norm.", "output.LayerNorm."),
    ];
    let mut out = Tensors::new();
    for (name, t) in strip_prefix(tensors, "distilbert.") {
        let name = match name.strip_prefix("transformer.layer.") {
            Some(rest) => {
                let (layer, tail) = rest
                    .split_once('.')
                    .ok_or_else(|| format!("model.safetensors: unexpected tensor {name}"))?;
                let tail = renames
                    .iter()
                    .find_map(|(from, to)| tail.strip_prefix(from).map(|r| format!("{to}{r}")))
                    .unwrap_or_else(|| tail.to_string());
                format!("encoder.layer.{layer}.{tail}")
            }
            None => name,
        };
        out.insert(name, t);
    }
    // No token types in DistilBERT: a single zero type embedding adds nothing.
    let zeros = Tensor::zeros((1, c.dim), DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
    out.insert("embeddings.token_type_embeddings.weight".into(), zeros);
    Ok((config, out))
}

#[derive(Deserialize)]
struct XlmRobertaConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "one")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "one")]
    pad_token_id: usize,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

fn one() -> usize {
    1
}

fn default_eps() -> f64 {
    1e-5
}

fn xlm_roberta(config_json: &[u8], tensors: Tensors) -> Result<(Config, Tensors), String> {
    let c: XlmRobertaConfig =
        serde_json::from_slice(config_json).map_err(|e| format!("config.json: {e}"))?;
    if c.position_embedding_type
        .as_deref()
        .is_some_and(|p| p != "absolute")
    {
        return Err(format!(
            "config.json: position_embedding_type {:?} is not supported (absolute)",
            c.position_embedding_type
        ));
    }
    // RoBERTa numbers real tokens' positions from pad_token_id + 1; dropping the rows before
    // that makes BERT's positions 0, 1, ... land on the same embeddings. (Padding's own
    // position row only ever served padding, which attention and pooling mask out.)
    let offset = c.pad_token_id + 1;
    if c.max_position_embeddings <= offset {
        return Err(format!(
            "config.json: max_position_embeddings {} leaves no positions after pad_token_id {}",
            c.max_position_embeddings, c.pad_token_id
        ));
    }
    let config = Config {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        intermediate_size: c.intermediate_size,
        hidden_act: activation(&c.hidden_act)?,
        hidden_dropout_prob: 0.0,
        max_position_embeddings: c.max_position_embeddings - offset,
        type_vocab_size: c.type_vocab_size,
        initializer_range: 0.02,
        layer_norm_eps: c.layer_norm_eps,
        pad_token_id: c.pad_token_id,
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: false,
        classifier_dropout: None,
        model_type: Some("xlm-roberta".into()),
    };
    let mut out = strip_prefix(strip_prefix(tensors, "roberta."), "xlm_roberta.");
    let key = "embeddings.position_embeddings.weight";
    let positions = out
        .remove(key)
        .ok_or_else(|| format!("model.safetensors: no {key}"))?;
    let kept = positions
        .narrow(0, offset, c.max_position_embeddings - offset)
        .and_then(|t| t.contiguous())
        .map_err(|e| format!("model.safetensors: {key}: {e}"))?;
    out.insert(key.into(), kept);
    Ok((config, out))
}
