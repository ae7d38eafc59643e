//! A late-interaction (ColBERT) model's settings: how queries and documents are cut and
//! padded, which document tokens get no vector, and how a query's vectors score a document's.

use serde::{Deserialize, Serialize};

use super::{Manifest, ManifestError, ModelKind, Pooling, invalid};

/// `late_interaction:` of a `kind: multi_vector` manifest, as sentence-transformers'
/// MultiVectorEncoder saves it (Transformer's `query_length`/`document_length`/
/// `query_expansion`, MultiVectorMask's skip-list, the similarity function).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateInteraction {
    /// Tokens a query is cut to, special tokens and prompt included.
    pub query_length: usize,
    /// Tokens a document is cut to.
    pub document_length: usize,
    /// Query expansion: a query shorter than `length` tokens is padded to it with
    /// `token_id`, each of which gets a vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_expansion: Option<QueryExpansion>,
    /// Token ids a document's vectors leave out (ColBERT's punctuation); queries keep theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skiplist: Vec<u32>,
    /// How a query's vectors score a document's.
    pub similarity: LateSimilarity,
    /// Whether the first token (`[CLS]`) gets no vector (bge-m3's ColBERT vectors).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_first: bool,
}

/// ColBERT's query expansion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryExpansion {
    /// The padding token (`[MASK]`).
    pub token_id: u32,
    /// Tokens a query is padded to.
    pub length: usize,
    /// Whether the other tokens attend to the padding (sentence-transformers' `attend`;
    /// classic ColBERT: false, the padding is output but not attended to).
    pub attend: bool,
}

/// The late-interaction score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LateSimilarity {
    /// The sum over the query's vectors of each one's largest dot product with the
    /// document's (ColBERT's).
    Maxsim,
    /// That sum divided by the number of query vectors (bge-m3's `colbert_score`).
    Meanmaxsim,
}

impl LateSimilarity {
    /// The manifest's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LateSimilarity::Maxsim => "maxsim",
            LateSimilarity::Meanmaxsim => "meanmaxsim",
        }
    }

    /// The score of `query`'s vectors against `document`'s, each `dim` wide, summed in f32 as
    /// sentence-transformers' `maxsim` does; a document with no vectors scores -1e9 (its
    /// `_EMPTY_DOCUMENT_SCORE`).
    pub fn score(self, query: &[f32], document: &[f32], dim: usize) -> f32 {
        if document.is_empty() || dim == 0 {
            return -1e9;
        }
        let mut total = 0f32;
        for q in query.chunks_exact(dim) {
            let best = document
                .chunks_exact(dim)
                .map(|d| q.iter().zip(d).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max);
            total += best;
        }
        match self {
            LateSimilarity::Maxsim => total,
            LateSimilarity::Meanmaxsim => total / (query.len() / dim).max(1) as f32,
        }
    }
}

impl Manifest {
    /// A multi-vector model has its `late_interaction` settings, every token's vector
    /// (`pooling: tokens`), lengths within `max_seq_length`; no other kind has either.
    pub(super) fn validate_late_interaction(&self) -> Result<(), ManifestError> {
        // An embedding model's token vectors (bge-m3's) are an extra output, its pooling its
        // own vector's (see `validate_outputs`).
        let extra = self.kind == ModelKind::Embedding && self.multi_vector_head().is_some();
        let multi = self.kind == ModelKind::MultiVector;
        let tokens = self.pooling == Pooling::Tokens;
        let Some(li) = self.late_interaction.as_ref().filter(|_| multi || extra) else {
            return match (multi, tokens, self.late_interaction.is_some()) {
                (true, ..) => Err(invalid(
                    "late_interaction",
                    "a multi-vector model must say how queries and documents are cut and scored",
                )),
                (false, true, _) => Err(invalid(
                    "pooling",
                    "tokens keeps every token's vector, which only a multi-vector model (kind: multi_vector) serves",
                )),
                (false, false, true) => Err(invalid(
                    "late_interaction",
                    "only a multi-vector model (kind: multi_vector) has it; remove it or set kind: multi_vector",
                )),
                (false, false, false) => Ok(()),
            };
        };
        if multi && !tokens {
            return Err(invalid(
                "pooling",
                format!(
                    "a multi-vector model keeps every token's vector: pooling must be tokens, not {}",
                    self.pooling.as_str()
                ),
            ));
        }
        for (field, len) in [
            ("late_interaction.query_length", li.query_length),
            ("late_interaction.document_length", li.document_length),
        ] {
            if !(2..=self.max_seq_length).contains(&len) {
                return Err(invalid(
                    field,
                    format!(
                        "{len} is not between 2 and max_seq_length ({})",
                        self.max_seq_length
                    ),
                ));
            }
        }
        if let Some(e) = li.query_expansion
            && !(1..=li.query_length).contains(&e.length)
        {
            return Err(invalid(
                "late_interaction.query_expansion.length",
                format!(
                    "{} is not between 1 and query_length ({})",
                    e.length, li.query_length
                ),
            ));
        }
        if multi && self.matryoshka.is_some() {
            return Err(invalid(
                "matryoshka",
                "a multi-vector model's token vectors are not cut: remove it",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxsim_sums_each_query_vector_s_best_dot_product() {
        let q = [1.0, 0.0, 0.0, 1.0];
        let d = [0.6, 0.8, 1.0, 0.0, -1.0, 0.0];
        // Row 1's best is 1.0 (d's second), row 2's 0.8 (d's first).
        assert!((LateSimilarity::Maxsim.score(&q, &d, 2) - 1.8).abs() < 1e-6);
        assert!((LateSimilarity::Meanmaxsim.score(&q, &d, 2) - 0.9).abs() < 1e-6);
        assert_eq!(LateSimilarity::Maxsim.score(&q, &[], 2), -1e9);
    }
}
