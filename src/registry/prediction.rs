//! Predictive preloading: which models their habits say will be used in the coming hour, and
//! loading them into free room only (a guess never sheds, never waits, never queues in front
//! of a request). A predicted model no request has used yet is the first to go
//! ([`crate::memory::policy::Resident::guess`]); one predicted for an hour that passed
//! without a use is not predicted for that hour of week again until it is used.

use std::sync::Arc;

use super::{LoadError, ModelState, Registry};

/// What became of a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preloaded {
    /// Loaded into free room.
    Loaded,
    /// In memory already.
    AlreadyIn,
    /// Another load holds admission: try again soon.
    Busy,
}

/// A model likely to be used soon.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Model id.
    pub id: String,
    /// The probability of a use in `hour`.
    pub probability: f64,
    /// The hour (since the epoch) the use is expected in.
    pub hour: u64,
}

impl Registry {
    /// The models not in memory whose use in hour `now` or the next is at least `threshold`
    /// likely, most likely first (ties by id). Failed models are left to their backoff.
    pub fn predictions(&self, now: u64, threshold: f64) -> Vec<Prediction> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Prediction> = models
            .iter()
            .filter_map(|(id, slot)| {
                let u = slot.usage();
                let backing_off = u
                    .failure
                    .as_ref()
                    .is_some_and(|f| f.retry_at > std::time::Instant::now());
                if matches!(u.state, Some(ModelState::Loading | ModelState::Loaded)) || backing_off
                {
                    return None;
                }
                let (probability, hour) = [now, now + 1]
                    .into_iter()
                    .map(|h| (u.habits.probability(h), h))
                    .fold((0.0, now), |best, c| if c.0 > best.0 { c } else { best });
                (probability >= threshold).then(|| Prediction {
                    id: id.clone(),
                    probability,
                    hour,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.probability
                .total_cmp(&a.probability)
                .then_with(|| a.id.cmp(&b.id))
        });
        out
    }

    /// Loads `p`'s model if it fits the free room now, marked as a guess until a request
    /// uses it; the refusal when it does not fit.
    pub async fn preload_predicted(
        self: &Arc<Self>,
        p: &Prediction,
    ) -> Result<Preloaded, LoadError> {
        let slot = self
            .get(&p.id)
            .ok_or_else(|| LoadError::Unknown(p.id.clone()))?;
        let Ok(_admission) = self.governor.queue.admission.clone().try_lock_owned() else {
            return Ok(Preloaded::Busy);
        };
        // Checked under the admission lock: no request's load can bring it in meanwhile.
        if super::admission::loaded_now(&slot).is_some() {
            return Ok(Preloaded::AlreadyIn);
        }
        // Marked before it counts as loaded, so the policy never sees it as a model in use;
        // a request using it meanwhile clears the mark.
        slot.usage().predicted = Some(p.hour);
        self.governor.queue.set_admitting(Some(&p.id));
        let result = self
            .admit_and_load(
                slot.clone(),
                tokio::time::Instant::now(),
                super::admission::Need::Guess,
            )
            .await;
        self.governor.queue.set_admitting(None);
        if let Err(e) = result {
            slot.usage().predicted = None;
            return Err(e);
        }
        tracing::info!(
            caxton_event = "model_predicted",
            caxton_model = %p.id,
            probability = p.probability,
            "model {} preloaded: its usage history gives a use in the coming hour a probability of {:.2} (memory.predictive_threshold); it goes first if memory is needed before a request uses it",
            p.id,
            p.probability
        );
        Ok(Preloaded::Loaded)
    }

    /// At hour `now`: the models still loaded on a prediction for an hour that has ended
    /// unused are not predicted for that hour of week again until they are used.
    pub fn note_missed_predictions(&self, now: u64) {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        for (id, slot) in models.iter() {
            let mut u = slot.usage();
            if let Some(hour) = u.predicted.filter(|&h| h < now) {
                if !u.habits.missed.contains(&super::habits::hour_of_week(hour)) {
                    tracing::info!(
                        caxton_event = "prediction_missed",
                        caxton_model = %id,
                        "model {id} was preloaded for a use that did not come; it is not predicted for this hour of the week again until it is used"
                    );
                }
                u.habits.miss(hour);
            }
        }
    }
}
