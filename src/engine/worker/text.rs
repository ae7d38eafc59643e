//! The engine thread's work for a text model: the jobs' texts batched across jobs that want
//! the same output, one forward pass a batch, then pooling, a reranker's head, a sparse
//! model's term weights or a multi-vector model's token vectors.

use prometheus_client::metrics::histogram::Histogram;

use super::{Beat, Job, JobResult, watched};
use crate::engine::EngineError;
use crate::engine::batch::{BatchLimits, plan};
use crate::engine::encoder::{Encoder, Hidden};
use crate::engine::head::Head;
use crate::engine::outputs::{Heads, Output};
use crate::engine::pool::{l2_normalize, pool};
use crate::engine::tokenize::Encoded;
use crate::engine::vectors::{Finish, VectorShape};
use crate::package::Pooling;

/// What the engine thread runs for a text model: the encoder's pass, pooling, and the steps
/// after it.
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

/// Embeds every text of `jobs` (a reranker: scores every pair), batching across the jobs that
/// want the same output, and returns one result per job.
pub(super) fn embed_jobs(
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
        let hidden = match watched(beat, || encoder.forward(&texts)) {
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
