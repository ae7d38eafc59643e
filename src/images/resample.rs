//! PIL's `Image.resize` on 8-bit RGB, as the processors call it, reproduced step for step
//! (Pillow's `libImaging/Resample.c`): each output pixel's weights come from the filter
//! stretched by the scale when shrinking (the antialiasing), normalised, then held in fixed
//! point with 22 fractional bits; the horizontal pass runs first into an 8-bit image, rounded
//! and clipped, then the vertical one. `fast_image_resize` follows another order and rounding
//! and landed up to 5 levels from PIL on a photograph's edges (CLIP's bicubic, astronaut.png),
//! past the 2 levels a processor's twin may differ by.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// The resampling filter (PIL's, by the name transformers saves its number for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resample {
    /// PIL 0.
    Nearest,
    /// PIL 1.
    Lanczos,
    /// PIL 2.
    Bilinear,
    /// PIL 3.
    Bicubic,
    /// PIL 4.
    Box,
    /// PIL 5.
    Hamming,
}

impl Resample {
    /// From PIL's number, as `preprocessor_config.json` saves it.
    pub(super) fn from_pil(n: u64) -> Option<Resample> {
        Some(match n {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            _ => return None,
        })
    }
}

/// Fractional bits of the fixed-point weights (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The filter and its support (Pillow's `filters`).
fn filter(resample: Resample) -> (fn(f64) -> f64, f64) {
    match resample {
        Resample::Box => (box_filter, 0.5),
        Resample::Bilinear => (bilinear, 1.0),
        Resample::Hamming => (hamming, 1.0),
        Resample::Bicubic => (bicubic, 2.0),
        Resample::Lanczos => (lanczos, 3.0),
        // Nearest takes its own path (`nearest`).
        Resample::Nearest => (box_filter, 0.5),
    }
}

fn box_filter(x: f64) -> f64 {
    if x > -0.5 && x <= 0.5 { 1.0 } else { 0.0 }
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

fn hamming(x: f64) -> f64 {
    let x = x.abs();
    if x == 0.0 {
        1.0
    } else if x >= 1.0 {
        0.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x * (0.54 + 0.46 * x.cos())
    }
}

fn bicubic(x: f64) -> f64 {
    // Keys' cubic with a = -0.5 (Catmull-Rom), as Pillow's.
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Each output position's first input and fixed-point weights along one axis (Pillow's
/// `precompute_coeffs` and `normalize_coeffs_8bpc`).
struct Coefficients {
    /// `(first input, inputs)` per output.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output, zero past its inputs.
    weights: Vec<i32>,
    ksize: usize,
}

fn coefficients(in_size: usize, out_size: usize, resample: Resample) -> Coefficients {
    let (f, support) = filter(resample);
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for (xx, out) in weights.chunks_exact_mut(ksize).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero.
        let xmin = ((center - support + 0.5).trunc() as i64).max(0) as usize;
        let xmax = ((center + support + 0.5).trunc() as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, w) in k.iter_mut().enumerate().take(n) {
            *w = f((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *w;
        }
        for (o, &w) in out.iter_mut().zip(&k[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            *o = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coefficients {
        bounds,
        weights,
        ksize,
    }
}

/// A fixed-point sum back to a level: rounded (the sum starts at one half), clipped.
#[inline]
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `image` to `width × height` as Pillow's `Image.resize(size, resample)` does.
pub fn resize(image: &RgbImage, width: u32, height: u32, resample: Resample) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if resample == Resample::Nearest {
        return nearest(image, width, height);
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let src = image.as_raw();
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    let vert = coefficients(in_h, out_h, resample);
    // The rows the vertical pass reads: the horizontal pass makes only those.
    let (first, last) = match need_vertical {
        true => (
            vert.bounds[0].0,
            vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1,
        ),
        false => (0, in_h),
    };
    let (mid, mid_w, mid_first) = match need_horizontal {
        true => {
            let horiz = coefficients(in_w, out_w, resample);
            let mut mid = vec![0u8; (last - first) * out_w * 3];
            for (y, row) in mid.chunks_exact_mut(out_w * 3).enumerate() {
                let line = &src[(first + y) * in_w * 3..(first + y + 1) * in_w * 3];
                for (xx, px) in row.chunks_exact_mut(3).enumerate() {
                    let (xmin, n) = horiz.bounds[xx];
                    let k = &horiz.weights[xx * horiz.ksize..][..n];
                    for (c, o) in px.iter_mut().enumerate() {
                        let mut sum = half;
                        for (x, &w) in k.iter().enumerate() {
                            sum += i64::from(line[(xmin + x) * 3 + c]) * i64::from(w);
                        }
                        *o = clip8(sum);
                    }
                }
            }
            (std::borrow::Cow::Owned(mid), out_w, first)
        }
        false => (std::borrow::Cow::Borrowed(&src[..]), in_w, 0),
    };
    if !need_vertical {
        return RgbImage::from_raw(width, height, mid.into_owned())
            .unwrap_or_else(|| RgbImage::new(width, height));
    }
    let mut out = vec![0u8; out_w * out_h * 3];
    for (yy, row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let (ymin, n) = vert.bounds[yy];
        let ymin = ymin - mid_first;
        let k = &vert.weights[yy * vert.ksize..][..n];
        for (i, o) in row.iter_mut().enumerate() {
            let mut sum = half;
            for (y, &w) in k.iter().enumerate() {
                sum += i64::from(mid[(ymin + y) * mid_w * 3 + i]) * i64::from(w);
            }
            *o = clip8(sum);
        }
    }
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

/// Pillow's nearest neighbour: output pixel `x` takes input `floor((x + 0.5) · in / out)`.
fn nearest(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sx, sy) = (
        f64::from(image.width()) / f64::from(width),
        f64::from(image.height()) / f64::from(height),
    );
    RgbImage::from_fn(width, height, |x, y| {
        let xi = (((f64::from(x) + 0.5) * sx) as u32).min(image.width() - 1);
        let yi = (((f64::from(y) + 0.5) * sy) as u32).min(image.height() - 1);
        *image.get_pixel(xi, yi)
    })
}
