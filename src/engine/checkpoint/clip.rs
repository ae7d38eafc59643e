//! CLIP's two towers (transformers' `CLIPModel` checkpoint) on the one encoder.
//!
//! The image tower (`vision_config`): patch vectors with a class vector first and learned
//! positions, a LayerNorm before the first layer (`pre_layrnorm`), norms before each block,
//! `quick_gelu`, and a LayerNorm after the last layer (`post_layernorm`: transformers applies
//! it to the class row only, which a per-row norm over every row gives too). What is no
//! encoder's (the patch convolution, the class vector, the projection into the shared space)
//! is read by [`crate::engine::vision`] under the names [`PATCH`], [`CLASS`] and
//! [`PROJECTION`].
//!
//! The text tower (`text_config`): words and learned positions, causal attention (each token
//! sees those before it), norms before each block and after the last layer, `quick_gelu`; the
//! end-of-text token's row is projected into the shared space ([`TEXT_PROJECTION`]).

use serde::Deserialize;

use super::tensors::Tensors;
use super::towers::defaults::{hidden, image_size, intermediate, three, twelve};
use super::towers::{
    CLASS, EndOfText, ImageShape, PATCH, PROJECTION, TEXT_PROJECTION, TEXT_RENAMES, TextShape,
    Tower, tower_tensors,
};
use crate::engine::blueprint::Blueprint;

/// `config.json` of a `CLIPModel`: what the towers need.
#[derive(Deserialize)]
struct ClipConfig {
    #[serde(default)]
    vision_config: Option<VisionConfig>,
    #[serde(default)]
    text_config: Option<TextConfig>,
    #[serde(default = "projection_dim")]
    projection_dim: usize,
}

/// transformers' `CLIPVisionConfig`, its defaults those of ViT-B/32.
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
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
}

/// transformers' `CLIPTextConfig`, its defaults those of ViT-B/32's text tower.
#[derive(Deserialize)]
struct TextConfig {
    #[serde(default = "vocab")]
    vocab_size: usize,
    #[serde(default = "text_hidden")]
    hidden_size: usize,
    #[serde(default = "text_intermediate")]
    intermediate_size: usize,
    #[serde(default = "twelve")]
    num_hidden_layers: usize,
    #[serde(default = "eight")]
    num_attention_heads: usize,
    #[serde(default = "text_positions")]
    max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    #[serde(default = "eos")]
    eos_token_id: u32,
}

fn projection_dim() -> usize {
    512
}
fn patch_size() -> usize {
    32
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}
fn vocab() -> usize {
    49408
}
fn text_hidden() -> usize {
    512
}
fn text_intermediate() -> usize {
    2048
}
fn eight() -> usize {
    8
}
fn text_positions() -> usize {
    77
}
fn eos() -> u32 {
    // transformers' CLIPTextConfig default; the original OpenAI configs save 2 instead.
    49407
}

fn parse(config_json: &[u8]) -> Result<ClipConfig, String> {
    serde_json::from_slice(config_json)
        .map_err(|e| format!("config.json: not a CLIPModel config: {e}"))
}

/// The image tower's encoder blueprint and shape.
pub fn vision_blueprint(config_json: &[u8]) -> Result<(Blueprint, ImageShape), String> {
    let c = parse(config_json)?;
    let v = c
        .vision_config
        .ok_or("config.json: a CLIPModel config without vision_config")?;
    let shape = ImageShape {
        channels: v.num_channels,
        image_size: v.image_size,
        patch_size: v.patch_size,
        projection_dim: c.projection_dim,
    }
    .check()?;
    let b = Tower {
        vocab: 1,
        hidden: v.hidden_size,
        heads: v.num_attention_heads,
        layers: v.num_hidden_layers,
        intermediate: v.intermediate_size,
        eps: v.layer_norm_eps,
        positions: shape.grid() * shape.grid() + 1,
        act: &v.hidden_act,
        causal: false,
        embedding_norm: true,
    }
    .blueprint()?;
    Ok((b, shape))
}

/// The image tower's tensors under the encoder's names (and [`PATCH`], [`CLASS`],
/// [`PROJECTION`]); the text tower's are left out.
pub fn vision_tensors(tensors: Tensors, hidden: usize) -> Result<Tensors, String> {
    tower_tensors(
        tensors,
        "vision_model.",
        &[("visual_projection.weight", PROJECTION)],
        &[
            ("embeddings.patch_embedding.weight", PATCH),
            ("embeddings.class_embedding", CLASS),
            (
                "embeddings.position_embedding.weight",
                "embeddings.position_embeddings.weight",
            ),
            ("pre_layrnorm.", "embeddings.LayerNorm."),
            ("post_layernorm.", "final_norm."),
        ],
        hidden,
        false,
    )
}

/// The text tower's encoder blueprint and shape.
pub fn text_blueprint(config_json: &[u8]) -> Result<(Blueprint, TextShape), String> {
    let c = parse(config_json)?;
    let t = c
        .text_config
        .ok_or("config.json: a CLIPModel config without text_config")?;
    let b = Tower {
        vocab: t.vocab_size,
        hidden: t.hidden_size,
        heads: t.num_attention_heads,
        layers: t.num_hidden_layers,
        intermediate: t.intermediate_size,
        eps: t.layer_norm_eps,
        positions: t.max_position_embeddings,
        act: &t.hidden_act,
        causal: true,
        embedding_norm: false,
    }
    .blueprint()?;
    let end_of_text = match t.eos_token_id {
        2 => EndOfText::HighestId,
        id => EndOfText::Id(id),
    };
    let shape = TextShape {
        projection_dim: c.projection_dim,
        end_of_text,
        pad: None,
    };
    Ok((b, shape))
}

/// The text tower's tensors under the encoder's names (and [`TEXT_PROJECTION`]); the image
/// tower's are left out.
pub fn text_tensors(tensors: Tensors, hidden: usize) -> Result<Tensors, String> {
    let outside = [("text_projection.weight", TEXT_PROJECTION)];
    tower_tensors(
        tensors,
        "text_model.",
        &outside,
        &TEXT_RENAMES,
        hidden,
        true,
    )
}
