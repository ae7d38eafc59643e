//! One transformer layer: its weights ([`Layer`], [`Norm`]), the buffers a pass reuses
//! ([`Workspace`]), and its pass (attention block, then feed-forward block, with the norms
//! where the family puts them), which the forward pass runs for every layer and int8-fast's
//! load runs once per layer over the calibration texts, with a [`Probe`] watching the inputs
//! of its linear layers.

use super::attention::Attention;
use super::{Encoder, grow};
use crate::engine::blueprint::{Blueprint, Heads};
use crate::engine::kernels::{self, Linear};
use crate::memory::mapped::Mapped;
use rayon::prelude::*;

pub(super) struct Layer {
    pub(super) qkv: Linear,
    /// The per-head norms of queries and keys (families with [`Blueprint::qk_norm`]).
    pub(super) qk_norm: Option<QkNorm>,
    /// The norms of each block's output before its residual add
    /// ([`crate::engine::blueprint::Placement::Sandwich`]).
    pub(super) post_norms: Option<PostNorms>,
    pub(super) attention_out: Linear,
    /// `None` where the family takes the input as it is (ModernBERT's first layer).
    pub(super) attention_norm: Option<Norm>,
    /// The feed-forward block's first linear (gate and up side by side when gated).
    pub(super) up: Linear,
    pub(super) down: Linear,
    pub(super) output_norm: Norm,
}

impl Layer {
    pub(super) fn linears_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.qkv,
            &mut self.attention_out,
            &mut self.up,
            &mut self.down,
        ]
    }

    pub(super) fn bytes(&self) -> usize {
        let norms = self.attention_norm.as_ref().map_or(0, Norm::bytes)
            + self.output_norm.bytes()
            + self
                .qk_norm
                .as_ref()
                .map_or(0, |n| (n.query.len() + n.key.len()) * 4)
            + self
                .post_norms
                .as_ref()
                .map_or(0, |n| n.attention.bytes() + n.feed_forward.bytes());
        norms
            + [&self.qkv, &self.attention_out, &self.up, &self.down]
                .iter()
                .map(|l| l.bytes())
                .sum::<usize>()
    }

    /// int8-fast: the linears fed by a norm or by attention (query-key-value, attention
    /// output, the feed-forward block's first) to int8 × 8-bit, each smoothed by what `probe`
    /// saw of its input. The feed-forward block's second takes int8's 16-bit activations: its
    /// input, after the activation function, is where 8 bits lose most, and ranking showed it
    /// (the share of f32's ten nearest neighbours kept on `bench/compare`'s corpus rose from
    /// 97.8% to 98.7%, MiniLM's worst reference text from 0.9979 to 0.9985). It costs: a third
    /// of the products at int8's speed took int8-fast's short-text throughput from 1.27× ORT
    /// int8's to 0.88-0.94× (AMD EPYC Zen 4). 16-bit activations as two planes of bytes on the
    /// int8-fast kernels ran 785 texts/s against 707, but with one weight scale per output
    /// instead of per 32 inputs kept only 95.9% of the neighbours on CI's smaller corpus.
    /// `eight_bit_down`: the second linear takes 8-bit activations too, for a reranker, whose
    /// output is one score per pair. `bench/rerank --rounds 1` (AMD EPYC Zen 3, AVX2): 20 pairs
    /// per request 0.98x -> 1.03x ORT int8's pairs/s, one pair 1.24x -> 1.07x its time; max
    /// score error 8.45e-3 -> 1.04e-2 (ORT int8 5.48e-2), top-5 agreement 100% (ORT 84%).
    /// And for a multi-vector (ColBERT) model, whose 32-token query it took from 1.40x ORT
    /// int8's time to 0.90x (`bench/colbert --rounds 5`, AMD EPYC Zen 4, 2 threads; worst
    /// token cosine to ORT int8's 0.961 -> 0.962; tests/colbert.rs against
    /// sentence-transformers 0.99998, MaxSim within 1.9e-3). A sparse
    /// model keeps 16 bits: the trained SPLADE's worst weight error rose from 3.8e-2 to 5.9e-2
    /// of a text's heaviest with 8, and its one text was already 0.86x ORT's time without.
    pub(super) fn quantize_fast(&mut self, probe: &Probe, eight_bit_down: bool) {
        self.qkv.to_int8_fast(&probe.qkv);
        self.attention_out.to_int8_fast(&probe.context);
        self.up.to_int8_fast(&probe.ffn);
        match eight_bit_down {
            true => self.down.to_int8_fast(&probe.down),
            false => self.down.to_int8(),
        }
    }
}

