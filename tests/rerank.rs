//! Issue 20 over the socket: the real caxtond with two cross-encoder packages side-loaded
//! (tiny seeded BERT and XLM-RoBERTa ones, packed by `caxton pack` from the folders
//! sentence-transformers saves), asked through TEI's `/rerank`, the Cohere-style `/v1/rerank`
//! and curl, against `CrossEncoder.rank` (tests/fixtures/architectures/generate.py); and a
//! Qwen3 reranker (issue 33) against its model card's scores, with and without an instruction
//! (tests/fixtures/architectures/qwen3_reranker.py).

mod common;

use std::path::Path;

use common::fixtures::{RankReference, Ranked, reranker_package, reranker_reference};
use common::{Daemon, caxton, scrape, wait_until, write_config};
use serde_json::{Value, json};

const BERT: &str = "tiny-bert-ce";
const XLMR: &str = "tiny-xlmr-ce";
const QWEN3: &str = "tiny-qwen3-reranker";

/// A daemon serving the bundled embedding model, with both rerankers side-loaded and `extra`
/// as the drop-in conf.d/50-test.yaml (rewritten by tests to reload). Pairs past the
/// rerankers' 32 tokens are cut unless a request says otherwise (`limits.auto_truncate`, as
/// TEI's `--auto-truncate`): the reference documents are longer.
fn start(extra: &str) -> Daemon {
    let extra = format!("{extra}\n");
    Daemon::start_with(
        move |dir: &Path| {
            reranker_package("bert", BERT, &dir.join("packages"));
            reranker_package("xlm-roberta", XLMR, &dir.join("packages"));
            write_config(dir, "limits:\n  auto_truncate: true\n");
            std::fs::create_dir(dir.join("conf.d")).expect("mkdir");
            std::fs::write(dir.join("conf.d/50-test.yaml"), extra).expect("write");
        },
        &[],
    )
}

fn rank(arch: &str) -> RankReference {
    reranker_reference(arch).rank
}

fn post(d: &Daemon, path: &str, body: Value) -> (u16, Value) {
    d.request("POST", path, &body.to_string())
}

/// Asserts `results` (each with `index` and `score_key`) is `ranking`, in its order, each score
/// within the 1e-4.
fn assert_ranking(results: &Value, ranking: &[Ranked], score_key: &str, take: usize) {
    let results = results.as_array().expect("a list");
    assert_eq!(results.len(), take, "{results:?}");
    for (got, want) in results.iter().zip(ranking) {
        assert_eq!(got["index"], json!(want.index), "{results:?}");
        let score = got[score_key].as_f64().expect("score") as f32;
        assert!(
            (score - want.score).abs() <= 1e-4,
            "document {}: score {score}, reference {}",
            want.index,
            want.score
        );
    }
}

/// Asserts `/rerank`'s `raw_scores` answer `v` gives, in `ranking`'s order, the logits whose
/// sigmoid is each reference score.
fn assert_raw_scores(v: &Value, ranking: &[Ranked]) {
    for (got, want) in v.as_array().expect("list").iter().zip(ranking) {
        let logit = -(1.0 / f64::from(want.score) - 1.0).ln();
        assert!(
            (got["score"].as_f64().expect("score") - logit).abs() < 1e-3,
            "{got} vs logit {logit}"
        );
    }
}

fn error(v: &Value) -> (&str, &str) {
    (
        v["error"]["code"].as_str().unwrap_or("?"),
        v["error"]["message"].as_str().unwrap_or("?"),
    )
}

