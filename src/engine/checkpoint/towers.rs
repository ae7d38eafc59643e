//! What CLIP's and SigLIP's mappers ([`super::clip`], [`super::siglip`]) share: the names the
//! towers' own tensors take, the shapes a tower gives beyond its encoder, the pre-norm
//! blueprint both families' towers are, a tower's tensors under the encoder's names, and the
//! defaults their configs share.

use super::bert_family::activation;
use super::tensors::{Tensors, add_zero_token_types, rename, rename_layers};
use crate::engine::blueprint::{Blueprint, Mlp, NormKind, Placement, Positions};
use crate::engine::kernels::Activation;

/// The patch convolution's weight, `[hidden, channels, patch, patch]`.
pub const PATCH: &str = "vision.patch.weight";
/// The patch convolution's bias (SigLIP's; CLIP's has none).
pub const PATCH_BIAS: &str = "vision.patch.bias";
/// The class vector, `[hidden]` (CLIP's).
pub const CLASS: &str = "vision.class";
/// The image projection into the space the text tower shares, `[projection_dim, hidden]`
/// (CLIP's).
pub const PROJECTION: &str = "vision.projection.weight";
/// The text projection (CLIP) or head (SigLIP), `[projection_dim, hidden]`.
pub const TEXT_PROJECTION: &str = "text.projection.weight";
/// SigLIP's text head's bias (CLIP's projection has none).
pub const TEXT_HEAD_BIAS: &str = "text.projection.bias";
/// SigLIP's attention-pooling head's tensors: `{HEAD}.probe` (`[1, 1, hidden]`),
/// `{HEAD}.attention.in_proj_weight` / `in_proj_bias` (query, key and value stacked),
/// `{HEAD}.attention.out_proj`, `{HEAD}.layernorm`, `{HEAD}.mlp.fc1`, `{HEAD}.mlp.fc2`.
pub const HEAD: &str = "vision.head";

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

    /// Refuses an image size that is no whole number of patches.
    pub(super) fn check(self) -> Result<Self, String> {
        let (s, p) = (self.image_size, self.patch_size);
        if p == 0 || s == 0 || !s.is_multiple_of(p) {
            return Err(format!(
                "config.json: vision_config.image_size {s} is not a whole number of patches of {p}"
            ));
        }
        Ok(self)
    }
}

/// Which row a text tower pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOfText {
    /// CLIP's original configs (`eos_token_id` 2, which is no end-of-text token): the row of
    /// the highest id (the first, on a tie), which CLIP's vocabulary gives its end-of-text
    /// token (transformers' rule for them).
    HighestId,
    /// The first row holding this id (CLIP's newer configs).
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
    /// The id a text is padded with to the tower's length (SigLIP's); none: texts run as
    /// long as they are (CLIP's causal tower never looks past its end-of-text token).
    pub pad: Option<u32>,
}

/// A tower's encoder: norms before each block and after the last layer, learned positions,
/// LayerNorm, plain feed-forward blocks.
pub(super) struct Tower<'a> {
    pub vocab: usize,
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub eps: f64,
    pub positions: usize,
    pub act: &'a str,
    /// Each token sees only those before it (CLIP's text tower).
    pub causal: bool,
    /// A LayerNorm before the first layer (CLIP's image tower's `pre_layrnorm`).
    pub embedding_norm: bool,
}

impl Tower<'_> {
    pub(super) fn blueprint(&self) -> Result<Blueprint, String> {
        let activation = match self.act {
            "quick_gelu" => Activation::QuickGelu,
            other => activation(other)?,
        };
        let b = Blueprint {
            vocab: self.vocab,
            hidden: self.hidden,
            heads: self.heads,
            kv_heads: self.heads,
            head_dim: self.hidden / self.heads.max(1),
            causal: self.causal,
            qk_norm: false,
            norm_kind: NormKind::Layer,
            embedding_norm: self.embedding_norm,
            layers: self.layers,
            intermediate: self.intermediate,
            eps: self.eps as f32,
            type_vocab: 1,
            positions: Positions::Learned {
                max: self.positions,
                relative_bias: false,
            },
            norm: Placement::Pre {
                first_attention_norm: true,
            },
            mlp: Mlp {
                activation,
                gated: false,
            },
            window: None,
        };
        b.check()?;
        Ok(b)
    }
}

/// A CLIP or SigLIP layer's tensors under the encoder's names.
const LAYER_RENAMES: [(&str, &str); 8] = [
    ("layer_norm1.", "attention.output.LayerNorm."),
    ("self_attn.q_proj.", "attention.self.query."),
    ("self_attn.k_proj.", "attention.self.key."),
    ("self_attn.v_proj.", "attention.self.value."),
    ("self_attn.out_proj.", "attention.output.dense."),
    ("layer_norm2.", "output.LayerNorm."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
];

/// One tower's tensors under the encoder's names: those under `prefix` (`vision_model.`,
/// `text_model.`) with its layers renamed and then `renames` applied, and the top-level ones
/// `outside` names, renamed so; the position ids older checkpoints saved (a buffer, not a
/// weight) dropped. An image tower (`words` false) gets one zero word row for the encoder's
/// table, which its patches take the place of.
pub(super) fn tower_tensors(
    tensors: Tensors,
    prefix: &str,
    outside: &[(&str, &str)],
    renames: &[(&str, &str)],
    hidden: usize,
    words: bool,
) -> Result<Tensors, String> {
    let mut mine = Tensors::new();
    for (name, t) in tensors {
        if name.ends_with("embeddings.position_ids") {
            continue;
        }
        if let Some(rest) = name.strip_prefix(prefix) {
            mine.insert(rest.to_string(), t);
        } else if let Some((_, to)) = outside.iter().find(|(from, _)| *from == name) {
            mine.insert(to.to_string(), t);
        }
    }
    let mut out = rename_layers(mine, "encoder.layers.", &LAYER_RENAMES)?;
    rename(&mut out, renames);
    if !words {
        let zeros = candle_core::Tensor::zeros(
            (1, hidden),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .map_err(|e| e.to_string())?;
        out.insert("embeddings.word_embeddings.weight".into(), zeros);
    }
    add_zero_token_types(&mut out, hidden)?;
    Ok(out)
}

/// The renames both families' text towers take.
pub(super) const TEXT_RENAMES: [(&str, &str); 3] = [
    ("embeddings.token_embedding.", "embeddings.word_embeddings."),
    (
        "embeddings.position_embedding.",
        "embeddings.position_embeddings.",
    ),
    ("final_layer_norm.", "final_norm."),
];

/// The defaults CLIP's and SigLIP's configs share (base size).
pub(super) mod defaults {
    pub fn hidden() -> usize {
        768
    }
    pub fn intermediate() -> usize {
        3072
    }
    pub fn twelve() -> usize {
        12
    }
    pub fn three() -> usize {
        3
    }
    pub fn image_size() -> usize {
        224
    }
}
