//! Memory management endpoints: `GET /api/memory/status` (the budget, the binding limit and
//! its room, pressure, loads and the load queue), and the admin-only
//! `POST /api/memory/models/{id}/load`, `DELETE /api/memory/models/{id}` and
//! `POST /api/memory/flush`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use serde_json::{Value, json};

use super::ApiError;
use super::peer::Peer;
use super::status::{failure_json, require_admin, unix_secs};
use crate::state::AppState;

/// `GET /api/memory/status`: model memory, the process and its cgroup, loaded models.
pub async fn status(State(state): State<Arc<AppState>>) -> Json<Value> {
    let models = state.registry.models();
    let memory_settings = state.registry.governor.settings();
    let loaded: Vec<Value> = models
        .iter()
        .filter(|m| m.state == crate::registry::ModelState::Loaded)
        .map(|m| {
            // When the monitor unloads it for idleness, if nobody uses it before (it looks
            // every few seconds, so a little after); never for pinned models.
            let expires_at = match memory_settings.idle_limit(&m.id) {
                Some(limit) if !m.pinned => m.idle_since.map(|t| t + limit),
                _ => None,
            };
            json!({
                "id": m.id,
                "memory_bytes": m.memory_bytes,
                "priority": m.priority,
                "pinned": m.pinned,
                "last_use": unix_secs(m.last_use),
                "use_count": m.use_count,
                "expires_at": unix_secs(expires_at),
            })
        })
        .collect();
    let failed: Vec<Value> = models
        .iter()
        .filter_map(|m| {
            let mut failure = failure_json(m.failure.as_ref()?);
            failure["id"] = json!(m.id);
            Some(failure)
        })
        .collect();
    let in_use: u64 = models.iter().filter_map(|m| m.memory_bytes).sum();
    let (rss, peak) = crate::memory::process_rss();
    let heap = crate::memory::heap_usage();
    let gov = &state.registry.governor;
    let budget = gov.budget();
    let settings = gov.settings();
    let (loads, loads_minute) = gov.queue.loads();
    let (waiting, queue_refused) = gov.queue.counts();
    let releasing: Vec<Value> = gov
        .releasing
        .models()
        .into_iter()
        .map(|(id, bytes)| json!({"id": id, "bytes": bytes}))
        .collect();
    let levels = crate::memory::hierarchy::read(&crate::memory::hierarchy::Paths::system());
    let report = crate::memory::hierarchy::Report::of(&levels, gov.thresholds(&settings));
    let app_settings = state.settings();
    let (dir, bound) = (app_settings.state_dir.clone(), app_settings.store.max_size);
    // A walk of the store's directories: off the async workers.
    let store = tokio::task::spawn_blocking(move || crate::package::Store::usage(&dir, bound))
        .await
        .ok();
    Json(json!({
        "budget_bytes": budget.bytes,
        "budget_from": budget.from,
        "max_loaded_models": settings.max_loaded_models,
        "limit": report.limit,
        "levels": levels,
        "pressure": gov.pressure(),
        "models_shed": gov.sheds(),
        "model_memory_bytes": in_use,
        "releasing": releasing,
        "loads": {"total": loads, "last_minute": loads_minute},
        "load_queue": {"waiting": waiting, "refused": queue_refused, "admitting": gov.queue.admitting()},
        "process": {
            "rss_bytes": rss,
            "peak_rss_bytes": peak,
            "heap_in_use_bytes": heap.map(|h| h.0),
            "heap_free_bytes": heap.map(|h| h.1),
            "heap_thread_cache_count": crate::memory::thread_cache_count(),
            "weights_mapped_bytes": crate::memory::mapped::mapped_bytes(),
        },
        "available": report.available,
        "cgroup": crate::memory::cgroup::current(),
        "store": store,
        "loaded": loaded,
        "failed": failed,
    }))
}

/// `POST /api/memory/models/{id}/load` (admin): loads the model now.
pub async fn load(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &peer, "POST /api/memory/models/{id}/load")?;
    // An operator's explicit load is tried now, whatever the backoff of a failed one says.
    state.registry.retry_now(&id);
    let model = state.registry.acquire(&id).await?;
    // Only once it exists: an unknown id must not become a metric label.
    crate::serve::served_by(&id);
    state.report_status();
    Ok(Json(json!({
        "id": id,
        "state": "loaded",
        "memory_bytes": model.weight_bytes,
        "load_ms": model.load_time.as_millis() as u64,
    })))
}

/// `DELETE /api/memory/models/{id}` (admin): unloads the model now; the package stays.
pub async fn unload(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &peer, "DELETE /api/memory/models/{id}")?;
    let released = state.registry.unload(&id, "explicit").await?;
    state.report_status();
    Ok(Json(json!({
        "id": id,
        "unloaded": released.is_some(),
        "bytes_released": released.unwrap_or(0),
    })))
}

/// `POST /api/memory/flush` (admin): unloads every loaded model that is not pinned.
pub async fn flush(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &peer, "POST /api/memory/flush")?;
    let flushed = state.registry.flush().await?;
    state.report_status();
    let unloaded: Vec<Value> = flushed
        .unloaded
        .iter()
        .map(|(id, b)| json!({"id": id, "bytes_released": b}))
        .collect();
    let bytes: u64 = flushed.unloaded.iter().map(|(_, b)| b).sum();
    Ok(Json(
        json!({"unloaded": unloaded, "bytes_released": bytes, "kept_pinned": flushed.kept_pinned}),
    ))
}
