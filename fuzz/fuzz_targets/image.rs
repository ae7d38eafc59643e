//! Fuzzes the image path a client's bytes take: decoding (JPEG, PNG, WebP, told by their first
//! bytes) within small limits, then CLIP's preprocessing of whatever decodes (a resize from any
//! size to 224 on the short side, the centre crop, normalisation). Any bytes give a tensor or
//! an error, never a panic, and no allocation past the limits (`-rss_limit_mb`).
#![no_main]

use caxton::images::{Limits, Preprocess, Resample, Size, decode_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bytes: 1 << 20,
        max_pixels: 1 << 20,
    };
    if let Ok(image) = decode_bytes(data, &limits) {
        let recipe = Preprocess {
            size: Some(Size::ShortestEdge { shortest_edge: 224 }),
            crop: Some([224, 224]),
            resample: Resample::Bicubic,
            rescale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let t = recipe.apply(&image);
        assert_eq!(t.len(), 3 * 224 * 224);
        assert!(t.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
});
