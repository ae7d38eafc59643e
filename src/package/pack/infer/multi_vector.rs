//! What a sentence-transformers MultiVectorEncoder folder (ColBERT) implies: the transformer,
//! Dense projections of every token, `MultiVectorMask`'s document skip-list, `Normalize`; the
//! query and document lengths and query expansion its `Transformer` saved; the similarity.
//! Older layouts (`legacy_colbert`: PyLate's, Stanford-NLP's) are read into the same [`Rules`].

use std::path::Path;

use serde::Deserialize;

use super::super::super::error::PackageError;
use super::super::super::manifest::{
    Architecture, Dense, LateInteraction, LateSimilarity, ModelKind, Pooling, QueryExpansion,
};
use super::{
    Inferred, Length, StModelConfig, StModule, dense_module, has_module, module_class,
    output_width, read_json, read_json_or_default, unusable,
};

/// Whether the folder holds a MultiVectorEncoder: sentence-transformers says so, or its
/// modules have a `MultiVectorMask`.
pub(super) fn is_multi_vector(dir: &Path, st_model: &StModelConfig) -> Result<bool, PackageError> {
    Ok(st_model.model_type.as_deref() == Some("MultiVectorEncoder")
        || has_module(dir, "MultiVectorMask")?)
}

/// The Transformer's per-task lengths in `sentence_bert_config.json`.
#[derive(Deserialize, Default)]
pub(super) struct StLengths {
    pub query_length: Option<usize>,
    pub document_length: Option<usize>,
    pub query_expansion: Option<StExpansion>,
}

#[derive(Deserialize)]
pub(super) struct StExpansion {
    pub strategy: String,
    #[serde(default)]
    pub attend: bool,
    pub token: Option<String>,
    pub length: usize,
}

/// What a folder says of its two sides, whichever layout says it.
pub(super) struct Rules {
    pub lengths: StLengths,
    /// The file the lengths are read from, for the errors that name it.
    pub lengths_file: &'static str,
    pub skiplist_words: Vec<String>,
    pub similarity: LateSimilarity,
    /// Whether a mask makes the scoring mask (a MultiVectorMask, or an older layout's own
    /// rules): expansion tokens count in scoring whether attended to or not. Without one the
    /// tokenizer's attention mask is the scoring mask, so expansion tokens nothing attends to
    /// are not output either, which makes them no expansion at all (the query is still cut
    /// at the expansion's length).
    pub mask: bool,
}

