//! Qwen3 (Qwen3-Embedding-0.6B, 4B, 8B) on the one encoder: a decoder, so causal attention,
//! with grouped-query heads of their own width (`head_dim`), each query and key head
//! RMS-normalised before the rotary embedding, RMSNorm before each block and after the last
//! layer, a SwiGLU feed-forward block, no biases unless `attention_bias`, no token types and
//! no norm of the embeddings. `config.json` as transformers writes it (`rope_theta`, or
//! transformers 5's `rope_parameters`); tensors as `Qwen3Model` saves them, or under `model.`
//! as `Qwen3ForCausalLM` does (its language-model head is dropped: an embedder pools hidden
//! states).

use serde::Deserialize;

use super::bert_family::parse;
use super::tensors::{Tensors, from_decoder};
use crate::engine::blueprint::{Blueprint, Mlp, NormKind, Placement, Positions, Rotary};
use crate::engine::kernels::Activation;

#[derive(Deserialize)]
struct Qwen3Config {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "silu")]
    hidden_act: String,
    #[serde(default = "max_positions")]
    max_position_embeddings: usize,
    #[serde(default = "eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    use_sliding_window: bool,
    layer_types: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

fn silu() -> String {
    "silu".into()
}
fn max_positions() -> usize {
    32_768
}
fn eps() -> f64 {
    1e-6
}

impl Qwen3Config {
    fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The rotary base, refusing the scaled kinds (Qwen3-Embedding uses none).
    fn theta(&self) -> Result<f64, String> {
        if self.rope_scaling.as_ref().is_some_and(|s| !s.is_null()) {
            return Err("config.json: rope_scaling is not supported".into());
        }
        super::default_rope_type(
            self.rope_parameters
                .as_ref()
                .and_then(|r| r.rope_type.as_deref()),
        )?;
        Ok(self
            .rope_theta
            .or(self.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(1_000_000.0))
    }
}

pub(super) fn blueprint(config_json: &[u8]) -> Result<Blueprint, String> {
    let c: Qwen3Config = parse(config_json)?;
    if c.use_sliding_window {
        return Err("config.json: use_sliding_window: true is not supported".into());
    }
    if let Some(t) = c
        .layer_types
        .iter()
        .flatten()
        .find(|t| t.as_str() != "full_attention")
    {
        return Err(format!(
            "config.json: layer type {t:?} is not supported (full_attention)"
        ));
    }
    let activation = match c.hidden_act.as_str() {
        "silu" | "swish" => Activation::Silu,
        other => {
            return Err(format!(
                "config.json: hidden_act {other:?} is not supported (silu)"
            ));
        }
    };
    let head_dim = c.head_dim();
    Ok(Blueprint {
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        kv_heads: c.kv_heads(),
        head_dim,
        causal: true,
        qk_norm: true,
        norm_kind: NormKind::Rms,
        embedding_norm: false,
        layers: c.num_hidden_layers,
        intermediate: c.intermediate_size,
        eps: c.rms_norm_eps as f32,
        type_vocab: 1,
        positions: Positions::Rotary(Rotary::plain(
            c.theta()?,
            head_dim,
            c.max_position_embeddings,
        )),
        norm: Placement::Pre {
            first_attention_norm: true,
        },
        mlp: Mlp {
            activation,
            gated: true,
        },
        window: None,
    })
}

/// Its tensors under the encoder's names, with zero biases where the checkpoint has none
/// (`attention_bias: true` checkpoints bring their own).
pub(super) fn tensors(config_json: &[u8], tensors: Tensors) -> Result<Tensors, String> {
    let norms = [
        ("input_layernorm.", "attention.output.LayerNorm."),
        ("post_attention_layernorm.", "output.LayerNorm."),
    ];
    from_decoder(tensors, &norms, &blueprint(config_json)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen3-Embedding-0.6B's sizes, as its config.json has them.
    fn config(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"vocab_size": 151669, "hidden_size": 1024, "intermediate_size": 3072,
                "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                "head_dim": 128, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06
                {extra}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn qwen3_embedding_is_a_causal_grouped_query_decoder() {
        let b = blueprint(&config(r#", "rope_theta": 1000000"#)).expect("blueprint");
        b.check().expect("the encoder runs it");
        assert_eq!(
            (b.heads, b.kv_heads, b.head_dim, b.hidden),
            (16, 8, 128, 1024)
        );
        assert_eq!(b.heads().qkv_width(), 16 * 128 + 2 * 8 * 128);
        assert!(b.causal && b.qk_norm && !b.embedding_norm);
        assert_eq!(b.norm_kind, NormKind::Rms);
        let Positions::Rotary(r) = b.positions else {
            panic!("rotary")
        };
        assert_eq!((r.base, r.dims, r.max), (1_000_000.0, 128, 32768));
        // transformers 5 moves the base under rope_parameters.
        let b = blueprint(&config(
            r#", "rope_parameters": {"rope_theta": 5000, "rope_type": "default"}"#,
        ))
        .expect("blueprint");
        let Positions::Rotary(r) = b.positions else {
            panic!("rotary")
        };
        assert_eq!(r.base, 5000.0);
    }

    #[test]
    fn what_the_encoder_cannot_run_is_refused_by_name() {
        let err = |extra: &str| blueprint(&config(extra)).err().unwrap_or_default();
        assert_eq!(
            err(r#", "use_sliding_window": true"#),
            "config.json: use_sliding_window: true is not supported"
        );
        assert_eq!(
            err(r#", "layer_types": ["full_attention", "sliding_attention"]"#),
            "config.json: layer type \"sliding_attention\" is not supported (full_attention)"
        );
        assert_eq!(
            err(r#", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#),
            "config.json: rope_scaling is not supported"
        );
        assert_eq!(
            err(r#", "hidden_act": "gelu""#),
            "config.json: hidden_act \"gelu\" is not supported (silu)"
        );
    }
}
