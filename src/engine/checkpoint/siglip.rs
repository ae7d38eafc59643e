//! SigLIP's two towers (transformers' `SiglipModel` checkpoint; SigLIP 2's fixed-resolution
//! checkpoints load into it too) on the one encoder.
//!
//! The image tower (`vision_config`): patch vectors (the convolution has a bias) with learned
//! positions and no class vector, norms before each block, `gelu_pytorch_tanh`, a LayerNorm
//! after the last layer (`post_layernorm`, over every row), then an attention-pooling head
//! (one learned query attending to every row, its output through a LayerNorm and an MLP with
//! a residual) read by [`crate::engine::vision`] under [`HEAD`]'s names.
//!
//! The text tower (`text_config`): words and learned positions, attention to the whole
//! (padded) text, norms before each block and after the last layer; the last row goes
//! through a linear head ([`super::clip::TEXT_PROJECTION`], with a bias).

use serde::Deserialize;

use super::bert_family::activation;
use super::clip::{EndOfText, ImageShape, PATCH, TEXT_PROJECTION, TextShape};
use super::tensors::{Tensors, add_zero_token_types, rename, rename_layers};
use crate::engine::blueprint::{Blueprint, Mlp, NormKind, Placement, Positions};

/// The attention-pooling head's tensors: `{HEAD}.probe` (`[1, 1, hidden]`),
/// `{HEAD}.attention.in_proj_weight` / `in_proj_bias` (query, key and value stacked),
/// `{HEAD}.attention.out_proj`, `{HEAD}.layernorm`, `{HEAD}.mlp.fc1`, `{HEAD}.mlp.fc2`.
pub const HEAD: &str = "vision.head";
/// The patch convolution's bias.
pub const PATCH_BIAS: &str = "vision.patch.bias";

#[derive(Deserialize)]
struct SiglipConfig {
    #[serde(default)]
    vision_config: Option<VisionConfig>,
    #[serde(default)]
    text_config: Option<TextConfig>,
}

/// transformers' `SiglipVisionConfig`, its defaults those of SigLIP base patch 16 at 224.
#[derive(Deserialize)]
struct VisionConfig {
    #[serde(default = "hidden")]
    hidden_size: usize,
    #[serde(default = "intermediate")]
    intermediate_size: usize,
    #[serde(default = "twelve")]
    num_hidden_layers: usize,
    #[serde(default = "twelve")]
    num_attention_heads: usize,
    #[serde(default = "three")]
    num_channels: usize,
    #[serde(default = "image_size")]
    image_size: usize,
    #[serde(default = "patch_size")]
    patch_size: usize,
    #[serde(default = "gelu_tanh")]
    hidden_act: String,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    #[serde(default = "yes")]
    vision_use_head: bool,
}

/// transformers' `SiglipTextConfig`.
#[derive(Deserialize)]
struct TextConfig {
    #[serde(default = "vocab")]
    vocab_size: usize,
    #[serde(default = "hidden")]
    hidden_size: usize,
    #[serde(default = "intermediate")]
    intermediate_size: usize,
    #[serde(default = "twelve")]
    num_hidden_layers: usize,
    #[serde(default = "twelve")]
    num_attention_heads: usize,
    #[serde(default = "positions")]
    max_position_embeddings: usize,
    #[serde(default = "gelu_tanh")]
    hidden_act: String,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    projection_size: Option<usize>,
}

fn hidden() -> usize {
    768
}
fn intermediate() -> usize {
    3072
}
fn twelve() -> usize {
    12
}
fn three() -> usize {
    3
}
fn image_size() -> usize {
    224
}
fn patch_size() -> usize {
    16
}
fn gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}
fn eps() -> f64 {
    1e-6
}
fn yes() -> bool {
    true
}
fn vocab() -> usize {
    32000
}
fn positions() -> usize {
    64
}

fn parse(config_json: &[u8]) -> Result<SiglipConfig, String> {
    serde_json::from_slice(config_json)
        .map_err(|e| format!("config.json: not a SiglipModel config: {e}"))
}

/// A pre-norm encoder's blueprint (both towers are one).
#[allow(clippy::too_many_arguments)]
fn pre_norm(
    vocab: usize,
    hidden: usize,
    heads: usize,
    layers: usize,
    intermediate: usize,
    eps: f64,
    positions: usize,
    act: &str,
) -> Result<Blueprint, String> {
    let b = Blueprint {
        vocab,
        hidden,
        heads,
        kv_heads: heads,
        head_dim: hidden / heads.max(1),
        causal: false,
        qk_norm: false,
        norm_kind: NormKind::Layer,
        embedding_norm: false,
        layers,
        intermediate,
        eps: eps as f32,
        type_vocab: 1,
        positions: Positions::Learned {
            max: positions,
            relative_bias: false,
        },
        norm: Placement::Pre {
            first_attention_norm: true,
        },
        mlp: Mlp {
            activation: activation(act)?,
            gated: false,
        },
        window: None,
    };
    b.check()?;
    Ok(b)
}

