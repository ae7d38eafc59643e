//! Every code the API answers with, its status and `Retry-After`: the contract's table.

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
        (
            RequestError::InvalidEmbeddingTypes("is 8".into()).into(),
            400,
            "invalid_embedding_types",
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
        (RequestError::ZeroTopK.into(), 400, "invalid_top_k", None),
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
        (RequestError::TokenMissing.into(), 401, "unauthorized", None),
        (RequestError::TokenWrong.into(), 401, "unauthorized", None),
        (
            RequestError::TokenNotSet("0.0.0.0:11434".into()).into(),
            401,
            "unauthorized",
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
            RequestError::TcpConnectionsFull {
                listener: "127.0.0.1:11434".into(),
                max: 512,
            }
            .into(),
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
            RequestError::OllamaInvalidKeepAlive("\"soon\"".into()).into(),
            400,
            "invalid_request",
            None,
        ),
        (
            RequestError::OllamaModelRequired.into(),
            400,
            "model_required",
            None,
        ),
        (
            RequestError::OllamaUnknownModel("m".into()).into(),
            404,
            "model_not_found",
            None,
        ),
        (
            RequestError::OllamaWrongTag {
                name: "m:v9".into(),
                version: "1".into(),
            }
            .into(),
            404,
            "model_not_found",
            None,
        ),
        (
            RequestError::OllamaNotAnEmbedder("m".into()).into(),
            400,
            "wrong_model_kind",
            None,
        ),
        (
            RequestError::OllamaNotServed {
                path: "/api/chat".into(),
                why: "no generation",
            }
            .into(),
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
    assert_eq!(codes.len(), 35, "a code without its row: {codes:?}");
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
