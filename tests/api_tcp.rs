//! Issue 53, goal 2: the opt-in TCP listener for the API (`api.listen`, `caxton-api.socket`).
//! It serves the embedding, rerank, tokenize and Ollama endpoints and never the admin ones;
//! with `api.token_file` every request must carry the token; an address off loopback without
//! a token is refused at load, naming the key; the Unix socket's connection bound applies per
//! listener.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Daemon, caxton, write_config};
use serde_json::{Value, json};

const TOKEN: &str = "4f1c2a9be07d3c5a8e6f1b2d9c0a7e35";

/// One request over TCP with `headers`: the status, the head and the body as JSON (a body
/// that is not JSON as a string: `GET /` answers Ollama's line of text).
fn tcp(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let (status, head, body) = common::tcp_request(address, method, path, headers, body);
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    };
    (status, head, body)
}

fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

/// The API listeners the daemon reports, and whether it asks for a token.
fn status(d: &Daemon) -> Value {
    let (s, v) = d.request("GET", "/api/status", "");
    assert_eq!(s, 200, "{v}");
    v
}

fn only_endpoint(d: &Daemon) -> SocketAddr {
    let v = status(d);
    match v["api_listeners"].as_array().expect("api_listeners")[..] {
        [ref e] => e["address"]
            .as_str()
            .expect("address")
            .parse()
            .expect("addr"),
        ref other => panic!("one API listener expected, got {other:?}"),
    }
}

