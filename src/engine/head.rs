//! A reranker's classification head. A cross-encoder's: the first token's vector through a
//! dense layer and tanh, then a linear layer to the labels' logits. BERT calls the first half
//! its pooler (`pooler.dense`, then `classifier`), XLM-RoBERTa its classification head
//! (`classifier.dense`, then `classifier.out_proj`). A decoder reranker's (Qwen3-Reranker):
//! the last token's vector through one row, its language-model head's `yes` row less its `no`
//! row, which `caxton pack` computed, so the logit is `yes - no` and its sigmoid is the
//! softmax's P(yes). [`super::checkpoint::head_tensors`] puts them under one pair of names.
//! The head stays in f32 whatever the encoder's precision: it is a few hundred thousand
//! weights at most, and the score is read straight off it.

use super::kernels::Linear;

/// Where [`super::checkpoint::head_tensors`] puts the dense layer's weight and bias.
pub const DENSE: &str = "head.dense";
/// Where it puts the output layer's.
pub const OUT: &str = "head.out";

/// The head of a reranker.
pub struct Head {
    /// A cross-encoder's dense layer before tanh; none in a decoder reranker's head.
    dense: Option<Linear>,
    out: Linear,
}

impl Head {
    /// The head of a cross-encoder from its two layers (`dense`: hidden → hidden, `out`:
    /// hidden → labels).
    pub fn new(dense: Linear, out: Linear) -> Result<Head, String> {
        if dense.inputs != dense.outputs || out.inputs != dense.outputs {
            return Err(format!(
                "model.safetensors: the classifier head's layers do not chain ({} → {}, then {} → {})",
                dense.inputs, dense.outputs, out.inputs, out.outputs
            ));
        }
        Ok(Head {
            dense: Some(dense),
            out,
        })
    }

    /// The head of a decoder reranker: one layer (hidden → labels) on the last token.
    pub fn single(out: Linear) -> Head {
        Head { dense: None, out }
    }

    /// Number of logits per pair.
    pub fn labels(&self) -> usize {
        self.out.outputs
    }

    /// Bytes of its weights.
    pub fn bytes(&self) -> usize {
        self.dense.as_ref().map_or(0, Linear::bytes) + self.out.bytes()
    }

    /// The logits of `rows` pairs, from the vector of each pair's token the head reads
    /// (`tokens`, `rows` rows of the hidden width): `rows × labels` values.
    pub fn logits(&self, tokens: &[f32], rows: usize) -> Vec<f32> {
        let pooled = self.dense.as_ref().map(|dense| {
            let mut pooled = vec![0f32; rows * dense.outputs];
            dense.forward(tokens, rows, None, &mut pooled);
            pooled.iter_mut().for_each(|x| *x = x.tanh());
            pooled
        });
        let mut logits = vec![0f32; rows * self.out.outputs];
        self.out
            .forward(pooled.as_deref().unwrap_or(tokens), rows, None, &mut logits);
        logits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_tanh_then_out() {
        // dense = identity·2 with bias 0.1; out sums the two with bias -1.
        let dense = Linear::from_torch(&[2.0, 0.0, 0.0, 2.0], vec![0.1, 0.1], 2, 2);
        let out = Linear::from_torch(&[1.0, 1.0], vec![-1.0], 1, 2);
        let head = Head::new(dense, out).expect("chains");
        let logits = head.logits(&[0.5, -0.25, 0.0, 1.0], 2);
        let expect = |a: f32, b: f32| (2.0 * a + 0.1).tanh() + (2.0 * b + 0.1).tanh() - 1.0;
        assert_eq!(logits.len(), 2);
        assert!((logits[0] - expect(0.5, -0.25)).abs() < 1e-6, "{logits:?}");
        assert!((logits[1] - expect(0.0, 1.0)).abs() < 1e-6, "{logits:?}");
        assert_eq!(head.labels(), 1);
    }

    #[test]
    fn a_single_layer_reads_the_token_as_it_is() {
        // yes - no = (1, -2): the logit is x0 - 2·x1, no tanh before it.
        let head = Head::single(Linear::from_torch(&[1.0, -2.0], vec![0.0], 1, 2));
        assert_eq!(head.logits(&[3.0, 0.5, -1.0, 2.0], 2), vec![2.0, -5.0]);
        assert_eq!(
            (head.labels(), head.bytes()),
            (1, Linear::from_torch(&[1.0, -2.0], vec![0.0], 1, 2).bytes())
        );
    }

    #[test]
    fn layers_that_do_not_chain_are_refused() {
        let dense = Linear::from_torch(&[1.0; 6], vec![0.0; 3], 3, 2);
        let out = Linear::from_torch(&[1.0; 3], vec![0.0], 1, 3);
        assert_eq!(
            Head::new(dense, out).err().as_deref(),
            Some(
                "model.safetensors: the classifier head's layers do not chain (2 → 3, then 3 → 1)"
            )
        );
    }
}
