//! The forward pass of whichever architecture a package declares, behind one type the engine
//! thread drives.

use super::bert::{BertEncoder, Hidden};
use super::mpnet::MpnetEncoder;
use super::tokenize::Encoded;
use crate::package::{Architecture, Manifest};

/// A loaded encoder of any supported architecture.
pub enum Encoder {
    /// BERT and its relatives mapped onto it (DistilBERT, XLM-RoBERTa).
    Bert(BertEncoder),
    /// MPNet, with its relative position bias.
    Mpnet(MpnetEncoder),
}

impl Encoder {
    /// Builds the manifest's architecture from `config.json` and verified weights.
    pub fn load(config_json: &[u8], weights: Vec<u8>, manifest: &Manifest) -> Result<Self, String> {
        Ok(match manifest.architecture {
            Architecture::Mpnet => {
                Encoder::Mpnet(MpnetEncoder::load(config_json, weights, manifest)?)
            }
            Architecture::Bert | Architecture::DistilBert | Architecture::XlmRoberta => {
                Encoder::Bert(BertEncoder::load(config_json, weights, manifest)?)
            }
        })
    }

    /// Width of the token vectors.
    pub fn hidden_size(&self) -> usize {
        match self {
            Encoder::Bert(e) => e.hidden_size(),
            Encoder::Mpnet(e) => e.hidden_size(),
        }
    }

    /// Frees the buffers a forward pass keeps for the next (called when the engine is idle).
    pub fn release_workspace(&self) {
        match self {
            Encoder::Bert(e) => e.release_workspace(),
            Encoder::Mpnet(_) => {}
        }
    }

    /// One forward pass over `texts`.
    pub fn forward(&self, texts: &[&Encoded]) -> Result<Hidden, String> {
        match self {
            Encoder::Bert(e) => e.forward(texts),
            Encoder::Mpnet(e) => e.forward(texts),
        }
    }
}
