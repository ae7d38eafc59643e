//! The HTTP API over the Unix socket: routes, and errors as HTTP. Handlers never touch
//! candle; they talk to the registry and to engine threads through channels.

mod cohere;
mod embed;
pub mod error;
mod fallback;
mod input;
mod memory;
mod openai;
pub mod peer;
mod rerank;
mod status;
mod tei;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::state::{AppState, Health};
pub use error::ApiError;

/// 503 while the daemon starts (verifies its packages); the embedding endpoints call it first.
fn check_serving(state: &AppState) -> Result<(), ApiError> {
    match state.health() {
        Health::Starting => Err(ApiError::unavailable(
            "starting",
            "caxtond is starting (verifying model packages); retry in a moment",
            1,
        )),
        _ => Ok(()),
    }
}

/// The slot of model `id` for a request that needs a model of `kind`: 404 naming the models
/// there are when none has the id, 400 when it is of the other kind.
fn model_slot(
    state: &AppState,
    id: &str,
    kind: crate::package::ModelKind,
) -> Result<Arc<crate::registry::ModelSlot>, ApiError> {
    use crate::package::ModelKind;
    let Some(slot) = state.registry.get(id) else {
        let known = state.registry.ids();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "model {id:?} not found; available: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    };
    match (slot.package.manifest.kind, kind) {
        (ModelKind::Reranker, ModelKind::Embedding) => Err(ApiError::bad_request(
            "wrong_model_kind",
            format!(
                "model {id} is a reranker (a cross-encoder that scores query–document pairs), not an embedding model; send it to POST /rerank or POST /v1/rerank, or name an embedding model"
            ),
        )),
        (ModelKind::Embedding, ModelKind::Reranker) => Err(ApiError::bad_request(
            "wrong_model_kind",
            format!(
                "model {id} is an embedding model, not a reranker; send it to POST /v1/embeddings or POST /embed, or name a reranker (a cross-encoder package)"
            ),
        )),
        _ => Ok(slot),
    }
}

/// The router with every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    let routes = Router::new()
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/embed", post(tei::embed_handler))
        .route("/tokenize", post(tei::tokenize))
        .route("/rerank", post(tei::rerank))
        .route("/v1/rerank", post(cohere::rerank))
        .route("/v2/rerank", post(cohere::rerank))
        .route("/info", get(tei::info))
        .route("/health", get(status::health))
        .route("/api/status", get(status::daemon))
        .route("/api/models", get(status::models))
        .route("/api/reload", post(status::reload))
        .route("/api/memory/status", get(memory::status))
        .route("/api/memory/flush", post(memory::flush))
        .route("/api/memory/models/{id}/load", post(memory::load))
        .route(
            "/api/memory/models/{id}",
            axum::routing::delete(memory::unload),
        )
        .route("/metrics", get(metrics));
    // The limit is live configuration, enforced by `input::read_body`.
    finish(routes)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// The router of the TCP listener a fleet's Prometheus scrapes (`metrics.listen`,
/// `caxton-metrics.socket`): `GET /metrics` and `GET /health`, and 404 for every other path,
/// so nothing that embeds, loads or configures is reachable from the network.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    let routes = Router::new()
        .route("/health", get(status::health))
        .route("/metrics", get(metrics));
    finish(routes).with_state(state)
}

/// What every router shares: requests counted and timed, and JSON errors for unknown paths
/// and methods.
fn finish(routes: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    routes
        .route_layer(axum::middleware::from_fn(count_requests))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::get().encode(),
    )
}

tokio::task_local! {
    /// The model a request is for, once its handler knows it: the duration metric's label.
    static SERVED_BY: std::cell::RefCell<String>;
}

/// Records that the request being handled is for model `id`.
fn served_by(id: &str) {
    let _ = SERVED_BY.try_with(|m| *m.borrow_mut() = id.to_string());
}

/// Counts every routed request by its route template and status, and times it by route and
/// model.
async fn count_requests(
    matched: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let endpoint = matched.as_str().to_string();
    let started = std::time::Instant::now();
    let (model, response) = SERVED_BY
        .scope(std::cell::RefCell::new(String::new()), async {
            let response = next.run(request).await;
            (SERVED_BY.with(|m| m.take()), response)
        })
        .await;
    let metrics = crate::metrics::get();
    metrics
        .request_duration
        .get_or_create(&crate::metrics::EndpointModelLabels {
            endpoint: endpoint.clone(),
            model,
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            endpoint,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint at {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
