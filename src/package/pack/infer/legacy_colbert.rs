//! ColBERT folders saved before sentence-transformers' MultiVectorEncoder, read as
//! sentence-transformers 6.2 converts them when it loads one, so the package answers as the
//! reference does. These are the layouts most ColBERT models are downloaded in:
//! - PyLate's (GTE-ModernColBERT-v1 and the other lightonai models): `modules.json` lists a
//!   Transformer and Dense modules only, the settings are top-level keys of
//!   `config_sentence_transformers.json`, and the skip-list and normalisation are implied;
//! - Stanford-NLP's (colbertv2.0, answerai-colbert-small-v1): `config.json` names the
//!   `HF_ColBERT` architecture, the settings are in `artifact.metadata`, and the projection
//!   (`linear.weight`) shares `model.safetensors` with the encoder.
//!
//! Their query and document markers become the prompts. A marker the tokenizer would split
//! (`[unused0]` is a vocabulary entry, but BERT's pre-tokenizer cuts at brackets) is registered
//! as a token of its own, as sentence-transformers registers it, so it stays the one token the
//! model was trained with.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::super::super::error::PackageError;
use super::super::super::manifest::{Architecture, Dense, DenseActivation, LateSimilarity};
use super::multi_vector::{Parts, Rules, StExpansion, StLengths, finish};
use super::{Inferred, StModelConfig, StModule, dense_module, module_class, read_json, unusable};

/// Python's `string.punctuation`: the skip-list both layouts default to.
const PUNCTUATION: &str = r##"!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~"##;

/// The keys by which sentence-transformers tells a PyLate save (any one of them).
const PYLATE_KEYS: [&str; 9] = [
    "query_length",
    "document_length",
    "query_expansion",
    "do_query_expansion",
    "attend_to_expansion_tokens",
    "attend_to_mask_tokens",
    "query_prefix",
    "document_prefix",
    "skiplist_words",
];

/// A legacy ColBERT folder's layout.
pub(super) enum Layout {
    /// PyLate's, with `config_sentence_transformers.json` as read.
    PyLate(Map<String, Value>),
    Stanford,
}

/// The legacy layout of the folder, if it has one (checked after a MultiVectorEncoder's). As
/// sentence-transformers decides: a folder with `modules.json` is read from its modules (a
/// PyLate save, which may also name `HF_ColBERT`), one without it from the Stanford
/// checkpoint `config.json` names.
pub(super) fn layout(dir: &Path, architectures: &[String]) -> Result<Option<Layout>, PackageError> {
    let modules = dir.join("modules.json");
    if !modules.exists() {
        let stanford = architectures.iter().any(|a| a == "HF_ColBERT");
        return Ok(stanford.then_some(Layout::Stanford));
    }
    let path = dir.join("config_sentence_transformers.json");
    let config: Map<String, Value> = match path.exists() {
        true => read_json(&path)?,
        false => Map::new(),
    };
    let pylate_module = read_json::<Vec<StModule>>(&modules)?
        .iter()
        .any(|m| m.kind.starts_with("pylate."));
    let marked = is_pylate_v3(&config) || has_pylate_key(&config) || pylate_module;
    Ok(marked.then_some(Layout::PyLate(config)))
}

/// PyLate 3 says `model_type: ColBERT`.
fn is_pylate_v3(config: &Map<String, Value>) -> bool {
    config.get("model_type").and_then(Value::as_str) == Some("ColBERT")
}

fn has_pylate_key(config: &Map<String, Value>) -> bool {
    PYLATE_KEYS.iter().any(|k| config.contains_key(*k))
}

/// The folder in `layout`, of `architecture` with token vectors `hidden` wide.
pub(super) fn infer(
    dir: &Path,
    layout: Layout,
    st_model: &StModelConfig,
    architecture: Architecture,
    hidden: usize,
    max_positions: usize,
) -> Result<Inferred, PackageError> {
    let parts = match layout {
        Layout::PyLate(config) => pylate(dir, &config, st_model)?,
        Layout::Stanford => stanford(dir, st_model, hidden)?,
    };
    finish(dir, architecture, hidden, max_positions, parts)
}

