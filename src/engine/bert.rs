//! The BERT encoder on candle (CPU): weights in, padded batches of token ids in, token vectors
//! out. Knows nothing about requests, pooling or threads.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use super::tokenize::Encoded;
use crate::package::Manifest;

/// A loaded BERT-family encoder.
pub struct BertEncoder {
    model: BertModel,
    device: Device,
    hidden: usize,
}

/// Token vectors of one forward pass: `texts` rows of `seq` tokens of `hidden` floats.
pub struct Hidden {
    /// Row-major `[texts, seq, hidden]`.
    pub data: Vec<f32>,
    /// Padded sequence length of the pass.
    pub seq: usize,
}

impl BertEncoder {
    /// Builds the model from `config.json` and safetensors bytes (already verified) of the
    /// manifest's architecture (BERT, or a relative mapped onto BERT by [`super::convert`]).
    /// Weights stored as f16 are widened to f32: the engine computes in f32.
    pub fn load(config_json: &[u8], weights: Vec<u8>, manifest: &Manifest) -> Result<Self, String> {
        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load_buffer(&weights, &device)
            .map_err(|e| format!("model.safetensors: {e}"))?;
        drop(weights);
        let (config, tensors) =
            super::convert::to_bert(manifest.architecture, config_json, tensors)?;
        check_config(&config, manifest)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(|e| format!("model.safetensors: {e}"))?;
        Ok(BertEncoder {
            model,
            device,
            hidden: config.hidden_size,
        })
    }

    /// Width of the token vectors.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Runs one forward pass over `texts`, padded to the longest of them with an attention
    /// mask so padding never influences real tokens.
    pub fn forward(&self, texts: &[&Encoded]) -> Result<Hidden, String> {
        let seq = texts.iter().map(|t| t.len()).max().unwrap_or(0);
        let n = texts.len();
        let mut ids = vec![0u32; n * seq];
        let mut type_ids = vec![0u32; n * seq];
        let mut mask = vec![0u32; n * seq];
        for (row, t) in texts.iter().enumerate() {
            let base = row * seq;
            ids[base..base + t.len()].copy_from_slice(&t.ids);
            type_ids[base..base + t.len()].copy_from_slice(&t.type_ids);
            mask[base..base + t.len()].fill(1);
        }
        let run = || -> candle_core::Result<Vec<f32>> {
            let ids = Tensor::from_vec(ids, (n, seq), &self.device)?;
            let type_ids = Tensor::from_vec(type_ids, (n, seq), &self.device)?;
            let mask = Tensor::from_vec(mask, (n, seq), &self.device)?;
            let out = self.model.forward(&ids, &type_ids, Some(&mask))?;
            out.flatten_all()?.to_vec1::<f32>()
        };
        let data = run().map_err(|e| format!("forward pass failed: {e}"))?;
        Ok(Hidden { data, seq })
    }
}

/// Refuses a `config.json` that disagrees with the manifest, before any weight is touched.
fn check_config(config: &Config, manifest: &Manifest) -> Result<(), String> {
    if config.hidden_size != manifest.dimensions {
        return Err(format!(
            "config.json hidden_size {} differs from the manifest's dimensions {}",
            config.hidden_size, manifest.dimensions
        ));
    }
    if manifest.max_seq_length > config.max_position_embeddings {
        return Err(format!(
            "the manifest's max_seq_length {} exceeds config.json max_position_embeddings {}",
            manifest.max_seq_length, config.max_position_embeddings
        ));
    }
    Ok(())
}
