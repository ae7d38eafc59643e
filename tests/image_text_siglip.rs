//! Issue 62 through the daemon, SigLIP's side: a `SiglipModel` folder (random weights of a
//! small config, a word-level tokenizer ending each text with `</s>`, which is also its pad
//! token, as SigLIP's is) packed into one `kind: image_text` package and asked over the
//! socket. What differs from CLIP is proved here: texts padded to the model's length with its
//! pad id (as SigLIP's processor's `padding="max_length"` pads them), the last row pooled,
//! the image tower's attention-pooling head, an exact resize without a crop, and scores that
//! are the sigmoid of a scaled and biased logit. The reference is candle-transformers' whole
//! `siglip::Model` on the same weights and pixels.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::siglip;
use caxton::images::{Limits, Preprocess, decode_data_uri};
use common::fixtures::pack_into;
use common::towers::{declare, picture, row, seeded_checkpoint, word_tokenizer};
use common::{Daemon, cosine, write_config};
use serde_json::{Value, json};

const ID: &str = "tiny-siglip";
const WORDS: [&str; 10] = [
    "a", "photo", "of", "cat", "dog", "van", "gate", "at", "the", "night",
];
/// `</s>`: every text's last token and the padding after it.
const EOS: u32 = 1;
const LENGTH: usize = 16;

fn config_json() -> Value {
    json!({
        "architectures": ["SiglipModel"], "model_type": "siglip",
        "text_config": {"vocab_size": WORDS.len() + 2, "hidden_size": 32, "intermediate_size": 64,
                        "num_hidden_layers": 2, "num_attention_heads": 4,
                        "max_position_embeddings": LENGTH, "hidden_act": "gelu_pytorch_tanh",
                        "pad_token_id": EOS, "eos_token_id": EOS},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 32, "patch_size": 16,
                          "hidden_act": "gelu_pytorch_tanh"}
    })
}

/// SigLIP's processor at 32 pixels: an exact bilinear resize, mean and std of a half.
fn processor_json() -> Value {
    json!({
        "do_resize": true, "size": {"height": 32, "width": 32}, "resample": 2,
        "do_rescale": true, "rescale_factor": 0.00392156862745098,
        "do_normalize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor"
    })
}

/// The candle model on seeded weights at SigLIP base's trained scale and bias.
fn model() -> (siglip::Model, HashMap<String, Tensor>) {
    let varmap = VarMap::new();
    declare(
        &varmap,
        &[("logit_scale", vec![1]), ("logit_bias", vec![1])],
    );
    let config: siglip::Config = serde_json::from_value(config_json()).expect("candle config");
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = siglip::Model::new(&config, vb).expect("candle model");
    let tensors = seeded_checkpoint(&varmap, &[("logit_scale", 4.765), ("logit_bias", -12.93)]);
    (model, tensors)
}

fn siglip_folder(dir: &Path, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).expect("mkdir");
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).expect("save");
    for (name, value) in [
        ("config.json", config_json()),
        (
            "tokenizer.json",
            word_tokenizer(&WORDS, 2, None, ("</s>", EOS)),
        ),
        ("preprocessor_config.json", processor_json()),
    ] {
        std::fs::write(dir.join(name), value.to_string()).expect("write");
    }
}

/// `text`'s ids as SigLIP's processor makes them: the words, `</s>`, padded to the length.
fn ids(text: &str) -> Tensor {
    let mut ids: Vec<u32> = text
        .split_whitespace()
        .map(|w| {
            WORDS
                .iter()
                .position(|x| *x == w)
                .map_or(0, |i| i as u32 + 2)
        })
        .collect();
    ids.push(EOS);
    ids.resize(LENGTH, EOS);
    Tensor::from_vec(ids, (1, LENGTH), &Device::Cpu).expect("ids")
}

fn pixels(uri: &str) -> Tensor {
    let pre = Preprocess::from_processor_config(&processor_json()).expect("processor");
    let img = decode_data_uri(uri, &Limits::default()).expect("decode");
    Tensor::from_vec(pre.apply(&img), (1, 3, 32, 32), &Device::Cpu).expect("pixels")
}

#[test]
fn siglip_texts_pictures_and_scores_through_the_daemon_are_the_models() {
    let (model, tensors) = model();
    let d = Daemon::start_with(
        |dir| {
            write_config(dir, "");
            pack_into(ID, &dir.join("packages"), |f| siglip_folder(f, &tensors));
        },
        &[],
    );
    common::wait_until(&d, "the SigLIP package is verified", || {
        common::model_entry(&d, ID).is_some()
    });
    let (gate, van) = (picture(2), picture(3));
    let text = "a photo of a van at the gate";
    let (status, body) = d.request(
        "POST",
        "/v1/embeddings",
        &json!({"model": ID, "input": [{"image": gate}, text, {"image": van}]}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let got: Vec<Vec<f32>> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| serde_json::from_value(d["embedding"].clone()).expect("vector"))
        .collect();
    let want = [
        row(model.get_image_features(&pixels(&gate)).expect("image")),
        row(model.get_text_features(&ids(text)).expect("text")),
        row(model.get_image_features(&pixels(&van)).expect("image")),
    ];
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let c = cosine(g, w);
        println!("input {i}: cosine {c:.7} to candle's features");
        assert!(c >= 0.9999, "input {i}: cosine {c}");
    }
    // The text is padded to the model's length: 16 tokens, and each picture's 4 patches.
    assert_eq!(body["usage"]["prompt_tokens"], LENGTH + 4 + 4, "{body}");

    let (per_text, _) = model
        .forward(
            &Tensor::cat(&[pixels(&gate), pixels(&van)], 0).expect("batch"),
            &ids(text),
        )
        .expect("candle's logits");
    let logits = row(per_text);
    let (status, body) = d.request(
        "POST",
        "/rerank",
        &json!({"model": ID, "query": text, "texts": [{"image": gate}, {"image": van}], "raw_scores": true}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let (status, cohere) = d.request(
        "POST",
        "/v1/rerank",
        &json!({"query": text, "documents": [{"image": gate}, {"image": van}]}).to_string(),
    );
    assert_eq!(status, 200, "{cohere}");
    for (raw, scored) in body
        .as_array()
        .expect("ranks")
        .iter()
        .zip(cohere["results"].as_array().expect("results"))
    {
        let i = raw["index"].as_u64().expect("index") as usize;
        let logit = raw["score"].as_f64().expect("score") as f32;
        println!("picture {i}: logit {logit} against candle's {}", logits[i]);
        assert!((logit - logits[i]).abs() <= 1e-4, "{body}");
        // The same order; the score is the sigmoid of the logit.
        assert_eq!(scored["index"], i, "{cohere}");
        let p = scored["relevance_score"].as_f64().expect("score");
        let want = 1.0 / (1.0 + (-f64::from(logits[i])).exp());
        assert!(
            (p - want).abs() <= 1e-4 * want.max(1e-6),
            "{p} against {want}"
        );
    }
}
