//! Building an [`Encoder`] from a checkpoint's tensors: the embeddings, positions and a
//! reranker's head, then layer by layer, each brought to the precision as it is read (int8-fast
//! after its f32 pass over the calibration texts).

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::Tensor;

use super::attention::RelativeBias;
use super::layer::{Layer, PostNorms, Probe, QkNorm, Workspace};
use super::rotary;
use super::weights::Weights;
use super::{Calibrate, Encoder, kernels};
use crate::engine::Precision;
use crate::engine::blueprint::{Blueprint, Placement, Positions, RELATIVE_BIAS};
use crate::engine::head::Head;
use crate::engine::sparse::SparseHead;
use crate::engine::tokenize::Encoded;
use crate::engine::words::Words;
use crate::memory::mapped::Mapped;
use crate::package::{Pooling, SparseActivation};

/// The head a model has after its encoder, if any.
pub(super) struct Heads {
    /// The outputs of a reranker's head (under [`crate::engine::head`]'s names).
    pub labels: Option<usize>,
    /// A sparse model's activation and pooling (its head under [`crate::engine::sparse`]'s
    /// names).
    pub sparse: Option<(SparseActivation, Pooling)>,
    /// Whether every token's vector is the output (a multi-vector model), not one pooled
    /// vector per text.
    pub token_vectors: bool,
}

impl Encoder {
    /// `heads`: none for an embedding model. `max_seq_length`: the manifest's, which rotary
    /// tables cover.
    pub(super) fn from_tensors(
        b: Blueprint,
        tensors: HashMap<String, Tensor>,
        precision: Precision,
        heads: Heads,
        max_seq_length: usize,
        calibration: Calibrate<'_>,
    ) -> Result<Self, String> {
        let mut w = Weights {
            tensors,
            int8_layers: precision == Precision::Int8,
        };
        let h = b.hidden;
        let words = read_words(&mut w, &b, precision)?;
        let positions = read_positions(&mut w, &b, max_seq_length)?;
        let token_types = w
            .take(
                "embeddings.token_type_embeddings.weight",
                &[b.type_vocab, h],
            )?
            .into();
        let embeddings_norm = match b.embedding_norm {
            true => Some(w.norm(b.norm_kind, "embeddings.LayerNorm", h)?),
            false => None,
        };
        let head = read_head(&mut w, &b, heads.labels)?;
        let layers = b.layers;
        // The encoder exists before its layers, so that int8-fast can run each layer over the
        // calibration texts as it is built (the layers before it already in place).
        let mut encoder = Encoder {
            words,
            positions: positions.table,
            token_types,
            embeddings_norm,
            layers: Vec::with_capacity(layers),
            final_norm: None,
            max_len: positions.max_len,
            relative: positions.relative,
            rotary: positions.rotary,
            head,
            sparse: None,
            blueprint: b,
            workspace: Mutex::new(Workspace::default()),
        };
        let mut calibration = match precision {
            Precision::Int8Fast => Some(encoder.calibration_pass(calibration)?),
            _ => None,
        };
        // int8-fast: whose feed-forward output goes 8-bit too (see `Layer::quantize_fast`).
        let eight_bit_down = encoder.head.is_some() || heads.token_vectors;
        for l in 0..layers {
            let mut layer = encoder.read_layer(&mut w, l)?;
            // Layer by layer, so the next layer's f32 copies reuse the memory this one's
            // free: rounding all layers at the end left their f32 copies' 21 MB (MiniLM)
            // resident in the loader thread's malloc arena, trim or no trim.
            let calibration = calibration.as_mut();
            encoder.convert_layer(&mut layer, l, precision, calibration, eight_bit_down)?;
            encoder.layers.push(layer);
        }
        encoder.final_norm = match encoder.blueprint.norm {
            Placement::Post => None,
            Placement::Pre { .. } | Placement::Sandwich => {
                Some(w.norm(encoder.blueprint.norm_kind, "final_norm", h)?)
            }
        };
        // A sparse head last: int8-fast's decoder is smoothed by what the calibration texts
        // bring it, the encoder's whole output.
        if let Some((term, pooling)) = heads.sparse {
            if let (Some(c), Some(norm)) = (calibration.as_mut(), &encoder.final_norm) {
                norm.apply(&mut c.x, h, encoder.blueprint.eps);
            }
            let rows = calibration.as_ref().map(|c| &c.x[..]);
            let b = &encoder.blueprint;
            encoder.sparse = Some(read_sparse(&mut w, b, term, pooling, precision, rows)?);
        }
        drop(calibration);
        Ok(encoder)
    }

