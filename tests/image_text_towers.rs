//! Issue 62: CLIP's and SigLIP's towers in the engine against a second implementation,
//! candle-transformers' `ClipVisionTransformer` and `ClipTextTransformer` (with their
//! projections) and `siglip::VisionModel` and `siglip::TextModel`, on the same random weights
//! of the real configs (CLIP ViT-B/32 and ViT-B/16, SigLIP base patch 16 at 224, SigLIP 2 base
//! patch 16 at 256; no trained one ships in a PyPI wheel): the image towers on the same pixel
//! tensors, made by the daemon's preprocessing from photograph-like synthetic pictures; the
//! text towers on the same token ids, of several lengths in one batch. Both run in f32 and must agree to cosine 0.9999 on every input, as
//! issue 62 asks of the engine against transformers' `get_image_features` and
//! `get_text_features`. And whole models: the engine's text and image vectors scored by its
//! `Scorer` equal the reference's `logits_per_image` (CLIP's scale; SigLIP's scale and bias)
//! within 1e-4, so a rank of images against a text is the model's own. `TOWERS_EXPORT_DIR=DIR` writes the weights, inputs and the engine's
//! vectors there, for tests/fixtures/images/check_towers_transformers.py to hold against
//! transformers by hand.

// CLIP's mean and std as its preprocessor_config.json writes them.
#![allow(clippy::excessive_precision)]

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Module, VarBuilder, VarMap};
use candle_transformers::models::clip::text_model::{ClipTextConfig, ClipTextTransformer};
use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
use candle_transformers::models::siglip;
use caxton::engine::vision::{ImageTower, Scorer, TextTower};
use caxton::engine::{Encoded, Precision};
use caxton::images::{Preprocess, Resample, Size};
use common::cosine;
use common::seeded::Seeded;
use image::RgbImage;
use serde_json::json;

/// Sets every weight candle made to seeded values: LayerNorm scales near 1, the rest small
/// (as trained towers' are: a pass of 12 layers keeps its scale).
fn randomise(varmap: &VarMap) {
    let vars = varmap.data().lock().expect("varmap");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut rng = Seeded(62);
    for name in names {
        let var: &Var = &vars[name];
        let n = var.elem_count();
        let norm_scale =
            (name.contains("norm") || name.contains("layrnorm")) && name.ends_with("weight");
        let values: Vec<f32> = (0..n)
            .map(|_| match norm_scale {
                true => 1.0 + 0.1 * rng.next(),
                false if name.contains("embedding") => 0.5 * rng.next(),
                false => 0.04 * rng.next(),
            })
            .collect();
        let t = Tensor::from_vec(values, var.shape(), &Device::Cpu).expect("tensor");
        var.set(&t).expect("set");
    }
}

/// A 320 × 240 picture with edges, gradients and colour, as the processor gets one.
fn picture(variant: u32) -> RgbImage {
    RgbImage::from_fn(320, 240, |x, y| {
        let (fx, fy) = (x as f32 / 320.0, y as f32 / 240.0);
        let ring = (((fx - 0.5).powi(2) + (fy - 0.4).powi(2)).sqrt() * 40.0).sin();
        image::Rgb([
            (127.0 + 120.0 * ring) as u8,
            (255.0 * fx) as u8 ^ (variant as u8 * 37),
            if (x / 40 + y / 40 + variant).is_multiple_of(2) {
                230
            } else {
                20
            },
        ])
    })
}

/// Where `TOWERS_EXPORT_DIR` asks this run's weights and vectors to go (`name` below it).
fn export_dir(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("TOWERS_EXPORT_DIR").map(|d| std::path::PathBuf::from(d).join(name))
}

fn save(export: &Option<std::path::PathBuf>, tensors: &HashMap<String, Tensor>) {
    if let Some(dir) = export {
        std::fs::create_dir_all(dir).expect("export dir");
        candle_core::safetensors::save(tensors, dir.join("model.safetensors")).expect("save");
    }
}

/// Every weight candle made, as a checkpoint's tensors.
fn checkpoint(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().copy().expect("copy")))
        .collect()
}

