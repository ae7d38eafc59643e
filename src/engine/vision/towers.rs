//! Both towers of a CLIP or SigLIP package, loaded together (one load, one memory entry),
//! with the model's scoring; a request runs only the tower its input needs.

use super::{ImageTower, Scorer, TextTower};
use crate::config::Precision;
use crate::engine::checkpoint::Tensors;
use crate::engine::tokenize::Encoded;
use crate::images::Preprocess;

/// A two-tower model's towers.
pub struct Towers {
    /// Pictures to vectors.
    pub image: ImageTower,
    /// Texts to vectors in the same space.
    pub text: TextTower,
}

impl Towers {
    /// Both towers of `tensors` in `precision`, the model's scoring, and a check that
    /// `preprocess` makes the tensor the image tower takes. In int8-fast, the text tower's
    /// calibration pass runs over `texts` (tokenized as it takes them) and the image tower's
    /// over [`crate::engine::calibration::pictures`] as `preprocess` makes them.
    pub fn load(
        config_json: &[u8],
        tensors: Tensors,
        precision: Precision,
        preprocess: &Preprocess,
        texts: &[Encoded],
    ) -> Result<(Towers, Scorer), String> {
        let scorer = Scorer::load(config_json, &tensors)?;
        let pictures: Vec<Vec<f32>> = match precision {
            Precision::Int8Fast => crate::engine::calibration::pictures()
                .iter()
                .map(|p| preprocess.apply(p))
                .collect(),
            _ => Vec::new(),
        };
        // The map's tensors are shared, not copied: each tower takes its own and drops the
        // other's names.
        let text = TextTower::load_calibrated(config_json, tensors.clone(), precision, texts)?;
        let image = ImageTower::load_calibrated(config_json, tensors, precision, &pictures)?;
        let side = image.shape().image_size as u32;
        // Any picture: the output of a crop or an exact size does not depend on it.
        let made = preprocess.output_size(side, side);
        if made != [side, side] {
            return Err(format!(
                "manifest image section: it makes pictures of {} × {} pixels, and the image tower takes {side} × {side}",
                made[1], made[0]
            ));
        }
        if text.dimensions() != image.shape().projection_dim {
            return Err(format!(
                "config.json: the text tower's vectors are {} wide, the image tower's {}",
                text.dimensions(),
                image.shape().projection_dim
            ));
        }
        Ok((Towers { image, text }, scorer))
    }

    /// Bytes of both towers' weights in memory.
    pub fn weight_bytes(&self) -> u64 {
        self.image.weight_bytes() + self.text.weight_bytes()
    }

    /// Width of the vectors both towers make.
    pub fn dimensions(&self) -> usize {
        self.text.dimensions()
    }

    /// The rows an image takes in the image tower's pass.
    pub fn image_tokens(&self) -> usize {
        self.image.tokens()
    }

    /// Hands both towers' pass buffers back (see `Encoder::release_workspace`).
    pub fn release_workspace(&self, wait: bool) {
        self.text.release_workspace(wait);
        self.image.release_workspace(wait);
    }
}
