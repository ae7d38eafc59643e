//! The headers an answer carries besides its body: who served a substituted request
//! (`X-Caxton-Served-By`, `X-Caxton-Fallback`) and which inputs were cut
//! (`X-Caxton-Truncated`).

use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::registry::fallback::Reason;
use crate::serve::{Embedded, Reranked, TokenVectors, Weighted};

/// `X-Caxton-Served-By`: the model that answered a substituted request.
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-caxton-served-by");
/// `X-Caxton-Fallback`: why the requested model did not.
pub const FALLBACK: HeaderName = HeaderName::from_static("x-caxton-fallback");
/// `X-Caxton-Truncated`: the indices of the inputs cut at the model's length, when any was.
pub const TRUNCATED: HeaderName = HeaderName::from_static("x-caxton-truncated");

/// `body` with the headers of an embedding answer.
pub fn embedded(body: impl IntoResponse, out: &Embedded) -> Response {
    answered(body, &out.model, out.fallback, &out.truncated)
}

/// `body` with the headers of a term-weights answer.
pub fn weighted(body: impl IntoResponse, out: &Weighted) -> Response {
    answered(body, &out.model, out.fallback, &out.truncated)
}

/// `body` with the headers of a token-vectors answer.
pub fn token_vectors(body: impl IntoResponse, out: &TokenVectors) -> Response {
    answered(body, &out.model, out.fallback, &out.truncated)
}

/// `body` with the headers of a rerank answer.
pub fn reranked(body: impl IntoResponse, out: &Reranked) -> Response {
    answered(body, &out.model, out.fallback, &out.truncated)
}

/// `body` with the substitution headers when `fallback` is set (`model` answered instead),
/// and [`TRUNCATED`] when any input was cut.
fn answered(
    body: impl IntoResponse,
    model: &str,
    fallback: Option<Reason>,
    truncated: &[usize],
) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    if let (Some(reason), Ok(value)) = (fallback, HeaderValue::from_str(model)) {
        h.insert(SERVED_BY, value);
        h.insert(FALLBACK, HeaderValue::from_static(reason.as_str()));
    }
    if !truncated.is_empty() {
        let list: Vec<String> = truncated.iter().map(usize::to_string).collect();
        if let Ok(v) = HeaderValue::from_str(&list.join(",")) {
            h.insert(TRUNCATED, v);
        }
    }
    response
}