fn agree_on(patch_size: usize) {
    let config = ClipVisionConfig {
        patch_size,
        ..ClipVisionConfig::vit_base_patch32()
    };
    let varmap = VarMap::new();
    // candle draws a class vector of its own unless the weights hold one: make it a weight.
    varmap
        .get(
            768,
            "vision_model.embeddings.class_embedding",
            candle_nn::Init::Const(0.0),
            DType::F32,
            &Device::Cpu,
        )
        .expect("class vector");
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let tower = ClipVisionTransformer::new(vb.pp("vision_model"), &config).expect("candle tower");
    let projection = candle_nn::linear_no_bias(768, 512, vb.pp("visual_projection")).expect("proj");
    randomise(&varmap);
    let tensors = checkpoint(&varmap);
    let export = export_dir(&format!("clip-b{patch_size}"));
    save(&export, &tensors);
    // transformers' CLIPModel config.json for OpenAI's ViT-B/32 or B/16: what the tower reads.
    let config_json = json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": 512,
        "vision_config": {
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "image_size": 224, "patch_size": patch_size,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5
        }
    });
    let ours = ImageTower::load(config_json.to_string().as_bytes(), tensors, Precision::F32)
        .expect("the engine's tower");
    let pixels = clip_pixels();
    let name = format!("ViT-B/{patch_size}");
    images_agree(&name, &export, &config_json, &ours, &pixels, 224, |batch| {
        tower
            .forward(batch)
            .and_then(|pooled| projection.forward(&pooled))
    });
}

/// The engine's vectors of `pixels` (square images of `size`) against `candle`'s of the batch
/// (`[n, 3, size, size]` in, `[n, width]` out); one image alone equal to it in the batch; the
/// run written where `export` says.
fn images_agree(
    name: &str,
    export: &Option<std::path::PathBuf>,
    config_json: &serde_json::Value,
    ours: &ImageTower,
    pixels: &[Vec<f32>],
    size: usize,
    candle: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) {
    let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
    let got = ours.embed(&refs).expect("our vectors");
    let alone = ours.embed(&refs[1..2]).expect("alone");
    assert!(cosine(&alone[0], &got[1]) > 0.999999, "batched != single");
    // Different pictures, different vectors: agreement is not two constant outputs.
    assert!(
        cosine(&got[0], &got[1]) < 0.9999,
        "the tower ignores its input"
    );
    if let Some(dir) = export {
        let out = json!({"config": config_json, "pixels": pixels, "vectors": got});
        std::fs::write(dir.join("run.json"), out.to_string()).expect("run.json");
    }
    let n = pixels.len();
    let batch =
        Tensor::from_vec(pixels.concat(), (n, 3, size, size), &Device::Cpu).expect("pixels");
    let want = candle(&batch)
        .and_then(|t| t.to_vec2::<f32>())
        .expect("candle's vectors");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len());
        let c = cosine(g, w);
        println!("{name} image {i}: cosine {c:.7}");
        assert!(c >= 0.9999, "{name} image {i}: cosine {c} to candle's");
    }
}

/// Token ids as CLIP's tokenizer makes them: the start token, words, the end-of-text token.
fn texts() -> Vec<Encoded> {
    let mut rng = Seeded(7);
    [3usize, 9, 1, 30, 75]
        .iter()
        .map(|&words| {
            let mut ids = vec![49406];
            ids.extend((0..words).map(|_| ((rng.next() + 1.0) * 24000.0) as u32 + 300));
            ids.push(49407);
            let type_ids = vec![0; ids.len()];
            Encoded {
                ids,
                type_ids,
                truncated: false,
                unattended: 0,
            }
        })
        .collect()
}

#[test]
fn clip_text_vectors_equal_candle_transformers() {
    let config = ClipTextConfig::vit_base_patch32();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let tower = ClipTextTransformer::new(vb.pp("text_model"), &config).expect("candle tower");
    let projection = candle_nn::linear_no_bias(512, 512, vb.pp("text_projection")).expect("proj");
    randomise(&varmap);
    let tensors = checkpoint(&varmap);
    let export = export_dir("clip-text");
    save(&export, &tensors);
    // OpenAI's ViT-B/32 text_config as transformers saves it (eos_token_id 2: the row of the
    // highest id is pooled).
    let config_json = json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": 512,
        "text_config": {
            "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
            "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 2
        }
    });
    let ours = TextTower::load(config_json.to_string().as_bytes(), tensors, Precision::F32)
        .expect("the engine's tower");
    let texts = texts();
    let refs: Vec<&Encoded> = texts.iter().collect();
    let got = ours.embed(&refs).expect("our vectors");
    assert_eq!(got.len(), texts.len());
    texts_agree("clip-text", &export, &config_json, &texts, &got, |ids| {
        tower
            .forward(ids)
            .and_then(|pooled| projection.forward(&pooled))
    });
}

