//! A sparse model's head (SPLADE, as sentence-transformers' `MLMTransformer` then
//! `SpladePooling` compute it): each token's vector through the masked-language-model head
//! (dense, the encoder's activation, LayerNorm, then the decoder to one logit per vocabulary
//! term), each logit through `log(1 + ReLU)` (twice for `log1p_relu`), pooled over the text's
//! tokens by max or sum. The result is one weight per vocabulary term, most of them zero.
//!
//! The logits are never held whole (tokens × a vocabulary of 30k+ terms is 120 KB a token):
//! the decoder runs on [`ROW_BLOCK`] tokens × [`VOCAB_BLOCK`] terms at a time, each block
//! folded into the texts' weights before the next. With max pooling the activation, which
//! never decreases, runs once per term on the largest logit instead of on every one.

use super::kernels::{self, Activation, Linear};
use crate::engine::Precision;
use crate::memory::mapped::Mapped;
use crate::package::{Pooling, SparseActivation};

/// Where [`super::checkpoint::sparse_tensors`] puts the head's dense layer.
pub const TRANSFORM: &str = "sparse.transform";
/// Its LayerNorm.
pub const NORM: &str = "sparse.norm";
/// Its decoder (vocabulary × hidden) and bias.
pub const DECODER: &str = "sparse.decoder";

/// Vocabulary terms one decoder block computes.
pub const VOCAB_BLOCK: usize = 4096;
/// Tokens one decoder block takes.
pub const ROW_BLOCK: usize = 256;

/// Bytes the head's pass over `rows` tokens of `texts` texts holds beyond the encoder's: the
/// transformed rows, one block of logits, and each text's weights.
pub fn pass_bytes(hidden: usize, vocab: usize, rows: usize, texts: usize) -> usize {
    (rows * hidden + ROW_BLOCK.min(rows) * VOCAB_BLOCK.min(vocab) + texts * vocab) * 4
}

/// The head of a sparse model.
pub struct SparseHead {
    transform: Linear,
    activation: Activation,
    gamma: Mapped<f32>,
    beta: Mapped<f32>,
    eps: f32,
    /// The decoder in blocks of [`VOCAB_BLOCK`] terms, in vocabulary order.
    decoder: Vec<Linear>,
    vocab: usize,
    term: SparseActivation,
    pooling: Pooling,
}

/// The parts of a sparse head as read from the checkpoint.
pub struct Parts {
    /// hidden → hidden.
    pub transform: Linear,
    /// The transform's activation (the encoder's `hidden_act`).
    pub activation: Activation,
    /// The LayerNorm's weight and bias, and epsilon.
    pub norm: (Vec<f32>, Vec<f32>, f32),
    /// The decoder's weight (vocabulary × hidden, row-major) and bias.
    pub decoder: (Vec<f32>, Vec<f32>),
}

impl SparseHead {
    /// The head from its parts; in `int8` the decoder's blocks are int8 with 16-bit
    /// activations (int8's accurate kernel), in `int8-fast` int8 for 8-bit activations,
    /// smoothed by what the decoder's inputs reached over `calibration` (the encoder's output
    /// rows for int8-fast's calibration texts); the rest stays f32.
    pub fn new(
        parts: Parts,
        term: SparseActivation,
        pooling: Pooling,
        precision: Precision,
        calibration: Option<&[f32]>,
    ) -> Result<SparseHead, String> {
        let hidden = parts.transform.inputs;
        let (weight, bias) = parts.decoder;
        if parts.transform.outputs != hidden || weight.len() % hidden.max(1) != 0 {
            return Err(format!(
                "model.safetensors: the language-model head does not chain ({} → {}, decoder of {} values)",
                hidden,
                parts.transform.outputs,
                weight.len()
            ));
        }
        let vocab = weight.len() / hidden;
        if bias.len() != vocab {
            return Err(format!(
                "model.safetensors: the decoder's bias has {} values for {vocab} terms",
                bias.len()
            ));
        }
        let (gamma, beta, eps) = parts.norm;
        let mut head = SparseHead {
            transform: parts.transform,
            activation: parts.activation,
            gamma: gamma.into(),
            beta: beta.into(),
            eps,
            decoder: Vec::new(),
            vocab,
            term,
            pooling,
        };
        let act_max = match (precision, calibration) {
            (Precision::Int8Fast, Some(rows)) => Some(head.decoder_input_max(rows)),
            (Precision::Int8Fast, None) => {
                return Err("int8-fast's sparse head needs the calibration texts' pass".into());
            }
            _ => None,
        };
        // Block by block, each quantized as it is made, so the f32 decoder (4 times the
        // int8 one) is never held whole twice.
        head.decoder = (0..vocab)
            .step_by(VOCAB_BLOCK)
            .map(|first| {
                let n = VOCAB_BLOCK.min(vocab - first);
                let rows = &weight[first * hidden..(first + n) * hidden];
                let mut l = Linear::from_torch(rows, &bias[first..first + n], n, hidden);
                match (&act_max, precision) {
                    (Some(act_max), _) => l.to_int8_fast(act_max),
                    (None, Precision::Int8) => l.to_int8(),
                    (None, _) => {}
                }
                l
            })
            .collect();
        Ok(head)
    }

