use base64::Engine as _;
use image::{ImageEncoder, RgbImage};

use super::*;

/// A 6×4 gradient, so every pixel differs.
fn sample() -> RgbImage {
    RgbImage::from_fn(6, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 60, 200]))
}

fn encode(format: ImageFormat) -> Vec<u8> {
    let img = sample();
    let mut out = Vec::new();
    let (w, h) = img.dimensions();
    let color = image::ExtendedColorType::Rgb8;
    let result = match format {
        ImageFormat::Png => {
            image::codecs::png::PngEncoder::new(&mut out).write_image(img.as_raw(), w, h, color)
        }
        ImageFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .write_image(img.as_raw(), w, h, color),
        _ => image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(
            img.as_raw(),
            w,
            h,
            color,
        ),
    };
    result.expect("encodes");
    out
}

fn uri(media: &str, bytes: &[u8]) -> String {
    format!(
        "data:{media};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn refusal(input: &str, limits: &Limits) -> String {
    match decode_data_uri(input, limits) {
        Ok(img) => panic!("{input:.60} decoded to {}×{}", img.width(), img.height()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn png_jpeg_and_webp_data_uris_decode_to_their_pixels() {
    for format in [ImageFormat::Png, ImageFormat::WebP, ImageFormat::Jpeg] {
        let bytes = encode(format);
        // The declared type is not trusted: the bytes say what they are.
        for media in ["image/png", "IMAGE/JPEG", "image/webp", ""] {
            let img = decode_data_uri(&uri(media, &bytes), &Limits::default()).expect("decodes");
            assert_eq!(img.dimensions(), (6, 4));
            let worst = img
                .as_raw()
                .iter()
                .zip(sample().as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0);
            // Lossless formats give the pixels back; JPEG close to them.
            let bound = if format == ImageFormat::Jpeg { 24 } else { 0 };
            assert!(worst <= bound, "{format:?}: a level {worst} off");
        }
    }
}

#[test]
fn grey_and_alpha_images_become_rgb() {
    let grey = image::GrayImage::from_fn(3, 2, |x, _| image::Luma([x as u8 * 100]));
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(grey.as_raw(), 3, 2, image::ExtendedColorType::L8)
        .expect("encodes");
    let img = decode_data_uri(&uri("image/png", &png), &Limits::default()).expect("decodes");
    assert_eq!(img.get_pixel(2, 1).0, [200, 200, 200]);
    let rgba = image::RgbaImage::from_fn(2, 2, |_, _| image::Rgba([10, 20, 30, 0]));
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(rgba.as_raw(), 2, 2, image::ExtendedColorType::Rgba8)
        .expect("encodes");
    // Alpha is dropped, not composited (PIL's convert("RGB")).
    let img = decode_data_uri(&uri("image/png", &png), &Limits::default()).expect("decodes");
    assert_eq!(img.get_pixel(1, 1).0, [10, 20, 30]);
}

#[test]
fn urls_and_file_paths_are_refused_as_the_daemon_reads_none() {
    let tail = "not a data URI: the daemon reads no files and fetches no URLs for a client; send \
                the image's bytes as data:image/jpeg;base64,...";
    let l = Limits::default();
    assert_eq!(
        refusal("https://example.com/cat.jpg", &l),
        format!("is a URL, {tail}")
    );
    assert_eq!(
        refusal("file:///etc/passwd", &l),
        format!("is a file path, {tail}")
    );
    assert_eq!(
        refusal("/var/lib/photo.png", &l),
        format!("is a file path, {tail}")
    );
    assert_eq!(refusal("iVBORw0KGgo=", &l), format!("is text, {tail}"));
}

#[test]
fn malformed_data_uris_say_what_is_wrong() {
    let l = Limits::default();
    assert_eq!(
        refusal("data:image/png;base64", &l),
        "is not a base64 image data URI (no comma after the media type); send data:image/jpeg;base64,..."
    );
    assert_eq!(
        refusal("data:text/plain;base64,aGVsbG8=", &l),
        "is not a base64 image data URI (its media type is \"text/plain\"); send data:image/jpeg;base64,..."
    );
    assert_eq!(
        refusal("data:image/png,%89PNG", &l),
        "is not a base64 image data URI (it is not marked ;base64); send data:image/jpeg;base64,..."
    );
    assert_eq!(
        refusal("data:image/png;base64,@@@@", &l),
        "is not a base64 image data URI (its base64 does not decode: Invalid symbol 64, offset 0.); \
         send data:image/jpeg;base64,..."
    );
}

#[test]
fn more_bytes_than_the_limit_are_refused_before_and_after_base64() {
    let png = encode(ImageFormat::Png);
    let tight = Limits {
        max_bytes: png.len() - 1,
        max_pixels: 100,
    };
    assert_eq!(
        refusal(&uri("image/png", &png), &tight),
        format!(
            "is {} bytes, more than limits.max_image_bytes ({}); send a smaller image or raise the limit",
            png.len(),
            png.len() - 1
        )
    );
    // A body far past the limit is refused from its length, before base64 is decoded.
    let huge = format!("data:image/png;base64,{}", "A".repeat(4 << 20));
    let e = decode_data_uri(
        &huge,
        &Limits {
            max_bytes: 1 << 20,
            max_pixels: 100,
        },
    )
    .expect_err("refused");
    assert_eq!(
        e,
        ImageError::TooLarge {
            bytes: 3 * (1 << 20) - 2,
            max: 1 << 20
        }
    );
}

#[test]
fn more_pixels_than_the_limit_are_refused_from_the_header() {
    let png = encode(ImageFormat::WebP);
    let e = decode_data_uri(
        &uri("image/webp", &png),
        &Limits {
            max_bytes: 1 << 20,
            max_pixels: 23,
        },
    )
    .expect_err("refused");
    assert_eq!(
        e.to_string(),
        "is 6×4 pixels (24), more than limits.max_image_pixels (23); send a smaller image or raise the limit"
    );
}

/// `bytes` as a PNG chunk of `kind`, with its CRC.
fn chunk(kind: &[u8; 4], bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(bytes);
    let mut crc = !0u32;
    for &b in kind.iter().chain(bytes) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    out.extend_from_slice(&(!crc).to_be_bytes());
    out
}

#[test]
fn a_decompression_bomb_is_refused_from_its_header_before_any_pixel() {
    // 100,000 × 100,000 RGB claimed by a 60-byte PNG: 30 GB if decoded.
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    // Its body is 8 bytes: a decode would have failed on it (truncated) or on the allocation
    // cap, so this refusal was made from the header.
    let e = decode_bytes(&png, &Limits::default()).expect_err("refused");
    assert_eq!(
        e,
        ImageError::TooManyPixels {
            width: 100_000,
            height: 100_000,
            pixels: 10_000_000_000,
            max: 40_000_000
        }
    );
}

#[test]
fn unknown_and_broken_images_are_named() {
    let l = Limits::default();
    assert_eq!(
        refusal(&uri("image/gif", b"GIF89a\x01\x00\x01\x00"), &l),
        "is not a JPEG, PNG or WebP image (it is gif)"
    );
    assert_eq!(
        refusal(&uri("image/png", b"hello, world"), &l),
        "is not a JPEG, PNG or WebP image (its first bytes are 68 65 6c 6c 6f 2c 20 77)"
    );
    assert_eq!(
        refusal(&uri("image/png", b""), &l),
        "is not a JPEG, PNG or WebP image (its first bytes are none (it is empty))"
    );
    for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
        let bytes = encode(format);
        let cut = &bytes[..bytes.len() * 2 / 3];
        let e = decode_bytes(cut, &l).expect_err("a truncated image is refused");
        assert!(
            matches!(e, ImageError::Undecodable { .. }),
            "{format:?}: {e}"
        );
        let name = match format {
            ImageFormat::Png => "PNG",
            ImageFormat::Jpeg => "JPEG",
            _ => "WebP",
        };
        assert!(
            e.to_string()
                .starts_with(&format!("is a {name} that does not decode: ")),
            "{e}"
        );
    }
}