/// A LayerNorm, or with no bias an RMSNorm ([`crate::engine::blueprint::NormKind`]).
pub(super) struct Norm {
    pub(super) gamma: Mapped<f32>,
    /// LayerNorm's bias; `None` for an RMSNorm.
    pub(super) beta: Option<Mapped<f32>>,
}

impl Norm {
    pub(super) fn bytes(&self) -> usize {
        (self.gamma.len() + self.beta.as_ref().map_or(0, |b| b.len())) * 4
    }

    pub(super) fn apply(&self, x: &mut [f32], width: usize, eps: f32) {
        match &self.beta {
            Some(beta) => kernels::layer_norm_rows(x, width, &self.gamma, beta, eps),
            None => kernels::rms_norm_rows(x, width, &self.gamma, eps),
        }
    }
}

/// The norms Gemma 3 puts on the attention block's and the feed-forward block's outputs
/// before each residual add.
pub(super) struct PostNorms {
    pub(super) attention: Norm,
    pub(super) feed_forward: Norm,
}

/// `x += residual`, elementwise, on the pool when it is large.
fn add_residual(x: &mut [f32], residual: &[f32], width: usize) {
    let residual = &residual[..x.len()];
    let add = |(x, r): (&mut [f32], &[f32])| x.iter_mut().zip(r).for_each(|(x, r)| *x += r);
    let width = width.max(1);
    if x.len() < kernels::PARALLEL_MIN {
        x.chunks_mut(width)
            .zip(residual.chunks(width))
            .for_each(add);
    } else {
        x.par_chunks_mut(width)
            .zip(residual.par_chunks(width))
            .for_each(add);
    }
}

/// RMSNorms of each query head and each key head, one weight per head value, shared by the
/// heads (Qwen3's `q_norm` and `k_norm`).
pub(super) struct QkNorm {
    pub(super) query: Mapped<f32>,
    pub(super) key: Mapped<f32>,
}

impl QkNorm {
    /// Normalises the query and key heads of each token's row of `qkv` (rows of
    /// `heads.qkv_width()`, `rows` of them) in place.
    fn apply(&self, qkv: &mut [f32], rows: usize, heads: Heads, eps: f32) {
        let (q, k) = (heads.q_width(), heads.kv_width());
        kernels::for_rows(
            &mut qkv[..rows * heads.qkv_width()],
            heads.qkv_width(),
            |row| {
                for head in row[..q].chunks_exact_mut(heads.dim) {
                    kernels::rms_norm(head, &self.query, eps);
                }
                for head in row[q..q + k].chunks_exact_mut(heads.dim) {
                    kernels::rms_norm(head, &self.key, eps);
                }
            },
        );
    }
}

/// Buffers of one forward pass, reused by the next.
#[derive(Default)]
pub(super) struct Workspace {
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    /// A block's normalised input (norms before each block only).
    normed: Vec<f32>,
    /// The feed-forward block's inner layer, for one slice of rows.
    up: Vec<f32>,
    /// Its gated half (gated blocks only).
    gated: Vec<f32>,
}

