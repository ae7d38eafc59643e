//! How a request gets its model into memory when it is not there: a bounded, fair queue, then
//! admission against the budget and the real room left under the binding cgroup limit, then
//! shedding what must go and waiting until its memory is really back before loading.
//!
//! Requests for a model that is not loaded queue on the governor's admission lock, which is
//! FIFO; a queued request leaves at once when another load brings its model in. The request
//! at the head holds the lock while it waits for room, so loads never overlap and never
//! decide on the same free memory. A wait ends at `memory.load_queue.max_wait` with 503 and
//! `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::loaded::Unload;
use super::{LoadError, ModelSlot, Registry};
use crate::engine::LoadedModel;
use crate::memory::policy::{self, Resident};

/// How often the head of the queue looks again while it waits for room.
const RECHECK: Duration = Duration::from_millis(200);
/// How long a load that shed models waits for their in-flight requests, whatever its deadline.
const SHED_WAIT: Duration = Duration::from_secs(10);

/// Why a model is to be loaded.
pub(super) enum Need {
    /// For a request (or an operator, or a configured preload), whose model may be stood in
    /// for by these models (its fallback chain). When none of them, nor the model, is loaded,
    /// and none at all when the chain is empty, the load is the last resort: it may use the
    /// room up to the critical threshold (`memory::policy::Limits::alone`).
    Serve(Vec<String>),
    /// A prediction: only into free room.
    Guess,
}

/// How a wait in the load queue ends well.
enum Turn {
    /// Another load brought the model in.
    Loaded(Arc<LoadedModel>),
    /// This request's load holds the admission lock.
    Admitted(tokio::sync::OwnedMutexGuard<()>),
}

/// The model in `slot` if it is loaded now; `None` while it is not, or is being loaded or
/// unloaded (the queue's loaded-event wakes waiters when a load ends).
pub(super) fn loaded_now(slot: &ModelSlot) -> Option<Arc<LoadedModel>> {
    slot.loaded.try_lock().ok().and_then(|m| m.clone())
}

impl Registry {
    /// The loaded model for `id`, loading it first if memory allows: waiting in the load
    /// queue while it does not, until `memory.load_queue.max_wait`. With no model loaded at
    /// all, it loads as the last resort (see [`Need::Serve`]).
    pub async fn acquire(self: &Arc<Self>, id: &str) -> Result<Arc<LoadedModel>, LoadError> {
        let slot = self
            .get(id)
            .ok_or_else(|| LoadError::Unknown(id.to_string()))?;
        self.acquire_slot(slot, &[]).await
    }

    /// [`Self::acquire`] for the model of `slot`, for a request whose model may be stood in
    /// for by `chain` (its fallback chain): it loads as the last resort when nothing of the
    /// model and `chain` is loaded, since its request would otherwise get nothing.
    pub(super) async fn acquire_slot(
        self: &Arc<Self>,
        slot: Arc<ModelSlot>,
        chain: &[String],
    ) -> Result<Arc<LoadedModel>, LoadError> {
        // The common case, on every request: already loaded.
        if let Some(model) = loaded_now(&slot) {
            return Ok(model);
        }
        if let Some(refusal) = slot.backing_off() {
            return Err(refusal);
        }
        let max_wait = self.governor.settings().load_queue.max_wait.0;
        let now = Instant::now();
        let deadline = now.checked_add(max_wait).unwrap_or(now);
        let guard = match self.wait_in_queue(&slot, deadline).await? {
            Turn::Loaded(model) => return Ok(model),
            Turn::Admitted(guard) => guard,
        };
        // A spawned task finishes the load even if this request goes away meanwhile, so the
        // slot never stays "loading" with the result thrown away.
        let id = slot.package.manifest.id.clone();
        let this = self.clone();
        let chain = chain.to_vec();
        tokio::spawn(async move {
            let _admission = guard;
            this.governor
                .queue
                .set_admitting(Some(&slot.package.manifest.id));
            let result = this
                .admit_and_load(slot, deadline, Need::Serve(chain))
                .await;
            this.governor.queue.set_admitting(None);
            result
        })
        .await
        .map_err(|e| LoadError::Failed {
            id,
            reason: format!("the load task failed: {e}"),
            retry_after: super::slot::BACKOFF_BASE,
        })?
    }

