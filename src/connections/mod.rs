//! The daemon's HTTP connections: accepts on the socket and serves each connection with hyper
//! (HTTP/1.1), with a deadline on every request head (`limits.idle_timeout`) and a bound on
//! how many are open (`limits.max_connections`). Past the bound a new connection closes the
//! oldest connection that has no request under way, taken from the client (uid and pid) that
//! holds the most: a client that floods the socket with idle or half-sent connections loses
//! its own, and the others keep being answered. When every open connection has a request or an
//! answer under way, the new one is answered 503 `too_many_connections` and closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::api::error::ApiError;
use crate::api::peer::Peer;
use crate::state::AppState;

mod activity;
mod table;

use activity::{Activity, Tracked};
pub use table::Connections;
use table::{Admission, Registered};

/// Descriptors kept for everything but connections (model files, the store, the journal,
/// inotify): the bound in force is at most the soft `RLIMIT_NOFILE` less this.
const RESERVED_FDS: u64 = 64;

/// How long a connection told to close (evicted, or the daemon stopping) with no request
/// under way may take to close by itself before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a stop waits for answers still being read by slow clients before it cuts them, so
/// that one client cannot hold the stop past systemd's stop timeout (90 s by default) and the
/// daemon still saves usage and says it stopped. Requests still being computed are waited for.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Past [`DRAIN_DEADLINE`], how long an answer still going out may take to be read before it
/// is cut: one computed late in the stop is delivered to a client that reads it.
const LATE_ANSWER_GRACE: Duration = Duration::from_secs(10);

/// Where the daemon is in its life, as the connections see it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Serving,
    /// Stopping: finish what is under way, close the rest.
    Draining,
    /// Stopping past [`DRAIN_DEADLINE`]: answers not read within [`LATE_ANSWER_GRACE`] of
    /// being computed are cut too.
    Cutting,
}

/// How long a refused connection may take to send its head and read its 503.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);

/// At most this many refused connections are answered at once; past it a new one is closed
/// unanswered, so a flood cannot hold descriptors through its 503s.
const MAX_REFUSING: usize = 64;

/// The bound in force: `limits.max_connections`, within the descriptors the process may open.
pub(crate) fn bound(configured: usize) -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => {
            // Refused connections, answered beside the bound, have their own share.
            let room = soft
                .saturating_sub(RESERVED_FDS + MAX_REFUSING as u64)
                .max(1);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        Err(_) => configured,
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one (systemd's default soft limit is 1,024,
/// whatever `LimitNOFILE` allows), and says when `limits.max_connections` still does not fit.
pub fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!("cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
    let fits = bound(max_connections);
    if fits < max_connections {
        tracing::warn!(
            caxton_event = "connection_limit_lowered",
            "limits.max_connections is {max_connections} but the open-file limit allows {fits} connections; raise LimitNOFILE in the unit"
        );
    }
}

/// Accepts on `listener` and serves `app` until `stop` turns true, then lets the requests
/// under way finish and returns.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) {
    let (phase_tx, phase) = watch::channel(Phase::Serving);
    let admitter = Admitter {
        app,
        state,
        connections: Arc::new(Connections::default()),
        refusing: Arc::new(AtomicUsize::new(0)),
        phase,
    };
    let mut tasks = JoinSet::new();
    let mut accept_failing = false;
    loop {
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                accept_failing = false;
                admitter.admit(stream, &mut tasks);
            }
            Err(e) => {
                // Out of descriptors or memory: the bound frees some as connections close.
                if !accept_failing {
                    tracing::warn!(
                        caxton_event = "accept_failed",
                        "cannot accept a connection on the socket: {e}; retrying"
                    );
                }
                accept_failing = true;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // New clients get "connection refused" at once rather than waiting on a backlog.
    drop(listener);
    drain(tasks, &phase_tx, &admitter.connections).await;
}

/// What a connection accepted is served with, or refused by.
struct Admitter {
    app: Router,
    state: Arc<AppState>,
    connections: Arc<Connections>,
    /// Refused connections being answered.
    refusing: Arc<AtomicUsize>,
    phase: watch::Receiver<Phase>,
}

impl Admitter {
    /// Serves `stream` within the bound (closing an idle connection for it if need be), or
    /// refuses it, in a task of `tasks`.
    fn admit(&self, stream: UnixStream, tasks: &mut JoinSet<()>) {
        let peer = Peer::of(&stream);
        let limits = self.state.settings().limits.clone();
        let admission = self.connections.admit(
            (peer.uid, peer.pid),
            bound(limits.max_connections),
            limits.idle_timeout.0,
        );
        match admission {
            Admission::Served {
                id,
                close,
                activity,
            } => {
                tasks.spawn(connection(
                    stream,
                    peer,
                    (id, close, activity),
                    self.app.clone(),
                    self.connections.clone(),
                    limits.idle_timeout.0,
                    self.phase.clone(),
                ));
            }
            Admission::Refused => {
                // Counted here, not in the task, so a burst cannot pass the cap before any
                // task has run.
                if self.refusing.fetch_add(1, Ordering::AcqRel) < MAX_REFUSING {
                    tasks.spawn(refuse(stream, self.refusing.clone(), self.phase.clone()));
                } else {
                    self.refusing.fetch_sub(1, Ordering::AcqRel); // closed unanswered
                }
            }
        }
    }
}

/// The stop: lets the connections finish what is under way, for [`DRAIN_DEADLINE`]; past it,
/// cuts answers that are not read.
async fn drain(mut tasks: JoinSet<()>, phase_tx: &watch::Sender<Phase>, connections: &Connections) {
    let _ = phase_tx.send(Phase::Draining);
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            caxton_event = "connections_cut",
            "stopping: {} connections still had a request or an answer under way after {} s; closing each once its answer is computed and has had {} s to be read",
            connections.open(),
            DRAIN_DEADLINE.as_secs(),
            LATE_ANSWER_GRACE.as_secs()
        );
        let _ = phase_tx.send(Phase::Cutting);
        while tasks.join_next().await.is_some() {}
    }
}

