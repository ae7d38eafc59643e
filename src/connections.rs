//! The daemon's HTTP connections: accepts on the socket and serves each connection with hyper
//! (HTTP/1.1), with a deadline on every request head (`limits.idle_timeout`) and a bound on
//! how many are open (`limits.max_connections`). Past the bound a new connection closes the
//! oldest connection that has no request under way, taken from the client (uid and pid) that
//! holds the most: a client that floods the socket with idle or half-sent connections loses
//! its own, and the others keep being answered. When every open connection has a request
//! under way, the new one is answered 503 `too_many_connections` and closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
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

/// Descriptors kept for everything but connections (model files, the store, the journal,
/// inotify): the bound in force is at most the soft `RLIMIT_NOFILE` less this.
const RESERVED_FDS: u64 = 64;

/// How long a connection told to close (evicted, or the daemon stopping) with no request
/// under way may take to close by itself before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How often the journal may say that connections were closed or refused for the bound.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Who holds a connection: uid and pid from SO_PEERCRED.
type Owner = (u32, Option<i32>);

/// The open connections.
#[derive(Default)]
pub struct Connections {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Entry>,
    /// Evictions and refusals not yet in the journal, and when it last heard of them.
    evicted: u64,
    refused: u64,
    reported: Option<Instant>,
}

struct Entry {
    owner: Owner,
    /// Requests under way (a connection with none may be closed for a new one).
    in_flight: usize,
    /// When it opened or last finished a request.
    since: Instant,
    /// Told to close when evicted.
    close: Arc<Notify>,
}

/// What [`Connections::admit`] decided for a new connection.
enum Admission {
    /// Served; `close` is notified if it is evicted later.
    Served { id: u64, close: Arc<Notify> },
    /// Over the bound with no connection to close: answered 503.
    Refused,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the table leaves it consistent (every change is one step).
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Registers a new connection of `owner`, closing others to stay within `max`.
    fn admit(&self, owner: Owner, max: usize) -> Admission {
        let mut t = self.lock();
        let t = &mut *t;
        while t.open.len() >= max {
            let Some(victim) = victim(&t.open) else {
                t.refused += 1;
                t.report(max);
                return Admission::Refused;
            };
            if let Some(entry) = t.open.remove(&victim) {
                entry.close.notify_one();
                t.evicted += 1;
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let close = Arc::new(Notify::new());
        t.open.insert(
            id,
            Entry {
                owner,
                in_flight: 0,
                since: Instant::now(),
                close: close.clone(),
            },
        );
        t.report(max);
        Admission::Served { id, close }
    }

    /// A request on connection `id` began (also counted in the connection's own `busy`);
    /// the guard ends it.
    fn begin(self: &Arc<Self>, id: u64, busy: Arc<AtomicUsize>) -> RequestGuard {
        busy.fetch_add(1, Ordering::AcqRel);
        if let Some(e) = self.lock().open.get_mut(&id) {
            e.in_flight += 1;
        }
        RequestGuard {
            connections: self.clone(),
            id,
            busy,
        }
    }

    /// Connection `id` is gone.
    fn remove(&self, id: u64) {
        self.lock().open.remove(&id);
    }
}

impl Table {
    /// Says in the journal, at most once per [`REPORT_EVERY`], how many connections the bound
    /// closed or refused since it last said.
    fn report(&mut self, max: usize) {
        if self.evicted + self.refused == 0
            || self.reported.is_some_and(|at| at.elapsed() < REPORT_EVERY)
        {
            return;
        }
        let top = top_owner(&self.open);
        tracing::warn!(
            caxton_event = "connection_limit",
            caxton_evicted = self.evicted,
            caxton_refused = self.refused,
            "{max} connections are open (limits.max_connections): since the last report, connections closed to make room: {}, new ones refused: {}; the most are held by {}. Raise limits.max_connections (and LimitNOFILE) if these clients are expected",
            self.evicted,
            self.refused,
            top.map_or("nobody".into(), |((uid, pid), n)| match pid {
                Some(pid) => format!("pid {pid} (uid {uid}), {n}"),
                None => format!("uid {uid}, {n}"),
            }),
        );
        self.evicted = 0;
        self.refused = 0;
        self.reported = Some(Instant::now());
    }
}

/// The connection to close for a new one: of those with no request under way, the oldest of
/// the owner holding the most connections.
fn victim(open: &HashMap<u64, Entry>) -> Option<u64> {
    let mut held: HashMap<Owner, usize> = HashMap::new();
    for e in open.values() {
        *held.entry(e.owner).or_default() += 1;
    }
    open.iter()
        .filter(|(_, e)| e.in_flight == 0)
        .max_by_key(|(_, e)| (held[&e.owner], std::cmp::Reverse(e.since)))
        .map(|(&id, _)| id)
}

/// The owner holding the most connections, and how many.
fn top_owner(open: &HashMap<u64, Entry>) -> Option<(Owner, usize)> {
    let mut held: HashMap<Owner, usize> = HashMap::new();
    for e in open.values() {
        *held.entry(e.owner).or_default() += 1;
    }
    held.into_iter().max_by_key(|&(_, n)| n)
}

/// Ends a request when dropped (the answer's head is sent, or the client went away).
struct RequestGuard {
    connections: Arc<Connections>,
    id: u64,
    busy: Arc<AtomicUsize>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        if let Some(e) = self.connections.lock().open.get_mut(&self.id) {
            e.in_flight = e.in_flight.saturating_sub(1);
            e.since = Instant::now();
        }
    }
}

/// The bound in force: `limits.max_connections`, within the descriptors the process may open.
fn bound(configured: usize) -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => {
            let room = soft.saturating_sub(RESERVED_FDS).max(1);
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
    let connections = Arc::new(Connections::default());
    let mut tasks = JoinSet::new();
    let mut accept_failing = false;
    loop {
        while tasks.try_join_next().is_some() {}
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let stream = match stream {
            Ok((stream, _)) => {
                accept_failing = false;
                stream
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
                continue;
            }
        };
        let peer = Peer::of(&stream);
        let limits = state.settings().limits.clone();
        let admission = connections.admit((peer.uid, peer.pid), bound(limits.max_connections));
        let task = connection(
            stream,
            peer,
            admission,
            app.clone(),
            connections.clone(),
            limits.idle_timeout.0,
            stop.clone(),
        );
        tasks.spawn(task);
    }
    while tasks.join_next().await.is_some() {}
}

/// Serves one connection until it closes, is evicted or the daemon stops.
async fn connection(
    stream: UnixStream,
    peer: Peer,
    admission: Admission,
    app: Router,
    connections: Arc<Connections>,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout);
    let io = TokioIo::new(stream);
    let (id, close) = match admission {
        Admission::Served { id, close } => (id, close),
        Admission::Refused => {
            builder.keep_alive(false);
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(refusal().into_response())
            });
            let _ = builder.serve_connection(io, service).await;
            return;
        }
    };
    // Requests under way on this connection, seen by the closing logic below (the table
    // forgets an evicted connection at once).
    let busy = Arc::new(AtomicUsize::new(0));
    let service = {
        let (connections, busy) = (connections.clone(), busy.clone());
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let guard = connections.begin(id, busy.clone());
            let app = app.clone();
            async move {
                let response = app.oneshot(req).await;
                drop(guard);
                response
            }
        })
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // Evicted or the daemon stopping: hyper finishes a request under way and closes an idle
    // connection, but keeps reading a head that has begun to arrive (until the head
    // deadline). Such a connection, with no request under way, is dropped after a grace.
    let mut closing = *stop.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
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
            _ = stop.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(CLOSE_GRACE), if closing => {
                if busy.load(Ordering::Acquire) == 0 {
                    break;
                }
            }
        }
    }
    connections.remove(id);
}

