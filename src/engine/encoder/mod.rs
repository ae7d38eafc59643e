//! The transformer encoder every supported family runs on, built from the [`Blueprint`]
//! [`super::checkpoint`] makes of a checkpoint: BERT's layer (DistilBERT, XLM-RoBERTa, MPNet
//! with its relative position bias) and its descendants' parts (rotary positions, gated
//! feed-forward blocks, norms before each block, layers that attend within a window). Weights
//! in, texts of token ids in, token vectors out; knows nothing about requests, pooling or
//! threads beyond the shared compute pool. One thing: the forward pass.
//!
//! Our own forward pass on [`super::kernels`] rather than candle's models, for speed:
//! - texts are packed back to back, never padded: the linear layers only ever see real tokens,
//!   and attention runs per text over its own length, so no mask is needed and no padding is
//!   computed, whatever the mix of lengths in a batch;
//! - query, key and value are one GEMM; bias and residual are folded into the GEMMs;
//! - attention reads each head straight out of the fused projection with strides (no
//!   per-head copies) and keeps only a block of queries' scores at a time ([`attention`]);
//! - the feed-forward block runs in slices of rows, so its wide inner layer never holds a
//!   long text's every token at once;
//! - the buffers of one pass are kept for the next while the model is busy.

mod attention;
mod layer;
mod rotary;
mod weights;

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::Tensor;

use super::checkpoint::Tensors;

use super::Precision;
use super::blueprint::{Blueprint, Placement, Positions, RELATIVE_BIAS};
use super::head::Head;
use super::kernels;
use super::tokenize::Encoded;
use super::words::Words;
use crate::package::{Manifest, ModelKind};
use attention::RelativeBias;
use layer::{FFN_ROWS, Layer, Norm, PostNorms, Probe, QkNorm, Workspace};
use weights::Weights;

/// Token vectors of one forward pass, one row of `hidden` floats per token.
pub struct Hidden {
    /// Row-major token vectors.
    pub data: Vec<f32>,
    /// Row of each text's first token: text `k`'s tokens are the rows from `starts[k]` on.
    pub starts: Vec<usize>,
}

/// A loaded encoder.
pub struct Encoder {
    blueprint: Blueprint,
    words: Words,
    /// Learned position rows (families with rotary positions have none).
    positions: Option<Vec<f32>>,
    token_types: Vec<f32>,
    /// `None` where the embeddings enter the first layer as they are (decoders).
    embeddings_norm: Option<Norm>,
    layers: Vec<Layer>,
    /// The norm after the last layer (norms before each block only).
    final_norm: Option<Norm>,
    /// Longest text a pass takes: the positions, and for rotary families what the manifest
    /// lets the tokenizer keep (the tables stop there).
    max_len: usize,
    relative: Option<RelativeBias>,
    rotary: Option<rotary::Tables>,
    /// A reranker's classification head, read by the engine thread after the pass.
    head: Option<Head>,
    workspace: Mutex<Workspace>,
}

impl Encoder {
    /// Builds the model from `config.json` and the tensors of `model.safetensors` (read by
    /// [`super::stored`] from verified bytes) of the manifest's architecture, mapped by
    /// [`super::checkpoint`]. Weights stored as f16, bf16 or int8 are widened to f32 (int8
    /// word rows stay int8 when the precision is); with [`Precision::Bf16`] (which the caller
    /// has checked this CPU runs) the linear layers' weights are then rounded to bf16.
    pub fn load(
        config_json: &[u8],
        tensors: Tensors,
        manifest: &Manifest,
        precision: Precision,
        calibration: &[Encoded],
    ) -> Result<Self, String> {
        let (blueprint, mut tensors) =
            super::checkpoint::map(manifest.architecture, config_json, tensors)?;
        check_config(&blueprint, manifest)?;
        let labels = match manifest.kind {
            ModelKind::Embedding => None,
            ModelKind::Reranker => {
                super::checkpoint::head_tensors(manifest.architecture, &mut tensors)?;
                manifest.labels
            }
        };
        Self::from_tensors(
            blueprint,
            tensors,
            precision,
            labels,
            manifest.max_seq_length,
            calibration,
        )
    }

