//! A transformers `CLIPModel` or `SiglipModel` folder (`config.json` with `text_config` and
//! `vision_config`, `preprocessor_config.json`, `tokenizer.json`): both towers in one package,
//! its pictures' preparation as the saved processor says.

use std::path::Path;

use super::{Inferred, Length, read_json, unusable};
use crate::images::Preprocess;
use crate::package::error::PackageError;
use crate::package::manifest::{Architecture, ModelKind, Pooling};
use crate::package::towers_config::TowersConfig;

/// What the folder of a CLIP or SigLIP model implies.
pub(super) fn infer(dir: &Path, architecture: Architecture) -> Result<Inferred, PackageError> {
    let config: TowersConfig = read_json(&dir.join("config.json"))?;
    let name = architecture.as_str();
    let (Some(_), Some(_)) = (&config.text_config, &config.vision_config) else {
        return Err(unusable(format!(
            "config.json: a {name} model's config needs both text_config and vision_config (a CLIPModel or SiglipModel folder, not one tower's)"
        )));
    };
    let (dimensions, positions) = (config.width(architecture), config.text_length(architecture));
    let processor = dir.join("preprocessor_config.json");
    if !processor.exists() {
        return Err(unusable(format!(
            "{}: missing; an image-text model's folder must carry its saved image processor",
            processor.display()
        )));
    }
    let image = Preprocess::from_processor_config(&read_json(&processor)?)
        .map_err(|e| unusable(format!("{}: {e}", processor.display())))?;
    let length = Length::within(
        positions,
        "config.json: text_config.max_position_embeddings",
    );
    Ok(Inferred {
        // Like sentence-transformers' CLIP module, vectors of unit length: what a search
        // compares.
        normalize: true,
        image: Some(image),
        ..Inferred::new(
            architecture,
            ModelKind::ImageText,
            Pooling::Towers,
            dimensions,
            length,
        )
    })
}
