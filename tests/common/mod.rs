//! Test harness: starts the real `caxtond` binary on a temporary socket with a temporary
//! config directory and talks to it like a client.
#![allow(dead_code)]

pub mod bge_m3;
pub mod cgroups;
pub mod colbert;
pub mod engine;
pub mod fixtures;
pub mod footprint;
pub mod metrics;
pub mod packages;
pub mod seeded;
pub mod skip;
pub mod torch_pt;
pub mod towers;

// Each test target uses some of these; the rest would be unused imports there.
#[allow(unused_imports)]
pub use metrics::{sample, scrape};
#[allow(unused_imports)]
pub use packages::{bundled_copy, bundled_copy_edit, bundled_copy_poisoned, bundled_copy_with_id};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: the machine may be loaded (2 cores, tests in parallel).
pub const START_DEADLINE: Duration = Duration::from_secs(120);

/// The repository's bundled packages.
pub fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bundled-models")
}

/// A running daemon in its own temporary directory; killed on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    stderr: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// Points the test config in `dir` at the socket `path` (one systemd would pass), as the shipped
/// config and unit agree on one.
pub fn point_socket_at(dir: &Path, path: &Path) {
    let cfg = std::fs::read_to_string(dir.join("caxton.yaml")).expect("read");
    let cfg = cfg.replace(
        &format!("path: {}", dir.join("caxton.sock").display()),
        &format!("path: {}", path.display()),
    );
    std::fs::write(dir.join("caxton.yaml"), cfg).expect("write");
}

/// Config for a test daemon: everything under `dir`, bundled models from the repo, plus `extra`
/// YAML appended (sections not already present).
pub fn write_config(dir: &Path, extra: &str) {
    let yaml = format!(
        "socket:\n  path: {sock}\nstate_dir: {state}\nmodels:\n  bundled_dir: {bundled}\n  package_dir: {packages}\n{extra}",
        sock = dir.join("caxton.sock").display(),
        state = dir.join("state").display(),
        bundled = bundled_dir().display(),
        packages = dir.join("packages").display(),
    );
    std::fs::write(dir.join("caxton.yaml"), yaml).expect("write caxton.yaml");
}

/// A `conf.d/10-precision.yaml` drop-in setting `models.precision` of each `(id, precision)`
/// (the test daemons that serve one fixture at several precisions).
pub fn write_precisions(dir: &Path, precisions: &[(&str, &str)]) {
    std::fs::create_dir_all(dir.join("conf.d")).expect("mkdir conf.d");
    let entries: String = precisions
        .iter()
        .map(|(id, p)| format!("    {id}: {p}\n"))
        .collect();
    std::fs::write(
        dir.join("conf.d/10-precision.yaml"),
        format!("models:\n  precision:\n{entries}"),
    )
    .expect("write the precision drop-in");
}

impl Daemon {
    /// Starts a daemon with the default test config and waits until `/health` is 200.
    pub fn start() -> Daemon {
        Self::start_with(|dir| write_config(dir, ""), &[])
    }

    /// Starts a daemon after `setup` prepared its directory, with extra environment.
    pub fn start_with(setup: impl FnOnce(&Path), env: &[(&str, &str)]) -> Daemon {
        let d = Self::spawn(setup, env);
        d.wait_health(200);
        d
    }

    /// Spawns without waiting.
    pub fn spawn(setup: impl FnOnce(&Path), env: &[(&str, &str)]) -> Daemon {
        Self::spawn_in(setup, env, &[])
    }

    /// Spawns without waiting, inside the cgroups whose `cgroup.procs` files are given (the
    /// process joins them before it execs caxtond, so every byte is charged there).
    pub fn spawn_in(setup: impl FnOnce(&Path), env: &[(&str, &str)], procs: &[PathBuf]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        setup(dir.path());
        let stderr = dir.path().join("caxtond.log");
        let child = Self::spawn_child(dir.path(), &stderr, env, procs, &[]);
        Self::around(child, dir, stderr)
    }

    /// Spawns without waiting, handing `listener` over as systemd's socket activation does:
    /// as fd 3, with `LISTEN_FDS=1` and `LISTEN_PID` set to caxtond's pid.
    pub fn spawn_activated(
        setup: impl FnOnce(&Path),
        env: &[(&str, &str)],
        listener: &std::os::unix::net::UnixListener,
    ) -> Daemon {
        use std::os::fd::AsRawFd;
        Self::spawn_with_sockets(setup, env, &[(listener.as_raw_fd(), "caxton.socket")])
    }

