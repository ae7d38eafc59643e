//! Issue 34, goal 3: the opt-in TCP listener a fleet's Prometheus scrapes. `metrics.listen`
//! (applied live, a bad address refused whole) and a socket from systemd
//! (`caxton-metrics.socket`) serve `GET /metrics` and `GET /health` and nothing else.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{Daemon, START_DEADLINE, caxton, write_config};
use serde_json::Value;

/// One request over TCP: the status and the body.
fn tcp(address: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = common::tcp_request(address, method, path, &[], body);
    (status, body)
}

/// The metrics listeners the daemon reports (`GET /api/status` on the Unix socket).
fn endpoints(d: &Daemon) -> Vec<(SocketAddr, String)> {
    let (s, v) = d.request("GET", "/api/status", "");
    assert_eq!(s, 200, "{v}");
    v["metrics_listeners"]
        .as_array()
        .expect("metrics_listeners")
        .iter()
        .map(|e| {
            (
                e["address"]
                    .as_str()
                    .expect("address")
                    .parse()
                    .expect("addr"),
                e["from"].as_str().expect("from").to_string(),
            )
        })
        .collect()
}

fn only_endpoint(d: &Daemon) -> SocketAddr {
    match endpoints(d)[..] {
        [(address, _)] => address,
        ref other => panic!("one metrics listener expected, got {other:?}"),
    }
}

/// Writes `metrics.listen: LIST` and reloads: the outcome when applied.
fn set_listen(d: &Daemon, list: &str) -> Value {
    write_config(d.dir.path(), &format!("metrics:\n  listen: {list}\n"));
    let (s, v) = d.request("POST", "/api/reload", "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["applied"], true, "{v}");
    v
}

/// Writes `metrics.listen: LIST` and reloads: the refusal's reason.
fn refused_listen(d: &Daemon, list: &str) -> String {
    write_config(d.dir.path(), &format!("metrics:\n  listen: {list}\n"));
    let (s, v) = d.request("POST", "/api/reload", "");
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "config_rejected", "{v}");
    let message = v["error"]["message"].as_str().expect("message");
    message
        .strip_prefix("configuration refused, the running configuration stays: ")
        .unwrap_or_else(|| panic!("{message}"))
        .to_string()
}

