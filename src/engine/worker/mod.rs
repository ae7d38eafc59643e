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
use super::batch::BatchLimits;
use super::outputs::Output;
use super::tokenize::Encoded;
use super::vectors::VectorShape;

mod text;
mod towers;
pub use text::Pipeline;
pub use towers::TowersPipeline;

/// Vectors (a reranker: each pair's logits; a sparse model: each text's weight of every
/// vocabulary term) for one job, in input order.
pub type JobResult = Result<Vec<Vec<f32>>, EngineError>;

/// What an engine thread runs: a text model's pipeline, or a two-tower model's towers.
pub enum Engine {
    /// One encoder and the steps after it.
    Text(Box<Pipeline>),
    /// CLIP's or SigLIP's two towers.
    Towers(Box<TowersPipeline>),
}

impl Engine {
    /// Hands the pass buffers back (`wait`: before returning, as an unload must).
    fn release_workspace(&self, wait: bool) {
        match self {
            Engine::Text(p) => p.encoder.release_workspace(wait),
            Engine::Towers(t) => t.towers.release_workspace(wait),
        }
    }

    /// Every job's answer, batched across jobs.
    fn embed_jobs(
        &self,
        limits: BatchLimits,
        jobs: &[Job],
        beat: &Beat,
        batch_size: &Histogram,
    ) -> Vec<JobResult> {
        match self {
            Engine::Text(p) => text::embed_jobs(p, limits, jobs, beat, batch_size),
            Engine::Towers(t) => towers::embed_jobs(t, limits, jobs, beat, batch_size),
        }
    }
}

/// Texts to embed and where to send their vectors.
pub struct Job {
    /// Tokenized texts.
    pub texts: Vec<Encoded>,
    /// Pictures as their model's processor makes them (`[3, size, size]` floats, channels
    /// first), for a two-tower model's image tower; a job carries texts or images.
    pub images: Vec<Vec<f32>>,
    /// What the vectors should be cut to and whether normalised.
    pub shape: VectorShape,
    /// Which of the model's outputs the texts want.
    pub output: Output,
    /// Where the answer goes; a dropped receiver (client gone) skips the work.
    pub reply: oneshot::Sender<JobResult>,
}

impl Job {
    /// How many texts or images the job carries.
    fn inputs(&self) -> usize {
        self.texts.len() + self.images.len()
    }
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
    /// Starts the engine thread for `engine`. `queue` jobs may wait; more are refused as busy.
    /// The receiver turns `true` once the thread has stopped and freed the model's memory.
    pub fn spawn(
        name: &str,
        engine: Engine,
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
            .spawn(move || run(rx, engine, limits, freed_tx, &thread_beat, &meters))?;
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
    engine: Engine,
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
                    engine.release_workspace(false);
                    crate::memory::trim();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let limits = *shared.read().unwrap_or_else(|p| p.into_inner());
        let mut jobs = vec![first];
        let mut queued = jobs[0].inputs();
        // Whatever arrived while the previous batch ran joins this one.
        while queued < limits.max_texts {
            match rx.try_recv() {
                Ok(job) => {
                    meters.depth.dec();
                    queued += job.inputs();
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
        answer(jobs, |jobs| {
            engine.embed_jobs(limits, jobs, beat, &meters.batch_size)
        });
    }
    // Every handle is gone: the model is unloaded. Free the weights (and the pool threads'
    // scratch of its last passes) now and hand the memory back to the kernel, so RSS and the
    // cgroup's usage really fall.
    if holding {
        engine.release_workspace(true);
    }
    drop(engine);
    crate::memory::trim();
    let _ = freed.send(true);
    tracing::debug!("engine thread stopped, memory trimmed");
}

/// Runs `batch` over `jobs` and answers each job with its result.
///
/// Whatever panics inside a batch fails that batch, never the engine thread. The batch runs on
/// a compute thread (this one waits for it once), with the other workers kept awake through
/// it (`awake`): its parallel steps then start inside the pool, where the thread waiting for
/// one takes part in it, instead of this thread handing each step over and sleeping until it
/// is done, the workers woken again for every step. That compute thread also sends the
/// answers, so they are on their way while this thread is still waking from its wait: one
/// wake-up less between the pass and the client.
fn answer(mut jobs: Vec<Job>, batch: impl FnOnce(&[Job]) -> Vec<JobResult> + Send) {
    let answered = catch_unwind(AssertUnwindSafe(|| {
        rayon::scope(|_| {
            let results = {
                let _awake = super::awake::Awake::begin();
                batch(&jobs)
            };
            for (job, result) in jobs.drain(..).zip(results) {
                let _ = job.reply.send(result);
            }
        })
    }));
    if answered.is_err() {
        tracing::error!(caxton_event = "engine_error", "a batch panicked");
        for job in jobs {
            let _ = job
                .reply
                .send(Err(EngineError::Failed("the batch panicked".into())));
        }
    }
}

/// One forward pass (`pass`), marked on `beat` for the watchdog while it runs; a panic in it
/// is its error.
fn watched<T: Send>(
    beat: &Beat,
    pass: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    beat.pass_started.store(clock_ms() + 1, Ordering::Relaxed);
    // The pass runs on a pool thread: its parallel steps are then that thread's own work,
    // shared with the other threads, instead of jobs this thread hands over and sleeps
    // on, one wake-up and one sleep per step.
    let outcome = catch_unwind(AssertUnwindSafe(|| rayon::join(pass, || ()).0))
        .unwrap_or_else(|_| Err("the forward pass panicked".to_string()));
    beat.pass_started.store(0, Ordering::Relaxed);
    beat.last.store(clock_ms(), Ordering::Relaxed);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job of no texts and the receiver of its answer.
    fn job() -> (Job, oneshot::Receiver<JobResult>) {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            texts: Vec::new(),
            images: Vec::new(),
            shape: VectorShape {
                normalize: false,
                width: None,
            },
            output: Output::Main,
            reply,
        };
        (job, answer)
    }

    #[test]
    fn each_job_gets_its_own_result_and_the_batch_runs_on_a_compute_thread() {
        let (jobs, answers): (Vec<_>, Vec<_>) = (0..3).map(|_| job()).unzip();
        let ran_on = std::sync::Mutex::new(None);
        answer(jobs, |jobs| {
            *ran_on.lock().expect("lock") = Some(rayon::current_thread_index());
            (0..jobs.len()).map(|i| Ok(vec![vec![i as f32]])).collect()
        });
        // The batch ran on a compute thread, not on this one.
        assert!(matches!(*ran_on.lock().expect("lock"), Some(Some(_))));
        for (i, mut answer) in answers.into_iter().enumerate() {
            let got = answer.try_recv().expect("answered").expect("a result");
            assert_eq!(got, vec![vec![i as f32]]);
        }
    }

    #[test]
    fn a_batch_that_panics_answers_every_job_with_the_panic() {
        let (jobs, answers): (Vec<_>, Vec<_>) = (0..2).map(|_| job()).unzip();
        answer(jobs, |_| panic!("a kernel's bug"));
        for mut answer in answers {
            match answer.try_recv().expect("answered") {
                Err(EngineError::Failed(why)) => assert_eq!(why, "the batch panicked"),
                other => panic!("expected the batch's panic, got {other:?}"),
            }
        }
    }
}