#[test]
fn clip_vit_b32_image_vectors_equal_candle_transformers() {
    agree_on(32);
}

#[test]
fn clip_vit_b16_image_vectors_equal_candle_transformers() {
    agree_on(16);
}

/// CLIP's processor: the short side to 224, a centre crop, CLIP's mean and std.
fn clip_pixels() -> Vec<Vec<f32>> {
    (0..3).map(|v| clip_recipe().apply(&picture(v))).collect()
}

/// CLIP's processor.
fn clip_recipe() -> Preprocess {
    Preprocess {
        size: Some(Size::ShortestEdge { shortest_edge: 224 }),
        crop: Some([224, 224]),
        resample: Resample::Bicubic,
        rescale: 1.0 / 255.0,
        mean: [0.48145466, 0.4578275, 0.40821073],
        std: [0.26862954, 0.26130258, 0.27577711],
    }
}

/// SigLIP's processor: a square resize, no crop, mean and std one half.
fn siglip_pixels(size: u32) -> Vec<Vec<f32>> {
    let recipe = Preprocess {
        size: Some(Size::Exact {
            height: size,
            width: size,
        }),
        crop: None,
        resample: Resample::Bilinear,
        rescale: 1.0 / 255.0,
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    (0..3).map(|v| recipe.apply(&picture(v))).collect()
}

fn siglip_image_agrees(name: &str, image_size: usize) {
    let config = siglip::VisionConfig {
        image_size,
        ..siglip::Config::base_patch16_224().vision_config
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let tower =
        siglip::VisionModel::new(&config, true, vb.pp("vision_model")).expect("candle tower");
    randomise(&varmap);
    let tensors = checkpoint(&varmap);
    let export = export_dir(name);
    save(&export, &tensors);
    // SiglipModel's config.json (google/siglip-base-patch16-224, siglip2-base-patch16-256).
    let config_json = json!({
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "vision_config": {
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "image_size": image_size, "patch_size": 16,
            "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6
        }
    });
    let ours = ImageTower::load(config_json.to_string().as_bytes(), tensors, Precision::F32)
        .expect("the engine's tower");
    let pixels = siglip_pixels(image_size as u32);
    images_agree(
        name,
        &export,
        &config_json,
        &ours,
        &pixels,
        image_size,
        |batch| tower.forward(batch),
    );
}

#[test]
fn siglip_base_224_image_vectors_equal_candle_transformers() {
    siglip_image_agrees("siglip-base-224", 224);
}

#[test]
fn siglip2_base_256_image_vectors_equal_candle_transformers() {
    siglip_image_agrees("siglip2-base-256", 256);
}

fn siglip_text_agrees(name: &str, vocab: usize) {
    let config = siglip::TextConfig {
        vocab_size: vocab,
        ..siglip::Config::base_patch16_224().text_config
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let tower = siglip::TextModel::new(&config, vb.pp("text_model")).expect("candle tower");
    randomise(&varmap);
    let tensors = checkpoint(&varmap);
    let export = export_dir(name);
    save(&export, &tensors);
    let config_json = json!({
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "text_config": {
            "vocab_size": vocab, "hidden_size": 768, "intermediate_size": 3072,
            "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 64,
            "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6
        }
    });
    let ours = TextTower::load(config_json.to_string().as_bytes(), tensors, Precision::F32)
        .expect("the engine's tower");
    // SigLIP's texts are padded to 64 tokens (its processor's `padding="max_length"`), and
    // the last row is pooled: padded ones, and two shorter ones.
    let mut rng = Seeded(11);
    let texts: Vec<Encoded> = [64usize, 64, 64, 20, 5]
        .iter()
        .map(|&len| {
            let ids: Vec<u32> = (0..len)
                .map(|_| ((rng.next() + 1.0) * 0.5 * (vocab - 2) as f32) as u32 + 1)
                .collect();
            Encoded {
                type_ids: vec![0; ids.len()],
                ids,
                truncated: false,
                unattended: 0,
            }
        })
        .collect();
    let refs: Vec<&Encoded> = texts.iter().collect();
    let got = ours.embed(&refs).expect("our vectors");
    texts_agree(name, &export, &config_json, &texts, &got, |ids| {
        tower.forward(ids)
    });
}

/// Each text's vector `got` against `candle`'s of the text alone (`[1, tokens]` ids in, a
/// `[1, width]` vector out); the run written where `export` says.
fn texts_agree(
    name: &str,
    export: &Option<std::path::PathBuf>,
    config_json: &serde_json::Value,
    texts: &[Encoded],
    got: &[Vec<f32>],
    candle: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) {
    assert!(
        cosine(&got[0], &got[1]) < 0.9999,
        "the tower ignores its input"
    );
    if let Some(dir) = export {
        let ids: Vec<&Vec<u32>> = texts.iter().map(|t| &t.ids).collect();
        let out = json!({"config": config_json, "ids": ids, "vectors": got});
        std::fs::write(dir.join("run.json"), out.to_string()).expect("run.json");
    }
    for (i, (t, g)) in texts.iter().zip(got).enumerate() {
        let ids = Tensor::new(t.ids.as_slice(), &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .expect("ids");
        let want = candle(&ids)
            .and_then(|t| t.squeeze(0))
            .and_then(|t| t.to_vec1::<f32>())
            .expect("candle's vector");
        let c = cosine(g, &want);
        println!("{name} text {i} ({} tokens): cosine {c:.7}", t.ids.len());
        assert!(c >= 0.9999, "{name} text {i}: cosine {c} to candle's");
    }
}

#[test]
fn siglip_base_text_vectors_equal_candle_transformers() {
    siglip_text_agrees("siglip-base-text", 32000);
}

#[test]
fn siglip2_base_text_vectors_equal_candle_transformers() {
    // SigLIP 2's text tower is SigLIP's with Gemma's vocabulary.
    siglip_text_agrees("siglip2-base-text", 256_000);
}

/// Sets the scalar weight `name` (a learned logit scale or bias) to `value`.
fn set_scalar(varmap: &VarMap, name: &str, value: f32) {
    let vars = varmap.data().lock().expect("varmap");
    let var = &vars[name];
    let t = Tensor::full(value, var.shape(), &Device::Cpu).expect("scalar");
    var.set(&t).expect("set");
}

/// Every text's score against every image, the engine's and the reference's `logits` (`[texts,
/// images]`), within 1e-4.
fn scores_agree(
    name: &str,
    scorer: &Scorer,
    texts: &[Vec<f32>],
    images: &[Vec<f32>],
    logits: &Tensor,
) {
    let want: Vec<Vec<f32>> = logits.to_vec2().expect("logits");
    let mut worst = 0f32;
    for (t, row) in texts.iter().zip(&want) {
        for (i, &w) in images.iter().zip(row) {
            worst = worst.max((scorer.logit(t, i) - w).abs());
        }
    }
    println!(
        "{name}: {}×{} logits, worst difference {worst:.2e}",
        texts.len(),
        images.len()
    );
    assert!(
        worst <= 1e-4,
        "{name}: a logit {worst} from the reference's"
    );
}

/// Both towers of `tensors` in `precision`: the vectors of `pixels` and of `texts`.
fn embed_both(
    config_json: &str,
    tensors: &HashMap<String, Tensor>,
    precision: Precision,
    pixels: &[Vec<f32>],
    texts: &[Encoded],
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let images =
        ImageTower::load(config_json.as_bytes(), tensors.clone(), precision).expect("image tower");
    let text_tower =
        TextTower::load(config_json.as_bytes(), tensors.clone(), precision).expect("text tower");
    let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
    let text_refs: Vec<&Encoded> = texts.iter().collect();
    (
        images.embed(&refs).expect("image vectors"),
        text_tower.embed(&text_refs).expect("text vectors"),
    )
}

/// `pixels` (square images of `size`) and `texts` (all of one length) as candle's batches.
fn batches(pixels: &[Vec<f32>], size: usize, texts: &[Encoded]) -> (Tensor, Tensor) {
    let n = pixels.len();
    let batch =
        Tensor::from_vec(pixels.concat(), (n, 3, size, size), &Device::Cpu).expect("pixels");
    let len = texts[0].ids.len();
    let ids: Vec<u32> = texts.iter().flat_map(|t| t.ids.clone()).collect();
    let ids = Tensor::from_vec(ids, (texts.len(), len), &Device::Cpu).expect("ids");
    (batch, ids)
}

/// A whole random CLIP ViT-B/32 in candle at OpenAI's trained scale, its tensors and its
/// config.json.
fn clip_model() -> (
    candle_transformers::models::clip::ClipModel,
    HashMap<String, Tensor>,
    String,
) {
    use candle_transformers::models::clip::{ClipConfig, ClipModel};
    let varmap = VarMap::new();
    for (name, shape) in [
        ("vision_model.embeddings.class_embedding", vec![768]),
        ("logit_scale", vec![]),
    ] {
        varmap
            .get(
                shape,
                name,
                candle_nn::Init::Const(0.0),
                DType::F32,
                &Device::Cpu,
            )
            .expect("a weight candle would draw itself");
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = ClipModel::new(vb, &ClipConfig::vit_base_patch32()).expect("candle model");
    randomise(&varmap);
    // OpenAI's trained scale, exp(4.6052) = 100.
    set_scalar(&varmap, "logit_scale", 4.6052);
    let config_json = json!({
        "model_type": "clip", "projection_dim": 512,
        "vision_config": {"patch_size": 32, "hidden_act": "quick_gelu"},
        "text_config": {"hidden_act": "quick_gelu", "eos_token_id": 2}
    })
    .to_string();
    (model, checkpoint(&varmap), config_json)
}

/// CLIP texts of one length (5 tokens), so candle takes them as one batch.
fn clip_texts() -> Vec<Encoded> {
    texts()
        .into_iter()
        .filter(|t| t.ids.len() >= 5)
        .map(|mut t| {
            t.ids.truncate(4);
            t.ids.push(49407);
            t.type_ids.truncate(5);
            t
        })
        .collect()
}

#[test]
fn clip_scores_of_texts_against_images_equal_the_models_logits() {
    let (model, tensors, config_json) = clip_model();
    let scorer = Scorer::load(config_json.as_bytes(), &tensors).expect("scorer");
    let (pixels, texts) = (clip_pixels(), clip_texts());
    let (image_vectors, text_vectors) =
        embed_both(&config_json, &tensors, Precision::F32, &pixels, &texts);
    let (batch, ids) = batches(&pixels, 224, &texts);
    let (per_text, _) = model.forward(&batch, &ids).expect("candle's logits");
    scores_agree(
        "CLIP ViT-B/32",
        &scorer,
        &text_vectors,
        &image_vectors,
        &per_text,
    );
    // CLIP's score is its logit.
    assert_eq!(
        scorer.score(&text_vectors[0], &image_vectors[0]),
        scorer.logit(&text_vectors[0], &image_vectors[0])
    );
}

/// The worst cosine between each vector of `a` and its own in `b`.
fn worst_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| cosine(x, y))
        .fold(1.0, f64::min)
}

#[test]
fn clip_towers_in_int8_and_bf16_stay_near_f32() {
    let (_, tensors, config_json) = clip_model();
    let (pixels, texts) = (clip_pixels(), clip_texts());
    let f32s = embed_both(&config_json, &tensors, Precision::F32, &pixels, &texts);
    // int8: the floor the text models promise (0.999); measured 0.99999 against ORT's f32 in
    // bench/vision.
    let int8 = embed_both(&config_json, &tensors, Precision::Int8, &pixels, &texts);
    let (images, words) = (
        worst_cosine(&int8.0, &f32s.0),
        worst_cosine(&int8.1, &f32s.1),
    );
    println!("int8: worst cosine to f32, images {images:.6}, texts {words:.6}");
    assert!(
        images >= 0.999 && words >= 0.999,
        "int8 towers below 0.999 of f32"
    );
    let bf16 = embed_both(&config_json, &tensors, Precision::Bf16, &pixels, &texts);
    if common::engine::bf16_runs_here() {
        let (images, words) = (
            worst_cosine(&bf16.0, &f32s.0),
            worst_cosine(&bf16.1, &f32s.1),
        );
        println!("bf16: worst cosine to f32, images {images:.6}, texts {words:.6}");
        assert!(
            images >= 0.999 && words >= 0.999,
            "bf16 towers below 0.999 of f32"
        );
    } else {
        // Without AMX a tower configured bf16 runs f32, as every model does.
        assert_eq!(bf16, f32s, "bf16 without AMX is not f32");
        common::skip::skip(
            "CLIP towers in bf16: this CPU has no AMX (f32 above is what bf16 runs here)",
        );
    }
    // int8-fast: only with calibration inputs, which the daemon makes at load (its own
    // pictures through the model's processor; its calibration texts through the tokenizer).
    let refused =
        ImageTower::load(config_json.as_bytes(), tensors.clone(), Precision::Int8Fast).err();
    assert_eq!(
        refused.as_deref(),
        Some(
            "int8-fast needs calibration inputs for a tower (pictures for an image tower, texts for a text tower)"
        )
    );
    let pictures: Vec<Vec<f32>> = caxton::engine::calibration::pictures()
        .iter()
        .map(|p| clip_recipe().apply(p))
        .collect();
    let mut rng = Seeded(99);
    let calibration_texts: Vec<Encoded> = [12usize, 30, 60]
        .iter()
        .map(|&n| {
            let mut ids = vec![49406];
            ids.extend((0..n).map(|_| ((rng.next() + 1.0) * 24000.0) as u32 + 300));
            ids.push(49407);
            Encoded {
                type_ids: vec![0; ids.len()],
                ids,
                truncated: false,
                unattended: 0,
            }
        })
        .collect();
    let fast_images = ImageTower::load_calibrated(
        config_json.as_bytes(),
        tensors.clone(),
        Precision::Int8Fast,
        &pictures,
    )
    .expect("int8-fast image tower");
    let fast_text = TextTower::load_calibrated(
        config_json.as_bytes(),
        tensors,
        Precision::Int8Fast,
        &calibration_texts,
    )
    .expect("int8-fast text tower");
    let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
    let text_refs: Vec<&Encoded> = texts.iter().collect();
    let fast = (
        fast_images.embed(&refs).expect("image vectors"),
        fast_text.embed(&text_refs).expect("text vectors"),
    );
    let (images, words) = (
        worst_cosine(&fast.0, &f32s.0),
        worst_cosine(&fast.1, &f32s.1),
    );
    println!("int8-fast: worst cosine to f32, images {images:.6}, texts {words:.6}");
    assert!(
        images >= 0.999 && words >= 0.999,
        "int8-fast towers below 0.999 of f32"
    );
}

#[test]
fn siglip_scores_of_texts_against_images_equal_the_models_logits_and_sigmoid() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = siglip::Model::new(&siglip::Config::base_patch16_224(), vb).expect("candle model");
    randomise(&varmap);
    // google/siglip-base-patch16-224's trained scale and bias: exp(4.765) = 117.3, -12.93.
    set_scalar(&varmap, "logit_scale", 4.765);
    set_scalar(&varmap, "logit_bias", -12.93);
    let tensors = checkpoint(&varmap);
    let config_json =
        json!({"model_type": "siglip", "vision_config": {}, "text_config": {}}).to_string();
    let scorer = Scorer::load(config_json.as_bytes(), &tensors).expect("scorer");
    let pixels = siglip_pixels(224);
    let mut rng = Seeded(5);
    let texts: Vec<Encoded> = (0..4)
        .map(|_| {
            let ids: Vec<u32> = (0..64)
                .map(|_| ((rng.next() + 1.0) * 15000.0) as u32 + 2)
                .collect();
            Encoded {
                type_ids: vec![0; 64],
                ids,
                truncated: false,
                unattended: 0,
            }
        })
        .collect();
    let (image_vectors, text_vectors) =
        embed_both(&config_json, &tensors, Precision::F32, &pixels, &texts);
    let (batch, ids) = batches(&pixels, 224, &texts);
    let (per_text, _) = model.forward(&batch, &ids).expect("candle's logits");
    scores_agree(
        "SigLIP base 224",
        &scorer,
        &text_vectors,
        &image_vectors,
        &per_text,
    );
    // SigLIP's score is the sigmoid of its logit.
    let (t, i) = (&text_vectors[1], &image_vectors[2]);
    let p = 1.0 / (1.0 + (-scorer.logit(t, i)).exp());
    assert!((scorer.score(t, i) - p).abs() < 1e-7);
}
