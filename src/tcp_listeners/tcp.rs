//! The TCP side of a listener: binding an address (and saying what to do when that fails),
//! accepting within a bound, and serving each connection with hyper until the stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::{Role, Serving};

/// Connections a scrape listener serves at once; past it a new one is closed unanswered. A
/// scraper needs one; the bound keeps a flood from the network from costing more than a few
/// descriptors.
const SCRAPE_CONNECTIONS: usize = 16;

/// How long a scrape connection may take to send a request head, counted from when it
/// connects or got its last answer: a keep-alive connection between scrapes 15 s apart stays
/// open, an idle or slow one is closed.
const SCRAPE_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a scrape connection lives, whatever it does; a scraper reconnects.
const SCRAPE_LIFETIME: Duration = Duration::from_secs(600);

/// Pending connections the kernel queues before the daemon accepts them.
const BACKLOG: u32 = 64;

/// At most this many connections past the bound are answered (503) at once; past it a new
/// one is closed unanswered, so a flood cannot hold descriptors through its refusals.
const MAX_REFUSING: usize = 64;

/// How long a refused connection may take to send its head and read its refusal.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);

/// How a listener treats its connections.
#[derive(Clone)]
pub struct Policy {
    /// Connections served at once, and how long one may take to send a request head; read at
    /// each connection, so a reload applies to the next.
    limits: Arc<dyn Fn() -> (usize, Duration) + Send + Sync>,
    /// The longest a connection lives; `None` for no bound.
    lifetime: Option<Duration>,
    /// The answer to a connection past the bound (given the listener's address and the
    /// bound); `None` closes it unanswered.
    refusal: Option<fn(SocketAddr, usize) -> Response>,
    /// How long a stop waits for requests under way before it cuts them.
    drain: Duration,
}

impl Policy {
    /// A scraper's: a few connections, each living at most [`SCRAPE_LIFETIME`].
    pub fn scrapes() -> Policy {
        Policy {
            limits: Arc::new(|| (SCRAPE_CONNECTIONS, SCRAPE_HEAD_TIMEOUT)),
            lifetime: Some(SCRAPE_LIFETIME),
            refusal: None,
            drain: Duration::from_secs(5),
        }
    }

    /// The API's: `limits()` gives the connections served at once and the head deadline (the
    /// Unix socket's, per listener); a connection past the bound gets `refusal`; a stop waits
    /// up to `drain` for the requests under way.
    pub fn api(
        limits: impl Fn() -> (usize, Duration) + Send + Sync + 'static,
        refusal: fn(SocketAddr, usize) -> Response,
        drain: Duration,
    ) -> Policy {
        Policy {
            limits: Arc::new(limits),
            lifetime: None,
            refusal: Some(refusal),
            drain,
        }
    }
}

/// The address a request came in on, in its extensions: the API's token check refuses every
/// request on a listener off loopback when no token is set.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddress(pub SocketAddr);

/// A listening socket on `address`, with `SO_REUSEADDR` so a restart does not wait out the
/// previous run's connections in TIME_WAIT, and `SO_REUSEPORT` so a reload that moves the
/// listener to an overlapping address on the same port (`0.0.0.0:9464` to `10.0.0.5:9464`)
/// can bind the new one while the old one, closed at the commit, still listens. The error
/// names the key, the address, and what to do.
pub(super) fn listen(role: Role, address: SocketAddr) -> Result<TcpListener, String> {
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
                "{}: cannot listen on {address}: {e}{}",
                role.key(),
                hint(role, &e, address)
            )
        })
}

/// What to do about a failed bind, for the errors a configuration can cause.
fn hint(role: Role, e: &std::io::Error, address: SocketAddr) -> String {
    let unit = role.unit();
    match e.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(nix::errno::Errno::EADDRINUSE) => format!(
            "; another process (or a socket unit such as {unit}) listens there: pick another port, or let that socket serve"
        ),
        Some(nix::errno::Errno::EADDRNOTAVAIL) => format!(
            "; no interface of this host has the address {}: use one it has, or 0.0.0.0 / [::] with a firewall, or {unit} with FreeBind=yes for an address that comes up later",
            address.ip()
        ),
        Some(nix::errno::Errno::EACCES) => format!(
            "; ports below 1024 need CAP_NET_BIND_SERVICE: use a high port such as {}",
            match role {
                Role::Metrics => 9464,
                Role::Api => 11434,
            }
        ),
        Some(nix::errno::Errno::EAFNOSUPPORT | nix::errno::Errno::EPERM) => format!(
            "; this process may not open TCP sockets (caxton.service allows Unix sockets only): enable {unit} instead"
        ),
        _ => String::new(),
    }
}

/// Accepts on `listener` until the stop, serving each connection within the policy's bound
/// with the router; then finishes the requests under way (within the policy's drain).
pub(super) async fn accept(listener: TcpListener, serving: Serving, address: SocketAddr) {
    let Serving { app, policy, stop } = serving;
    let mut watching = stop.clone();
    let mut connections = JoinSet::new();
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut open = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (max, head_timeout) = (policy.limits)();
                    if open < max {
                        open += 1;
                        connections.spawn(serve(
                            stream,
                            app.clone(),
                            (address, head_timeout, policy.lifetime),
                            stop.clone(),
                        ));
                    } else if let Some(refusal) = policy.refusal
                        // Only this loop adds and the refusals only take away: no race.
                        && refusing.load(Ordering::Acquire) < MAX_REFUSING
                    {
                        refusing.fetch_add(1, Ordering::AcqRel);
                        let refusing = refusing.clone();
                        tokio::spawn(async move {
                            refuse(stream, move || refusal(address, max)).await;
                            refusing.fetch_sub(1, Ordering::AcqRel);
                        });
                    } else {
                        drop(stream); // closed unanswered
                    }
                }
                Err(e) => {
                    // Out of descriptors, mostly: wait rather than spin.
                    tracing::warn!("listener on {address}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => open -= 1,
            () = stopped(&mut watching) => break,
        }
    }
    // New clients get "connection refused" at once rather than waiting on a backlog.
    drop(listener);
    let drained = tokio::time::timeout(policy.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "stopping: {} connections on {address} still had a request under way after {} s; cut",
            connections.len(),
            policy.drain.as_secs()
        );
    }
}

/// Answers a connection past the bound with `refusal()` and closes it, within
/// [`REFUSAL_DEADLINE`].
async fn refuse(stream: TcpStream, refusal: impl Fn() -> Response + Copy + Send + 'static) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_DEADLINE)
        .keep_alive(false);
    let service = hyper::service::service_fn(move |_req| async move {
        Ok::<_, std::convert::Infallible>(refusal())
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_DEADLINE, conn).await;
}

/// One connection: HTTP/1.1 with the head deadline, within the lifetime; at the stop, the
/// request under way is finished and the connection closed.
async fn serve(
    stream: TcpStream,
    app: Router,
    (local, head_timeout, lifetime): (SocketAddr, Duration, Option<Duration>),
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(LocalAddress(local));
            app.clone().oneshot(req)
        });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = async {
        match lifetime {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let stopping = tokio::select! {
        _ = conn.as_mut() => false,
        () = ended => false,
        () = stopped(&mut stop) => true,
    };
    if stopping {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// Resolves once the daemon stops (or the listeners it belonged to are gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
