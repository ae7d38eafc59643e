//! Issue 53: Ollama's embedding API against the real daemon (the bundled MiniLM, and a
//! reranker side-loaded beside it): the shapes Ollama's clients read, the same vectors as
//! `/v1/embeddings`, the name rule, and every refusal as Ollama's `{"error": "..."}`.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::fixtures::reranker_package;
use common::{Daemon, write_config};
use serde_json::{Value, json};
use sha2::Digest;

const MODEL: &str = "all-MiniLM-L6-v2";
const RERANKER: &str = "bert-reranker";

fn start() -> Daemon {
    Daemon::start_with(
        |dir: &Path| {
            reranker_package("bert", RERANKER, &dir.join("packages"));
            write_config(dir, "");
        },
        &[],
    )
}

fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.request("POST", path, &body.to_string())
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// An Ollama-shaped refusal: the status, and `{"error": message}` with nothing else.
fn refused(d: &Daemon, path: &str, body: Value, status: u16) -> String {
    let (s, v) = post(d, path, body.clone());
    assert_eq!(s, status, "{path} {body}: {v}");
    let object = v.as_object().expect("an object");
    assert_eq!(object.len(), 1, "{v}");
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error is not a string: {v}"))
        .to_string()
}

#[test]
fn api_embed_answers_what_ollama_answers_with_the_vectors_of_v1_embeddings() {
    let d = start();
    let texts = ["hello world", "a cat"];
    let (want, tokens) = d.embed(&texts);

    let (s, v) = post(&d, "/api/embed", json!({"model": MODEL, "input": texts}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], MODEL);
    let got: Vec<Vec<f32>> = v["embeddings"]
        .as_array()
        .expect("embeddings")
        .iter()
        .map(floats)
        .collect();
    assert_eq!(got, want, "the same f32 values as /v1/embeddings");
    assert_eq!(v["prompt_eval_count"].as_u64(), Some(tokens));
    let total = v["total_duration"].as_u64().expect("total_duration");
    let load = v["load_duration"].as_u64().expect("load_duration");
    assert!(total > 0 && load <= total, "{v}");

    // A string is one input; the name as Ollama's clients write it, with :latest or the
    // package's version as its tag.
    let version = common::model_entry(&d, MODEL).expect("listed")["version"]
        .as_str()
        .expect("version")
        .to_string();
    for name in [
        MODEL.to_string(),
        format!("{MODEL}:latest"),
        format!("{MODEL}:{version}"),
    ] {
        let (s, v) = post(
            &d,
            "/api/embed",
            json!({"model": name, "input": "hello world"}),
        );
        assert_eq!(s, 200, "{name}: {v}");
        assert_eq!(v["model"], name.as_str(), "the name as sent");
        assert_eq!(floats(&v["embeddings"][0]), want[0], "{name}");
    }

    // The legacy form.
    let (s, v) = post(
        &d,
        "/api/embeddings",
        json!({"model": MODEL, "prompt": "hello world"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(floats(&v["embedding"]), want[0]);

    // dimensions: cut and unit length, as /v1/embeddings cuts.
    let (s, v) = post(
        &d,
        "/api/embed",
        json!({"model": MODEL, "input": "hello world", "dimensions": 64}),
    );
    assert_eq!(s, 200, "{v}");
    let short = floats(&v["embeddings"][0]);
    assert_eq!(short.len(), 64);
    let norm: f32 = short.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
}

#[test]
fn api_embed_cuts_long_inputs_unless_told_not_to_and_loads_on_an_empty_one() {
    let d = start();
    let long = "the device reports a temperature ".repeat(200);
    let (s, v) = post(&d, "/api/embed", json!({"model": MODEL, "input": long}));
    assert_eq!(s, 200, "truncate defaults to true, as Ollama's: {v}");
    let max = common::model_entry(&d, MODEL).expect("listed")["max_seq_length"]
        .as_u64()
        .expect("max_seq_length");
    assert_eq!(v["prompt_eval_count"].as_u64(), Some(max));
    let m = refused(
        &d,
        "/api/embed",
        json!({"model": MODEL, "input": long, "truncate": false}),
        413,
    );
    assert!(
        m.starts_with(&format!(
            "input 0 is longer than the {max} tokens model {MODEL} accepts"
        )),
        "{m}"
    );

    // An empty input loads the model and embeds nothing; /api/ps then lists it.
    for empty in [json!([]), json!(""), Value::Null] {
        let (s, v) = post(&d, "/api/embed", json!({"model": MODEL, "input": empty}));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["embeddings"], json!([]), "{v}");
    }
    let (s, v) = post(&d, "/api/embeddings", json!({"model": MODEL, "prompt": ""}));
    assert_eq!((s, &v["embedding"]), (200, &json!([])), "{v}");
    let (s, ps) = d.request("GET", "/api/ps", "");
    assert_eq!(s, 200, "{ps}");
    let loaded = &ps["models"][0];
    assert_eq!(ps["models"].as_array().map(Vec::len), Some(1), "{ps}");
    assert_eq!(loaded["name"], format!("{MODEL}:latest"));
    assert!(loaded["size"].as_u64().unwrap_or(0) > 1 << 20, "{ps}");
    assert_eq!(loaded["size_vram"], 0);
    assert_eq!(loaded["context_length"].as_u64(), Some(max));
    let expires = loaded["expires_at"].as_str().expect("expires_at");
    humantime::parse_rfc3339(expires).unwrap_or_else(|e| panic!("{expires}: {e}"));

    // What decides nothing here is named in a header, and the request still answers.
    let (s, headers, _) = d
        .try_request_with_headers(
            "POST",
            "/api/embed",
            Some(
                &json!({"model": MODEL, "input": "x", "keep_alive": "5m", "options": {"num_ctx": 64}})
                    .to_string(),
            ),
        )
        .expect("request");
    assert_eq!(s, 200);
    assert_eq!(
        headers.get("x-caxton-ignored").map(String::as_str),
        Some("options")
    );
}

/// When /api/ps says the model expires.
fn expires_at(d: &Daemon) -> SystemTime {
    let (_, ps) = d.request("GET", "/api/ps", "");
    let at = ps["models"][0]["expires_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no loaded model: {ps}"));
    humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at}: {e}"))
}