    /// Waits in the load queue for `slot`'s turn at the admission lock, until `deadline`;
    /// leaves early when another load brings the model in. Refused when the queue is full or
    /// the deadline passes.
    async fn wait_in_queue(&self, slot: &ModelSlot, deadline: Instant) -> Result<Turn, LoadError> {
        let id = &slot.package.manifest.id;
        let queue = self.governor.settings().load_queue;
        let Some(_place) = self.governor.queue.enter(queue.max_waiting) else {
            self.governor.queue.note_refusal();
            return Err(self.refuse(
                id,
                format!(
                    "model {id} is not loaded and {} requests already wait for models to load (memory.load_queue.max_waiting); retry later",
                    queue.max_waiting
                ),
                self.governor.retry_after(),
                false,
            ));
        };
        let lock = self.governor.queue.admission.clone().lock_owned();
        tokio::pin!(lock);
        loop {
            // Registered before the check, so a load finishing in between still wakes us.
            let loaded = self.loaded_event.notified();
            tokio::pin!(loaded);
            loaded.as_mut().enable();
            if let Some(model) = loaded_now(slot) {
                return Ok(Turn::Loaded(model));
            }
            // Past the deadline, a request still waits for its own model's load under way:
            // that wait ends with the load (a large model takes seconds), and refusing it
            // would only send the client back for what is about to be there.
            let past = Instant::now() >= deadline;
            if past && self.governor.queue.admitting().as_deref() != Some(id.as_str()) {
                self.governor.queue.note_refusal();
                return Err(self.refuse(
                    id,
                    format!(
                        "model {id} waited {} (memory.load_queue.max_wait) behind other loads and is still not loaded; retry later",
                        humantime::format_duration(queue.max_wait.0)
                    ),
                    self.governor.retry_after(),
                    false,
                ));
            }
            tokio::select! {
                biased;
                guard = &mut lock => return Ok(Turn::Admitted(guard)),
                _ = &mut loaded => continue,
                _ = tokio::time::sleep_until(deadline), if !past => continue,
                // A load that fails wakes nobody: look again.
                _ = tokio::time::sleep(RECHECK), if past => continue,
            }
        }
    }

    /// Whether a load of `id` is the last resort: nothing of `id` and `chain` is loaded, and
    /// with no chain, nothing at all.
    fn nothing_loaded_of(&self, id: &str, chain: &[String]) -> bool {
        let residents = self.residents();
        if chain.is_empty() {
            return residents.is_empty();
        }
        !residents
            .iter()
            .any(|r| r.id == id || chain.contains(&r.id))
    }

    /// Forgets the backoff of `id`'s failed load, so the next acquire tries at once (an
    /// operator asking for the load explicitly).
    pub fn retry_now(&self, id: &str) {
        if let Some(slot) = self.get(id) {
            slot.clear_backoff();
        }
    }

    /// A refusal for lack of memory, counted, and in the journal once per episode
    /// ([`super::refusals`]); `lasting` when no wait would help.
    fn refuse(&self, id: &str, reason: String, retry_after: Duration, lasting: bool) -> LoadError {
        crate::metrics::get().admission_refusals.inc();
        if let Some(line) = self.refusals.note(id, &reason, std::time::Instant::now()) {
            tracing::warn!(
                caxton_event = "model_load_refused",
                caxton_model = %id,
                caxton_reason = "memory",
                "{line}"
            );
        }
        LoadError::NoMemory {
            id: id.to_string(),
            reason,
            retry_after,
            lasting,
        }
    }

    /// Loads `slot` once it fits: sheds lower-value models past their residency to make
    /// room, waits until their memory is back in the working set, and decides again on fresh
    /// readings; waits while waiting may help, until `deadline`. A guess (a prediction)
    /// loads only into free room: it sheds nothing, waits for nothing, and its refusal is
    /// not logged. The caller holds the admission lock.
    pub(super) async fn admit_and_load(
        &self,
        slot: Arc<ModelSlot>,
        deadline: Instant,
        need_for: Need,
    ) -> Result<Arc<LoadedModel>, LoadError> {
        if let Some(model) = slot.loaded.lock().await.as_ref() {
            return Ok(model.clone());
        }
        let id = slot.package.manifest.id.clone();
        let precision = self.precision_of(&id);
        let (need, peak) = self.room_needed(&slot, precision);
        let priority = self.governor.rules(&id).priority;
        self.wait_for_room(&id, priority, (need, peak), deadline, &need_for)
            .await?;
        let model = slot
            .acquire(self.load.options, self.load.batch.clone(), precision)
            .await?;
        self.governor.note_load();
        crate::metrics::get()
            .loads
            .get_or_create(&crate::metrics::Metrics::model(&id))
            .inc();
        self.loaded_event.notify_waiters();
        let grown = slot.usage().memory_bytes.unwrap_or(model.weight_bytes);
        let took = slot.remember(&self.governor, precision, grown);
        if took != grown {
            slot.set_memory(took);
        }
        if took > need {
            self.took_more_than_estimated(&id, priority, took, &need_for)
                .await?;
        }
        Ok(model)
    }

