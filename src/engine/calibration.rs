//! The texts int8-fast calibrates on at load: what each input channel of each linear layer
//! reaches over them sets that channel's smoothing (`kernels::int8_fast::smoothing`). Built in,
//! so a model's int8-fast weights are the same on every device and at every load. They mix
//! what an appliance embeds (sentences, questions, logs, code, numbers, several scripts) and
//! none of the reference texts the fidelity tests hold the vectors to.

use super::tokenize::{Cut, Encoded, TextTokenizer};
use crate::package::ModelKind;

/// The calibration texts.
pub const TEXTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "Sensor 14 reported a temperature of 81 degrees at the north pump station.",
    "How do I reset the device to its factory settings?",
    "Machine learning models turn text into vectors that capture meaning.",
    "Das Wetter ist heute schön, aber morgen soll es regnen.",
    "東京は日本の首都です。",
    "error: connection refused (os error 111) while reading /var/lib/caxton/usage.json",
    "def embed(texts): return [model.encode(t) for t in texts]",
    "Quarterly revenue rose 12% year over year, driven by strong demand in Europe and Asia.",
    "A patient presenting with chest pain should receive an ECG within ten minutes of arrival.",
    "Please find attached the invoice for March; payment is due within 30 days.",
    "The committee will meet on Tuesday to discuss the proposed changes to the bylaws, \
     including the new rules for electing officers and the budget for the coming year.",
];

/// [`TEXTS`] tokenized for a model of `kind` (a two-tower model's text tower as an embedding
/// model's): each alone for an embedding model, as query and
/// document pairs (each text with the next) for a reranker.
pub fn encode(tokenizer: &TextTokenizer, kind: ModelKind) -> Result<Vec<Encoded>, String> {
    let encoded: Result<Vec<Encoded>, String> = match kind {
        ModelKind::Embedding
        | ModelKind::Sparse
        | ModelKind::MultiVector
        | ModelKind::ImageText => TEXTS.iter().map(|t| tokenizer.encode(t)).collect(),
        ModelKind::Reranker => TEXTS
            .iter()
            .zip(TEXTS.iter().cycle().skip(1))
            .map(|(q, d)| tokenizer.encode_pair(q, d, None, Cut::End))
            .collect(),
    };
    encoded.map_err(|e| format!("the tokenizer cannot encode int8-fast's calibration texts: {e}"))
}

/// The pictures an image tower's int8-fast calibration pass runs over: fixed and made here (a
/// package carries none), so a package always loads to the same weights. Four 320 × 240
/// scenes a camera or a photo library sees the like of: a sky over ground with a horizon,
/// hard-edged blocks, fine texture, and sensor-like noise over a mid-grey scene.
pub fn pictures() -> Vec<image::RgbImage> {
    let (w, h) = (320u32, 240u32);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 56) as u8
    };
    let sky = image::RgbImage::from_fn(w, h, |x, y| {
        let t = y as f32 / h as f32;
        match y < h * 2 / 5 {
            true => image::Rgb([(90.0 + 100.0 * t) as u8, (140.0 + 80.0 * t) as u8, 235]),
            false => image::Rgb([(70 + x % 60) as u8, (110.0 - 40.0 * t) as u8, 50]),
        }
    });
    let blocks = image::RgbImage::from_fn(w, h, |x, y| {
        let cell = (x / 40 + 3 * (y / 30)) % 5;
        let palette = [
            [230, 30, 30],
            [20, 20, 20],
            [240, 240, 240],
            [40, 90, 200],
            [250, 200, 40],
        ];
        image::Rgb(palette[cell as usize])
    });
    let texture = image::RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let v = ((fx * 0.7).sin() * (fy * 0.45).cos() * 0.5 + 0.5) * 255.0;
        let ring = (((fx - 160.0).hypot(fy - 120.0)) * 0.15).sin() * 0.5 + 0.5;
        image::Rgb([
            v as u8,
            (ring * 255.0) as u8,
            ((v + ring * 255.0) / 2.0) as u8,
        ])
    });
    let grain = image::RgbImage::from_fn(w, h, |x, _| {
        let base = 100 + (x * 60 / w) as u8;
        let n = noise() / 4;
        image::Rgb([base + n, base + n / 2, base])
    });
    vec![sky, blocks, texture, grain]
}
