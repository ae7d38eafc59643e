//! Issue 62 through the daemon: a CLIP folder (transformers' `CLIPModel` layout, random
//! weights of a small config, a word-level tokenizer whose end-of-text token has the highest
//! id as CLIP's has) packed by `caxton pack` into one `kind: image_text` package, side-loaded,
//! and asked over the socket as a client would: texts and pictures in one `/v1/embeddings`
//! request, pictures ranked against a text on `/rerank` and `/v1/rerank`. The reference is
//! candle-transformers' whole `ClipModel` on the same weights (`get_text_features`,
//! `get_image_features`, `logits_per_text`), on the pixels the daemon's preprocessing makes
//! of the same pictures (tests/image_preprocess.rs holds those to transformers' processor).
//! And every refusal: a picture to a text model, text documents to the image model, a URL,
//! a picture past each limit, a truncated one, a mixed document list.

mod common;

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::clip::{ClipConfig, ClipModel, text_model, vision_model};
use caxton::images::{Limits, Preprocess, decode_data_uri};
use common::fixtures::pack_into;
use common::seeded::Seeded;
use common::towers::{declare, picture, row, seeded_checkpoint, word_tokenizer};
use common::{Daemon, cosine, write_config};
use serde_json::{Value, json};

const ID: &str = "tiny-clip";
/// The tokenizer's words; ids 1.., then the start and end-of-text tokens last.
const WORDS: [&str; 12] = [
    "a", "photo", "of", "cat", "dog", "red", "blue", "car", "on", "the", "street", "night",
];

fn config() -> ClipConfig {
    let act = text_model::Activation::QuickGelu;
    ClipConfig {
        text_config: text_model::ClipTextConfig {
            vocab_size: WORDS.len() + 3,
            embed_dim: 32,
            activation: act,
            intermediate_size: 64,
            max_position_embeddings: 16,
            pad_with: None,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            projection_dim: 16,
        },
        vision_config: vision_model::ClipVisionConfig {
            embed_dim: 32,
            activation: act,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            projection_dim: 16,
            num_channels: 3,
            image_size: 32,
            patch_size: 16,
        },
        logit_scale_init_value: 2.6592,
        image_size: 32,
    }
}

/// The candle model on seeded weights (norm scales near 1, the rest small; a trained
/// scale of 100), and its tensors as a checkpoint.
fn model() -> (ClipModel, HashMap<String, Tensor>) {
    let varmap = VarMap::new();
    declare(
        &varmap,
        &[
            ("vision_model.embeddings.class_embedding", vec![32]),
            ("logit_scale", vec![]),
        ],
    );
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = ClipModel::new(vb, &config()).expect("candle model");
    let tensors = seeded_checkpoint(&varmap, &[("logit_scale", 4.6052)]);
    (model, tensors)
}

/// CLIP's tokenizer's shape: the words, then the start and end-of-text tokens, the end one
/// the highest id.
fn tokenizer_json() -> Value {
    let n = WORDS.len() as u32;
    word_tokenizer(
        &WORDS,
        1,
        Some(("<|startoftext|>", n + 1)),
        ("<|endoftext|>", n + 2),
    )
}

/// CLIP's processor at 32 pixels: shortest edge, centre crop, bicubic, CLIP's mean and std.
fn processor_json() -> Value {
    json!({
        "do_resize": true, "size": {"shortest_edge": 32}, "resample": 3,
        "do_center_crop": true, "crop_size": {"height": 32, "width": 32},
        "do_rescale": true, "rescale_factor": 0.00392156862745098,
        "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": true, "image_processor_type": "CLIPImageProcessor"
    })
}

/// transformers' `CLIPModel` folder of the model.
fn clip_folder(dir: &Path, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).expect("mkdir");
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).expect("save");
    let config = json!({
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
        "logit_scale_init_value": 2.6592,
        "text_config": {"vocab_size": WORDS.len() + 3, "hidden_size": 32, "intermediate_size": 64,
                        "num_hidden_layers": 2, "num_attention_heads": 4,
                        "max_position_embeddings": 16, "hidden_act": "quick_gelu",
                        "eos_token_id": 2, "projection_dim": 16},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 32, "patch_size": 16,
                          "hidden_act": "quick_gelu", "projection_dim": 16}
    });
    for (name, value) in [
        ("config.json", config),
        ("tokenizer.json", tokenizer_json()),
        ("preprocessor_config.json", processor_json()),
    ] {
        std::fs::write(dir.join(name), value.to_string()).expect("write");
    }
}