    /// The room `slot` needs loaded in `precision`, and at the peak of its load. Room for the
    /// model and for a forward pass over its longest text (hundreds of MiB at 8,192 tokens):
    /// admitted only if both fit, so serving it cannot overrun the budget. While it loads, the
    /// model also holds its weights file as read (f16 ones are widened from it): room is
    /// needed for that peak, not only for what stays.
    fn room_needed(&self, slot: &ModelSlot, precision: crate::engine::Precision) -> (u64, u64) {
        let need = slot.footprint(&self.governor, precision) + slot.longest_pass();
        let weights = slot
            .package
            .manifest
            .files
            .iter()
            .filter(|f| f.path.ends_with(".safetensors"))
            .map(|f| f.size)
            .sum::<u64>();
        (need, need + weights)
    }

    /// Returns once `id` (of `priority`, needing `(need, peak)` bytes) fits, having shed what
    /// must go for a request; the refusal when it does not fit before `deadline` or waiting
    /// cannot help.
    async fn wait_for_room(
        &self,
        id: &str,
        priority: u8,
        (need, peak): (u64, u64),
        deadline: Instant,
        need_for: &Need,
    ) -> Result<(), LoadError> {
        let guess = matches!(need_for, Need::Guess);
        loop {
            let refusal = match self.decide(id, priority, (need, peak), need_for) {
                Ok(victims) if victims.is_empty() => return Ok(()),
                Ok(victims) if guess => policy::Refusal {
                    reason: format!(
                        "loading {id} would shed {} (a prediction never sheds)",
                        victims.join(", ")
                    ),
                    retry_after: self.governor.retry_after(),
                    wait: false,
                    residency: None,
                },
                Ok(victims) => {
                    self.make_room(id, &victims, deadline).await?;
                    // Decide again on what the cgroup now shows.
                    continue;
                }
                Err(r) => r,
            };
            if guess {
                return Err(LoadError::NoMemory {
                    id: id.to_string(),
                    reason: refusal.reason,
                    retry_after: refusal.retry_after,
                    lasting: !refusal.wait,
                });
            }
            // Waiting past the deadline helps nobody, and would hold up the queue behind.
            let now = Instant::now();
            if !refusal.wait || now + RECHECK.max(refusal.retry_after) > deadline {
                return Err(self.refuse(id, refusal.reason, refusal.retry_after, !refusal.wait));
            }
            tokio::time::sleep(RECHECK.min(refusal.retry_after)).await;
        }
    }

    /// The policy's decision on loading `id` now: the models to shed first (none: it fits), or
    /// the refusal. Nothing loads while memory is critical.
    fn decide(
        &self,
        id: &str,
        priority: u8,
        (need, peak): (u64, u64),
        need_for: &Need,
    ) -> Result<Vec<String>, policy::Refusal> {
        if self.governor.critical() {
            let why = self
                .governor
                .pressure()
                .reading
                .map(|r| r.why)
                .unwrap_or_default();
            return Err(policy::Refusal {
                reason: format!(
                    "model {id} cannot be loaded now: memory is critically short ({why}); retry later"
                ),
                retry_after: self.governor.retry_after(),
                wait: true,
                residency: None,
            });
        }
        let mut limits = self.governor.limits();
        // What stays must fit below the pressure threshold; the load's peak only below
        // the critical one (it lasts a fraction of a second).
        let transient = peak.saturating_sub(need) as i64;
        if let (Some((r, _)), Some(p)) = (limits.room.as_mut(), limits.peak_room) {
            *r = (*r).min(p - transient);
        }
        // As the last resort, what stays must fit below the critical threshold less
        // the reserve, and the peak below the hard limit less the reserve.
        if let (Some(r), Some(h)) = (limits.last_resort_room.as_mut(), limits.hard_room) {
            *r = (*r).min(h.saturating_sub(transient));
        }
        limits.alone = match need_for {
            Need::Guess => false,
            Need::Serve(chain) => self.nothing_loaded_of(id, chain),
        };
        policy::admit(
            id,
            priority,
            need,
            &self.residents(),
            &limits,
            self.governor.retry_after(),
        )
    }

