//! The engine thread's work for a two-tower model: the jobs' texts through the text tower
//! and their pictures through the image tower, each batched across jobs, each vector then cut
//! and normalised as its job asks.

use prometheus_client::metrics::histogram::Histogram;

use super::{Beat, Job, JobResult, watched};
use crate::engine::EngineError;
use crate::engine::batch::{BatchLimits, plan};
use crate::engine::outputs::Output;
use crate::engine::vectors::Finish;
use crate::engine::vision::Towers;

/// What the engine thread runs for a two-tower model.
pub struct TowersPipeline {
    /// Both towers.
    pub towers: Towers,
    /// A request's cut and normalisation.
    pub finish: Finish,
}

/// Which tower a batch runs.
#[derive(Clone, Copy)]
enum Tower {
    Text,
    Image,
}

/// Every job's vectors, one per text or picture, in the job's order.
pub(super) fn embed_jobs(
    pipeline: &TowersPipeline,
    limits: BatchLimits,
    jobs: &[Job],
    beat: &Beat,
    batch_size: &Histogram,
) -> Vec<JobResult> {
    let mut vectors: Vec<Vec<Vec<f32>>> =
        jobs.iter().map(|j| vec![Vec::new(); j.inputs()]).collect();
    let mut answers: Vec<Option<EngineError>> = jobs
        .iter()
        .map(|j| {
            (j.output != Output::Main).then(|| {
                EngineError::Failed(
                    "a two-tower model makes one vector for each text or picture, no other output"
                        .into(),
                )
            })
        })
        .collect();
    let wanted = |j: usize| answers[j].is_none();
    // Every input as (job, index in the job), texts and pictures apart.
    let texts: Vec<(usize, usize)> = (0..jobs.len())
        .filter(|&j| wanted(j))
        .flat_map(|j| (0..jobs[j].texts.len()).map(move |t| (j, t)))
        .collect();
    let images: Vec<(usize, usize)> = (0..jobs.len())
        .filter(|&j| wanted(j))
        .flat_map(|j| (0..jobs[j].images.len()).map(move |i| (j, i)))
        .collect();
    let towers = &pipeline.towers;
    for (tower, refs) in [(Tower::Text, texts), (Tower::Image, images)] {
        // A picture takes its patches' rows in the pass: the batch limits count those.
        let lengths: Vec<usize> = refs
            .iter()
            .map(|&(j, i)| match tower {
                Tower::Text => jobs[j].texts[i].len(),
                Tower::Image => towers.image_tokens(),
            })
            .collect();
        for group in plan(&lengths, limits) {
            crate::metrics::get().batches.inc();
            batch_size.observe(group.len() as f64);
            let members: Vec<(usize, usize)> = group.iter().map(|&g| refs[g]).collect();
            let pass = watched(beat, || match tower {
                Tower::Text => {
                    let texts: Vec<_> = members.iter().map(|&(j, i)| &jobs[j].texts[i]).collect();
                    towers.text.embed(&texts)
                }
                Tower::Image => {
                    let images: Vec<&[f32]> = members
                        .iter()
                        .map(|&(j, i)| jobs[j].images[i].as_slice())
                        .collect();
                    towers.image.embed(&images)
                }
            });
            match pass {
                Ok(out) => {
                    for (&(j, i), v) in members.iter().zip(out) {
                        vectors[j][i] = pipeline.finish.shape(v, jobs[j].shape);
                    }
                }
                Err(msg) => {
                    tracing::error!(caxton_event = "engine_error", "{msg}");
                    for &(j, _) in &members {
                        answers[j] = Some(EngineError::Failed(msg.clone()));
                    }
                }
            }
        }
    }
    answers
        .into_iter()
        .zip(vectors)
        .map(|(failed, v)| match failed {
            Some(e) => Err(e),
            None => Ok(v),
        })
        .collect()
}
