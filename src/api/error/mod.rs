//! The API's errors as HTTP, in exactly one place: what the HTTP layer itself refuses
//! ([`RequestError`]: the request's form, its sender, its route), and the mapping of every
//! layer's error (serving, registry, package, engine) to a status, the stable code and
//! `Retry-After`, answered as the contract's body `{"error": {"message", "type", "code"}}`.
//! Each code is spelled once, in the tables below.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

mod request;

pub use request::RequestError;

use crate::engine::EngineError;
use crate::package::Mismatch;
use crate::registry::{LoadError, ModelError};
use crate::serve::ServeError;

/// Every code the API answers with, each spelled once: the contract's stable names.
pub mod code {
    #![allow(missing_docs)]
    pub const BODY_TIMEOUT: &str = "body_timeout";
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const UNREADABLE_BODY: &str = "unreadable_body";
    pub const INVALID_JSON: &str = "invalid_json";
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const EMPTY_INPUT: &str = "empty_input";
    pub const TOO_MANY_INPUTS: &str = "too_many_inputs";
    pub const INVALID_INPUT: &str = "invalid_input";
    pub const INVALID_ENCODING_FORMAT: &str = "invalid_encoding_format";
    pub const INVALID_EMBEDDING_TYPES: &str = "invalid_embedding_types";
    pub const INVALID_MODEL: &str = "invalid_model";
    pub const INVALID_INPUT_TYPE: &str = "invalid_input_type";
    pub const INVALID_TRUNCATION_DIRECTION: &str = "invalid_truncation_direction";
    pub const INVALID_TOP_N: &str = "invalid_top_n";
    pub const INVALID_TOP_K: &str = "invalid_top_k";
    pub const FORBIDDEN: &str = "forbidden";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const CONFIG_REJECTED: &str = "config_rejected";
    pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const STARTING: &str = "starting";
    pub const MODEL_NOT_FOUND: &str = "model_not_found";
    pub const MODEL_REQUIRED: &str = "model_required";
    pub const WRONG_MODEL_KIND: &str = "wrong_model_kind";
    pub const INVALID_DIMENSIONS: &str = "invalid_dimensions";
    pub const UNKNOWN_PROMPT: &str = "unknown_prompt";
    pub const INSTRUCTION_UNSUPPORTED: &str = "instruction_unsupported";
    pub const INPUT_TOO_LONG: &str = "input_too_long";
    pub const TOKENIZER_ERROR: &str = "tokenizer_error";
    pub const MODEL_LOAD_FAILED: &str = "model_load_failed";
    pub const INSUFFICIENT_MEMORY: &str = "insufficient_memory";
    pub const BUSY: &str = "busy";
    pub const MODEL_UNLOADED: &str = "model_unloaded";
    pub const ENGINE_ERROR: &str = "engine_error";
    pub const INVALID_IMAGE_INPUT: &str = "invalid_image_input";
    pub const IMAGE_TOO_LARGE: &str = "image_too_large";
    pub const IMAGE_TOO_MANY_PIXELS: &str = "image_too_many_pixels";
    pub const UNSUPPORTED_IMAGE_FORMAT: &str = "unsupported_image_format";
    pub const UNDECODABLE_IMAGE: &str = "undecodable_image";
}