impl Workspace {
    /// Makes every buffer large enough for a pass over `rows` tokens.
    pub(super) fn prepare(&mut self, b: &Blueprint, rows: usize) {
        let (h, heads) = (b.hidden, b.heads());
        grow(&mut self.qkv, rows * heads.qkv_width());
        grow(&mut self.context, rows * heads.q_width());
        grow(&mut self.attended, rows * h);
        let slice = rows.min(FFN_ROWS);
        grow(&mut self.up, slice * b.up_outputs());
        if b.mlp.gated {
            grow(&mut self.gated, slice * b.intermediate);
        }
        if b.norm.before_blocks() {
            grow(&mut self.normed, rows * h);
        }
    }
}

/// Rows the feed-forward block takes at a time: its inner layer is four to eight times the
/// token width, and this bounds it (24 MiB for a gated 3,072-wide block) whatever the length
/// of the pass, while leaving each GEMM rows enough for the whole pool.
pub(super) const FFN_ROWS: usize = 1024;

/// The largest magnitude each input channel of a layer's linears took during a pass:
/// int8-fast's smoothing is computed from it.
#[derive(Default)]
pub(super) struct Probe {
    /// The query-key-value projection's input.
    pub(super) qkv: Vec<f32>,
    /// The attention output's input (the heads' context).
    pub(super) context: Vec<f32>,
    /// The feed-forward block's input.
    pub(super) ffn: Vec<f32>,
    /// The feed-forward block's second linear's input (after the activation).
    pub(super) down: Vec<f32>,
}

