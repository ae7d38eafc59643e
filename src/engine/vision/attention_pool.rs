//! SigLIP's attention-pooling head (transformers' `SiglipMultiheadAttentionPoolingHead`): one
//! learned query (the probe) attends over an image's rows with `torch.nn.MultiheadAttention`'s
//! projections; its output `a` becomes `a + mlp(layer_norm(a))`, the image's vector.

use crate::engine::blueprint::Blueprint;
use crate::engine::checkpoint::Tensors;
use crate::engine::checkpoint::towers::HEAD;
use crate::engine::kernels::{self, Activation, Linear};
use crate::engine::stored;

use super::FILE;

pub(super) struct AttentionPool {
    hidden: usize,
    inner: usize,
    heads: usize,
    /// The probe's query, projected once at load.
    query: Vec<f32>,
    /// The rows' keys then values, one linear of `2 × hidden` outputs.
    key_value: Linear,
    out: Linear,
    norm: (Vec<f32>, Vec<f32>),
    eps: f32,
    up: Linear,
    down: Linear,
    activation: Activation,
}

impl AttentionPool {
    /// The head's tensors, taken out of `tensors`.
    pub(super) fn load(tensors: &mut Tensors, b: &Blueprint) -> Result<Self, String> {
        let (h, i) = (b.hidden, b.intermediate);
        let mut take = |name: &str, shape: &[usize]| {
            stored::take_f32(tensors, &format!("{HEAD}.{name}"), shape, FILE)
        };
        let probe = take("probe", &[1, 1, h])?;
        let in_w = take("attention.in_proj_weight", &[3 * h, h])?;
        let in_b = take("attention.in_proj_bias", &[3 * h])?;
        let out_w = take("attention.out_proj.weight", &[h, h])?;
        let out_b = take("attention.out_proj.bias", &[h])?;
        let norm = (
            take("layernorm.weight", &[h])?,
            take("layernorm.bias", &[h])?,
        );
        let up_w = take("mlp.fc1.weight", &[i, h])?;
        let up_b = take("mlp.fc1.bias", &[i])?;
        let down_w = take("mlp.fc2.weight", &[h, i])?;
        let down_b = take("mlp.fc2.bias", &[h])?;
        let query_layer = Linear::from_torch(&in_w[..h * h], in_b[..h].to_vec(), h, h);
        let mut query = vec![0f32; h];
        query_layer.forward(&probe, 1, None, &mut query);
        Ok(AttentionPool {
            hidden: h,
            inner: i,
            heads: b.heads,
            query,
            key_value: Linear::from_torch(&in_w[h * h..], in_b[h..].to_vec(), 2 * h, h),
            out: Linear::from_torch(&out_w, out_b, h, h),
            norm,
            eps: b.eps,
            up: Linear::from_torch(&up_w, up_b, i, h),
            down: Linear::from_torch(&down_w, down_b, h, i),
            activation: b.mlp.activation,
        })
    }

    pub(super) fn bytes(&self) -> usize {
        self.key_value.bytes()
            + self.out.bytes()
            + self.up.bytes()
            + self.down.bytes()
            + (self.query.len() + self.norm.0.len() + self.norm.1.len()) * 4
    }

    /// Each of `images` pooled from its `tokens` rows of `x`: `images × hidden` values.
    pub(super) fn pool(&self, x: &[f32], images: usize, tokens: usize) -> Vec<f32> {
        let (h, heads) = (self.hidden, self.heads);
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let rows = images * tokens;
        let mut kv = vec![0f32; rows * 2 * h];
        self.key_value.forward(x, rows, None, &mut kv);
        let mut context = vec![0f32; images * h];
        let mut scores = vec![0f32; tokens];
        for (img, ctx) in context.chunks_exact_mut(h).enumerate() {
            let kv = &kv[img * tokens * 2 * h..(img + 1) * tokens * 2 * h];
            for head in 0..heads {
                let q = &self.query[head * d..(head + 1) * d];
                for (t, s) in scores.iter_mut().enumerate() {
                    let k = &kv[t * 2 * h + head * d..t * 2 * h + (head + 1) * d];
                    *s = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                kernels::softmax(&mut scores);
                let out = &mut ctx[head * d..(head + 1) * d];
                for (t, &p) in scores.iter().enumerate() {
                    let v = &kv[t * 2 * h + h + head * d..t * 2 * h + h + (head + 1) * d];
                    out.iter_mut().zip(v).for_each(|(o, v)| *o += p * v);
                }
            }
        }
        let mut a = vec![0f32; images * h];
        self.out.forward(&context, images, None, &mut a);
        let mut normed = a.clone();
        kernels::layer_norm_rows(&mut normed, h, &self.norm.0, &self.norm.1, self.eps);
        let inner = self.inner;
        let mut up = vec![0f32; images * inner];
        self.up.forward(&normed, images, None, &mut up);
        kernels::activate(&mut up, inner, self.activation);
        let mut out = vec![0f32; images * h];
        self.down.forward(&up, images, Some(&a), &mut out);
        out
    }
}