/// Embeds with `keep` and checks that /api/ps then puts the expiry `limit` seconds after the
/// request's last use, which lies between the moments before the request and after the
/// answer (less a second: the expiry is written in whole seconds), however slow the machine.
fn assert_expiry(d: &Daemon, keep: Value, limit: u64) {
    let before = SystemTime::now();
    let (s, v) = post(
        d,
        "/api/embed",
        json!({"model": MODEL, "input": "kept", "keep_alive": keep}),
    );
    assert_eq!(s, 200, "{v}");
    let at = expires_at(d);
    let after = SystemTime::now();
    let limit = Duration::from_secs(limit);
    assert!(
        at + Duration::from_secs(1) >= before + limit && at <= after + limit,
        "keep_alive {keep}: expires {at:?}, the request ran from {before:?} to {after:?}"
    );
}

#[test]
fn keep_alive_sets_how_long_the_model_stays_for_this_load() {
    // The configured idle limit (30 min by default) until a request says otherwise.
    let d = start();
    assert_expiry(&d, Value::Null, 1800);
    assert_expiry(&d, json!("1h"), 3600);
    assert_expiry(&d, json!(90), 90);
    // A request that does not send it changes nothing.
    assert_expiry(&d, Value::Null, 90);
    // Below zero: never for idleness (Ollama's far future, the year 9999).
    let far = SystemTime::UNIX_EPOCH + Duration::from_secs(220_000_000_000);
    for keep in [json!("-1m"), json!(-1)] {
        let (s, v) = post(
            &d,
            "/api/embed",
            json!({"model": MODEL, "input": "kept", "keep_alive": keep}),
        );
        assert_eq!(s, 200, "{v}");
        assert!(expires_at(&d) > far, "keep_alive {keep}");
    }
    // Zero: unloaded at the monitor's next check.
    let (s, v) = post(
        &d,
        "/api/embed",
        json!({"model": MODEL, "input": "kept", "keep_alive": 0}),
    );
    assert_eq!(s, 200, "{v}");
    common::wait_until(&d, "the model unloaded after keep_alive 0", || {
        d.log().contains(&format!("model {MODEL} unloaded (idle)"))
    });
    let (_, ps) = d.request("GET", "/api/ps", "");
    assert_eq!(ps["models"], json!([]), "{ps}");
    // The next load starts from the configuration again.
    assert_expiry(&d, Value::Null, 1800);

    for (bad, shown) in [
        (json!("soon"), "\"soon\""),
        (json!("5 parsecs"), "\"5 parsecs\""),
        (json!(true), "true"),
        (json!({"m": 5}), "{\"m\":5}"),
    ] {
        let m = refused(
            &d,
            "/api/embed",
            json!({"model": MODEL, "input": "x", "keep_alive": bad}),
            400,
        );
        assert_eq!(
            m,
            format!(
                "keep_alive {shown} is not a duration: send seconds (300), a duration (\"5m\", \"1h30m\"), 0 to unload the model once unused, or -1 to keep it loaded"
            )
        );
    }
}