/// The reference's pixel tensor of `uri`: the daemon's own preprocessing of the same bytes.
fn pixels(uri: &str) -> Tensor {
    let pre = Preprocess::from_processor_config(&processor_json()).expect("processor");
    let img = decode_data_uri(uri, &Limits::default()).expect("decode");
    Tensor::from_vec(pre.apply(&img), (1, 3, 32, 32), &Device::Cpu).expect("pixels")
}

/// Token ids of `text` as the tokenizer makes them.
fn ids(text: &str) -> Tensor {
    let mut ids = vec![WORDS.len() as u32 + 1];
    ids.extend(text.split_whitespace().map(|w| {
        WORDS
            .iter()
            .position(|x| *x == w)
            .map_or(0, |i| i as u32 + 1)
    }));
    ids.push(WORDS.len() as u32 + 2);
    let n = ids.len();
    Tensor::from_vec(ids, (1, n), &Device::Cpu).expect("ids")
}

/// A daemon serving the bundled MiniLM and the packed CLIP, with `extra` config.
fn daemon(tensors: &HashMap<String, Tensor>, extra: &str) -> Daemon {
    daemon_in(tensors, extra, &[])
}

/// [`daemon`], each model of `precisions` in its precision.
fn daemon_in(
    tensors: &HashMap<String, Tensor>,
    extra: &str,
    precisions: &[(&str, &str)],
) -> Daemon {
    let d = Daemon::start_with(
        |dir| {
            write_config(dir, extra);
            if !precisions.is_empty() {
                common::write_precisions(dir, precisions);
            }
            pack_into(ID, &dir.join("packages"), |f| clip_folder(f, tensors));
        },
        &[],
    );
    common::wait_until(&d, "the CLIP package is verified", || {
        common::model_entry(&d, ID).is_some()
    });
    d
}