/// Every path but the two is 404 over TCP, with the error naming the path: nothing that
/// embeds, loads, unloads or configures is reachable from the network.
fn assert_only_metrics_and_health(address: SocketAddr) {
    let (s, body) = tcp(address, "GET", "/metrics", "");
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("caxton_requests_total"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    let (s, body) = tcp(address, "GET", "/health", "");
    assert_eq!(s, 200, "{body}");
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok");
    let embed = r#"{"input": ["over the network"]}"#;
    for (method, path, body) in [
        ("POST", "/v1/embeddings", embed),
        ("POST", "/embed", r#"{"inputs": "x"}"#),
        ("POST", "/rerank", r#"{"query": "q", "texts": ["t"]}"#),
        ("POST", "/tokenize", r#"{"inputs": "x"}"#),
        ("POST", "/decode", r#"{"ids": [101, 102]}"#),
        ("GET", "/v1/models", ""),
        ("GET", "/info", ""),
        ("GET", "/api/models", ""),
        ("GET", "/api/status", ""),
        ("GET", "/api/memory/status", ""),
        ("POST", "/api/memory/flush", ""),
        ("POST", "/api/memory/models/all-MiniLM-L6-v2/load", ""),
        ("DELETE", "/api/memory/models/all-MiniLM-L6-v2", ""),
        ("POST", "/api/reload", ""),
    ] {
        let (s, answer) = tcp(address, method, path, body);
        assert_eq!(s, 404, "{method} {path}: {answer}");
        let v: Value = serde_json::from_str(&answer).expect("json error");
        assert_eq!(v["error"]["code"], "not_found", "{method} {path}");
        assert_eq!(
            v["error"]["message"],
            format!("no endpoint at {path}"),
            "{method} {path}"
        );
    }
}

#[test]
fn metrics_listen_serves_metrics_and_health_over_tcp_and_nothing_else() {
    let d = Daemon::start_with(
        |dir| write_config(dir, "metrics:\n  listen: [\"127.0.0.1:0\"]\n"),
        &[],
    );
    let address = only_endpoint(&d);
    assert_eq!(endpoints(&d)[0].1, "metrics.listen");
    assert!(
        address.ip().is_loopback() && address.port() != 0,
        "{address}"
    );
    assert_only_metrics_and_health(address);
    // The flush sent over TCP did nothing: the default model is still loaded.
    let (_, models) = d.request("GET", "/api/models", "");
    let default = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|m| m["id"] == "all-MiniLM-L6-v2")
        .expect("default model");
    assert_eq!(default["state"], "loaded", "{default}");
    assert!(
        d.log()
            .contains(&format!("metrics listener on {address} (metrics.listen)")),
        "{}",
        d.log()
    );

    let out = caxton(&d, &["status"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "metrics:      on at {address} (metrics.listen): GET /metrics and GET /health only"
        )),
        "{stdout}"
    );
}

#[test]
fn metrics_listen_changes_apply_live_and_a_bad_address_is_refused_whole() {
    let d = Daemon::start_with(|dir| write_config(dir, ""), &[]);
    assert!(endpoints(&d).is_empty());
    let out = caxton(&d, &["status"], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "metrics:      off over TCP (metrics.listen is empty and no caxton-metrics.socket); GET /metrics on the Unix socket"
        ),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let v = set_listen(&d, "[\"127.0.0.1:0\"]");
    assert_eq!(v["changed"], serde_json::json!(["metrics.listen"]), "{v}");
    let address = only_endpoint(&d);
    assert_eq!(tcp(address, "GET", "/metrics", "").0, 200);

    // A port another process holds: the whole change is refused, the listener stays.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr");
    assert_eq!(
        refused_listen(&d, &format!("[\"127.0.0.1:0\", \"{busy}\"]")),
        format!(
            "metrics.listen: cannot listen on {busy}: Address already in use (os error 98); another process (or a socket unit such as caxton-metrics.socket) listens there: pick another port, or let that socket serve"
        )
    );
    assert_eq!(only_endpoint(&d), address);
    assert_eq!(tcp(address, "GET", "/health", "").0, 200);

    // Not an address: refused by the configuration's own check, naming file and key.
    assert_eq!(
        refused_listen(&d, "[\"localhost:9464\"]"),
        format!(
            "{}: metrics.listen.0: \"localhost:9464\" is not ADDRESS:PORT; write an IP address and a port, e.g. \"127.0.0.1:9464\", \"10.0.0.5:9464\" or \"[::]:9464\" (host names are not resolved)",
            d.dir.path().join("caxton.yaml").display()
        )
    );
    assert_eq!(only_endpoint(&d), address);

    // Emptied: the listener closes.
    set_listen(&d, "[]");
    assert!(endpoints(&d).is_empty());
    let deadline = Instant::now() + START_DEADLINE;
    while TcpStream::connect(address).is_ok() {
        assert!(Instant::now() < deadline, "{address} still accepts");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        d.log().contains(&format!(
            "metrics listener on {address} closed: no longer in metrics.listen"
        )),
        "{}",
        d.log()
    );
}

#[test]
fn a_metrics_socket_from_systemd_is_served_beside_the_api_socket() {
    use std::os::fd::AsRawFd;
    let sock_dir = tempfile::tempdir().expect("tempdir");
    let path = sock_dir.path().join("caxton.sock");
    let api = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let metrics = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = metrics.local_addr().expect("addr");
    let socket_path = path.clone();
    let mut d = Daemon::spawn_with_sockets(
        move |dir| {
            write_config(dir, "");
            common::point_socket_at(dir, &socket_path);
        },
        &[],
        &[
            (api.as_raw_fd(), "caxton.socket"),
            (metrics.as_raw_fd(), "metrics"),
        ],
    );
    d.socket = path;
    drop((api, metrics));
    d.wait_health(200);
    assert_eq!(
        endpoints(&d),
        vec![(address, "socket from systemd (metrics)".to_string())]
    );
    assert_only_metrics_and_health(address);
    // metrics.listen naming the same address is served by systemd's socket, not bound again.
    set_listen(&d, &format!("[\"{address}\"]"));
    assert_eq!(endpoints(&d).len(), 1);
    set_listen(&d, "[]");
    assert_eq!(tcp(address, "GET", "/metrics", "").0, 200);
}

#[test]
fn an_address_that_cannot_be_bound_at_start_is_tried_again_while_the_daemon_serves() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr");
    let d = Daemon::start_with(
        |dir| write_config(dir, &format!("metrics:\n  listen: [\"{busy}\"]\n")),
        &[],
    );
    // The daemon serves its socket; the listener says why it waits.
    assert_eq!(d.embed(&["served meanwhile"]).0.len(), 1);
    let (_, v) = d.request("GET", "/api/status", "");
    let listener = &v["metrics_listeners"][0];
    assert_eq!(listener["address"], busy.to_string(), "{v}");
    assert_eq!(
        listener["error"],
        format!(
            "metrics.listen: cannot listen on {busy}: Address already in use (os error 98); another process (or a socket unit such as caxton-metrics.socket) listens there: pick another port, or let that socket serve"
        ),
        "{v}"
    );
    assert!(
        d.log().contains("trying again every 10 s meanwhile"),
        "{}",
        d.log()
    );
    let out = caxton(&d, &["status"], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "metrics:      not listening on {busy} (metrics.listen): metrics.listen: cannot listen on {busy}: Address already in use"
        )),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Freed: the next attempt binds it.
    drop(taken);
    common::wait_until(&d, "the listener bound at last", || {
        d.request("GET", "/api/status", "").1["metrics_listeners"][0]["error"].is_null()
    });
    assert_eq!(tcp(busy, "GET", "/metrics", "").0, 200);
}
