//! An image tower: a picture's pixels (made by [`crate::images::Preprocess`]) to one vector in
//! the space its text tower shares. The picture is cut into square patches, each patch's
//! pixels projected to a vector (the patch convolution: a linear layer over the patch's
//! `channels × patch × patch` values, since its stride is its size), a class vector goes
//! first, and the one encoder runs over them as over a text's tokens; the class row, after
//! the final norm, is projected into the shared space. CLIP's (ViT) for now, mapped by
//! [`super::checkpoint::clip`].

use super::checkpoint::Tensors;
use super::checkpoint::clip::{self, CLASS, ImageShape, PATCH, PROJECTION};
use super::encoder::Encoder;
use super::kernels::Linear;
use super::stored;
use crate::config::Precision;

const FILE: &str = "model.safetensors";

/// A loaded image tower.
pub struct ImageTower {
    encoder: Encoder,
    shape: ImageShape,
    hidden: usize,
    patch: Linear,
    class: Vec<f32>,
    projection: Linear,
}

impl ImageTower {
    /// Builds CLIP's image tower from a `CLIPModel`'s `config.json` and tensors (the text
    /// tower's are ignored). f32, int8 and bf16; int8-fast needs calibration images, which
    /// no package carries yet, and is refused.
    pub fn load(
        config_json: &[u8],
        tensors: Tensors,
        precision: Precision,
    ) -> Result<Self, String> {
        if precision == Precision::Int8Fast {
            return Err(
                "int8-fast is not supported for an image tower yet (f32, int8, bf16)".into(),
            );
        }
        let (blueprint, shape) = clip::vision_blueprint(config_json)?;
        let h = blueprint.hidden;
        let mut tensors = clip::vision_tensors(tensors, h)?;
        let (c, p) = (shape.channels, shape.patch_size);
        let patch = stored::take_f32(&mut tensors, PATCH, &[h, c, p, p], FILE)?;
        let class = stored::take_f32(&mut tensors, CLASS, &[h], FILE)?;
        let projection =
            stored::take_f32(&mut tensors, PROJECTION, &[shape.projection_dim, h], FILE)?;
        let tokens = shape.grid() * shape.grid() + 1;
        let encoder = Encoder::image_tower(blueprint, tensors, precision, tokens)?;
        Ok(ImageTower {
            encoder,
            shape,
            hidden: h,
            // The convolution has no bias, nor has the projection.
            patch: Linear::from_torch(&patch, vec![0.0; h], h, c * p * p),
            class,
            projection: Linear::from_torch(
                &projection,
                vec![0.0; shape.projection_dim],
                shape.projection_dim,
                h,
            ),
        })
    }

    /// What the tower takes and gives.
    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// Bytes of the weights in memory.
    pub fn weight_bytes(&self) -> u64 {
        self.encoder.weight_bytes()
            + (self.patch.bytes() + self.projection.bytes() + self.class.len() * 4) as u64
    }

    /// The vector of each image, given as `[channels, size, size]` floats (the processor's
    /// tensor, channels first).
    pub fn embed(&self, images: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        let ImageShape {
            channels: c,
            image_size: s,
            patch_size: p,
            projection_dim,
        } = self.shape;
        let (g, h) = (self.shape.grid(), self.hidden);
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
        drop(rows);
        // The class vector first, then the patches, for each image.
        let tokens = patches + 1;
        let mut x = vec![0f32; images.len() * tokens * h];
        for (seq, patch_rows) in x
            .chunks_exact_mut(tokens * h)
            .zip(vectors.chunks_exact(patches * h))
        {
            seq[..h].copy_from_slice(&self.class);
            seq[h..].copy_from_slice(patch_rows);
        }
        let lens = vec![tokens; images.len()];
        let hidden = self.encoder.forward_vectors(x, &lens)?;
        let mut pooled = Vec::with_capacity(images.len() * h);
        for &start in &hidden.starts {
            pooled.extend_from_slice(&hidden.data[start * h..(start + 1) * h]);
        }
        let mut out = vec![0f32; images.len() * projection_dim];
        self.projection
            .forward(&pooled, images.len(), None, &mut out);
        Ok(out
            .chunks_exact(projection_dim)
            .map(<[f32]>::to_vec)
            .collect())
    }
}