/// A multi-vector folder as read: its projections, whether each token vector is normalised,
/// its rules, its tokenizer (markers registered), and the files the package stores in place
/// of the folder's, with the prompts the layout implies.
pub(super) struct Parts {
    pub dense: Vec<Dense>,
    pub normalize: bool,
    pub rules: Rules,
    pub tokenizer: tokenizers::Tokenizer,
    pub replaced: Vec<(String, Vec<u8>)>,
    pub prompts: Option<std::collections::BTreeMap<String, String>>,
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

const SUPPORTED: &str = "supported: a Transformer, then Dense, Normalize and MultiVectorMask modules, \
     the token vectors projected by Dense modules and normalised at most after the last of them";

/// The feature keys a module reads and writes, as its `config.json` names them
/// (sentence-transformers 6.2's Dense and Normalize read `sentence_embedding` by default and
/// write what they read).
#[derive(Deserialize, Default)]
struct StKeys {
    module_input_name: Option<String>,
    module_output_name: Option<String>,
}

/// The key the token vectors travel under, which the encoder's output is read from.
const TOKENS: &str = "token_embeddings";

/// What the modules did to the transformer's token vectors on their way to a feature key.
#[derive(Clone)]
enum Step {
    /// A Dense module (at this position of `modules.json`) projected them.
    Dense(usize, Dense),
    Normalize,
}

/// `(input, output)` feature keys of the module at `path`.
fn keys(dir: &Path, path: &str) -> Result<(String, String), PackageError> {
    let file = dir.join(path).join("config.json");
    let k: StKeys = read_json_or_default(&file)?;
    let input = k
        .module_input_name
        .unwrap_or_else(|| "sentence_embedding".into());
    let output = k.module_output_name.unwrap_or_else(|| input.clone());
    Ok((input, output))
}

/// A MultiVectorEncoder folder of `architecture` whose token vectors are `hidden` wide. Its
/// modules run as sentence-transformers runs them: each reads and writes the feature keys its
/// config names, and the encoder outputs what `token_embeddings` holds at the end, on the
/// scoring mask a `MultiVectorMask` makes (without one, the tokenizer's).
pub(super) fn infer(
    dir: &Path,
    st_model: &StModelConfig,
    architecture: Architecture,
    hidden: usize,
    max_positions: usize,
) -> Result<Inferred, PackageError> {
    let modules: Vec<StModule> = read_json(&dir.join("modules.json"))?;
    let mut features: std::collections::HashMap<String, Vec<Step>> =
        std::collections::HashMap::from([(transformer_output(dir)?, Vec::new())]);
    let mut mask = None;
    for (i, m) in modules.iter().enumerate() {
        let refused = || {
            unusable(format!(
                "modules.json: module {} at position {i} is not supported in a multi-vector encoder ({SUPPORTED})",
                m.kind
            ))
        };
        match (i, module_class(&m.kind)) {
            (0, Some("Transformer")) => {}
            (i, Some("Dense")) if i > 0 => {
                let (input, output) = keys(dir, &m.path)?;
                let mut steps = features.get(&input).cloned().ok_or_else(|| {
                    unusable(format!(
                        "modules.json: module {} at position {i} reads the feature {input:?}, which no module before it writes (sentence-transformers fails on it too)",
                        m.kind
                    ))
                })?;
                steps.push(Step::Dense(i, dense_module(dir, &m.path)?));
                features.insert(output, steps);
            }
            (i, Some("Normalize")) if i > 0 => {
                // A feature nobody wrote is left alone (a sentence embedding, which a
                // multi-vector model has not).
                let (input, output) = keys(dir, &m.path)?;
                if let Some(mut steps) = features.get(&input).cloned() {
                    steps.push(Step::Normalize);
                    features.insert(output, steps);
                }
            }
            (i, Some("MultiVectorMask")) if i > 0 && mask.is_none() => mask = Some(m.path.clone()),
            _ => return Err(refused()),
        }
    }
    let steps = features.remove(TOKENS).ok_or_else(|| {
        unusable(format!(
            "modules.json: no module writes {TOKENS}, the token vectors a multi-vector encoder outputs"
        ))
    })?;
    let (mut dense, mut normalize) = (Vec::new(), false);
    for step in steps {
        match step {
            Step::Dense(_, d) if !normalize => dense.push(d),
            Step::Dense(i, _) => {
                return Err(unusable(format!(
                    "modules.json: module {} at position {i} projects token vectors a Normalize before it normalised ({SUPPORTED})",
                    modules[i].kind
                )));
            }
            Step::Normalize => normalize = true,
        }
    }
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| unusable(format!("tokenizer.json: {e}")))?;
    let parts = Parts {
        dense,
        normalize,
        rules: native_rules(dir, mask.as_deref(), st_model)?,
        tokenizer,
        replaced: Vec::new(),
        prompts: None,
    };
    finish(dir, architecture, hidden, max_positions, parts)
}

/// The feature key the Transformer writes its token vectors to (`sentence_bert_config.json`'s
/// `module_output_name`, `token_embeddings` by default).
fn transformer_output(dir: &Path) -> Result<String, PackageError> {
    #[derive(Deserialize, Default)]
    struct Output {
        module_output_name: Option<String>,
    }
    let file = dir.join("sentence_bert_config.json");
    let o: Output = read_json_or_default(&file)?;
    Ok(o.module_output_name.unwrap_or_else(|| TOKENS.into()))
}

/// A multi-vector model of `parts`: its token vectors as wide as the last projection's, the
/// longest text as long as the longer side (within the model's positions).
pub(super) fn finish(
    dir: &Path,
    architecture: Architecture,
    hidden: usize,
    max_positions: usize,
    parts: Parts,
) -> Result<Inferred, PackageError> {
    let length = Length::as_sentence_transformers_reads(dir, max_positions)?;
    let late = late_interaction(
        dir,
        &parts.rules,
        &parts.tokenizer,
        length.tokens,
        max_positions,
    )?;
    // sentence-transformers cuts each side at its own length, past `max_seq_length` if need be
    // (answerai-colbert-small-v1's PyLate copy: documents of 300 tokens, max_seq_length 299).
    let longest = late.query_length.max(late.document_length);
    let length = match length.tokens < longest {
        true => Length::within(longest, parts.rules.lengths_file),
        false => length,
    };
    Ok(Inferred {
        dense: parts.dense.clone(),
        normalize: parts.normalize,
        late_interaction: Some(late),
        prompts: parts.prompts,
        replaced: parts.replaced,
        ..Inferred::new(
            architecture,
            ModelKind::MultiVector,
            Pooling::Tokens,
            output_width(&parts.dense, hidden)?,
            length,
        )
    })
}

