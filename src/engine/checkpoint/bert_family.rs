//! DistilBERT (BERT without token types, other tensor names) and XLM-RoBERTa (BERT's tensor
//! names, positions counted from `pad_token_id + 1`) as BERT.

use serde::Deserialize;

use super::roberta::Shape;
use super::tensors::{
    Tensors, add_zero_token_types, drop_leading_positions, rename_layers, strip_prefix,
};
use crate::engine::blueprint::{Blueprint, Mlp, NormKind, Placement, Positions};
use crate::engine::kernels::Activation;

/// The activation a BERT-family `config.json` names.
pub(super) fn activation(name: &str) -> Result<Activation, String> {
    match name {
        "gelu" => Ok(Activation::GeluErf),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_approximate" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        other => Err(format!(
            "config.json: activation {other:?} is not supported (gelu, gelu_new, relu)"
        )),
    }
}

/// BERT's own `config.json`.
#[derive(Deserialize)]
struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_gelu")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "bert_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

fn two() -> usize {
    2
}

fn bert_eps() -> f64 {
    1e-12
}

pub(super) fn bert(config_json: &[u8]) -> Result<Blueprint, String> {
    let c: BertConfig = parse(config_json)?;
    absolute_only(c.position_embedding_type.as_deref())?;
    Ok(Blueprint {
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        kv_heads: c.num_attention_heads,
        head_dim: c.hidden_size / c.num_attention_heads.max(1),
        causal: false,
        qk_norm: false,
        norm_kind: NormKind::Layer,
        embedding_norm: true,
        layers: c.num_hidden_layers,
        intermediate: c.intermediate_size,
        eps: c.layer_norm_eps as f32,
        type_vocab: c.type_vocab_size,
        positions: Positions::Learned {
            max: c.max_position_embeddings,
            relative_bias: false,
        },
        norm: Placement::Post,
        mlp: Mlp {
            activation: activation(&c.hidden_act)?,
            gated: false,
        },
        window: None,
    })
}

pub(super) fn bert_tensors(tensors: Tensors) -> Result<Tensors, String> {
    strip_prefix(tensors, "bert.")
}

/// A `config.json` as the family's struct, its errors naming the file.
pub(super) fn parse<T: serde::de::DeserializeOwned>(config_json: &[u8]) -> Result<T, String> {
    serde_json::from_slice(config_json).map_err(|e| format!("config.json: {e}"))
}

/// Refuses position schemes other than BERT's learned absolute rows.
fn absolute_only(kind: Option<&str>) -> Result<(), String> {
    match kind {
        None | Some("absolute") => Ok(()),
        Some(other) => Err(format!(
            "config.json: position_embedding_type {other:?} is not supported (absolute)"
        )),
    }
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
}

fn default_gelu() -> String {
    "gelu".into()
}

pub(super) fn distilbert(config_json: &[u8]) -> Result<Blueprint, String> {
    let c: DistilBertConfig = parse(config_json)?;
    if c.sinusoidal_pos_embds {
        return Err("config.json: sinusoidal_pos_embds is not supported".into());
    }
    Ok(Blueprint {
        vocab: c.vocab_size,
        hidden: c.dim,
        heads: c.n_heads,
        kv_heads: c.n_heads,
        head_dim: c.dim / c.n_heads.max(1),
        causal: false,
        qk_norm: false,
        norm_kind: NormKind::Layer,
        embedding_norm: true,
        layers: c.n_layers,
        intermediate: c.hidden_dim,
        // DistilBERT's LayerNorms use 1e-12, as BERT's.
        eps: 1e-12,
        type_vocab: 1,
        positions: Positions::Learned {
            max: c.max_position_embeddings,
            relative_bias: false,
        },
        norm: Placement::Post,
        mlp: Mlp {
            activation: activation(&c.activation)?,
            gated: false,
        },
        window: None,
    })
}

pub(super) fn distilbert_tensors(config_json: &[u8], tensors: Tensors) -> Result<Tensors, String> {
    let c: DistilBertConfig = parse(config_json)?;
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
        strip_prefix(tensors, "distilbert.")?,
        "transformer.layer.",
        &renames,
    )?;
    add_zero_token_types(&mut out, c.dim)?;
    Ok(out)
}

#[derive(Deserialize)]
struct XlmRobertaConfig {
    #[serde(flatten)]
    shape: Shape,
    hidden_act: String,
    #[serde(default = "one")]
    type_vocab_size: usize,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

fn one() -> usize {
    1
}

pub(super) fn xlm_roberta(config_json: &[u8]) -> Result<Blueprint, String> {
    let c: XlmRobertaConfig = parse(config_json)?;
    absolute_only(c.position_embedding_type.as_deref())?;
    Ok(c.shape.learned(
        activation(&c.hidden_act)?,
        c.shape.positions()?,
        c.type_vocab_size,
        false,
    ))
}

pub(super) fn xlm_roberta_tensors(config_json: &[u8], tensors: Tensors) -> Result<Tensors, String> {
    let c: XlmRobertaConfig = parse(config_json)?;
    let mut out = strip_prefix(strip_prefix(tensors, "roberta.")?, "xlm_roberta.")?;
    drop_leading_positions(
        &mut out,
        c.shape.max_position_embeddings,
        c.shape.pad_token_id,
    )?;
    Ok(out)
}
