//! The engine thread of one loaded model: receives jobs over a bounded channel, gathers what
//! is queued into batches, runs forward passes and answers each job on its oneshot. No forward
//! pass ever runs on a tokio worker.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{oneshot, watch};

use super::EngineError;
use super::batch::{BatchLimits, plan};
use super::encoder::{Encoder, Hidden};
use super::head::Head;
use super::outputs::{Heads, Output};
use super::pool::{l2_normalize, pool};
use super::tokenize::Encoded;
use super::vectors::{Finish, VectorShape};
use crate::package::Pooling;

/// Vectors (a reranker: each pair's logits; a sparse model: each text's weight of every
/// vocabulary term) for one job, in input order.
pub type JobResult = Result<Vec<Vec<f32>>, EngineError>;

/// What the engine thread runs: the encoder's pass, pooling, and the steps after it.
pub struct Pipeline {
    /// The forward pass.
    pub encoder: Encoder,
    /// How token vectors become one.
    pub pooling: Pooling,
    /// Dense modules, a Matryoshka cut, normalisation.
    pub finish: Finish,
    /// An embedding model's heads beside its vector (bge-m3's).
    pub heads: Heads,
}

/// Texts to embed and where to send their vectors.
pub struct Job {
    /// Tokenized texts.
    pub texts: Vec<Encoded>,
    /// What the vectors should be cut to and whether normalised.
    pub shape: VectorShape,
    /// Which of the model's outputs the texts want.
    pub output: Output,
    /// Where the answer goes; a dropped receiver (client gone) skips the work.
    pub reply: oneshot::Sender<JobResult>,
}

/// Handle to a running engine thread. Dropping every handle stops the thread once the jobs
/// already queued are answered.
#[derive(Clone)]
pub struct Worker {
    tx: SyncSender<Job>,
    beat: Arc<Beat>,
    /// `caxton_engine_queue_depth{model}`: up when a job is queued, down when taken.
    depth: Gauge,
}

/// What the engine thread last showed of itself, for the watchdog.
#[derive(Default)]
struct Beat {
    /// When it last woke idle or finished a forward pass (clock_ms).
    last: AtomicU64,
    /// When the forward pass under way began (clock_ms + 1; 0 when none is).
    pass_started: AtomicU64,
}

/// What the engine thread is doing, as far as the watchdog can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Waiting for or between jobs; it last showed it was alive this long ago.
    Looping(Duration),
    /// Inside one forward pass for this long.
    InPass(Duration),
}

/// How often an idle engine thread wakes to show it is alive.
const TICK: Duration = Duration::from_secs(1);

/// Milliseconds since the first call, process-wide: the heartbeat's clock.
fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Worker {
    /// Starts the engine thread for `pipeline`. `queue` jobs may wait; more are refused as busy.
    /// The receiver turns `true` once the thread has stopped and freed the model's memory.
    pub fn spawn(
        name: &str,
        pipeline: Pipeline,
        limits: Arc<RwLock<BatchLimits>>,
        queue: usize,
    ) -> std::io::Result<(Worker, watch::Receiver<bool>)> {
        let (tx, rx) = sync_channel(queue);
        let (freed_tx, freed_rx) = watch::channel(false);
        let beat = Arc::new(Beat::default());
        beat.last.store(clock_ms(), Ordering::Relaxed);
        let thread_beat = beat.clone();
        let metrics = crate::metrics::get();
        let label = crate::metrics::Metrics::model(name);
        let depth = metrics.engine_queue.get_or_create(&label).clone();
        depth.set(0);
        let meters = Meters {
            depth: depth.clone(),
            batch_size: metrics.batch_size.get_or_create(&label).clone(),
        };
        std::thread::Builder::new()
            .name(format!("engine:{name}"))
            .spawn(move || run(rx, pipeline, limits, freed_tx, &thread_beat, &meters))?;
        Ok((Worker { tx, beat, depth }, freed_rx))
    }

    /// What the engine thread is doing: it wakes at least every second when idle and marks
    /// every forward pass, so a long `Looping` or an endless `InPass` means it is stuck.
    pub fn activity(&self) -> Activity {
        let now = clock_ms();
        match self.beat.pass_started.load(Ordering::Relaxed) {
            0 => Activity::Looping(Duration::from_millis(
                now.saturating_sub(self.beat.last.load(Ordering::Relaxed)),
            )),
            started => Activity::InPass(Duration::from_millis(now.saturating_sub(started - 1))),
        }
    }

    /// Queues a job, or refuses it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), EngineError> {
        // Counted before the send, so the engine thread never takes a job not yet counted.
        self.depth.inc();
        self.tx.try_send(job).map_err(|e| {
            self.depth.dec();
            match e {
                TrySendError::Full(_) => EngineError::Busy,
                TrySendError::Disconnected(_) => EngineError::Stopped,
            }
        })
    }
}

