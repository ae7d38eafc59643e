//! Checkpoints of BERT's close relatives, mapped onto the one BERT encoder: DistilBERT (BERT
//! without token types, other tensor names) and XLM-RoBERTa (BERT's tensor names, positions
//! counted from `pad_token_id + 1`). Mapping weights, not copying model code, keeps one
//! forward pass to make fast and exact (erf GELU, masked attention) for all of them.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct, PositionEmbeddingType};
use serde::Deserialize;

use crate::package::Architecture;

/// A checkpoint's tensors by name.
pub(super) type Tensors = HashMap<String, Tensor>;

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

/// The tensors with `prefix` taken off the names that have it.
pub(super) fn strip_prefix(tensors: Tensors, prefix: &str) -> Tensors {
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
    let mut out = rename_layers(
        strip_prefix(tensors, "distilbert."),
        "transformer.layer.",
        &renames,
    )?;
    add_zero_token_types(&mut out, c.dim)?;
    Ok((config, out))
}

/// Renames the tensors of layer `i` under `layers` (e.g. `transformer.layer.`) to BERT's
/// `encoder.layer.i.`, each name's tail through the first matching `(from, to)` prefix.
pub(super) fn rename_layers(
    tensors: Tensors,
    layers: &str,
    renames: &[(&str, &str)],
) -> Result<Tensors, String> {
    let mut out = Tensors::new();
    for (name, t) in tensors {
        let name = match name.strip_prefix(layers) {
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
    Ok(out)
}

/// For checkpoints without token types: a single zero type embedding adds nothing.
pub(super) fn add_zero_token_types(tensors: &mut Tensors, hidden: usize) -> Result<(), String> {
    let zeros = Tensor::zeros((1, hidden), DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
    tensors.insert("embeddings.token_type_embeddings.weight".into(), zeros);
    Ok(())
}

/// RoBERTa-style checkpoints number real tokens' positions from `pad_token_id + 1`; dropping
/// the position rows before that makes the encoder's positions 0, 1, ... land on the same
/// embeddings. (Padding's own position row only ever served padding, which never reaches the
/// encoder.) Returns the positions left.
pub(super) fn drop_leading_positions(
    tensors: &mut Tensors,
    max_position_embeddings: usize,
    pad_token_id: usize,
) -> Result<usize, String> {
    let offset = pad_token_id + 1;
    if max_position_embeddings <= offset {
        return Err(format!(
            "config.json: max_position_embeddings {max_position_embeddings} leaves no positions after pad_token_id {pad_token_id}"
        ));
    }
    let key = "embeddings.position_embeddings.weight";
    let positions = tensors
        .remove(key)
        .ok_or_else(|| format!("model.safetensors: no {key}"))?;
    let left = max_position_embeddings - offset;
    let kept = positions
        .narrow(0, offset, left)
        .and_then(|t| t.contiguous())
        .map_err(|e| format!("model.safetensors: {key}: {e}"))?;
    tensors.insert(key.into(), kept);
    Ok(left)
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
    let mut out = strip_prefix(strip_prefix(tensors, "roberta."), "xlm_roberta.");
    let positions = drop_leading_positions(&mut out, c.max_position_embeddings, c.pad_token_id)?;
    let config = Config {
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        num_hidden_layers: c.num_hidden_layers,
        num_attention_heads: c.num_attention_heads,
        intermediate_size: c.intermediate_size,
        hidden_act: activation(&c.hidden_act)?,
        hidden_dropout_prob: 0.0,
        max_position_embeddings: positions,
        type_vocab_size: c.type_vocab_size,
        initializer_range: 0.02,
        layer_norm_eps: c.layer_norm_eps,
        pad_token_id: c.pad_token_id,
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: false,
        classifier_dropout: None,
        model_type: Some("xlm-roberta".into()),
    };
    Ok((config, out))
}
