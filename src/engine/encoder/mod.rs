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
mod build;
mod layer;
mod rotary;
mod weights;

use std::sync::Mutex;

use super::stored::Tensors;

use super::Precision;
use super::blueprint::Blueprint;
use super::head::Head;
use super::kernels;
use super::sparse::SparseHead;
use super::tokenize::Encoded;
use super::words::Words;
use crate::memory::mapped::Mapped;
use crate::package::{Manifest, ModelKind};
use attention::RelativeBias;
use layer::{FFN_ROWS, Layer, Norm, Workspace};

/// What int8-fast's calibration pass runs over while the layers are built: texts (a text
/// model's, a text tower's), or an image tower's input vectors (`lens[k]` rows each, the
/// hidden width wide, one input after another); no texts for another precision.
pub enum Calibrate<'a> {
    /// Tokenized texts.
    Texts(&'a [Encoded]),
    /// Vectors in place of words.
    Vectors {
        /// The rows.
        x: Vec<f32>,
        /// Rows of each input.
        lens: Vec<usize>,
    },
}

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
    positions: Option<Mapped<f32>>,
    token_types: Mapped<f32>,
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
    /// A sparse model's head, read by the engine thread after the pass.
    sparse: Option<SparseHead>,
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
        let (mut labels, mut sparse) = (None, None);
        match manifest.kind {
            ModelKind::Embedding | ModelKind::MultiVector => {}
            ModelKind::ImageText => {
                return Err("a two-tower model's towers are built by engine::vision".into());
            }
            ModelKind::Reranker => {
                super::checkpoint::head_tensors(manifest.architecture, &mut tensors)?;
                labels = manifest.labels;
            }
            ModelKind::Sparse => {
                super::checkpoint::sparse_tensors(manifest.architecture, &mut tensors)?;
                let term = manifest
                    .sparse_activation
                    .ok_or("the manifest of a sparse model has no sparse_activation")?;
                sparse = Some((term, manifest.pooling));
            }
        }
        Self::from_tensors(
            blueprint,
            tensors,
            precision,
            build::Heads {
                labels,
                sparse,
                token_vectors: manifest.kind == ModelKind::MultiVector,
            },
            manifest.max_seq_length,
            Calibrate::Texts(calibration),
        )
    }

    /// A tower's encoder ([`crate::engine::vision`]): `tensors` under the encoder's names,
    /// taking inputs of up to `tokens` vectors or tokens; int8-fast's calibration pass runs
    /// over `calibration` (texts, or an image tower's vectors).
    pub(in crate::engine) fn tower(
        blueprint: Blueprint,
        tensors: Tensors,
        precision: Precision,
        tokens: usize,
        calibration: Calibrate<'_>,
    ) -> Result<Self, String> {
        let heads = build::Heads {
            labels: None,
            sparse: None,
            token_vectors: false,
        };
        Self::from_tensors(blueprint, tensors, precision, heads, tokens, calibration)
    }

    /// Bytes of the weights in memory.
    pub fn weight_bytes(&self) -> u64 {
        let floats = self.positions.as_ref().map_or(0, |p| p.len()) + self.token_types.len();
        let mut bytes = floats * 4
            + self.words.bytes()
            + self.embeddings_norm.as_ref().map_or(0, Norm::bytes)
            + self.final_norm.as_ref().map_or(0, Norm::bytes)
            + self.relative.as_ref().map_or(0, |r| r.len() * 4)
            + self.rotary.as_ref().map_or(0, rotary::Tables::bytes)
            + self.head.as_ref().map_or(0, Head::bytes)
            + self.sparse.as_ref().map_or(0, SparseHead::bytes);
        bytes += self.layers.iter().map(Layer::bytes).sum::<usize>();
        bytes as u64
    }

    /// Width of the token vectors.
    pub fn hidden_size(&self) -> usize {
        self.blueprint.hidden
    }

    /// A reranker's classification head; `None` for an embedding model.
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// A sparse model's language-model head and pooling; `None` for the other kinds.
    pub fn sparse(&self) -> Option<&SparseHead> {
        self.sparse.as_ref()
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
            if t.unattended >= t.len() {
                return Err(format!(
                    "a text of {} tokens has {} that nothing attends to (at least one must be)",
                    t.len(),
                    t.unattended
                ));
            }
            starts.push(rows);
            rows += t.len();
        }
        let lens: Vec<usize> = texts.iter().map(|t| t.len()).collect();
        Ok((starts, lens, rows))
    }

    /// Runs one forward pass over `texts`, each attending only to its own tokens (and of
    /// those not to its `unattended` last ones).
    pub fn forward(&self, texts: &[&Encoded]) -> Result<Hidden, String> {
        let b = &self.blueprint;
        let h = b.hidden;
        let (starts, lens, rows) = self.check_texts(texts)?;
        // Each text's keys: its tokens less those nothing attends to.
        let keys: Vec<usize> = texts.iter().map(|t| t.len() - t.unattended).collect();
        let mut x = vec![0f32; rows * h];
        self.embed(texts, &starts, &mut x);
        Ok(self.run_layers(x, starts, &lens, &keys))
    }

    /// An image tower's pass ([`crate::engine::vision`]): `x` holds each input's vectors
    /// (`lens[k]` rows of the hidden width each, one after another) in place of word rows; the
    /// learned positions and the embedding norm are applied as to words, then every layer.
    pub(in crate::engine) fn forward_vectors(
        &self,
        mut x: Vec<f32>,
        lens: &[usize],
    ) -> Result<Hidden, String> {
        let h = self.blueprint.hidden;
        let rows: usize = lens.iter().sum();
        if x.len() != rows * h {
            return Err(format!("{} values are not {rows} rows of {h}", x.len()));
        }
        if let Some(&len) = lens.iter().find(|&&l| l > self.max_len || l == 0) {
            return Err(format!(
                "an input of {len} vectors: the model takes 1 to {}",
                self.max_len
            ));
        }
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |at, &l| Some(std::mem::replace(at, *at + l)))
            .collect();
        self.embed_vectors(&mut x, &starts, lens);
        Ok(self.run_layers(x, starts, lens, lens))
    }

    /// Learned positions, the token type's row and the embedding norm added to vectors given
    /// in place of words (`lens[k]` rows from `starts[k]`), as [`Encoder::embed`] adds them to
    /// words.
    fn embed_vectors(&self, x: &mut [f32], starts: &[usize], lens: &[usize]) {
        let h = self.blueprint.hidden;
        for (&start, &len) in starts.iter().zip(lens) {
            for (pos, row) in x[start * h..(start + len) * h]
                .chunks_exact_mut(h)
                .enumerate()
            {
                if let Some(positions) = &self.positions {
                    let p = &positions[pos * h..(pos + 1) * h];
                    row.iter_mut().zip(p).for_each(|(v, p)| *v += p);
                }
                row.iter_mut()
                    .zip(&self.token_types[..h])
                    .for_each(|(v, t)| *v += t);
            }
        }
        if let Some(norm) = &self.embeddings_norm {
            norm.apply(x, h, self.blueprint.eps);
        }
    }

    /// Every layer over the embedded rows `x`, then the final norm.
    fn run_layers(
        &self,
        mut x: Vec<f32>,
        starts: Vec<usize>,
        lens: &[usize],
        keys: &[usize],
    ) -> Hidden {
        let b = &self.blueprint;
        let (h, rows) = (b.hidden, lens.iter().sum());
        let mut ws = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        ws.prepare(b, rows);
        for (index, l) in self.layers.iter().enumerate() {
            self.layer_pass(l, index, &mut x, rows, &starts, lens, keys, &mut ws, None);
        }
        if let Some(norm) = &self.final_norm {
            norm.apply(&mut x, h, b.eps);
        }
        Hidden { data: x, starts }
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

/// Makes `v` at least `len` long (new room is zeroed; callers overwrite what they use).
fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// Refuses a `config.json` that disagrees with the manifest, before any weight is touched.
fn check_config(blueprint: &Blueprint, manifest: &Manifest) -> Result<(), String> {
    if manifest.kind == ModelKind::Sparse {
        if blueprint.vocab != manifest.dimensions {
            return Err(format!(
                "config.json vocab_size {} differs from the manifest's dimensions {} (a sparse model weighs every vocabulary term)",
                blueprint.vocab, manifest.dimensions
            ));
        }
    } else if blueprint.hidden != manifest.hidden_size() {
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
