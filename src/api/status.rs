//! `GET /health`, `GET /api/status` and `GET /api/models`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::peer::Peer;
use super::{ApiError, RequestError};
use crate::state::{AppState, Health, Trigger};

/// `GET /health`: 200 when serving, 503 while starting or when no model can serve.
pub async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let settings = state.settings();
    let default = &settings.models.default;
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

/// `GET /api/status`: the daemon's state in a line (systemd's `STATUS=`), the TCP listeners
/// serving metrics (none unless `metrics.listen` or `caxton-metrics.socket` asks) and those
/// serving the API (`api.listen`, `caxton-api.socket`): whether they ask for a token, and
/// why one refuses every request (off loopback with no token set).
pub async fn daemon(State(state): State<Arc<AppState>>) -> Json<Value> {
    let api: Vec<Value> = state
        .api_listeners
        .endpoints()
        .into_iter()
        .map(|e| {
            let refuses = super::tokenless(&state, e.address);
            let mut v = json!(e);
            if let Some(reason) = refuses {
                v["refuses"] = json!(reason);
            }
            v
        })
        .collect();
    Json(json!({
        "status": state.status_line(),
        "metrics_listeners": state.metrics_listeners.endpoints(),
        "api_listeners": api,
        "api_token": state.settings().api.token.is_some(),
    }))
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
                "kind": m.kind,
                "activation": m.activation,
                "outputs": m.outputs,
                "dimensions": m.dimensions,
                "max_seq_length": m.max_seq_length,
                "memory_bytes": m.memory_bytes,
                "expected_memory_bytes": m.expected_bytes,
                "longest_pass_bytes": m.longest_pass_bytes,
                "priority": m.priority,
                "pinned": m.pinned,
                "preload": m.preload,
                "preloaded_by": m.preloaded_by,
                "precision": m.precision,
                "loaded_precision": m.loaded_precision,
                "kernel": m.kernel,
                "last_use": unix_secs(m.last_use),
                "use_count": m.use_count,
                "tokens": m.tokens,
                "failure": m.failure.as_ref().map(failure_json),
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

/// A failed load as the status endpoints report it.
pub fn failure_json(f: &crate::registry::FailureInfo) -> Value {
    json!({
        "reason": f.reason,
        "reason_code": f.reason_code,
        "at": unix_secs(Some(f.at)),
        "attempts": f.attempts,
        "retry_at": unix_secs(Some(f.retry_at)),
    })
}

/// A time as whole seconds since the Unix epoch, as every endpoint reports times.
pub fn unix_secs(t: Option<std::time::SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

/// `POST /api/reload` (admin): re-reads the configuration directory and answers once the new
/// configuration is applied (200 with what changed) or refused (422 `config_rejected`; the old
/// one stays in force).
pub async fn reload(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &peer, "POST /api/reload")?;
    let outcome = state.reload(Trigger::Api).await;
    if outcome.applied {
        Ok(Json(serde_json::to_value(&outcome).unwrap_or(Value::Null)))
    } else {
        Err(RequestError::ConfigRejected(outcome.message).into())
    }
}

/// 403 unless the peer is an admin (root, the daemon's user, or in `socket.admin_group`).
pub fn require_admin(
    state: &AppState,
    peer: &Peer,
    what: &'static str,
) -> Result<(), RequestError> {
    if peer.is_admin(&state.settings()) {
        return Ok(());
    }
    Err(RequestError::Forbidden {
        what,
        uid: peer.uid,
    })
}
