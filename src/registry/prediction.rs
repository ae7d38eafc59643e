//! Predictive preloading: which models their habits say will be used in the coming hour, and
//! loading them into free room only (a guess never sheds, never waits, never queues in front
//! of a request). A predicted model no request has used yet is the first to go
//! ([`crate::memory::policy::Resident::guess`]); one predicted for an hour that passed
//! without a use is not predicted for that hour of week again until it is used.

use std::sync::Arc;

use super::{LoadError, ModelState, Registry};

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
                if matches!(u.state, Some(ModelState::Loading | ModelState::Loaded))
                    || u.failure.is_some()
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

    /// Loads `p`'s model if it fits the free room now: `Ok(true)` when it did, `Ok(false)`
    /// when it is already in memory or another load holds admission (the next prediction
    /// tries again), the refusal otherwise.
    pub async fn preload_predicted(self: &Arc<Self>, p: &Prediction) -> Result<bool, LoadError> {
        let slot = self
            .get(&p.id)
            .ok_or_else(|| LoadError::Unknown(p.id.clone()))?;
        if super::admission::loaded_now(&slot).is_some() {
            return Ok(false);
        }
        let Ok(_admission) = self.governor.admission.clone().try_lock_owned() else {
            return Ok(false);
        };
        let uses = slot.usage().use_count;
        self.governor.set_admitting(Some(&p.id));
        let result = self
            .admit_and_load(slot.clone(), tokio::time::Instant::now(), true)
            .await;
        self.governor.set_admitting(None);
        result?;
        let mut u = slot.usage();
        // A request that came in while it loaded made it a model in use, not a guess.
        if u.use_count == uses {
            u.predicted = Some(p.hour);
        }
        drop(u);
        tracing::info!(
            caxton_event = "model_predicted",
            caxton_model = %p.id,
            probability = p.probability,
            "model {} preloaded: its usage history gives a use in the coming hour a probability of {:.2} (memory.predictive_threshold); it goes first if memory is needed before a request uses it",
            p.id,
            p.probability
        );
        Ok(true)
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
