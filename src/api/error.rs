//! The API's one error type, mapped to an HTTP status and the contract's error body
//! `{"error": {"message", "type", "code"}}` in exactly one place.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::EngineError;
use crate::registry::LoadError;

/// An error answer: status, stable code, message, and a retry hint for 503s.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (also the journal and metrics label).
    pub code: &'static str,
    /// What happened, to what, and what to do.
    pub message: String,
    /// Seconds for `Retry-After` on 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 413: too many or too long inputs, or too large a body.
    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// Any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The OpenAI-style error `type` for the status.
    fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            403 => "permission_error",
            404 => "not_found_error",
            503 => "unavailable_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // 503s (starting, busy) are expected back-pressure; only real failures are warnings.
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(
                caxton_event = "request_failed",
                caxton_reason = self.code,
                "{}",
                self.message
            );
        } else {
            tracing::debug!(
                caxton_event = "request_refused",
                caxton_reason = self.code,
                "{}",
                self.message
            );
        }
        let body = json!({"error": {"message": self.message, "type": self.error_type(), "code": self.code}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Unknown(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "model_not_found", e.to_string())
            }
            LoadError::Failed { retry_after, .. } => ApiError::unavailable(
                "model_load_failed",
                format!(
                    "{e}; see the daemon's journal (CAXTON_EVENT=model_load_failed), then replace the package"
                ),
                retry_after.as_secs_f64().ceil().max(1.0) as u64,
            ),
            LoadError::NoMemory {
                reason,
                retry_after,
                ..
            } => ApiError::unavailable("insufficient_memory", reason, retry_after.as_secs().max(1)),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Busy => ApiError::unavailable(
                "busy",
                "the model's queue is full; retry shortly or send fewer concurrent requests",
                1,
            ),
            EngineError::Stopped => ApiError::unavailable(
                "model_unloaded",
                "the model was unloaded while the request waited; retry",
                1,
            ),
            EngineError::Failed(msg) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "engine_error",
                format!("the engine failed: {msg}"),
            ),
        }
    }
}
