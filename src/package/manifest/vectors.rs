//! What a model's vectors may become, as its manifest says: the Dense modules after pooling,
//! the widths a request may cut vectors to (Matryoshka), and the prompt a request's texts get
//! (by name, by `input_type`, or the default).

use serde::{Deserialize, Serialize};

use super::{Manifest, ManifestError, ModelKind, invalid};

/// What a request asks of a model that its manifest does not allow: the caller's mistake,
/// told before the requested model loads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// `dimensions` outside 1 to the model's width.
    #[error("dimensions must be between 1 and {max} for model {id}, got {asked}")]
    WidthOutOfRange {
        /// Model id.
        id: String,
        /// The model's width.
        max: usize,
        /// What the request asked.
        asked: i64,
    },
    /// `dimensions` a Matryoshka model was not trained for.
    #[error("model {id} was trained for {trained} dimensions; {asked} is not one of them")]
    UntrainedWidth {
        /// Model id.
        id: String,
        /// The widths it was trained for, listed.
        trained: String,
        /// What the request asked.
        asked: i64,
    },
    /// Both ways of choosing a prompt at once.
    #[error("give prompt_name or input_type, not both")]
    PromptAndInputType,
    /// A prompt name the model does not have.
    #[error("model {id} has no prompt {name:?}; {}", list_prompts(known))]
    UnknownPrompt {
        /// Model id.
        id: String,
        /// The name asked for.
        name: String,
        /// The model's prompts.
        known: Vec<String>,
    },
    /// An instruction for a model whose pair template has no place for one.
    #[error(
        "model {id} takes no instruction (a reranker whose pair template has one, such as Qwen3-Reranker, does); leave \"instruction\" out"
    )]
    NoInstruction {
        /// Model id.
        id: String,
    },
}

fn list_prompts(known: &[String]) -> String {
    if known.is_empty() {
        "it has none, leave prompt_name out".to_string()
    } else {
        format!("its prompts: {}", known.join(", "))
    }
}

/// What a text is to a retrieval model (`input_type`, as Cohere-, Voyage- and Nomic-style
/// clients send it), which picks the model's prompt for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// A search query.
    Query,
    /// A document searched for.
    Document,
}

impl InputType {
    /// The prompt names that mean this type, in the order looked for.
    fn prompt_names(self) -> &'static [&'static str] {
        match self {
            InputType::Query => &["query", "search_query"],
            InputType::Document => &["document", "search_document", "passage", "doc"],
        }
    }
}

/// The widths a model's vectors may be cut to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matryoshka {
    /// The widths it was trained for (`matryoshka_dims`), widest first; empty: any width.
    #[serde(default)]
    pub dimensions: Vec<usize>,
    /// Whether a vector is layer-normalised (without weights) before it is cut, as
    /// nomic-embed-text-v1.5's model card does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub layer_norm: bool,
}

/// One Dense module after pooling (sentence-transformers' `models.Dense`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dense {
    /// Its safetensors file in the package (`linear.weight`, and `linear.bias` with `bias`).
    pub path: String,
    /// Width of its input.
    pub inputs: usize,
    /// Width of its output.
    pub outputs: usize,
    /// Whether it adds a bias.
    pub bias: bool,
    /// The function after it.
    pub activation: DenseActivation,
}

/// The activation of a Dense module, as sentence-transformers names it
/// (`activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenseActivation {
    /// `torch.nn.modules.linear.Identity`.
    Identity,
    /// `torch.nn.modules.activation.Tanh`.
    Tanh,
}

impl Manifest {
    /// What follows pooling: the Dense modules chain, end at `dimensions` and name listed
    /// files; the Matryoshka widths fit the vectors.
    pub(super) fn validate_head(&self) -> Result<(), ManifestError> {
        for (i, d) in self.dense.iter().enumerate() {
            let field = format!("dense[{i}]");
            if d.inputs == 0 || d.outputs == 0 || d.inputs > 65536 || d.outputs > 65536 {
                return Err(invalid(
                    field,
                    "inputs and outputs must be between 1 and 65536",
                ));
            }
            if let Some(next) = self.dense.get(i + 1)
                && next.inputs != d.outputs
            {
                return Err(invalid(
                    format!("dense[{}].inputs", i + 1),
                    format!(
                        "{} does not take dense[{i}]'s {} outputs",
                        next.inputs, d.outputs
                    ),
                ));
            }
            if !self.files.iter().any(|f| f.path == d.path) {
                return Err(invalid(
                    format!("{field}.path"),
                    format!("{:?} is not one of the listed files", d.path),
                ));
            }
        }
        if let Some(last) = self.dense.last()
            && last.outputs != self.dimensions
        {
            return Err(invalid(
                "dimensions",
                format!(
                    "{} differs from the last Dense module's {} outputs",
                    self.dimensions, last.outputs
                ),
            ));
        }
        if self.kind == ModelKind::Reranker && (!self.dense.is_empty() || self.matryoshka.is_some())
        {
            return Err(invalid(
                if self.dense.is_empty() {
                    "matryoshka"
                } else {
                    "dense"
                },
                "a reranker makes scores, not vectors",
            ));
        }
        if let Some(m) = &self.matryoshka
            && let Some(&bad) = m
                .dimensions
                .iter()
                .find(|&&d| d == 0 || d > self.dimensions)
        {
            return Err(invalid(
                "matryoshka.dimensions",
                format!("{bad} is not between 1 and the model's {}", self.dimensions),
            ));
        }
        Ok(())
    }

