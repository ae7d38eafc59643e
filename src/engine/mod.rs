//! The embedding engine: tokenizer, model, pooling and the batching worker thread, assembled
//! from a verified stored package into a [`LoadedModel`].

pub mod awake;
pub mod batch;
pub mod blueprint;
pub mod calibration;
pub mod checkpoint;
mod checks;
pub mod encoder;
mod footprint;
pub mod head;
pub mod kernels;
pub mod late_interaction;
pub mod outputs;
pub mod pool;
pub mod sparse;
pub mod stored;
pub mod tokenize;
pub mod vectors;
pub mod vision;
mod words;
pub mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::memory::mapped::Mapped;
use crate::package::{ModelKind, PackageError, StoredPackage};
pub use batch::BatchLimits;
pub use checks::PASS_LIMIT;
pub use footprint::{estimate_bytes, longest_pass_bytes};
pub use tokenize::{Cut, Encoded, TextTokenizer, Token};
pub use vectors::VectorShape;

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

pub use crate::config::Precision;

impl Precision {
    /// What a model configured for `self` runs in on this machine, with the reason when that
    /// differs (bf16 without AMX runs f32: AVX-512's own bf16 dot product measured slower here
    /// than its f32 FMAs, and without it there is nothing to gain).
    pub fn on_this_machine(self) -> (Precision, Option<String>) {
        match self {
            Precision::F32 => (Precision::F32, None),
            Precision::Int8 => (Precision::Int8, None),
            Precision::Int8Fast => (Precision::Int8Fast, None),
            Precision::Bf16 => match bf16_support() {
                Ok(()) => (Precision::Bf16, None),
                Err(reason) => (Precision::F32, Some(reason)),
            },
        }
    }
}

fn bf16_support() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    return kernels::amx::available();
    #[cfg(not(target_arch = "x86_64"))]
    Err(format!(
        "bf16 runs on Intel AMX, and this is an {} CPU",
        std::env::consts::ARCH
    ))
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

/// What a two-tower model's requests need beside its engine thread: how a picture becomes
/// the image tower's tensor (run by the caller, off the engine thread) and how a text is
/// scored against a picture.
pub struct Vision {
    /// The manifest's image section.
    pub preprocess: crate::images::Preprocess,
    /// The model's logit and score.
    pub scorer: vision::Scorer,
    /// The rows a picture takes in the image tower's pass (its tokens).
    pub image_tokens: usize,
}

/// What a load built, ready for its engine thread ([`LoadedModel::start`]).
struct Built {
    engine: worker::Engine,
    tokenizer: TextTokenizer,
    weight_bytes: u64,
    /// What the model runs in, and why that is not the configured precision.
    precision: (Precision, Option<String>),
    query_weights: Option<Mapped<f32>>,
    late: Option<Arc<late_interaction::LateTokenizers>>,
    vision: Option<Arc<Vision>>,
}

/// A model in memory, ready to embed.
pub struct LoadedModel {
    /// The package it came from.
    pub package: StoredPackage,
    /// Its tokenizer, shared with request handlers (tokenization happens off the engine thread).
    pub tokenizer: Arc<TextTokenizer>,
    /// How long verification-on-read plus construction took.
    pub load_time: Duration,
    /// Bytes the weights occupy in memory.
    pub weight_bytes: u64,
    /// What its linear layers compute in.
    pub precision: Precision,
    /// Why that is not the configured precision, when it is not.
    pub precision_fallback: Option<String>,
    /// The kernels its linear layers run on ([`kernels::kernel_name`]).
    pub kernel: &'static str,
    /// An inference-free sparse model's query side: one weight per vocabulary term, which a
    /// query's tokens look up (no pass).
    pub query_weights: Option<Mapped<f32>>,
    /// A multi-vector model's query and document tokenizers.
    pub late: Option<Arc<late_interaction::LateTokenizers>>,
    /// A two-tower model's picture preparation and scoring.
    pub vision: Option<Arc<Vision>>,
    worker: worker::Worker,
    freed: tokio::sync::watch::Receiver<bool>,
}

