//! Fuzzes the whole HTTP surface in-process: the daemon's router, with the bundled model
//! verified and loaded, gets arbitrary methods, paths, queries, headers and bodies for every
//! endpoint, from an administrator or not. Never a panic, never a 500; every answer's body
//! is read to its end within a deadline, so a hang is found too.
//!
//! Input: byte 0 picks the method, byte 1 the endpoint (or, past the list, takes the path
//! from the input), byte 2 the caller (even: root, odd: an unprivileged uid); then text up to
//! the first blank line is the query and header lines (`?query` first when the line starts
//! with `?`, then `Name: value`), and the rest is the body. The seeds in `corpus/http/` are a
//! valid request to each endpoint.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use caxton::api::peer::Peer;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const METHODS: &[&str] = &["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "PATCH"];
const PATHS: &[&str] = &[
    "/v1/embeddings",
    "/v1/models",
    "/embed",
    "/tokenize",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/info",
    "/health",
    "/api/models",
    "/api/reload",
    "/api/memory/status",
    "/api/memory/flush",
    "/api/memory/models/all-MiniLM-L6-v2/load",
    "/api/memory/models/all-MiniLM-L6-v2",
    "/metrics",
];

/// How long one request may take, body included, before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(60);

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: Router,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let bundled = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bundled-models");
        // Small limits keep each pass short; the parsing and the checks are the same.
        let yaml = format!(
            "socket:\n  path: {sock}\nstate_dir: {state}\nmodels:\n  bundled_dir: {bundled}\n  package_dir: {packages}\nlimits:\n  max_inputs: 8\n  max_body_bytes: 64KiB\n",
            sock = dir.path().join("caxton.sock").display(),
            state = dir.path().join("state").display(),
            bundled = bundled.display(),
            packages = dir.path().join("packages").display(),
        );
        std::fs::write(dir.path().join("caxton.yaml"), yaml).expect("caxton.yaml");
        // caxtond reads CAXTON_* variables as configuration keys and refuses unknown ones; a
        // CI or shell variable of that prefix must not make the harness a crash.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CAXTON_") {
                // SAFETY: this runs once, before the runtime or any other thread of the
                // harness exists.
                unsafe { std::env::remove_var(&key) };
            }
        }
        let settings = caxton::config::Settings::load(dir.path()).expect("the harness's config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let app = runtime.block_on(async {
            let state = caxton::server::assemble(settings, dir.path().to_path_buf(), false);
            caxton::server::start(&state)
                .await
                .expect("the bundled model verifies and loads");
            caxton::api::router(state)
        });
        Harness {
            runtime,
            app,
            _dir: dir,
        }
    })
}

fn request(data: &[u8]) -> Option<axum::http::Request<Body>> {
    let (&m, rest) = data.split_first()?;
    let (&p, rest) = rest.split_first()?;
    let (&who, rest) = rest.split_first()?;
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines().peekable();
    let mut path = match PATHS.get(p as usize) {
        Some(path) => path.to_string(),
        None => format!("/{}", lines.next().unwrap_or_default()),
    };
    if let Some(q) = lines.next_if(|l| l.starts_with('?')) {
        path.push_str(q);
    }
    let mut builder = axum::http::Request::builder()
        .method(METHODS[m as usize % METHODS.len()])
        .uri(path);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            builder = builder.header(name.trim(), value.trim());
        }
    }
    let mut req = builder.body(Body::from(body.to_vec())).ok()?;
    let peer = if who % 2 == 0 {
        Peer { uid: 0, gid: 0, pid: None }
    } else {
        Peer { uid: 65534, gid: 65534, pid: None }
    };
    req.extensions_mut().insert(ConnectInfo(peer));
    Some(req)
}

fuzz_target!(|data: &[u8]| {
    // A request the HTTP layer itself would refuse (a malformed path or header) never reaches
    // the router.
    let Some(req) = request(data) else { return };
    let h = harness();
    let app = h.app.clone();
    let (status, body) = h.runtime.block_on(async move {
        tokio::time::timeout(DEADLINE, async move {
            let response = app.oneshot(req).await.expect("the router is infallible");
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            (status, body)
        })
        .await
        .expect("an answer within the deadline")
    });
    let body = body.expect("the answer's body reads to its end");
    assert_ne!(
        status.as_u16(),
        500,
        "500: {}",
        String::from_utf8_lossy(&body)
    );
});
