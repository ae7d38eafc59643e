//! Checkpoints mapped onto the one encoder: each family's `config.json` read into a
//! [`Blueprint`] (its sizes and the parts it picks) and its tensors renamed to the names the
//! encoder reads (BERT's). BERT itself; DistilBERT (no token types, other tensor names) and
//! XLM-RoBERTa (positions counted from `pad_token_id + 1`) in [`bert_family`]; MPNet with its
//! relative attention bias; the decoders (Qwen3, Gemma 3) too. Mapping weights, not copying model code, keeps one forward pass
//! to make fast and exact for all of them. [`tensors`] holds the renaming every mapping shares.

mod bert_family;
pub mod clip;
mod gemma3;
mod gte;
mod modernbert;
pub mod mpnet;
mod nomic;
mod qwen3;
mod roberta;
pub mod siglip;
mod tensors;
pub mod towers;

use super::blueprint::Blueprint;
use crate::package::Architecture;
pub use tensors::Tensors;

/// Refuses a `rope_parameters.rope_type` other than the default (the families that read it
/// run plain rotary positions, or NTK scaling through their own key).
fn default_rope_type(rope_type: Option<&str>) -> Result<(), String> {
    match rope_type {
        Some(t) if t != "default" => Err(format!(
            "config.json: rope_parameters.rope_type {t:?} is not supported (default)"
        )),
        _ => Ok(()),
    }
}

/// Moves a reranker's classification head (already stripped of the encoder's prefix by
/// [`map`]) to the names [`super::head`] reads: BERT's pooler and classifier, XLM-RoBERTa's
/// classifier dense and output projection, or a Qwen3 reranker's one row (`score`, which
/// `caxton pack` makes of the language-model head's `yes` and `no` rows, and which
/// transformers' `Qwen3ForSequenceClassification` names so too), without a bias.
pub fn head_tensors(architecture: Architecture, tensors: &mut Tensors) -> Result<(), String> {
    use super::head::{DENSE, OUT};
    let renames: &[(&str, &str)] = match architecture {
        Architecture::Bert => &[("pooler.dense", DENSE), ("classifier", OUT)],
        Architecture::XlmRoberta => &[("classifier.dense", DENSE), ("classifier.out_proj", OUT)],
        Architecture::Qwen3 => &[("score", OUT)],
        other => {
            return Err(format!(
                "a {} reranker is not supported (rerankers: bert, xlm-roberta, qwen3)",
                other.as_str()
            ));
        }
    };
    for (from, to) in renames {
        for part in ["weight", "bias"] {
            let name = format!("{from}.{part}");
            let t = match tensors.remove(&name) {
                Some(t) => t,
                // A decoder's score row has no bias.
                None if architecture == Architecture::Qwen3 && part == "bias" => continue,
                None => {
                    return Err(format!(
                        "model.safetensors: no tensor {name}: a {} reranker's classifier head needs it",
                        architecture.as_str()
                    ));
                }
            };
            tensors.insert(format!("{to}.{part}"), t);
        }
    }
    Ok(())
}

