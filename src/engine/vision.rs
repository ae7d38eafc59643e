//! CLIP's two towers. An image tower: a picture's pixels (made by [`crate::images::Preprocess`]) to one vector in
//! the space its text tower shares. The picture is cut into square patches, each patch's
//! pixels projected to a vector (the patch convolution: a linear layer over the patch's
//! `channels × patch × patch` values, since its stride is its size), a class vector goes
//! first, and the one encoder runs over them as over a text's tokens; the class row, after
//! the final norm, is projected into the shared space. A text tower: the one encoder over a
//! text's tokens, causal, its end-of-text row projected into the same space. Both mapped by
//! [`super::checkpoint::clip`].

use super::checkpoint::Tensors;
use super::checkpoint::clip::{self, CLASS, ImageShape, PATCH, PROJECTION};
use super::encoder::Encoder;
use super::kernels::Linear;
use super::stored;
use super::tokenize::Encoded;
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
        let encoder = Encoder::tower(blueprint, tensors, precision, tokens)?;
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

/// A loaded text tower: a text's tokens to one vector in the space its image tower shares.
pub struct TextTower {
    encoder: Encoder,
    shape: clip::TextShape,
    hidden: usize,
    projection: Linear,
}

impl TextTower {
    /// Builds CLIP's text tower from a `CLIPModel`'s `config.json` and tensors (the image
    /// tower's are ignored), in f32, int8 or bf16 (int8-fast is refused as for the image
    /// tower: its calibration texts are not in the package yet).
    pub fn load(
        config_json: &[u8],
        tensors: Tensors,
        precision: Precision,
    ) -> Result<Self, String> {
        if precision == Precision::Int8Fast {
            return Err("int8-fast is not supported for a text tower yet (f32, int8, bf16)".into());
        }
        let (blueprint, shape) = clip::text_blueprint(config_json)?;
        let h = blueprint.hidden;
        let max = match blueprint.positions {
            super::blueprint::Positions::Learned { max, .. } => max,
            super::blueprint::Positions::Rotary(ref r) => r.max,
        };
        let mut tensors = clip::text_tensors(tensors, h)?;
        let projection = stored::take_f32(
            &mut tensors,
            clip::TEXT_PROJECTION,
            &[shape.projection_dim, h],
            FILE,
        )?;
        let encoder = Encoder::tower(blueprint, tensors, precision, max)?;
        Ok(TextTower {
            encoder,
            shape,
            hidden: h,
            projection: Linear::from_torch(
                &projection,
                vec![0.0; shape.projection_dim],
                shape.projection_dim,
                h,
            ),
        })
    }

    /// Bytes of the weights in memory.
    pub fn weight_bytes(&self) -> u64 {
        self.encoder.weight_bytes() + self.projection.bytes() as u64
    }

    /// Width of the vectors.
    pub fn dimensions(&self) -> usize {
        self.shape.projection_dim
    }

    /// The vector of each text, its tokens as the model's tokenizer made them (start and
    /// end-of-text tokens included).
    pub fn embed(&self, texts: &[&Encoded]) -> Result<Vec<Vec<f32>>, String> {
        let h = self.hidden;
        let rows: Vec<usize> = texts
            .iter()
            .map(|t| self.end_of_text(&t.ids))
            .collect::<Result<_, _>>()?;
        let hidden = self.encoder.forward(texts)?;
        let mut pooled = Vec::with_capacity(texts.len() * h);
        for (&start, &row) in hidden.starts.iter().zip(&rows) {
            pooled.extend_from_slice(&hidden.data[(start + row) * h..(start + row + 1) * h]);
        }
        let dim = self.shape.projection_dim;
        let mut out = vec![0f32; texts.len() * dim];
        self.projection
            .forward(&pooled, texts.len(), None, &mut out);
        Ok(out.chunks_exact(dim).map(<[f32]>::to_vec).collect())
    }

    /// The row a text is pooled at.
    fn end_of_text(&self, ids: &[u32]) -> Result<usize, String> {
        end_of_text(self.shape.end_of_text, ids)
    }
}

/// The row `rule` pools of a text of `ids` (see [`clip::EndOfText`]).
fn end_of_text(rule: clip::EndOfText, ids: &[u32]) -> Result<usize, String> {
    match rule {
        clip::EndOfText::HighestId => ids
            .iter()
            .enumerate()
            // The first of equal maxima, as torch's argmax.
            .fold(None, |best: Option<(usize, u32)>, (i, &id)| match best {
                Some((_, b)) if b >= id => best,
                _ => Some((i, id)),
            })
            .map(|(i, _)| i)
            .ok_or_else(|| "an empty text has no end-of-text token".to_string()),
        clip::EndOfText::Id(eos) => ids.iter().position(|&id| id == eos).ok_or_else(|| {
            format!("a text without the end-of-text token {eos}: the tokenizer must add it")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clip::EndOfText::{HighestId, Id};

    #[test]
    fn a_text_is_pooled_at_its_end_of_text_token_by_either_rule() {
        let ids = [49406, 320, 49407, 49407];
        assert_eq!(end_of_text(HighestId, &ids), Ok(2));
        assert_eq!(end_of_text(Id(49407), &ids), Ok(2));
        // A token added after the vocabulary outranks the end-of-text one by id: the old
        // rule pools it (as transformers does), the id rule does not.
        assert_eq!(end_of_text(HighestId, &[49406, 49500, 49407]), Ok(1));
        assert_eq!(end_of_text(Id(49407), &[49406, 49500, 49407]), Ok(2));
        assert_eq!(
            end_of_text(Id(49407), &[49406, 320]),
            Err("a text without the end-of-text token 49407: the tokenizer must add it".into())
        );
        assert_eq!(
            end_of_text(HighestId, &[]),
            Err("an empty text has no end-of-text token".into())
        );
    }
}