    /// Spawns without waiting, handing `sockets` over as systemd does: from fd 3 on, in
    /// order, with `LISTEN_FDS`, `LISTEN_FDNAMES` (the names given) and `LISTEN_PID`.
    pub fn spawn_with_sockets(
        setup: impl FnOnce(&Path),
        env: &[(&str, &str)],
        sockets: &[(std::os::fd::RawFd, &str)],
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        setup(dir.path());
        let stderr = dir.path().join("caxtond.log");
        let names: Vec<&str> = sockets.iter().map(|(_, n)| *n).collect();
        let names = names.join(":");
        let mut env = env.to_vec();
        env.push(("LISTEN_FDNAMES", &names));
        let fds: Vec<std::os::fd::RawFd> = sockets.iter().map(|(fd, _)| *fd).collect();
        let child = Self::spawn_child(dir.path(), &stderr, &env, &[], &fds);
        Self::around(child, dir, stderr)
    }

    fn around(child: Child, dir: tempfile::TempDir, stderr: PathBuf) -> Daemon {
        Daemon {
            child: Some(child),
            socket: dir.path().join("caxton.sock"),
            dir,
            stderr,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    /// Starts a new daemon process in the same directory (the previous one must be gone).
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "the previous daemon is still running");
        self.child = Some(Self::spawn_child(
            self.dir.path(),
            &self.stderr,
            &[],
            &[],
            &[],
        ));
    }