    /// Width of the encoder's token vectors: the first Dense module's inputs, else the
    /// vectors' own `dimensions`.
    pub fn hidden_size(&self) -> usize {
        self.dense.first().map_or(self.dimensions, |d| d.inputs)
    }

    /// Checks that vectors of this model may be cut to `width` (OpenAI's `dimensions`): a
    /// width it was trained for when the manifest lists them (or its full width), else any
    /// from 1 to its own. The refusal names the widths that would do.
    pub fn check_width(&self, width: i64) -> Result<usize, Mismatch> {
        let trained = self.matryoshka.as_ref().map(|m| m.dimensions.as_slice());
        let ok = usize::try_from(width)
            .ok()
            .filter(|w| (1..=self.dimensions).contains(w));
        match (trained, ok) {
            (Some(list), Some(w)) if !list.is_empty() => {
                if list.contains(&w) || w == self.dimensions {
                    Ok(w)
                } else {
                    Err(Mismatch::UntrainedWidth {
                        id: self.id.clone(),
                        trained: list
                            .iter()
                            .map(usize::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        asked: width,
                    })
                }
            }
            (_, Some(w)) => Ok(w),
            _ => Err(Mismatch::WidthOutOfRange {
                id: self.id.clone(),
                max: self.dimensions,
                asked: width,
            }),
        }
    }

    /// The text to put before a request's texts: the prompt it names, else the one its
    /// `input_type` maps to (`query` or nomic's `search_query`; `document`, `search_document`,
    /// `passage` or `doc`; none when the model has
    /// no such prompt, as bge has none for documents), else the default prompt. The error
    /// names what the model has.
    pub fn prompt_for(
        &self,
        name: Option<&str>,
        input_type: Option<InputType>,
    ) -> Result<Option<&str>, Mismatch> {
        let name = match (name, input_type) {
            (Some(_), Some(_)) => return Err(Mismatch::PromptAndInputType),
            (Some(n), None) => Some(n),
            (None, Some(t)) => {
                return Ok(t
                    .prompt_names()
                    .iter()
                    .find_map(|n| self.prompts.get(*n))
                    .map(String::as_str));
            }
            (None, None) => self.default_prompt.as_deref(),
        };
        match name {
            None => Ok(None),
            Some(name) => self.prompt(name).map(Some),
        }
    }

    /// The prompt for a model whose `input_type` also picks a side (a sparse model's query
    /// look-up, a multi-vector model's query expansion), so a request may give both: the
    /// prompt it names, else the one its `input_type` maps to, else (no `input_type`) the
    /// default prompt, as sentence-transformers' `encode_query` and `encode_document` pick.
    pub fn side_prompt(
        &self,
        name: Option<&str>,
        input_type: Option<InputType>,
    ) -> Result<Option<&str>, Mismatch> {
        match name {
            Some(name) => self.prompt(name).map(Some),
            None => self.prompt_for(None, input_type),
        }
    }

    /// The prompt called `name`; the refusal lists the model's prompts.
    pub fn prompt(&self, name: &str) -> Result<&str, Mismatch> {
        self.prompts
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Mismatch::UnknownPrompt {
                id: self.id.clone(),
                name: name.to_string(),
                known: self.prompts.keys().cloned().collect(),
            })
    }

    /// Checks that the model takes a task instruction (a reranker whose pair template holds
    /// `{instruction}`, such as Qwen3-Reranker).
    pub fn check_instruction(&self) -> Result<(), Mismatch> {
        let takes = self
            .pair_template
            .as_ref()
            .is_some_and(|t| t.takes_instruction());
        if takes {
            Ok(())
        } else {
            Err(Mismatch::NoInstruction {
                id: self.id.clone(),
            })
        }
    }
}
