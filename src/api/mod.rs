//! The HTTP API over the Unix socket (and, in part, over TCP: `tcp`): routes, request parsing, answers and errors as HTTP.
//! A handler parses its request, makes one call to the serving path (`serve`) or the layer
//! that owns what it asks about, and formats the result; the domain is never decided here.

mod answer;
mod at_once;
mod cohere;
mod compact;
pub mod error;
mod input;
mod memory;
mod ollama;
mod openai;
pub mod peer;
mod status;
mod tcp;
mod tei;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};

use crate::state::AppState;
pub use error::{ApiError, RequestError};
pub use tcp::{tcp_refusal, tcp_router, tokenless};

/// The router with every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    let routes = client_routes()
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
    let routes = ollama_routes(routes);
    // The limit is live configuration, enforced by `input::read_body`.
    finish(routes)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// What a client of the embedding APIs calls (the TCP listener serves these and Ollama's):
/// embeddings, rerank, tokenize and decode, the model list, TEI's info and health.
fn client_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/embed", post(tei::embed_handler))
        .route("/embed_sparse", post(tei::embed_sparse))
        .route("/embed_all", post(tei::embed_all))
        .route("/tokenize", post(tei::tokenize))
        .route("/decode", post(tei::decode))
        .route("/rerank", post(tei::rerank))
        .route("/v1/rerank", post(cohere::rerank))
        .route("/v2/rerank", post(cohere::rerank))
        .route("/v2/embed", post(cohere::embed))
        .route("/info", get(tei::info))
        .route("/health", get(status::health))
}

/// Ollama's embedding API (its `get`s answer HEAD too, as Ollama's `HEAD /`), and the 404 that
/// says why on the paths of Ollama's this daemon has no use for.
fn ollama_routes(routes: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    let routes = routes
        .route("/api/embed", post(ollama::embed_handler))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/version", get(ollama::version))
        .route("/", get(ollama::root));
    ollama::NOT_SERVED
        .iter()
        .fold(routes, |r, (path, _)| r.route(path, any(ollama::not_here)))
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

/// Counts every routed request by its route template and status, and times it by route and
/// model.
async fn count_requests(
    matched: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let endpoint = matched.as_str().to_string();
    let started = std::time::Instant::now();
    let (model, response) = crate::serve::labelled(next.run(request)).await;
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

async fn not_found(uri: axum::http::Uri) -> RequestError {
    RequestError::NoRoute(uri.path().to_string())
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> RequestError {
    RequestError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}