const ST_CONFIG: &str = "config_sentence_transformers.json";

/// A PyLate save: its Dense modules, then the mask and normalisation PyLate applied inline.
fn pylate(
    dir: &Path,
    config: &Map<String, Value>,
    st_model: &StModelConfig,
) -> Result<Parts, PackageError> {
    let modules: Vec<StModule> = read_json(&dir.join("modules.json"))?;
    let mut dense = Vec::new();
    for (i, m) in modules.iter().enumerate() {
        let class = module_class(&m.kind).or_else(|| {
            m.kind
                .strip_prefix("pylate.")
                .and_then(|rest| rest.rsplit('.').next())
        });
        match (i, class) {
            (0, Some("Transformer")) => {}
            (i, Some("Dense")) if i > 0 => dense.push(dense_module(dir, &m.path)?),
            _ => {
                return Err(unusable(format!(
                    "modules.json: module {} at position {i} is not supported in a PyLate ColBERT (supported: a Transformer, then Dense modules)",
                    m.kind
                )));
            }
        }
    }
    // PyLate put its markers before the text; sentence-transformers puts them before the
    // saved prompt of the same side.
    let mut prompts = st_model.prompts.clone();
    let mut markers = Vec::new();
    for (key, side) in [("query_prefix", "query"), ("document_prefix", "document")] {
        let prefix = match config.get(key) {
            None => continue,
            Some(Value::Null) => String::new(),
            Some(Value::String(p)) => p.clone(),
            Some(other) => {
                return Err(unusable(format!(
                    "{ST_CONFIG}: {key} is {other}; it must be the marker's text (\"[Q] \")"
                )));
            }
        };
        let saved = prompts.remove(side).unwrap_or_default();
        let rest = saved.strip_prefix(&prefix).unwrap_or(&saved).to_string();
        prompts.insert(side.to_string(), format!("{prefix}{rest}"));
        markers.push(prefix);
    }
    let mut tokenizer = read_tokenizer(dir)?;
    let replaced = register_markers(&mut tokenizer, &markers)?;
    Ok(Parts {
        dense,
        normalize: true,
        rules: Rules {
            lengths: pylate_lengths(dir, config)?,
            lengths_file: ST_CONFIG,
            // PyLate applied a punctuation skip-list unless it saved its own; a save without
            // its version or markers (only a `pylate.` module) is read with none, as
            // sentence-transformers reads it.
            skiplist_words: match config.get("skiplist_words") {
                Some(Value::Array(words)) => words
                    .iter()
                    .filter_map(|w| w.as_str().map(str::to_string))
                    .collect(),
                _ if is_pylate_v3(config) || !markers.is_empty() => punctuation(),
                _ => Vec::new(),
            },
            // sentence-transformers keeps a saved name it knows ("maxsim", "meanmaxsim") and
            // scores PyLate's "MaxSim" (and any other) by its default, MaxSim.
            similarity: match config.get("similarity_fn_name").and_then(Value::as_str) {
                Some("meanmaxsim") => LateSimilarity::Meanmaxsim,
                _ => LateSimilarity::Maxsim,
            },
            // sentence-transformers converts it with a MultiVectorMask.
            mask: true,
        },
        tokenizer,
        replaced,
        prompts: Some(prompts),
    })
}