/// An error answer: status, stable code, message, and a retry hint for 503s. Made only by the
/// `From` conversions below.
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
    fn new(status: StatusCode, code: &'static str, message: impl ToString) -> Self {
        ApiError {
            status,
            code,
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// 503 with `Retry-After` of `secs` seconds (at least 1).
    fn unavailable(code: &'static str, message: impl ToString, secs: u64) -> Self {
        ApiError {
            retry_after: Some(secs.max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// The OpenAI-style error `type` for the status.
    fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            503 => "unavailable_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        use RequestError::*;
        let (status, code) = match &e {
            TooManyConnections | TcpConnectionsFull { .. } => {
                return ApiError::unavailable(code::TOO_MANY_CONNECTIONS, e, 1);
            }
            BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, code::BODY_TIMEOUT),
            BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, code::BODY_TOO_LARGE),
            UnreadableBody(_) => (StatusCode::BAD_REQUEST, code::UNREADABLE_BODY),
            InvalidJson(_) => (StatusCode::BAD_REQUEST, code::INVALID_JSON),
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, code::INVALID_REQUEST),
            EmptyList(_) | EmptyText(_) | EmptyQuery => {
                (StatusCode::BAD_REQUEST, code::EMPTY_INPUT)
            }
            TooManyInputs { .. } => (StatusCode::PAYLOAD_TOO_LARGE, code::TOO_MANY_INPUTS),
            InvalidInput { .. } => (StatusCode::BAD_REQUEST, code::INVALID_INPUT),
            InvalidEncodingFormat(_) => (StatusCode::BAD_REQUEST, code::INVALID_ENCODING_FORMAT),
            InvalidEmbeddingTypes(_) => (StatusCode::BAD_REQUEST, code::INVALID_EMBEDDING_TYPES),
            EmptyModel => (StatusCode::BAD_REQUEST, code::INVALID_MODEL),
            InvalidInputType(_) => (StatusCode::BAD_REQUEST, code::INVALID_INPUT_TYPE),
            InvalidTruncationDirection(_) => {
                (StatusCode::BAD_REQUEST, code::INVALID_TRUNCATION_DIRECTION)
            }
            ZeroTopN => (StatusCode::BAD_REQUEST, code::INVALID_TOP_N),
            ZeroTopK => (StatusCode::BAD_REQUEST, code::INVALID_TOP_K),
            Forbidden { .. } => (StatusCode::FORBIDDEN, code::FORBIDDEN),
            TokenMissing | TokenWrong | TokenNotSet(_) => {
                (StatusCode::UNAUTHORIZED, code::UNAUTHORIZED)
            }
            ConfigRejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, code::CONFIG_REJECTED),
            NoRoute(_) => (StatusCode::NOT_FOUND, code::NOT_FOUND),
            MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, code::METHOD_NOT_ALLOWED),
            OllamaModelRequired => (StatusCode::BAD_REQUEST, code::MODEL_REQUIRED),
            OllamaUnknownModel(_) | OllamaWrongTag { .. } => {
                (StatusCode::NOT_FOUND, code::MODEL_NOT_FOUND)
            }
            OllamaNotAnEmbedder(_) => (StatusCode::BAD_REQUEST, code::WRONG_MODEL_KIND),
            OllamaInvalidKeepAlive(_) => (StatusCode::BAD_REQUEST, code::INVALID_REQUEST),
            OllamaNotServed { .. } => (StatusCode::NOT_FOUND, code::NOT_FOUND),
        };
        ApiError::new(status, code, e)
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        let (status, code) = match e {
            ServeError::Starting => return ApiError::unavailable(code::STARTING, e, 1),
            ServeError::Model(e) => return e.into(),
            ServeError::Mismatch(e) => return e.into(),
            ServeError::Engine(e) => return e.into(),
            ServeError::Tokenizer(_) => (StatusCode::BAD_REQUEST, code::TOKENIZER_ERROR),
            ServeError::TokenizerCrashed(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, code::TOKENIZER_ERROR)
            }
            ServeError::TooLong { .. }
            | ServeError::PairTooLong { .. }
            | ServeError::SideTooLong { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, code::INPUT_TOO_LONG)
            }
            ServeError::EmptyInstruction => (StatusCode::BAD_REQUEST, code::EMPTY_INPUT),
            ServeError::UnknownTokenId { .. } => (StatusCode::BAD_REQUEST, code::INVALID_INPUT),
            ServeError::NonFinite { .. } => (StatusCode::INTERNAL_SERVER_ERROR, code::ENGINE_ERROR),
            ServeError::Image { ref error, .. } => image_status(error),
            ServeError::NotImageModel { .. } | ServeError::TextDocuments { .. } => {
                (StatusCode::BAD_REQUEST, code::WRONG_MODEL_KIND)
            }
        };
        ApiError::new(status, code, e)
    }
}

