//! MPNet (all-mpnet-base-v2 and kin) on candle, written from the architecture since
//! candle-transformers has none: BERT's layer with a T5-style relative position bias shared by
//! every layer and added to the attention scores, RoBERTa's position ids (counted from
//! `pad_token_id + 1`), no token types, erf GELU.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::bert::Hidden;
use super::tokenize::Encoded;
use crate::package::Manifest;

#[derive(Debug, Clone, Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_buckets")]
    relative_attention_num_buckets: usize,
    #[serde(default = "one")]
    pad_token_id: u32,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_buckets() -> usize {
    32
}
fn one() -> u32 {
    1
}

/// MPNet's relative positions saturate at this distance.
const MAX_DISTANCE: i64 = 128;

/// The bucket of a key `rel` tokens after (negative: before) the query, as MPNet (after T5)
/// assigns them: exact buckets for near tokens, logarithmic ones further out, half of the
/// buckets for each direction.
fn bucket(rel: i64, num_buckets: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let n = -rel;
    let mut ret = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    if n < max_exact {
        ret += n;
    } else {
        let far = (n as f64 / max_exact as f64).ln()
            / (MAX_DISTANCE as f64 / max_exact as f64).ln()
            * (half - max_exact) as f64;
        ret += (max_exact + far as i64).min(half - 1);
    }
    ret as usize
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A loaded MPNet encoder.
pub struct MpnetEncoder {
    words: Embedding,
    positions: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    /// `[buckets, heads]`.
    relative_bias: Tensor,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    buckets: usize,
    pad: u32,
    device: Device,
}

impl MpnetEncoder {
    /// Builds the model from `config.json` and safetensors bytes (already verified); f16
    /// weights are widened to f32.
    pub fn load(config_json: &[u8], weights: Vec<u8>, manifest: &Manifest) -> Result<Self, String> {
        let c: Config =
            serde_json::from_slice(config_json).map_err(|e| format!("config.json: {e}"))?;
        if c.hidden_act != "gelu" {
            return Err(format!(
                "config.json: hidden_act {:?} is not supported for mpnet (gelu)",
                c.hidden_act
            ));
        }
        if c.hidden_size != manifest.dimensions {
            return Err(format!(
                "config.json hidden_size {} differs from the manifest's dimensions {}",
                c.hidden_size, manifest.dimensions
            ));
        }
        let positions_usable = c
            .max_position_embeddings
            .saturating_sub(c.pad_token_id as usize + 1);
        if manifest.max_seq_length > positions_usable {
            return Err(format!(
                "the manifest's max_seq_length {} exceeds the {positions_usable} positions config.json allows",
                manifest.max_seq_length
            ));
        }
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(format!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            ));
        }
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| format!("model.safetensors: {e}"))?;
        let vb = if vb.contains_tensor("mpnet.embeddings.word_embeddings.weight") {
            vb.pp("mpnet")
        } else {
            vb
        };
        let err = |e: candle_core::Error| format!("model.safetensors: {e}");
        let h = c.hidden_size;
        let e = vb.pp("embeddings");
        let words = candle_nn::embedding(c.vocab_size, h, e.pp("word_embeddings")).map_err(err)?;
        let positions =
            candle_nn::embedding(c.max_position_embeddings, h, e.pp("position_embeddings"))
                .map_err(err)?;
        let embeddings_norm =
            candle_nn::layer_norm(h, c.layer_norm_eps, e.pp("LayerNorm")).map_err(err)?;
        let enc = vb.pp("encoder");
        let relative_bias = enc
            .pp("relative_attention_bias")
            .get(
                (c.relative_attention_num_buckets, c.num_attention_heads),
                "weight",
            )
            .map_err(err)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = enc.pp("layer").pp(i.to_string());
            let a = l.pp("attention");
            layers.push(Layer {
                q: candle_nn::linear(h, h, a.pp("attn").pp("q")).map_err(err)?,
                k: candle_nn::linear(h, h, a.pp("attn").pp("k")).map_err(err)?,
                v: candle_nn::linear(h, h, a.pp("attn").pp("v")).map_err(err)?,
                o: candle_nn::linear(h, h, a.pp("attn").pp("o")).map_err(err)?,
                attention_norm: candle_nn::layer_norm(h, c.layer_norm_eps, a.pp("LayerNorm"))
                    .map_err(err)?,
                intermediate: candle_nn::linear(
                    h,
                    c.intermediate_size,
                    l.pp("intermediate").pp("dense"),
                )
                .map_err(err)?,
                output: candle_nn::linear(c.intermediate_size, h, l.pp("output").pp("dense"))
                    .map_err(err)?,
                output_norm: candle_nn::layer_norm(
                    h,
                    c.layer_norm_eps,
                    l.pp("output").pp("LayerNorm"),
                )
                .map_err(err)?,
            });
        }
        Ok(MpnetEncoder {
            words,
            positions,
            embeddings_norm,
            layers,
            relative_bias,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
            hidden: h,
            buckets: c.relative_attention_num_buckets,
            pad: c.pad_token_id,
            device,
        })
    }

    /// Width of the token vectors.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Runs one forward pass over `texts`, padded to the longest with masked attention.
    pub fn forward(&self, texts: &[&Encoded]) -> Result<Hidden, String> {
        let seq = texts.iter().map(|t| t.len()).max().unwrap_or(0);
        let n = texts.len();
        let mut ids = vec![self.pad; n * seq];
        let mut positions = vec![self.pad; n * seq];
        let mut mask = vec![f32::MIN; n * seq];
        for (row, t) in texts.iter().enumerate() {
            let base = row * seq;
            ids[base..base + t.len()].copy_from_slice(&t.ids);
            for (i, p) in positions[base..base + t.len()].iter_mut().enumerate() {
                *p = self.pad + 1 + i as u32;
            }
            mask[base..base + t.len()].fill(0.0);
        }
        let mut rel = Vec::with_capacity(seq * seq);
        for q in 0..seq as i64 {
            for k in 0..seq as i64 {
                rel.push(bucket(k - q, self.buckets) as u32);
            }
        }
        let run = || -> candle_core::Result<Vec<f32>> {
            let ids = Tensor::from_vec(ids, (n, seq), &self.device)?;
            let positions = Tensor::from_vec(positions, (n, seq), &self.device)?;
            let x = (self.words.forward(&ids)? + self.positions.forward(&positions)?)?;
            let mut x = self.embeddings_norm.forward(&x)?;
            // [seq*seq] buckets → [seq, seq, heads] → [1, heads, seq, seq], plus the padding
            // mask [n, 1, 1, seq]: added to every layer's scores.
            let rel = Tensor::from_vec(rel, seq * seq, &self.device)?;
            let bias = self
                .relative_bias
                .index_select(&rel, 0)?
                .reshape((seq, seq, self.heads))?
                .permute((2, 0, 1))?
                .unsqueeze(0)?;
            let mask = Tensor::from_vec(mask, (n, 1, 1, seq), &self.device)?;
            let bias = bias.broadcast_add(&mask)?.contiguous()?;
            for layer in &self.layers {
                x = self.layer(layer, &x, &bias, n, seq)?;
            }
            x.flatten_all()?.to_vec1::<f32>()
        };
        let data = run().map_err(|e| format!("forward pass failed: {e}"))?;
        let starts = (0..n).map(|k| k * seq).collect();
        Ok(Hidden { data, starts })
    }

    fn layer(
        &self,
        l: &Layer,
        x: &Tensor,
        bias: &Tensor,
        n: usize,
        seq: usize,
    ) -> candle_core::Result<Tensor> {
        let heads = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((n, seq, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(l.q.forward(x)?)?;
        let k = heads(l.k.forward(x)?)?;
        let v = heads(l.v.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = scores.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((n, seq, self.hidden))?;
        let a = l.attention_norm.forward(&(l.o.forward(&context)? + x)?)?;
        let i = l.intermediate.forward(&a)?.gelu_erf()?;
        l.output_norm.forward(&(l.output.forward(&i)? + a)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_transformers() {
        // From transformers' MPNetEncoder.relative_position_bucket(num_buckets=32,
        // max_distance=128), rel = key position - query position.
        let want = [
            (-600, 15),
            (-200, 15),
            (-129, 15),
            (-128, 15),
            (-127, 15),
            (-64, 14),
            (-33, 12),
            (-32, 12),
            (-31, 11),
            (-17, 10),
            (-16, 10),
            (-15, 9),
            (-12, 9),
            (-11, 8),
            (-9, 8),
            (-8, 8),
            (-7, 7),
            (-1, 1),
            (0, 0),
            (1, 17),
            (7, 23),
            (8, 24),
            (9, 24),
            (11, 24),
            (12, 25),
            (15, 25),
            (16, 26),
            (17, 26),
            (31, 27),
            (32, 28),
            (33, 28),
            (64, 30),
            (127, 31),
            (128, 31),
            (129, 31),
            (200, 31),
            (600, 31),
        ];
        for (rel, b) in want {
            assert_eq!(bucket(rel, 32), b, "rel {rel}");
        }
    }
}