fn write_token(dir: &Path, text: &str, mode: u32) {
    let path = dir.join("api-token");
    std::fs::write(&path, text).expect("write the token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Writes `yaml` (the `api` section) and reloads: the refusal's reason.
fn refused(d: &Daemon, yaml: &str) -> String {
    write_config(d.dir.path(), yaml);
    let (s, v) = d.request("POST", "/api/reload", "");
    assert_eq!(s, 422, "{v}");
    let message = v["error"]["message"].as_str().expect("message");
    message
        .strip_prefix("configuration refused, the running configuration stays: ")
        .unwrap_or_else(|| panic!("{message}"))
        .to_string()
}

fn applied(d: &Daemon, yaml: &str) {
    write_config(d.dir.path(), yaml);
    let (s, v) = d.request("POST", "/api/reload", "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["applied"], true, "{v}");
}

/// The admin endpoints and `/metrics` do not exist over TCP, whoever asks.
fn assert_no_admin(address: SocketAddr, headers: &[(&str, &str)]) {
    for (method, path) in [
        ("GET", "/api/status"),
        ("GET", "/api/models"),
        ("POST", "/api/reload"),
        ("GET", "/api/memory/status"),
        ("POST", "/api/memory/flush"),
        ("POST", "/api/memory/models/all-MiniLM-L6-v2/load"),
        ("DELETE", "/api/memory/models/all-MiniLM-L6-v2"),
        ("GET", "/metrics"),
    ] {
        let (s, _, v) = tcp(address, method, path, headers, "");
        assert_eq!(s, 404, "{method} {path}: {v}");
        assert_eq!(v["error"]["message"], format!("no endpoint at {path}"));
    }
}

#[test]
fn api_listen_on_loopback_serves_the_embedding_apis_and_no_admin_endpoint() {
    let d = Daemon::start_with(
        |dir| write_config(dir, "api:\n  listen: [\"127.0.0.1:0\"]\n"),
        &[],
    );
    let address = only_endpoint(&d);
    assert!(address.port() != 0, "{address}");
    assert_eq!(status(&d)["api_token"], false);
    assert_eq!(status(&d)["api_listeners"][0]["from"], "api.listen");

    // The same vectors as over the Unix socket, bit for bit.
    let texts = ["a text over TCP", "and a second one"];
    let body = json!({ "input": texts }).to_string();
    let (s, _, over_tcp) = tcp(address, "POST", "/v1/embeddings", &[], &body);
    assert_eq!(s, 200, "{over_tcp}");
    let (s, over_unix) = d.request("POST", "/v1/embeddings", &body);
    assert_eq!(s, 200);
    assert_eq!(over_tcp["data"], over_unix["data"]);
    let (s, _, ollama) = tcp(
        address,
        "POST",
        "/api/embed",
        &[],
        &json!({"model": "all-MiniLM-L6-v2", "input": texts}).to_string(),
    );
    assert_eq!(s, 200, "{ollama}");
    assert_eq!(ollama["embeddings"][1], over_unix["data"][1]["embedding"]);
    for (method, path, body) in [
        ("POST", "/embed", r#"{"inputs": "x"}"#),
        ("POST", "/tokenize", r#"{"inputs": "x"}"#),
        ("POST", "/decode", r#"{"ids": [101, 102]}"#),
        ("GET", "/v1/models", ""),
        ("GET", "/info", ""),
        ("GET", "/health", ""),
        ("GET", "/api/tags", ""),
        ("GET", "/api/version", ""),
        ("GET", "/", ""),
    ] {
        let (s, _, v) = tcp(address, method, path, &[], body);
        assert_eq!(s, 200, "{method} {path}: {v}");
    }
    // Rerank is routed (no reranker is installed here: the refusal says so, not "no endpoint").
    for (path, body) in [
        ("/rerank", r#"{"query": "q", "texts": ["t"]}"#),
        ("/v1/rerank", r#"{"query": "q", "documents": ["t"]}"#),
    ] {
        let (s, _, v) = tcp(address, "POST", path, &[], body);
        assert_eq!(
            (s, &v["error"]["code"]),
            (404, &json!("model_not_found")),
            "{v}"
        );
    }
    assert_no_admin(address, &[]);
    assert!(
        d.log().contains(&format!(
            "API listener on {address} (api.listen): the embedding, rerank, tokenize and Ollama endpoints, no admin ones"
        )),
        "{}",
        d.log()
    );
    let out = caxton(&d, &["status"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "api over TCP: on at {address} (api.listen): embedding, rerank, tokenize and Ollama endpoints; no token (api.token_file unset): loopback only"
        )),
        "{stdout}"
    );
}

#[test]
fn with_a_token_file_every_request_must_carry_the_token() {
    let d = Daemon::start_with(
        |dir| {
            write_token(dir, &format!("{TOKEN}\n"), 0o600);
            write_config(
                dir,
                "api:\n  listen: [\"127.0.0.1:0\"]\n  token_file: api-token\n",
            );
        },
        &[],
    );
    let address = only_endpoint(&d);
    assert_eq!(status(&d)["api_token"], true);
    let body = r#"{"input": "guarded"}"#;
    let missing = "this listener asks for a token: send the header `Authorization: Bearer <token>` with the token in the daemon's api.token_file";
    let wrong = "the bearer token sent is not the one in the daemon's api.token_file; send that token (after a change of the file, the daemon reads it on reload)";
    for (headers, message) in [
        (vec![], missing),
        (
            vec![("Authorization", "Bearer 4f1c2a9be07d3c5a8e6f1b2d9c0a7e36")],
            wrong,
        ),
        (vec![("Authorization", "Bearer 4f1c2a9be07d3c5a")], wrong),
        (vec![("Authorization", "Basic dXNlcjpwYXNz")], wrong),
        (vec![("Authorization", "Bearer ")], wrong),
    ] {
        let (s, head, v) = tcp(address, "POST", "/v1/embeddings", &headers, body);
        assert_eq!(s, 401, "{headers:?}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["message"], message, "{headers:?}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer realm=\"caxton\""),
            "{head}"
        );
    }
    // Ollama's paths answer in Ollama's shape; an unknown path asks for the token first.
    let (s, _, v) = tcp(address, "POST", "/api/embed", &[], body);
    assert_eq!((s, v), (401, json!({ "error": missing })));
    let (s, _, v) = tcp(address, "HEAD", "/", &[], "");
    assert_eq!((s, v), (401, Value::Null));
    let (s, _, v) = tcp(address, "GET", "/api/status", &[], "");
    assert_eq!((s, &v["error"]["message"]), (401, &json!(missing)));

    let (name, value) = bearer();
    let (s, _, v) = tcp(address, "POST", "/v1/embeddings", &[(name, &value)], body);
    assert_eq!(s, 200, "{v}");
    let lower = format!("bearer {TOKEN}");
    let (s, _, v) = tcp(
        address,
        "POST",
        "/embed",
        &[(name, &lower)],
        r#"{"inputs": "x"}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_no_admin(address, &[(name, &value)]);
    // The Unix socket asks for no token.
    assert_eq!(d.embed(&["over the socket"]).0.len(), 1);

    // A new token written into the directory applies as a drop-in would (the watcher
    // reloads); the old one is refused from then on.
    let next = "a-second-token-of-enough-length";
    let new = format!("Bearer {next}");
    std::fs::write(d.dir.path().join("api-token"), next).expect("write");
    common::wait_until(&d, "the new token in force", || {
        tcp(address, "POST", "/v1/embeddings", &[(name, &new)], body).0 == 200
    });
    let (s, _, _) = tcp(address, "POST", "/v1/embeddings", &[(name, &value)], body);
    assert_eq!(s, 401);
    assert_eq!(only_endpoint(&d), address, "an unchanged list stays bound");
    let out = caxton(&d, &["status"], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "endpoints; every request must carry the token of api.token_file (Authorization: Bearer)"
        ),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn an_address_off_loopback_without_a_token_and_a_bad_token_file_are_refused_at_load() {
    let d = Daemon::start_with(|dir| write_config(dir, ""), &[]);
    let file = d.dir.path().join("caxton.yaml");
    let file = file.display();
    assert_eq!(
        refused(&d, "api:\n  listen: [\"0.0.0.0:0\"]\n"),
        "api.token_file: api.listen has 0.0.0.0:0, which is not a loopback address, and no token is set: anyone who reaches it could use the API. Set api.token_file to a file holding a token (e.g. `openssl rand -hex 32 > /etc/caxton/api-token; chmod 0640 /etc/caxton/api-token; chown root:caxton /etc/caxton/api-token`), or listen on 127.0.0.1 or [::1] only"
    );
    let token = d.dir.path().join("api-token");
    let shown = token.display();
    write_token(d.dir.path(), TOKEN, 0o644);
    assert_eq!(
        refused(
            &d,
            "api:\n  listen: [\"0.0.0.0:0\"]\n  token_file: api-token\n"
        ),
        format!(
            "api.token_file: {shown} is open to every user (mode 0644); it holds a secret: chmod 0640 {shown} (and chown root:caxton {shown})"
        )
    );
    write_token(d.dir.path(), "too-short", 0o600);
    assert_eq!(
        refused(
            &d,
            "api:\n  listen: [\"0.0.0.0:0\"]\n  token_file: api-token\n"
        ),
        format!(
            "api.token_file: {shown} holds a token of 9 characters; use 16 to 4096 (e.g. `openssl rand -hex 32`, 64)"
        )
    );
    assert_eq!(
        refused(&d, "api:\n  listen: [\"localhost:11434\"]\n"),
        format!(
            "{file}: api.listen.0: \"localhost:11434\" is not ADDRESS:PORT; write an IP address and a port, e.g. \"127.0.0.1:9464\", \"10.0.0.5:9464\" or \"[::]:9464\" (host names are not resolved)"
        )
    );
    assert!(
        status(&d)["api_listeners"]
            .as_array()
            .expect("list")
            .is_empty()
    );
    // A good token: the wildcard address is served, and asks for it.
    write_token(d.dir.path(), TOKEN, 0o640);
    applied(
        &d,
        "api:\n  listen: [\"0.0.0.0:0\"]\n  token_file: api-token\n",
    );
    let port = only_endpoint(&d).port();
    let loopback: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let (name, value) = bearer();
    let (s, _, v) = tcp(loopback, "GET", "/api/tags", &[(name, &value)], "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(tcp(loopback, "GET", "/api/tags", &[], "").0, 401);
}

#[test]
fn an_api_socket_from_systemd_is_served_and_refuses_all_off_loopback_without_a_token() {
    use std::os::fd::AsRawFd;
    let sock_dir = tempfile::tempdir().expect("tempdir");
    let path = sock_dir.path().join("caxton.sock");
    let api = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let local = TcpListener::bind("127.0.0.1:0").expect("bind");
    let wildcard = TcpListener::bind("0.0.0.0:0").expect("bind");
    let metrics = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (local_addr, wildcard_addr, metrics_addr) = (
        local.local_addr().expect("addr"),
        wildcard.local_addr().expect("addr"),
        metrics.local_addr().expect("addr"),
    );
    let socket_path = path.clone();
    let mut d = Daemon::spawn_with_sockets(
        move |dir| {
            write_config(dir, "");
            common::point_socket_at(dir, &socket_path);
        },
        &[],
        &[
            (api.as_raw_fd(), "caxton.socket"),
            (local.as_raw_fd(), "api"),
            (wildcard.as_raw_fd(), "caxton-api.socket"),
            (metrics.as_raw_fd(), "metrics"),
        ],
    );
    d.socket = path;
    drop((api, local, wildcard, metrics));
    d.wait_health(200);
    let v = status(&d);
    assert_eq!(
        v["api_listeners"],
        json!([
            {"address": local_addr.to_string(), "from": "socket from systemd (api)"},
            {
                "address": wildcard_addr.to_string(),
                "from": "socket from systemd (caxton-api.socket)",
                "refuses": format!("this listener ({wildcard_addr}) is not on loopback and the daemon has no api.token_file: nothing is served here until a token is set"),
            },
        ]),
        "{v}"
    );
    assert_eq!(
        v["metrics_listeners"][0]["address"],
        metrics_addr.to_string()
    );
    let body = r#"{"input": "from a container"}"#;
    assert_eq!(tcp(local_addr, "POST", "/v1/embeddings", &[], body).0, 200);
    let through: SocketAddr = format!("127.0.0.1:{}", wildcard_addr.port())
        .parse()
        .expect("addr");
    let (s, _, v) = tcp(through, "POST", "/v1/embeddings", &[], body);
    assert_eq!(s, 401, "{v}");
    assert_eq!(
        v["error"]["message"],
        format!(
            "this listener ({wildcard_addr}) is not on loopback and the daemon has no api.token_file: nothing is served here until a token is set"
        )
    );
    // The metrics socket still serves metrics only.
    assert_eq!(
        tcp(metrics_addr, "POST", "/v1/embeddings", &[], body).0,
        404
    );
    assert!(
        d.log().contains("API listener on 0.0.0.0:")
            && d.log()
                .contains("nothing is served here until a token is set"),
        "{}",
        d.log()
    );
    // With a token, the same socket serves.
    write_token(d.dir.path(), TOKEN, 0o600);
    write_config(d.dir.path(), "api:\n  token_file: api-token\n");
    common::point_socket_at(d.dir.path(), &d.socket);
    let (s, v) = d.request("POST", "/api/reload", "");
    assert_eq!((s, &v["applied"]), (200, &json!(true)), "{v}");
    let (name, value) = bearer();
    assert_eq!(
        tcp(through, "POST", "/v1/embeddings", &[(name, &value)], body).0,
        200
    );
    assert!(status(&d)["api_listeners"][1].get("refuses").is_none());
}

#[test]
fn the_connection_bound_applies_per_listener_with_the_sockets_refusal() {
    let d = Daemon::start_with(
        |dir| {
            write_config(
                dir,
                "api:\n  listen: [\"127.0.0.1:0\"]\nlimits:\n  max_connections: 2\n",
            )
        },
        &[],
    );
    let address = only_endpoint(&d);
    // Two connections held open (a client's pool, between requests) fill the bound.
    let held = [
        TcpStream::connect(address).expect("connect"),
        TcpStream::connect(address).expect("connect"),
    ];
    common::wait_until(&d, "the held connection counted", || {
        tcp(address, "GET", "/health", &[], "").0 == 503
    });
    let (s, head, v) = tcp(address, "GET", "/health", &[], "");
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "too_many_connections");
    assert_eq!(
        v["error"]["message"],
        format!(
            "the API listener on {address} has 2 connections open (limits.max_connections, per listener); close idle ones (a client's connection pool), retry shortly, or raise limits.max_connections"
        )
    );
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // The Unix socket has its own bound: still served.
    assert_eq!(d.embed(&["beside"]).0.len(), 1);
    drop(held);
    common::wait_until(&d, "the bound freed", || {
        tcp(address, "GET", "/health", &[], "").0 == 200
    });
}
