//! Models Caxton knows by id: their architecture, width and, where the release is known, the
//! sha256 of the original `model.safetensors`. `caxton pack` warns when a folder claiming one
//! of these ids differs, so a mislabelled or altered model does not pass as the real one.

use super::manifest::Architecture;

/// One known release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// Model id (the sentence-transformers name).
    pub id: &'static str,
    /// Its architecture.
    pub architecture: Architecture,
    /// Its vector length.
    pub dimensions: usize,
    /// sha256 of the official f32 `model.safetensors`, where known.
    pub weights_sha256: Option<&'static str>,
}

/// The catalogue (see docs/model-sources.md for where each can be had offline).
pub const KNOWN: &[Known] = &[
    Known {
        id: "all-MiniLM-L6-v2",
        architecture: Architecture::Bert,
        dimensions: 384,
        weights_sha256: Some("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    },
    Known {
        id: "all-mpnet-base-v2",
        architecture: Architecture::Mpnet,
        dimensions: 768,
        weights_sha256: Some("78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
    },
    Known {
        id: "multilingual-e5-small",
        architecture: Architecture::Bert,
        dimensions: 384,
        weights_sha256: None,
    },
    Known {
        id: "msmarco-distilbert-base-v4",
        architecture: Architecture::DistilBert,
        dimensions: 768,
        weights_sha256: None,
    },
    Known {
        id: "paraphrase-multilingual-mpnet-base-v2",
        architecture: Architecture::XlmRoberta,
        dimensions: 768,
        weights_sha256: None,
    },
    Known {
        id: "bge-small-en-v1.5",
        architecture: Architecture::Bert,
        dimensions: 384,
        weights_sha256: None,
    },
    Known {
        id: "e5-small-v2",
        architecture: Architecture::Bert,
        dimensions: 384,
        weights_sha256: None,
    },
];

/// What is off about a folder packed as `id`: one line per difference from the known release
/// (none when the id is not known or everything matches).
pub fn differences(
    id: &str,
    architecture: Architecture,
    dimensions: usize,
    weights_sha256: &str,
) -> Vec<String> {
    let Some(k) = KNOWN.iter().find(|k| k.id == id) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if k.architecture != architecture {
        out.push(format!(
            "{id} is a {} model, but this folder is {}",
            k.architecture.as_str(),
            architecture.as_str()
        ));
    }
    if k.dimensions != dimensions {
        out.push(format!(
            "{id} has {} dimensions, but this folder has {dimensions}",
            k.dimensions
        ));
    }
    if let Some(want) = k.weights_sha256
        && want != weights_sha256
    {
        out.push(format!(
            "model.safetensors (sha256 {weights_sha256}) is not the known {id} release (sha256 {want}); fine-tuned or altered weights should get an id of their own"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_release_passes_and_differences_are_named() {
        let minilm = KNOWN[0].weights_sha256.expect("known");
        assert!(differences("all-MiniLM-L6-v2", Architecture::Bert, 384, minilm).is_empty());
        assert!(differences("my-own-model", Architecture::Mpnet, 7, "x").is_empty());
        assert_eq!(
            differences("all-MiniLM-L6-v2", Architecture::DistilBert, 768, "abc"),
            [
                "all-MiniLM-L6-v2 is a bert model, but this folder is distilbert".to_string(),
                "all-MiniLM-L6-v2 has 384 dimensions, but this folder has 768".to_string(),
                format!(
                    "model.safetensors (sha256 abc) is not the known all-MiniLM-L6-v2 release (sha256 {minilm}); fine-tuned or altered weights should get an id of their own"
                ),
            ]
        );
    }
}