    /// Brings layer `l`, read in f32, to `precision`; for int8-fast, runs it over the
    /// `calibration` texts first (which it leaves ready for the next layer).
    fn convert_layer(
        &self,
        layer: &mut Layer,
        l: usize,
        precision: Precision,
        calibration: Option<&mut Calibration>,
        eight_bit_down: bool,
    ) -> Result<(), String> {
        match precision {
            Precision::F32 => {}
            Precision::Int8 => {
                // The value projection stays f32: of all the linears it alone put MiniLM's
                // worst reference text at the edge of cosine 0.999 (0.99905 with it in
                // int8, 0.9994 without, in simulation; see `kernels::int8`).
                layer
                    .qkv
                    .to_int8_but_last(self.blueprint.heads().kv_width());
                let [_, attention_out, up, down] = layer.linears_mut();
                for l in [attention_out, up, down] {
                    l.to_int8();
                }
            }
            Precision::Int8Fast => {
                // The f32 layer over the calibration texts: what its linears' inputs
                // reach, and the next layer's input.
                if let Some(c) = calibration {
                    let mut probe = Probe::default();
                    self.layer_pass(
                        layer,
                        l,
                        &mut c.x,
                        c.rows,
                        &c.starts,
                        &c.lens,
                        &c.lens,
                        &mut c.ws,
                        Some(&mut probe),
                    );
                    layer.quantize_fast(&probe, eight_bit_down);
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
        Ok(())
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
                query: w
                    .take(&format!("{p}.attention.self.q_norm.weight"), &[heads.dim])?
                    .into(),
                key: w
                    .take(&format!("{p}.attention.self.k_norm.weight"), &[heads.dim])?
                    .into(),
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

    /// The calibration texts (see [`crate::engine::calibration`]) or vectors embedded, ready
    /// for the first layer.
    fn calibration_pass(&self, input: Calibrate<'_>) -> Result<Calibration, String> {
        let (x, starts, lens, rows) = match input {
            Calibrate::Texts([]) => return Err("int8-fast needs calibration texts".into()),
            Calibrate::Texts(texts) => {
                let refs: Vec<&Encoded> = texts.iter().collect();
                let (starts, lens, rows) = self.check_texts(&refs)?;
                let mut x = vec![0f32; rows * self.blueprint.hidden];
                self.embed(&refs, &starts, &mut x);
                (x, starts, lens, rows)
            }
            Calibrate::Vectors { mut x, lens } => {
                let rows: usize = lens.iter().sum();
                if rows == 0 || x.len() != rows * self.blueprint.hidden {
                    return Err(format!(
                        "int8-fast's calibration vectors: {} values for {rows} rows",
                        x.len()
                    ));
                }
                let starts: Vec<usize> = lens
                    .iter()
                    .scan(0, |at, &l| Some(std::mem::replace(at, *at + l)))
                    .collect();
                self.embed_vectors(&mut x, &starts, &lens);
                (x, starts, lens, rows)
            }
        };
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

/// The word table: in int8 (and int8-fast) it goes int8 too, as half of MiniLM's weights, its
/// stored int8 rows taken as they are, never widened.
fn read_words(w: &mut Weights, b: &Blueprint, precision: Precision) -> Result<Words, String> {
    let (name, h) = ("embeddings.word_embeddings.weight", b.hidden);
    Ok(match precision {
        Precision::Int8 | Precision::Int8Fast => match w.take_int8(name, &[b.vocab, h])? {
            Some(rows) => Words::Stored(rows),
            None => Words::int8(&w.take(name, &[b.vocab, h])?, h),
        },
        _ => Words::F32(w.take(name, &[b.vocab, h])?.into()),
    })
}

/// How a pass knows each token's position, and the longest text it takes.
struct PositionTables {
    /// Learned position rows.
    table: Option<Mapped<f32>>,
    relative: Option<RelativeBias>,
    rotary: Option<rotary::Tables>,
    max_len: usize,
}

/// The family's positions: learned rows (with MPNet's relative bias), or rotary tables up to
/// the manifest's `max_seq_length`.
fn read_positions(
    w: &mut Weights,
    b: &Blueprint,
    max_seq_length: usize,
) -> Result<PositionTables, String> {
    Ok(match &b.positions {
        Positions::Learned { max, relative_bias } => {
            let table = w.take("embeddings.position_embeddings.weight", &[*max, b.hidden])?;
            let relative = match relative_bias {
                false => None,
                true => Some(relative_bias_rows(w, b.heads, *max)?),
            };
            PositionTables {
                table: Some(table.into()),
                relative,
                rotary: None,
                max_len: *max,
            }
        }
        Positions::Rotary(r) => {
            let len = max_seq_length.min(r.max);
            PositionTables {
                table: None,
                relative: None,
                rotary: Some(rotary::Tables::new(r, len)),
                max_len: len,
            }
        }
    })
}

/// A reranker's head of `labels` outputs; `None` for an embedding model.
fn read_head(
    w: &mut Weights,
    b: &Blueprint,
    labels: Option<usize>,
) -> Result<Option<Head>, String> {
    let h = b.hidden;
    Ok(match labels {
        None => None,
        // A decoder reranker's head is its output row, without a bias.
        Some(labels) if b.causal => {
            let row = w.take(
                &format!("{}.weight", crate::engine::head::OUT),
                &[labels, h],
            )?;
            Some(Head::single(kernels::Linear::from_torch(
                &row,
                vec![0.0; labels],
                labels,
                h,
            )))
        }
        Some(labels) => Some(Head::new(
            w.linear(crate::engine::head::DENSE, h, h)?,
            w.linear(crate::engine::head::OUT, labels, h)?,
        )?),
    })
}

/// A sparse model's language-model head (a tied decoder's tensor is the word table's, which
/// [`crate::engine::checkpoint::sparse_tensors`] put under the decoder's name too).
fn read_sparse(
    w: &mut Weights,
    b: &Blueprint,
    term: SparseActivation,
    pooling: Pooling,
    precision: Precision,
    calibration: Option<&[f32]>,
) -> Result<SparseHead, String> {
    use crate::engine::sparse::{DECODER, NORM, Parts, TRANSFORM};
    let h = b.hidden;
    let parts = Parts {
        transform: w.linear(TRANSFORM, h, h)?,
        activation: b.mlp.activation,
        norm: (
            w.take(&format!("{NORM}.weight"), &[h])?,
            w.take(&format!("{NORM}.bias"), &[h])?,
            b.eps,
        ),
        decoder: (
            w.take(&format!("{DECODER}.weight"), &[b.vocab, h])?,
            w.take(&format!("{DECODER}.bias"), &[b.vocab])?,
        ),
    };
    SparseHead::new(parts, term, pooling, precision, calibration)
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
