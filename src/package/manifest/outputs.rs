//! An embedding model's heads beside its vector (bge-m3's): term weights and token vectors
//! computed from the same pass's token vectors, so one model, one load and one memory entry
//! serve dense, sparse and late-interaction requests.

use serde::{Deserialize, Serialize};

use super::{Dense, Manifest, ManifestError, ModelKind, invalid};

/// `outputs:` of an embedding manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outputs {
    /// Term weights (`/embed_sparse`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<TokenWeights>,
    /// Token vectors (`/embed_all`, MaxSim in `/rerank`): each token's vector through this
    /// linear layer, normalised, scored as `late_interaction` says.
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
    /// model's extra outputs.
    pub fn serves(&self, kind: ModelKind) -> bool {
        let outputs = self.outputs.as_ref();
        self.kind == kind
            || (self.kind == ModelKind::Embedding
                && match kind {
                    ModelKind::Sparse => outputs.is_some_and(|o| o.sparse.is_some()),
                    ModelKind::MultiVector => outputs.is_some_and(|o| o.multi_vector.is_some()),
                    _ => false,
                })
    }

    /// Only an embedding model has outputs; each takes the encoder's token vectors, names a
    /// listed file, and the token vectors come with their `late_interaction` rules.
    pub(super) fn validate_outputs(&self) -> Result<(), ManifestError> {
        let Some(o) = &self.outputs else {
            return Ok(());
        };
        if self.kind != ModelKind::Embedding {
            return Err(invalid(
                "outputs",
                format!(
                    "only an embedding model has outputs beside its vector, and this is kind {}",
                    self.kind.as_str()
                ),
            ));
        }
        let hidden = self.hidden_size();
        let heads = [
            (
                "outputs.sparse.linear",
                o.sparse.as_ref().map(|s| &s.linear),
            ),
            ("outputs.multi_vector", o.multi_vector.as_ref()),
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
        if let Some(s) = &o.sparse {
            if s.linear.outputs != 1 {
                return Err(invalid(
                    "outputs.sparse.linear.outputs",
                    format!("{}: a token's weight is one number", s.linear.outputs),
                ));
            }
            if s.vocabulary == 0 {
                return Err(invalid("outputs.sparse.vocabulary", "must be at least 1"));
            }
        }
        if o.multi_vector.is_some() != self.late_interaction.is_some() {
            return Err(invalid(
                "late_interaction",
                "an embedding model has it exactly when it has outputs.multi_vector",
            ));
        }
        Ok(())
    }
}
