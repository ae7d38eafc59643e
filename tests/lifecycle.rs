//! Issue 2 daemon life: sd-notify readiness and stopping, SIGTERM draining in-flight work,
//! stale and live sockets, configuration errors, and the `caxton` CLI against the daemon.

mod common;

use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, START_DEADLINE, write_config};
use nix::sys::signal::Signal;

#[test]
fn notifies_ready_and_stopping_and_exits_0_on_sigterm() {
    let mut notify = common::NotifySocket::new();
    let path = notify.path.clone();
    let mut d = Daemon::spawn(|dir| write_config(dir, ""), &[("NOTIFY_SOCKET", &path)]);
    let ready = notify.wait_for("READY=1");
    assert!(ready.contains("STATUS=serving"), "{ready}");
    assert!(ready.contains("loaded: all-MiniLM-L6-v2"), "{ready}");
    // READY means the socket accepts and the default model's package verified.
    let (s, _) = d.request("GET", "/health", "");
    assert_eq!(s, 200);

    d.signal(Signal::SIGTERM);
    notify.wait_for("STOPPING=1");
    assert_eq!(d.wait_exit(), Some(0), "log:\n{}", d.log());
    assert!(!d.socket.exists(), "the socket file is removed on exit");
}

#[test]
fn sigterm_finishes_in_flight_requests() {
    let d = Daemon::start_with(|dir| write_config(dir, ""), &[("RUST_LOG", "debug")]);
    let socket = d.socket.clone();
    // A request big enough to still be running when the signal lands (seconds of work),
    // small enough to finish inside the stop's drain deadline on a loaded machine.
    let texts: Vec<String> = (0..64)
        .map(|i| format!("text {i} {}", "lorem ipsum dolor sit amet ".repeat(40)))
        .collect();
    let body = serde_json::json!({ "input": texts, "truncate": true })
        .to_string()
        .into_bytes();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(caxton::cli::client::request(
            &socket,
            hyper::Method::POST,
            "/v1/embeddings",
            Some(body),
        ))
    });
    let deadline = Instant::now() + START_DEADLINE;
    while !d.log().contains("texts=64") {
        assert!(
            Instant::now() < deadline,
            "request never queued; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut d = d;
    d.signal(Signal::SIGTERM);
    let (status, bytes) = client
        .join()
        .expect("client thread")
        .expect("the in-flight request is answered");
    assert_eq!(status.as_u16(), 200);
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(v["data"].as_array().expect("data").len(), 64);
    assert_eq!(d.wait_exit(), Some(0), "log:\n{}", d.log());
}

#[test]
fn a_stale_socket_is_replaced() {
    let d = Daemon::start_with(
        |dir| {
            write_config(dir, "");
            // A socket file nobody listens on, as a crash leaves behind.
            drop(UnixListener::bind(dir.join("caxton.sock")).expect("bind"));
        },
        &[],
    );
    assert!(d.log().contains("removing stale socket"), "{}", d.log());
}

#[test]
fn a_live_socket_or_a_plain_file_is_left_alone() {
    let mut live = Daemon::spawn(
        |dir| {
            write_config(dir, "");
            let l = UnixListener::bind(dir.join("caxton.sock")).expect("bind");
            // Keep it listening for the whole test.
            std::mem::forget(l);
        },
        &[],
    );
    assert_eq!(live.wait_exit(), Some(1));
    assert!(
        live.log().contains("another process is serving on"),
        "{}",
        live.log()
    );
    assert!(live.socket.exists());

    let mut file = Daemon::spawn(
        |dir| {
            write_config(dir, "");
            std::fs::write(dir.join("caxton.sock"), "precious").expect("write");
        },
        &[],
    );
    assert_eq!(file.wait_exit(), Some(1));
    assert!(
        file.log().contains("exists and is not a socket"),
        "{}",
        file.log()
    );
    assert_eq!(
        std::fs::read_to_string(&file.socket).expect("still there"),
        "precious"
    );
}

fn caxtond(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_caxtond"))
        .args(args)
        .output()
        .expect("run caxtond");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_the_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "");
    let d = dir.path().to_str().expect("utf-8");
    let (code, out, _) = caxtond(&["--config-dir", d, "--check-config"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("is valid"));

    write_config(dir.path(), "limits:\n  max_inputz: 3\n");
    let (code, _, err) = caxtond(&["--config-dir", d, "--check-config"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown field: found `max_inputz`"), "{err}");
    assert!(err.contains("limits.max_inputz"), "{err}");
    assert!(err.contains(&format!("{d}/caxton.yaml")), "{err}");

    write_config(dir.path(), "");
    std::fs::write(dir.path().join("caxton.yaml"), "socket:\n  mode: 660\n").expect("write");
    let (code, _, err) = caxtond(&["--config-dir", d, "--check-config"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("write the mode as a quoted octal string"),
        "{err}"
    );
    assert!(err.contains("socket.mode"), "{err}");

    // The daemon itself refuses to start on the same error.
    std::fs::write(
        dir.path().join("caxton.yaml"),
        "models:\n  default: \"bad id!\"\n",
    )
    .expect("write");
    let (code, _, err) = caxtond(&["--config-dir", d]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("models.default: \"bad id!\" is not a model id"),
        "{err}"
    );
}

#[test]
fn environment_overrides_the_files() {
    let d = Daemon::start_with(
        |dir| write_config(dir, ""),
        &[("CAXTON_LIMITS__MAX_INPUTS", "1")],
    );
    let (s, v) = d.request("POST", "/v1/embeddings", r#"{"input": ["a", "b"]}"#);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("too_many_inputs"))
    );
}

#[test]
fn the_cli_embeds_through_the_daemon() {
    let d = Daemon::start();
    let out = Command::new(env!("CARGO_BIN_EXE_caxton"))
        .args(["embed", "hello world", "a cat"])
        .env("CAXTON_SOCKET", &d.socket)
        .output()
        .expect("run caxton");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Vec<f32>> = serde_json::from_slice(&out.stdout).expect("JSON vectors");
    assert_eq!((v.len(), v[0].len()), (2, 384));
    let (api, _) = d.embed(&["hello world"]);
    assert_eq!(v[0], api[0]);

    let out = Command::new(env!("CARGO_BIN_EXE_caxton"))
        .args([
            "--socket",
            d.socket.to_str().expect("utf-8"),
            "embed",
            "--model",
            "nope",
            "x",
        ])
        .output()
        .expect("run caxton");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("404 Not Found: model \"nope\" not found"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_caxton"))
        .args(["--socket", "/nonexistent/caxton.sock", "embed", "x"])
        .output()
        .expect("run caxton");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot connect to caxtond at /nonexistent/caxton.sock")
    );
}

#[test]
fn a_tampered_default_package_leaves_the_daemon_up_but_unhealthy() {
    let d = Daemon::spawn(
        |dir| {
            let bundled = dir.join("bundled");
            std::fs::create_dir(&bundled).expect("mkdir");
            let mut bytes = std::fs::read(common::bundled_dir().join("all-MiniLM-L6-v2.tar.zst"))
                .expect("read");
            let n = bytes.len();
            bytes[n / 2] ^= 0x55;
            std::fs::write(bundled.join("all-MiniLM-L6-v2.tar.zst"), bytes).expect("write");
            write_config(dir, "");
            let cfg = std::fs::read_to_string(dir.join("caxton.yaml")).expect("read");
            let cfg = cfg.replace(
                &common::bundled_dir().display().to_string(),
                &bundled.display().to_string(),
            );
            std::fs::write(dir.join("caxton.yaml"), cfg).expect("write");
        },
        &[],
    );
    d.wait_health_status("unavailable");
    let (s, h) = d.request("GET", "/health", "");
    assert_eq!(s, 503);
    assert_eq!(h["status"], "unavailable");
    let reason = h["reason"].as_str().expect("reason");
    assert!(
        reason
            .contains("the default model \"all-MiniLM-L6-v2\" is not among the verified packages"),
        "{reason}"
    );
    let (_, m) = d.request("GET", "/api/models", "");
    assert_eq!(m["data"][0]["state"], "rejected");
    assert!(
        m["data"][0]["file"]
            .as_str()
            .expect("file")
            .ends_with("all-MiniLM-L6-v2.tar.zst")
    );
    assert!(d.log().contains("package_rejected"), "{}", d.log());
    let (s, v) = d.request("POST", "/v1/embeddings", r#"{"input": "a"}"#);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

#[test]
fn the_cli_ends_quietly_when_its_reader_goes_away() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let d = Daemon::start();
    // Megabytes of vectors, read a little of: the rest goes into a closed pipe.
    let texts: Vec<String> = (0..200).map(|i| format!("text {i}")).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_caxton"))
        .arg("embed")
        .args(&texts)
        .env("CAXTON_SOCKET", &d.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run caxton");
    let mut first = [0u8; 16];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("the start of the output");
    // The reader (this end of the pipe) is gone now.
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(13),
        "SIGPIPE ends it: {:?} {err}",
        out.status
    );
}
