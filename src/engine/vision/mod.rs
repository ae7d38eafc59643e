//! CLIP's and SigLIP's towers. An image tower: a picture's pixels (made by
//! [`crate::images::Preprocess`]) to one vector in the space its text tower ([`text`]) shares.
//! The picture is cut into square patches, each patch's pixels projected to a vector (the
//! patch convolution: a linear layer over the patch's `channels × patch × patch` values, since
//! its stride is its size), CLIP's class vector goes first, and the one encoder runs over them
//! as over a text's tokens. CLIP projects the class row, after the final norm, into the shared
//! space; SigLIP pools every row with an attention head ([`attention_pool`]). Both are mapped
//! by [`super::checkpoint::clip`] and [`super::checkpoint::siglip`]; [`score`] scores a text
//! against an image as the model does.

mod attention_pool;
pub mod score;
pub mod text;
pub mod towers;

pub use score::Scorer;
pub use text::TextTower;
pub use towers::Towers;

use super::checkpoint::towers::{CLASS, ImageShape, PATCH, PATCH_BIAS, PROJECTION};
use super::checkpoint::{Tensors, clip, siglip};
use super::encoder::{Calibrate, Encoder};
use super::kernels::Linear;
use super::stored;
use crate::config::Precision;
use attention_pool::AttentionPool;

const FILE: &str = "model.safetensors";

/// The checkpoint family of a two-tower model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// transformers' `CLIPModel` (`model_type` `clip`).
    Clip,
    /// transformers' `SiglipModel` (`model_type` `siglip`; SigLIP 2 at a fixed resolution).
    Siglip,
}

impl Family {
    /// The family `config.json` names.
    pub fn of(config_json: &[u8]) -> Result<Family, String> {
        #[derive(serde::Deserialize)]
        struct Named {
            model_type: Option<String>,
        }
        let named: Named = serde_json::from_slice(config_json)
            .map_err(|e| format!("config.json: not JSON: {e}"))?;
        match named.model_type.as_deref() {
            Some("clip") => Ok(Family::Clip),
            Some("siglip") => Ok(Family::Siglip),
            Some(other) => Err(format!(
                "config.json: model_type {other:?} is no image-text model (clip, siglip)"
            )),
            None => Err("config.json: no model_type (clip, siglip)".into()),
        }
    }
}

/// The precision a tower runs in: bf16 on AMX, else f32 (as every model's, see
/// [`Precision::on_this_machine`]: bf16's layers run on AMX's kernels alone); int8-fast only
/// with inputs for its calibration pass (`calibrated`).
fn tower_precision(precision: Precision, calibrated: bool) -> Result<Precision, String> {
    match precision.on_this_machine() {
        (Precision::Int8Fast, _) if !calibrated => Err(
            "int8-fast needs calibration inputs for a tower (pictures for an image tower, texts for a text tower)".into(),
        ),
        (runs, _) => Ok(runs),
    }
}

/// How an image tower makes one vector of its rows.
enum Pool {
    /// CLIP: the class row, projected.
    Class(Linear),
    /// SigLIP: the attention-pooling head.
    Attention(Box<AttentionPool>),
}

/// A loaded image tower.
pub struct ImageTower {
    encoder: Encoder,
    shape: ImageShape,
    patch: Linear,
    class: Option<Vec<f32>>,
    pool: Pool,
}

impl ImageTower {
    /// Builds the image tower of a `CLIPModel` or `SiglipModel` from its `config.json` and
    /// tensors (the text tower's are ignored), in the precision [`tower_precision`] says.
    pub fn load(
        config_json: &[u8],
        tensors: Tensors,
        precision: Precision,
    ) -> Result<Self, String> {
        Self::load_calibrated(config_json, tensors, precision, &[])
    }

    /// [`ImageTower::load`], with `calibration` pictures (as the processor makes them) for
    /// int8-fast's calibration pass.
    pub fn load_calibrated(
        config_json: &[u8],
        tensors: Tensors,
        precision: Precision,
        calibration: &[Vec<f32>],
    ) -> Result<Self, String> {
        let precision = tower_precision(precision, !calibration.is_empty())?;
        let family = Family::of(config_json)?;
        let (blueprint, shape) = match family {
            Family::Clip => clip::vision_blueprint(config_json)?,
            Family::Siglip => siglip::vision_blueprint(config_json)?,
        };
        let h = blueprint.hidden;
        let mut tensors = match family {
            Family::Clip => clip::vision_tensors(tensors, h)?,
            Family::Siglip => siglip::vision_tensors(tensors, h)?,
        };
        let (c, p) = (shape.channels, shape.patch_size);
        let patch = stored::take_f32(&mut tensors, PATCH, &[h, c, p, p], FILE)?;
        let (patch_bias, class, pool) = match family {
            // CLIP's convolution has no bias, nor has its projection.
            Family::Clip => {
                let class = stored::take_f32(&mut tensors, CLASS, &[h], FILE)?;
                let dim = shape.projection_dim;
                let projection = stored::take_f32(&mut tensors, PROJECTION, &[dim, h], FILE)?;
                let projection = Linear::from_torch(&projection, vec![0.0; dim], dim, h);
                (vec![0.0; h], Some(class), Pool::Class(projection))
            }
            Family::Siglip => {
                let bias = stored::take_f32(&mut tensors, PATCH_BIAS, &[h], FILE)?;
                let pool = AttentionPool::load(&mut tensors, &blueprint)?;
                (bias, None, Pool::Attention(Box::new(pool)))
            }
        };
        let tokens = shape.grid() * shape.grid() + usize::from(class.is_some());
        let patch = Linear::from_torch(&patch, patch_bias, h, c * p * p);
        let calibrate = match precision {
            Precision::Int8Fast => {
                let pictures: Vec<&[f32]> = calibration.iter().map(Vec::as_slice).collect();
                check_inputs(shape, &pictures)?;
                Calibrate::Vectors {
                    x: input_rows(&patch, class.as_deref(), shape, h, &pictures),
                    lens: vec![tokens; pictures.len()],
                }
            }
            _ => Calibrate::Texts(&[]),
        };
        let encoder = Encoder::tower(blueprint, tensors, precision, tokens, calibrate)?;
        Ok(ImageTower {
            encoder,
            shape,
            patch,
            class,
            pool,
        })
    }