/// The engine thread's own metrics, labelled with its model once.
struct Meters {
    depth: Gauge,
    batch_size: Histogram,
}

fn run(
    rx: Receiver<Job>,
    pipeline: Pipeline,
    shared: Arc<RwLock<BatchLimits>>,
    freed: watch::Sender<bool>,
    beat: &Beat,
    meters: &Meters,
) {
    // Whether the pass buffers are held; they go back after a quiet tick.
    let mut holding = false;
    loop {
        beat.last.store(clock_ms(), Ordering::Relaxed);
        let first = match rx.recv_timeout(TICK) {
            Ok(job) => {
                meters.depth.dec();
                job
            }
            Err(RecvTimeoutError::Timeout) => {
                if std::mem::take(&mut holding) {
                    pipeline.encoder.release_workspace(false);
                    crate::memory::trim();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let limits = *shared.read().unwrap_or_else(|p| p.into_inner());
        let mut jobs = vec![first];
        let mut queued = jobs[0].texts.len();
        // Whatever arrived while the previous batch ran joins this one.
        while queued < limits.max_texts {
            match rx.try_recv() {
                Ok(job) => {
                    meters.depth.dec();
                    queued += job.texts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        holding = true;
        // Whatever panics inside a batch fails that batch, never the engine thread. The batch
        // runs on a compute thread (this one waits for it once), with the other workers kept
        // awake through it (`awake`): its parallel steps then start inside the pool, where
        // the thread waiting for one takes part in it, instead of this thread handing each
        // step over and sleeping until it is done, the workers woken again for every step.
        let results = catch_unwind(AssertUnwindSafe(|| {
            rayon::scope(|_| {
                let _awake = super::awake::Awake::begin();
                embed_jobs(&pipeline, limits, &jobs, beat, &meters.batch_size)
            })
        }))
        .unwrap_or_else(|_| {
            tracing::error!(caxton_event = "engine_error", "a batch panicked");
            jobs.iter()
                .map(|_| Err(EngineError::Failed("the batch panicked".into())))
                .collect()
        });
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
    // Every handle is gone: the model is unloaded. Free the weights (and the pool threads'
    // scratch of its last passes) now and hand the memory back to the kernel, so RSS and the
    // cgroup's usage really fall.
    if holding {
        pipeline.encoder.release_workspace(true);
    }
    drop(pipeline);
    crate::memory::trim();
    let _ = freed.send(true);
    tracing::debug!("engine thread stopped, memory trimmed");
}

/// Embeds every text of `jobs` (a reranker: scores every pair), batching across the jobs that
/// want the same output, and returns one result per job.
fn embed_jobs(
    pipeline: &Pipeline,
    limits: BatchLimits,
    jobs: &[Job],
    beat: &Beat,
    batch_size: &Histogram,
) -> Vec<JobResult> {
    let mut results: Vec<JobResult> = jobs.iter().map(|_| Ok(Vec::new())).collect();
    for output in Output::ALL {
        let of: Vec<usize> = (0..jobs.len())
            .filter(|&j| jobs[j].output == output)
            .collect();
        if of.is_empty() {
            continue;
        }
        let wanting: Vec<&Job> = of.iter().map(|&j| &jobs[j]).collect();
        let answered = embed_output(pipeline, limits, &wanting, output, beat, batch_size);
        for (j, result) in of.into_iter().zip(answered) {
            results[j] = result;
        }
    }
    results
}

/// [`embed_jobs`] for jobs that all want `output`.
fn embed_output(
    pipeline: &Pipeline,
    limits: BatchLimits,
    jobs: &[&Job],
    output: Output,
    beat: &Beat,
    batch_size: &Histogram,
) -> Vec<JobResult> {
    // Every text as (job, text in the job), in one list the batches index.
    let refs: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.texts.len()).map(move |t| (j, t)))
        .collect();
    let lengths: Vec<usize> = refs.iter().map(|&(j, t)| jobs[j].texts[t].len()).collect();
    let mut vectors: Vec<Vec<Vec<f32>>> = jobs
        .iter()
        .map(|j| vec![Vec::new(); j.texts.len()])
        .collect();
    let Pipeline {
        encoder, finish, ..
    } = pipeline;

    for group in plan(&lengths, limits) {
        let texts: Vec<&Encoded> = group
            .iter()
            .map(|&i| {
                let (j, t) = refs[i];
                &jobs[j].texts[t]
            })
            .collect();
        crate::metrics::get().batches.inc();
        batch_size.observe(texts.len() as f64);
        let hidden = match watched_pass(encoder, &texts, beat) {
            Ok(h) => h,
            Err(msg) => {
                tracing::error!(caxton_event = "engine_error", "{msg}");
                return jobs
                    .iter()
                    .map(|_| Err(EngineError::Failed(msg.clone())))
                    .collect();
            }
        };
        let dim = encoder.hidden_size();
        let rows_of = |k: usize, len: usize| {
            let start = hidden.starts[k] * dim;
            &hidden.data[start..start + len * dim]
        };
        match output {
            Output::TermWeights => {
                for (k, &i) in group.iter().enumerate() {
                    let (j, t) = refs[i];
                    match pipeline
                        .heads
                        .term_weights(rows_of(k, lengths[i]), lengths[i])
                    {
                        Some(w) => vectors[j][t] = w,
                        None => return failed(jobs, "the model has no term-weight output"),
                    }
                }
                continue;
            }
            Output::TokenVectors if pipeline.heads.has_token_vectors() => {
                for (k, &i) in group.iter().enumerate() {
                    let (j, t) = refs[i];
                    let normalize = jobs[j].shape.normalize;
                    vectors[j][t] = pipeline
                        .heads
                        .token_vectors(rows_of(k, lengths[i]), lengths[i], normalize)
                        .unwrap_or_default();
                }
                continue;
            }
            _ => {}
        }
        if let Some(head) = encoder.head() {
            let labels = head.labels();
            let logits = pair_logits(pipeline, head, &hidden, &group, &lengths);
            for (k, &i) in group.iter().enumerate() {
                let (j, t) = refs[i];
                vectors[j][t] = logits[k * labels..(k + 1) * labels].to_vec();
            }
            continue;
        }
        if let Some(sparse) = encoder.sparse() {
            let texts: Vec<(usize, usize)> = group
                .iter()
                .enumerate()
                .map(|(k, &i)| (hidden.starts[k], lengths[i]))
                .collect();
            for (weights, &i) in sparse.weights(&hidden.data, &texts).into_iter().zip(&group) {
                let (j, t) = refs[i];
                vectors[j][t] = weights;
            }
            continue;
        }
        if pipeline.pooling == Pooling::Tokens || output == Output::TokenVectors {
            for (k, &i) in group.iter().enumerate() {
                let (j, t) = refs[i];
                vectors[j][t] = token_vectors(pipeline, &hidden, k, lengths[i], jobs[j].shape);
            }
            continue;
        }
        // Through the Dense modules together, then each cut and normalised as its job asks.
        let full = dense_vectors(pipeline, &hidden, &group, &lengths);
        let width = full.len() / group.len().max(1);
        for (k, &i) in group.iter().enumerate() {
            let (j, t) = refs[i];
            let v = full[k * width..(k + 1) * width].to_vec();
            vectors[j][t] = finish.shape(v, jobs[j].shape);
        }
    }
    vectors.into_iter().map(Ok).collect()
}

/// Every job's answer: the failure `msg`.
fn failed(jobs: &[&Job], msg: &str) -> Vec<JobResult> {
    jobs.iter()
        .map(|_| Err(EngineError::Failed(msg.to_string())))
        .collect()
}

/// One forward pass over `texts`, marked on `beat` for the watchdog while it runs; a panic in
/// it is its error.
fn watched_pass(encoder: &Encoder, texts: &[&Encoded], beat: &Beat) -> Result<Hidden, String> {
    beat.pass_started.store(clock_ms() + 1, Ordering::Relaxed);
    // The pass runs on a pool thread: its parallel steps are then that thread's own work,
    // shared with the other threads, instead of jobs this thread hands over and sleeps
    // on, one wake-up and one sleep per step.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        rayon::join(|| encoder.forward(texts), || ()).0
    }))
    .unwrap_or_else(|_| Err("the forward pass panicked".to_string()));
    beat.pass_started.store(0, Ordering::Relaxed);
    beat.last.store(clock_ms(), Ordering::Relaxed);
    outcome
}

/// A reranker's logits of each pair of `group` (indices into `lengths`, in the pass's order),
/// `head.labels()` per pair: each pair's first token (a cross-encoder's) or last (a
/// decoder's) through the head, in one product.
fn pair_logits(
    pipeline: &Pipeline,
    head: &Head,
    hidden: &Hidden,
    group: &[usize],
    lengths: &[usize],
) -> Vec<f32> {
    let dim = pipeline.encoder.hidden_size();
    let read: Vec<f32> = group
        .iter()
        .enumerate()
        .flat_map(|(k, &i)| {
            let row = match pipeline.pooling {
                Pooling::LastToken => hidden.starts[k] + lengths[i].max(1) - 1,
                _ => hidden.starts[k],
            };
            hidden.data[row * dim..(row + 1) * dim].iter().copied()
        })
        .collect();
    head.logits(&read, group.len())
}

/// A multi-vector model's vectors of the pass's `k`th text (`len` tokens): every token's row
/// through the Dense modules, each normalised when `shape` asks, back to back.
fn token_vectors(
    pipeline: &Pipeline,
    hidden: &Hidden,
    k: usize,
    len: usize,
    shape: VectorShape,
) -> Vec<f32> {
    let dim = pipeline.encoder.hidden_size();
    let start = hidden.starts[k] * dim;
    let rows = hidden.data[start..start + len * dim].to_vec();
    let mut out = pipeline.finish.dense(rows, len);
    let width = out.len() / len.max(1);
    if shape.normalize && width > 0 {
        out.chunks_exact_mut(width).for_each(l2_normalize);
    }
    out
}

/// The texts of `group` (indices into `lengths`, in the pass's order) pooled and through the
/// Dense modules, one row each.
fn dense_vectors(
    pipeline: &Pipeline,
    hidden: &Hidden,
    group: &[usize],
    lengths: &[usize],
) -> Vec<f32> {
    let dim = pipeline.encoder.hidden_size();
    let mut pooled = Vec::with_capacity(group.len() * dim);
    for (k, &i) in group.iter().enumerate() {
        let start = hidden.starts[k] * dim;
        pooled.extend(pool(
            &hidden.data[start..start + lengths[i] * dim],
            dim,
            lengths[i],
            pipeline.pooling,
        ));
    }
    pipeline.finish.dense(pooled, group.len())
}
