//! What a sentence-transformers SparseEncoder folder implies: a SPLADE model (the transformer
//! with its masked-language-model head, saved by sentence-transformers 6 as a `Transformer`
//! with the `fill-mask` task or by 5 as an `MLMTransformer`, then `SpladePooling`), its term
//! pooling and activation; its width is the vocabulary's. An inference-free one is a `Router`
//! whose query route is a `SparseStaticEmbedding` (a weight per term) and whose document route
//! is such a SPLADE, each in its own subfolder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::super::super::error::PackageError;
use super::super::super::manifest::{Architecture, ModelKind, Pooling, SparseActivation};
use super::{
    HfConfig, Inferred, Length, StModelConfig, StModule, architecture, has_module, module_class,
    read_json, unusable,
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
    Ok(
        st_model.model_type.as_deref() == Some("SparseEncoder")
            || has_module(dir, "SpladePooling")?,
    )
}

/// `router_config.json` of a sentence-transformers `Router`.
#[derive(Deserialize)]
struct RouterConfig {
    types: BTreeMap<String, String>,
    structure: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    parameters: RouterParameters,
}

#[derive(Deserialize, Default)]
struct RouterParameters {
    default_route: Option<String>,
}

/// Where an inference-free SparseEncoder's parts are.
pub(super) struct Routed {
    /// The document route's transformer folder (config.json, tokenizer.json, weights).
    document: PathBuf,
    /// The document route's SpladePooling folder.
    pooling: PathBuf,
    /// The query route's SparseStaticEmbedding weights.
    query_weights: PathBuf,
}

/// The parts of a folder whose only module is a `Router` of a `SparseStaticEmbedding` query
/// route and a SPLADE document route; `None` for any folder without a Router.
pub(super) fn router(dir: &Path) -> Result<Option<Routed>, PackageError> {
    if !has_module(dir, "Router")? {
        return Ok(None);
    }
    let r: RouterConfig = read_json(&dir.join("router_config.json"))?;
    let class = |name: &str| r.types.get(name).and_then(|t| module_class(t));
    let route = |name: &str| r.structure.get(name).map(Vec::as_slice).unwrap_or(&[]);
    let supported = "supported: a query route of one SparseStaticEmbedding and a document route of a Transformer (fill-mask) or MLMTransformer, then SpladePooling";
    let ([q], [t, p]) = (route("query"), route("document")) else {
        return Err(unusable(format!(
            "router_config.json: routes {:?}; {supported}",
            r.structure
        )));
    };
    if class(q) != Some("SparseStaticEmbedding")
        || !matches!(class(t), Some("Transformer" | "MLMTransformer"))
        || class(p) != Some("SpladePooling")
    {
        return Err(unusable(format!(
            "router_config.json: the query route is {}, the document route {} then {}; {supported}",
            class(q).unwrap_or(q),
            class(t).unwrap_or(t),
            class(p).unwrap_or(p)
        )));
    }
    match r.parameters.default_route.as_deref() {
        None | Some("document") => {}
        Some(other) => {
            return Err(unusable(format!(
                "router_config.json: default_route {other:?}; a text sent without input_type is a document here, so only \"document\" is supported"
            )));
        }
    }
    Ok(Some(Routed {
        document: dir.join(t),
        pooling: dir.join(p),
        query_weights: dir.join(q).join("model.safetensors"),
    }))
}

/// An inference-free SparseEncoder: its document route as [`infer`] reads a SPLADE folder,
/// with the query route's weights beside it.
pub(super) fn infer_routed(r: Routed) -> Result<Inferred, PackageError> {
    let config: HfConfig = read_json(&r.document.join("config.json"))?;
    let architecture = architecture(config.model_type.as_deref())?;
    let max_positions = config.max_positions(architecture);
    let pooling = r.pooling.join("config.json");
    let mut inferred = infer_parts(&r.document, &pooling, &config, architecture, max_positions)?;
    inferred.source_dir = Some(r.document);
    inferred.query_weights = Some(r.query_weights);
    Ok(inferred)
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
                "modules.json: a sparse encoder's modules are {}; supported: a Transformer (fill-mask) or MLMTransformer, then SpladePooling; or one Router of a SparseStaticEmbedding query route and such a document route",
                classes.join(", ")
            )));
        }
    };
    let pooling = dir.join(pooling_path).join("config.json");
    infer_parts(dir, &pooling, config, architecture, max_positions)
}

/// What a SPLADE's transformer folder `dir`, its `config` and SpladePooling's config file
/// `pooling_config` say.
fn infer_parts(
    dir: &Path,
    pooling_config: &Path,
    config: &HfConfig,
    architecture: Architecture,
    max_positions: usize,
) -> Result<Inferred, PackageError> {
    let pooling_path = pooling_config.display();
    let splade: StSpladePooling = read_json(pooling_config)?;
    let pooling = match splade.pooling_strategy.as_deref() {
        None | Some("max") => Pooling::Max,
        Some("sum") => Pooling::Sum,
        Some(other) => {
            return Err(unusable(format!(
                "{pooling_path}: pooling_strategy {other:?} is not supported (max, sum)"
            )));
        }
    };
    let activation = match splade.activation_function.as_deref() {
        None | Some("relu") => SparseActivation::Relu,
        Some("log1p_relu") => SparseActivation::Log1pRelu,
        Some(other) => {
            return Err(unusable(format!(
                "{pooling_path}: activation_function {other:?} is not supported (relu, log1p_relu)"
            )));
        }
    };
    let vocab = config
        .vocab_size
        .ok_or_else(|| unusable("config.json has no vocab_size"))?;
    let length = Length::as_sentence_transformers_reads(dir, max_positions)?;
    Ok(Inferred {
        sparse_activation: Some(activation),
        ..Inferred::new(architecture, ModelKind::Sparse, pooling, vocab, length)
    })
}
