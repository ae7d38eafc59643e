//! The API's errors as HTTP, in exactly one place: what the HTTP layer itself refuses
//! ([`RequestError`]: the request's form, its sender, its route), and the mapping of every
//! layer's error (serving, registry, package, engine) to a status, the stable code and
//! `Retry-After`, answered as the contract's body `{"error": {"message", "type", "code"}}`.
//! Each code is spelled once, in the tables below.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::EngineError;
use crate::package::Mismatch;
use crate::registry::{LoadError, ModelError};
use crate::serve::ServeError;

/// What the HTTP layer refuses before anything is served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// The body did not arrive in time.
    #[error(
        "the request body did not arrive within {0} (limits.body_timeout); send the whole body at once"
    )]
    BodyTimeout(String),
    /// The body is over `limits.max_body_bytes`.
    #[error(
        "the request body is larger than {0} bytes (limits.max_body_bytes); send fewer or shorter texts per request"
    )]
    BodyTooLarge(u64),
    /// The body could not be read.
    #[error("cannot read the request body: {0}")]
    UnreadableBody(String),
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is JSON of the wrong shape.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// An input list with nothing in it.
    #[error("`{0}` is an empty list; send at least one text")]
    EmptyList(String),
    /// A text that is empty or only whitespace (`place` names it).
    #[error("`{0}` is empty or only whitespace; send text to embed")]
    EmptyText(String),
    /// A blank rerank query.
    #[error("`query` is empty or only whitespace; send the text to rank the documents against")]
    EmptyQuery,
    /// More inputs than `limits.max_inputs`.
    #[error(
        "`{field}` has {count} texts; at most {max} are allowed per request (limits.max_inputs); split the request"
    )]
    TooManyInputs {
        /// The input field.
        field: String,
        /// How many it has.
        count: usize,
        /// `limits.max_inputs`.
        max: usize,
    },
    /// An input that is not text (`place`, and what was wrong with it).
    #[error("`{place}` {problem}")]
    InvalidInput {
        /// The field (and index) concerned.
        place: String,
        /// What it is instead, and what to send.
        problem: String,
    },
    /// `encoding_format` other than `float` or `base64`.
    #[error("encoding_format {0:?} is not supported; use \"float\" or \"base64\"")]
    InvalidEncodingFormat(String),
    /// `model: ""`.
    #[error("`model` is empty; name a model or leave it out")]
    EmptyModel,
    /// `input_type` other than `query` or `document`.
    #[error(
        "`input_type` is {0}; it must be \"query\" (a search query) or \"document\" (a text searched for)"
    )]
    InvalidInputType(String),
    /// `truncation_direction` other than `Right` or `Left`.
    #[error(
        "`truncation_direction` is {0}; it must be \"Right\" (cut the end of an over-long text, the default) or \"Left\" (cut its start)"
    )]
    InvalidTruncationDirection(String),
    /// `top_n: 0`.
    #[error("`top_n` is 0; ask for at least 1 result (or leave it out for all)")]
    ZeroTopN,
    /// An admin endpoint asked by someone else.
    #[error(
        "{what} is for administrators; uid {uid} is not root, the daemon's user, or in socket.admin_group"
    )]
    Forbidden {
        /// The endpoint.
        what: &'static str,
        /// The peer's uid.
        uid: u32,
    },
    /// `POST /api/reload` with a configuration that was refused.
    #[error("configuration refused, the running configuration stays: {0}")]
    ConfigRejected(String),
    /// A connection over `limits.max_connections` when none can be closed for it.
    #[error(
        "every connection the daemon keeps open (limits.max_connections) has a request under way; retry shortly, or raise limits.max_connections"
    )]
    TooManyConnections,
    /// No route at this path.
    #[error("no endpoint at {0}")]
    NoRoute(String),
    /// The route exists, not with this method.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
    },
}

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
    pub const INVALID_MODEL: &str = "invalid_model";
    pub const INVALID_INPUT_TYPE: &str = "invalid_input_type";
    pub const INVALID_TRUNCATION_DIRECTION: &str = "invalid_truncation_direction";
    pub const INVALID_TOP_N: &str = "invalid_top_n";
    pub const FORBIDDEN: &str = "forbidden";
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
            TooManyConnections => return ApiError::unavailable(code::TOO_MANY_CONNECTIONS, e, 1),
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
            EmptyModel => (StatusCode::BAD_REQUEST, code::INVALID_MODEL),
            InvalidInputType(_) => (StatusCode::BAD_REQUEST, code::INVALID_INPUT_TYPE),
            InvalidTruncationDirection(_) => {
                (StatusCode::BAD_REQUEST, code::INVALID_TRUNCATION_DIRECTION)
            }
            ZeroTopN => (StatusCode::BAD_REQUEST, code::INVALID_TOP_N),
            Forbidden { .. } => (StatusCode::FORBIDDEN, code::FORBIDDEN),
            ConfigRejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, code::CONFIG_REJECTED),
            NoRoute(_) => (StatusCode::NOT_FOUND, code::NOT_FOUND),
            MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, code::METHOD_NOT_ALLOWED),
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
            ServeError::TooLong { .. } | ServeError::PairTooLong { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, code::INPUT_TOO_LONG)
            }
            ServeError::EmptyInstruction => (StatusCode::BAD_REQUEST, code::EMPTY_INPUT),
            ServeError::NonFinite { .. } => (StatusCode::INTERNAL_SERVER_ERROR, code::ENGINE_ERROR),
        };
        ApiError::new(status, code, e)
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let (status, code) = match &e {
            ModelError::NotFound { .. }
            | ModelError::DefaultMissing(_)
            | ModelError::NoReranker
            | ModelError::Load(LoadError::Unknown(_)) => {
                (StatusCode::NOT_FOUND, code::MODEL_NOT_FOUND)
            }
            ModelError::RerankerRequired(_) => (StatusCode::BAD_REQUEST, code::MODEL_REQUIRED),
            ModelError::NotEmbedding(_) | ModelError::NotReranker(_) => {
                (StatusCode::BAD_REQUEST, code::WRONG_MODEL_KIND)
            }
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
mod tests {
    use std::time::Duration;

    use super::*;

    fn id() -> String {
        "m".to_string()
    }

    /// Every code the API can answer with, its status and `Retry-After`, one example of each
    /// error of every layer: the contract's table, which a change of mapping must change here.
    #[test]
    fn every_error_has_its_status_and_code() {
        let secs = Duration::from_millis(2_500);
        let load_failed = LoadError::Failed {
            id: id(),
            reason: "bad weights".into(),
            retry_after: secs,
        };
        let no_memory = LoadError::NoMemory {
            id: id(),
            reason: "no room".into(),
            retry_after: secs,
            lasting: false,
        };
        let width = Mismatch::WidthOutOfRange {
            id: id(),
            max: 4,
            asked: 0,
        };
        let table: Vec<(ApiError, u16, &str, Option<u64>)> = vec![
            (
                RequestError::BodyTimeout("5s".into()).into(),
                408,
                "body_timeout",
                None,
            ),
            (
                RequestError::BodyTooLarge(8).into(),
                413,
                "body_too_large",
                None,
            ),
            (
                RequestError::UnreadableBody("x".into()).into(),
                400,
                "unreadable_body",
                None,
            ),
            (
                RequestError::InvalidJson("x".into()).into(),
                400,
                "invalid_json",
                None,
            ),
            (
                RequestError::InvalidRequest("x".into()).into(),
                400,
                "invalid_request",
                None,
            ),
            (
                RequestError::EmptyList("input".into()).into(),
                400,
                "empty_input",
                None,
            ),
            (
                RequestError::EmptyText("input".into()).into(),
                400,
                "empty_input",
                None,
            ),
            (RequestError::EmptyQuery.into(), 400, "empty_input", None),
            (
                ServeError::EmptyInstruction.into(),
                400,
                "empty_input",
                None,
            ),
            (
                RequestError::TooManyInputs {
                    field: "input".into(),
                    count: 5,
                    max: 4,
                }
                .into(),
                413,
                "too_many_inputs",
                None,
            ),
            (
                RequestError::InvalidInput {
                    place: "input[0]".into(),
                    problem: "is a number".into(),
                }
                .into(),
                400,
                "invalid_input",
                None,
            ),
            (
                RequestError::InvalidEncodingFormat("hex".into()).into(),
                400,
                "invalid_encoding_format",
                None,
            ),
            (RequestError::EmptyModel.into(), 400, "invalid_model", None),
            (
                RequestError::InvalidInputType("1".into()).into(),
                400,
                "invalid_input_type",
                None,
            ),
            (
                RequestError::InvalidTruncationDirection("1".into()).into(),
                400,
                "invalid_truncation_direction",
                None,
            ),
            (RequestError::ZeroTopN.into(), 400, "invalid_top_n", None),
            (
                RequestError::Forbidden {
                    what: "POST /api/reload",
                    uid: 1000,
                }
                .into(),
                403,
                "forbidden",
                None,
            ),
            (
                RequestError::ConfigRejected("x".into()).into(),
                422,
                "config_rejected",
                None,
            ),
            (
                RequestError::TooManyConnections.into(),
                503,
                "too_many_connections",
                Some(1),
            ),
            (
                RequestError::NoRoute("/x".into()).into(),
                404,
                "not_found",
                None,
            ),
            (
                RequestError::MethodNotAllowed {
                    method: "GET".into(),
                    path: "/x".into(),
                }
                .into(),
                405,
                "method_not_allowed",
                None,
            ),
            (ServeError::Starting.into(), 503, "starting", Some(1)),
            (
                ModelError::NotFound {
                    id: id(),
                    known: vec![],
                }
                .into(),
                404,
                "model_not_found",
                None,
            ),
            (
                ModelError::DefaultMissing(id()).into(),
                404,
                "model_not_found",
                None,
            ),
            (ModelError::NoReranker.into(), 404, "model_not_found", None),
            (
                LoadError::Unknown(id()).into(),
                404,
                "model_not_found",
                None,
            ),
            (
                ModelError::RerankerRequired(vec![id(), id()]).into(),
                400,
                "model_required",
                None,
            ),
            (
                ModelError::NotEmbedding(id()).into(),
                400,
                "wrong_model_kind",
                None,
            ),
            (
                ModelError::NotReranker(id()).into(),
                400,
                "wrong_model_kind",
                None,
            ),
            (width.clone().into(), 400, "invalid_dimensions", None),
            (
                Mismatch::UntrainedWidth {
                    id: id(),
                    trained: "128".into(),
                    asked: 5,
                }
                .into(),
                400,
                "invalid_dimensions",
                None,
            ),
            (
                Mismatch::PromptAndInputType.into(),
                400,
                "unknown_prompt",
                None,
            ),
            (
                Mismatch::UnknownPrompt {
                    id: id(),
                    name: "q".into(),
                    known: vec![],
                }
                .into(),
                400,
                "unknown_prompt",
                None,
            ),
            (
                Mismatch::NoInstruction { id: id() }.into(),
                400,
                "instruction_unsupported",
                None,
            ),
            (
                ServeError::TooLong {
                    index: 0,
                    max: 256,
                    id: id(),
                }
                .into(),
                413,
                "input_too_long",
                None,
            ),
            (
                ServeError::PairTooLong {
                    field: "texts",
                    index: 0,
                    max: 512,
                    id: id(),
                }
                .into(),
                413,
                "input_too_long",
                None,
            ),
            (
                ServeError::Tokenizer("x".into()).into(),
                400,
                "tokenizer_error",
                None,
            ),
            (
                ServeError::TokenizerCrashed("x".into()).into(),
                500,
                "tokenizer_error",
                None,
            ),
            // A failed load's backoff rounds up; memory's wait rounds down, at least 1 s.
            (
                load_failed.clone().into(),
                503,
                "model_load_failed",
                Some(3),
            ),
            (
                no_memory.clone().into(),
                503,
                "insufficient_memory",
                Some(2),
            ),
            (
                ModelError::HardLimit {
                    id: id(),
                    retry_after: Duration::from_millis(300),
                }
                .into(),
                503,
                "insufficient_memory",
                Some(1),
            ),
            (EngineError::Busy.into(), 503, "busy", Some(1)),
            (EngineError::Stopped.into(), 503, "model_unloaded", Some(1)),
            (
                EngineError::Failed("x".into()).into(),
                500,
                "engine_error",
                None,
            ),
            (
                ServeError::NonFinite {
                    id: id(),
                    field: "texts",
                    index: 0,
                    value: f32::NAN,
                }
                .into(),
                500,
                "engine_error",
                None,
            ),
            // Wrapped errors keep their own code; an exhausted chain answers the requested
            // model's, with the alternatives in its message.
            (
                ServeError::from(EngineError::Busy).into(),
                503,
                "busy",
                Some(1),
            ),
            (
                ServeError::from(width).into(),
                400,
                "invalid_dimensions",
                None,
            ),
            (
                ModelError::Exhausted {
                    error: Box::new(no_memory.into()),
                    strategy: "auto",
                    tried: "b (not installed)".into(),
                }
                .into(),
                503,
                "insufficient_memory",
                Some(2),
            ),
        ];
        for (e, status, code, retry) in &table {
            assert_eq!(
                (e.status.as_u16(), e.code, e.retry_after),
                (*status, *code, *retry),
                "{}",
                e.message
            );
        }
        let codes: std::collections::BTreeSet<&str> = table.iter().map(|t| t.2).collect();
        assert_eq!(codes.len(), 32, "a code without its row: {codes:?}");
    }

    #[test]
    fn messages_say_what_happened_and_what_to_do() {
        let e = ApiError::from(ModelError::Exhausted {
            error: Box::new(ModelError::NotFound {
                id: "a".into(),
                known: vec!["b".into(), "c".into()],
            }),
            strategy: "listed",
            tried: "b (a reranker); c (not installed)".into(),
        });
        assert_eq!(
            e.message,
            "model \"a\" not found; available: b, c; alternatives tried (models.fallback_strategy listed): b (a reranker); c (not installed)"
        );
        let e = ApiError::from(LoadError::Failed {
            id: "m".into(),
            reason: "bad weights".into(),
            retry_after: Duration::from_secs(1),
        });
        assert_eq!(
            e.message,
            "model \"m\" failed to load: bad weights; see the daemon's journal (CAXTON_EVENT=model_load_failed), then replace the package"
        );
    }
}
