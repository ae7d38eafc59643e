//! An embedding model's heads beside its vector (bge-m3's `sparse_linear` and
//! `colbert_linear`), run on the token vectors of the same pass when a request asks for that
//! output instead of the pooled vector.

use super::kernels::Linear;
use super::pool::l2_normalize;
use crate::package::Manifest;

/// What a job asks of its texts' pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// The model's own: a vector (pooled, or a multi-vector model's token vectors), a sparse
    /// model's term weights, a reranker's logits.
    #[default]
    Main,
    /// Each token's weight: `max(0, sparse_linear(token vector))`, one number a token.
    TermWeights,
    /// Each token's vector through the model's token-vector head (or, for a multi-vector
    /// model, its Dense modules), normalised when the job asks.
    TokenVectors,
}

impl Output {
    /// Every output, in the order the engine thread serves a batch's jobs.
    pub const ALL: [Output; 3] = [Output::Main, Output::TermWeights, Output::TokenVectors];
}

/// The heads of the manifest's `outputs`.
#[derive(Default)]
pub struct Heads {
    term_weights: Option<Linear>,
    token_vectors: Option<Linear>,
}

impl Heads {
    /// The manifest's heads, each file from `read(path)` (verified bytes); none for a model
    /// without outputs.
    pub fn new(
        manifest: &Manifest,
        mut read: impl FnMut(&str) -> Result<Vec<u8>, String>,
    ) -> Result<Heads, String> {
        Ok(Heads {
            term_weights: match manifest.sparse_head() {
                Some(s) => Some(super::vectors::load_dense(&s.linear, &mut read)?),
                None => None,
            },
            token_vectors: match manifest.multi_vector_head() {
                Some(d) => Some(super::vectors::load_dense(d, &mut read)?),
                None => None,
            },
        })
    }

    /// Bytes of the heads' weights.
    pub fn bytes(&self) -> usize {
        [&self.term_weights, &self.token_vectors]
            .into_iter()
            .flatten()
            .map(Linear::bytes)
            .sum()
    }

    /// Whether a token-vector head is there (else a multi-vector model's own Dense modules
    /// make its token vectors).
    pub fn has_token_vectors(&self) -> bool {
        self.token_vectors.is_some()
    }

    /// The weight of each of `n` token vectors (`rows`, row-major); `None` without the head.
    pub fn term_weights(&self, rows: &[f32], n: usize) -> Option<Vec<f32>> {
        let head = self.term_weights.as_ref()?;
        let mut out = vec![0f32; n * head.outputs];
        head.forward(rows, n, None, &mut out);
        out.iter_mut().for_each(|w| *w = w.max(0.0));
        Some(out)
    }

    /// Each of `n` token vectors through the token-vector head, normalised when `normalize`;
    /// `None` without the head.
    pub fn token_vectors(&self, rows: &[f32], n: usize, normalize: bool) -> Option<Vec<f32>> {
        let head = self.token_vectors.as_ref()?;
        let mut out = vec![0f32; n * head.outputs];
        head.forward(rows, n, None, &mut out);
        if normalize {
            out.chunks_exact_mut(head.outputs).for_each(l2_normalize);
        }
        Some(out)
    }
}
