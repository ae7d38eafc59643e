//! CLIP's image tower (transformers' `CLIPModel` checkpoint, its `vision_config`) on the one
//! encoder: patch vectors with a class vector first and learned positions, a LayerNorm before
//! the first layer (`pre_layrnorm`), norms before each block, `quick_gelu`, and a LayerNorm
//! after the last layer (`post_layernorm`: transformers applies it to the class row only,
//! which a per-row norm over every row gives too). What is no encoder's (the patch
//! convolution, the class vector, the projection into the shared space) is read by
//! [`crate::engine::vision`] under the names [`PATCH`], [`CLASS`] and [`PROJECTION`].

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

/// `config.json` of a `CLIPModel`: what the image tower needs.
#[derive(Deserialize)]
struct ClipConfig {
    vision_config: VisionConfig,
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

/// The image tower's encoder blueprint and shape.
pub fn vision_blueprint(config_json: &[u8]) -> Result<(Blueprint, ImageShape), String> {
    let c: ClipConfig = serde_json::from_slice(config_json)
        .map_err(|e| format!("config.json: not a CLIPModel config: {e}"))?;
    let v = c.vision_config;
    if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
        return Err(format!(
            "config.json: vision_config.image_size {} is not a whole number of patches of {}",
            v.image_size, v.patch_size
        ));
    }
    let act = if v.hidden_act == "quick_gelu" {
        crate::engine::kernels::Activation::QuickGelu
    } else {
        activation(&v.hidden_act)?
    };
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
    let renames = [
        ("layer_norm1.", "attention.output.LayerNorm."),
        ("self_attn.q_proj.", "attention.self.query."),
        ("self_attn.k_proj.", "attention.self.key."),
        ("self_attn.v_proj.", "attention.self.value."),
        ("self_attn.out_proj.", "attention.output.dense."),
        ("layer_norm2.", "output.LayerNorm."),
        ("mlp.fc1.", "intermediate.dense."),
        ("mlp.fc2.", "output.dense."),
    ];
    let mut out = rename_layers(mine, "encoder.layers.", &renames)?;
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