/// Moves a sparse model's masked-language-model head (already stripped of the encoder's
/// prefix by [`map`]) to the names [`super::sparse`] reads: BERT's `cls.predictions`
/// (transform dense, LayerNorm, decoder and its bias) or DistilBERT's `vocab_transform`,
/// `vocab_layer_norm` and `vocab_projector`. A decoder tied to the word embeddings (saved
/// without its weight, as transformers does) gets the word table's tensor.
pub fn sparse_tensors(architecture: Architecture, tensors: &mut Tensors) -> Result<(), String> {
    use super::sparse::{DECODER, NORM, TRANSFORM};
    let (transform, norm, decoder, bias): (&str, &str, &str, &[&str]) = match architecture {
        Architecture::Bert => (
            "cls.predictions.transform.dense",
            "cls.predictions.transform.LayerNorm",
            "cls.predictions.decoder",
            &["cls.predictions.decoder.bias", "cls.predictions.bias"],
        ),
        Architecture::DistilBert => (
            "vocab_transform",
            "vocab_layer_norm",
            "vocab_projector",
            &["vocab_projector.bias"],
        ),
        other => {
            return Err(format!(
                "a {} sparse model is not supported (sparse models: bert, distilbert)",
                other.as_str()
            ));
        }
    };
    let missing = |name: &str| {
        format!(
            "model.safetensors: no tensor {name}: a {} sparse model's language-model head needs it",
            architecture.as_str()
        )
    };
    for (from, to) in [(transform, TRANSFORM), (norm, NORM)] {
        for part in ["weight", "bias"] {
            let name = format!("{from}.{part}");
            let t = tensors.remove(&name).ok_or_else(|| missing(&name))?;
            tensors.insert(format!("{to}.{part}"), t);
        }
    }
    let weight = match tensors.remove(&format!("{decoder}.weight")) {
        Some(t) => t,
        None => tensors
            .get("embeddings.word_embeddings.weight")
            .cloned()
            .ok_or_else(|| missing("embeddings.word_embeddings.weight"))?,
    };
    tensors.insert(format!("{DECODER}.weight"), weight);
    // transformers ties the decoder's bias to `cls.predictions.bias`: the first found serves,
    // the other copy goes.
    let mut found = None;
    for name in bias {
        if let Some(t) = tensors.remove(*name) {
            found.get_or_insert(t);
        }
    }
    let b = found.ok_or_else(|| missing(bias[bias.len() - 1]))?;
    tensors.insert(format!("{DECODER}.bias"), b);
    Ok(())
}

/// The blueprint a checkpoint of `architecture` with this `config.json` makes of the encoder
/// (its sizes and parts, without reading a weight).
pub fn blueprint(architecture: Architecture, config_json: &[u8]) -> Result<Blueprint, String> {
    let blueprint = match architecture {
        Architecture::Bert => bert_family::bert(config_json),
        Architecture::DistilBert => bert_family::distilbert(config_json),
        Architecture::XlmRoberta => bert_family::xlm_roberta(config_json),
        Architecture::Mpnet => mpnet::blueprint(config_json),
        Architecture::ModernBert => modernbert::blueprint(config_json),
        Architecture::NomicBert => nomic::blueprint(config_json),
        Architecture::Gte => gte::blueprint(config_json),
        Architecture::Qwen3 => qwen3::blueprint(config_json),
        Architecture::Gemma3 => gemma3::blueprint(config_json),
        // A two-tower model's text tower: what its texts' passes hold.
        Architecture::Clip => clip::text_blueprint(config_json).map(|(b, _)| b),
        Architecture::Siglip => siglip::text_blueprint(config_json).map(|(b, _)| b),
    }?;
    blueprint.check()?;
    Ok(blueprint)
}

/// The blueprint of a checkpoint of `architecture`, and its tensors under the encoder's names.
pub fn map(
    architecture: Architecture,
    config_json: &[u8],
    tensors: Tensors,
) -> Result<(Blueprint, Tensors), String> {
    let blueprint = blueprint(architecture, config_json)?;
    let tensors = tensors::as_transformers_loads(tensors)?;
    let tensors = match architecture {
        Architecture::Bert => bert_family::bert_tensors(tensors),
        Architecture::DistilBert => bert_family::distilbert_tensors(config_json, tensors),
        Architecture::XlmRoberta => bert_family::xlm_roberta_tensors(config_json, tensors),
        Architecture::Mpnet => mpnet::tensors(config_json, tensors),
        Architecture::ModernBert => modernbert::tensors(config_json, tensors),
        Architecture::NomicBert => nomic::tensors(config_json, tensors),
        Architecture::Gte => gte::tensors(config_json, tensors),
        Architecture::Qwen3 => qwen3::tensors(config_json, tensors),
        Architecture::Gemma3 => gemma3::tensors(config_json, tensors),
        Architecture::Clip | Architecture::Siglip => Err(format!(
            "{} is a two-tower model: its towers are built by engine::vision, not as one encoder",
            architecture.as_str()
        )),
    }?;
    Ok((blueprint, tensors))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_default_rope_type_is_read() {
        assert_eq!(super::default_rope_type(None), Ok(()));
        assert_eq!(super::default_rope_type(Some("default")), Ok(()));
        assert_eq!(
            super::default_rope_type(Some("yarn")),
            Err(
                "config.json: rope_parameters.rope_type \"yarn\" is not supported (default)".into()
            )
        );
    }
}
