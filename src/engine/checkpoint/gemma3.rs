//! Gemma 3 as EmbeddingGemma runs it (`model_type: gemma3_text`, `Gemma3TextModel`) on the one
//! encoder: norms before and after each block ([`Placement::Sandwich`]) and after the last
//! layer, all RMSNorms whose weight is applied as `1 + weight` (added here, once), the word
//! embeddings scaled by `√hidden` (folded into the table here: the same f32 product), grouped-
//! query heads with query and key norms, layers that attend within a window between layers
//! that attend to the whole text, each kind with its own rotary base, a GeGLU (tanh) block, no
//! biases; bidirectional (`use_bidirectional_attention: true`, EmbeddingGemma) or causal.

use candle_core::DType;
use serde::Deserialize;

use super::bert_family::parse;
use super::modernbert::{RopeParameters, theta};
use super::tensors::{Tensors, from_decoder};
use crate::engine::blueprint::{Blueprint, Mlp, NormKind, Placement, Positions, Rotary, Window};
use crate::engine::kernels::Activation;

#[derive(Deserialize)]
struct Gemma3Config {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    #[serde(default = "head_dim")]
    head_dim: usize,
    #[serde(default = "gelu_tanh")]
    hidden_activation: String,
    #[serde(default = "max_positions")]
    max_position_embeddings: usize,
    #[serde(default = "eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_local_base_freq: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    /// The scores are `q·k · query_pre_attn_scalar^-½` (transformers' default 256, whatever
    /// the head width); the encoder scales by `head_dim^-½`, so [`tensors`] folds the
    /// difference into the query norm.
    #[serde(default = "query_pre_attn_scalar")]
    query_pre_attn_scalar: f64,
    #[serde(default = "sliding_window")]
    sliding_window: usize,
    sliding_window_pattern: Option<usize>,
    /// Where transformers 4.5x keeps the pattern (EmbeddingGemma's config.json).
    #[serde(rename = "_sliding_window_pattern")]
    private_sliding_window_pattern: Option<usize>,
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    use_bidirectional_attention: bool,
    attn_logit_softcapping: Option<f64>,
}

fn head_dim() -> usize {
    256
}
fn gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}
fn query_pre_attn_scalar() -> f64 {
    256.0
}
fn max_positions() -> usize {
    2048
}
fn eps() -> f64 {
    1e-6
}
fn sliding_window() -> usize {
    512
}

impl Gemma3Config {
    /// Tokens a windowed layer's query sees on each side. Causal, transformers keeps the keys
    /// after `q - sliding_window`: a reach of one less. Bidirectional, its config first turns
    /// the window into `sliding_window / 2 + 1` ("due to fa we set exclusive bounds") and
    /// keeps keys closer than that on either side: a reach of half the window (256 for
    /// EmbeddingGemma's 512).
    fn reach(&self) -> usize {
        match self.use_bidirectional_attention {
            true => self.sliding_window / 2,
            false => self.sliding_window - 1,
        }
    }

    /// For each layer, whether it attends within the window: `layer_types`, or else every
    /// layer but each `sliding_window_pattern`-th (Gemma 3's older configs).
    fn local_layers(&self) -> Result<Vec<bool>, String> {
        match &self.layer_types {
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(format!(
                        "config.json: layer type {other:?} is not supported (full_attention, sliding_attention)"
                    )),
                })
                .collect(),
            None => {
                let every = self
                    .sliding_window_pattern
                    .or(self.private_sliding_window_pattern)
                    .unwrap_or(6)
                    .max(1);
                Ok((0..self.num_hidden_layers)
                    .map(|l| !(l + 1).is_multiple_of(every))
                    .collect())
            }
        }
    }
}

pub(super) fn blueprint(config_json: &[u8]) -> Result<Blueprint, String> {
    blueprint_of(&parse(config_json)?)
}