impl LoadedModel {
    /// Loads `package` (reading each file through the store's hash check) and starts its
    /// engine thread. Blocking: call from a blocking context. `limits` is shared with the
    /// registry so a reload changes the limits of running engines. `precision` is the
    /// configured one; the model gets what this machine runs of it.
    pub fn load(
        package: &StoredPackage,
        options: EngineOptions,
        limits: Arc<std::sync::RwLock<BatchLimits>>,
        precision: Precision,
    ) -> Result<LoadedModel, PackageError> {
        let started = Instant::now();
        let m = &package.manifest;
        let tokenizer_json = package.read_verified("tokenizer.json")?;
        let mut tokenizer = TextTokenizer::from_bytes(&tokenizer_json, m.max_seq_length)
            .map_err(PackageError::Unusable)?;
        let late = match &m.late_interaction {
            Some(li) => Some(Arc::new(
                late_interaction::LateTokenizers::new(&tokenizer_json, li)
                    .map_err(PackageError::Unusable)?,
            )),
            None => None,
        };
        if let Some(template) = &m.pair_template {
            tokenizer = tokenizer
                .with_pair_template(template)
                .map_err(PackageError::Unusable)?;
        }
        let config = package.read_verified("config.json")?;
        let weights = package.read_verified_with("model.safetensors", |r, len| {
            stored::read(r, len, "model.safetensors")
        })?;
        if m.kind == ModelKind::ImageText {
            return Self::load_towers(
                package, options, limits, precision, tokenizer, &config, weights, started,
            );
        }
        let (precision, precision_fallback) = precision.on_this_machine();
        let calibration = match precision {
            Precision::Int8Fast => {
                calibration::encode(&tokenizer, m.kind).map_err(PackageError::Unusable)?
            }
            _ => Vec::new(),
        };
        let encoder = encoder::Encoder::load(&config, weights, m, precision, &calibration)
            .map_err(PackageError::Unusable)?;
        let finish = vectors::Finish::new(m, |path| {
            package.read_verified(path).map_err(|e| e.to_string())
        })
        .map_err(PackageError::Unusable)?;
        let heads = outputs::Heads::new(m, |path| {
            package.read_verified(path).map_err(|e| e.to_string())
        })
        .map_err(PackageError::Unusable)?;
        let query_weights = match &m.query_weights {
            Some(path) => {
                let bytes = package.read_verified(path)?;
                let mut t = stored::read(&mut &bytes[..], bytes.len() as u64, path)
                    .map_err(PackageError::Unusable)?;
                Some(
                    stored::take_f32(&mut t, "weight", &[m.dimensions], path)
                        .map_err(PackageError::Unusable)?
                        .into(),
                )
            }
            None => None,
        };
        let weight_bytes = encoder.weight_bytes()
            + finish.bytes() as u64
            + heads.bytes() as u64
            + query_weights
                .as_ref()
                .map_or(0, |w: &Mapped<f32>| w.bytes() as u64);
        let engine = worker::Engine::Text(Box::new(worker::Pipeline {
            encoder,
            pooling: m.pooling,
            finish,
            heads,
        }));
        let built = Built {
            engine,
            tokenizer,
            weight_bytes,
            precision: (precision, precision_fallback),
            query_weights,
            late,
            vision: None,
        };
        Self::start(package, options, limits, built, started)
    }

    /// [`LoadedModel::load`] of a two-tower model: both towers from the one checkpoint, the
    /// text tokenizer padding as the model's does, one engine thread.
    #[allow(clippy::too_many_arguments)]
    fn load_towers(
        package: &StoredPackage,
        options: EngineOptions,
        limits: Arc<std::sync::RwLock<BatchLimits>>,
        configured: Precision,
        tokenizer: TextTokenizer,
        config: &[u8],
        weights: checkpoint::Tensors,
        started: Instant,
    ) -> Result<LoadedModel, PackageError> {
        let m = &package.manifest;
        let (precision, precision_fallback) = configured.on_this_machine();
        let preprocess = m.image.clone().ok_or_else(|| {
            PackageError::Unusable(
                "the manifest of an image-text model has no image section".into(),
            )
        })?;
        // SigLIP's texts are padded to its length, the calibration texts as every other.
        let tokenizer = match vision::text::padding(config).map_err(PackageError::Unusable)? {
            Some(id) => tokenizer.with_padding(id),
            None => tokenizer,
        };
        let texts = match precision {
            Precision::Int8Fast => {
                calibration::encode(&tokenizer, m.kind).map_err(PackageError::Unusable)?
            }
            _ => Vec::new(),
        };
        let (towers, scorer) =
            vision::Towers::load(config, weights, precision, &preprocess, &texts)
                .map_err(PackageError::Unusable)?;
        if towers.dimensions() != m.dimensions {
            return Err(PackageError::Unusable(format!(
                "the manifest's dimensions are {}, and the towers' vectors {} wide",
                m.dimensions,
                towers.dimensions()
            )));
        }
        let finish = vectors::Finish::new(m, |path| {
            package.read_verified(path).map_err(|e| e.to_string())
        })
        .map_err(PackageError::Unusable)?;
        let weight_bytes = towers.weight_bytes();
        let image_tokens = towers.image_tokens();
        let built = Built {
            engine: worker::Engine::Towers(Box::new(worker::TowersPipeline { towers, finish })),
            tokenizer,
            weight_bytes,
            precision: (precision, precision_fallback),
            query_weights: None,
            late: None,
            vision: Some(Arc::new(Vision {
                preprocess,
                scorer,
                image_tokens,
            })),
        };
        Self::start(package, options, limits, built, started)
    }

