//! ModernBERT (gte-modernbert-base, modernbert-embed-base, granite-embedding r2) on the one
//! encoder: norms before each block and after the last layer (LayerNorm, without bias by
//! default), no norm before layer 0's attention, rotary positions with one base for global
//! layers and another for the layers that attend within a window, GeGLU feed-forward blocks,
//! no biases by default and no token types.

use serde::Deserialize;

use super::bert_family::{activation, parse};
use super::tensors::{
    Tensors, add_zero_token_types, rename, rename_layers, strip_prefix, zeros_unless_present,
};
use crate::engine::blueprint::{Blueprint, Mlp, NormKind, Placement, Positions, Rotary, Window};

/// `config.json` as transformers 4.48+ writes it (`global_rope_theta`, `local_rope_theta`,
/// `global_attn_every_n_layers`) and as transformers 5 does (`layer_types`,
/// `rope_parameters`).
#[derive(Deserialize)]
struct ModernBertConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "gelu")]
    hidden_activation: String,
    #[serde(default = "max_positions")]
    max_position_embeddings: usize,
    #[serde(default = "eps")]
    norm_eps: f64,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default = "local_attention")]
    local_attention: usize,
    #[serde(default = "every")]
    global_attn_every_n_layers: usize,
    #[serde(default = "global_theta")]
    global_rope_theta: f64,
    #[serde(default = "local_theta")]
    local_rope_theta: Option<f64>,
    layer_types: Option<Vec<String>>,
    rope_parameters: Option<RopeParameters>,
}

/// transformers 5's rotary settings per layer type (ModernBERT's and Gemma 3's).
#[derive(Deserialize)]
pub(super) struct RopeParameters {
    pub full_attention: Option<Rope>,
    pub sliding_attention: Option<Rope>,
}

#[derive(Deserialize)]
pub(super) struct Rope {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

fn gelu() -> String {
    "gelu".into()
}
fn max_positions() -> usize {
    8192
}
fn eps() -> f64 {
    1e-5
}
fn local_attention() -> usize {
    128
}
fn every() -> usize {
    3
}
fn global_theta() -> f64 {
    160_000.0
}
fn local_theta() -> Option<f64> {
    Some(10_000.0)
}

/// The theta of `rope`, refusing scaled rotary types (ModernBERT's and EmbeddingGemma's
/// checkpoints use none).
pub(super) fn theta(rope: Option<&Rope>, fallback: f64, which: &str) -> Result<f64, String> {
    match rope {
        None => Ok(fallback),
        Some(r) => match r.rope_type.as_deref() {
            None | Some("default") => Ok(r.rope_theta.unwrap_or(fallback)),
            Some(other) => Err(format!(
                "config.json: rope_parameters.{which}.rope_type {other:?} is not supported (default)"
            )),
        },
    }
}

pub(super) fn blueprint(config_json: &[u8]) -> Result<Blueprint, String> {
    let c: ModernBertConfig = parse(config_json)?;
    let local: Vec<bool> = match &c.layer_types {
        Some(types) => types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(format!(
                    "config.json: layer type {other:?} is not supported (full_attention, sliding_attention)"
                )),
            })
            .collect::<Result<_, _>>()?,
        None => (0..c.num_hidden_layers)
            .map(|l| !l.is_multiple_of(c.global_attn_every_n_layers.max(1)))
            .collect(),
    };
    let rope = c.rope_parameters.as_ref();
    let global = theta(
        rope.and_then(|r| r.full_attention.as_ref()),
        c.global_rope_theta,
        "full_attention",
    )?;
    let local_base = theta(
        rope.and_then(|r| r.sliding_attention.as_ref()),
        c.local_rope_theta.unwrap_or(global),
        "sliding_attention",
    )?;
    let h = c.hidden_size;
    Ok(Blueprint {
        vocab: c.vocab_size,
        hidden: h,
        heads: c.num_attention_heads,
        kv_heads: c.num_attention_heads,
        head_dim: h / c.num_attention_heads.max(1),
        causal: false,
        qk_norm: false,
        norm_kind: NormKind::Layer,
        embedding_norm: true,
        layers: c.num_hidden_layers,
        intermediate: c.intermediate_size,
        eps: c.norm_eps as f32,
        type_vocab: 1,
        positions: Positions::Rotary(Rotary {
            local_base: Some(local_base),
            ..Rotary::plain(
                global,
                h / c.num_attention_heads.max(1),
                c.max_position_embeddings,
            )
        }),
        norm: Placement::Pre {
            first_attention_norm: false,
        },
        mlp: Mlp {
            activation: activation(&c.hidden_activation)?,
            gated: true,
        },
        window: Some(Window {
            reach: c.local_attention / 2,
            local,
        }),
    })
}

/// Its tensors under the encoder's names, with zero biases where the family has none.
pub(super) fn tensors(config_json: &[u8], tensors: Tensors) -> Result<Tensors, String> {
    let c: ModernBertConfig = parse(config_json)?;
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let renames = [
        ("attn_norm.", "attention.output.LayerNorm."),
        ("attn.Wqkv.", "attention.self.qkv."),
        ("attn.Wo.", "attention.output.dense."),
        ("mlp_norm.", "output.LayerNorm."),
        ("mlp.Wi.", "intermediate.dense."),
        ("mlp.Wo.", "output.dense."),
    ];
    let mut out = rename_layers(strip_prefix(tensors, "model.")?, "layers.", &renames)?;
    rename(
        &mut out,
        &[
            ("embeddings.tok_embeddings.", "embeddings.word_embeddings."),
            ("embeddings.norm.", "embeddings.LayerNorm."),
        ],
    );
    add_zero_token_types(&mut out, h)?;
    if !c.norm_bias {
        zeros_unless_present(&mut out, "embeddings.LayerNorm.bias", h)?;
        zeros_unless_present(&mut out, "final_norm.bias", h)?;
    }
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        if !c.norm_bias {
            if l > 0 {
                zeros_unless_present(&mut out, &format!("{p}.attention.output.LayerNorm.bias"), h)?;
            }
            zeros_unless_present(&mut out, &format!("{p}.output.LayerNorm.bias"), h)?;
        }
        if !c.attention_bias {
            zeros_unless_present(&mut out, &format!("{p}.attention.self.qkv.bias"), 3 * h)?;
            zeros_unless_present(&mut out, &format!("{p}.attention.output.dense.bias"), h)?;
        }
        if !c.mlp_bias {
            zeros_unless_present(&mut out, &format!("{p}.intermediate.dense.bias"), 2 * i)?;
            zeros_unless_present(&mut out, &format!("{p}.output.dense.bias"), h)?;
        }
    }
    Ok(out)
}
