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

use super::bert_family::activation;
use super::tensors::{Tensors, add_zero_token_types, rename, rename_layers};
use crate::engine::blueprint::{Blueprint, Mlp, NormKind, Placement, Positions};

/// The patch convolution's weight, `[hidden, channels, patch, patch]`.
pub const PATCH: &str = "vision.patch.weight";
/// The class vector, `[hidden]`.
pub const CLASS: &str = "vision.class";
/// The projection into the space the text tower shares, `[projection_dim, hidden]`.
pub const PROJECTION: &str = "vision.projection.weight";

/// The text projection, `[projection_dim, hidden]`.
pub const TEXT_PROJECTION: &str = "text.projection.weight";

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

fn projection_dim() -> usize {
    512
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
    32
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}

/// What an image tower takes and gives beyond its encoder's blueprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    /// Colour channels of the input (3).
    pub channels: usize,
    /// Pixels of the square input's side.
    pub image_size: usize,
    /// Pixels of a patch's side.
    pub patch_size: usize,
    /// Width of the output vector.
    pub projection_dim: usize,
}

impl ImageShape {
    /// Patches along a side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

fn parse(config_json: &[u8]) -> Result<ClipConfig, String> {
    serde_json::from_slice(config_json)
        .map_err(|e| format!("config.json: not a CLIPModel config: {e}"))
}

fn quick_gelu_or(name: &str) -> Result<crate::engine::kernels::Activation, String> {
    match name {
        "quick_gelu" => Ok(crate::engine::kernels::Activation::QuickGelu),
        other => activation(other),
    }
}

/// Which row a text tower pools: the end-of-text token's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOfText {
    /// The original configs (`eos_token_id` 2, which is no end-of-text token): the row of
    /// the highest id (the first, on a tie), which CLIP's vocabulary gives its end-of-text
    /// token (transformers' rule for them).
    HighestId,
    /// The first row holding this id.
    Id(u32),
    /// The last row (SigLIP, whose texts are padded to its length).
    Last,
}

/// What a text tower gives beyond its encoder's blueprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextShape {
    /// Width of the output vector.
    pub projection_dim: usize,
    /// The pooled row.
    pub end_of_text: EndOfText,
}

/// The text tower's encoder blueprint and shape.
pub fn text_blueprint(config_json: &[u8]) -> Result<(Blueprint, TextShape), String> {
    let c = parse(config_json)?;
    let t = c
        .text_config
        .ok_or("config.json: a CLIPModel config without text_config")?;
    let blueprint = Blueprint {
        vocab: t.vocab_size,
        hidden: t.hidden_size,
        heads: t.num_attention_heads,
        kv_heads: t.num_attention_heads,
        head_dim: t.hidden_size / t.num_attention_heads.max(1),
        causal: true,
        qk_norm: false,
        norm_kind: NormKind::Layer,
        embedding_norm: false,
        layers: t.num_hidden_layers,
        intermediate: t.intermediate_size,
        eps: t.layer_norm_eps as f32,
        type_vocab: 1,
        positions: Positions::Learned {
            max: t.max_position_embeddings,
            relative_bias: false,
        },
        norm: Placement::Pre {
            first_attention_norm: true,
        },
        mlp: Mlp {
            activation: quick_gelu_or(&t.hidden_act)?,
            gated: false,
        },
        window: None,
    };
    blueprint.check()?;
    let end_of_text = match t.eos_token_id {
        2 => EndOfText::HighestId,
        id => EndOfText::Id(id),
    };
    Ok((
        blueprint,
        TextShape {
            projection_dim: c.projection_dim,
            end_of_text,
        },
    ))
}

/// The text tower's tensors under the encoder's names (and [`TEXT_PROJECTION`]); the image
/// tower's are left out.
pub fn text_tensors(tensors: Tensors, hidden: usize) -> Result<Tensors, String> {
    let mut mine = Tensors::new();
    for (name, t) in tensors {
        if name.ends_with("embeddings.position_ids") {
            continue;
        }
        if let Some(rest) = name.strip_prefix("text_model.") {
            mine.insert(rest.to_string(), t);
        } else if name == "text_projection.weight" {
            mine.insert(TEXT_PROJECTION.to_string(), t);
        }
    }
    let mut out = rename_layers(mine, "encoder.layers.", &LAYER_RENAMES)?;
    rename(
        &mut out,
        &[
            ("embeddings.token_embedding.", "embeddings.word_embeddings."),
            (
                "embeddings.position_embedding.",
                "embeddings.position_embeddings.",
            ),
            ("final_layer_norm.", "final_norm."),
        ],
    );
    add_zero_token_types(&mut out, hidden)?;
    Ok(out)
}

/// A CLIP layer's tensors under the encoder's names.
pub(super) const LAYER_RENAMES: [(&str, &str); 8] = [
    ("layer_norm1.", "attention.output.LayerNorm."),
    ("self_attn.q_proj.", "attention.self.query."),
    ("self_attn.k_proj.", "attention.self.key."),
    ("self_attn.v_proj.", "attention.self.value."),
    ("self_attn.out_proj.", "attention.output.dense."),
    ("layer_norm2.", "output.LayerNorm."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
];

/// The image tower's encoder blueprint and shape.
pub fn vision_blueprint(config_json: &[u8]) -> Result<(Blueprint, ImageShape), String> {
    let c = parse(config_json)?;
    let v = c
        .vision_config
        .ok_or("config.json: a CLIPModel config without vision_config")?;
    if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
        return Err(format!(
            "config.json: vision_config.image_size {} is not a whole number of patches of {}",
            v.image_size, v.patch_size
        ));
    }
    let act = quick_gelu_or(&v.hidden_act)?;
    let grid = v.image_size / v.patch_size;
    let blueprint = Blueprint {
        vocab: 1,
        hidden: v.hidden_size,
        heads: v.num_attention_heads,
        kv_heads: v.num_attention_heads,
        head_dim: v.hidden_size / v.num_attention_heads.max(1),
        causal: false,
        qk_norm: false,
        norm_kind: NormKind::Layer,
        embedding_norm: true,
        layers: v.num_hidden_layers,
        intermediate: v.intermediate_size,
        eps: v.layer_norm_eps as f32,
        type_vocab: 1,
        positions: Positions::Learned {
            max: grid * grid + 1,
            relative_bias: false,
        },
        norm: Placement::Pre {
            first_attention_norm: true,
        },
        mlp: Mlp {
            activation: act,
            gated: false,
        },
        window: None,
    };
    blueprint.check()?;
    let shape = ImageShape {
        channels: v.num_channels,
        image_size: v.image_size,
        patch_size: v.patch_size,
        projection_dim: c.projection_dim,
    };
    Ok((blueprint, shape))
}

/// The image tower's tensors under the encoder's names (and [`PATCH`], [`CLASS`],
/// [`PROJECTION`]); the text tower's are left out.
pub fn vision_tensors(tensors: Tensors, hidden: usize) -> Result<Tensors, String> {
    let mut mine = Tensors::new();
    for (name, t) in tensors {
        // Older checkpoints saved the position ids, a buffer, not a weight.
        if name.ends_with("embeddings.position_ids") {
            continue;
        }
        if let Some(rest) = name.strip_prefix("vision_model.") {
            mine.insert(rest.to_string(), t);
        } else if name == "visual_projection.weight" {
            mine.insert(PROJECTION.to_string(), t);
        }
    }
    let mut out = rename_layers(mine, "encoder.layers.", &LAYER_RENAMES)?;
    rename(
        &mut out,
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
    );
    // No words: the patches take their place. One zero row satisfies the encoder's table.
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
