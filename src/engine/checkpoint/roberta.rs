//! What RoBERTa-style checkpoints (XLM-RoBERTa, MPNet) share: the `config.json` fields of
//! their encoder, and the blueprint they become once their positions are counted from
//! `pad_token_id + 1`.

use serde::Deserialize;

use crate::engine::blueprint::{Blueprint, Mlp, NormKind, Placement, Positions};
use crate::engine::kernels::Activation;

/// The encoder's shape in a RoBERTa-style `config.json` (each model reads its other fields
/// beside these, with `#[serde(flatten)]`).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Shape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "one")]
    pub pad_token_id: usize,
}

fn default_eps() -> f64 {
    1e-5
}

fn one() -> usize {
    1
}

impl Shape {
    /// Positions left once those up to `pad_token_id` are dropped.
    pub fn positions(&self) -> Result<usize, String> {
        let offset = self.pad_token_id + 1;
        if self.max_position_embeddings <= offset {
            return Err(format!(
                "config.json: max_position_embeddings {} leaves no positions after pad_token_id {}",
                self.max_position_embeddings, self.pad_token_id
            ));
        }
        Ok(self.max_position_embeddings - offset)
    }

    /// BERT's layer at this encoder's shape, with `positions` rows of position embeddings
    /// (what is left after the padding offset) and `type_vocab` token types.
    pub fn learned(
        &self,
        activation: Activation,
        positions: usize,
        type_vocab: usize,
        relative_bias: bool,
    ) -> Blueprint {
        Blueprint {
            vocab: self.vocab_size,
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_attention_heads,
            head_dim: self.hidden_size / self.num_attention_heads.max(1),
            causal: false,
            qk_norm: false,
            norm_kind: NormKind::Layer,
            embedding_norm: true,
            layers: self.num_hidden_layers,
            intermediate: self.intermediate_size,
            eps: self.layer_norm_eps as f32,
            type_vocab,
            positions: Positions::Learned {
                max: positions,
                relative_bias,
            },
            norm: Placement::Post,
            mlp: Mlp {
                activation,
                gated: false,
            },
            window: None,
        }
    }
}