/// A refused picture's status and code: a limit is 413, a bad picture 400.
fn image_status(e: &crate::images::ImageError) -> (StatusCode, &'static str) {
    use crate::images::ImageError::*;
    match e {
        NotDataUri(_) | BadDataUri(_) => (StatusCode::BAD_REQUEST, code::INVALID_IMAGE_INPUT),
        TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, code::IMAGE_TOO_LARGE),
        TooManyPixels { .. } => (StatusCode::PAYLOAD_TOO_LARGE, code::IMAGE_TOO_MANY_PIXELS),
        UnknownFormat(_) => (StatusCode::BAD_REQUEST, code::UNSUPPORTED_IMAGE_FORMAT),
        Undecodable { .. } => (StatusCode::BAD_REQUEST, code::UNDECODABLE_IMAGE),
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let (status, code) = match &e {
            ModelError::NotFound { .. }
            | ModelError::DefaultMissing(_)
            | ModelError::NoReranker
            | ModelError::NoSparse
            | ModelError::NoMultiVector
            | ModelError::NoImageText
            | ModelError::Load(LoadError::Unknown(_)) => {
                (StatusCode::NOT_FOUND, code::MODEL_NOT_FOUND)
            }
            ModelError::RerankerRequired(_)
            | ModelError::SparseRequired(_)
            | ModelError::MultiVectorRequired(_)
            | ModelError::ImageTextRequired(_) => (StatusCode::BAD_REQUEST, code::MODEL_REQUIRED),
            ModelError::NotEmbedding(_)
            | ModelError::NotReranker(_)
            | ModelError::WrongKind { .. } => (StatusCode::BAD_REQUEST, code::WRONG_MODEL_KIND),
            ModelError::Mismatch(m) => return m.clone().into(),
            // A failed load's backoff rounds up, memory's wait down (at least 1 s both).
            ModelError::Load(LoadError::Failed { retry_after, .. }) => {
                let secs = retry_after.as_secs_f64().ceil() as u64;
                return ApiError::unavailable(code::MODEL_LOAD_FAILED, e, secs);
            }
            ModelError::Load(LoadError::NoMemory { retry_after, .. })
            | ModelError::HardLimit { retry_after, .. } => {
                let secs = retry_after.as_secs();
                return ApiError::unavailable(code::INSUFFICIENT_MEMORY, e, secs);
            }
            // The requested model's refusal, with the alternatives tried in its message.
            ModelError::Exhausted { error, .. } => {
                return ApiError {
                    message: e.to_string(),
                    ..ApiError::from((**error).clone())
                };
            }
        };
        ApiError::new(status, code, e)
    }
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        ModelError::Load(e).into()
    }
}

impl From<Mismatch> for ApiError {
    fn from(e: Mismatch) -> Self {
        let code = match e {
            Mismatch::WidthOutOfRange { .. } | Mismatch::UntrainedWidth { .. } => {
                code::INVALID_DIMENSIONS
            }
            Mismatch::PromptAndInputType | Mismatch::UnknownPrompt { .. } => code::UNKNOWN_PROMPT,
            Mismatch::NoInstruction { .. } => code::INSTRUCTION_UNSUPPORTED,
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Busy => ApiError::unavailable(
                code::BUSY,
                "the model's queue is full; retry shortly or send fewer concurrent requests",
                1,
            ),
            EngineError::Stopped => ApiError::unavailable(
                code::MODEL_UNLOADED,
                "the model was unloaded while the request waited; retry",
                1,
            ),
            EngineError::Failed(msg) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::ENGINE_ERROR,
                format!("the engine failed: {msg}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(|message, e| {
            json!({"error": {"message": message, "type": e.error_type(), "code": e.code}})
        })
    }
}

impl ApiError {
    /// The answer with the body `body(message, self)` makes (the API's own shape, or another
    /// protocol's, as Ollama's), the status and `Retry-After`, logged as every refusal is.
    pub fn respond(self, body: impl FnOnce(&str, &ApiError) -> serde_json::Value) -> Response {
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
        let body = body(&self.message, &self);
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

macro_rules! into_response {
    ($($t:ty),*) => {$(
        impl IntoResponse for $t {
            fn into_response(self) -> Response {
                ApiError::from(self).into_response()
            }
        }
    )*};
}
into_response!(RequestError, ServeError, ModelError, LoadError);

#[cfg(test)]
mod tests;
