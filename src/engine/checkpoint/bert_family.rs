//! DistilBERT (BERT without token types, other tensor names) and XLM-RoBERTa (BERT's tensor
//! names, positions counted from `pad_token_id + 1`) as BERT.

use candle_transformers::models::bert::{Config, HiddenAct, PositionEmbeddingType};
use serde::Deserialize;

use super::roberta::Shape;
use super::tensors::{
    Tensors, add_zero_token_types, drop_leading_positions, rename_layers, strip_prefix,
};

fn activation(name: &str) -> Result<HiddenAct, String> {
    match name {
        "gelu" => Ok(HiddenAct::Gelu),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_approximate" => Ok(HiddenAct::GeluApproximate),
        "relu" => Ok(HiddenAct::Relu),
        other => Err(format!(
            "config.json: activation {other:?} is not supported (gelu, gelu_new, relu)"
        )),
    }
}

#[derive(Deserialize)]
struct DistilBertConfig {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    #[serde(default = "default_gelu")]
    activation: String,
    max_position_embeddings: usize,
    #[serde(default)]
    sinusoidal_pos_embds: bool,
    #[serde(default)]
    pad_token_id: usize,
}

fn default_gelu() -> String {
    "gelu".into()
}

pub(super) fn distilbert(
    config_json: &[u8],
    tensors: Tensors,
) -> Result<(Config, Tensors), String> {
    let c: DistilBertConfig =
        serde_json::from_slice(config_json).map_err(|e| format!("config.json: {e}"))?;
    if c.sinusoidal_pos_embds {
        return Err("config.json: sinusoidal_pos_embds is not supported".into());
    }
    let config = Config {
        vocab_size: c.vocab_size,
        hidden_size: c.dim,
        num_hidden_layers: c.n_layers,
        num_attention_heads: c.n_heads,
        intermediate_size: c.hidden_dim,
        hidden_act: activation(&c.activation)?,
        hidden_dropout_prob: 0.0,
        max_position_embeddings: c.max_position_embeddings,
        type_vocab_size: 1,
        initializer_range: 0.02,
        // DistilBERT's LayerNorms use 1e-12, as BERT's.
        layer_norm_eps: 1e-12,
        pad_token_id: c.pad_token_id,
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: false,
        classifier_dropout: None,
        model_type: Some("distilbert".into()),
    };
    let renames: [(&str, &str); 8] = [
        ("attention.q_lin.", "attention.self.query."),
        ("attention.k_lin.", "attention.self.key."),
        ("attention.v_lin.", "attention.self.value."),
        ("attention.out_lin.", "attention.output.dense."),
        ("sa_layer_norm.", "attention.output.LayerNorm."),
        ("ffn.lin1.", "intermediate.dense."),
        ("ffn.lin2.", "output.dense."),
        ("output_layer_norm.", "output.LayerNorm."),
    ];
    let mut out = rename_layers(
        strip_prefix(tensors, "distilbert.")?,
        "transformer.layer.",
        &renames,
    )?;
    add_zero_token_types(&mut out, c.dim)?;
    Ok((config, out))
}

#[derive(Deserialize)]
struct XlmRobertaConfig {
    #[serde(flatten)]
    shape: Shape,
    hidden_act: String,
    #[serde(default = "one")]
    type_vocab_size: usize,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

fn one() -> usize {
    1
}

pub(super) fn xlm_roberta(
    config_json: &[u8],
    tensors: Tensors,
) -> Result<(Config, Tensors), String> {
    let c: XlmRobertaConfig =
        serde_json::from_slice(config_json).map_err(|e| format!("config.json: {e}"))?;
    if c.position_embedding_type
        .as_deref()
        .is_some_and(|p| p != "absolute")
    {
        return Err(format!(
            "config.json: position_embedding_type {:?} is not supported (absolute)",
            c.position_embedding_type
        ));
    }
    let mut out = strip_prefix(strip_prefix(tensors, "roberta.")?, "xlm_roberta.")?;
    let positions = drop_leading_positions(
        &mut out,
        c.shape.max_position_embeddings,
        c.shape.pad_token_id,
    )?;
    let config = c.shape.to_bert(
        activation(&c.hidden_act)?,
        positions,
        c.type_vocab_size,
        "xlm-roberta",
    );
    Ok((config, out))
}
