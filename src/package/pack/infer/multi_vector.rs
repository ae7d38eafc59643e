//! What a sentence-transformers MultiVectorEncoder folder (ColBERT) implies: the transformer,
//! Dense projections of every token, `MultiVectorMask`'s document skip-list, `Normalize`; the
//! query and document lengths and query expansion its `Transformer` saved; the similarity.

use std::path::Path;

use serde::Deserialize;

use super::super::super::error::PackageError;
use super::super::super::manifest::{
    Architecture, LateInteraction, LateSimilarity, ModelKind, Pooling, QueryExpansion,
};
use super::{
    Inferred, Length, StModelConfig, StModule, dense_module, has_module, module_class,
    output_width, read_json, unusable,
};

/// Whether the folder holds a MultiVectorEncoder: sentence-transformers says so, or its
/// modules have a `MultiVectorMask`.
pub(super) fn is_multi_vector(dir: &Path, st_model: &StModelConfig) -> Result<bool, PackageError> {
    Ok(st_model.model_type.as_deref() == Some("MultiVectorEncoder")
        || has_module(dir, "MultiVectorMask")?)
}

/// The Transformer's per-task lengths in `sentence_bert_config.json`.
#[derive(Deserialize, Default)]
struct StLengths {
    query_length: Option<usize>,
    document_length: Option<usize>,
    query_expansion: Option<StExpansion>,
}

#[derive(Deserialize)]
struct StExpansion {
    strategy: String,
    #[serde(default)]
    attend: bool,
    token: Option<String>,
    length: usize,
}

/// `MultiVectorMask`'s `config.json`.
#[derive(Deserialize)]
struct StMask {
    #[serde(default)]
    skiplist_words: Vec<String>,
    skiplist_tasks: Option<Vec<String>>,
    keep_only_token_ids: Option<Vec<u32>>,
}

/// The special tokens `tokenizer_config.json` names (a string, or transformers' AddedToken).
#[derive(Deserialize, Default)]
struct StTokens {
    mask_token: Option<TokenName>,
    eos_token: Option<TokenName>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TokenName {
    Plain(String),
    Added { content: String },
}

impl TokenName {
    fn text(&self) -> &str {
        match self {
            TokenName::Plain(s) | TokenName::Added { content: s } => s,
        }
    }
}

const SUPPORTED: &str =
    "supported: a Transformer, Dense modules, a MultiVectorMask, then at most a Normalize";

/// A MultiVectorEncoder folder of `architecture` whose token vectors are `hidden` wide.
pub(super) fn infer(
    dir: &Path,
    st_model: &StModelConfig,
    architecture: Architecture,
    hidden: usize,
    max_positions: usize,
) -> Result<Inferred, PackageError> {
    let modules: Vec<StModule> = read_json(&dir.join("modules.json"))?;
    let (mut dense, mut mask, mut normalize) = (Vec::new(), None, false);
    for (i, m) in modules.iter().enumerate() {
        match (i, module_class(&m.kind), mask.is_some(), normalize) {
            (0, Some("Transformer"), ..) => {}
            (i, Some("Dense"), false, false) if i > 0 => dense.push(dense_module(dir, &m.path)?),
            (i, Some("MultiVectorMask"), false, false) if i > 0 => mask = Some(m.path.clone()),
            (_, Some("Normalize"), _, false) => normalize = true,
            _ => {
                return Err(unusable(format!(
                    "modules.json: module {} at position {i} is not supported in a multi-vector encoder ({SUPPORTED})",
                    m.kind
                )));
            }
        }
    }
    let mask =
        mask.ok_or_else(|| unusable(format!("modules.json: no MultiVectorMask ({SUPPORTED})")))?;
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| unusable(format!("tokenizer.json: {e}")))?;
    let length = Length::as_sentence_transformers_reads(dir, max_positions)?;
    let late = late_interaction(dir, &mask, st_model, &tokenizer, length.tokens)?;
    Ok(Inferred {
        architecture,
        dimensions: output_width(&dense, hidden)?,
        dense,
        max_seq_length: length.tokens,
        length_note: length.note,
        pooling: Pooling::Tokens,
        normalize,
        kind: ModelKind::MultiVector,
        labels: None,
        activation: None,
        pair_template: None,
        logit_rows: None,
        sparse_activation: None,
        source_dir: None,
        query_weights: None,
        late_interaction: Some(late),
        outputs: Vec::new(),
        output_heads: None,
        output_files: Vec::new(),
    })
}

