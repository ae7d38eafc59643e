//! Issue 6: caxtond under systemd: it serves on the socket `caxton.socket` hands over
//! (`LISTEN_FDS`) and never unlinks or chmods it, and it sends `WATCHDOG=1` from a loop that
//! makes a round trip through the engine.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{Daemon, NotifySocket, write_config};
use nix::sys::signal::Signal;

#[test]
fn serves_on_the_socket_systemd_passes_and_leaves_it_in_place() {
    let sock_dir = tempfile::tempdir().expect("tempdir");
    let path = sock_dir.path().join("caxton.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let socket_path = path.clone();
    let mut d = Daemon::spawn_activated(
        move |dir| {
            write_config(dir, "");
            common::point_socket_at(dir, &socket_path);
        },
        &[],
        &listener,
    );
    d.socket = path.clone();
    drop(listener);
    d.wait_health(200);
    assert!(
        d.log().contains("serving on the socket systemd passed"),
        "{}",
        d.log()
    );
    assert_eq!(d.embed(&["activated"]).0.len(), 1);

    // socket.mode is systemd's (SocketMode=) for such a socket: a change is not applied.
    let cfg = std::fs::read_to_string(d.dir.path().join("caxton.yaml")).expect("read");
    std::fs::write(
        d.dir.path().join("caxton.yaml"),
        cfg.replace("socket:\n", "socket:\n  mode: \"0600\"\n"),
    )
    .expect("write");
    let (s, v) = d.request("POST", "/api/reload", "");
    assert_eq!(s, 200, "{v}");
    assert!(
        d.log()
            .contains("socket.mode changed, but the socket belongs to caxton.socket"),
        "{}",
        d.log()
    );
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666);

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(), Some(0));
    assert!(
        path.exists(),
        "caxtond unlinked the socket systemd owns; log:\n{}",
        d.log()
    );
}

#[test]
fn the_watchdog_is_fed_only_while_the_process_and_its_engines_run() {
    let mut notify = NotifySocket::new();
    let path = notify.path.clone();
    let d = Daemon::spawn(
        |dir| write_config(dir, ""),
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "1000000")],
    );
    notify.wait_for("READY=1");
    notify.wait_for("WATCHDOG=1");
    assert!(d.log().contains("systemd watchdog every 1s"), "{}", d.log());

    // Stopped, it sends nothing: systemd's WatchdogSec= would restart it.
    d.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(200));
    notify.drain();
    let quiet_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet_until {
        assert!(
            !notify.receive().contains("WATCHDOG=1"),
            "a stopped daemon fed the watchdog"
        );
    }
    d.signal(Signal::SIGCONT);
    notify.wait_for("WATCHDOG=1");
}