    /// Bytes of the weights in memory.
    pub fn weight_bytes(&self) -> u64 {
        let floats = self.positions.as_ref().map_or(0, Vec::len) + self.token_types.len();
        let mut bytes = floats * 4
            + self.words.bytes()
            + self.embeddings_norm.as_ref().map_or(0, Norm::bytes)
            + self.final_norm.as_ref().map_or(0, Norm::bytes)
            + self.relative.as_ref().map_or(0, |r| r.len() * 4)
            + self.rotary.as_ref().map_or(0, rotary::Tables::bytes)
            + self.head.as_ref().map_or(0, Head::bytes);
        bytes += self.layers.iter().map(Layer::bytes).sum::<usize>();
        bytes as u64
    }

    /// `labels`: the outputs of a reranker's head (under [`super::head`]'s names), `None` for
    /// an embedding model. `max_seq_length`: the manifest's, which rotary tables cover.
    fn from_tensors(
        b: Blueprint,
        tensors: HashMap<String, Tensor>,
        precision: Precision,
        labels: Option<usize>,
        max_seq_length: usize,
        calibration: &[Encoded],
    ) -> Result<Self, String> {
        let mut w = Weights {
            tensors,
            int8_layers: precision == Precision::Int8,
        };
        let h = b.hidden;
        let words_name = "embeddings.word_embeddings.weight";
        // In int8 the word table goes too: it is half of MiniLM's weights (and stored int8
        // rows are taken as they are, never widened).
        let words = match precision {
            Precision::Int8 | Precision::Int8Fast => {
                match w.take_int8(words_name, &[b.vocab, h])? {
                    Some(rows) => Words::Stored(rows),
                    None => Words::int8(&w.take(words_name, &[b.vocab, h])?, h),
                }
            }
            _ => Words::F32(w.take(words_name, &[b.vocab, h])?),
        };
        let (positions, relative, rotary, max_len) = match &b.positions {
            Positions::Learned { max, relative_bias } => {
                let table = w.take("embeddings.position_embeddings.weight", &[*max, h])?;
                let relative = match relative_bias {
                    false => None,
                    true => Some(relative_bias_rows(&mut w, b.heads, *max)?),
                };
                (Some(table), relative, None, *max)
            }
            Positions::Rotary(r) => {
                let len = max_seq_length.min(r.max);
                (None, None, Some(rotary::Tables::new(r, len)), len)
            }
        };
        let token_types = w.take(
            "embeddings.token_type_embeddings.weight",
            &[b.type_vocab, h],
        )?;
        let embeddings_norm = match b.embedding_norm {
            true => Some(w.norm(b.norm_kind, "embeddings.LayerNorm", h)?),
            false => None,
        };
        let head = match labels {
            None => None,
            // A decoder reranker's head is its output row, without a bias.
            Some(labels) if b.causal => {
                let row = w.take(&format!("{}.weight", super::head::OUT), &[labels, h])?;
                Some(Head::single(kernels::Linear::from_torch(
                    &row,
                    vec![0.0; labels],
                    labels,
                    h,
                )))
            }
            Some(labels) => Some(Head::new(
                w.linear(super::head::DENSE, h, h)?,
                w.linear(super::head::OUT, labels, h)?,
            )?),
        };
        let layers = b.layers;
        // The encoder exists before its layers, so that int8-fast can run each layer over the
        // calibration texts as it is built (the layers before it already in place).
        let mut encoder = Encoder {
            words,
            positions,
            token_types,
            embeddings_norm,
            layers: Vec::with_capacity(layers),
            final_norm: None,
            max_len,
            relative,
            rotary,
            head,
            blueprint: b,
            workspace: Mutex::new(Workspace::default()),
        };
        let mut calibration = match precision {
            Precision::Int8Fast => Some(encoder.calibration_pass(calibration)?),
            _ => None,
        };
        for l in 0..layers {
            let mut layer = encoder.read_layer(&mut w, l)?;
            // Layer by layer, so the next layer's f32 copies reuse the memory this one's
            // free: rounding all layers at the end left their f32 copies' 21 MB (MiniLM)
            // resident in the loader thread's malloc arena, trim or no trim.
            match precision {
                Precision::F32 => {}
                Precision::Int8 => {
                    // The value projection stays f32: of all the linears it alone put MiniLM's
                    // worst reference text at the edge of cosine 0.999 (0.99905 with it in
                    // int8, 0.9994 without, in simulation; see `kernels::int8`).
                    layer
                        .qkv
                        .to_int8_but_last(encoder.blueprint.heads().kv_width());
                    let [_, attention_out, up, down] = layer.linears_mut();
                    for l in [attention_out, up, down] {
                        l.to_int8();
                    }
                }
                Precision::Int8Fast => {
                    // The f32 layer over the calibration texts: what its linears' inputs
                    // reach, and the next layer's input.
                    if let Some(c) = calibration.as_mut() {
                        let mut probe = Probe::default();
                        encoder.layer_pass(
                            &layer,
                            l,
                            &mut c.x,
                            c.rows,
                            &c.starts,
                            &c.lens,
                            &mut c.ws,
                            Some(&mut probe),
                        );
                        // A reranker's feed-forward output goes 8-bit too (see `quantize_fast`).
                        layer.quantize_fast(&probe, encoder.head.is_some());
                    }
                }
                #[cfg(target_arch = "x86_64")]
                Precision::Bf16 => layer
                    .linears_mut()
                    .into_iter()
                    .for_each(kernels::Linear::to_bf16),
                #[cfg(not(target_arch = "x86_64"))]
                Precision::Bf16 => return Err("bf16 needs Intel AMX (x86-64)".into()),
            }
            encoder.layers.push(layer);
        }
        drop(calibration);
        encoder.final_norm = match encoder.blueprint.norm {
            Placement::Post => None,
            Placement::Pre { .. } | Placement::Sandwich => {
                Some(w.norm(encoder.blueprint.norm_kind, "final_norm", h)?)
            }
        };
        Ok(encoder)
    }