/// A MultiVectorEncoder's rules: the Transformer's lengths and expansion, the mask's
/// skip-list, the similarity.
fn native_rules(
    dir: &Path,
    mask_path: Option<&str>,
    st_model: &StModelConfig,
) -> Result<Rules, PackageError> {
    let config = dir.join("sentence_bert_config.json");
    let lengths: StLengths = read_json_or_default(&config)?;
    let Some(mask_path) = mask_path else {
        return Ok(Rules {
            lengths,
            lengths_file: "sentence_bert_config.json",
            skiplist_words: Vec::new(),
            similarity: similarity(st_model)?,
            mask: false,
        });
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
    Ok(Rules {
        lengths,
        lengths_file: "sentence_bert_config.json",
        skiplist_words: m.skiplist_words,
        similarity: similarity(st_model)?,
        mask: true,
    })
}

/// The similarity `config_sentence_transformers.json` names.
fn similarity(st_model: &StModelConfig) -> Result<LateSimilarity, PackageError> {
    match st_model.similarity_fn_name.as_deref() {
        None | Some("maxsim") => Ok(LateSimilarity::Maxsim),
        Some("meanmaxsim") => Ok(LateSimilarity::Meanmaxsim),
        Some(other) => Err(unusable(format!(
            "config_sentence_transformers.json: similarity_fn_name {other:?} is not supported for a multi-vector encoder (maxsim, meanmaxsim)"
        ))),
    }
}

/// The query and document rules, as sentence-transformers applies them to a model of
/// `max_positions`: a query is cut at `query_length` (with `fixed` expansion, at its
/// `length`; with `min`, at the larger of the two) and padded with the expansion token to the
/// expansion's `length`; a side without a length is cut at the folder's `saved` length.
fn late_interaction(
    dir: &Path,
    rules: &Rules,
    tokenizer: &tokenizers::Tokenizer,
    saved: usize,
    max_positions: usize,
) -> Result<LateInteraction, PackageError> {
    let file = rules.lengths_file;
    let lengths = &rules.lengths;
    let query_length = lengths.query_length.unwrap_or(saved);
    let (query_length, query_expansion) = match &lengths.query_expansion {
        None => (query_length, None),
        Some(x) => {
            let cap = match x.strategy.as_str() {
                "fixed" => x.length,
                "min" => query_length.max(x.length),
                other => {
                    return Err(unusable(format!(
                        "{file}: query_expansion strategy {other:?} is not supported (fixed, min)"
                    )));
                }
            };
            let token_id = expansion_token(dir, x.token.as_deref(), tokenizer)?;
            let scored = rules.mask || x.attend;
            let expansion = QueryExpansion {
                token_id,
                length: x.length,
                attend: x.attend,
            };
            (cap, scored.then_some(expansion))
        }
    };
    // As sentence-transformers resolves them: a word the vocabulary lacks is dropped.
    let mut skiplist: Vec<u32> = rules
        .skiplist_words
        .iter()
        .filter_map(|w| tokenizer.token_to_id(w))
        .collect();
    skiplist.sort_unstable();
    skiplist.dedup();
    let document_length = lengths.document_length.unwrap_or(saved);
    for (key, len) in [
        ("query length", query_length),
        ("document_length", document_length),
    ] {
        if len > max_positions {
            return Err(unusable(format!(
                "{file}: the {key} {len} exceeds the model's {max_positions} positions"
            )));
        }
    }
    Ok(LateInteraction {
        query_length,
        document_length,
        query_expansion,
        skiplist,
        similarity: rules.similarity,
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
    // transformers reads the special tokens from tokenizer_config.json, and from
    // special_tokens_map.json where older saves (Stanford's checkpoints) keep them.
    let mut special = StTokens::default();
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(file);
        if special.mask_token.is_none() && special.eos_token.is_none() && path.exists() {
            special = read_json(&path)?;
        }
    }
    let name = named
        .map(str::to_string)
        .or_else(|| special.mask_token.as_ref().map(|t| t.text().to_string()))
        .or_else(|| special.eos_token.as_ref().map(|t| t.text().to_string()))
        .ok_or_else(|| {
            unusable(
                "query_expansion names no token, and neither tokenizer_config.json nor special_tokens_map.json has a mask_token or eos_token",
            )
        })?;
    tokenizer.token_to_id(&name).ok_or_else(|| {
        unusable(format!(
            "query_expansion's token {name:?} is not in tokenizer.json's vocabulary"
        ))
    })
}
