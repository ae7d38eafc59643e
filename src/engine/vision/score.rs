//! How a two-tower model scores a text against an image, as transformers' `logits_per_image`:
//! the cosine of the two vectors times the model's learned scale (`exp(logit_scale)`), plus
//! SigLIP's learned bias; SigLIP's score is the sigmoid of that (its training loss), CLIP's is
//! the logit itself (its probabilities are a softmax over the candidates, not a per-pair
//! score).

use super::Family;
use crate::engine::checkpoint::Tensors;

/// A two-tower model's scoring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scorer {
    family: Family,
    /// `exp(logit_scale)`.
    scale: f32,
    /// SigLIP's `logit_bias`; 0 for CLIP.
    bias: f32,
}

impl Scorer {
    /// From a `CLIPModel`'s or `SiglipModel`'s tensors (`logit_scale`, SigLIP's `logit_bias`).
    pub fn load(config_json: &[u8], tensors: &Tensors) -> Result<Self, String> {
        let family = Family::of(config_json)?;
        let scalar = |name: &str| -> Result<f32, String> {
            let t = tensors
                .get(name)
                .ok_or_else(|| format!("model.safetensors: no tensor {name}"))?;
            let v: Vec<f32> = t
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(|e| format!("model.safetensors: tensor {name}: {e}"))?;
            match v[..] {
                [x] if x.is_finite() => Ok(x),
                _ => Err(format!(
                    "model.safetensors: tensor {name} is not one finite number ({} values)",
                    v.len()
                )),
            }
        };
        let scale = scalar("logit_scale")?.exp();
        let bias = match family {
            Family::Clip => 0.0,
            Family::Siglip => scalar("logit_bias")?,
        };
        Ok(Scorer {
            family,
            scale,
            bias,
        })
    }

    /// The logit of `text` against `image` (vectors of one width, normalised or not).
    pub fn logit(&self, text: &[f32], image: &[f32]) -> f32 {
        let dot: f64 = text
            .iter()
            .zip(image)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let cosine = dot / (norm(text) * norm(image)).max(f64::MIN_POSITIVE);
        (cosine * f64::from(self.scale) + f64::from(self.bias)) as f32
    }

    /// The score a rerank answers: CLIP's logit, SigLIP's probability.
    pub fn score(&self, text: &[f32], image: &[f32]) -> f32 {
        let logit = self.logit(text, image);
        match self.family {
            Family::Clip => logit,
            Family::Siglip => 1.0 / (1.0 + (-logit).exp()),
        }
    }
}