fn blueprint_of(c: &Gemma3Config) -> Result<Blueprint, String> {
    if c.rope_scaling.as_ref().is_some_and(|s| !s.is_null()) {
        return Err("config.json: rope_scaling is not supported".into());
    }
    if let Some(cap) = c.attn_logit_softcapping {
        return Err(format!(
            "config.json: attn_logit_softcapping {cap} is not supported (null)"
        ));
    }
    if !(c.query_pre_attn_scalar.is_finite() && c.query_pre_attn_scalar > 0.0) {
        return Err(format!(
            "config.json: query_pre_attn_scalar {} must be a positive number",
            c.query_pre_attn_scalar
        ));
    }
    let activation = match c.hidden_activation.as_str() {
        "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluTanh,
        "gelu" => Activation::GeluErf,
        other => {
            return Err(format!(
                "config.json: hidden_activation {other:?} is not supported (gelu_pytorch_tanh, gelu)"
            ));
        }
    };
    let rope = c.rope_parameters.as_ref();
    let global = theta(
        rope.and_then(|r| r.full_attention.as_ref()),
        c.rope_theta.unwrap_or(1_000_000.0),
        "full_attention",
    )?;
    let local_base = theta(
        rope.and_then(|r| r.sliding_attention.as_ref()),
        c.rope_local_base_freq.unwrap_or(10_000.0),
        "sliding_attention",
    )?;
    if c.sliding_window == 0 {
        return Err("config.json: sliding_window must not be 0".into());
    }
    Ok(Blueprint {
        vocab: c.vocab_size,
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim: c.head_dim,
        causal: !c.use_bidirectional_attention,
        qk_norm: true,
        norm_kind: NormKind::Rms,
        embedding_norm: false,
        layers: c.num_hidden_layers,
        intermediate: c.intermediate_size,
        eps: c.rms_norm_eps as f32,
        type_vocab: 1,
        positions: Positions::Rotary(Rotary {
            local_base: Some(local_base),
            ..Rotary::plain(global, c.head_dim, c.max_position_embeddings)
        }),
        norm: Placement::Sandwich,
        mlp: Mlp {
            activation,
            gated: true,
        },
        window: Some(Window {
            reach: c.reach(),
            local: c.local_layers()?,
        }),
    })
}

/// Its tensors under the encoder's names: `1 + weight` for every norm (the query norm's also
/// times `√(head_dim / query_pre_attn_scalar)`), the word table times `√hidden`, zero biases.
pub(super) fn tensors(config_json: &[u8], tensors: Tensors) -> Result<Tensors, String> {
    let c: Gemma3Config = parse(config_json)?;
    let b = blueprint_of(&c)?;
    let norms = [
        ("input_layernorm.", "attention.output.LayerNorm."),
        ("post_attention_layernorm.", "attention.post_norm."),
        ("pre_feedforward_layernorm.", "output.LayerNorm."),
        ("post_feedforward_layernorm.", "output.post_norm."),
    ];
    let mut out = from_decoder(tensors, &norms, &b)?;
    // Gemma's RMSNorm multiplies by `1 + weight`, in f32: the same sum, once, here.
    let norms: Vec<String> = out
        .keys()
        .filter(|n| {
            [
                "LayerNorm.weight",
                "post_norm.weight",
                "q_norm.weight",
                "k_norm.weight",
            ]
            .iter()
            .any(|s| n.ends_with(s))
                || *n == "final_norm.weight"
        })
        .cloned()
        .collect();
    // The query norm's output is the query, which rotary turns and the encoder's attention
    // scales by head_dim^-½: scaled here by √(head_dim / query_pre_attn_scalar), the scores
    // come out at transformers' query_pre_attn_scalar^-½ (Gemma 2 and 3 at 27B: 144 and 168
    // over heads of 128). EmbeddingGemma's two are equal: a factor of 1.
    let query = (c.head_dim as f64 / c.query_pre_attn_scalar).sqrt();
    for name in &norms {
        let mul = if name.ends_with("q_norm.weight") {
            query
        } else {
            1.0
        };
        affine_in_f32(&mut out, name, mul, mul)?;
    }
    // transformers multiplies each looked-up row by √hidden rounded to f32; so does this.
    // Stored int8 rows get it in their scales.
    let scale = f64::from((b.hidden as f32).sqrt());
    let words = "embeddings.word_embeddings.weight";
    if let Some(t) = out.remove(words) {
        let t = crate::engine::stored::scale(t, scale)
            .map_err(|e| format!("model.safetensors: {words}: {e}"))?;
        out.insert(words.to_string(), t);
    }
    Ok(out)
}