#[test]
fn texts_and_pictures_embed_and_rank_as_the_model_does() {
    let (model, tensors) = model();
    let d = daemon(&tensors, "");
    let entry = common::model_entry(&d, ID).expect("listed");
    assert_eq!(entry["kind"], "image_text", "{entry}");

    let (cat, street) = (picture(0), picture(1));
    let (status, body) = d.request(
        "POST",
        "/v1/embeddings",
        &json!({"model": ID, "input": ["a photo of a cat", {"image": cat}, {"text": "a red car"}, {"image": street}]}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let got: Vec<Vec<f32>> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| serde_json::from_value(d["embedding"].clone()).expect("vector"))
        .collect();
    let want = [
        row(model
            .get_text_features(&ids("a photo of a cat"))
            .expect("text")),
        row(model.get_image_features(&pixels(&cat)).expect("image")),
        row(model.get_text_features(&ids("a red car")).expect("text")),
        row(model.get_image_features(&pixels(&street)).expect("image")),
    ];
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let c = cosine(g, w);
        println!("input {i}: cosine {c:.7} to candle's features");
        assert!(c >= 0.9999, "input {i}: cosine {c}");
        let norm = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "input {i} not unit length: {norm}"
        );
    }
    assert!(cosine(&got[1], &got[3]) < 0.999, "two pictures, one vector");
    // Usage counts the pictures' patches (4, and the class row) as their tokens.
    assert_eq!(body["usage"]["prompt_tokens"], 7 + 5 + 5 + 5, "{body}");

    // A text ranked against pictures: the model's own logits (CLIP's score is its logit).
    let query = "a photo of the street at night";
    let (per_text, _) = model
        .forward(
            &Tensor::cat(&[pixels(&cat), pixels(&street)], 0).expect("batch"),
            &ids(query),
        )
        .expect("candle's logits");
    let logits = row(per_text);
    let (status, body) = d.request(
        "POST",
        "/rerank",
        &json!({"model": ID, "query": query, "texts": [{"image": cat}, {"image": street}], "raw_scores": true}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    for r in body.as_array().expect("ranks") {
        let i = r["index"].as_u64().expect("index") as usize;
        let score = r["score"].as_f64().expect("score") as f32;
        println!("picture {i}: {score} against candle's logit {}", logits[i]);
        assert!((score - logits[i]).abs() <= 1e-4, "{body}");
    }
    // Cohere's shape, best first, the picture sent back when asked.
    let (status, body) = d.request(
        "POST",
        "/v1/rerank",
        &json!({"model": ID, "query": query, "documents": [{"image": cat}, {"image": street}], "return_documents": true, "top_n": 1}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let best = usize::from(logits[1] > logits[0]);
    assert_eq!(body["results"][0]["index"], best, "{body}");
    assert_eq!(
        body["results"][0]["document"]["image"],
        [&cat, &street][best].as_str()
    );
    // Cohere's /v2/embed: pictures with input_type image, texts with a search input type.
    let (status, body) = d.request(
        "POST",
        "/v2/embed",
        // No model named: pictures go to the one image-text model.
        &json!({"input_type": "image", "images": [cat], "embedding_types": ["float", "int8"]})
            .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let v: Vec<f32> =
        serde_json::from_value(body["embeddings"]["float"][0].clone()).expect("vector");
    assert!(cosine(&v, &got[1]) > 0.99999, "{body}");
    assert_eq!(
        body["embeddings"]["int8"][0].as_array().map(Vec::len),
        Some(16)
    );
    assert_eq!(
        (
            &body["response_type"],
            &body["meta"]["billed_units"]["images"]
        ),
        (&json!("embeddings_by_type"), &json!(1))
    );
    let (status, body) = d.request(
        "POST",
        "/v2/embed",
        &json!({"model": ID, "input_type": "search_query", "texts": ["a red car"]}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let v: Vec<f32> =
        serde_json::from_value(body["embeddings"]["float"][0].clone()).expect("vector");
    assert!(cosine(&v, &got[2]) > 0.99999, "{body}");
    assert_eq!(body["texts"], json!(["a red car"]));
    // The text tower through the texts-only shape.
    let (status, body) = d.request(
        "POST",
        "/v1/embeddings",
        &json!({"model": ID, "input": "a red car"}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let v: Vec<f32> = serde_json::from_value(body["data"][0]["embedding"].clone()).expect("vector");
    assert!(cosine(&v, &got[2]) > 0.99999);
}

#[test]
fn every_bad_picture_and_wrong_model_is_refused_by_name() {
    let (_, tensors) = model();
    let d = daemon(
        &tensors,
        "limits:\n  max_image_bytes: 16KiB\n  max_image_pixels: 100000\n",
    );
    let refused = |path: &str, body: Value| {
        let (status, body) = d.request("POST", path, &body.to_string());
        (
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let cat = picture(0);
    // A picture to the text model (the default, MiniLM).
    assert_eq!(
        refused("/v1/embeddings", json!({"model": "all-MiniLM-L6-v2", "input": ["a", {"image": cat}]})),
        (
            400,
            "wrong_model_kind".into(),
            "`input[1].image` is a picture, and model all-MiniLM-L6-v2 embeds text only (an embedding model); send pictures to an image-text model (kind image_text: CLIP, SigLIP)".into()
        )
    );
    assert_eq!(
        refused(
            "/rerank",
            json!({"model": ID, "query": "a cat", "texts": ["a dog"]})
        ),
        (
            400,
            "wrong_model_kind".into(),
            format!(
                "`texts[0]` is a text, and model {ID} is an image-text model, which ranks pictures against a text query; send documents as {{\"image\": \"data:image/jpeg;base64,...\"}}, or name a reranker"
            )
        )
    );
    assert_eq!(
        refused("/v1/embeddings", json!({"model": ID, "input": [{"image": "https://example.com/cat.jpg"}]})),
        (
            400,
            "invalid_image_input".into(),
            "`input[0].image` is a URL, not a data URI: the daemon reads no files and fetches no URLs for a client; send the image's bytes as data:image/jpeg;base64,...".into()
        )
    );
    // A 600 × 400 picture: more pixels than the limit, from its header.
    let big = {
        let img = image::RgbImage::new(600, 400);
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("png");
        png
    };
    assert!(
        big.len() < 16 << 10,
        "the big picture compresses under the byte limit"
    );
    let b64 = |bytes: &[u8]| {
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    };
    assert_eq!(
        refused("/v1/embeddings", json!({"model": ID, "input": [{"text": "a"}, {"image": b64(&big)}]})),
        (
            413,
            "image_too_many_pixels".into(),
            "`input[1].image` is 600×400 pixels (240000), more than limits.max_image_pixels (100000); send a smaller image or raise the limit".into()
        )
    );
    let noisy: Vec<u8> = {
        let mut rng = Seeded(9);
        let mut level = || (rng.next() * 127.0 + 128.0) as u8;
        let img =
            image::RgbImage::from_fn(100, 100, |_, _| image::Rgb([level(), level(), level()]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .expect("png");
        png
    };
    let (status, code, message) = refused(
        "/v1/rerank",
        json!({"model": ID, "query": "q", "documents": [{"image": b64(&noisy)}]}),
    );
    assert_eq!(
        (status, code.as_str()),
        (413, "image_too_large"),
        "{message}"
    );
    assert!(
        message.starts_with("`documents[0].image` is ") && message.ends_with("bytes, more than limits.max_image_bytes (16384); send a smaller image or raise the limit"),
        "{message}"
    );
    let cut = base64::engine::general_purpose::STANDARD
        .decode(cat.trim_start_matches("data:image/png;base64,"))
        .expect("b64");
    let (status, code, message) = refused(
        "/v1/embeddings",
        json!({"model": ID, "input": [{"image": b64(&cut[..cut.len() / 2])}]}),
    );
    assert_eq!(
        (status, code.as_str()),
        (400, "undecodable_image"),
        "{message}"
    );
    assert!(
        message.starts_with("`input[0].image` is a PNG that does not decode: "),
        "{message}"
    );
    assert_eq!(
        refused(
            "/v1/embeddings",
            json!({"model": ID, "input": [{"image": "data:image/gif;base64,R0lGODlhAQABAAAAACw="}]})
        )
        .1,
        "unsupported_image_format"
    );
    assert_eq!(
        refused(
            "/rerank",
            json!({"model": ID, "query": "q", "texts": ["a", {"image": cat}]})
        ),
        (
            400,
            "invalid_input".into(),
            "`texts` mixes texts and pictures; rank one kind of document a request".into()
        )
    );
    assert_eq!(
        refused("/v2/embed", json!({"model": ID, "images": [cat]})),
        (
            400,
            "invalid_input".into(),
            "`body` sends images without input_type \"image\"; set it to embed pictures".into()
        )
    );
    assert_eq!(
        refused("/v2/embed", json!({"model": "all-MiniLM-L6-v2", "input_type": "image", "images": [cat]})),
        (
            400,
            "wrong_model_kind".into(),
            "`images[0]` is a picture, and model all-MiniLM-L6-v2 embeds text only (an embedding model); send pictures to an image-text model (kind image_text: CLIP, SigLIP)".into()
        )
    );
    // The daemon still serves both models after every refusal.
    let (status, _) = d.request(
        "POST",
        "/v1/embeddings",
        &json!({"model": ID, "input": [{"image": cat}]}).to_string(),
    );
    assert_eq!(status, 200);
}

#[test]
fn pack_makes_one_image_text_package_and_refuses_a_folder_it_cannot_follow() {
    let (_, tensors) = model();
    let out = tempfile::tempdir().expect("tempdir");
    let (_, m) = pack_into(ID, out.path(), |f| clip_folder(f, &tensors));
    use caxton::package::{Architecture, ModelKind, Pooling};
    assert_eq!(
        (
            m.kind,
            m.architecture,
            m.pooling,
            m.dimensions,
            m.max_seq_length,
            m.normalize
        ),
        (
            ModelKind::ImageText,
            Architecture::Clip,
            Pooling::Towers,
            16,
            16,
            true
        )
    );
    let image = m.image.expect("image section");
    assert_eq!(
        (image.crop, image.resample),
        (Some([32, 32]), caxton::images::Resample::Bicubic)
    );
    let files: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        files,
        ["config.json", "tokenizer.json", "model.safetensors"]
    );

    let work = tempfile::tempdir().expect("tempdir");
    let folder = work.path().join("clip");
    clip_folder(&folder, &tensors);
    let processor = folder.join("preprocessor_config.json");
    let target = out.path().join("x.tar.zst");
    let mut padded = processor_json();
    padded["do_pad"] = json!(true);
    std::fs::write(&processor, padded.to_string()).expect("write");
    assert_eq!(
        common::fixtures::try_pack_folder(&folder, "x", &target).err(),
        Some(format!(
            "unusable model: {}: do_pad: true is not supported",
            processor.display()
        ))
    );
    std::fs::remove_file(&processor).expect("rm");
    assert_eq!(
        common::fixtures::try_pack_folder(&folder, "x", &target).err(),
        Some(format!(
            "unusable model: {}: missing; an image-text model's folder must carry its saved image processor",
            processor.display()
        ))
    );
}

#[test]
fn the_towers_serve_in_int8_fast_calibrated_at_load() {
    let (model, tensors) = model();
    let d = daemon_in(&tensors, "", &[(ID, "int8-fast")]);
    let cat = picture(0);
    let (status, body) = d.request(
        "POST",
        "/v1/embeddings",
        &json!({"model": ID, "input": [{"image": cat}, "a photo of a cat"]}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let entry = common::model_entry(&d, ID).expect("listed");
    assert_eq!(entry["precision"], "int8-fast", "{entry}");
    let want = [
        row(model.get_image_features(&pixels(&cat)).expect("image")),
        row(model
            .get_text_features(&ids("a photo of a cat"))
            .expect("text")),
    ];
    for (i, w) in want.iter().enumerate() {
        let v: Vec<f32> =
            serde_json::from_value(body["data"][i]["embedding"].clone()).expect("vector");
        let c = cosine(&v, w);
        println!("int8-fast input {i}: cosine {c:.6} to candle's f32 features");
        assert!(c >= 0.999, "input {i}: cosine {c}");
    }
}
