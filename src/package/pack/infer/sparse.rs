//! What a sentence-transformers SparseEncoder folder implies: a SPLADE model (the transformer
//! with its masked-language-model head, saved by sentence-transformers 6 as a `Transformer`
//! with the `fill-mask` task or by 5 as an `MLMTransformer`, then `SpladePooling`), its term
//! pooling and activation; its width is the vocabulary's.

use std::path::Path;

use serde::Deserialize;

use super::super::super::error::PackageError;
use super::super::super::manifest::{Architecture, ModelKind, Pooling, SparseActivation};
use super::{
    HfConfig, Inferred, Length, StModelConfig, StModule, module_class, read_json, unusable,
};

/// `SpladePooling`'s `config.json`.
#[derive(Deserialize)]
struct StSpladePooling {
    pooling_strategy: Option<String>,
    activation_function: Option<String>,
}

/// Whether the folder holds a SparseEncoder: sentence-transformers says so, or its modules
/// end in `SpladePooling`.
pub(super) fn is_sparse(dir: &Path, st_model: &StModelConfig) -> Result<bool, PackageError> {
    if st_model.model_type.as_deref() == Some("SparseEncoder") {
        return Ok(true);
    }
    let path = dir.join("modules.json");
    if !path.exists() {
        return Ok(false);
    }
    let modules: Vec<StModule> = read_json(&path)?;
    Ok(modules
        .iter()
        .any(|m| module_class(&m.kind) == Some("SpladePooling")))
}

/// A SparseEncoder folder of `architecture`.
pub(super) fn infer(
    dir: &Path,
    config: &HfConfig,
    architecture: Architecture,
    max_positions: usize,
) -> Result<Inferred, PackageError> {
    if !matches!(architecture, Architecture::Bert | Architecture::DistilBert) {
        return Err(unusable(format!(
            "a {} sparse encoder is not supported (sparse encoders: bert, distilbert)",
            architecture.as_str()
        )));
    }
    let modules: Vec<StModule> = read_json(&dir.join("modules.json"))?;
    let classes: Vec<&str> = modules
        .iter()
        .map(|m| module_class(&m.kind).unwrap_or(m.kind.as_str()))
        .collect();
    let pooling_path = match (classes.as_slice(), modules.as_slice()) {
        (["Transformer" | "MLMTransformer", "SpladePooling"], [_, pooling]) => &pooling.path,
        _ => {
            return Err(unusable(format!(
                "modules.json: a sparse encoder's modules are {}; supported: a Transformer (fill-mask) or MLMTransformer, then SpladePooling (the inference-free Router and SparseStaticEmbedding are not yet)",
                classes.join(", ")
            )));
        }
    };
    let splade: StSpladePooling = read_json(&dir.join(pooling_path).join("config.json"))?;
    let pooling = match splade.pooling_strategy.as_deref() {
        None | Some("max") => Pooling::Max,
        Some("sum") => Pooling::Sum,
        Some(other) => {
            return Err(unusable(format!(
                "{pooling_path}/config.json: pooling_strategy {other:?} is not supported (max, sum)"
            )));
        }
    };
    let activation = match splade.activation_function.as_deref() {
        None | Some("relu") => SparseActivation::Relu,
        Some("log1p_relu") => SparseActivation::Log1pRelu,
        Some(other) => {
            return Err(unusable(format!(
                "{pooling_path}/config.json: activation_function {other:?} is not supported (relu, log1p_relu)"
            )));
        }
    };
    let vocab = config
        .vocab_size
        .ok_or_else(|| unusable("config.json has no vocab_size"))?;
    let length = Length::as_sentence_transformers_reads(dir, max_positions)?;
    Ok(Inferred {
        architecture,
        dimensions: vocab,
        dense: Vec::new(),
        max_seq_length: length.tokens,
        length_note: length.note,
        pooling,
        normalize: false,
        kind: ModelKind::Sparse,
        labels: None,
        activation: None,
        pair_template: None,
        logit_rows: None,
        sparse_activation: Some(activation),
    })
}
