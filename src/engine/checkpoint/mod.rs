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

/// Moves a reranker's classification head (already stripped of the encoder's prefix by
/// [`to_bert`]) to the names [`super::head`] reads: BERT's pooler and classifier, or
/// XLM-RoBERTa's classifier dense and output projection.
pub fn head_tensors(architecture: Architecture, tensors: &mut Tensors) -> Result<(), String> {
    use super::head::{DENSE, OUT};
    let renames: &[(&str, &str)] = match architecture {
        Architecture::Bert => &[("pooler.dense", DENSE), ("classifier", OUT)],
        Architecture::XlmRoberta => &[("classifier.dense", DENSE), ("classifier.out_proj", OUT)],
        other => {
            return Err(format!(
                "a {} reranker is not supported (rerankers: bert, xlm-roberta)",
                other.as_str()
            ));
        }
    };
    for (from, to) in renames {
        for part in ["weight", "bias"] {
            let t = tensors.remove(&format!("{from}.{part}")).ok_or_else(|| {
                format!(
                    "model.safetensors: no tensor {from}.{part}: a {} reranker's classifier head needs it",
                    architecture.as_str()
                )
            })?;
            tensors.insert(format!("{to}.{part}"), t);
        }
    }
    Ok(())
}

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
            Ok((config, tensors::strip_prefix(tensors, "bert.")?))
        }
        Architecture::DistilBert => bert_family::distilbert(config_json, tensors),
        Architecture::XlmRoberta => bert_family::xlm_roberta(config_json, tensors),
        Architecture::Mpnet => mpnet::to_bert(config_json, tensors),
    }
}
