//! Checkpoints of BERT's close relatives, mapped onto the one BERT encoder: DistilBERT (BERT
//! without token types, other tensor names) and XLM-RoBERTa (BERT's tensor names, positions
//! counted from `pad_token_id + 1`). Mapping weights, not copying model code, keeps one
//! forward pass to make fast and exact (erf GELU, masked attention) for all of them.
//! MPNet is mapped the same way, its relative attention bias kept for the encoder.
//! [`tensors`] holds the renaming every mapping shares.

mod bert_family;
pub mod mpnet;
mod roberta;
mod tensors;

use candle_transformers::models::bert::Config;

use crate::package::Architecture;
pub use tensors::Tensors;

/// The BERT configuration and tensors equivalent to a checkpoint of `architecture`.
pub fn to_bert(
    architecture: Architecture,
    config_json: &[u8],
    tensors: Tensors,
) -> Result<(Config, Tensors), String> {
    match architecture {
        Architecture::Bert => {
            let config: Config =
                serde_json::from_slice(config_json).map_err(|e| format!("config.json: {e}"))?;
            Ok((config, tensors::strip_prefix(tensors, "bert.")))
        }
        Architecture::DistilBert => bert_family::distilbert(config_json, tensors),
        Architecture::XlmRoberta => bert_family::xlm_roberta(config_json, tensors),
        Architecture::Mpnet => mpnet::to_bert(config_json, tensors),
    }
}