#[test]
fn both_endpoints_rank_as_the_cross_encoder_does() {
    let d = start(&format!("models:\n  default_reranker: {BERT}"));
    let (bert, xlmr) = (rank("bert"), rank("xlm-roberta"));

    // What each model is for, in /api/models and `caxton models`.
    let (_, models) = d.request("GET", "/api/models", "");
    let entry = |id: &str| {
        models["data"]
            .as_array()
            .expect("data")
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} in {models}"))
    };
    assert_eq!(entry(BERT)["kind"], "reranker");
    assert_eq!(entry(BERT)["activation"], "sigmoid");
    assert_eq!(entry(XLMR)["kind"], "reranker");
    assert_eq!(entry("all-MiniLM-L6-v2")["kind"], "embedding");
    assert_eq!(entry("all-MiniLM-L6-v2")["activation"], Value::Null);
    let table = String::from_utf8(caxton(&d, &["models"], None).stdout).expect("utf-8");
    let line = table.lines().find(|l| l.starts_with(BERT)).expect("a row");
    assert!(line.contains("reranker (sigmoid)"), "{table}");

    // TEI: the default reranker, sorted best first, the activation's scores.
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"query": bert.query, "texts": bert.documents}),
    );
    assert_eq!(s, 200, "{v}");
    assert_ranking(&v, &bert.ranking, "score", bert.documents.len());
    assert!(v[0].get("text").is_none(), "no text unless asked: {v}");
    // raw_scores: the logits, the sigmoid's inverse of the scores; return_text: each text.
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"query": bert.query, "texts": bert.documents, "raw_scores": true, "return_text": true}),
    );
    assert_eq!(s, 200, "{v}");
    assert_raw_scores(&v, &bert.ranking);
    for (got, want) in v.as_array().expect("list").iter().zip(&bert.ranking) {
        assert_eq!(got["text"], json!(bert.documents[want.index]));
    }

    // Cohere-style: a named reranker, the best 3, with their documents (some as objects).
    let mut documents: Vec<Value> = xlmr.documents.iter().map(|t| json!(t)).collect();
    documents[1] = json!({"text": xlmr.documents[1]});
    let (s, v) = post(
        &d,
        "/v1/rerank",
        json!({"model": XLMR, "query": xlmr.query, "documents": documents, "top_n": 3, "return_documents": true}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], XLMR);
    assert_ranking(&v["results"], &xlmr.ranking, "relevance_score", 3);
    for r in v["results"].as_array().expect("results") {
        let i = r["index"].as_u64().expect("index") as usize;
        assert_eq!(r["document"], json!({"text": xlmr.documents[i]}));
    }
    let tokens: usize = xlmr.tokens.iter().sum();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": tokens, "total_tokens": tokens})
    );

    // What a user types: curl over the socket, Cohere's shape, the default reranker.
    let body = json!({"query": bert.query, "documents": bert.documents}).to_string();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&d.socket)
        .args([
            "http://localhost/v1/rerank",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("curl cannot run ({e}): apt-get install curl (or run tests/run, which installs what the tests need)")
        });
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON from curl");
    assert_eq!(v["model"], BERT);
    assert_ranking(
        &v["results"],
        &bert.ranking,
        "relevance_score",
        bert.documents.len(),
    );
    assert!(v["results"][0].get("document").is_none(), "{v}");

    // The command line: the ranking with the texts, and the daemon's error on failure.
    let mut args = vec!["rerank", "--model", XLMR, xlmr.query.as_str()];
    args.extend(xlmr.documents.iter().map(String::as_str));
    let out = caxton(&d, &args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON from caxton rerank");
    assert_ranking(&v, &xlmr.ranking, "score", xlmr.documents.len());
    assert_eq!(v[0]["text"], json!(xlmr.documents[xlmr.ranking[0].index]));
    let out = caxton(
        &d,
        &["rerank", "--model", "all-MiniLM-L6-v2", "q", "d"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is an embedding model, not a reranker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Cohere's v2 path answers the same.
    let (s, v2) = post(
        &d,
        "/v2/rerank",
        json!({"model": XLMR, "query": xlmr.query, "documents": xlmr.documents, "top_n": 1}),
    );
    assert_eq!(s, 200, "{v2}");
    assert_eq!(v2["results"][0]["index"], json!(xlmr.ranking[0].index));

    // Every pair is counted as a text of the model that scored it, tokens and all.
    let metrics = scrape(&d);
    let sample = |name: &str, model: &str| {
        common::sample(&metrics, name, &[("model", model)]).unwrap_or(-1.0)
    };
    assert_eq!(
        sample("caxton_embedded_texts_total", BERT),
        (bert.documents.len() * 3) as f64
    );
    assert_eq!(
        sample("caxton_embedded_tokens_total", XLMR),
        (tokens * 3) as f64
    );
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("model_loaded") && l.contains(XLMR)),
        "{log}"
    );

    // Requests at once: their pairs share the engine's passes (whatever queued while a pass
    // ran joins the next), and each answer equals the one the request gets alone.
    let bodies: Vec<String> = (0..6)
        .map(|k| {
            let texts: Vec<&String> = bert.documents.iter().skip(k).take(4).collect();
            json!({"query": bert.query, "texts": texts, "raw_scores": true}).to_string()
        })
        .collect();
    let alone: Vec<(u16, Value)> = bodies
        .iter()
        .map(|b| d.request("POST", "/rerank", b))
        .collect();
    let batches_before = common::sample(&scrape(&d), "caxton_batch_size_count", &[("model", BERT)]);
    let together: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|body| {
                let socket = d.socket.clone();
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    let (status, bytes) = rt
                        .block_on(caxton::cli::client::request(
                            &socket,
                            hyper::Method::POST,
                            "/rerank",
                            Some(body.clone().into_bytes()),
                        ))
                        .expect("request");
                    (
                        status.as_u16(),
                        serde_json::from_slice(&bytes).expect("JSON"),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for (a, t) in alone.iter().zip(&together) {
        assert_eq!((a.0, t.0), (200, 200), "{t:?}");
        for (x, y) in
            a.1.as_array()
                .expect("list")
                .iter()
                .zip(t.1.as_array().expect("list"))
        {
            assert_eq!(x["index"], y["index"], "{a:?} vs {t:?}");
            let (x, y) = (
                x["score"].as_f64().expect("score"),
                y["score"].as_f64().expect("score"),
            );
            assert!((x - y).abs() < 1e-5, "alone {x}, at once {y}");
        }
    }
    let batches = common::sample(&scrape(&d), "caxton_batch_size_count", &[("model", BERT)]);
    println!(
        "6 requests at once ran in {} forward passes",
        batches.unwrap_or(0.0) - batches_before.unwrap_or(0.0)
    );
}

#[test]
fn requests_a_reranker_cannot_serve_get_exact_errors() {
    let d = start("limits:\n  max_inputs: 4");
    let bert = rank("bert");
    let docs = &bert.documents[..4];

    // Each kind of model at the other kind's endpoints.
    let (s, v) = post(
        &d,
        "/v1/embeddings",
        json!({"input": "hello", "model": BERT}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            400,
            (
                "wrong_model_kind",
                "model tiny-bert-ce is a reranker (a cross-encoder that scores query–document pairs), not an embedding model; send it to POST /rerank or POST /v1/rerank, or name an embedding model"
            )
        )
    );
    let (s, v) = post(
        &d,
        "/v1/rerank",
        json!({"model": "all-MiniLM-L6-v2", "query": "q", "documents": docs}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            400,
            (
                "wrong_model_kind",
                "model all-MiniLM-L6-v2 is an embedding model, not a reranker; send it to POST /v1/embeddings or POST /embed, or name a reranker (a cross-encoder package)"
            )
        )
    );

    // Two rerankers and no models.default_reranker: the request must say which.
    let (s, v) = post(&d, "/rerank", json!({"query": "q", "texts": docs}));
    assert_eq!(
        (s, error(&v)),
        (
            400,
            (
                "model_required",
                "several rerankers are installed (tiny-bert-ce, tiny-xlmr-ce); name one with \"model\" or set models.default_reranker"
            )
        )
    );
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"model": "nope", "query": "q", "texts": docs}),
    );
    assert_eq!(s, 404, "{v}");
    assert_eq!(error(&v).0, "model_not_found");

    // Limits: documents per request, and a pair past the model's length without truncation.
    let five: Vec<&String> = bert.documents.iter().take(5).collect();
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"model": BERT, "query": "q", "texts": five}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            413,
            (
                "too_many_inputs",
                "`texts` has 5 texts; at most 4 are allowed per request (limits.max_inputs); split the request"
            )
        )
    );
    let (s, v) = post(
        &d,
        "/v1/rerank",
        json!({"model": BERT, "query": "q", "documents": five}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            413,
            (
                "too_many_inputs",
                "`documents` has 5 texts; at most 4 are allowed per request (limits.max_inputs); split the request"
            )
        )
    );
    let long = "word ".repeat(100);
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"model": BERT, "query": "q", "texts": ["short", long], "truncate": false}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            413,
            (
                "input_too_long",
                "the query with `texts[1]` is longer than the 32 tokens model tiny-bert-ce reads for a pair; shorten them or set \"truncate\": true"
            )
        )
    );
    // The same pair is cut under limits.auto_truncate, and the answer says which.
    let (s, headers, v) = d
        .try_request_with_headers(
            "POST",
            "/rerank",
            Some(&json!({"model": BERT, "query": "q", "texts": ["short", long]}).to_string()),
        )
        .expect("POST /rerank");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&v));
    assert_eq!(
        headers.get("x-caxton-truncated").map(String::as_str),
        Some("1")
    );

    // Malformed requests.
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"model": BERT, "query": " ", "texts": docs}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            400,
            (
                "empty_input",
                "`query` is empty or only whitespace; send the text to rank the documents against"
            )
        )
    );
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"model": BERT, "query": "q", "texts": []}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            400,
            (
                "empty_input",
                "`texts` is an empty list; send at least one text"
            )
        )
    );
    let (s, v) = post(
        &d,
        "/v1/rerank",
        json!({"model": BERT, "query": "q", "documents": docs, "top_n": 0}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            400,
            (
                "invalid_top_n",
                "`top_n` is 0; ask for at least 1 result (or leave it out for all)"
            )
        )
    );
    let (s, v) = post(
        &d,
        "/v1/rerank",
        json!({"model": BERT, "query": "q", "documents": [{"title": "t"}]}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            400,
            (
                "invalid_input",
                "`documents[0]` is an object; it must be a string, {\"text\": \"...\"} or {\"image\": \"data:image/...;base64,...\"} alone"
            )
        )
    );
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"model": BERT, "query": "q", "texts": docs, "truncation_direction": "middle"}),
    );
    assert_eq!((s, error(&v).0), (400, "invalid_truncation_direction"));
    let (s, v) = post(
        &d,
        "/v1/rerank",
        json!({"model": BERT, "query": "q", "documents": docs, "rank_fields": ["x"]}),
    );
    assert_eq!(s, 400, "{v}");
    assert!(error(&v).1.contains("unknown field `rank_fields`"), "{v}");
    let (s, v) = post(&d, "/rerank", json!({"model": BERT, "texts": docs}));
    assert_eq!(s, 400, "{v}");
    assert!(error(&v).1.contains("missing field `query`"), "{v}");
}

