//! An image made into the tensor a vision model takes, as its saved processor
//! (`preprocessor_config.json`: transformers' `CLIPImageProcessor`, `SiglipImageProcessor`)
//! makes it: resized on 8-bit pixels with the processor's filter (antialiased when it shrinks,
//! as PIL does), centre-cropped (zero-padded where the image is smaller), rescaled, normalised
//! per channel, laid out channels first. The recipe is what a package's manifest records
//! (`image`: size, crop, resample, rescale, mean, std).

use image::RgbImage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::resample::Resample;

/// The size an image is resized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Size {
    /// The shorter side to this, the longer in proportion (truncated), as CLIP's processor.
    ShortestEdge {
        /// Pixels of the shorter side.
        shortest_edge: u32,
    },
    /// Exactly this, whatever the aspect ratio, as SigLIP's processor.
    Exact {
        /// Rows.
        height: u32,
        /// Columns.
        width: u32,
    },
}

/// A vision model's preprocessing (a manifest's `image` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// What the image is resized to; none keeps its size.
    pub size: Option<Size>,
    /// The centre crop, `[height, width]`, after the resize; none takes the whole image.
    pub crop: Option<[u32; 2]>,
    /// The resize's filter.
    pub resample: Resample,
    /// What a pixel level is multiplied by (1/255: levels to 0..1).
    pub rescale: f32,
    /// Per channel (R, G, B), subtracted after the rescale.
    pub mean: [f32; 3],
    /// Per channel, divided by after the mean.
    pub std: [f32; 3],
}

