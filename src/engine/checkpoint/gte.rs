//! Alibaba's GTE encoder ("NewModel": gte-base-en-v1.5, gte-large-en-v1.5,
//! gte-multilingual-base) on the one encoder: BERT's post-norm layer with rotary positions
//! (optionally NTK-scaled, as `rope_scaling: {type: ntk, factor}` says), a GeGLU feed-forward
//! block fused as `up_gate_proj` (the values, then the gate) without bias, biases elsewhere,
//! and no token types when `type_vocab_size` is 0. `config.json` as Alibaba's code saves it
//! (`model_type: new`) or as transformers' port does (`gte`, `rope_parameters`).

use serde::Deserialize;

use super::bert_family::{activation, parse};
use super::tensors::{
    Tensors, add_zero_token_types, from_transformers_layers, halve, rename_layers, strip_prefix,
    zeros_unless_present,
};
use crate::engine::blueprint::{Blueprint, Mlp, NormKind, Placement, Positions, Rotary};

#[derive(Deserialize)]
struct GteConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default = "max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    type_vocab_size: usize,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    position_embedding_type: Option<String>,
    layer_norm_type: Option<String>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeScaling>,
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    logn_attention_scale: bool,
}

#[derive(Deserialize)]
struct RopeScaling {
    #[serde(rename = "type")]
    kind: String,
    factor: f64,
}

#[derive(Deserialize)]
struct RopeParameters {
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
    1e-12
}

/// The rotary base and NTK factor (1: none) the config asks for ([`Rotary::ntk`]).
fn rope(c: &GteConfig) -> Result<(f64, f64), String> {
    let theta = c
        .rope_theta
        .or(c.rope_parameters.as_ref().and_then(|r| r.rope_theta))
        .unwrap_or(10_000.0);
    super::default_rope_type(
        c.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.as_deref()),
    )?;
    match &c.rope_scaling {
        None => Ok((theta, 1.0)),
        Some(s) if s.kind == "ntk" && s.factor >= 1.0 => Ok((theta, s.factor)),
        Some(s) => Err(format!(
            "config.json: rope_scaling {} with factor {} is not supported (ntk, factor at least 1)",
            s.kind, s.factor
        )),
    }
}

pub(super) fn blueprint(config_json: &[u8]) -> Result<Blueprint, String> {
    let c: GteConfig = parse(config_json)?;
    if let Some(p) = c.position_embedding_type.as_deref()
        && p != "rope"
    {
        return Err(format!(
            "config.json: position_embedding_type {p:?} is not supported (rope)"
        ));
    }
    if let Some(n) = c.layer_norm_type.as_deref()
        && n != "layer_norm"
    {
        return Err(format!(
            "config.json: layer_norm_type {n:?} is not supported (layer_norm)"
        ));
    }
    if c.logn_attention_scale {
        return Err("config.json: logn_attention_scale: true is not supported".into());
    }
    let (base, factor) = rope(&c)?;
    let head = c.hidden_size / c.num_attention_heads.max(1);
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
        type_vocab: c.type_vocab_size.max(1),
        positions: Positions::Rotary(Rotary::ntk(base, factor, head, c.max_position_embeddings)),
        norm: Placement::Post,
        mlp: Mlp {
            activation: activation(&c.hidden_act)?,
            gated: true,
        },
        window: None,
    })
}

/// Its tensors under the encoder's names: the gate's rows moved before the values', a zero
/// bias for the fused up projection, a zero token type row when it has none.
pub(super) fn tensors(config_json: &[u8], tensors: Tensors) -> Result<Tensors, String> {
    let c: GteConfig = parse(config_json)?;
    let (h, i, layers) = (c.hidden_size, c.intermediate_size, c.num_hidden_layers);
    let tensors = strip_prefix(tensors, "new.")?;
    let mut out = if tensors.keys().any(|k| k.starts_with("layers.")) {
        from_transformers_layers(tensors, layers)?
    } else {
        let renames = [
            ("attention.qkv_proj.", "attention.self.qkv."),
            ("attention.o_proj.", "attention.output.dense."),
            ("attn_ln.", "attention.output.LayerNorm."),
            ("mlp.down_proj.", "output.dense."),
            ("mlp_ln.", "output.LayerNorm."),
        ];
        let mut out = rename_layers(tensors, "encoder.layer.", &renames)?;
        for l in 0..layers {
            let p = format!("encoder.layer.{l}");
            let (up, gate) = (format!("{p}.mlp.up"), format!("{p}.mlp.gate"));
            halve(
                &mut out,
                &format!("{p}.mlp.up_gate_proj.weight"),
                &up,
                &gate,
            )?;
            super::tensors::fuse(
                &mut out,
                &[gate, up],
                &format!("{p}.intermediate.dense.weight"),
            )?;
        }
        out
    };
    if !out.contains_key("embeddings.token_type_embeddings.weight") {
        add_zero_token_types(&mut out, h)?;
    }
    for l in 0..layers {
        zeros_unless_present(
            &mut out,
            &format!("encoder.layer.{l}.intermediate.dense.bias"),
            2 * i,
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"vocab_size": 10, "hidden_size": 768, "num_hidden_layers": 1,
                "num_attention_heads": 12, "intermediate_size": 8 {extra}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn ntk_scaling_is_the_base_times_the_factor_and_a_divisor() {
        let b = blueprint(&config(
            r#", "rope_theta": 500000, "rope_scaling": {"type": "ntk", "factor": 2.0}"#,
        ))
        .expect("blueprint");
        let Positions::Rotary(r) = b.positions else {
            panic!("rotary")
        };
        assert_eq!(r.base, 1_000_000.0);
        assert!((r.divisor - 2f64.powf(2.0 / 64.0)).abs() < 1e-15);
        assert_eq!((r.dims, r.max, b.type_vocab), (64, 8192, 1));
    }

    #[test]
    fn what_the_encoder_cannot_run_is_refused_by_name() {
        let err = |extra: &str| blueprint(&config(extra)).err().unwrap_or_default();
        assert_eq!(
            err(r#", "rope_scaling": {"type": "linear", "factor": 2.0}"#),
            "config.json: rope_scaling linear with factor 2 is not supported (ntk, factor at least 1)"
        );
        assert_eq!(
            err(r#", "position_embedding_type": "absolute""#),
            "config.json: position_embedding_type \"absolute\" is not supported (rope)"
        );
        assert_eq!(
            err(r#", "logn_attention_scale": true"#),
            "config.json: logn_attention_scale: true is not supported"
        );
    }
}