#[test]
fn the_default_reranker_applies_live_and_a_wrong_one_is_refused() {
    let d = start("");
    let xlmr = rank("xlm-roberta");
    let dropin = d.dir.path().join("conf.d/50-test.yaml");
    let ask = || {
        post(
            &d,
            "/rerank",
            json!({"query": xlmr.query, "texts": xlmr.documents}),
        )
    };
    assert_eq!(ask().0, 400, "two rerankers, no default");

    std::fs::write(&dropin, format!("models:\n  default_reranker: {XLMR}\n")).expect("write");
    let (s, v) = d.request("POST", "/api/reload", "");
    assert_eq!(s, 200, "{v}");
    let (s, v) = ask();
    assert_eq!(s, 200, "{v}");
    assert_ranking(&v, &xlmr.ranking, "score", xlmr.documents.len());

    // An embedding model as the default reranker, or a reranker as the default model: refused
    // whole, naming the rerankers there are; the running configuration stays.
    for (yaml, message) in [
        (
            "models:\n  default_reranker: all-MiniLM-L6-v2\n",
            "models.default_reranker: \"all-MiniLM-L6-v2\" is an embedding model, not a reranker; verified rerankers: tiny-bert-ce, tiny-xlmr-ce",
        ),
        (
            "models:\n  default_reranker: gone\n",
            "models.default_reranker: no verified package has id \"gone\"; verified rerankers: tiny-bert-ce, tiny-xlmr-ce",
        ),
        (
            &format!("models:\n  default: {BERT}\n  default_reranker: {XLMR}\n"),
            "models.default: \"tiny-bert-ce\" is a reranker, and the default model answers embedding requests; name an embedding model (and the reranker in models.default_reranker)",
        ),
    ] {
        std::fs::write(&dropin, yaml).expect("write");
        let (s, v) = d.request("POST", "/api/reload", "");
        assert_eq!(
            (s, error(&v)),
            (
                422,
                (
                    "config_rejected",
                    format!("configuration refused, the running configuration stays: {message}")
                        .as_str()
                )
            )
        );
        let (s, v) = ask();
        assert_eq!(s, 200, "after refusing {yaml:?}: {v}\n{}", d.log());
    }

    // A reranker unloads and comes back like any model.
    let (s, v) = d.request("DELETE", &format!("/api/memory/models/{XLMR}"), "");
    assert_eq!(s, 200, "{v}");
    wait_until(&d, "the reranker unloaded", || {
        common::model_entry(&d, XLMR).is_some_and(|m| m["state"] == "available")
    });
    let (s, v) = ask();
    assert_eq!(s, 200, "{v}");
    assert_ranking(&v, &xlmr.ranking, "score", xlmr.documents.len());
    assert_eq!(
        common::model_entry(&d, XLMR).expect("entry")["state"],
        "loaded"
    );
}

