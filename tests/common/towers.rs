//! What the daemon tests of two-tower models share: pictures as data URIs, a word-level
//! tokenizer.json, seeded weights for a candle model, and candle's rows.

use std::collections::HashMap;

use base64::Engine as _;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde_json::{Value, json};

use super::seeded::Seeded;

/// `img` as a PNG data URI.
pub fn png_uri(img: &image::RgbImage) -> String {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// A 48 × 40 picture with edges and colour, one per `variant`, as a PNG data URI.
pub fn picture(variant: u32) -> String {
    png_uri(&image::RgbImage::from_fn(48, 40, |x, y| {
        let ring = ((x as f32 - 24.0).hypot(y as f32 - 20.0) * 0.6).sin();
        image::Rgb([
            (127.0 + 120.0 * ring) as u8,
            ((x * 5) as u8) ^ (variant as u8 * 53),
            if (x / 8 + y / 8 + variant).is_multiple_of(2) {
                220
            } else {
                30
            },
        ])
    }))
}

/// A word-level tokenizer.json: lowercase, split on whitespace, `[UNK]` 0, `words` from
/// `first` on, and the special tokens `before` (if any) and `after` each text.
pub fn word_tokenizer(
    words: &[&str],
    first: u32,
    before: Option<(&str, u32)>,
    after: (&str, u32),
) -> Value {
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), json!(0));
    for (i, w) in words.iter().enumerate() {
        vocab.insert((*w).into(), json!(first + i as u32));
    }
    let specials: Vec<(&str, u32)> = before.into_iter().chain([after]).collect();
    let mut added = Vec::new();
    let mut special_tokens = serde_json::Map::new();
    for &(content, id) in &specials {
        vocab.insert(content.into(), json!(id));
        added.push(
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}),
        );
        special_tokens.insert(
            content.into(),
            json!({"id": content, "ids": [id], "tokens": [content]}),
        );
    }
    let mut single: Vec<Value> = before
        .map(|(c, _)| json!({"SpecialToken": {"id": c, "type_id": 0}}))
        .into_iter()
        .collect();
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    single.push(json!({"SpecialToken": {"id": after.0, "type_id": 0}}));
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": single,
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": special_tokens
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
}

/// Sets every weight of `varmap` to seeded values (norm scales near 1, embeddings up to 0.5,
/// the rest up to 0.2; `fixed` names and their values as given), and returns the weights as a
/// checkpoint.
pub fn seeded_checkpoint(varmap: &VarMap, fixed: &[(&str, f32)]) -> HashMap<String, Tensor> {
    let vars = varmap.data().lock().expect("varmap");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut rng = Seeded(62);
    for name in names {
        let var = &vars[name];
        let scale = name.contains("norm") && name.ends_with("weight");
        let pinned = fixed.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| match (pinned, scale) {
                (Some(v), _) => v,
                (None, true) => 1.0 + 0.1 * rng.next(),
                _ if name.contains("embedding") => 0.5 * rng.next(),
                _ => 0.2 * rng.next(),
            })
            .collect();
        let t = Tensor::from_vec(values, var.shape(), &Device::Cpu).expect("tensor");
        var.set(&t).expect("set");
    }
    vars.iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().copy().expect("copy")))
        .collect()
}

/// Weights candle would draw itself unless the varmap holds them: made weights first.
pub fn declare(varmap: &VarMap, weights: &[(&str, Vec<usize>)]) {
    for (name, shape) in weights {
        varmap
            .get(
                shape.clone(),
                name,
                candle_nn::Init::Const(0.0),
                DType::F32,
                &Device::Cpu,
            )
            .expect("a weight candle would draw itself");
    }
}

/// A tensor's values in one row.
pub fn row(t: Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1()).expect("row")
}