/// Answers a connection over the bound 503 and closes it, within [`REFUSAL_DEADLINE`] or the
/// stop, whichever comes first; then takes itself off the `refusing` count.
async fn refuse(stream: UnixStream, refusing: Arc<AtomicUsize>, mut phase: watch::Receiver<Phase>) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_DEADLINE)
        .keep_alive(false);
    let service = hyper::service::service_fn(|_req| async {
        Ok::<_, std::convert::Infallible>(refusal().into_response())
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = tokio::time::timeout(REFUSAL_DEADLINE, conn) => {}
        _ = phase.wait_for(|p| *p != Phase::Serving) => {}
    }
    refusing.fetch_sub(1, Ordering::AcqRel);
}

/// Serves one connection until it closes, is evicted or the daemon stops.
async fn connection(
    stream: UnixStream,
    peer: Peer,
    (id, close, activity): (u64, Arc<Notify>, Arc<Activity>),
    app: Router,
    connections: Arc<Connections>,
    idle_timeout: Duration,
    mut phase: watch::Receiver<Phase>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    let io = Tracked {
        io: TokioIo::new(stream),
        activity: activity.clone(),
    };
    let _registered = Registered {
        connections: connections.clone(),
        id,
    };
    let service = {
        let (connections, activity) = (connections.clone(), activity.clone());
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let guard = connections.begin(id, activity.clone());
            let app = app.clone();
            async move {
                let response = app.oneshot(req).await?;
                // The guard lives as long as the body hyper is writing.
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    axum::body::Body::new(body.map_err(move |e| {
                        let _keep = &guard;
                        e
                    }))
                }))
            }
        })
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // Evicted or the daemon stopping: hyper finishes a request under way and closes an idle
    // connection, but keeps reading a head that has begun to arrive (until the head
    // deadline). Such a connection, with no request under way, is dropped after a grace.
    let mut closing = *phase.borrow() != Phase::Serving;
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            // First, so that a head completing now is counted before the grace below reads
            // `activity` (hyper calls the service inside this poll).
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection of uid {} closed: {e}", peer.uid);
                }
                break;
            }
            () = close.notified(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = phase.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(CLOSE_GRACE), if closing => {
                let cutting = *phase.borrow() == Phase::Cutting;
                if !activity.busy() || (cutting && activity.may_cut(LATE_ANSWER_GRACE)) {
                    break;
                }
            }
        }
    }
}

/// The answer to a connection over the bound when none can be closed for it.
fn refusal() -> ApiError {
    crate::api::RequestError::TooManyConnections.into()
}
