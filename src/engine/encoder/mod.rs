//! The transformer encoder every supported architecture runs on: BERT's, onto which
//! [`super::checkpoint`] maps DistilBERT, XLM-RoBERTa and (with its relative position bias)
//! MPNet. Weights in, texts of token ids in, token vectors out; knows nothing about requests,
//! pooling or threads beyond the shared compute pool. One thing: the forward pass.
//!
//! Our own forward pass on [`super::kernels`] rather than candle's `BertModel`, for speed:
//! - texts are packed back to back, never padded: the linear layers only ever see real tokens,
//!   and attention runs per text over its own length, so no mask is needed and no padding is
//!   computed, whatever the mix of lengths in a batch;
//! - query, key and value are one GEMM; bias and residual are folded into the GEMMs;
//! - attention reads each head straight out of the fused projection with strides (no
//!   per-head copies) and keeps its scores in a small per-thread scratch;
//! - the buffers of one pass are kept for the next while the model is busy.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

use super::Precision;
use super::head::Head;
use super::kernels::{self, Activation, Linear, Mat};
use super::tokenize::Encoded;
use super::words::Words;
use crate::package::{Manifest, ModelKind};

/// Token vectors of one forward pass, one row of `hidden` floats per token.
pub struct Hidden {
    /// Row-major token vectors.
    pub data: Vec<f32>,
    /// Row of each text's first token: text `k`'s tokens are the rows from `starts[k]` on.
    pub starts: Vec<usize>,
}

struct Layer {
    qkv: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    intermediate: Linear,
    output: Linear,
    output_norm: Norm,
}

impl Layer {
    fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.qkv,
            &mut self.attention_out,
            &mut self.intermediate,
            &mut self.output,
        ]
    }
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// Buffers of one forward pass, reused by the next.
#[derive(Default)]
struct Workspace {
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    intermediate: Vec<f32>,
}

/// A loaded encoder.
pub struct Encoder {
    words: Words,
    positions: Vec<f32>,
    token_types: Vec<f32>,
    embeddings_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    intermediate: usize,
    vocab: usize,
    max_positions: usize,
    type_vocab: usize,
    eps: f32,
    activation: Activation,
    /// MPNet's relative position bias: per head, the bias of a key `rel` tokens after the
    /// query at `rel + max_positions - 1`.
    relative: Option<Vec<f32>>,
    /// A reranker's classification head, read by the engine thread after the pass.
    head: Option<Head>,
    workspace: Mutex<Workspace>,
}