    /// The decoder's input for token rows `x` of the encoder's output: the transform, its
    /// activation and the LayerNorm.
    fn decoder_input(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let width = self.transform.inputs;
        let mut t = vec![0f32; rows * width];
        self.transform.forward(x, rows, None, &mut t);
        kernels::activate(&mut t, width, self.activation);
        kernels::layer_norm_rows(&mut t, width, &self.gamma, &self.beta, self.eps);
        t
    }

    /// The largest magnitude each of the decoder's inputs takes over the encoder's output
    /// rows `x` (int8-fast's calibration).
    fn decoder_input_max(&self, x: &[f32]) -> Vec<f32> {
        let width = self.transform.inputs;
        let t = self.decoder_input(x, x.len() / width.max(1));
        let mut max = vec![0f32; width];
        for row in t.chunks_exact(width) {
            max.iter_mut()
                .zip(row)
                .for_each(|(m, &v)| *m = m.max(v.abs()));
        }
        max
    }

    /// Terms in the vocabulary: the length of each text's weights.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Bytes of its weights.
    pub fn bytes(&self) -> usize {
        self.transform.bytes()
            + (self.gamma.len() + self.beta.len()) * 4
            + self.decoder.iter().map(Linear::bytes).sum::<usize>()
    }

    /// The term weights of each text whose tokens are `texts` (first row, rows) of `hidden`
    /// (row-major, the encoder's width): one vector of [`Self::vocab`] weights per text.
    pub fn weights(&self, hidden: &[f32], texts: &[(usize, usize)]) -> Vec<Vec<f32>> {
        let width = self.transform.inputs;
        // Every text's rows, one after another, and whose each row is.
        let owner: Vec<usize> = texts
            .iter()
            .enumerate()
            .flat_map(|(k, &(_, len))| std::iter::repeat_n(k, len))
            .collect();
        let rows = owner.len();
        let mut x = Vec::with_capacity(rows * width);
        for &(first, len) in texts {
            x.extend_from_slice(&hidden[first * width..(first + len) * width]);
        }
        let t = self.decoder_input(&x, rows);
        drop(x);

        let max = self.pooling == Pooling::Max;
        let start = if max { f32::NEG_INFINITY } else { 0.0 };
        let mut out = vec![vec![start; self.vocab]; texts.len()];
        let mut logits = vec![0f32; ROW_BLOCK.min(rows) * VOCAB_BLOCK.min(self.vocab)];
        for first_row in (0..rows).step_by(ROW_BLOCK) {
            let n = ROW_BLOCK.min(rows - first_row);
            let input = &t[first_row * width..(first_row + n) * width];
            for (b, block) in self.decoder.iter().enumerate() {
                let terms = block.outputs;
                let first_term = b * VOCAB_BLOCK;
                let logits = &mut logits[..n * terms];
                block.forward(input, n, None, logits);
                for (r, row) in logits.chunks_exact(terms).enumerate() {
                    let dest = &mut out[owner[first_row + r]][first_term..first_term + terms];
                    if max {
                        dest.iter_mut().zip(row).for_each(|(d, &x)| *d = d.max(x));
                    } else {
                        let term = self.term;
                        dest.iter_mut()
                            .zip(row)
                            .for_each(|(d, &x)| *d += term.apply(x));
                    }
                }
            }
        }
        if max {
            // The activation never decreases, so it commutes with the max.
            for v in &mut out {
                v.iter_mut().for_each(|x| *x = self.term.apply(*x));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head over a 2-wide hidden state whose transform is the identity, norm nearly so,
    /// and a decoder of `vocab` terms.
    fn head(vocab: usize, pooling: Pooling, term: SparseActivation) -> SparseHead {
        let weight: Vec<f32> = (0..vocab)
            .flat_map(|v| [(v % 7) as f32 - 3.0, (v % 5) as f32 * 0.5 - 1.0])
            .collect();
        let bias: Vec<f32> = (0..vocab).map(|v| (v % 3) as f32 * 0.1).collect();
        let parts = Parts {
            transform: Linear::from_torch(&[1.0, 0.0, 0.0, 1.0], vec![0.0; 2], 2, 2),
            activation: Activation::Relu,
            norm: (vec![1.0; 2], vec![0.0; 2], 1e-12),
            decoder: (weight, bias),
        };
        SparseHead::new(parts, term, pooling, Precision::F32, None).expect("head")
    }

    /// The same arithmetic, the whole logits at once and the activation on each.
    fn naive(h: &SparseHead, hidden: &[f32], texts: &[(usize, usize)]) -> Vec<Vec<f32>> {
        let mut t = vec![0f32; hidden.len()];
        let rows = hidden.len() / 2;
        h.transform.forward(hidden, rows, None, &mut t);
        kernels::activate(&mut t, 2, h.activation);
        kernels::layer_norm_rows(&mut t, 2, &h.gamma, &h.beta, h.eps);
        texts
            .iter()
            .map(|&(first, len)| {
                let mut out = vec![0f32; h.vocab];
                for (b, block) in h.decoder.iter().enumerate() {
                    let mut logits = vec![0f32; len * block.outputs];
                    block.forward(&t[first * 2..(first + len) * 2], len, None, &mut logits);
                    for row in logits.chunks_exact(block.outputs) {
                        for (i, &x) in row.iter().enumerate() {
                            let w = h.term.apply(x);
                            let d = &mut out[b * VOCAB_BLOCK + i];
                            *d = match h.pooling {
                                Pooling::Max => d.max(w),
                                _ => *d + w,
                            };
                        }
                    }
                }
                out
            })
            .collect()
    }

    #[test]
    fn blocks_of_tokens_and_terms_give_the_whole_pass_s_weights() {
        // Past one block of terms and of rows, texts crossing a row block's edge.
        let vocab = VOCAB_BLOCK + 123;
        let rows = ROW_BLOCK + 40;
        let hidden: Vec<f32> = (0..rows * 2)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let texts = [(0, 3), (3, ROW_BLOCK), (ROW_BLOCK + 3, 37)];
        for pooling in [Pooling::Max, Pooling::Sum] {
            for term in [SparseActivation::Relu, SparseActivation::Log1pRelu] {
                let h = head(vocab, pooling, term);
                let got = h.weights(&hidden, &texts);
                let want = naive(&h, &hidden, &texts);
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.len(), vocab);
                    for (a, b) in g.iter().zip(w) {
                        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
                    }
                }
                // Some terms are zero, some not: a sparse vector.
                assert!(got[0].contains(&0.0) && got[0].iter().any(|&x| x > 0.0));
            }
        }
    }

    #[test]
    fn the_activation_is_splade_s() {
        assert_eq!(SparseActivation::Relu.apply(-2.0), 0.0);
        assert!((SparseActivation::Relu.apply(1.0) - 2f32.ln()).abs() < 1e-7);
        assert!((SparseActivation::Log1pRelu.apply(1.0) - (1.0 + 2f32.ln()).ln()).abs() < 1e-7);
    }
}
