//! What the sentence-transformers modules after an embedder's transformer do, as their
//! `config.json`s say: Pooling (its mode, in the terms of versions 2 to 6), Dense modules
//! (their widths, bias and activation, weights as safetensors), Normalize.

use std::path::Path;

use serde::Deserialize;

use super::super::super::error::PackageError;
use super::super::super::manifest::{Dense, DenseActivation, Pooling};
use super::{StModule, module_class, read_json, unusable};

#[derive(Deserialize)]
struct StPooling {
    word_embedding_dimension: Option<usize>,
    /// sentence-transformers 6 writes the width and the mode under these names.
    embedding_dimension: Option<usize>,
    pooling_mode: Option<OneOrMore>,
    /// `false`: the prompt's tokens are left out of the mean (sentence-transformers 3+).
    include_prompt: Option<bool>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

/// `pooling_mode`: one mode, or several whose vectors are concatenated.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMore {
    One(String),
    More(Vec<String>),
}

impl StPooling {
    /// The modes it names, in sentence-transformers' terms (`mean`, `cls`, `lasttoken`, ...):
    /// `pooling_mode`, or else the older `pooling_mode_*` flags (none set means mean, as
    /// sentence-transformers reads it).
    fn modes(&self) -> Vec<String> {
        match &self.pooling_mode {
            Some(OneOrMore::One(m)) => vec![m.clone()],
            Some(OneOrMore::More(m)) => m.clone(),
            None => {
                let flags = [
                    (self.pooling_mode_cls_token, "cls"),
                    (self.pooling_mode_max_tokens, "max"),
                    (self.pooling_mode_mean_tokens, "mean"),
                    (
                        self.pooling_mode_mean_sqrt_len_tokens,
                        "mean_sqrt_len_tokens",
                    ),
                    (self.pooling_mode_weightedmean_tokens, "weightedmean"),
                    (self.pooling_mode_lasttoken, "lasttoken"),
                ];
                let set: Vec<String> = flags
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, m)| m.to_string())
                    .collect();
                if set.is_empty() {
                    vec!["mean".into()]
                } else {
                    set
                }
            }
        }
    }
}

/// A Dense module's `config.json`.
#[derive(Deserialize)]
struct StDense {
    in_features: usize,
    out_features: usize,
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default = "identity")]
    activation_function: String,
}

fn yes() -> bool {
    true
}

fn identity() -> String {
    "torch.nn.modules.linear.Identity".into()
}

/// What an embedder's `modules.json` chain does after the transformer.
pub(super) struct EmbedderModules {
    pub pooling: Pooling,
    pub normalize: bool,
    pub dense: Vec<Dense>,
}

impl EmbedderModules {
    /// Reads `modules.json`: a Pooling module, then Dense modules, then at most a Normalize.
    pub(super) fn read(dir: &Path, hidden: usize) -> Result<EmbedderModules, PackageError> {
        let modules: Vec<StModule> = read_json(&dir.join("modules.json"))?;
        let mut pooling = None;
        let mut normalize = false;
        let mut dense = Vec::new();
        for m in &modules {
            if normalize {
                return Err(unusable(format!(
                    "modules.json: module {} comes after Normalize; only Normalize may be last",
                    m.kind
                )));
            }
            match module_class(&m.kind) {
                Some("Transformer") => {}
                Some("Normalize") => normalize = true,
                Some("Dense") => {
                    if pooling.is_none() {
                        return Err(unusable(format!(
                            "modules.json: the Dense module {} comes before Pooling; only Dense modules after pooling are supported",
                            m.path
                        )));
                    }
                    dense.push(dense_module(dir, &m.path)?);
                }
                Some("Pooling") => pooling = Some(pooling_module(dir, &m.path, hidden)?),
                _ => {
                    return Err(unusable(format!(
                        "modules.json: module {} is not supported (Transformer, Pooling, Dense, Normalize)",
                        m.kind
                    )));
                }
            }
        }
        Ok(EmbedderModules {
            pooling: pooling.ok_or_else(|| unusable("modules.json: no Pooling module"))?,
            normalize,
            dense,
        })
    }
}

/// The Pooling module in folder `path`: one mode of those the engine runs, over
/// `hidden`-wide token vectors.
fn pooling_module(dir: &Path, path: &str, hidden: usize) -> Result<Pooling, PackageError> {
    let p: StPooling = read_json(&dir.join(path).join("config.json"))?;
    let pooling = match p.modes().as_slice() {
        [m] if m == "mean" => Pooling::Mean,
        [m] if m == "cls" => Pooling::Cls,
        [m] if m == "lasttoken" => Pooling::LastToken,
        modes => {
            return Err(unusable(format!(
                "{path}/config.json: pooling mode {} is not supported (one of mean, cls, lasttoken)",
                modes.join(" + ")
            )));
        }
    };
    if p.include_prompt == Some(false) && pooling == Pooling::Mean {
        return Err(unusable(format!(
            "{path}/config.json: include_prompt: false (the prompt's tokens left out of the mean) is not supported"
        )));
    }
    if let Some(d) = p.word_embedding_dimension.or(p.embedding_dimension)
        && d != hidden
    {
        return Err(unusable(format!(
            "{path}/config.json: word_embedding_dimension {d} differs from hidden_size {hidden}"
        )));
    }
    Ok(pooling)
}

/// The vectors' width: `hidden` through each Dense module, each taking what the one before
/// gives.
pub(super) fn output_width(dense: &[Dense], hidden: usize) -> Result<usize, PackageError> {
    let mut width = hidden;
    for d in dense {
        if d.inputs != width {
            return Err(unusable(format!(
                "{}: in_features {} does not take the {width} values before it",
                d.path.replace("model.safetensors", "config.json"),
                d.inputs
            )));
        }
        width = d.outputs;
    }
    Ok(width)
}

/// The Dense module in folder `path`: its shape and activation from its `config.json`, its
/// weights in `model.safetensors` (older sentence-transformers saved `pytorch_model.bin`,
/// which must be converted first).
pub(super) fn dense_module(dir: &Path, path: &str) -> Result<Dense, PackageError> {
    let c: StDense = read_json(&dir.join(path).join("config.json"))?;
    let activation = match c.activation_function.as_str() {
        "torch.nn.modules.linear.Identity" => DenseActivation::Identity,
        "torch.nn.modules.activation.Tanh" => DenseActivation::Tanh,
        other => {
            return Err(unusable(format!(
                "{path}/config.json: activation_function {other} is not supported (torch.nn.modules.linear.Identity, torch.nn.modules.activation.Tanh)"
            )));
        }
    };
    let weights = format!("{path}/model.safetensors");
    if !dir.join(&weights).exists() {
        return Err(unusable(format!(
            "{weights} is missing{}; save the model again with sentence-transformers 3 or later, which writes safetensors",
            if dir.join(path).join("pytorch_model.bin").exists() {
                " (there is a pytorch_model.bin)"
            } else {
                ""
            }
        )));
    }
    Ok(Dense {
        path: weights,
        inputs: c.in_features,
        outputs: c.out_features,
        bias: c.bias,
        activation,
    })
}
