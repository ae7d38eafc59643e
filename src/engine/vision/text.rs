//! A text tower: the one encoder over a text's tokens, its pooled row projected into the
//! space the image tower shares (CLIP: the end-of-text row, causal; SigLIP: the last row of
//! the padded text, through a head with a bias).

use super::{FILE, Family};
use crate::config::Precision;
use crate::engine::checkpoint::towers::{EndOfText, TEXT_HEAD_BIAS, TEXT_PROJECTION, TextShape};
use crate::engine::checkpoint::{Tensors, clip, siglip};
use crate::engine::encoder::{Calibrate, Encoder};
use crate::engine::kernels::Linear;
use crate::engine::stored;
use crate::engine::tokenize::Encoded;

/// A loaded text tower: a text's tokens to one vector in the space its image tower shares.
pub struct TextTower {
    encoder: Encoder,
    shape: TextShape,
    projection: Linear,
}

impl TextTower {
    /// Builds the text tower of a `CLIPModel` or `SiglipModel` from its `config.json` and
    /// tensors (the image tower's are ignored), in the precision `tower_precision` says.
    pub fn load(
        config_json: &[u8],
        tensors: Tensors,
        precision: Precision,
    ) -> Result<Self, String> {
        Self::load_calibrated(config_json, tensors, precision, &[])
    }

    /// [`TextTower::load`], with `calibration` texts (tokenized as the tower takes them) for
    /// int8-fast's calibration pass.
    pub fn load_calibrated(
        config_json: &[u8],
        tensors: Tensors,
        precision: Precision,
        calibration: &[Encoded],
    ) -> Result<Self, String> {
        let precision = super::tower_precision(precision, !calibration.is_empty())?;
        let family = Family::of(config_json)?;
        let (blueprint, shape) = match family {
            Family::Clip => clip::text_blueprint(config_json)?,
            Family::Siglip => siglip::text_blueprint(config_json)?,
        };
        let h = blueprint.hidden;
        let max = blueprint.max_positions();
        let mut tensors = match family {
            Family::Clip => clip::text_tensors(tensors, h)?,
            Family::Siglip => siglip::text_tensors(tensors, h)?,
        };
        let dim = shape.projection_dim;
        let projection = stored::take_f32(&mut tensors, TEXT_PROJECTION, &[dim, h], FILE)?;
        // CLIP's projection has no bias; SigLIP's head has one.
        let bias = match family {
            Family::Clip => vec![0.0; dim],
            Family::Siglip => stored::take_f32(&mut tensors, TEXT_HEAD_BIAS, &[dim], FILE)?,
        };
        let encoder = Encoder::tower(
            blueprint,
            tensors,
            precision,
            max,
            Calibrate::Texts(calibration),
        )?;
        Ok(TextTower {
            encoder,
            shape,
            projection: Linear::from_torch(&projection, bias, dim, h),
        })
    }

    /// Bytes of the weights in memory.
    pub fn weight_bytes(&self) -> u64 {
        self.encoder.weight_bytes() + self.projection.bytes() as u64
    }

    /// Hands the pass buffers back (see `Encoder::release_workspace`).
    pub fn release_workspace(&self, wait: bool) {
        self.encoder.release_workspace(wait);
    }

    /// Width of the vectors.
    pub fn dimensions(&self) -> usize {
        self.shape.projection_dim
    }

    /// The vector of each text, its tokens as the model's tokenizer made them (start and
    /// end-of-text tokens included).
    pub fn embed(&self, texts: &[&Encoded]) -> Result<Vec<Vec<f32>>, String> {
        let h = self.encoder.hidden_size();
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

/// The id a two-tower model's text tower pads its texts with (SigLIP's), from its
/// `config.json`, before the tower is built (its tokenizer pads the calibration texts).
pub fn padding(config_json: &[u8]) -> Result<Option<u32>, String> {
    Ok(match Family::of(config_json)? {
        Family::Clip => clip::text_blueprint(config_json)?.1.pad,
        Family::Siglip => siglip::text_blueprint(config_json)?.1.pad,
    })
}

/// The row `rule` pools of a text of `ids` (see [`EndOfText`]).
fn end_of_text(rule: EndOfText, ids: &[u32]) -> Result<usize, String> {
    match rule {
        EndOfText::HighestId => ids
            .iter()
            .enumerate()
            // The first of equal maxima, as torch's argmax.
            .fold(None, |best: Option<(usize, u32)>, (i, &id)| match best {
                Some((_, b)) if b >= id => best,
                _ => Some((i, id)),
            })
            .map(|(i, _)| i)
            .ok_or_else(|| "an empty text has no end-of-text token".to_string()),
        EndOfText::Last => ids
            .len()
            .checked_sub(1)
            .ok_or_else(|| "an empty text has no last token".to_string()),
        EndOfText::Id(eos) => ids.iter().position(|&id| id == eos).ok_or_else(|| {
            format!("a text without the end-of-text token {eos}: the tokenizer must add it")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EndOfText::{HighestId, Id, Last};

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
        assert_eq!(end_of_text(Last, &ids), Ok(3));
        assert_eq!(
            end_of_text(HighestId, &[]),
            Err("an empty text has no end-of-text token".into())
        );
    }
}
