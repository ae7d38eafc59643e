//! The checkpoint's tensors, taken one by one under the encoder's names and widened to f32
//! (so the original and the converted copy of a tensor are never both held for the whole
//! model); [`stored`] knows the formats.

use super::Norm;
use crate::engine::blueprint::NormKind;
use crate::engine::checkpoint::Tensors;
use crate::engine::kernels::Linear;
use crate::engine::stored;

const FILE: &str = "model.safetensors";

pub(super) struct Weights(pub(super) Tensors);

impl Weights {
    pub(super) fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub(super) fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        stored::take_f32(&mut self.0, name, shape, FILE)
    }

    /// Tensor `name`'s int8 values and block scales, when the package stores it int8.
    pub(super) fn take_int8(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<Option<stored::Int8Rows>, String> {
        stored::take_int8(&mut self.0, name, shape, FILE)
    }

    /// A norm of `kind`: an RMSNorm's weight, or a LayerNorm (see [`Weights::layer_norm`]).
    pub(super) fn norm(
        &mut self,
        kind: NormKind,
        prefix: &str,
        size: usize,
    ) -> Result<Norm, String> {
        match kind {
            NormKind::Layer => self.layer_norm(prefix, size),
            NormKind::Rms => Ok(Norm {
                gamma: self.take(&format!("{prefix}.weight"), &[size])?,
                beta: None,
            }),
        }
    }

    /// A LayerNorm, under the `weight`/`bias` names or the older `gamma`/`beta`.
    fn layer_norm(&mut self, prefix: &str, size: usize) -> Result<Norm, String> {
        let (g, b) = if self.0.contains_key(&format!("{prefix}.weight")) {
            ("weight", "bias")
        } else {
            ("gamma", "beta")
        };
        Ok(Norm {
            gamma: self.take(&format!("{prefix}.{g}"), &[size])?,
            beta: Some(self.take(&format!("{prefix}.{b}"), &[size])?),
        })
    }

    pub(super) fn linear(
        &mut self,
        prefix: &str,
        outputs: usize,
        inputs: usize,
    ) -> Result<Linear, String> {
        let weight = self.take(&format!("{prefix}.weight"), &[outputs, inputs])?;
        let bias = self.take(&format!("{prefix}.bias"), &[outputs])?;
        Ok(Linear::from_torch(&weight, bias, outputs, inputs))
    }
}