#[test]
fn every_refusal_on_ollama_s_paths_is_ollama_s_error_shape_and_says_why() {
    let d = start();
    let m = refused(&d, "/api/embed", json!({"input": "x"}), 400);
    assert_eq!(
        m,
        "model is required: name one of the models GET /api/tags lists"
    );
    let m = refused(
        &d,
        "/api/embed",
        json!({"model": "all-minilm", "input": "x"}),
        404,
    );
    assert_eq!(
        m,
        "model \"all-minilm\" not found: caxton serves its packages' models by their ids (GET /api/tags lists them; NAME and NAME:latest mean model NAME) and never pulls one"
    );
    let version = common::model_entry(&d, MODEL).expect("listed")["version"]
        .as_str()
        .expect("version")
        .to_string();
    let m = refused(
        &d,
        "/api/embeddings",
        json!({"model": format!("{MODEL}:v9"), "prompt": "x"}),
        404,
    );
    assert_eq!(
        m,
        format!(
            "model \"{MODEL}:v9\" not found: that model's package is version {version}; ask for the tag latest or {version}"
        )
    );
    let m = refused(
        &d,
        "/api/embed",
        json!({"model": RERANKER, "input": "x"}),
        400,
    );
    assert_eq!(
        m,
        format!(
            "model {RERANKER} is a reranker (a cross-encoder that scores query–document pairs), not an embedding model; send it to POST /rerank or POST /v1/rerank, or name an embedding model"
        )
    );
    let m = refused(&d, "/api/show", json!({"model": RERANKER}), 400);
    assert_eq!(
        m,
        format!(
            "model \"{RERANKER}\" is a reranker; Ollama's API here serves embedding models (rerank with POST /rerank or /v1/rerank)"
        )
    );
    let m = refused(
        &d,
        "/api/embed",
        json!({"model": MODEL, "input": [1, 2]}),
        400,
    );
    assert_eq!(
        m,
        "`input[0]` is not a string; token arrays are not supported, send text"
    );
    let (s, v) = d.request("POST", "/api/embed", "{\"model\": ");
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|m| m.starts_with("the body is not valid JSON")),
        "{v}"
    );
    for (path, why) in [
        (
            "/api/generate",
            "caxton embeds text and has no text generation",
        ),
        ("/api/chat", "caxton embeds text and has no text generation"),
        (
            "/api/pull",
            "caxton never downloads or uploads models: install a model package (README: Model packages)",
        ),
    ] {
        let m = refused(&d, path, json!({"model": MODEL}), 404);
        assert_eq!(
            m,
            format!(
                "{path} is not served: {why}; the Ollama endpoints here are /api/embed, /api/embeddings, /api/tags, /api/show, /api/ps and /api/version"
            )
        );
    }
}

#[test]
fn tags_show_version_and_root_answer_as_ollama_s_clients_expect() {
    let d = start();
    let (s, tags) = d.request("GET", "/api/tags", "");
    assert_eq!(s, 200, "{tags}");
    let models = tags["models"].as_array().expect("models");
    // Embedding models only: the reranker has no place in Ollama's API.
    assert_eq!(models.len(), 1, "{tags}");
    let m = &models[0];
    let name = format!("{MODEL}:latest");
    assert_eq!((&m["name"], &m["model"]), (&json!(name), &json!(name)));
    let file = common::model_entry(&d, MODEL).expect("listed")["file"]
        .as_str()
        .expect("file")
        .to_string();
    let bytes = std::fs::read(&file).expect("the package");
    assert_eq!(m["size"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(
        m["digest"].as_str(),
        Some(format!("{:x}", sha2::Sha256::digest(&bytes)).as_str())
    );
    assert_eq!(m["details"]["family"], "bert");
    assert_eq!(m["details"]["families"], json!(["bert"]));
    let modified = m["modified_at"].as_str().expect("modified_at");
    humantime::parse_rfc3339(modified).unwrap_or_else(|e| panic!("{modified}: {e}"));

    for body in [json!({"model": MODEL}), json!({"name": name})] {
        let (s, show) = post(&d, "/api/show", body);
        assert_eq!(s, 200, "{show}");
        assert_eq!(show["capabilities"], json!(["embedding"]));
        assert_eq!(show["model_info"]["general.architecture"], "bert");
        assert_eq!(show["model_info"]["bert.embedding_length"], 384);
        assert!(show["model_info"]["bert.context_length"].as_u64().is_some());
    }

    let (s, v) = d.request("GET", "/api/version", "");
    assert_eq!(s, 200);
    let version = v["version"].as_str().expect("version");
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "{version}"
    );

    let (s, body) = d.raw_request("GET", "/", None).expect("GET /");
    assert_eq!(s, 200);
    assert!(
        String::from_utf8_lossy(&body).starts_with("Ollama is running"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (s, body) = d.raw_request("HEAD", "/", None).expect("HEAD /");
    assert_eq!((s, body.len()), (200, 0));
}