    /// What the tower takes and gives.
    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// The rows one image takes in the tower's pass (its patches, and CLIP's class row).
    pub fn tokens(&self) -> usize {
        self.shape.grid() * self.shape.grid() + usize::from(self.class.is_some())
    }

    /// Hands the pass buffers back (see `Encoder::release_workspace`).
    pub fn release_workspace(&self, wait: bool) {
        self.encoder.release_workspace(wait);
    }

    /// Bytes of the weights in memory.
    pub fn weight_bytes(&self) -> u64 {
        let pool = match &self.pool {
            Pool::Class(projection) => projection.bytes(),
            Pool::Attention(head) => head.bytes(),
        };
        let class = self.class.as_ref().map_or(0, |c| c.len() * 4);
        self.encoder.weight_bytes() + (self.patch.bytes() + pool + class) as u64
    }

    /// The vector of each image, given as `[channels, size, size]` floats (the processor's
    /// tensor, channels first).
    pub fn embed(&self, images: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        let (h, dim) = (self.encoder.hidden_size(), self.shape.projection_dim);
        check_inputs(self.shape, images)?;
        let tokens = self.tokens();
        let x = input_rows(&self.patch, self.class.as_deref(), self.shape, h, images);
        let lens = vec![tokens; images.len()];
        let hidden = self.encoder.forward_vectors(x, &lens)?;
        let out = match &self.pool {
            Pool::Class(projection) => {
                let mut pooled = Vec::with_capacity(images.len() * h);
                for &start in &hidden.starts {
                    pooled.extend_from_slice(&hidden.data[start * h..(start + 1) * h]);
                }
                let mut out = vec![0f32; images.len() * dim];
                projection.forward(&pooled, images.len(), None, &mut out);
                out
            }
            Pool::Attention(head) => head.pool(&hidden.data, images.len(), tokens),
        };
        Ok(out.chunks_exact(dim).map(<[f32]>::to_vec).collect())
    }
}

/// Refuses an image that is not `[channels, size, size]` floats.
fn check_inputs(shape: ImageShape, images: &[&[f32]]) -> Result<(), String> {
    let (c, s) = (shape.channels, shape.image_size);
    match images
        .iter()
        .enumerate()
        .find(|(_, img)| img.len() != c * s * s)
    {
        Some((i, img)) => Err(format!(
            "image {i} has {} values; the tower takes {c} × {s} × {s}",
            img.len()
        )),
        None => Ok(()),
    }
}

/// The encoder's input rows of each image: CLIP's class vector first, then each patch's
/// pixels through the patch convolution (`patch`, a linear layer over a patch's `channels ×
/// patch × patch` values, in the convolution weight's order: channel, row, column).
fn input_rows(
    patch: &Linear,
    class: Option<&[f32]>,
    shape: ImageShape,
    h: usize,
    images: &[&[f32]],
) -> Vec<f32> {
    let ImageShape {
        channels: c,
        image_size: s,
        patch_size: p,
        ..
    } = shape;
    let g = shape.grid();
    let patches = g * g;
    let mut rows = vec![0f32; images.len() * patches * c * p * p];
    let mut chunks = rows.chunks_exact_mut(c * p * p);
    for img in images {
        for gy in 0..g {
            for gx in 0..g {
                let Some(row) = chunks.next() else { break };
                for ch in 0..c {
                    for ky in 0..p {
                        let at = (ch * s + gy * p + ky) * s + gx * p;
                        let to = (ch * p + ky) * p;
                        row[to..to + p].copy_from_slice(&img[at..at + p]);
                    }
                }
            }
        }
    }
    let mut vectors = vec![0f32; images.len() * patches * h];
    patch.forward(&rows, images.len() * patches, None, &mut vectors);
    drop(rows);
    let first = usize::from(class.is_some());
    let tokens = patches + first;
    let mut x = vec![0f32; images.len() * tokens * h];
    for (seq, patch_rows) in x
        .chunks_exact_mut(tokens * h)
        .zip(vectors.chunks_exact(patches * h))
    {
        if let Some(class) = class {
            seq[..h].copy_from_slice(class);
        }
        seq[first * h..].copy_from_slice(patch_rows);
    }
    x
}