/// Issue 33: a Qwen3 reranker (Qwen3-Reranker-0.6B's widths, 2 layers), packed from the folder
/// Qwen ships, side-loaded, verified and served at both endpoints with its model card's
/// template; a request's `instruction` replaces the card's; what it cannot take is refused
/// before anything loads.
#[test]
fn a_qwen3_reranker_ranks_with_its_template_and_a_request_s_instruction() {
    let d = Daemon::start_with(
        |dir: &Path| {
            reranker_package("qwen3", QWEN3, &dir.join("packages"));
            reranker_package("bert", BERT, &dir.join("packages"));
            write_config(dir, "limits:\n  auto_truncate: true\n");
            std::fs::create_dir(dir.join("conf.d")).expect("mkdir");
            std::fs::write(
                dir.join("conf.d/50-test.yaml"),
                format!("models:\n  default_reranker: {QWEN3}\n"),
            )
            .expect("write");
        },
        &[],
    );
    let r = reranker_reference("qwen3");
    let (rank, instructed) = (
        &r.rank,
        r.instructed.as_ref().expect("an instructed ranking"),
    );

    // What the model cannot take costs no load: an instruction for a cross-encoder, a blank one.
    let (s, v) = post(
        &d,
        "/v1/rerank",
        json!({"model": BERT, "query": "q", "documents": ["d"], "instruction": "Find it"}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            400,
            (
                "instruction_unsupported",
                "model tiny-bert-ce takes no instruction (a reranker whose pair template has one, such as Qwen3-Reranker, does); leave \"instruction\" out"
            )
        )
    );
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"query": "q", "texts": ["d"], "instruction": " \n"}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            400,
            (
                "empty_input",
                "`instruction` is empty or only whitespace; leave it out for the model's own"
            )
        )
    );
    for id in [BERT, QWEN3] {
        assert_eq!(
            common::model_entry(&d, id).expect("entry")["state"],
            "available",
            "{id} stays unloaded"
        );
    }

    // Cohere-style, the default reranker: the card's ranking and scores, its token counts.
    let (s, v) = post(
        &d,
        "/v1/rerank",
        json!({"query": rank.query, "documents": rank.documents}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], QWEN3);
    assert_ranking(
        &v["results"],
        &rank.ranking,
        "relevance_score",
        rank.documents.len(),
    );
    let tokens: usize = rank.tokens.iter().sum();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": tokens, "total_tokens": tokens})
    );
    let cut = rank
        .tokens
        .iter()
        .position(|&t| t == r.max_seq_length)
        .expect("a cut pair");

    // TEI's, with another instruction: the card's ranking under it.
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"query": rank.query, "texts": rank.documents, "instruction": instructed.instruction}),
    );
    assert_eq!(s, 200, "{v}");
    assert_ranking(&v, &instructed.ranking, "score", rank.documents.len());
    // The same from the command line.
    let mut args = vec![
        "rerank",
        "--instruction",
        instructed.instruction.as_str(),
        rank.query.as_str(),
    ];
    args.extend(rank.documents.iter().map(String::as_str));
    let out = caxton(&d, &args, None);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_ranking(&v, &instructed.ranking, "score", rank.documents.len());
    // raw_scores: the logit, yes less no, whose sigmoid is the score.
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"query": rank.query, "texts": rank.documents, "raw_scores": true}),
    );
    assert_eq!(s, 200, "{v}");
    assert_raw_scores(&v, &rank.ranking);
    // An over-long pair when the request will not have it cut.
    let (s, v) = post(
        &d,
        "/rerank",
        json!({"query": rank.query, "texts": rank.documents, "truncate": false}),
    );
    assert_eq!(
        (s, error(&v)),
        (
            413,
            (
                "input_too_long",
                format!(
                    "the query with `texts[{cut}]` is longer than the 512 tokens model {QWEN3} reads for a pair; shorten them or set \"truncate\": true"
                )
                .as_str()
            )
        )
    );
}