    fn spawn_child(
        dir: &Path,
        stderr: &Path,
        env: &[(&str, &str)],
        procs: &[PathBuf],
        listen: &[std::os::fd::RawFd],
    ) -> Child {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(stderr)
            .expect("log file");
        let bin = env!("CARGO_BIN_EXE_caxtond");
        let mut cmd = if procs.is_empty() && listen.is_empty() {
            Command::new(bin)
        } else {
            // The shell moves itself into the cgroups and names itself as LISTEN_PID, then
            // becomes caxtond (same pid).
            let mut script = String::new();
            if !listen.is_empty() {
                script.push_str(&format!(
                    "export LISTEN_PID=$$ LISTEN_FDS={} && ",
                    listen.len()
                ));
            }
            for (i, _) in procs.iter().enumerate() {
                script.push_str(&format!("echo $$ > \"$TEST_CGROUP_PROCS_{i}\" && "));
            }
            script.push_str("exec \"$0\" \"$@\"");
            let mut c = Command::new("sh");
            c.arg("-c").arg(script).arg(bin);
            for (i, p) in procs.iter().enumerate() {
                c.env(format!("TEST_CGROUP_PROCS_{i}"), p);
            }
            c
        };
        if !listen.is_empty() {
            use std::os::unix::process::CommandExt;
            assert!(listen.len() <= 8, "at most 8 sockets are handed over");
            let fds = listen.to_vec();
            // SAFETY: fcntl and dup2 are async-signal-safe, and the closure allocates nothing;
            // nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // First out of the way of fds 3.. (a source there would be overwritten),
                    // then into place; dup2 clears close-on-exec.
                    let mut moved = [0; 8];
                    for (i, &fd) in fds.iter().enumerate() {
                        moved[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                        if moved[i] < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for (i, &fd) in moved[..fds.len()].iter().enumerate() {
                        if libc::dup2(fd, 3 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        cmd.arg("--config-dir")
            .arg(dir)
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("WATCHDOG_USEC")
            .env_remove("MEMORY_PRESSURE_WATCH")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .env_remove("CAXTON_TEST_CLOCK")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn caxtond")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until `/health` answers `status`, failing with the log if the daemon exits or
    /// the deadline passes.
    pub fn wait_health(&self, status: u16) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok((s, _)) = self.try_request("GET", "/health", None)
                && s == status
            {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "no /health {status} before the deadline; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `/health` reports `status` (`ok`, `starting`, `unavailable`).
    pub fn wait_health_status(&self, status: &str) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok((_, v)) = self.try_request("GET", "/health", None)
                && v["status"] == status
            {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "no /health {status:?} before the deadline; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with the log if the daemon has exited.
    pub fn assert_running(&self) {
        let pid = self.child.as_ref().expect("child").id();
        let alive = Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(alive, "caxtond exited; log:\n{}", self.log());
    }

    /// One request; errors only on transport failure.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let (status, bytes) =
            self.raw_request(method, path, body.map(|b| b.as_bytes().to_vec()))?;
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// One request with raw bytes, returning status and raw body.
    pub fn raw_request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let method = hyper::Method::from_bytes(method.as_bytes())?;
        let (status, bytes) = self.rt.block_on(caxton::cli::client::request(
            &self.socket,
            method,
            path,
            body,
        ))?;
        Ok((status.as_u16(), bytes.to_vec()))
    }

    /// One request returning status, headers (lower-case names) and raw body.
    pub fn try_request_with_headers(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, std::collections::HashMap<String, String>, Vec<u8>)> {
        let method = hyper::Method::from_bytes(method.as_bytes())?;
        let (status, headers, bytes) =
            self.rt.block_on(caxton::cli::client::request_with_headers(
                &self.socket,
                method,
                path,
                body.map(|b| b.as_bytes().to_vec()),
            ))?;
        let headers = headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        Ok((status.as_u16(), headers, bytes.to_vec()))
    }

    /// One request that must reach the daemon.
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.try_request(
            method,
            path,
            if body.is_empty() { None } else { Some(body) },
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}; log:\n{}", self.log()))
    }

    /// Embeds `texts` through `/v1/embeddings`, returning vectors and prompt tokens. Texts
    /// past the model's length are cut, as sentence-transformers cuts them.
    pub fn embed(&self, texts: &[&str]) -> (Vec<Vec<f32>>, u64) {
        let body = serde_json::json!({ "input": texts, "truncate": true }).to_string();
        let (status, v) = self.request("POST", "/v1/embeddings", &body);
        assert_eq!(status, 200, "{v}");
        let vectors = v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|d| {
                d["embedding"]
                    .as_array()
                    .expect("embedding")
                    .iter()
                    .map(|x| x.as_f64().expect("float") as f32)
                    .collect()
            })
            .collect();
        (
            vectors,
            v["usage"]["prompt_tokens"].as_u64().expect("usage"),
        )
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().expect("child").id() as i32);
        nix::sys::signal::kill(pid, sig).expect("kill");
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "caxtond did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `cond` until it holds, failing with `what` and the daemon's log at the deadline.
pub fn wait_until(d: &Daemon, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + START_DEADLINE;
    while !cond() {
        d.assert_running();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The `limits.max_inputs` in force, read from the 413 an oversized request gets.
pub fn max_inputs(d: &Daemon) -> u64 {
    let body = serde_json::json!({ "input": vec!["a"; 2000] }).to_string();
    let (status, v) = d.request("POST", "/v1/embeddings", &body);
    assert_eq!(status, 413, "{v}");
    let msg = v["error"]["message"].as_str().expect("message");
    let n = msg
        .split("at most ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("a number");
    n.parse().expect("a number")
}

/// A datagram socket standing in for systemd's notify socket.
pub struct NotifySocket {
    pub _dir: tempfile::TempDir,
    pub path: String,
    sock: std::os::unix::net::UnixDatagram,
    pub seen: String,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        NotifySocket {
            path: path.to_str().expect("utf-8").to_string(),
            _dir: dir,
            sock,
            seen: String::new(),
        }
    }

    /// Reads datagrams until everything received contains `text`.
    pub fn wait_containing(&mut self, text: &str) {
        let deadline = Instant::now() + START_DEADLINE;
        let mut buf = [0u8; 4096];
        while !self.seen.contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?}; got {:?}",
                self.seen
            );
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                self.seen.push('\n');
            }
        }
    }

    /// Drops whatever datagrams are queued.
    pub fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        self.sock.set_nonblocking(true).expect("nonblocking");
        while self.sock.recv(&mut buf).is_ok() {}
        self.sock.set_nonblocking(false).expect("blocking");
    }

    /// One datagram, or nothing within the read timeout (200 ms).
    pub fn receive(&mut self) -> String {
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// Reads datagrams until a line equal to `want` arrives; returns the datagram holding it.
    pub fn wait_for(&mut self, want: &str) -> String {
        let deadline = Instant::now() + START_DEADLINE;
        let mut buf = [0u8; 4096];
        loop {
            assert!(Instant::now() < deadline, "no {want}; got {:?}", self.seen);
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push_str(&msg);
                self.seen.push('\n');
                if msg.lines().any(|l| l == want) {
                    return msg;
                }
            }
        }
    }
}

/// The `/api/models` entry for model `id`.
pub fn model_entry(d: &Daemon, id: &str) -> Option<Value> {
    let (_, v) = d.request("GET", "/api/models", "");
    v["data"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
}

/// The `/api/models` rejection entry for a package file named `name`.
pub fn rejection(d: &Daemon, name: &str) -> Option<Value> {
    let (_, v) = d.request("GET", "/api/models", "");
    v["data"]
        .as_array()?
        .iter()
        .find(|m| m["state"] == "rejected" && m["file"].as_str().is_some_and(|f| f.ends_with(name)))
        .cloned()
}

/// A daemon whose socket anyone may connect to (mode 0666), for testing the admin checks.
pub fn start_open_socket() -> Daemon {
    Daemon::start_with(
        |dir| {
            write_config(dir, "");
            std::fs::create_dir(dir.join("conf.d")).expect("mkdir");
            std::fs::write(
                dir.join("conf.d/10-mode.yaml"),
                "socket:\n  mode: \"0666\"\n",
            )
            .expect("write");
        },
        &[],
    )
}

/// Runs `caxton ARGS` against `d`, as user and group `as_user` when given.
pub fn caxton(d: &Daemon, args: &[&str], as_user: Option<u32>) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_caxton"));
    cmd.args(args).env("CAXTON_SOCKET", &d.socket);
    if let Some(id) = as_user {
        cmd.uid(id).gid(id);
    }
    cmd.output().expect("run caxton")
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// One text through `/v1/embeddings` with `model`: status and body.
pub fn embed_with(d: &Daemon, model: &str) -> (u16, Value) {
    d.request(
        "POST",
        "/v1/embeddings",
        &format!(r#"{{"input": "hello", "model": "{model}"}}"#),
    )
}

/// Starts a daemon with an empty package directory and `extra` YAML as the drop-in
/// `conf.d/50-test.yaml` (which a test may rewrite to reload).
pub fn start_with_dropin(extra: &str) -> Daemon {
    let extra = format!("{extra}\n");
    Daemon::start_with(
        move |dir| {
            std::fs::create_dir(dir.join("packages")).expect("mkdir");
            write_config(dir, "");
            std::fs::create_dir(dir.join("conf.d")).expect("mkdir");
            std::fs::write(dir.join("conf.d/50-test.yaml"), extra).expect("write");
        },
        &[],
    )
}

/// The daemon's resident memory (VmRSS) in bytes.
pub fn rss_bytes(d: &Daemon) -> u64 {
    let pid = d.child.as_ref().expect("child").id();
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// `GET /api/memory/status` once the monitor has chosen its pressure source. `/health` is 200
/// as soon as the default model serves, and the monitor starts just after: until its first
/// tick the status says source `off`, detail `not started` (issue 50: a test that asked at
/// once failed on a loaded machine).
pub fn memory_status_probed(d: &Daemon) -> Value {
    let mut status = Value::Null;
    wait_until(d, "the monitor's choice of a pressure source", || {
        status = d.request("GET", "/api/memory/status", "").1;
        status["pressure"]["detail"] != "not started"
    });
    status
}

/// One HTTP/1.1 request over TCP (`Connection: close`) with `headers`: the status, the head
/// and the body as text.
pub fn tcp_request(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(address)
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    s.set_read_timeout(Some(START_DEADLINE)).expect("timeout");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: caxton\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (status, head.to_string(), body.to_string())
}

/// The longest a test client waits on a 503's `Retry-After` before its next request.
pub const BACKOFF_CAP: std::time::Duration = std::time::Duration::from_secs(1);

/// A 503's `Retry-After`, in seconds as the daemon sends it (zero when absent or unreadable).
pub fn retry_after(headers: &hyper::HeaderMap) -> std::time::Duration {
    let secs = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    std::time::Duration::from_secs(secs)
}
