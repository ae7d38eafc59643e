//! What a two-tower model's `config.json` (transformers' `CLIPModel`, `SiglipModel`) says that
//! its manifest records: the width both towers' vectors share and the text tower's length,
//! with transformers' defaults. `caxton pack` writes the manifest from it and the verifier
//! holds the manifest to it.

use serde::Deserialize;

use super::manifest::Architecture;

/// The parts of a two-tower `config.json` the manifest depends on.
#[derive(Debug, Deserialize)]
pub struct TowersConfig {
    /// CLIP's shared width (default 512).
    projection_dim: Option<usize>,
    /// The text tower's config.
    pub text_config: Option<TextConfig>,
    /// The image tower's config (only its presence is read here).
    pub vision_config: Option<serde_json::Value>,
}

/// A two-tower text tower's sizes.
#[derive(Debug, Default, Deserialize)]
pub struct TextConfig {
    hidden_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    /// SigLIP's head width, when not its hidden size.
    projection_size: Option<usize>,
}

impl TowersConfig {
    /// Parses `config.json`'s bytes.
    pub fn parse(bytes: &[u8]) -> Result<TowersConfig, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("config.json: {e}"))
    }

    /// The width of both towers' vectors: CLIP's `projection_dim`, SigLIP's text head's.
    pub fn width(&self, architecture: Architecture) -> usize {
        let text = self.text_config.as_ref();
        match architecture {
            Architecture::Clip => self.projection_dim.unwrap_or(512),
            _ => text
                .and_then(|t| t.projection_size.or(t.hidden_size))
                .unwrap_or(768),
        }
    }

    /// The most tokens a text takes: the text tower's positions (CLIP 77, SigLIP 64).
    pub fn text_length(&self, architecture: Architecture) -> usize {
        let positions = self
            .text_config
            .as_ref()
            .and_then(|t| t.max_position_embeddings);
        match architecture {
            Architecture::Clip => positions.unwrap_or(77),
            _ => positions.unwrap_or(64),
        }
    }
}