/// The answer to a connection over the bound when none can be closed for it.
fn refusal() -> ApiError {
    ApiError::unavailable(
        "too_many_connections",
        "every connection the daemon keeps open (limits.max_connections) has a request under way; retry shortly, or raise limits.max_connections",
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(owner: Owner, in_flight: usize, age_ms: u64) -> Entry {
        Entry {
            owner,
            in_flight,
            since: Instant::now() - Duration::from_millis(age_ms),
            close: Arc::new(Notify::new()),
        }
    }

    #[test]
    fn the_victim_is_the_oldest_idle_connection_of_the_biggest_holder() {
        let (flood, app) = ((1000, Some(7)), (1000, Some(8)));
        let open: HashMap<u64, Entry> = [
            (1, entry(app, 0, 9_000)),   // oldest idle, but its owner holds one
            (2, entry(flood, 1, 8_000)), // busy
            (3, entry(flood, 0, 5_000)), // the flood's oldest idle
            (4, entry(flood, 0, 1_000)),
        ]
        .into_iter()
        .collect();
        assert_eq!(victim(&open), Some(3));
    }

    #[test]
    fn busy_connections_are_never_victims() {
        let open: HashMap<u64, Entry> = [(1, entry((0, None), 1, 5)), (2, entry((0, None), 2, 9))]
            .into_iter()
            .collect();
        assert_eq!(victim(&open), None);
    }

    #[test]
    fn admission_closes_to_stay_within_the_bound_and_refuses_when_all_are_busy() {
        let c = Arc::new(Connections::default());
        let flood = (1000, Some(7));
        let mut first = Vec::new();
        for _ in 0..3 {
            match c.admit(flood, 3) {
                Admission::Served { id, close } => first.push((id, close)),
                Admission::Refused => panic!("refused under the bound"),
            }
        }
        // A fourth closes the oldest (the first).
        let Admission::Served { .. } = c.admit((1000, Some(8)), 3) else {
            panic!("refused with idle connections open");
        };
        assert_eq!(c.open(), 3);
        assert!(!c.lock().open.contains_key(&first[0].0));
        // With every connection busy, a new one is refused and nothing is closed.
        let ids: Vec<u64> = c.lock().open.keys().copied().collect();
        let busy = Arc::new(AtomicUsize::new(0));
        let guards: Vec<RequestGuard> = ids
            .into_iter()
            .map(|id| c.begin(id, busy.clone()))
            .collect();
        assert_eq!(busy.load(Ordering::Acquire), 3);
        assert!(matches!(c.admit(flood, 3), Admission::Refused));
        assert_eq!(c.open(), 3);
        drop(guards);
        assert_eq!(busy.load(Ordering::Acquire), 0);
        assert!(matches!(c.admit(flood, 3), Admission::Served { .. }));
    }
}