    /// Layer `l`'s weights, in f32.
    fn read_layer(&self, w: &mut Weights, l: usize) -> Result<Layer, String> {
        let b = &self.blueprint;
        let (h, heads, kind) = (b.hidden, b.heads(), b.norm_kind);
        let p = format!("encoder.layer.{l}");
        let qkv = if w.has(&format!("{p}.attention.self.qkv.weight")) {
            w.linear(&format!("{p}.attention.self.qkv"), heads.qkv_width(), h)?
        } else {
            let (q, kv) = (heads.q_width(), heads.kv_width());
            w.qkv(&format!("{p}.attention.self"), q, kv, h)?
        };
        let qk_norm = match b.qk_norm {
            false => None,
            true => Some(QkNorm {
                query: w.take(&format!("{p}.attention.self.q_norm.weight"), &[heads.dim])?,
                key: w.take(&format!("{p}.attention.self.k_norm.weight"), &[heads.dim])?,
            }),
        };
        let attention_norm = match (b.norm, l) {
            (
                Placement::Pre {
                    first_attention_norm: false,
                },
                0,
            ) => None,
            _ => Some(w.norm(kind, &format!("{p}.attention.output.LayerNorm"), h)?),
        };
        let post_norms = match b.norm {
            Placement::Sandwich => Some(PostNorms {
                attention: w.norm(kind, &format!("{p}.attention.post_norm"), h)?,
                feed_forward: w.norm(kind, &format!("{p}.output.post_norm"), h)?,
            }),
            _ => None,
        };
        Ok(Layer {
            qkv,
            qk_norm,
            post_norms,
            attention_out: w.layer_linear(
                &format!("{p}.attention.output.dense"),
                h,
                heads.q_width(),
            )?,
            attention_norm,
            up: w.layer_linear(&format!("{p}.intermediate.dense"), b.up_outputs(), h)?,
            down: w.layer_linear(&format!("{p}.output.dense"), h, b.intermediate)?,
            output_norm: w.norm(kind, &format!("{p}.output.LayerNorm"), h)?,
        })
    }