/// PyLate's lengths: `sentence_bert_config.json`'s where it has them, else the top-level
/// keys. Without a `query_expansion`, a save with any of PyLate's keys has its queries
/// expanded (unless `do_query_expansion` is false) by `fixed` padding to `query_length`
/// (default 32, as for 0), attending as `attend_to_expansion_tokens` says; the query is then
/// cut only there. A save without those keys has no expansion.
fn pylate_lengths(dir: &Path, config: &Map<String, Value>) -> Result<StLengths, PackageError> {
    let sbc = dir.join("sentence_bert_config.json");
    let saved: StLengths = match sbc.exists() {
        true => read_json(&sbc)?,
        false => StLengths::default(),
    };
    let number = |key: &str| -> Result<Option<usize>, PackageError> {
        match config.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                unusable(format!(
                    "{ST_CONFIG}: {key} is {v}; it must be a whole number of tokens"
                ))
            }),
        }
    };
    let mut query_length = number("query_length")?;
    let query_expansion = match config.get("query_expansion") {
        Some(Value::Null) => None,
        Some(v) => Some(
            StExpansion::deserialize(v)
                .map_err(|e| unusable(format!("{ST_CONFIG}: query_expansion: {e}")))?,
        ),
        None if !has_pylate_key(config) => None,
        None if config.get("do_query_expansion") == Some(&Value::Bool(false)) => None,
        None => {
            let attend = config
                .get("attend_to_expansion_tokens")
                .or_else(|| config.get("attend_to_mask_tokens"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            Some(StExpansion {
                strategy: "fixed".into(),
                attend,
                token: None,
                length: query_length.take().filter(|&n| n > 0).unwrap_or(32),
            })
        }
    };
    Ok(StLengths {
        query_length: saved.query_length.or(query_length),
        document_length: saved.document_length.or(number("document_length")?),
        query_expansion: saved.query_expansion.or(query_expansion),
    })
}

/// Stanford-NLP ColBERT's `artifact.metadata` (the keys sentence-transformers reads).
#[derive(Deserialize, Default)]
struct Metadata {
    query_token_id: Option<String>,
    doc_token_id: Option<String>,
    query_maxlen: Option<usize>,
    doc_maxlen: Option<usize>,
    attend_to_mask_tokens: Option<bool>,
    /// Read as Python reads it: absent means true, `null` false.
    #[serde(default = "absent")]
    mask_punctuation: Value,
}

fn absent() -> Value {
    Value::Bool(true)
}

const ENCODER: &str = "model.safetensors";
const PROJECTION: &str = "1_Dense/model.safetensors";

/// A Stanford-NLP checkpoint: markers `[unused0]`/`[unused1]` unless the metadata names
/// others, queries always expanded, the projection split out of the encoder's weights.
fn stanford(dir: &Path, st_model: &StModelConfig, hidden: usize) -> Result<Parts, PackageError> {
    let path = dir.join("artifact.metadata");
    let m: Metadata = match path.exists() {
        true => read_json(&path)?,
        false => Metadata::default(),
    };
    // An empty marker or length counts as none, as Python's `or` takes it.
    let marker = |named: &Option<String>, default: &str| {
        let name = named
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(default);
        format!("{name} ")
    };
    let markers = [
        marker(&m.query_token_id, "[unused0]"),
        marker(&m.doc_token_id, "[unused1]"),
    ];
    let mut prompts = st_model.prompts.clone();
    for (side, marker) in ["query", "document"].into_iter().zip(&markers) {
        prompts
            .entry(side.to_string())
            .or_insert_with(|| marker.clone());
    }
    let mut tokenizer = read_tokenizer(dir)?;
    let mut replaced = register_markers(&mut tokenizer, &markers)?;
    let (outputs, encoder, projection) = split_projection(dir, hidden)?;
    replaced.push((ENCODER.to_string(), encoder));
    replaced.push((PROJECTION.to_string(), projection));
    Ok(Parts {
        dense: vec![Dense {
            path: PROJECTION.to_string(),
            inputs: hidden,
            outputs,
            bias: false,
            activation: DenseActivation::Identity,
        }],
        normalize: true,
        rules: Rules {
            lengths: StLengths {
                query_length: None,
                document_length: m.doc_maxlen,
                query_expansion: Some(StExpansion {
                    strategy: "fixed".into(),
                    attend: m.attend_to_mask_tokens.unwrap_or(false),
                    token: None,
                    length: m.query_maxlen.filter(|&n| n > 0).unwrap_or(32),
                }),
            },
            lengths_file: "artifact.metadata",
            skiplist_words: match m.mask_punctuation {
                Value::Bool(false) | Value::Null => Vec::new(),
                _ => punctuation(),
            },
            similarity: LateSimilarity::Maxsim,
            mask: true,
        },
        tokenizer,
        replaced,
        prompts: Some(prompts),
    })
}

/// The checkpoint's `linear.weight` ([outputs, hidden]) as a Dense module's weights, and the
/// encoder's weights without it: the projection's width, the encoder's bytes, the projection's.
fn split_projection(dir: &Path, hidden: usize) -> Result<(usize, Vec<u8>, Vec<u8>), PackageError> {
    let (bytes, _) = super::super::torch_weights::read(dir)?;
    let bad = |e: safetensors::SafeTensorError| unusable(format!("{ENCODER}: {e}"));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(bad)?;
    let weight = file.tensor("linear.weight").map_err(|_| {
        unusable(format!(
            "{ENCODER}: no linear.weight; a Stanford ColBERT checkpoint (architectures HF_ColBERT) keeps its projection there"
        ))
    })?;
    let outputs = match weight.shape() {
        [o, i] if *i == hidden => *o,
        shape => {
            return Err(unusable(format!(
                "{ENCODER}: linear.weight is {shape:?}; it must be [outputs, {hidden}] (the encoder's width)"
            )));
        }
    };
    let projection = safetensors::serialize([("linear.weight", weight)], None).map_err(bad)?;
    let rest: Vec<(String, safetensors::tensor::TensorView<'_>)> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "linear.weight")
        .collect();
    let encoder = safetensors::serialize(rest, header.metadata().clone()).map_err(bad)?;
    Ok((outputs, encoder, projection))
}

fn punctuation() -> Vec<String> {
    PUNCTUATION.chars().map(String::from).collect()
}

fn read_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer, PackageError> {
    tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| unusable(format!("tokenizer.json: {e}")))
}

/// Registers each marker the tokenizer knows (as a whole, or its first word) but would not
/// keep as one token, as sentence-transformers does: a special token, matched before
/// normalisation. The tokenizer's new bytes when it changed.
fn register_markers(
    tokenizer: &mut tokenizers::Tokenizer,
    markers: &[String],
) -> Result<Vec<(String, Vec<u8>)>, PackageError> {
    let vocab = tokenizer.get_vocab(true);
    // Checked as the markers tokenize alone, whatever padding the file sets.
    let mut plain = tokenizer.clone();
    plain.with_padding(None);
    plain
        .with_truncation(None)
        .map_err(|e| unusable(format!("tokenizer.json: {e}")))?;
    let mut register = Vec::new();
    for value in markers {
        let Some(first) = value.split_whitespace().next() else {
            continue;
        };
        let Some(marker) = [value.as_str(), first]
            .into_iter()
            .find(|m| vocab.contains_key(*m))
        else {
            // A marker the vocabulary lacks stays text, as sentence-transformers leaves it.
            continue;
        };
        let pieces = plain
            .encode(marker, false)
            .map_err(|e| unusable(format!("tokenizer.json: cannot tokenize {marker:?}: {e}")))?;
        if pieces.get_tokens() != [marker] {
            register.push(tokenizers::AddedToken::from(marker.to_string(), true).normalized(false));
        }
    }
    if register.is_empty() {
        return Ok(Vec::new());
    }
    tokenizer
        .add_special_tokens(register)
        .map_err(|e| unusable(format!("tokenizer.json: cannot register its markers: {e}")))?;
    let json = tokenizer
        .to_string(false)
        .map_err(|e| unusable(format!("tokenizer.json: cannot write it back: {e}")))?;
    Ok(vec![("tokenizer.json".to_string(), json.into_bytes())])
}

#[cfg(test)]
mod tests;
