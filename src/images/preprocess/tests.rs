// CLIP's mean and std as its preprocessor_config.json writes them.
#![allow(clippy::excessive_precision)]

use serde_json::json;

use super::*;

fn clip() -> Value {
    json!({
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "do_convert_rgb": true,
        "do_normalize": true, "do_rescale": true, "do_resize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224}
    })
}

#[test]
fn clip_and_siglip_configs_become_their_recipes() {
    let r = Preprocess::from_processor_config(&clip()).expect("a recipe");
    assert_eq!(r.size, Some(Size::ShortestEdge { shortest_edge: 224 }));
    assert_eq!(r.crop, Some([224, 224]));
    assert_eq!(r.resample, Resample::Bicubic);
    assert_eq!(r.mean, [0.48145466, 0.4578275, 0.40821073]);
    let siglip = json!({
        "do_convert_rgb": null, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "resample": 2, "rescale_factor": 0.00392156862745098, "size": {"height": 256, "width": 256}
    });
    let r = Preprocess::from_processor_config(&siglip).expect("a recipe");
    assert_eq!(
        r.size,
        Some(Size::Exact {
            height: 256,
            width: 256
        })
    );
    assert_eq!((r.crop, r.resample), (None, Resample::Bilinear));
    // The manifest's `image` section: the keys CONTRACT.md names, and back.
    let section = serde_json::to_value(&r).expect("serialises");
    assert_eq!(
        section,
        json!({"size": {"height": 256, "width": 256}, "crop": null, "resample": "bilinear",
               "rescale": 1.0f32 / 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    );
    assert_eq!(
        serde_json::from_value::<Preprocess>(section).expect("parses"),
        r
    );
}

#[test]
fn steps_the_daemon_does_not_take_are_refused_by_name() {
    let refused = |patch: Value| {
        let mut config = clip();
        for (k, v) in patch.as_object().expect("an object") {
            config[k] = v.clone();
        }
        Preprocess::from_processor_config(&config).expect_err("refused")
    };
    assert_eq!(
        refused(json!({"do_pad": true})),
        "do_pad: true is not supported"
    );
    assert_eq!(
        refused(json!({"do_convert_rgb": false})),
        "do_convert_rgb: false is not supported"
    );
    assert_eq!(
        refused(json!({"resample": 7})),
        "resample is 7; PIL's filters are numbered 0 to 5"
    );
    assert_eq!(refused(json!({"size": null})), "size is missing");
    assert_eq!(
        refused(json!({"size": {"longest_edge": 224}})),
        "size is {\"longest_edge\":224}; expected {\"shortest_edge\": N} or {\"height\": H, \"width\": W}"
    );
    assert_eq!(
        refused(json!({"crop_size": {"height": 0, "width": 4}})),
        "crop_size is {\"height\":0,\"width\":4}; a size must be positive"
    );
    assert_eq!(
        refused(json!({"image_std": [0.5, 0, 0.5]})),
        "image_std is [0.5, 0.0, 0.5]; every channel's must be positive"
    );
    assert_eq!(
        refused(json!({"image_mean": [0.5, 0.5]})),
        "image_mean must be three numbers (R, G, B)"
    );
    assert_eq!(
        refused(json!({"do_resize": "yes"})),
        "do_resize is \"yes\", not true or false"
    );
}

#[test]
fn the_shorter_side_is_resized_and_the_longer_truncated_as_transformers_does() {
    let r = Preprocess::from_processor_config(&clip()).expect("a recipe");
    // chelsea.png, 451 × 300: int(224 · 451 / 300) = int(336.75) = 336.
    assert_eq!(r.resized(451, 300), (336, 224));
    assert_eq!(r.resized(300, 451), (224, 336));
    assert_eq!(r.output_size(451, 300), [224, 224]);
    let no_crop = Preprocess { crop: None, ..r };
    assert_eq!(no_crop.output_size(451, 300), [224, 336]);
}

#[test]
fn a_crop_past_the_image_is_padded_with_level_zero() {
    // 4 × 2 pixels of level 255, cropped to 4 × 4 without a resize: rows 0 and 3 are padding
    // (top = (2 − 4) // 2 = −1).
    let r = Preprocess {
        size: None,
        crop: Some([4, 4]),
        resample: Resample::Bicubic,
        rescale: 1.0 / 255.0,
        mean: [0.5; 3],
        std: [0.5; 3],
    };
    let img = RgbImage::from_pixel(4, 2, image::Rgb([255, 255, 255]));
    let t = r.apply(&img);
    assert_eq!(t.len(), 3 * 16);
    for c in 0..3 {
        let plane = &t[c * 16..(c + 1) * 16];
        assert!(
            plane[..4].iter().all(|&v| v == -1.0),
            "row 0 is padding: {plane:?}"
        );
        assert!(
            plane[4..12].iter().all(|&v| (v - 1.0).abs() < 1e-6),
            "rows 1-2: {plane:?}"
        );
        assert!(
            plane[12..].iter().all(|&v| v == -1.0),
            "row 3 is padding: {plane:?}"
        );
    }
}

#[test]
fn every_filter_keeps_a_flat_image_flat() {
    // A flat image stays flat through any normalised filter, shrinking or growing: the
    // weights of each output sum to one in fixed point too.
    let img = RgbImage::from_pixel(37, 23, image::Rgb([10, 128, 250]));
    for resample in [
        Resample::Nearest,
        Resample::Lanczos,
        Resample::Bilinear,
        Resample::Bicubic,
        Resample::Box,
        Resample::Hamming,
    ] {
        for (w, h) in [(8, 5), (64, 41), (37, 7)] {
            let out = crate::images::resample::resize(&img, w, h, resample);
            assert_eq!(out.dimensions(), (w, h));
            assert!(
                out.pixels().all(|p| p.0 == [10, 128, 250]),
                "{resample:?} to {w}×{h}"
            );
        }
    }
}
