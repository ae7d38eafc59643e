//! What a reranker folder implies: a cross-encoder (sentence-transformers' CrossEncoder of
//! versions 2 to 6, or transformers' sequence classification: its labels, activation and pair
//! length), or a Qwen3 reranker (Qwen3-Reranker's causal language model, as Qwen ships it or
//! as sentence-transformers 6 saves it with its `LogitScore` module, or converted to
//! `Qwen3ForSequenceClassification`), read through its model card's template.

use std::path::Path;

use serde::Deserialize;

use super::super::super::error::PackageError;
use super::super::super::manifest::{
    Architecture, ModelKind, PairTemplate, Pooling, ScoreActivation,
};
use super::{
    HfConfig, Inferred, Length, StModelConfig, StModule, module_class, read_json, saved_length,
    unusable,
};

/// The pair length Qwen3-Reranker's model card tokenizes to (`max_length = 8192`), when the
/// folder saves none; also the most a manifest allows.
const QWEN3_RERANKER_LENGTH: usize = 8192;

/// sentence-transformers 6's `LogitScore` module's `config.json`.
#[derive(Deserialize)]
struct StLogitScore {
    true_token_id: u32,
    false_token_id: Option<u32>,
}

/// A reranker folder of `architecture`: see the module's documentation. `causal_lm`: its
/// `config.json` names a `*ForCausalLM`.
pub(super) fn infer(
    dir: &Path,
    config: &HfConfig,
    st_model: &StModelConfig,
    architecture: Architecture,
    max_positions: usize,
    causal_lm: bool,
) -> Result<Inferred, PackageError> {
    let decoder = match architecture {
        Architecture::Bert | Architecture::XlmRoberta => false,
        Architecture::Qwen3 => true,
        other => {
            return Err(unusable(format!(
                "config.json: a {} cross-encoder is not supported (rerankers: bert, xlm-roberta, qwen3)",
                other.as_str()
            )));
        }
    };
    // A causal language model's head is one row (yes less no): one label; transformers' own
    // default is two labels when the config names none.
    let labels = if causal_lm {
        1
    } else {
        config
            .num_labels
            .or((!config.id2label.is_empty()).then_some(config.id2label.len()))
            .unwrap_or(2)
    };
    let activation = saved_activation(config, st_model, labels)?;
    // A pair's length as sentence-transformers reads it; but Qwen3-Reranker as Qwen ships
    // it (no sentence-transformers files) is used as its card says, up to 8,192 tokens.
    let length = if decoder && !dir.join("modules.json").exists() {
        Length::within(
            saved_length(dir)?
                .unwrap_or(QWEN3_RERANKER_LENGTH)
                .min(max_positions),
            "its model card",
        )
    } else {
        Length::as_sentence_transformers_reads(dir, max_positions)?
    };
    let (pooling, pair_template, logit_rows) = if decoder {
        // Qwen3-Reranker: its card's template, its last token; a causal model's head made of
        // its yes and no rows (a sequence-classification conversion has its row).
        let logit_rows = if causal_lm {
            Some(yes_and_no(dir)?)
        } else {
            None
        };
        (
            Pooling::LastToken,
            Some(PairTemplate::qwen3_reranker()),
            logit_rows,
        )
    } else {
        (Pooling::Cls, None, None)
    };
    Ok(Inferred {
        labels: Some(labels),
        activation: Some(activation),
        pair_template,
        logit_rows,
        ..Inferred::new(
            architecture,
            ModelKind::Reranker,
            pooling,
            config.hidden()?,
            length,
        )
    })
}

/// The activation CrossEncoder applies, where each version saved it, else its default:
/// sigmoid for one label, the logits as they are for more.
fn saved_activation(
    config: &HfConfig,
    st_model: &StModelConfig,
    labels: usize,
) -> Result<ScoreActivation, PackageError> {
    let (saved, source) = match (
        &st_model.activation_fn,
        config
            .sentence_transformers
            .as_ref()
            .and_then(|s| s.activation_fn.as_ref()),
        &config.sbert_ce_default_activation_function,
    ) {
        (Some(a), _, _) => (Some(a), "config_sentence_transformers.json: activation_fn"),
        (None, Some(a), _) => (Some(a), "config.json: sentence_transformers.activation_fn"),
        (None, None, Some(a)) => (Some(a), "config.json: sbert_ce_default_activation_function"),
        (None, None, None) => (None, ""),
    };
    Ok(match saved.map(String::as_str) {
        None if labels == 1 => ScoreActivation::Sigmoid,
        None => ScoreActivation::Identity,
        Some("torch.nn.modules.activation.Sigmoid") => ScoreActivation::Sigmoid,
        Some("torch.nn.modules.linear.Identity") => ScoreActivation::Identity,
        Some("torch.nn.modules.activation.Tanh") => ScoreActivation::Tanh,
        Some(other) => {
            return Err(unusable(format!(
                "{source}: {other} is not supported (torch.nn.modules.activation.Sigmoid, torch.nn.modules.linear.Identity, torch.nn.modules.activation.Tanh)"
            )));
        }
    })
}

/// The token ids whose logits a causal reranker compares: its `LogitScore` module's (saved
/// by sentence-transformers 6), else the tokenizer's `yes` and `no`, as the model card and
/// sentence-transformers read them.
fn yes_and_no(dir: &Path) -> Result<(u32, u32), PackageError> {
    let modules = dir.join("modules.json");
    if modules.exists() {
        let modules: Vec<StModule> = read_json(&modules)?;
        if let Some(m) = modules
            .iter()
            .find(|m| module_class(&m.kind) == Some("LogitScore"))
        {
            let path = dir.join(&m.path).join("config.json");
            let c: StLogitScore = read_json(&path)?;
            return match c.false_token_id {
                Some(no) => Ok((c.true_token_id, no)),
                None => Err(unusable(format!(
                    "{}: false_token_id is null; only a reranker that scores a true token against a false one is supported",
                    path.display()
                ))),
            };
        }
    }
    let path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| unusable(format!("{}: {e}", path.display())))?;
    let id = |word: &str| {
        tokenizer.token_to_id(word).ok_or_else(|| {
            unusable(format!(
                "{}: no token {word:?}; a causal reranker's score is its \"yes\" logit against its \"no\"",
                path.display()
            ))
        })
    };
    Ok((id("yes")?, id("no")?))
}
