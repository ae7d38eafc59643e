//! What the HTTP layer itself refuses: the request's form, its sender, its route, a
//! connection past the bound.

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
    /// `embedding_types` that is not a name or a list of distinct names.
    #[error(
        "`embedding_types` {0}; send one of \"float\", \"int8\", \"uint8\", \"binary\", \"ubinary\" or a list of them, each at most once"
    )]
    InvalidEmbeddingTypes(String),
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
    /// `top_k: 0`.
    #[error("`top_k` is 0; ask for at least 1 term (or leave it out for every term above zero)")]
    ZeroTopK,
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
    /// A request over the TCP listener without `Authorization: Bearer`.
    #[error(
        "this listener asks for a token: send the header `Authorization: Bearer <token>` with the token in the daemon's api.token_file"
    )]
    TokenMissing,
    /// A request over the TCP listener whose bearer token is not api.token_file's.
    #[error(
        "the bearer token sent is not the one in the daemon's api.token_file; send that token (after a change of the file, the daemon reads it on reload)"
    )]
    TokenWrong,
    /// A request over a listener off loopback (a socket from systemd) while no token is set.
    #[error(
        "this listener ({0}) is not on loopback and the daemon has no api.token_file: nothing is served here until a token is set"
    )]
    TokenNotSet(String),
    /// `POST /api/reload` with a configuration that was refused.
    #[error("configuration refused, the running configuration stays: {0}")]
    ConfigRejected(String),
    /// A connection over `limits.max_connections` when none can be closed for it.
    #[error(
        "every connection the daemon keeps open (limits.max_connections) has a request under way; retry shortly, or raise limits.max_connections"
    )]
    TooManyConnections,
    /// A connection to a TCP listener that has `limits.max_connections` open already.
    #[error(
        "the API listener on {listener} has {max} connections open (limits.max_connections, per listener); close idle ones (a client's connection pool), retry shortly, or raise limits.max_connections"
    )]
    TcpConnectionsFull {
        /// The listener's address.
        listener: String,
        /// The bound in force.
        max: usize,
    },
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
    /// An Ollama request without `model` (Ollama's API has no default model).
    #[error("model is required: name one of the models GET /api/tags lists")]
    OllamaModelRequired,
    /// An Ollama model name no model goes by.
    #[error(
        "model \"{0}\" not found: caxton serves its packages' models by their ids (GET /api/tags lists them; NAME and NAME:latest mean model NAME) and never pulls one"
    )]
    OllamaUnknownModel(String),
    /// An Ollama model name whose tag is neither `latest` nor the package's version.
    #[error(
        "model \"{name}\" not found: that model's package is version {version}; ask for the tag latest or {version}"
    )]
    OllamaWrongTag {
        /// The name as sent.
        name: String,
        /// The serving package's version.
        version: String,
    },
    /// A `keep_alive` that is neither seconds nor a duration.
    #[error(
        "keep_alive {0} is not a duration: send seconds (300), a duration (\"5m\", \"1h30m\"), 0 to unload the model once unused, or -1 to keep it loaded"
    )]
    OllamaInvalidKeepAlive(String),
    /// A reranker named on Ollama's API, which embeds only.
    #[error(
        "model \"{0}\" is a reranker; Ollama's API here serves embedding models (rerank with POST /rerank or /v1/rerank)"
    )]
    OllamaNotAnEmbedder(String),
    /// One of Ollama's paths this daemon does not have.
    #[error(
        "{path} is not served: {why}; the Ollama endpoints here are /api/embed, /api/embeddings, /api/tags, /api/show, /api/ps and /api/version"
    )]
    OllamaNotServed {
        /// The path asked for.
        path: String,
        /// Why caxton has no such thing.
        why: &'static str,
    },
}
