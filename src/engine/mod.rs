//! The embedding engine: tokenizer, model, pooling and the batching worker thread, assembled
//! from a verified stored package into a [`LoadedModel`].

pub mod batch;
pub mod bert;
pub mod pool;
pub mod tokenize;
pub mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::package::{Architecture, PackageError, StoredPackage};
pub use batch::BatchLimits;
pub use tokenize::{Encoded, TextTokenizer};

/// Why the engine could not produce vectors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The queue is full; the client should retry shortly.
    #[error("the model's queue is full")]
    Busy,
    /// The model was unloaded while the job waited.
    #[error("the model was unloaded")]
    Stopped,
    /// The forward pass failed.
    #[error("{0}")]
    Failed(String),
}

/// How a model's engine thread batches and queues.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Forward-pass limits at start (live changes go through the shared lock given to `load`).
    pub batch: BatchLimits,
    /// Jobs that may wait before new ones are refused as busy.
    pub queue: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            batch: BatchLimits::default(),
            queue: 1024,
        }
    }
}

/// A model in memory, ready to embed.
pub struct LoadedModel {
    /// The package it came from.
    pub package: StoredPackage,
    /// Its tokenizer, shared with request handlers (tokenization happens off the engine thread).
    pub tokenizer: Arc<TextTokenizer>,
    /// How long verification-on-read plus construction took.
    pub load_time: Duration,
    /// Bytes the weights occupy in memory (f32).
    pub weight_bytes: u64,
    worker: worker::Worker,
}

impl LoadedModel {
    /// Loads `package` (reading each file through the store's hash check) and starts its
    /// engine thread. Blocking: call from a blocking context. `limits` is shared with the
    /// registry so a reload changes the limits of running engines.
    pub fn load(
        package: &StoredPackage,
        options: EngineOptions,
        limits: Arc<std::sync::RwLock<BatchLimits>>,
    ) -> Result<LoadedModel, PackageError> {
        let started = Instant::now();
        let m = &package.manifest;
        let tokenizer =
            TextTokenizer::from_bytes(&package.read_verified("tokenizer.json")?, m.max_seq_length)
                .map_err(PackageError::Unusable)?;
        let config = package.read_verified("config.json")?;
        let weights = package.read_verified("model.safetensors")?;
        let weight_bytes = f32_weight_bytes(&weights);
        let encoder = match m.architecture {
            Architecture::Bert => {
                bert::BertEncoder::load(&config, weights, m).map_err(PackageError::Unusable)?
            }
        };
        let worker = worker::Worker::spawn(&m.id, encoder, m.pooling, limits, options.queue)
            .map_err(|e| PackageError::Unusable(format!("cannot start the engine thread: {e}")))?;
        Ok(LoadedModel {
            package: package.clone(),
            tokenizer: Arc::new(tokenizer),
            load_time: started.elapsed(),
            weight_bytes,
            worker,
        })
    }

    /// The model id.
    pub fn id(&self) -> &str {
        &self.package.manifest.id
    }

    /// Embeds tokenized texts; resolves when the engine thread has answered.
    pub async fn embed(
        &self,
        texts: Vec<Encoded>,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.worker.submit(worker::Job {
            texts,
            normalize,
            reply,
        })?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }
}

/// Bytes the tensors of a safetensors file take once widened to f32.
fn f32_weight_bytes(safetensors: &[u8]) -> u64 {
    safetensors::SafeTensors::deserialize(safetensors)
        .map(|st| {
            st.tensors()
                .iter()
                .map(|(_, v)| v.shape().iter().product::<usize>() as u64 * 4)
                .sum()
        })
        .unwrap_or(safetensors.len() as u64)
}
