//! What RoBERTa-style checkpoints (XLM-RoBERTa, MPNet) share: the `config.json` fields of
//! their encoder, and the BERT configuration they become once their positions are counted
//! from `pad_token_id + 1`.

use candle_transformers::models::bert::{Config, HiddenAct, PositionEmbeddingType};
use serde::Deserialize;

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
    /// The BERT configuration of this encoder with `positions` rows of position embeddings
    /// (what is left after the padding offset) and `type_vocab_size` token types.
    pub fn to_bert(
        &self,
        hidden_act: HiddenAct,
        positions: usize,
        type_vocab_size: usize,
        model_type: &str,
    ) -> Config {
        Config {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act,
            hidden_dropout_prob: 0.0,
            max_position_embeddings: positions,
            type_vocab_size,
            initializer_range: 0.02,
            layer_norm_eps: self.layer_norm_eps,
            pad_token_id: self.pad_token_id,
            position_embedding_type: PositionEmbeddingType::Absolute,
            use_cache: false,
            classifier_dropout: None,
            model_type: Some(model_type.into()),
        }
    }
}
