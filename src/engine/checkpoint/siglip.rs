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
//! through a linear head ([`super::towers::TEXT_PROJECTION`], with a bias).

use serde::Deserialize;

use super::tensors::Tensors;
use super::towers::defaults::{hidden, image_size, intermediate, three, twelve};
use super::towers::{
    EndOfText, HEAD, ImageShape, PATCH, PATCH_BIAS, TEXT_RENAMES, TextShape, Tower, tower_tensors,
};
use crate::engine::blueprint::Blueprint;

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
    #[serde(default = "pad")]
    pad_token_id: u32,
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
fn pad() -> u32 {
    1
}

fn parse(config_json: &[u8]) -> Result<SiglipConfig, String> {
    serde_json::from_slice(config_json)
        .map_err(|e| format!("config.json: not a SiglipModel config: {e}"))
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
    let shape = ImageShape {
        channels: v.num_channels,
        image_size: v.image_size,
        patch_size: v.patch_size,
        projection_dim: v.hidden_size,
    }
    .check()?;
    let b = Tower {
        vocab: 1,
        hidden: v.hidden_size,
        heads: v.num_attention_heads,
        layers: v.num_hidden_layers,
        intermediate: v.intermediate_size,
        eps: v.layer_norm_eps,
        positions: shape.grid() * shape.grid(),
        act: &v.hidden_act,
        causal: false,
        embedding_norm: false,
    }
    .blueprint()?;
    Ok((b, shape))
}

/// The image tower's tensors under the encoder's names (and the patch's and head's).
pub fn vision_tensors(tensors: Tensors, hidden: usize) -> Result<Tensors, String> {
    let head = format!("{HEAD}.");
    tower_tensors(
        tensors,
        "vision_model.",
        &[],
        &[
            ("embeddings.patch_embedding.weight", PATCH),
            ("embeddings.patch_embedding.bias", PATCH_BIAS),
            (
                "embeddings.position_embedding.weight",
                "embeddings.position_embeddings.weight",
            ),
            ("post_layernorm.", "final_norm."),
            ("head.", &head),
        ],
        hidden,
        false,
    )
}

/// The text tower's encoder blueprint and shape.
pub fn text_blueprint(config_json: &[u8]) -> Result<(Blueprint, TextShape), String> {
    let t = parse(config_json)?
        .text_config
        .ok_or("config.json: a SiglipModel config without text_config")?;
    let b = Tower {
        vocab: t.vocab_size,
        hidden: t.hidden_size,
        heads: t.num_attention_heads,
        layers: t.num_hidden_layers,
        intermediate: t.intermediate_size,
        eps: t.layer_norm_eps,
        positions: t.max_position_embeddings,
        act: &t.hidden_act,
        causal: false,
        embedding_norm: false,
    }
    .blueprint()?;
    let shape = TextShape {
        projection_dim: t.projection_size.unwrap_or(t.hidden_size),
        end_of_text: EndOfText::Last,
        // SigLIP was trained on texts padded to its length, as its processor pads them.
        pad: Some(t.pad_token_id),
    };
    Ok((b, shape))
}

/// The text tower's tensors under the encoder's names (and the head's:
/// [`super::towers::TEXT_PROJECTION`], [`super::towers::TEXT_HEAD_BIAS`]).
pub fn text_tensors(tensors: Tensors, hidden: usize) -> Result<Tensors, String> {
    let mut renames = TEXT_RENAMES.to_vec();
    renames.push(("head.", "text.projection."));
    tower_tensors(tensors, "text_model.", &[], &renames, hidden, true)
}
