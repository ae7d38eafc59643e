//! What becomes of a text's pooled vector before it is answered: sentence-transformers'
//! Dense modules (as the package lists them), then, when a request asks for fewer dimensions,
//! the model's own step before cutting (nomic's weightless layer norm) and the cut, then L2
//! normalisation. The engine thread runs it after pooling, so a request's `dimensions` never
//! costs the HTTP layer any arithmetic.

use super::kernels::{self, Linear};
use super::pool::l2_normalize;
use crate::package::{Dense, DenseActivation, Manifest};

/// What a request wants of its vectors beyond what the model makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VectorShape {
    /// Scale each vector to unit length.
    pub normalize: bool,
    /// Cut each vector to this many dimensions (already checked against the manifest).
    pub width: Option<usize>,
}

/// The linear layer of the package's Dense module `d` (`linear.weight`, `linear.bias`), its
/// file from `read(path)` (verified bytes).
pub fn load_dense(
    d: &Dense,
    read: &mut impl FnMut(&str) -> Result<Vec<u8>, String>,
) -> Result<Linear, String> {
    let bytes = read(&d.path)?;
    let mut tensors = super::stored::read(&mut &bytes[..], bytes.len() as u64, &d.path)?;
    drop(bytes);
    let mut take =
        |name: &str, shape: &[usize]| super::stored::take_f32(&mut tensors, name, shape, &d.path);
    let weight = take("linear.weight", &[d.outputs, d.inputs])?;
    let bias = match d.bias {
        true => take("linear.bias", &[d.outputs])?,
        false => vec![0.0; d.outputs],
    };
    Ok(Linear::from_torch(&weight, bias, d.outputs, d.inputs))
}

/// The steps after pooling of one model.
pub struct Finish {
    dense: Vec<(Linear, DenseActivation)>,
    /// Layer-normalise (without weights) before a cut.
    layer_norm: bool,
}

impl Finish {
    /// The manifest's steps, each Dense module's weights from `read(path)` (verified bytes).
    pub fn new(
        manifest: &Manifest,
        mut read: impl FnMut(&str) -> Result<Vec<u8>, String>,
    ) -> Result<Finish, String> {
        let mut dense = Vec::with_capacity(manifest.dense.len());
        for d in &manifest.dense {
            dense.push((load_dense(d, &mut read)?, d.activation));
        }
        Ok(Finish {
            dense,
            layer_norm: manifest.matryoshka.as_ref().is_some_and(|m| m.layer_norm),
        })
    }

    /// Bytes of the Dense modules' weights.
    pub fn bytes(&self) -> usize {
        self.dense.iter().map(|(l, _)| l.bytes()).sum()
    }

    /// Runs the Dense modules over `rows` pooled vectors (`pooled`, row-major, each the
    /// encoder's width); returns the rows at the vectors' full width.
    pub fn dense(&self, mut pooled: Vec<f32>, rows: usize) -> Vec<f32> {
        for (layer, activation) in &self.dense {
            let mut out = vec![0f32; rows * layer.outputs];
            layer.forward(&pooled, rows, None, &mut out);
            if *activation == DenseActivation::Tanh {
                out.iter_mut().for_each(|x| *x = x.tanh());
            }
            pooled = out;
        }
        pooled
    }

    /// One full-width vector as `shape` asks: cut (after the model's own step), then
    /// normalised.
    pub fn shape(&self, mut v: Vec<f32>, shape: VectorShape) -> Vec<f32> {
        if let Some(width) = shape.width {
            if self.layer_norm {
                let n = v.len();
                kernels::layer_norm(&mut v, &vec![1.0; n], &vec![0.0; n], 1e-5);
            }
            v.truncate(width);
        }
        if shape.normalize {
            l2_normalize(&mut v);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(layer_norm: bool) -> Finish {
        Finish {
            dense: Vec::new(),
            layer_norm,
        }
    }

    #[test]
    fn a_cut_renormalises_and_nomic_layer_normalises_first() {
        let v = vec![3.0, 4.0, 12.0];
        let plain = finish(false).shape(
            v.clone(),
            VectorShape {
                normalize: true,
                width: Some(2),
            },
        );
        assert_eq!(plain, vec![0.6, 0.8]);
        // Mean 19/3, then the cut and unit length: (3 - 19/3, 4 - 19/3) normalised.
        let nomic = finish(true).shape(
            v.clone(),
            VectorShape {
                normalize: true,
                width: Some(2),
            },
        );
        let (a, b): (f32, f32) = (3.0 - 19.0 / 3.0, 4.0 - 19.0 / 3.0);
        let n = (a * a + b * b).sqrt();
        assert!((nomic[0] - a / n).abs() < 1e-5 && (nomic[1] - b / n).abs() < 1e-5);
        // Without a cut the model's own vector, whatever its family.
        assert_eq!(finish(true).shape(v.clone(), VectorShape::default()), v);
    }

    #[test]
    fn dense_modules_chain() {
        let f = Finish {
            // [2, 1] then tanh: 2 inputs -> 1 output.
            dense: vec![(
                Linear::from_torch(&[2.0, 1.0], vec![0.5], 1, 2),
                DenseActivation::Tanh,
            )],
            layer_norm: false,
        };
        let out = f.dense(vec![0.25, 0.0, 1.0, -1.0], 2);
        assert!((out[0] - 1f32.tanh()).abs() < 1e-6 && (out[1] - 1.5f32.tanh()).abs() < 1e-6);
    }
}