/// The image tower's encoder blueprint and shape (its vectors are the head's, `hidden` wide).
pub fn vision_blueprint(config_json: &[u8]) -> Result<(Blueprint, ImageShape), String> {
    let v = parse(config_json)?
        .vision_config
        .ok_or("config.json: a SiglipModel config without vision_config")?;
    if !v.vision_use_head {
        return Err(
            "config.json: vision_use_head false: the image tower has no pooling head".into(),
        );
    }
    if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
        return Err(format!(
            "config.json: vision_config.image_size {} is not a whole number of patches of {}",
            v.image_size, v.patch_size
        ));
    }
    let grid = v.image_size / v.patch_size;
    let b = pre_norm(
        1,
        v.hidden_size,
        v.num_attention_heads,
        v.num_hidden_layers,
        v.intermediate_size,
        v.layer_norm_eps,
        grid * grid,
        &v.hidden_act,
    )?;
    let shape = ImageShape {
        channels: v.num_channels,
        image_size: v.image_size,
        patch_size: v.patch_size,
        projection_dim: v.hidden_size,
    };
    Ok((b, shape))
}

/// The image tower's tensors under the encoder's names (and the patch, head names).
pub fn vision_tensors(tensors: Tensors, hidden: usize) -> Result<Tensors, String> {
    let mut mine = Tensors::new();
    for (name, t) in tensors {
        if name.ends_with("embeddings.position_ids") {
            continue;
        }
        if let Some(rest) = name.strip_prefix("vision_model.") {
            mine.insert(rest.to_string(), t);
        }
    }
    let mut out = rename_layers(mine, "encoder.layers.", &super::clip::LAYER_RENAMES)?;
    rename(
        &mut out,
        &[
            ("embeddings.patch_embedding.weight", PATCH),
            ("embeddings.patch_embedding.bias", PATCH_BIAS),
            (
                "embeddings.position_embedding.weight",
                "embeddings.position_embeddings.weight",
            ),
            ("post_layernorm.", "final_norm."),
            ("head.", "vision.head."),
        ],
    );
    let zeros = candle_core::Tensor::zeros(
        (1, hidden),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .map_err(|e| e.to_string())?;
    out.insert("embeddings.word_embeddings.weight".into(), zeros);
    add_zero_token_types(&mut out, hidden)?;
    Ok(out)
}

/// The text tower's encoder blueprint and shape.
pub fn text_blueprint(config_json: &[u8]) -> Result<(Blueprint, TextShape), String> {
    let t = parse(config_json)?
        .text_config
        .ok_or("config.json: a SiglipModel config without text_config")?;
    let b = pre_norm(
        t.vocab_size,
        t.hidden_size,
        t.num_attention_heads,
        t.num_hidden_layers,
        t.intermediate_size,
        t.layer_norm_eps,
        t.max_position_embeddings,
        &t.hidden_act,
    )?;
    let shape = TextShape {
        projection_dim: t.projection_size.unwrap_or(t.hidden_size),
        end_of_text: EndOfText::Last,
    };
    Ok((b, shape))
}

/// The text tower's tensors under the encoder's names (and [`TEXT_PROJECTION`]'s weight and
/// bias).
pub fn text_tensors(tensors: Tensors, hidden: usize) -> Result<Tensors, String> {
    let mut mine = Tensors::new();
    for (name, t) in tensors {
        if name.ends_with("embeddings.position_ids") {
            continue;
        }
        if let Some(rest) = name.strip_prefix("text_model.") {
            mine.insert(rest.to_string(), t);
        }
    }
    let mut out = rename_layers(mine, "encoder.layers.", &super::clip::LAYER_RENAMES)?;
    let projection = TEXT_PROJECTION.trim_end_matches("weight");
    rename(
        &mut out,
        &[
            ("embeddings.token_embedding.", "embeddings.word_embeddings."),
            (
                "embeddings.position_embedding.",
                "embeddings.position_embeddings.",
            ),
            ("final_layer_norm.", "final_norm."),
            ("head.", projection),
        ],
    );
    add_zero_token_types(&mut out, hidden)?;
    Ok(out)
}