/// Raises `max[k]` to every `|row[k]|` of `x`'s rows of `width`.
fn observe(max: &mut Vec<f32>, x: &[f32], width: usize) {
    max.resize(width, 0.0);
    for row in x.chunks_exact(width) {
        for (m, &v) in max.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
}

impl Encoder {
    /// Runs layer `l` (number `index`) over the token vectors `x`, in place; `probe`, when
    /// given, records its linears' inputs.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_pass(
        &self,
        l: &Layer,
        index: usize,
        x: &mut [f32],
        rows: usize,
        starts: &[usize],
        lens: &[usize],
        keys: &[usize],
        ws: &mut Workspace,
        mut probe: Option<&mut Probe>,
    ) {
        let b = &self.blueprint;
        let heads = b.heads();
        let window = b.window.as_ref().and_then(|w| w.of_layer(index));
        self.project_qkv(l, x, rows, starts, lens, window, ws, probe.as_deref_mut());
        Attention {
            heads,
            window,
            causal: b.causal,
            relative: self.relative.as_ref(),
            keys,
        }
        .run(&ws.qkv, starts, lens, &mut ws.context);
        self.attention_output(l, x, rows, ws, probe.as_deref_mut());
        self.feed_forward_block(l, x, rows, ws, probe);
    }

    /// The attention block's query-key-value projection of `x` into `ws.qkv`: normalised first
    /// where norms come before each block, then the heads' norms and rotary positions.
    #[allow(clippy::too_many_arguments)]
    fn project_qkv(
        &self,
        l: &Layer,
        x: &[f32],
        rows: usize,
        starts: &[usize],
        lens: &[usize],
        window: Option<usize>,
        ws: &mut Workspace,
        probe: Option<&mut Probe>,
    ) {
        let b = &self.blueprint;
        let (h, heads) = (b.hidden, b.heads());
        let Workspace { qkv, normed, .. } = ws;
        let input: &[f32] = match (&l.attention_norm, b.norm.before_blocks()) {
            (Some(norm), true) => {
                normed[..rows * h].copy_from_slice(x);
                norm.apply(&mut normed[..rows * h], h, b.eps);
                normed
            }
            _ => x,
        };
        if let Some(p) = probe {
            observe(&mut p.qkv, &input[..rows * h], h);
        }
        l.qkv.forward(input, rows, None, qkv);
        if let Some(norm) = &l.qk_norm {
            norm.apply(qkv, rows, heads, b.eps);
        }
        if let Some(rotary) = &self.rotary {
            rotary.apply(qkv, starts, lens, heads, window.is_some());
        }
    }

    /// `ws.attended` = the attention output's projection of `ws.context`, plus the residual
    /// `x` (Gemma 3's norm between them).
    fn attention_output(
        &self,
        l: &Layer,
        x: &[f32],
        rows: usize,
        ws: &mut Workspace,
        probe: Option<&mut Probe>,
    ) {
        let b = &self.blueprint;
        let h = b.hidden;
        let Workspace {
            context, attended, ..
        } = ws;
        if let Some(p) = probe {
            let q = b.heads().q_width();
            observe(&mut p.context, &context[..rows * q], q);
        }
        match &l.post_norms {
            None => l.attention_out.forward(context, rows, Some(x), attended),
            Some(post) => {
                l.attention_out.forward(context, rows, None, attended);
                post.attention.apply(&mut attended[..rows * h], h, b.eps);
                add_residual(&mut attended[..rows * h], x, h);
            }
        }
    }

    /// The feed-forward block over `ws.attended` into `x`, with the output norm where the
    /// family puts it (before the block's input, or after its residual add).
    fn feed_forward_block(
        &self,
        l: &Layer,
        x: &mut [f32],
        rows: usize,
        ws: &mut Workspace,
        mut probe: Option<&mut Probe>,
    ) {
        let b = &self.blueprint;
        let h = b.hidden;
        let Workspace {
            attended,
            normed,
            up,
            gated,
            ..
        } = ws;
        let attended = &mut attended[..rows * h];
        if b.norm.before_blocks() {
            normed[..rows * h].copy_from_slice(attended);
            l.output_norm.apply(&mut normed[..rows * h], h, b.eps);
            if let Some(p) = probe.as_deref_mut() {
                observe(&mut p.ffn, &normed[..rows * h], h);
            }
            let down_probe = probe.map(|p| &mut p.down);
            self.feed_forward(
                l,
                &normed[..rows * h],
                attended,
                rows,
                up,
                gated,
                x,
                down_probe,
            );
        } else {
            if let Some(norm) = &l.attention_norm {
                norm.apply(attended, h, b.eps);
            }
            if let Some(p) = probe.as_deref_mut() {
                observe(&mut p.ffn, attended, h);
            }
            let down_probe = probe.map(|p| &mut p.down);
            self.feed_forward(l, attended, attended, rows, up, gated, x, down_probe);
            l.output_norm.apply(x, h, b.eps);
        }
    }

    /// `out = down(act(up(input))) + residual` (gated: `act(gate) · up`), `FFN_ROWS` rows at
    /// a time; `probe`, when given, records the second linear's input.
    #[allow(clippy::too_many_arguments)]
    fn feed_forward(
        &self,
        l: &Layer,
        input: &[f32],
        residual: &[f32],
        rows: usize,
        up: &mut [f32],
        gated: &mut [f32],
        out: &mut [f32],
        mut probe: Option<&mut Vec<f32>>,
    ) {
        let (h, i, mlp) = (
            self.blueprint.hidden,
            self.blueprint.intermediate,
            self.blueprint.mlp,
        );
        for first in (0..rows).step_by(FFN_ROWS) {
            let n = FFN_ROWS.min(rows - first);
            let span = first * h..(first + n) * h;
            l.up.forward(&input[span.clone()], n, None, up);
            let inner: &[f32] = if mlp.gated {
                kernels::gate(up, n, i, mlp.activation, gated);
                gated
            } else {
                kernels::activate(&mut up[..n * i], i, mlp.activation);
                up
            };
            if let Some(p) = probe.as_deref_mut() {
                observe(p, &inner[..n * i], i);
            }
            match &l.post_norms {
                None => l
                    .down
                    .forward(inner, n, Some(&residual[span.clone()]), &mut out[span]),
                Some(post) => {
                    let out = &mut out[span.clone()];
                    l.down.forward(inner, n, None, out);
                    post.feed_forward.apply(out, h, self.blueprint.eps);
                    add_residual(out, &residual[span], h);
                }
            }
        }
    }
}
