//! The embedding engine: tokenizer, model, pooling and the batching worker thread, assembled
//! from a verified stored package into a [`LoadedModel`].

pub mod awake;
pub mod batch;
pub mod blueprint;
pub mod calibration;
pub mod checkpoint;
pub mod encoder;
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

    /// The model once its self-test passed, with its load time from `started`.
    fn checked(self, started: Instant) -> Result<LoadedModel, PackageError> {
        self.self_test().map_err(PackageError::SelfTest)?;
        Ok(LoadedModel {
            load_time: started.elapsed(),
            ..self
        })
    }

    /// Embeds one short text through the engine thread and checks the vector is one the
    /// model may serve: weights that load but compute garbage are found here, not by a
    /// client. Blocking.
    fn self_test(&self) -> Result<(), String> {
        let m = &self.package.manifest;
        let (text, width, normalize) = match m.kind {
            ModelKind::Embedding | ModelKind::Sparse | ModelKind::MultiVector => (
                self.tokenizer.encode(SELF_TEST_TEXT),
                m.dimensions,
                m.normalize,
            ),
            ModelKind::Reranker => (
                self.tokenizer
                    .encode_pair(SELF_TEST_TEXT, SELF_TEST_TEXT, None, Cut::End),
                m.labels.unwrap_or(1),
                false,
            ),
            ModelKind::ImageText => {
                let vision = self.vision.as_ref().ok_or("no image preprocessing")?;
                let picture = vision.preprocess.apply(&self_test_picture());
                let vectors = self.run_job(Vec::new(), vec![picture], m.normalize)?;
                check_self_test(&vectors, m.dimensions, m.normalize)
                    .map_err(|e| format!("the image tower: {e}"))?;
                (
                    self.tokenizer.encode(SELF_TEST_TEXT),
                    m.dimensions,
                    m.normalize,
                )
            }
        };
        let text =
            text.map_err(|e| format!("the tokenizer cannot encode {SELF_TEST_TEXT:?}: {e}"))?;
        let vectors = self
            .run_job(vec![text], Vec::new(), normalize)
            .map_err(|e| format!("running {SELF_TEST_TEXT:?} failed: {e}"))?;
        if m.kind == ModelKind::MultiVector {
            // One vector per token, each checked as a text's would be.
            let [v] = &vectors[..] else {
                return Err(format!("{} answers for one text", vectors.len()));
            };
            return v
                .chunks(width.max(1))
                .try_for_each(|row| check_self_test(&[row.to_vec()], width, normalize));
        }
        check_self_test(&vectors, width, normalize)
    }

    /// One job of `texts` or `pictures` through the engine thread, waited for. Blocking.
    fn run_job(
        &self,
        texts: Vec<Encoded>,
        images: Vec<Vec<f32>>,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>, String> {
        let (reply, rx) = oneshot::channel();
        self.worker
            .submit(worker::Job {
                texts,
                images,
                shape: VectorShape {
                    normalize,
                    width: None,
                },
                output: outputs::Output::Main,
                reply,
            })
            .map_err(|e| format!("the engine thread took no job: {e}"))?;
        rx.blocking_recv()
            .map_err(|_| "the engine thread stopped".to_string())?
            .map_err(|e| e.to_string())
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
        judge_liveness(self.id(), answered, self.worker.activity(), timeout)
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

/// The text embedded at every load.
const SELF_TEST_TEXT: &str = "Caxton checks this model before it serves.";

/// The picture a two-tower model's image tower sees at every load: gradients and a
/// checkerboard, so a tower that computes garbage on real structure shows it.
fn self_test_picture() -> image::RgbImage {
    image::RgbImage::from_fn(96, 64, |x, y| {
        let check = if (x / 8 + y / 8) % 2 == 0 { 200 } else { 40 };
        image::Rgb([(x * 255 / 95) as u8, (y * 255 / 63) as u8, check])
    })
}

/// Whether `vectors`, the self-test's answer, is one finite vector of `dimensions` values (a
/// reranker: its labels' logits), of unit length when `normalize`.
fn check_self_test(vectors: &[Vec<f32>], dimensions: usize, normalize: bool) -> Result<(), String> {
    let [v] = vectors else {
        return Err(format!("{} vectors for one text", vectors.len()));
    };
    if v.len() != dimensions {
        return Err(format!(
            "the vector has {} values, the manifest's dimensions say {dimensions}",
            v.len()
        ));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(format!(
            "value {i} of the vector is {} (the weights compute non-finite numbers)",
            v[i]
        ));
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if normalize && (norm - 1.0).abs() > 1e-3 {
        return Err(format!(
            "the vector's length is {norm}, not 1 as the manifest's normalize: true needs"
        ));
    }
    if norm == 0.0 {
        return Err("the vector is all zeros".into());
    }
    Ok(())
}

/// The watchdog's verdict on one engine: `answered` is the empty job's outcome (`None`: no
/// answer within `timeout`).
fn judge_liveness(
    id: &str,
    answered: Option<Result<(), EngineError>>,
    activity: worker::Activity,
    timeout: Duration,
) -> Result<(), String> {
    use worker::Activity;
    match (answered, activity) {
        // Unloaded while the ping waited: gone, not wedged.
        (Some(Ok(())), _) | (Some(Err(EngineError::Stopped)), _) => Ok(()),
        (Some(Err(e)), _) if !matches!(e, EngineError::Busy) => {
            Err(format!("the engine of {id} failed a round trip: {e}"))
        }
        (_, Activity::Looping(since)) if since < timeout => Ok(()),
        (_, Activity::InPass(running)) if running < PASS_LIMIT => Ok(()),
        (_, Activity::InPass(running)) => Err(format!(
            "the engine of {id} has been in one forward pass for {running:?}"
        )),
        (_, Activity::Looping(since)) => Err(format!(
            "the engine of {id} did not answer within {timeout:?} and has shown no sign of life for {since:?}"
        )),
    }
}

/// A forward pass running longer than this is taken for a wedged engine by the watchdog.
pub const PASS_LIMIT: Duration = Duration::from_secs(120);

/// Memory not in the weights that a loaded model holds: the engine thread's stack, per-model
/// buffers and allocator slack (all-MiniLM-L6-v2 measures 98 MiB for 86.6 MiB of weights).
const ENGINE_OVERHEAD: u64 = 12 << 20;

/// Bytes `package` is expected to take once loaded in `precision`, before it ever was: the
/// weights widened to f32 (read from the safetensors headers alone; a third of that in int8,
/// whose scales and f32 parts add to the quarter), the tokenizer and a fixed overhead.
pub fn estimate_bytes(package: &StoredPackage, precision: Precision) -> u64 {
    let m = &package.manifest;
    let mut weights: u64 = m
        .files
        .iter()
        .filter(|f| f.path.ends_with(".safetensors"))
        .map(|f| safetensors_header_f32_bytes(&package.dir.join(&f.path)).unwrap_or(f.size * 2))
        .sum();
    if m.kind == ModelKind::Sparse {
        // The decoder is a second copy of the word table (vocabulary × hidden): tied to it in
        // the checkpoint, packed on its own for the head's products.
        let hidden = std::fs::read(package.dir.join("config.json"))
            .ok()
            .and_then(|c| checkpoint::blueprint(m.architecture, &c).ok())
            .map_or(0, |b| b.hidden);
        weights += (m.dimensions * hidden * 4) as u64;
    }
    if matches!(precision, Precision::Int8 | Precision::Int8Fast) {
        weights /= 3;
    }
    let tokenizer = m.file("tokenizer.json").map_or(0, |f| f.size);
    weights + tokenizer * 4 + ENGINE_OVERHEAD
}

/// Bytes a forward pass over `package`'s longest text holds beyond the weights
/// ([`encoder::activation_bytes`], from its `config.json`): room a load must leave free, since
/// serving one such text needs it (hundreds of MiB at 8,192 tokens). Not resident while idle,
/// so not counted as the loaded model's memory.
pub fn longest_pass_bytes(package: &StoredPackage) -> u64 {
    let m = &package.manifest;
    std::fs::read(package.dir.join("config.json"))
        .ok()
        .and_then(|c| checkpoint::blueprint(m.architecture, &c).ok())
        .map_or(0, |b| {
            let len = m.max_seq_length.min(b.max_positions());
            let head = match m.kind {
                ModelKind::Sparse => sparse::pass_bytes(b.hidden, m.dimensions, len, 1),
                _ => 0,
            };
            let text = encoder::activation_bytes(&b, len, len) + head as u64;
            text.max(picture_pass_bytes(package).unwrap_or(0))
        })
}

/// Bytes the image tower's pass over one picture holds (a two-tower model's; its patches
/// are its tokens), from `config.json`.
fn picture_pass_bytes(package: &StoredPackage) -> Option<u64> {
    let config = std::fs::read(package.dir.join("config.json")).ok()?;
    let (b, shape) = match package.manifest.architecture {
        crate::package::Architecture::Clip => checkpoint::clip::vision_blueprint(&config).ok()?,
        crate::package::Architecture::Siglip => {
            checkpoint::siglip::vision_blueprint(&config).ok()?
        }
        _ => return None,
    };
    let tokens = shape.grid() * shape.grid() + 1;
    Some(encoder::activation_bytes(&b, tokens, tokens))
}

/// f32 bytes of the tensors a safetensors file declares, from its JSON header only.
fn safetensors_header_f32_bytes(path: &std::path::Path) -> Option<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // safetensors itself caps headers at 100 MB.
    if len > 100_000_000 {
        return None;
    }
    let mut header = vec![0u8; usize::try_from(len).ok()?];
    f.read_exact(&mut header).ok()?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).ok()?;
    Some(
        header
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .filter_map(|(_, v)| v.get("shape")?.as_array().cloned())
            .map(|shape| shape.iter().filter_map(|d| d.as_u64()).product::<u64>() * 4)
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::worker::Activity;
    use super::*;

    const T: Duration = Duration::from_secs(7);

    #[test]
    fn a_long_forward_pass_is_alive_until_the_pass_limit() {
        let s = Duration::from_secs;
        assert_eq!(
            judge_liveness("m", Some(Ok(())), Activity::Looping(s(999)), T),
            Ok(())
        );
        // Queued behind a 60 s pass on a slow CPU: alive.
        assert_eq!(
            judge_liveness("m", None, Activity::InPass(s(60)), T),
            Ok(())
        );
        assert_eq!(
            judge_liveness(
                "m",
                Some(Err(EngineError::Busy)),
                Activity::Looping(s(2)),
                T
            ),
            Ok(())
        );
        assert_eq!(
            judge_liveness("m", None, Activity::InPass(s(121)), T),
            Err("the engine of m has been in one forward pass for 121s".into())
        );
        assert_eq!(
            judge_liveness("m", None, Activity::Looping(s(30)), T),
            Err(
                "the engine of m did not answer within 7s and has shown no sign of life for 30s"
                    .into()
            )
        );
        assert_eq!(
            judge_liveness(
                "m",
                Some(Err(EngineError::Stopped)),
                Activity::Looping(s(99)),
                T
            ),
            Ok(())
        );
        assert_eq!(
            judge_liveness(
                "m",
                Some(Err(EngineError::Failed("boom".into()))),
                Activity::Looping(s(0)),
                T
            ),
            Err("the engine of m failed a round trip: boom".into())
        );
    }

    #[test]
    fn the_self_test_refuses_every_kind_of_garbage_vector() {
        let unit = vec![0.6, 0.8, 0.0];
        assert_eq!(
            check_self_test(std::slice::from_ref(&unit), 3, true),
            Ok(())
        );
        assert_eq!(
            check_self_test(&[vec![3.0, 4.0, 0.0]], 3, false),
            Ok(()),
            "unnormalized models may have any length"
        );
        assert_eq!(
            check_self_test(&[], 3, true),
            Err("0 vectors for one text".into())
        );
        assert_eq!(
            check_self_test(std::slice::from_ref(&unit), 4, true),
            Err("the vector has 3 values, the manifest's dimensions say 4".into())
        );
        assert_eq!(
            check_self_test(&[vec![0.6, f32::NAN, 0.0]], 3, false),
            Err("value 1 of the vector is NaN (the weights compute non-finite numbers)".into())
        );
        assert_eq!(
            check_self_test(&[vec![3.0, 4.0, 0.0]], 3, true),
            Err("the vector's length is 5, not 1 as the manifest's normalize: true needs".into())
        );
        assert_eq!(
            check_self_test(&[vec![0.0; 3]], 3, false),
            Err("the vector is all zeros".into())
        );
    }
}
