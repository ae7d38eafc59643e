//! `GET /health` and `GET /api/models`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{AppState, Health};

/// `GET /health`: 200 when serving, 503 while starting or when no model can serve.
pub async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let default = &state.settings.models.default;
    match state.health() {
        Health::Serving => (
            StatusCode::OK,
            Json(
                json!({"status": "ok", "default_model": default, "models": state.registry.ids().len()}),
            ),
        ),
        Health::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        ),
        Health::Unavailable(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": reason})),
        ),
    }
}

/// `GET /api/models`: every verified model and every rejected package.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut data: Vec<Value> = state
        .registry
        .models()
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id,
                "version": m.version,
                "source": m.source,
                "state": m.state,
                "file": m.file,
                "dimensions": m.dimensions,
                "max_seq_length": m.max_seq_length,
                "memory_bytes": m.memory_bytes,
                "last_use": m.last_use.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                "use_count": m.use_count,
            })
        })
        .collect();
    data.extend(state.registry.rejected().into_iter().map(|r| {
        json!({
            "id": null,
            "source": r.source,
            "state": "rejected",
            "file": r.file,
            "reason": r.reason,
            "reason_code": r.kind,
        })
    }));
    Json(json!({"object": "list", "data": data}))
}
