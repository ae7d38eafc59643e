//! The API over TCP (`api.listen`, `caxton-api.socket`): the endpoints it serves (embedding,
//! rerank, tokenize, Ollama's; never the admin ones, which rely on the Unix socket's peer
//! credentials), the bearer token every request there must carry, and the connection limits
//! it shares with the Unix socket.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{RequestError, ollama};
use crate::state::AppState;
use crate::tcp_listeners::LocalAddress;

/// The router of the API's TCP listeners: what a client of the embedding APIs calls, behind
/// the token check; every other path (the admin endpoints, `/metrics`) is 404 here.
pub fn tcp_router(state: Arc<AppState>) -> Router {
    let routes = super::ollama_routes(super::client_routes());
    super::finish(routes)
        // Outside the routes, so an unknown path asks for the token too: without it a client
        // learns nothing about what is served.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_token,
        ))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// The answer to a connection past a TCP listener's bound (`listener`'s address, `max`
/// connections open).
pub fn tcp_refusal(listener: SocketAddr, max: usize) -> Response {
    RequestError::TcpConnectionsFull {
        listener: listener.to_string(),
        max,
    }
    .into_response()
}

/// Why a listener on `address` refuses every request (off loopback, and no token set).
pub fn tokenless(state: &AppState, address: SocketAddr) -> Option<String> {
    (state.settings().api.token.is_none() && !address.ip().is_loopback())
        .then(|| RequestError::TokenNotSet(address.to_string()).to_string())
}

/// Lets a request through when it carries the token of `api.token_file` (compared in
/// constant time), or when no token is set and it came in on loopback; else 401 with
/// `WWW-Authenticate`, in Ollama's error shape on Ollama's paths.
async fn check_token(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let local = request.extensions().get::<LocalAddress>().map(|a| a.0);
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| bearer(v.as_bytes()));
    let refusal = {
        let settings = state.settings();
        match (&settings.api.token, presented) {
            (Some(token), Some(Some(sent))) if token.matches(sent) => None,
            (Some(_), Some(_)) => Some(RequestError::TokenWrong),
            (Some(_), None) => Some(RequestError::TokenMissing),
            (None, _) => match local {
                Some(a) if !a.ip().is_loopback() => Some(RequestError::TokenNotSet(a.to_string())),
                _ => None,
            },
        }
    };
    let Some(refusal) = refusal else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let mut response = if ollama::is_ollama_path(path) {
        ollama::OllamaError::from(refusal).into_response()
    } else {
        refusal.into_response()
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"caxton\""),
    );
    response
}

/// The token of an `Authorization` value: `Bearer TOKEN` (the scheme in any case, as RFC 9110
/// says); `None` for another scheme, which is answered as a wrong token.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b""), None);
    }
}