/// The query and document rules, as sentence-transformers applies them with a longest text of
/// `max_len` tokens: a query is cut at `query_length` (with `fixed` expansion, at its
/// `length`; with `min`, at the larger of the two) and padded with the expansion token to
/// the expansion's `length`.
fn late_interaction(
    dir: &Path,
    mask_path: &str,
    st_model: &StModelConfig,
    tokenizer: &tokenizers::Tokenizer,
    max_len: usize,
) -> Result<LateInteraction, PackageError> {
    let config = dir.join("sentence_bert_config.json");
    let lengths: StLengths = match config.exists() {
        true => read_json(&config)?,
        false => StLengths::default(),
    };
    let query_length = lengths.query_length.unwrap_or(max_len);
    let (query_length, query_expansion) = match lengths.query_expansion {
        None => (query_length, None),
        Some(x) => {
            let cap = match x.strategy.as_str() {
                "fixed" => x.length,
                "min" => query_length.max(x.length),
                other => {
                    return Err(unusable(format!(
                        "sentence_bert_config.json: query_expansion strategy {other:?} is not supported (fixed, min)"
                    )));
                }
            };
            let token_id = expansion_token(dir, x.token.as_deref(), tokenizer)?;
            (
                cap,
                Some(QueryExpansion {
                    token_id,
                    length: x.length,
                    attend: x.attend,
                }),
            )
        }
    };
    let mask_config = format!("{mask_path}/config.json");
    let m: StMask = read_json(&dir.join(&mask_config))?;
    if m.skiplist_tasks
        .as_ref()
        .is_some_and(|t| t != &["document"])
    {
        return Err(unusable(format!(
            "{mask_config}: skiplist_tasks {:?} is not supported (only [\"document\"], the default)",
            m.skiplist_tasks.unwrap_or_default()
        )));
    }
    if m.keep_only_token_ids.is_some() {
        return Err(unusable(format!(
            "{mask_config}: keep_only_token_ids is not supported"
        )));
    }
    // As sentence-transformers resolves them: a word the vocabulary lacks is dropped.
    let mut skiplist: Vec<u32> = m
        .skiplist_words
        .iter()
        .filter_map(|w| tokenizer.token_to_id(w))
        .collect();
    skiplist.sort_unstable();
    skiplist.dedup();
    let similarity = match st_model.similarity_fn_name.as_deref() {
        None | Some("maxsim") => LateSimilarity::Maxsim,
        Some("meanmaxsim") => LateSimilarity::Meanmaxsim,
        Some(other) => {
            return Err(unusable(format!(
                "config_sentence_transformers.json: similarity_fn_name {other:?} is not supported for a multi-vector encoder (maxsim, meanmaxsim)"
            )));
        }
    };
    for (key, len) in [
        ("query length", query_length),
        (
            "document_length",
            lengths.document_length.unwrap_or(max_len),
        ),
    ] {
        if len > max_len {
            return Err(unusable(format!(
                "sentence_bert_config.json: the {key} {len} exceeds the model's {max_len} tokens"
            )));
        }
    }
    Ok(LateInteraction {
        query_length,
        document_length: lengths.document_length.unwrap_or(max_len),
        query_expansion,
        skiplist,
        similarity,
        drop_first: false,
    })
}

/// The expansion token's id: the one named, else the tokenizer's mask token, else its end of
/// text (sentence-transformers' order).
fn expansion_token(
    dir: &Path,
    named: Option<&str>,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<u32, PackageError> {
    let path = dir.join("tokenizer_config.json");
    let special: StTokens = match path.exists() {
        true => read_json(&path)?,
        false => StTokens::default(),
    };
    let name = named
        .map(str::to_string)
        .or_else(|| special.mask_token.as_ref().map(|t| t.text().to_string()))
        .or_else(|| special.eos_token.as_ref().map(|t| t.text().to_string()))
        .ok_or_else(|| {
            unusable(
                "query_expansion names no token, and tokenizer_config.json has no mask_token or eos_token",
            )
        })?;
    tokenizer.token_to_id(&name).ok_or_else(|| {
        unusable(format!(
            "query_expansion's token {name:?} is not in tokenizer.json's vocabulary"
        ))
    })
}