    /// The calibration texts embedded, ready for the first layer (see [`calibration`]).
    fn calibration_pass(&self, texts: &[Encoded]) -> Result<Calibration, String> {
        if texts.is_empty() {
            return Err("int8-fast needs calibration texts".into());
        }
        let refs: Vec<&Encoded> = texts.iter().collect();
        let (starts, lens, rows) = self.check_texts(&refs)?;
        let mut x = vec![0f32; rows * self.blueprint.hidden];
        self.embed(&refs, &starts, &mut x);
        let mut ws = Workspace::default();
        ws.prepare(&self.blueprint, rows);
        Ok(Calibration {
            x,
            rows,
            starts,
            lens,
            ws,
        })
    }

    /// Width of the token vectors.
    pub fn hidden_size(&self) -> usize {
        self.blueprint.hidden
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
            attention::release_scratch();
            kernels::int8::release_thread_buffers();
        }
        if wait {
            rayon::broadcast(|_| scratch());
        } else {
            rayon::spawn_broadcast(|_| scratch());
        }
    }

    /// Checks every text fits the model (length, vocabulary, token types); returns each
    /// text's first row, its length, and the rows of the pass.
    fn check_texts(&self, texts: &[&Encoded]) -> Result<(Vec<usize>, Vec<usize>, usize), String> {
        let b = &self.blueprint;
        let mut starts = Vec::with_capacity(texts.len());
        let mut rows = 0;
        for t in texts {
            if t.len() > self.max_len {
                return Err(format!(
                    "a text of {} tokens exceeds the model's {} positions",
                    t.len(),
                    self.max_len
                ));
            }
            if let Some(&id) = t.ids.iter().find(|&&id| id as usize >= b.vocab) {
                return Err(format!(
                    "token id {id} is outside the model's vocabulary of {}",
                    b.vocab
                ));
            }
            if let Some(&ty) = t.type_ids.iter().find(|&&ty| ty as usize >= b.type_vocab) {
                return Err(format!(
                    "token type {ty} is outside the model's {} token types",
                    b.type_vocab
                ));
            }
            starts.push(rows);
            rows += t.len();
        }
        let lens: Vec<usize> = texts.iter().map(|t| t.len()).collect();
        Ok((starts, lens, rows))
    }

    /// Runs one forward pass over `texts`, each attending only to its own tokens.
    pub fn forward(&self, texts: &[&Encoded]) -> Result<Hidden, String> {
        let b = &self.blueprint;
        let h = b.hidden;
        let (starts, lens, rows) = self.check_texts(texts)?;
        let mut x = vec![0f32; rows * h];
        self.embed(texts, &starts, &mut x);

        let mut ws = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        ws.prepare(b, rows);
        for (index, l) in self.layers.iter().enumerate() {
            self.layer_pass(l, index, &mut x, rows, &starts, &lens, &mut ws, None);
        }
        if let Some(norm) = &self.final_norm {
            norm.apply(&mut x, h, b.eps);
        }
        Ok(Hidden { data: x, starts })
    }

    /// Word + position + token type embeddings, normalised, one row per token.
    fn embed(&self, texts: &[&Encoded], starts: &[usize], x: &mut [f32]) {
        let h = self.blueprint.hidden;
        for (t, &start) in texts.iter().zip(starts) {
            let rows = x[start * h..(start + t.len()) * h].chunks_exact_mut(h);
            for (pos, row) in rows.enumerate() {
                let (id, ty) = (t.ids[pos] as usize, t.type_ids[pos] as usize);
                let token_type = &self.token_types[ty * h..(ty + 1) * h];
                match &self.positions {
                    Some(positions) => {
                        self.words
                            .add_row(id, h, &positions[pos * h..(pos + 1) * h], row);
                        row.iter_mut().zip(token_type).for_each(|(v, t)| *v += t);
                    }
                    None => self.words.add_row(id, h, token_type, row),
                }
            }
        }
        if let Some(norm) = &self.embeddings_norm {
            norm.apply(x, h, self.blueprint.eps);
        }
    }
}