impl Preprocess {
    /// The recipe a transformers `preprocessor_config.json` describes, or why it cannot be
    /// followed (a field missing, a step this daemon does not take).
    pub fn from_processor_config(config: &Value) -> Result<Preprocess, String> {
        let flag = |key: &str, default: bool| -> Result<bool, String> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(format!("{key} is {v}, not true or false")),
            }
        };
        for (key, default) in [("do_pad", false), ("do_convert_rgb", true)] {
            if flag(key, default)? != default {
                return Err(format!("{key}: {} is not supported", !default));
            }
        }
        let size = match flag("do_resize", true)? {
            true => Some(parse_size(config.get("size"), "size")?),
            false => None,
        };
        let crop = match flag("do_center_crop", false)? {
            true => match parse_size(config.get("crop_size"), "crop_size")? {
                Size::Exact { height, width } => Some([height, width]),
                Size::ShortestEdge { shortest_edge: e } => Some([e, e]),
            },
            false => None,
        };
        let resample = match config.get("resample") {
            None | Some(Value::Null) => Resample::Bilinear,
            Some(v) => v
                .as_u64()
                .and_then(Resample::from_pil)
                .ok_or_else(|| format!("resample is {v}; PIL's filters are numbered 0 to 5"))?,
        };
        let rescale = match flag("do_rescale", true)? {
            true => match config.get("rescale_factor") {
                None | Some(Value::Null) => 1.0 / 255.0,
                Some(v) => v
                    .as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| format!("rescale_factor is {v}, not a positive number"))?
                    as f32,
            },
            false => 1.0,
        };
        let (mean, std) = match flag("do_normalize", true)? {
            true => (
                channels(config.get("image_mean"), "image_mean")?,
                channels(config.get("image_std"), "image_std")?,
            ),
            false => ([0.0; 3], [1.0; 3]),
        };
        if std.iter().any(|&s| s <= 0.0) {
            return Err(format!(
                "image_std is {std:?}; every channel's must be positive"
            ));
        }
        Ok(Preprocess {
            size,
            crop,
            resample,
            rescale,
            mean,
            std,
        })
    }

    /// `[height, width]` of the tensor an image of `width × height` becomes.
    pub fn output_size(&self, width: u32, height: u32) -> [u32; 2] {
        match self.crop {
            Some(crop) => crop,
            None => {
                let (w, h) = self.resized(width, height);
                [h, w]
            }
        }
    }

    /// The image's size after the resize, `(width, height)`, as transformers computes it.
    fn resized(&self, width: u32, height: u32) -> (u32, u32) {
        match self.size {
            None => (width, height),
            Some(Size::Exact { height, width }) => (width, height),
            Some(Size::ShortestEdge { shortest_edge: s }) => {
                let (short, long) = (width.min(height), width.max(height));
                // `int(s * long / short)` in Python: a float quotient, truncated.
                let long = ((f64::from(s) * f64::from(long) / f64::from(short)) as u32).max(1);
                match width <= height {
                    true => (s, long),
                    false => (long, s),
                }
            }
        }
    }

    /// The model's input for `image`: `[3, height, width]` floats, channels first.
    pub fn apply(&self, image: &RgbImage) -> Vec<f32> {
        let resized = self.resize(image);
        let (w, h) = resized.dimensions();
        let [ch, cw] = self.output_size(image.width(), image.height());
        // transformers' centre crop: offsets `(size - crop) // 2` (floored, so negative where
        // the image is smaller), and zeros where the crop reaches past the image.
        let (top, left) = match self.crop {
            Some(_) => (
                (i64::from(h) - i64::from(ch)).div_euclid(2),
                (i64::from(w) - i64::from(cw)).div_euclid(2),
            ),
            None => (0, 0),
        };
        let plane = ch as usize * cw as usize;
        let mut out = vec![0f32; 3 * plane];
        for c in 0..3 {
            // Level `v` becomes `(v · rescale − mean) / std`; a padded pixel is level 0.
            let (scale, shift) = (self.rescale / self.std[c], -self.mean[c] / self.std[c]);
            let plane = &mut out[c * plane..(c + 1) * plane];
            for (y, row) in plane.chunks_exact_mut(cw as usize).enumerate() {
                let sy = y as i64 + top;
                for (x, o) in row.iter_mut().enumerate() {
                    let sx = x as i64 + left;
                    let level =
                        match (0..i64::from(h)).contains(&sy) && (0..i64::from(w)).contains(&sx) {
                            true => resized.get_pixel(sx as u32, sy as u32).0[c],
                            false => 0,
                        };
                    *o = f32::from(level) * scale + shift;
                }
            }
        }
        out
    }

    /// The resize alone, on 8-bit pixels, as PIL's (which the processors call).
    fn resize(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = self.resized(image.width(), image.height());
        if (w, h) == image.dimensions() {
            return image.clone();
        }
        super::resample::resize(image, w, h, self.resample)
    }
}

fn parse_size(v: Option<&Value>, key: &str) -> Result<Size, String> {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0)
            .map(|n| Size::Exact {
                height: n,
                width: n,
            })
            .ok_or_else(|| format!("{key} is {n}, not a positive number of pixels")),
        Some(v @ Value::Object(_)) => {
            let size: Size = serde_json::from_value(v.clone()).map_err(|_| {
                format!("{key} is {v}; expected {{\"shortest_edge\": N}} or {{\"height\": H, \"width\": W}}")
            })?;
            match size {
                Size::ShortestEdge { shortest_edge: 0 } | Size::Exact { height: 0, .. } => {
                    Err(format!("{key} is {v}; a size must be positive"))
                }
                Size::Exact { width: 0, .. } => {
                    Err(format!("{key} is {v}; a size must be positive"))
                }
                size => Ok(size),
            }
        }
        None | Some(Value::Null) => Err(format!("{key} is missing")),
        Some(v) => Err(format!("{key} is {v}, not a size")),
    }
}

fn channels(v: Option<&Value>, key: &str) -> Result<[f32; 3], String> {
    let err = || format!("{key} must be three numbers (R, G, B)");
    match v {
        Some(Value::Number(n)) => {
            let x = n.as_f64().ok_or_else(err)? as f32;
            Ok([x; 3])
        }
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0f32; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().filter(|f| f.is_finite()).ok_or_else(err)? as f32;
            }
            Ok(out)
        }
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests;
