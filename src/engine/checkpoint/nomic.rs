//! NomicBERT (nomic-embed-text-v1, v1.5) on the one encoder: BERT's post-norm layer with
//! rotary positions (every value of a head, base `rotary_emb_base`), a SwiGLU feed-forward
//! block (`fc12` the gate, `fc11` the values it scales), no biases by default, token types.
//! `config.json` as nomic's own code saves it (`n_embd`, `rotary_emb_base`, ...) or as
//! transformers' port does (`hidden_size`, `rope_parameters`); tensors under either's names.

use serde::Deserialize;

use super::bert_family::parse;
use super::tensors::{
    Tensors, from_transformers_layers, fuse, rename, rename_layers, zeros_unless_present,
};
use crate::engine::blueprint::{Blueprint, Mlp, NormKind, Placement, Positions, Rotary};
use crate::engine::kernels::Activation;

/// Both spellings of every key; where both are present they must agree, and nomic's wins.
#[derive(Deserialize)]
struct NomicConfig {
    vocab_size: usize,
    n_embd: Option<usize>,
    hidden_size: Option<usize>,
    n_layer: Option<usize>,
    num_hidden_layers: Option<usize>,
    n_head: Option<usize>,
    num_attention_heads: Option<usize>,
    n_inner: Option<usize>,
    intermediate_size: Option<usize>,
    n_positions: Option<usize>,
    max_position_embeddings: Option<usize>,
    layer_norm_epsilon: Option<f64>,
    layer_norm_eps: Option<f64>,
    #[serde(default = "two")]
    type_vocab_size: usize,
    rotary_emb_base: Option<f64>,
    rope_parameters: Option<Rope>,
    #[serde(default = "one")]
    rotary_emb_fraction: f64,
    #[serde(default)]
    rotary_emb_interleaved: bool,
    rotary_scaling_factor: Option<f64>,
    activation_function: Option<String>,
    hidden_act: Option<String>,
    #[serde(default)]
    prenorm: bool,
    #[serde(default)]
    causal: bool,
    #[serde(default)]
    qkv_proj_bias: bool,
    #[serde(default)]
    mlp_fc1_bias: bool,
    #[serde(default)]
    mlp_fc2_bias: bool,
}

#[derive(Deserialize)]
struct Rope {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

fn two() -> usize {
    2
}
fn one() -> f64 {
    1.0
}

/// `key`'s value under nomic's name or transformers', or what is missing.
fn either<T: Copy>(nomic: Option<T>, hf: Option<T>, key: &str) -> Result<T, String> {
    nomic.or(hf).ok_or_else(|| format!("config.json: no {key}"))
}

impl NomicConfig {
    fn hidden(&self) -> Result<usize, String> {
        either(self.n_embd, self.hidden_size, "n_embd (hidden_size)")
    }

    /// The gated block's width: nomic's code rounds `n_inner` up to a multiple of 256
    /// (`multiple_of` in its gated MLP; v1.5's 3,072 stays), else `8/3` of the width rounded
    /// the same way; transformers' `intermediate_size` is the width itself.
    fn intermediate(&self) -> Result<usize, String> {
        let round = |n: usize| n.div_ceil(256) * 256;
        match (self.n_inner, self.intermediate_size) {
            (Some(n), _) => Ok(round(n)),
            (None, Some(n)) => Ok(n),
            (None, None) => Ok(round(self.hidden()? * 8 / 3)),
        }
    }

    /// Refuses what the encoder does not run: norms before blocks, causal attention,
    /// interleaved or scaled rotary positions.
    fn refuse_unsupported(&self) -> Result<(), String> {
        let refuse = |what: &str| Err(format!("config.json: {what} is not supported"));
        if self.prenorm {
            return refuse("prenorm: true");
        }
        if self.causal {
            return refuse("causal: true (NomicBERT embedders attend both ways)");
        }
        if self.rotary_emb_interleaved {
            return refuse("rotary_emb_interleaved: true");
        }
        if let Some(f) = self.rotary_scaling_factor {
            return Err(format!(
                "config.json: rotary_scaling_factor {f} (dynamic NTK scaling) is not supported; nomic-embed-text-v1.5 ships none and reaches 8,192 tokens without it"
            ));
        }
        super::default_rope_type(
            self.rope_parameters
                .as_ref()
                .and_then(|r| r.rope_type.as_deref()),
        )?;
        Ok(())
    }

    /// The gated block's activation: SwiGLU's or GeGLU's, under either spelling.
    fn activation(&self) -> Result<Activation, String> {
        match (
            self.activation_function.as_deref(),
            self.hidden_act.as_deref(),
        ) {
            (Some("swiglu"), _) | (None, Some("silu" | "swish")) => Ok(Activation::Silu),
            (Some("geglu"), _) | (None, Some("gelu")) => Ok(Activation::GeluErf),
            (a, h) => Err(format!(
                "config.json: activation {:?} is not supported (swiglu, geglu)",
                a.or(h)
            )),
        }
    }