    /// After a load of `id` that took `took` bytes, more than its estimate: a prediction
    /// never sheds, not even after the fact, so when it overshot the budget it goes itself;
    /// a request's load sheds lower-value models back within the budget.
    async fn took_more_than_estimated(
        &self,
        id: &str,
        priority: u8,
        took: u64,
        need_for: &Need,
    ) -> Result<(), LoadError> {
        if !matches!(need_for, Need::Guess) {
            self.rebalance(id, priority, took).await;
            return Ok(());
        }
        let budget = self.governor.limits().budget;
        if self.model_memory() <= budget {
            return Ok(());
        }
        let _ = self
            .unload(id, "a prediction took more memory than estimated")
            .await;
        Err(LoadError::NoMemory {
            id: id.to_string(),
            reason: format!(
                "model {id} took {} MiB, more than estimated, past the budget of {} MiB; a prediction never sheds, so it was unloaded again",
                took >> 20,
                budget >> 20
            ),
            retry_after: self.governor.retry_after(),
            lasting: false,
        })
    }

    /// Sheds `victims` for `id` and waits, until `deadline`, for their in-flight requests to
    /// finish and their memory to be freed; a shed is done only then.
    async fn make_room(
        &self,
        id: &str,
        victims: &[String],
        deadline: Instant,
    ) -> Result<(), LoadError> {
        let mut pending = Vec::new();
        for victim in victims {
            let reason = format!("making room for {id}");
            if let Some((_, freed)) = self.shed(victim, &reason, false).await {
                pending.push(freed);
            }
        }
        // Once models are shed for this load, it is seen through even past the request's
        // deadline (this task outlives the request): giving up now would cost the shed
        // models' clients for nothing.
        let until = deadline.max(Instant::now() + SHED_WAIT);
        for mut freed in pending {
            let back = tokio::time::timeout_at(until, freed.wait_for(|&done| done)).await;
            if back.is_err() {
                return Err(self.refuse(
                    id,
                    format!(
                        "model {id} cannot be loaded yet: the models shed to make room for it ({}) still serve in-flight requests after {SHED_WAIT:?}, and their memory is not back; retry shortly",
                        victims.join(", ")
                    ),
                    Duration::from_secs(1),
                    false,
                ));
            }
        }
        Ok(())
    }

    /// After a load that took more than its estimate: sheds lower-value models until model
    /// memory is back within the budget, so an estimate's error does not become an overrun.
    async fn rebalance(&self, id: &str, priority: u8, took: u64) {
        let others: Vec<Resident> = self
            .residents()
            .into_iter()
            .filter(|r| r.id != id)
            .collect();
        let mut limits = self.governor.limits();
        // The room reading already includes the model just loaded.
        limits.room = None;
        match policy::admit(id, priority, took, &others, &limits, Duration::ZERO) {
            Ok(victims) => {
                for victim in victims {
                    let reason = format!("{id} took more memory than estimated");
                    self.shed(&victim, &reason, false).await;
                }
            }
            Err(r) => tracing::warn!(
                caxton_event = "memory_over_budget",
                caxton_model = %id,
                "model {id} took {} MiB, more than estimated, and nothing may be shed for it now: {}",
                took >> 20,
                r.reason
            ),
        }
    }

    /// Unloads `id` to free memory (`pressure`, or room for another model): a `model_shed`
    /// journal line and metric besides the unload's. A shed for a stall signal (`signal`)
    /// also caps model memory at what is left until the episode ends. Returns the bytes that
    /// will come back and the signal that turns `true` once they have.
    pub async fn shed(
        &self,
        id: &str,
        reason: &str,
        signal: bool,
    ) -> Option<(u64, tokio::sync::watch::Receiver<bool>)> {
        self.unload_model(id, Unload::Shed { reason, signal })
            .await
            .ok()
            .flatten()
    }
}
