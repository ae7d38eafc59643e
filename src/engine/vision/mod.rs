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
use super::encoder::Encoder;
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
/// [`Precision::on_this_machine`]: bf16's layers run on AMX's kernels alone); int8-fast needs
/// calibration images, which no package carries yet, and is refused.
fn tower_precision(precision: Precision) -> Result<Precision, String> {
    match precision.on_this_machine() {
        (Precision::Int8Fast, _) => Err(
            "int8-fast is not supported for an image or text tower yet (f32, int8, bf16)".into(),
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
        let precision = tower_precision(precision)?;
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
        let encoder = Encoder::tower(blueprint, tensors, precision, tokens)?;
        Ok(ImageTower {
            encoder,
            shape,
            patch: Linear::from_torch(&patch, patch_bias, h, c * p * p),
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
        let ImageShape {
            channels: c,
            image_size: s,
            projection_dim,
            ..
        } = self.shape;
        let (g, h) = (self.shape.grid(), self.encoder.hidden_size());
        if let Some((i, img)) = images
            .iter()
            .enumerate()
            .find(|(_, img)| img.len() != c * s * s)
        {
            return Err(format!(
                "image {i} has {} values; the tower takes {c} × {s} × {s}",
                img.len()
            ));
        }
        let patches = g * g;
        let vectors = self.patch_vectors(images);
        // The class vector first (CLIP), then the patches, for each image.
        let first = usize::from(self.class.is_some());
        let tokens = patches + first;
        let mut x = vec![0f32; images.len() * tokens * h];
        for (seq, patch_rows) in x
            .chunks_exact_mut(tokens * h)
            .zip(vectors.chunks_exact(patches * h))
        {
            if let Some(class) = &self.class {
                seq[..h].copy_from_slice(class);
            }
            seq[first * h..].copy_from_slice(patch_rows);
        }
        drop(vectors);
        let lens = vec![tokens; images.len()];
        let hidden = self.encoder.forward_vectors(x, &lens)?;
        let out = match &self.pool {
            Pool::Class(projection) => {
                let mut pooled = Vec::with_capacity(images.len() * h);
                for &start in &hidden.starts {
                    pooled.extend_from_slice(&hidden.data[start * h..(start + 1) * h]);
                }
                let mut out = vec![0f32; images.len() * projection_dim];
                projection.forward(&pooled, images.len(), None, &mut out);
                out
            }
            Pool::Attention(head) => head.pool(&hidden.data, images.len(), tokens),
        };
        Ok(out
            .chunks_exact(projection_dim)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Each image's patches through the patch convolution: `images × patches` rows.
    fn patch_vectors(&self, images: &[&[f32]]) -> Vec<f32> {
        let ImageShape {
            channels: c,
            image_size: s,
            patch_size: p,
            ..
        } = self.shape;
        let (g, h) = (self.shape.grid(), self.encoder.hidden_size());
        // Each patch's pixels as one row, in the convolution weight's order (channel, row,
        // column).
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
        self.patch
            .forward(&rows, images.len() * patches, None, &mut vectors);
        vectors
    }
}
