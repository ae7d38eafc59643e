//! What is in memory: unloading (the memory counts as held until the engine thread has freed
//! it), the bytes the loaded models hold, and the residents the memory policy weighs.

use std::sync::Arc;
use std::time::Duration;

use super::slot::ModelSlot;
use super::{LoadError, ModelState, Registry};
use crate::engine::LoadedModel;
use crate::memory::policy::Resident;

/// What a flush did.
#[derive(Debug, Default)]
pub struct Flushed {
    /// The models unloaded, with the bytes each held.
    pub unloaded: Vec<(String, u64)>,
    /// The loaded models kept because they are pinned.
    pub kept_pinned: Vec<String>,
}

/// Why a model is unloaded.
#[derive(Clone, Copy)]
pub(super) enum Unload<'a> {
    /// Asked for (idle, an operator, a reload), for this reason.
    Asked(&'a str),
    /// Shed to free memory, for this reason; `signal` for a stall signal (which caps model
    /// memory until the episode ends).
    Shed {
        /// Why memory was needed.
        reason: &'a str,
        /// A shed for a stall signal.
        signal: bool,
    },
}

impl Registry {
    /// Unloads `id` from memory (the package stays). Requests already holding the model finish
    /// first: the engine thread stops, and its memory is trimmed, when the last one is done.
    /// Returns the bytes the model held, or `None` if it was not loaded.
    pub async fn unload(&self, id: &str, reason: &str) -> Result<Option<u64>, LoadError> {
        let unloaded = self.unload_model(id, Unload::Asked(reason)).await?;
        Ok(unloaded.map(|(bytes, _)| bytes))
    }

    /// Sets how long `id`, loaded, may stay unused from now on (Ollama's `keep_alive`), in place
    /// of its configured `max_idle`, until it unloads. Does nothing when it is not loaded.
    pub fn keep_alive(&self, id: &str, keep: crate::memory::policy::KeepAlive) {
        if let Some(slot) = self.get(id) {
            let mut u = slot.usage();
            if u.memory_bytes.is_some() {
                u.keep_alive = Some(keep);
            }
        }
    }

    /// How long `id` may stay unused before idleness unloads it (`None`: never): what a
    /// request's `keep_alive` set for this load, else `memory`'s `max_idle` for it.
    pub fn idle_limit(&self, id: &str, memory: &crate::config::MemorySettings) -> Option<Duration> {
        let asked = self.get(id).and_then(|slot| slot.usage().keep_alive);
        match asked {
            Some(keep) => keep.limit(),
            None => memory.idle_limit(id),
        }
    }

    /// Unloads every loaded model that is not pinned (an operator's flush).
    pub async fn flush(&self) -> Result<Flushed, LoadError> {
        let mut flushed = Flushed::default();
        for id in self.loaded_ids() {
            if self.governor.rules(&id).pinned {
                flushed.kept_pinned.push(id);
            } else if let Some(bytes) = self.unload(&id, "flush").await? {
                flushed.unloaded.push((id, bytes));
            }
        }
        Ok(flushed)
    }

    /// [`Registry::unload`], also returning the signal that turns `true` once the memory is
    /// really freed.
    pub(super) async fn unload_model(
        &self,
        id: &str,
        why: Unload<'_>,
    ) -> Result<Option<(u64, tokio::sync::watch::Receiver<bool>)>, LoadError> {
        let slot = self
            .get(id)
            .ok_or_else(|| LoadError::Unknown(id.to_string()))?;
        let model = slot.loaded.lock().await.take();
        let Some(model) = model else {
            return Ok(None);
        };
        let freed = model.freed();
        let bytes = {
            let mut u = slot.usage();
            let bytes = u.memory_bytes.unwrap_or(model.weight_bytes);
            // Until the engine thread has freed it, the model's memory is still held:
            // admission counts it (from before it stops counting as loaded) and waits for it
            // instead of loading into memory that is not back.
            self.governor.releasing.add(id, bytes, freed.clone());
            u.state = Some(ModelState::Available);
            u.precision = None;
            u.kernel = None;
            u.loaded_at = None;
            u.memory_bytes = None;
            // A request's keep_alive holds for the load it was sent to.
            u.keep_alive = None;
            // A guess that goes unused (idle, shed) was a prediction that did not come.
            if let Some(hour) = u.predicted.take() {
                u.habits.miss(hour);
            }
            bytes
        };
        drop(model);
        self.record_unload(id, bytes, why);
        Ok(Some((bytes, freed)))
    }

    /// The metrics and journal lines of `id`'s unload (`bytes` on their way back): every
    /// unload's, and a shed's besides.
    fn record_unload(&self, id: &str, bytes: u64, why: Unload<'_>) {
        let m = crate::metrics::get();
        let label = crate::metrics::Metrics::model(id);
        m.memory.get_or_create(&label).set(0);
        m.unloads.get_or_create(&label).inc();
        let reason = match why {
            Unload::Asked(reason) => reason,
            Unload::Shed { .. } => "shed",
        };
        tracing::info!(
            caxton_event = "model_unloaded",
            caxton_model = %id,
            caxton_reason = reason,
            memory_bytes = bytes,
            "model {id} unloaded ({reason}); {} MiB held until its in-flight requests finish",
            bytes >> 20
        );
        let Unload::Shed { reason, signal } = why else {
            return;
        };
        self.governor.note_shed(signal.then(|| self.model_memory()));
        m.sheds.get_or_create(&label).inc();
        tracing::warn!(
            caxton_event = "model_shed",
            caxton_model = %id,
            caxton_reason = reason,
            bytes_released = bytes,
            "model {id} shed to free memory ({reason}); {} MiB come back once its in-flight requests finish",
            bytes >> 20
        );
    }

    /// Bytes held by the loaded models.
    pub fn model_memory(&self) -> u64 {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models.values().filter_map(|s| s.usage().memory_bytes).sum()
    }

    /// The loaded models as the memory policy sees them.
    pub fn residents(&self) -> Vec<Resident> {
        let default = self.load.default();
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models
            .values()
            .filter_map(|slot| {
                let u = slot.usage().clone();
                let bytes = u.memory_bytes?;
                let id = &slot.package.manifest.id;
                let rules = self.governor.rules(id);
                Some(Resident {
                    id: id.clone(),
                    priority: rules.priority,
                    pinned: rules.pinned,
                    default: *id == *default,
                    loaded_at: u
                        .loaded_at
                        .map_or(Duration::ZERO, |t| self.governor.clock(t)),
                    last_use: u
                        .last_use_at
                        .map_or(Duration::ZERO, |t| self.governor.clock(t)),
                    bytes,
                    guess: u.predicted.is_some(),
                })
            })
            .collect()
    }

    /// The models in memory (a model being loaded is not among them yet).
    pub fn loaded_models(&self) -> Vec<Arc<LoadedModel>> {
        let slots: Vec<Arc<ModelSlot>> = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter_map(|s| s.loaded.try_lock().ok().and_then(|m| m.clone()))
            .collect()
    }

    /// Ids of the models in memory.
    pub fn loaded_ids(&self) -> Vec<String> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models
            .iter()
            .filter(|(_, s)| s.usage().state == Some(ModelState::Loaded))
            .map(|(id, _)| id.clone())
            .collect()
    }
}
