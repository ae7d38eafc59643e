//! The checkpoint's tensors, taken one by one under the encoder's names and widened to f32
//! (so the original and the converted copy of a tensor are never both held for the whole
//! model), or in `int8` built straight from the rows a package stores int8; [`stored`] knows
//! the formats.

use super::Norm;
use crate::engine::blueprint::NormKind;
use crate::engine::kernels::Linear;
use crate::engine::stored;
use crate::engine::stored::Tensors;

const FILE: &str = "model.safetensors";

pub(super) struct Weights {
    pub(super) tensors: Tensors,
    /// Whether layers whose weights are stored int8 are built in int8 straight from them
    /// (`models.precision: int8`), never widened: an f32 copy of each would be made and
    /// quantized back to the same values, and Qwen3-0.6B's load peaked 100 MiB higher for it.
    pub(super) int8_layers: bool,
}

impl Weights {
    pub(super) fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub(super) fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        stored::take_f32(&mut self.tensors, name, shape, FILE)
    }

    /// Tensor `name`'s int8 values and block scales, when the package stores it int8.
    pub(super) fn take_int8(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<Option<stored::Int8Rows>, String> {
        stored::take_int8(&mut self.tensors, name, shape, FILE)
    }

    /// Whether tensor `name` is stored as int8 rows of a `shape` matrix.
    fn is_int8(&self, name: &str, shape: &[usize]) -> bool {
        self.tensors
            .get(name)
            .is_some_and(|t| stored::is_packed(t, shape))
    }

    /// A layer's linear `prefix`: in int8 straight from stored int8 rows when
    /// [`Weights::int8_layers`] says so, else in f32.
    pub(super) fn layer_linear(
        &mut self,
        prefix: &str,
        outputs: usize,
        inputs: usize,
    ) -> Result<Linear, String> {
        let weight = format!("{prefix}.weight");
        if !(self.int8_layers && self.is_int8(&weight, &[outputs, inputs])) {
            return self.linear(prefix, outputs, inputs);
        }
        let rows = self.rows(&weight, outputs, inputs)?;
        let bias = self.take(&format!("{prefix}.bias"), &[outputs])?;
        Ok(Linear::from_int8(
            stored::Int8Rows::packed(&[&rows])?,
            bias,
            None,
        ))
    }

    /// Query, key and value projections as one layer, `q` + 2 × `kv` outputs: in f32, or,
    /// when query and key are stored int8 and [`Weights::int8_layers`] says so, those two in
    /// int8 straight from their rows and the value projection after them in f32 (what
    /// `Linear::to_int8_but_last` makes of the f32 layer).
    pub(super) fn qkv(&mut self, p: &str, q: usize, kv: usize, h: usize) -> Result<Linear, String> {
        let [query, key, value] = ["query", "key", "value"].map(|n| format!("{p}.{n}"));
        let direct = self.int8_layers
            && self.is_int8(&format!("{query}.weight"), &[q, h])
            && self.is_int8(&format!("{key}.weight"), &[kv, h]);
        if !direct {
            let q = self.linear(&query, q, h)?;
            let k = self.linear(&key, kv, h)?;
            let v = self.linear(&value, kv, h)?;
            return Ok(Linear::concat(&[q, k, v]));
        }
        let qr = self.rows(&format!("{query}.weight"), q, h)?;
        let kr = self.rows(&format!("{key}.weight"), kv, h)?;
        let mut bias = self.take(&format!("{query}.bias"), &[q])?;
        bias.extend(self.take(&format!("{key}.bias"), &[kv])?);
        let packed = stored::Int8Rows::packed(&[&qr, &kr])?;
        drop((qr, kr));
        let v = self.linear(&value, kv, h)?;
        Ok(Linear::from_int8(packed, bias, Some(v)))
    }

    fn rows(
        &mut self,
        name: &str,
        outputs: usize,
        inputs: usize,
    ) -> Result<stored::Int8Rows, String> {
        self.take_int8(name, &[outputs, inputs])?
            .ok_or_else(|| format!("{FILE}: tensor {name} is not stored int8"))
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
                gamma: self.take(&format!("{prefix}.weight"), &[size])?.into(),
                beta: None,
            }),
        }
    }

    /// A LayerNorm's weight and bias (older `gamma`/`beta` names are renamed at
    /// [`crate::engine::checkpoint::map`], as transformers does).
    fn layer_norm(&mut self, prefix: &str, size: usize) -> Result<Norm, String> {
        Ok(Norm {
            gamma: self.take(&format!("{prefix}.weight"), &[size])?.into(),
            beta: Some(self.take(&format!("{prefix}.bias"), &[size])?.into()),
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
