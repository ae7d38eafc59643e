//! The TCP side of a metrics listener: binding an address (and saying what to do when that
//! fails), accepting within a bound, and serving each connection with hyper.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Connections served at once per listener; past it a new one is closed unanswered. A scraper
/// needs one; the bound keeps a flood from the network from costing more than a few
/// descriptors.
const MAX_CONNECTIONS: usize = 16;

/// How long a connection may take to send a request head, counted from when it connects or
/// got its last answer: a keep-alive connection between scrapes 15 s apart stays open, an
/// idle or slow one is closed.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a connection lives, whatever it does; a scraper reconnects.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// Pending connections the kernel queues before the daemon accepts them.
const BACKLOG: u32 = 64;

/// A listening socket on `address`, with `SO_REUSEADDR` so a restart does not wait out the
/// previous run's connections in TIME_WAIT, and `SO_REUSEPORT` so a reload that moves the
/// listener to an overlapping address on the same port (`0.0.0.0:9464` to `10.0.0.5:9464`)
/// can bind the new one while the old one, closed at the commit, still listens. The error
/// names the key, the address, and what to do.
pub(super) fn listen(address: SocketAddr) -> Result<TcpListener, String> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    socket
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.set_reuseport(true)?;
            s.set_nodelay(true)?;
            s.bind(address)?;
            s.listen(BACKLOG)
        })
        .map_err(|e| {
            format!(
                "metrics.listen: cannot listen on {address}: {e}{}",
                hint(&e, address)
            )
        })
}

/// What to do about a failed bind, for the errors a configuration can cause.
fn hint(e: &std::io::Error, address: SocketAddr) -> String {
    match e.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(nix::errno::Errno::EADDRINUSE) => {
            "; another process (or a socket unit such as caxton-metrics.socket) listens there: pick another port, or let that socket serve".into()
        }
        Some(nix::errno::Errno::EADDRNOTAVAIL) => format!(
            "; no interface of this host has the address {}: use one it has, or 0.0.0.0 / [::] with a firewall, or caxton-metrics.socket with FreeBind=yes for an address that comes up later",
            address.ip()
        ),
        Some(nix::errno::Errno::EACCES) => {
            "; ports below 1024 need CAP_NET_BIND_SERVICE: use a high port such as 9464".into()
        }
        Some(nix::errno::Errno::EAFNOSUPPORT | nix::errno::Errno::EPERM) => {
            "; this process may not open TCP sockets (caxton.service allows Unix sockets only): enable caxton-metrics.socket instead".into()
        }
        _ => String::new(),
    }
}

/// Accepts on `listener` until aborted, serving each connection (at most [`MAX_CONNECTIONS`]
/// at once) with `app`.
pub(super) async fn accept(listener: TcpListener, app: Router, address: SocketAddr) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let app = app.clone();
                        connections.spawn(async move {
                            serve(stream, app).await;
                            drop(permit);
                        });
                    }
                    // Closed unanswered: the scraper retries at its next interval.
                    Err(_) => drop(stream),
                },
                Err(e) => {
                    // Out of descriptors, mostly: wait rather than spin.
                    tracing::warn!("metrics listener on {address}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection: HTTP/1.1 with the head deadline, within [`CONNECTION_LIFETIME`].
async fn serve(stream: TcpStream, app: Router) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        app.clone().oneshot(req)
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
}
