//! An embedding model's outputs beside its vector (bge-m3's): term weights and token vectors
//! computed from the same pass's token vectors, so one model, one load and one memory entry
//! serve dense, sparse and late-interaction requests. The contract's `outputs: [dense,
//! sparse, multi_vector]` names them; `output_heads` holds the layers that make them.

use serde::{Deserialize, Serialize};

use super::{Dense, Manifest, ManifestError, ModelKind, invalid};

/// One output an embedding model makes, as `outputs:` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputName {
    /// Its vector (`/v1/embeddings`, `/embed`).
    Dense,
    /// Term weights (`/embed_sparse`).
    Sparse,
    /// Token vectors (`/embed_all`, MaxSim in `/rerank`).
    MultiVector,
}

impl OutputName {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputName::Dense => "dense",
            OutputName::Sparse => "sparse",
            OutputName::MultiVector => "multi_vector",
        }
    }
}

/// `output_heads:`, the layers of the outputs beside the vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputHeads {
    /// Term weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<TokenWeights>,
    /// Token vectors: each token's vector through this linear layer, normalised, scored as
    /// `late_interaction` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_vector: Option<Dense>,
}

/// bge-m3's `sparse_linear`: a token's weight is `max(0, linear(token vector))`; a text's
/// weight of a term is the largest of its tokens of that id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenWeights {
    /// The one-output linear layer.
    pub linear: Dense,
    /// Token ids that get no weight (bge-m3's: the tokenizer's CLS, EOS, PAD and UNK).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<u32>,
    /// The vocabulary's size: the term ids' bound.
    pub vocabulary: usize,
}

impl Manifest {
    /// Whether the model answers requests for a model of `kind`: its own, or an embedding
    /// model's listed outputs.
    pub fn serves(&self, kind: ModelKind) -> bool {
        let listed = |o| self.outputs.contains(&o);
        self.kind == kind
            // A two-tower model's text tower embeds texts.
            || (self.kind == ModelKind::ImageText && kind == ModelKind::Embedding)
            || (self.kind == ModelKind::Embedding
                && match kind {
                    ModelKind::Sparse => listed(OutputName::Sparse),
                    ModelKind::MultiVector => listed(OutputName::MultiVector),
                    _ => false,
                })
    }

    /// The term-weight head, when the model lists sparse among its outputs.
    pub fn sparse_head(&self) -> Option<&TokenWeights> {
        self.output_heads.as_ref()?.sparse.as_ref()
    }

    /// The token-vector head, when the model lists multi_vector among its outputs.
    pub fn multi_vector_head(&self) -> Option<&Dense> {
        self.output_heads.as_ref()?.multi_vector.as_ref()
    }

    /// Only an embedding model lists outputs: `dense` and those `output_heads` make, each
    /// once; each head takes the encoder's token vectors and names a listed file, and token
    /// vectors come with their `late_interaction` rules.
    pub(super) fn validate_outputs(&self) -> Result<(), ManifestError> {
        if self.outputs.is_empty() {
            return match self.output_heads {
                Some(_) => Err(invalid(
                    "output_heads",
                    "only a model that lists its outputs has them: add outputs: [dense, ...]",
                )),
                None => Ok(()),
            };
        }
        if self.kind != ModelKind::Embedding {
            return Err(invalid(
                "outputs",
                format!(
                    "only an embedding model lists outputs beside its vector, and this is kind {}",
                    self.kind.as_str()
                ),
            ));
        }
        let mut seen = Vec::new();
        for o in &self.outputs {
            if seen.contains(o) {
                return Err(invalid(
                    "outputs",
                    format!("{} is listed twice", o.as_str()),
                ));
            }
            seen.push(*o);
        }
        if !seen.contains(&OutputName::Dense) {
            return Err(invalid(
                "outputs",
                "an embedding model's own vector is one of its outputs: list dense",
            ));
        }
        for (name, has) in [
            (OutputName::Sparse, self.sparse_head().is_some()),
            (OutputName::MultiVector, self.multi_vector_head().is_some()),
        ] {
            if seen.contains(&name) != has {
                return Err(invalid(
                    format!("output_heads.{}", name.as_str()),
                    format!(
                        "a model has it exactly when outputs lists {}",
                        name.as_str()
                    ),
                ));
            }
        }
        let hidden = self.hidden_size();
        let heads = [
            (
                "output_heads.sparse.linear",
                self.sparse_head().map(|s| &s.linear),
            ),
            ("output_heads.multi_vector", self.multi_vector_head()),
        ];
        for (field, d) in heads {
            let Some(d) = d else { continue };
            if d.inputs != hidden {
                return Err(invalid(
                    format!("{field}.inputs"),
                    format!("{} is not the encoder's width {hidden}", d.inputs),
                ));
            }
            if !(1..=65536).contains(&d.outputs) {
                return Err(invalid(
                    format!("{field}.outputs"),
                    "must be between 1 and 65536",
                ));
            }
            if !self.files.iter().any(|f| f.path == d.path) {
                return Err(invalid(
                    format!("{field}.path"),
                    format!("{:?} is not one of the listed files", d.path),
                ));
            }
        }
        if let Some(s) = self.sparse_head() {
            if s.linear.outputs != 1 {
                return Err(invalid(
                    "output_heads.sparse.linear.outputs",
                    format!("{}: a token's weight is one number", s.linear.outputs),
                ));
            }
            if s.vocabulary == 0 {
                return Err(invalid(
                    "output_heads.sparse.vocabulary",
                    "must be at least 1",
                ));
            }
        }
        if self.multi_vector_head().is_some() != self.late_interaction.is_some() {
            return Err(invalid(
                "late_interaction",
                "an embedding model has it exactly when its outputs list multi_vector",
            ));
        }
        Ok(())
    }
}