    fn layers(&self) -> Result<usize, String> {
        either(
            self.n_layer,
            self.num_hidden_layers,
            "n_layer (num_hidden_layers)",
        )
    }
}

pub(super) fn blueprint(config_json: &[u8]) -> Result<Blueprint, String> {
    let c: NomicConfig = parse(config_json)?;
    c.refuse_unsupported()?;
    let activation = c.activation()?;
    let hidden = c.hidden()?;
    let heads = either(
        c.n_head,
        c.num_attention_heads,
        "n_head (num_attention_heads)",
    )?;
    let head = hidden / heads.max(1);
    let base = either(
        c.rotary_emb_base,
        c.rope_parameters.as_ref().and_then(|r| r.rope_theta),
        "rotary_emb_base (rope_parameters.rope_theta)",
    )?;
    Ok(Blueprint {
        vocab: c.vocab_size,
        hidden,
        heads,
        kv_heads: heads,
        head_dim: hidden / heads.max(1),
        causal: false,
        qk_norm: false,
        norm_kind: NormKind::Layer,
        embedding_norm: true,
        layers: c.layers()?,
        intermediate: c.intermediate()?,
        eps: either(c.layer_norm_epsilon, c.layer_norm_eps, "layer_norm_epsilon")? as f32,
        type_vocab: c.type_vocab_size.max(1),
        positions: Positions::Rotary(Rotary::plain(
            base,
            // Rounded down to an even count, as nomic's code does.
            ((head as f64 * c.rotary_emb_fraction) as usize) & !1,
            either(c.n_positions, c.max_position_embeddings, "n_positions")?,
        )),
        norm: Placement::Post,
        mlp: Mlp {
            activation,
            gated: true,
        },
        window: None,
    })
}

/// Its tensors under the encoder's names, zero biases where the config says there are none.
pub(super) fn tensors(config_json: &[u8], tensors: Tensors) -> Result<Tensors, String> {
    let c: NomicConfig = parse(config_json)?;
    let (h, layers) = (c.hidden()?, c.layers()?);
    let i = c.intermediate()?;
    let mut out = if tensors.keys().any(|k| k.starts_with("layers.")) {
        from_transformers_layers(tensors, layers)?
    } else {
        let renames = [
            ("attn.Wqkv.", "attention.self.qkv."),
            ("attn.out_proj.", "attention.output.dense."),
            ("norm1.", "attention.output.LayerNorm."),
            ("mlp.fc2.", "output.dense."),
            ("norm2.", "output.LayerNorm."),
        ];
        let mut out = rename_layers(tensors, "encoder.layers.", &renames)?;
        for l in 0..layers {
            let p = format!("encoder.layer.{l}");
            fuse(
                &mut out,
                &[
                    format!("{p}.mlp.fc12.weight"),
                    format!("{p}.mlp.fc11.weight"),
                ],
                &format!("{p}.intermediate.dense.weight"),
            )?;
            if c.mlp_fc1_bias {
                fuse(
                    &mut out,
                    &[format!("{p}.mlp.fc12.bias"), format!("{p}.mlp.fc11.bias")],
                    &format!("{p}.intermediate.dense.bias"),
                )?;
            }
        }
        rename(&mut out, &[("emb_ln.", "embeddings.LayerNorm.")]);
        out
    };
    for l in 0..layers {
        let p = format!("encoder.layer.{l}");
        if !c.qkv_proj_bias {
            if out.contains_key(&format!("{p}.attention.self.qkv.weight")) {
                zeros_unless_present(&mut out, &format!("{p}.attention.self.qkv.bias"), 3 * h)?;
            } else {
                for part in ["query", "key", "value"] {
                    zeros_unless_present(&mut out, &format!("{p}.attention.self.{part}.bias"), h)?;
                }
            }
            zeros_unless_present(&mut out, &format!("{p}.attention.output.dense.bias"), h)?;
        }
        if !c.mlp_fc1_bias {
            zeros_unless_present(&mut out, &format!("{p}.intermediate.dense.bias"), 2 * i)?;
        }
        if !c.mlp_fc2_bias {
            zeros_unless_present(&mut out, &format!("{p}.output.dense.bias"), h)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOMIC: &str = r#""vocab_size": 30528, "n_embd": 768, "n_head": 12, "n_layer": 12,
        "n_inner": 3072, "n_positions": 8192, "layer_norm_epsilon": 1e-12,
        "rotary_emb_base": 1000, "activation_function": "swiglu""#;

    fn config(extra: &str) -> Vec<u8> {
        format!("{{{NOMIC}{extra}}}").into_bytes()
    }

    #[test]
    fn nomic_s_keys_and_transformers_side_by_side() {
        let b = blueprint(&config(
            r#", "hidden_size": 768, "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0}"#,
        ))
        .expect("blueprint");
        assert_eq!(
            (b.hidden, b.heads, b.layers, b.intermediate, b.type_vocab),
            (768, 12, 12, 3072, 2)
        );
        assert_eq!(
            b.positions,
            Positions::Rotary(Rotary::plain(1000.0, 64, 8192))
        );
        assert_eq!(b.mlp.activation, Activation::Silu);
    }

    #[test]
    fn what_the_encoder_cannot_run_is_refused_by_name() {
        let err = |extra: &str| blueprint(&config(extra)).err().unwrap_or_default();
        assert_eq!(
            err(r#", "rotary_scaling_factor": 2.0"#),
            "config.json: rotary_scaling_factor 2 (dynamic NTK scaling) is not supported; nomic-embed-text-v1.5 ships none and reaches 8,192 tokens without it"
        );
        assert_eq!(
            err(r#", "prenorm": true"#),
            "config.json: prenorm: true is not supported"
        );
        assert_eq!(
            err(r#", "rotary_emb_interleaved": true"#),
            "config.json: rotary_emb_interleaved: true is not supported"
        );
    }
}