    /// Starts the engine thread of what a load `built` of `package`, then the self-test.
    fn start(
        package: &StoredPackage,
        options: EngineOptions,
        limits: Arc<std::sync::RwLock<BatchLimits>>,
        built: Built,
        started: Instant,
    ) -> Result<LoadedModel, PackageError> {
        let (worker, freed) =
            worker::Worker::spawn(&package.manifest.id, built.engine, limits, options.queue)
                .map_err(|e| {
                    PackageError::Unusable(format!("cannot start the engine thread: {e}"))
                })?;
        let (precision, precision_fallback) = built.precision;
        let model = LoadedModel {
            package: package.clone(),
            tokenizer: Arc::new(built.tokenizer),
            load_time: Duration::ZERO,
            weight_bytes: built.weight_bytes,
            precision,
            precision_fallback,
            kernel: kernels::kernel_name(precision),
            query_weights: built.query_weights,
            late: built.late,
            vision: built.vision,
            worker,
            freed,
        };
        model.checked(started)
    }

    /// Turns `true` once the engine thread has stopped and the model's memory is freed
    /// (after the last handle to the model is dropped and in-flight jobs are answered).
    pub fn freed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.freed.clone()
    }

    /// Whether the engine thread answers: an empty job makes the round trip within `timeout`;
    /// or, queued behind work, the thread finished a forward pass within `timeout`, or is in
    /// one that has run less than [`PASS_LIMIT`] (a pass is bounded by
    /// `limits.max_batch_tokens`; slow CPUs take tens of seconds for a full one).
    pub async fn alive(&self, timeout: Duration) -> Result<(), String> {
        let answered =
            tokio::time::timeout(timeout, self.embed(Vec::new(), VectorShape::default()))
                .await
                .ok()
                .map(|r| r.map(|_| ()));
        checks::judge_liveness(self.id(), answered, self.worker.activity(), timeout)
    }

    /// The model id.
    pub fn id(&self) -> &str {
        &self.package.manifest.id
    }

    /// Embeds tokenized texts, their vectors as `shape` asks; resolves when the engine
    /// thread has answered.
    pub async fn embed(
        &self,
        texts: Vec<Encoded>,
        shape: VectorShape,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        self.embed_output(texts, shape, outputs::Output::Main).await
    }

    /// The `output` of tokenized texts (a term weight per token, a vector per token, or the
    /// model's own), as [`LoadedModel::embed`].
    pub async fn embed_output(
        &self,
        texts: Vec<Encoded>,
        shape: VectorShape,
        output: outputs::Output,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.worker.submit(worker::Job {
            texts,
            images: Vec::new(),
            shape,
            output,
            reply,
        })?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// A two-tower model's vectors of pictures, each as its model's processor made it
    /// ([`Vision::preprocess`]), as `shape` asks; resolves when the engine thread has answered.
    pub async fn embed_images(
        &self,
        images: Vec<Vec<f32>>,
        shape: VectorShape,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.worker.submit(worker::Job {
            texts: Vec::new(),
            images,
            shape,
            output: outputs::Output::Main,
            reply,
        })?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// A reranker's logits for tokenized query–document pairs
    /// ([`TextTokenizer::encode_pair`]), one list of `labels` values per pair, before the
    /// manifest's activation.
    pub async fn score(&self, pairs: Vec<Encoded>) -> Result<Vec<Vec<f32>>, EngineError> {
        self.embed(pairs, VectorShape::default()).await
    }
}