thread_local! {
    /// Attention scores of the (text, head) a compute thread is working on.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A buffer pointer shared by attention tasks, which read it or each write their own
/// (text, head) block of it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: tasks only read the buffers they share, or write disjoint blocks (see `attention`).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Encoder {
    /// Builds the model from `config.json` and safetensors bytes (already verified) of the
    /// manifest's architecture (BERT, or one mapped onto it by [`super::checkpoint`]).
    /// Weights stored as f16 or bf16 are widened to f32; with [`Precision::Bf16`] (which the
    /// caller has checked this CPU runs) the linear layers' weights are then rounded to bf16.
    pub fn load(
        config_json: &[u8],
        weights: Vec<u8>,
        manifest: &Manifest,
        precision: Precision,
    ) -> Result<Self, String> {
        let tensors = candle_core::safetensors::load_buffer(&weights, &Device::Cpu)
            .map_err(|e| format!("model.safetensors: {e}"))?;
        drop(weights);
        let (config, mut tensors) =
            super::checkpoint::to_bert(manifest.architecture, config_json, tensors)?;
        check_config(&config, manifest)?;
        let labels = match manifest.kind {
            ModelKind::Embedding => None,
            ModelKind::Reranker => {
                super::checkpoint::head_tensors(manifest.architecture, &mut tensors)?;
                manifest.labels
            }
        };
        Self::from_tensors(&config, tensors, precision, labels)
    }

    /// Bytes of the weights in memory.
    pub fn weight_bytes(&self) -> u64 {
        let norm = |n: &Norm| n.gamma.len() + n.beta.len();
        let mut floats = self.positions.len() + self.token_types.len();
        floats += norm(&self.embeddings_norm) + self.relative.as_ref().map_or(0, Vec::len);
        let mut bytes = floats * 4 + self.words.bytes() + self.head.as_ref().map_or(0, Head::bytes);
        for layer in &self.layers {
            bytes += (norm(&layer.attention_norm) + norm(&layer.output_norm)) * 4;
            bytes += [
                &layer.qkv,
                &layer.attention_out,
                &layer.intermediate,
                &layer.output,
            ]
            .iter()
            .map(|l| l.bytes())
            .sum::<usize>();
        }
        bytes as u64
    }

    /// `labels`: the outputs of a reranker's head (under [`super::head`]'s names), `None` for
    /// an embedding model.
    fn from_tensors(
        c: &Config,
        tensors: HashMap<String, Tensor>,
        precision: Precision,
        labels: Option<usize>,
    ) -> Result<Self, String> {
        let mut w = Weights(tensors);
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let activation = match c.hidden_act {
            HiddenAct::Gelu => Activation::GeluErf,
            HiddenAct::GeluApproximate => Activation::GeluTanh,
            HiddenAct::Relu => Activation::Relu,
        };
        let words = w.take("embeddings.word_embeddings.weight", &[c.vocab_size, h])?;
        // In int8 the word table goes too: it is half of MiniLM's weights.
        let words = match precision {
            Precision::Int8 => Words::int8(&words, h),
            _ => Words::F32(words),
        };
        let positions = w.take(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, h],
        )?;
        let token_types = w.take(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, h],
        )?;
        let embeddings_norm = w.norm("embeddings.LayerNorm", h)?;
        let relative = match w
            .0
            .get(super::checkpoint::mpnet::RELATIVE_BIAS)
            .map(|t| t.dims().to_vec())
        {
            Some(dims) => {
                let buckets = dims.first().copied().unwrap_or(0);
                if buckets < 4 {
                    return Err(format!(
                        "model.safetensors: {} has {buckets} buckets; MPNet needs at least 4",
                        super::checkpoint::mpnet::RELATIVE_BIAS
                    ));
                }
                let table = w.take(
                    super::checkpoint::mpnet::RELATIVE_BIAS,
                    &[buckets, c.num_attention_heads],
                )?;
                Some(relative_rows(
                    &table,
                    buckets,
                    c.num_attention_heads,
                    c.max_position_embeddings,
                ))
            }
            None => None,
        };
        let head = match labels {
            None => None,
            Some(labels) => Some(Head::new(
                w.linear(super::head::DENSE, h, h)?,
                w.linear(super::head::OUT, labels, h)?,
            )?),
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let q = w.linear(&format!("{p}.attention.self.query"), h, h)?;
            let k = w.linear(&format!("{p}.attention.self.key"), h, h)?;
            let v = w.linear(&format!("{p}.attention.self.value"), h, h)?;
            let mut layer = Layer {
                qkv: Linear::concat(&[q, k, v]),
                attention_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attention_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                intermediate: w.linear(&format!("{p}.intermediate.dense"), i, h)?,
                output: w.linear(&format!("{p}.output.dense"), h, i)?,
                output_norm: w.norm(&format!("{p}.output.LayerNorm"), h)?,
            };
            // Layer by layer, so the next layer's f32 copies reuse the memory this one's
            // free: rounding all layers at the end left their f32 copies' 21 MB (MiniLM)
            // resident in the loader thread's malloc arena, trim or no trim.
            match precision {
                Precision::F32 => {}
                Precision::Int8 => {
                    // The value projection stays f32: of all the linears it alone put MiniLM's
                    // worst reference text at the edge of cosine 0.999 (0.99905 with it in
                    // int8, 0.9994 without, in simulation; see `kernels::int8`).
                    layer.qkv.to_int8_but_last(h);
                    let [_, attention_out, intermediate, output] = layer.linears_mut();
                    for l in [attention_out, intermediate, output] {
                        l.to_int8();
                    }
                }
                #[cfg(target_arch = "x86_64")]
                Precision::Bf16 => layer.linears_mut().into_iter().for_each(Linear::to_bf16),
                #[cfg(not(target_arch = "x86_64"))]
                Precision::Bf16 => return Err("bf16 needs Intel AMX (x86-64)".into()),
            }
            layers.push(layer);
        }
        Ok(Encoder {
            words,
            positions,
            token_types,
            embeddings_norm,
            layers,
            hidden: h,
            heads: c.num_attention_heads,
            intermediate: i,
            vocab: c.vocab_size,
            max_positions: c.max_position_embeddings,
            type_vocab: c.type_vocab_size,
            eps: c.layer_norm_eps as f32,
            activation,
            relative,
            head,
            workspace: Mutex::new(Workspace::default()),
        })
    }

    /// Width of the token vectors.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// A reranker's classification head; `None` for an embedding model.
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// Hands the buffers kept between passes back (the engine calls this once it is idle).
    /// Passes run on the pool's threads, whose scratch would otherwise outlive the model:
    /// this frees it too, on each thread once it is free (`wait`: before returning, as an
    /// unload must).
    pub fn release_workspace(&self, wait: bool) {
        *self.workspace.lock().unwrap_or_else(|p| p.into_inner()) = Workspace::default();
        fn scratch() {
            SCORES.with_borrow_mut(|s| *s = Vec::new());
            kernels::int8::release_thread_buffers();
        }
        if wait {
            rayon::broadcast(|_| scratch());
        } else {
            rayon::spawn_broadcast(|_| scratch());
        }
    }

    /// Runs one forward pass over `texts`, each attending only to its own tokens.
    pub fn forward(&self, texts: &[&Encoded]) -> Result<Hidden, String> {
        let h = self.hidden;
        let mut starts = Vec::with_capacity(texts.len());
        let mut rows = 0;
        for t in texts {
            if t.len() > self.max_positions {
                return Err(format!(
                    "a text of {} tokens exceeds the model's {} positions",
                    t.len(),
                    self.max_positions
                ));
            }
            if let Some(&id) = t.ids.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(format!(
                    "token id {id} is outside the model's vocabulary of {}",
                    self.vocab
                ));
            }
            if let Some(&ty) = t
                .type_ids
                .iter()
                .find(|&&ty| ty as usize >= self.type_vocab)
            {
                return Err(format!(
                    "token type {ty} is outside the model's {} token types",
                    self.type_vocab
                ));
            }
            starts.push(rows);
            rows += t.len();
        }
        let lens: Vec<usize> = texts.iter().map(|t| t.len()).collect();

        let mut x = vec![0f32; rows * h];
        self.embed(texts, &starts, &mut x);

        let mut ws = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        let Workspace {
            qkv,
            context,
            attended,
            intermediate,
        } = &mut *ws;
        grow(qkv, rows * 3 * h);
        grow(context, rows * h);
        grow(attended, rows * h);
        grow(intermediate, rows * self.intermediate);
        for l in &self.layers {
            l.qkv.forward(&x, rows, None, qkv);
            self.attention(qkv, &starts, &lens, context);
            l.attention_out.forward(context, rows, Some(&x), attended);
            let attended = &mut attended[..rows * h];
            kernels::layer_norm_rows(
                attended,
                h,
                &l.attention_norm.gamma,
                &l.attention_norm.beta,
                self.eps,
            );
            l.intermediate.forward(attended, rows, None, intermediate);
            kernels::activate(
                &mut intermediate[..rows * self.intermediate],
                self.intermediate,
                self.activation,
            );
            l.output
                .forward(intermediate, rows, Some(&*attended), &mut x);
            kernels::layer_norm_rows(
                &mut x,
                h,
                &l.output_norm.gamma,
                &l.output_norm.beta,
                self.eps,
            );
        }
        Ok(Hidden { data: x, starts })
    }

    /// Word + position + token type embeddings, normalised, one row per token.
    fn embed(&self, texts: &[&Encoded], starts: &[usize], x: &mut [f32]) {
        let h = self.hidden;
        for (t, &start) in texts.iter().zip(starts) {
            let rows = x[start * h..(start + t.len()) * h].chunks_exact_mut(h);
            for (pos, row) in rows.enumerate() {
                let (id, ty) = (t.ids[pos] as usize, t.type_ids[pos] as usize);
                let position = &self.positions[pos * h..(pos + 1) * h];
                let token_type = &self.token_types[ty * h..(ty + 1) * h];
                self.words.add_row(id, h, position, row);
                for (v, t) in row.iter_mut().zip(token_type) {
                    *v += t;
                }
            }
        }
        let norm = &self.embeddings_norm;
        kernels::layer_norm_rows(x, h, &norm.gamma, &norm.beta, self.eps);
    }

    /// Scaled dot-product attention of every head of every text over that text's own tokens:
    /// `qkv` holds each token's query, key and value side by side; `context` receives each
    /// token's heads side by side.
    fn attention(&self, qkv: &[f32], starts: &[usize], lens: &[usize], context: &mut [f32]) {
        let h = self.hidden;
        let d = h / self.heads;
        let stride = 3 * h;
        let scale = 1.0 / (d as f32).sqrt();
        let rows = starts.last().zip(lens.last()).map_or(0, |(s, l)| s + l);
        assert!(qkv.len() >= rows * stride && context.len() >= rows * h);
        let out = Shared(context.as_mut_ptr());
        let qkv = Shared(qkv.as_ptr() as *mut f32);
        let run = move |task: usize| {
            let (out, qkv) = (out, qkv);
            let (text, head) = (task / self.heads, task % self.heads);
            let (start, len) = (starts[text], lens[text]);
            SCORES.with_borrow_mut(|scores| {
                grow(scores, len * len);
                let scores = &mut scores[..len * len];
                // SAFETY: every offset below stays inside the text's rows of `qkv`
                // (`rows × 3h`, asserted above) and of `context` (`rows × h`); each task
                // writes only its own text's rows in its own head's `d` columns, so no two
                // tasks write the same element.
                unsafe {
                    let q = qkv.0.add(start * stride + head * d);
                    let k = q.add(h);
                    let v = q.add(2 * h);
                    // scores = scale · Q Kᵀ: Kᵀ(i, j) is K(j, i).
                    kernels::matmul(
                        (len, len, d),
                        Mat::row_major(scores.as_mut_ptr(), len),
                        Mat::row_major(q, stride),
                        Mat {
                            ptr: k,
                            row: 1,
                            col: stride as isize,
                        },
                        scale,
                        false,
                        gemm::Parallelism::None,
                    );
                    if let Some(rel) = &self.relative {
                        // Row i needs the bias of keys j - i = -i, ..., len - 1 - i.
                        let span = 2 * self.max_positions - 1;
                        let centre = head * span + self.max_positions - 1;
                        for (i, row) in scores.chunks_exact_mut(len).enumerate() {
                            let bias = &rel[centre - i..centre - i + len];
                            row.iter_mut().zip(bias).for_each(|(s, b)| *s += b);
                        }
                    }
                    for row in scores.chunks_exact_mut(len) {
                        kernels::softmax(row);
                    }
                    kernels::matmul(
                        (len, d, len),
                        Mat::row_major(out.0.add(start * h + head * d), h),
                        Mat::row_major(scores.as_mut_ptr(), len),
                        Mat::row_major(v, stride),
                        1.0,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        };
        // A short text's heads are too little work to hand to the pool.
        let work: usize = lens.iter().map(|l| l * l).sum::<usize>() * h;
        let tasks = starts.len() * self.heads;
        if work < ATTENTION_PARALLEL_MIN {
            (0..tasks).for_each(run);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
    }
}

/// Attention work (query × key × width, summed over texts) below which one thread does
/// every (text, head): a short text's heads are too little to hand to the pool.
const ATTENTION_PARALLEL_MIN: usize = 1 << 21;

/// MPNet's `[buckets, heads]` bias table unrolled per head over every relative position a
/// pass can meet, so attention adds a contiguous slice per query instead of looking up
/// buckets.
fn relative_rows(table: &[f32], buckets: usize, heads: usize, positions: usize) -> Vec<f32> {
    let span = 2 * positions - 1;
    let mut rows = vec![0f32; heads * span];
    for head in 0..heads {
        for (i, v) in rows[head * span..(head + 1) * span].iter_mut().enumerate() {
            let rel = i as i64 - (positions as i64 - 1);
            *v = table[super::checkpoint::mpnet::bucket(rel, buckets) * heads + head];
        }
    }
    rows
}

/// Makes `v` at least `len` long (new room is zeroed; callers overwrite what they use).
fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// The checkpoint's tensors, taken one by one and widened to f32 (so the original and the
/// converted copy of a tensor are never both held for the whole model).
struct Weights(HashMap<String, Tensor>);

impl Weights {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let t = self
            .0
            .remove(name)
            .ok_or_else(|| format!("model.safetensors: no tensor {name}"))?;
        if t.dims() != shape {
            return Err(format!(
                "model.safetensors: tensor {name} has shape {:?}, config.json implies {shape:?}",
                t.dims()
            ));
        }
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format!("model.safetensors: tensor {name}: {e}"))
    }

    /// A LayerNorm, under the `weight`/`bias` names or the older `gamma`/`beta`.
    fn norm(&mut self, prefix: &str, size: usize) -> Result<Norm, String> {
        let (g, b) = if self.0.contains_key(&format!("{prefix}.weight")) {
            ("weight", "bias")
        } else {
            ("gamma", "beta")
        };
        Ok(Norm {
            gamma: self.take(&format!("{prefix}.{g}"), &[size])?,
            beta: self.take(&format!("{prefix}.{b}"), &[size])?,
        })
    }

    fn linear(&mut self, prefix: &str, outputs: usize, inputs: usize) -> Result<Linear, String> {
        let weight = self.take(&format!("{prefix}.weight"), &[outputs, inputs])?;
        let bias = self.take(&format!("{prefix}.bias"), &[outputs])?;
        Ok(Linear::from_torch(&weight, bias, outputs, inputs))
    }
}

/// Refuses a `config.json` that disagrees with the manifest, before any weight is touched.
fn check_config(config: &Config, manifest: &Manifest) -> Result<(), String> {
    if config.hidden_size != manifest.dimensions {
        return Err(format!(
            "config.json hidden_size {} differs from the manifest's dimensions {}",
            config.hidden_size, manifest.dimensions
        ));
    }
    if manifest.max_seq_length > config.max_position_embeddings {
        return Err(format!(
            "the manifest's max_seq_length {} exceeds config.json max_position_embeddings {}",
            manifest.max_seq_length, config.max_position_embeddings
        ));
    }
    if config.num_attention_heads == 0
        || !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
    {
        return Err(format!(
            "config.json hidden_size {} is not a multiple of num_attention_heads {}",
            config.hidden_size, config.num_attention_heads
        ));
    }
    Ok(())
}
