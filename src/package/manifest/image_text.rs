//! The rules of a two-tower image and text model's manifest (`kind: image_text`): a CLIP or
//! SigLIP architecture, each tower pooling as its model does, and the image section its
//! pictures are made ready by.

use super::{Manifest, ManifestError, ModelKind, Pooling, invalid};
use crate::images::{Preprocess, Size};

/// The widest side an image section may resize or crop to: the towers take 224 to 512
/// pixels; far past that a typo, not a model.
pub const MAX_IMAGE_SIDE: u32 = 4096;

impl Manifest {
    /// An image-text model is a CLIP or SigLIP architecture pooled by its towers, with its
    /// image section and none of the other kinds' vector steps; no other model has any of
    /// the three.
    pub(super) fn validate_image_text(&self) -> Result<(), ManifestError> {
        let kind = self.kind == ModelKind::ImageText;
        let architecture = self.architecture.is_image_text();
        if kind != architecture {
            return Err(invalid(
                "kind",
                match kind {
                    true => format!(
                        "kind image_text needs a two-tower architecture (clip or siglip), not {}",
                        self.architecture.as_str()
                    ),
                    false => format!(
                        "architecture {} is a two-tower image and text model: kind must be image_text",
                        self.architecture.as_str()
                    ),
                },
            ));
        }
        if kind != (self.pooling == Pooling::Towers) {
            return Err(invalid(
                "pooling",
                match kind {
                    true => format!(
                        "an image-text model's towers pool as the model does: pooling must be towers, not {}",
                        self.pooling.as_str()
                    ),
                    false => "towers is an image-text model's pooling (kind: image_text)".into(),
                },
            ));
        }
        let Some(image) = &self.image else {
            return match kind {
                true => Err(invalid(
                    "image",
                    "an image-text model must say how its pictures are prepared (size, crop, resample, rescale, mean, std)",
                )),
                false => Ok(()),
            };
        };
        if !kind {
            return Err(invalid(
                "image",
                "only an image-text model (kind: image_text) has it; remove it or set kind: image_text",
            ));
        }
        for (field, present) in [
            ("dense", !self.dense.is_empty()),
            ("matryoshka", self.matryoshka.is_some()),
            ("outputs", !self.outputs.is_empty()),
            ("output_heads", self.output_heads.is_some()),
            ("late_interaction", self.late_interaction.is_some()),
        ] {
            if present {
                return Err(invalid(
                    field,
                    "an image-text model's vectors are its towers' projections: remove it",
                ));
            }
        }
        validate_image(image)
    }
}

/// An image section's sizes within [`MAX_IMAGE_SIDE`], its numbers finite, its deviations
/// positive, and a tensor of one size whatever the picture (a crop, or an exact size).
fn validate_image(image: &Preprocess) -> Result<(), ManifestError> {
    let side = |field: &str, n: u32| match (1..=MAX_IMAGE_SIDE).contains(&n) {
        true => Ok(()),
        false => Err(invalid(
            field,
            format!("{n} pixels; a side must be 1 to {MAX_IMAGE_SIDE}"),
        )),
    };
    match image.size {
        Some(Size::ShortestEdge { shortest_edge }) => side("image.size", shortest_edge)?,
        Some(Size::Exact { height, width }) => {
            side("image.size", height)?;
            side("image.size", width)?;
        }
        None => {}
    }
    if let Some([height, width]) = image.crop {
        side("image.crop", height)?;
        side("image.crop", width)?;
    }
    if image.crop.is_none() && !matches!(image.size, Some(Size::Exact { .. })) {
        return Err(invalid(
            "image",
            "a tower takes a picture of one size: the section needs a crop, or a size of height and width",
        ));
    }
    if !(image.rescale.is_finite() && image.rescale > 0.0) {
        return Err(invalid(
            "image.rescale",
            format!("{} is not a positive number", image.rescale),
        ));
    }
    if image.mean.iter().any(|m| !m.is_finite()) {
        return Err(invalid(
            "image.mean",
            format!("{:?} has a value that is not a number", image.mean),
        ));
    }
    if image.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(invalid(
            "image.std",
            format!("{:?}: every channel's must be a positive number", image.std),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Manifest;

    const HASH: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";

    /// A CLIP ViT-B/32 package's manifest, as `caxton pack` writes one.
    fn clip() -> String {
        format!(
            "format: 1\nid: clip-vit-base-patch32\nversion: \"1\"\narchitecture: clip\n\
             dimensions: 512\nmax_seq_length: 77\npooling: towers\nnormalize: true\n\
             kind: image_text\nimage:\n  size: {{shortest_edge: 224}}\n  crop: [224, 224]\n\
             \x20 resample: bicubic\n  rescale: 0.003921569\n\
             \x20 mean: [0.48145466, 0.4578275, 0.40821073]\n\
             \x20 std: [0.26862954, 0.26130258, 0.27577711]\nfiles:\n\
             - {{path: model.safetensors, size: 10, sha256: \"{HASH}\"}}\n\
             - {{path: tokenizer.json, size: 10, sha256: \"{HASH}\"}}\n\
             - {{path: config.json, size: 10, sha256: \"{HASH}\"}}\n"
        )
    }

    fn err_of(yaml: &str) -> String {
        Manifest::parse(yaml.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn a_clip_manifest_parses_and_round_trips() {
        let m = Manifest::parse(clip().as_bytes()).expect("valid");
        let image = m.image.clone().expect("image section");
        assert_eq!(image.crop, Some([224, 224]));
        assert_eq!(Manifest::parse(m.to_yaml().as_bytes()).expect("again"), m);
    }

    #[test]
    fn kind_architecture_pooling_and_image_go_together() {
        assert_eq!(
            err_of(&clip().replace("architecture: clip", "architecture: bert")),
            "kind: kind image_text needs a two-tower architecture (clip or siglip), not bert"
        );
        assert_eq!(
            err_of(&clip().replace("kind: image_text\n", "")),
            "kind: architecture clip is a two-tower image and text model: kind must be image_text"
        );
        assert_eq!(
            err_of(&clip().replace("pooling: towers", "pooling: cls")),
            "pooling: an image-text model's towers pool as the model does: pooling must be towers, not cls"
        );
        let no_image = clip();
        let start = no_image.find("image:\n").expect("section");
        let end = no_image.find("files:").expect("files");
        let no_image = format!("{}{}", &no_image[..start], &no_image[end..]);
        assert_eq!(
            err_of(&no_image),
            "image: an image-text model must say how its pictures are prepared (size, crop, resample, rescale, mean, std)"
        );
        assert_eq!(
            err_of(&clip().replace(
                "kind: image_text\n",
                "matryoshka: {dimensions: [256]}\nkind: image_text\n"
            )),
            "matryoshka: an image-text model's vectors are its towers' projections: remove it"
        );
    }

    #[test]
    fn an_image_section_is_refused_by_its_field() {
        assert_eq!(
            err_of(&clip().replace("crop: [224, 224]", "crop: [224, 0]")),
            "image.crop: 0 pixels; a side must be 1 to 4096"
        );
        assert_eq!(
            err_of(&clip().replace("  crop: [224, 224]\n", "")),
            "image: a tower takes a picture of one size: the section needs a crop, or a size of height and width"
        );
        assert_eq!(
            err_of(&clip().replace("std: [0.26862954,", "std: [0.0,")),
            "image.std: [0.0, 0.2613026, 0.2757771]: every channel's must be a positive number"
        );
        assert_eq!(
            err_of(&clip().replace("rescale: 0.003921569", "rescale: -1")),
            "image.rescale: -1 is not a positive number"
        );
    }
}