/// Tensor `name`, when there, widened to f32 and replaced by `mul · t + add` (in f32).
fn affine_in_f32(out: &mut Tensors, name: &str, mul: f64, add: f64) -> Result<(), String> {
    if let Some(t) = out.remove(name) {
        let t = t
            .to_dtype(DType::F32)
            .and_then(|t| t.affine(mul, add))
            .map_err(|e| format!("model.safetensors: {name}: {e}"))?;
        out.insert(name.to_string(), t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EmbeddingGemma-300m's sizes, as its config.json has them.
    fn config(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"vocab_size": 262144, "hidden_size": 768, "intermediate_size": 1152,
                "num_hidden_layers": 24, "num_attention_heads": 3, "num_key_value_heads": 1,
                "head_dim": 256, "max_position_embeddings": 2048, "rms_norm_eps": 1e-06,
                "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                "query_pre_attn_scalar": 256, "sliding_window": 512,
                "use_bidirectional_attention": true {extra}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn embeddinggemma_is_bidirectional_with_five_local_layers_in_six() {
        let b = blueprint(&config("")).expect("blueprint");
        b.check().expect("the encoder runs it");
        assert_eq!(
            (b.heads, b.kv_heads, b.head_dim, b.hidden),
            (3, 1, 256, 768)
        );
        assert!(!b.causal && b.qk_norm && !b.embedding_norm);
        assert_eq!(b.norm, Placement::Sandwich);
        let w = b.window.as_ref().expect("window");
        assert_eq!(w.reach, 256);
        assert_eq!(w.local.iter().filter(|&&l| !l).count(), 4);
        assert!(!w.local[5] && w.local[4] && !w.local[23]);
        let Positions::Rotary(r) = &b.positions else {
            panic!("rotary")
        };
        assert_eq!(
            (r.base, r.local_base, r.dims),
            (1_000_000.0, Some(10_000.0), 256)
        );
    }

    #[test]
    fn without_layer_types_every_sixth_layer_is_global() {
        for key in ["sliding_window_pattern", "_sliding_window_pattern"] {
            let b = blueprint(&config(&format!(r#", "{key}": 6"#))).expect("blueprint");
            let local = b.window.expect("window").local;
            let global: Vec<usize> = (0..24).filter(|&l| !local[l]).collect();
            assert_eq!(global, [5, 11, 17, 23], "{key}");
        }
        // Causal Gemma 3 keeps the keys after q - sliding_window.
        let causal = String::from_utf8(config("")).expect("UTF-8").replace(
            "\"use_bidirectional_attention\": true",
            "\"use_bidirectional_attention\": false",
        );
        let b = blueprint(causal.as_bytes()).expect("blueprint");
        assert!(b.causal);
        assert_eq!(b.window.expect("window").reach, 511);
    }

    #[test]
    fn what_the_encoder_cannot_run_is_refused_by_name() {
        let err = |extra: &str| blueprint(&config(extra)).err().unwrap_or_default();
        assert_eq!(
            err(r#", "attn_logit_softcapping": 50.0"#),
            "config.json: attn_logit_softcapping 50 is not supported (null)"
        );
        assert_eq!(
            err(r#", "rope_scaling": {"rope_type": "linear", "factor": 8.0}"#),
            "config.json: rope_scaling is not supported"
        );
        assert_eq!(
            err(r#", "hidden_activation": "silu""#),
            "config.json: hidden_activation \"silu\" is not supported (gelu_pytorch_tanh, gelu)"
        );
        let zero = String::from_utf8(config("")).expect("UTF-8").replace(
            "\"query_pre_attn_scalar\": 256",
            "\"query_pre_attn_scalar\": 0",
        );
        assert_eq!(
            blueprint(zero.as_bytes()).err().unwrap_or_default(),
            "config.json: query_pre_attn_scalar 0 must be a positive number"
        );
    }
}