/// Bytes a forward pass over `tokens` rows whose longest text has `longest` tokens holds
/// beyond the weights: the token vectors, the [`Workspace`] and each pool thread's block of
/// attention scores. What admission reserves for a model's longest text.
pub fn activation_bytes(b: &Blueprint, tokens: usize, longest: usize) -> u64 {
    let (h, rows, heads) = (b.hidden, tokens, b.heads());
    let slice = rows.min(FFN_ROWS);
    let pre = b.norm.before_blocks();
    let floats = rows * h // the token vectors
        + rows * heads.qkv_width() // qkv
        + rows * heads.q_width() // context
        + rows * h // attended
        + usize::from(pre) * rows * h // normed
        + slice * b.up_outputs()
        + usize::from(b.mlp.gated) * slice * b.intermediate;
    // Every layer attends within the window, or some attend to the whole text.
    let reach = b
        .window
        .as_ref()
        .filter(|w| w.local.iter().all(|&l| l))
        .map(|w| w.reach);
    let scores = rayon::current_num_threads() * attention::scratch_bytes(longest, reach);
    (floats * 4 + scores) as u64
}

/// int8-fast's calibration texts on their way through the layers as they are built: the
/// token vectors entering the next layer, and the pass's layout and buffers.
struct Calibration {
    x: Vec<f32>,
    rows: usize,
    starts: Vec<usize>,
    lens: Vec<usize>,
    ws: Workspace,
}

/// MPNet's bias table, unrolled for attention.
fn relative_bias_rows(
    w: &mut Weights,
    heads: usize,
    positions: usize,
) -> Result<RelativeBias, String> {
    let buckets = w
        .tensors
        .get(RELATIVE_BIAS)
        .and_then(|t| t.dims().first().copied())
        .ok_or_else(|| format!("model.safetensors: no {RELATIVE_BIAS}"))?;
    if buckets < 4 {
        return Err(format!(
            "model.safetensors: {RELATIVE_BIAS} has {buckets} buckets; MPNet needs at least 4"
        ));
    }
    let table = w.take(RELATIVE_BIAS, &[buckets, heads])?;
    Ok(RelativeBias::new(&table, buckets, heads, positions))
}

/// Makes `v` at least `len` long (new room is zeroed; callers overwrite what they use).
fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// Refuses a `config.json` that disagrees with the manifest, before any weight is touched.
fn check_config(blueprint: &Blueprint, manifest: &Manifest) -> Result<(), String> {
    if blueprint.hidden != manifest.hidden_size() {
        return Err(format!(
            "config.json hidden_size {} differs from the manifest's {} {}",
            blueprint.hidden,
            if manifest.dense.is_empty() {
                "dimensions"
            } else {
                "dense[0].inputs"
            },
            manifest.hidden_size()
        ));
    }
    if manifest.max_seq_length > blueprint.max_positions() {
        return Err(format!(
            "the manifest's max_seq_length {} exceeds config.json max_position_embeddings {}",
            manifest.max_seq_length,
            blueprint.max_positions()
        ));
    }
    // Of a causal pass only the last token has seen the whole pair; a bidirectional
    // cross-encoder's head was trained on the first.
    let (token, pooling) = match blueprint.causal {
        true => ("last", crate::package::Pooling::LastToken),
        false => ("first", crate::package::Pooling::Cls),
    };
    if manifest.kind == ModelKind::Reranker && manifest.pooling != pooling {
        return Err(format!(
            "a {} reranker's head reads its {token} token: the manifest's pooling must be {}",
            manifest.architecture.as_str(),
            pooling.as_str()
        ));
    }
    Ok(())
}
