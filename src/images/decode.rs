//! A client's image, as it sends one: a `data:` URI holding a base64 JPEG, PNG or WebP. The
//! daemon reads no file and fetches no URL for a client, so anything else is refused. The
//! limits are checked as early as each can be: the encoded size before base64 is decoded, the
//! pixel count from the header before a pixel is decoded (a 100 kB PNG may claim 10 gigapixels),
//! and the decoder's own allocation cap after that.

use std::io::Cursor;

use base64::Engine as _;
use image::{ImageDecoder, ImageFormat, ImageReader, RgbImage};

/// What one image may cost (`limits.max_image_bytes`, `limits.max_image_pixels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of the encoded image (after base64).
    pub max_bytes: usize,
    /// Most pixels (width × height) it may decode to.
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 10 << 20,
            max_pixels: 40_000_000,
        }
    }
}

/// Why an image was refused. The API answers 400 (413 for the two limits) and names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// A URL or a file path where a data URI was expected.
    #[error(
        "is {0}, not a data URI: the daemon reads no files and fetches no URLs for a client; \
         send the image's bytes as data:image/jpeg;base64,..."
    )]
    NotDataUri(&'static str),
    /// A `data:` URI that is not base64 image data.
    #[error("is not a base64 image data URI ({0}); send data:image/jpeg;base64,...")]
    BadDataUri(String),
    /// More encoded bytes than `limits.max_image_bytes`.
    #[error(
        "is {bytes} bytes, more than limits.max_image_bytes ({max}); send a smaller image or \
         raise the limit"
    )]
    TooLarge {
        /// The image's bytes (or, before base64 is decoded, the least it can hold).
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// More pixels than `limits.max_image_pixels`, from the image's header.
    #[error(
        "is {width}×{height} pixels ({pixels}), more than limits.max_image_pixels ({max}); \
         send a smaller image or raise the limit"
    )]
    TooManyPixels {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// Their product.
        pixels: u64,
        /// The limit.
        max: u64,
    },
    /// Bytes that are no JPEG, PNG or WebP.
    #[error("is not a JPEG, PNG or WebP image ({0})")]
    UnknownFormat(String),
    /// A JPEG, PNG or WebP that does not decode (truncated, corrupt).
    #[error("is a {format} that does not decode: {reason}")]
    Undecodable {
        /// JPEG, PNG or WebP.
        format: &'static str,
        /// The decoder's words.
        reason: String,
    },
}

/// Decodes a data URI into 8-bit RGB, as the models' processors take it: grey replicated,
/// alpha dropped (as PIL's `convert("RGB")`), no EXIF rotation (the processors apply none).
pub fn decode_data_uri(uri: &str, limits: &Limits) -> Result<RgbImage, ImageError> {
    let bytes = data_uri_bytes(uri, limits)?;
    decode_bytes(&bytes, limits)
}

/// The bytes a `data:image/...;base64,` URI holds, refused past `limits.max_bytes`.
fn data_uri_bytes(uri: &str, limits: &Limits) -> Result<Vec<u8>, ImageError> {
    let Some(rest) = strip_prefix_ignore_case(uri, "data:") else {
        return Err(ImageError::NotDataUri(what_it_is(uri)));
    };
    let Some((header, data)) = rest.split_once(',') else {
        return Err(ImageError::BadDataUri(
            "no comma after the media type".into(),
        ));
    };
    let mut parts = header.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if !media.is_empty() && !media.to_ascii_lowercase().starts_with("image/") {
        return Err(ImageError::BadDataUri(format!(
            "its media type is {media:?}"
        )));
    }
    if !parts.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(ImageError::BadDataUri("it is not marked ;base64".into()));
    }
    let data = data.trim();
    // Four base64 characters hold three bytes, less the padding: refuse before decoding.
    let least = (data.len() / 4 * 3).saturating_sub(2);
    if least > limits.max_bytes {
        return Err(ImageError::TooLarge {
            bytes: least,
            max: limits.max_bytes,
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| ImageError::BadDataUri(format!("its base64 does not decode: {e}")))?;
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooLarge {
            bytes: bytes.len(),
            max: limits.max_bytes,
        });
    }
    Ok(bytes)
}

/// Decodes an image's bytes (JPEG, PNG or WebP, told by their first bytes) within `limits`.
pub fn decode_bytes(bytes: &[u8], limits: &Limits) -> Result<RgbImage, ImageError> {
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => f,
        Ok(other) => {
            return Err(ImageError::UnknownFormat(format!(
                "it is {}",
                other.extensions_str().first().unwrap_or(&"another format")
            )));
        }
        Err(_) => {
            return Err(ImageError::UnknownFormat(format!(
                "its first bytes are {}",
                hex_head(bytes)
            )));
        }
    };
    let name = match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        _ => "WebP",
    };
    let undecodable = |e: image::ImageError| ImageError::Undecodable {
        format: name,
        reason: e.to_string(),
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // The decoder's allocations, capped at the pixel limit's RGBA (and a header's worth), in
    // case a format's header and body disagree.
    let mut caps = image::Limits::default();
    caps.max_alloc = Some(limits.max_pixels.saturating_mul(4).saturating_add(1 << 20));
    reader.limits(caps);
    // The decoder has read the header alone: the pixel count is refused before anything is
    // decoded.
    let decoder = reader.into_decoder().map_err(undecodable)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            pixels,
            max: limits.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(ImageError::Undecodable {
            format: name,
            reason: format!("it is {width}×{height} pixels"),
        });
    }
    let image = image::DynamicImage::from_decoder(decoder).map_err(undecodable)?;
    Ok(image.into_rgb8())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// What a string that is no data URI looks like, for the refusal.
fn what_it_is(s: &str) -> &'static str {
    let lower = s.trim_start().to_ascii_lowercase();
    if ["http://", "https://", "ftp://"]
        .iter()
        .any(|p| lower.starts_with(p))
    {
        "a URL"
    } else if lower.starts_with("file:")
        || lower.starts_with('/')
        || lower.starts_with("./")
        || lower.starts_with("~/")
    {
        "a file path"
    } else {
        "text"
    }
}

/// The first bytes, in hex, for an unknown format's refusal.
fn hex_head(bytes: &[u8]) -> String {
    match bytes.is_empty() {
        true => "none (it is empty)".into(),
        false => bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

#[cfg(test)]
mod tests;
