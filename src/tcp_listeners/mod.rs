//! The opt-in TCP listeners: the one a fleet's Prometheus scrapes (`metrics.listen`,
//! `caxton-metrics.socket`) and the API's for clients that cannot open the Unix socket
//! (`api.listen`, `caxton-api.socket`). Each serves the router it is given on the addresses of
//! its key and on the sockets systemd passes. A changed list is bound before it is committed,
//! so an address that cannot be bound refuses the reload whole and the listeners in force
//! stay. At start, such an address is logged and tried again until it can be bound (an
//! interface that comes up after the daemon), so the daemon's own job never waits on it.
//! Nothing here knows the daemon's state: what a role allows per connection comes from the
//! [`Policy`] it is given.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod tcp;

pub use tcp::{LocalAddress, Policy};
use tcp::{accept, listen};

/// How often an address that could not be bound at start is tried again.
const RETRY: Duration = if cfg!(test) {
    Duration::from_millis(50)
} else {
    Duration::from_secs(10)
};

/// What a set of listeners is for: it names the key, the socket unit and the journal events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `GET /metrics` and `GET /health` for a fleet's Prometheus.
    Metrics,
    /// The embedding, rerank, tokenize and Ollama endpoints, behind a bearer token.
    Api,
}

impl Role {
    /// The configuration key listing its addresses.
    pub fn key(self) -> &'static str {
        match self {
            Role::Metrics => "metrics.listen",
            Role::Api => "api.listen",
        }
    }

    /// The socket unit that hands it a socket under the shipped (Unix sockets only) unit.
    pub fn unit(self) -> &'static str {
        match self {
            Role::Metrics => "caxton-metrics.socket",
            Role::Api => "caxton-api.socket",
        }
    }

    /// What it serves, for the journal.
    fn serves(self) -> &'static str {
        match self {
            Role::Metrics => "GET /metrics and GET /health only",
            Role::Api => "the embedding, rerank, tokenize and Ollama endpoints, no admin ones",
        }
    }

    /// The journal's `CAXTON_EVENT` of a listener that `what` (`""`, `"_failed"`, `"_closed"`).
    fn event(self, what: &str) -> String {
        match self {
            Role::Metrics => format!("metrics_listener{what}"),
            Role::Api => format!("api_listener{what}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Metrics => "metrics listener",
            Role::Api => "API listener",
        }
    }
}

/// Where a listener came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// An address of the role's key (port 0 binds a free one).
    Config(SocketAddr),
    /// A socket systemd passed, with its name (`FileDescriptorName=`, else the unit's name).
    Systemd(String),
}

/// One listener, as `GET /api/status` and `caxton status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The address it listens on (the configured one while it cannot be bound).
    pub address: SocketAddr,
    /// The key (`metrics.listen`, `api.listen`), or the socket systemd passed.
    pub from: String,
    /// Why it does not listen yet (bound at start failed; tried again every 10 s), or why it
    /// refuses every request (an API listener off loopback without a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a listener is: listening on an address, or waiting to bind one (and why).
type Place = Arc<Mutex<(SocketAddr, Option<String>)>>;

struct Running {
    origin: Origin,
    place: Place,
    /// `None` once taken by [`TcpListeners::stop`] to be waited for.
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn address(&self) -> SocketAddr {
        self.place.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Closed by a reload: the accept task owns its connections (a JoinSet), which go
        // with it.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What every listener serves, and how.
#[derive(Clone)]
struct Serving {
    app: Router,
    policy: Policy,
    /// Turns true when the daemon stops: listeners stop accepting and finish what is under way.
    stop: watch::Receiver<bool>,
}

struct Inner {
    /// `None` before `serve_with` and after `stop`.
    serving: Option<Serving>,
    stop: watch::Sender<bool>,
    running: Vec<Running>,
}

/// The TCP listeners of one role in force.
pub struct TcpListeners {
    role: Role,
    inner: Mutex<Inner>,
}

/// The addresses of a new list, bound but not served: [`TcpListeners::commit`] serves them,
/// dropping this closes them.
pub struct Bound {
    wanted: Vec<SocketAddr>,
    new: Vec<(SocketAddr, TcpListener)>,
}

impl TcpListeners {
    /// No listener yet, for `role`.
    pub fn new(role: Role) -> TcpListeners {
        TcpListeners {
            role,
            inner: Mutex::new(Inner {
                serving: None,
                stop: watch::channel(false).0,
                running: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every listener started from now on serves `app` under `policy`. The router holds the
    /// daemon's state, which holds this: [`stop`](Self::stop) lets it go.
    pub fn serve_with(&self, app: Router, policy: Policy) {
        let mut inner = self.lock();
        let stop = inner.stop.subscribe();
        inner.serving = Some(Serving { app, policy, stop });
    }

    /// Serves the sockets systemd passed (`(socket, name)`); they stay until the daemon stops,
    /// whatever the role's key says. Call within a Tokio runtime.
    pub fn adopt(&self, sockets: Vec<(std::net::TcpListener, String)>) -> Result<(), String> {
        let mut inner = self.lock();
        for (socket, name) in sockets {
            let address = socket
                .local_addr()
                .map_err(|e| format!("the socket systemd passed as {name:?}: {e}"))?;
            let listener = socket
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(socket))
                .map_err(|e| {
                    format!("cannot serve the socket systemd passed as {name:?} ({address}): {e}")
                })?;
            inner.start(self.role, Origin::Systemd(name), address, listener);
        }
        Ok(())
    }

    /// At start: serves the addresses of `wanted`; one that cannot be bound is logged and
    /// tried again every [`RETRY`] until it can (the daemon serves its socket meanwhile).
    /// Call within a Tokio runtime, after [`serve_with`](Self::serve_with).
    pub fn listen_or_retry(&self, wanted: &[SocketAddr]) {
        let role = self.role;
        let mut inner = self.lock();
        for &address in wanted {
            if inner.serves(address) {
                continue;
            }
            match listen(role, address) {
                Ok(listener) => match listener.local_addr() {
                    Ok(bound) => inner.start(role, Origin::Config(address), bound, listener),
                    Err(e) => inner.retry(role, address, format!("{}: {address}: {e}", role.key())),
                },
                Err(reason) => inner.retry(role, address, reason),
            }
        }
    }

    /// Binds the addresses of `wanted` that no listener serves yet; nothing changes until
    /// [`commit`](Self::commit). An address a socket from systemd already listens on is
    /// served by it. Call within a Tokio runtime.
    pub fn bind(&self, wanted: &[SocketAddr]) -> Result<Bound, String> {
        let inner = self.lock();
        let served: Vec<SocketAddr> = wanted
            .iter()
            .copied()
            .filter(|a| inner.serves(*a))
            .collect();
        drop(inner);
        let mut new = Vec::new();
        for &address in wanted {
            if !served.contains(&address) {
                new.push((address, listen(self.role, address)?));
            }
        }
        Ok(Bound {
            wanted: wanted.to_vec(),
            new,
        })
    }

    /// Serves what `bound` bound and closes the listeners of the role's key it no longer
    /// lists (their open connections with them).
    pub fn commit(&self, bound: Bound) {
        let role = self.role;
        let mut inner = self.lock();
        inner.running.retain(|r| match r.origin {
            Origin::Config(address) if !bound.wanted.contains(&address) => {
                tracing::info!(
                    caxton_event = role.event("_closed"),
                    "{} on {} closed: no longer in {}",
                    role.name(),
                    r.address(),
                    role.key()
                );
                false
            }
            _ => true,
        });
        for (configured, listener) in bound.new {
            match listener.local_addr() {
                Ok(address) => inner.start(role, Origin::Config(configured), address, listener),
                Err(e) => inner.retry(
                    role,
                    configured,
                    format!(
                        "{}: {configured}: cannot read the bound address: {e}",
                        role.key()
                    ),
                ),
            }
        }
    }

    /// The listeners being served.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let role = self.role;
        self.lock()
            .running
            .iter()
            .map(|r| {
                let (address, error) = r.place.lock().unwrap_or_else(|p| p.into_inner()).clone();
                Endpoint {
                    address,
                    from: match &r.origin {
                        Origin::Config(_) => role.key().to_string(),
                        Origin::Systemd(name) => format!("socket from systemd ({name})"),
                    },
                    error,
                }
            })
            .collect()
    }

    /// Stops accepting and lets the router go; the future it returns resolves once the
    /// connections have finished the requests under way (within the policy's drain deadline).
    pub fn stop(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut inner = self.lock();
        let _ = inner.stop.send(true);
        inner.serving = None;
        let tasks: Vec<JoinHandle<()>> = inner
            .running
            .iter_mut()
            .filter_map(|r| r.task.take())
            .collect();
        inner.running.clear();
        async move {
            for task in tasks {
                let _ = task.await;
            }
        }
    }
}

impl Inner {
    /// Whether a listener serves `address`: one of the key's for it (listening or waiting
    /// to), or a socket from systemd bound to it.
    fn serves(&self, address: SocketAddr) -> bool {
        self.running.iter().any(|r| match &r.origin {
            Origin::Config(configured) => *configured == address,
            Origin::Systemd(_) => r.address() == address,
        })
    }

    /// Keeps trying to bind `configured` every [`RETRY`], then serves it; `reason` is why
    /// it failed now.
    fn retry(&mut self, role: Role, configured: SocketAddr, reason: String) {
        let Some(serving) = self.serving.clone() else {
            return;
        };
        tracing::error!(
            caxton_event = role.event("_failed"),
            "{reason}; trying again every {} s meanwhile (caxton status shows it)",
            RETRY.as_secs()
        );
        let place: Place = Arc::new(Mutex::new((configured, Some(reason))));
        let waiting = place.clone();
        let task = tokio::spawn(async move {
            let mut stop = serving.stop.clone();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = tcp::stopped(&mut stop) => return,
                }
                let bound = listen(role, configured)
                    .and_then(|l| l.local_addr().map(|a| (l, a)).map_err(|e| e.to_string()));
                match bound {
                    Ok((listener, address)) => {
                        *waiting.lock().unwrap_or_else(|p| p.into_inner()) = (address, None);
                        tracing::info!(
                            caxton_event = role.event(""),
                            "{} on {address} ({}): listening at last; {}",
                            role.name(),
                            role.key(),
                            role.serves()
                        );
                        return accept(listener, serving, address).await;
                    }
                    Err(reason) => {
                        waiting.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(reason);
                    }
                }
            }
        });
        self.running.push(Running {
            origin: Origin::Config(configured),
            place,
            task: Some(task),
        });
    }

    fn start(&mut self, role: Role, origin: Origin, address: SocketAddr, listener: TcpListener) {
        let Some(serving) = self.serving.clone() else {
            tracing::warn!(
                "{} on {address} not started: the daemon is stopping",
                role.name()
            );
            return;
        };
        tracing::info!(
            caxton_event = role.event(""),
            "{} on {address} ({}): {}",
            role.name(),
            match &origin {
                Origin::Config(_) => role.key().to_string(),
                Origin::Systemd(name) => format!("socket from systemd, {name}"),
            },
            role.serves()
        );
        let task = tokio::spawn(accept(listener, serving, address));
        self.running.push(Running {
            origin,
            place: Arc::new(Mutex::new((address, None))),
            task: Some(task),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Router {
        Router::new().route("/metrics", axum::routing::get(|| async { "up 1\n" }))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[tokio::test]
    async fn a_change_is_bound_before_it_is_committed_and_unchanged_addresses_stay() {
        let listeners = TcpListeners::new(Role::Metrics);
        listeners.serve_with(hello(), Policy::scrapes());
        let first = listeners.bind(&[addr("127.0.0.1:0")]).expect("bind");
        listeners.commit(first);
        let [Endpoint { address: kept, .. }] = listeners.endpoints()[..] else {
            panic!("one endpoint: {:?}", listeners.endpoints());
        };
        assert_ne!(kept.port(), 0, "a free port was taken and is named");

        // The same list again binds nothing new: the listener in force stays as it is.
        let same = listeners.bind(&[addr("127.0.0.1:0")]).expect("bind");
        assert!(same.new.is_empty());
        listeners.commit(same);
        assert_eq!(listeners.endpoints()[0].address, kept);

        // A port another socket holds refuses the change, and what is in force stays.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let busy = taken.local_addr().expect("addr");
        let err = listeners
            .bind(&[addr("127.0.0.1:0"), busy])
            .err()
            .expect("refused");
        assert_eq!(
            err,
            format!(
                "metrics.listen: cannot listen on {busy}: Address already in use (os error 98); another process (or a socket unit such as caxton-metrics.socket) listens there: pick another port, or let that socket serve"
            )
        );
        assert_eq!(listeners.endpoints().len(), 1);

        // Moved to an overlapping address on the same port: bound beside the old one, which
        // the commit closes.
        let port = kept.port();
        let moved = listeners
            .bind(&[addr(&format!("0.0.0.0:{port}"))])
            .expect("the same port on the wildcard address");
        listeners.commit(moved);
        assert_eq!(
            listeners.endpoints()[0].address,
            addr(&format!("0.0.0.0:{port}"))
        );

        // An empty list closes it.
        let none = listeners.bind(&[]).expect("bind");
        listeners.commit(none);
        assert!(listeners.endpoints().is_empty());
        assert!(
            tokio::net::TcpStream::connect(kept).await.is_err(),
            "the closed listener refuses connections"
        );
    }

    #[tokio::test]
    async fn an_address_busy_at_start_is_tried_again_until_it_can_be_bound() {
        let listeners = TcpListeners::new(Role::Metrics);
        listeners.serve_with(hello(), Policy::scrapes());
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let busy = taken.local_addr().expect("addr");
        listeners.listen_or_retry(&[busy]);
        let [
            Endpoint {
                address,
                error: Some(error),
                ..
            },
        ] = &listeners.endpoints()[..]
        else {
            panic!("one waiting endpoint: {:?}", listeners.endpoints());
        };
        assert_eq!(*address, busy);
        assert!(error.contains("Address already in use"), "{error}");
        // A reload that keeps it does not bind it again (nor refuse).
        let same = listeners.bind(&[busy]).expect("kept as it is");
        assert!(same.new.is_empty());
        listeners.commit(same);
        drop(taken);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while listeners.endpoints()[0].error.is_some() {
            assert!(std::time::Instant::now() < deadline, "never bound");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(tokio::net::TcpStream::connect(busy).await.is_ok());
    }

    #[tokio::test]
    async fn an_address_a_systemd_socket_serves_is_not_bound_again() {
        let listeners = TcpListeners::new(Role::Metrics);
        listeners.serve_with(hello(), Policy::scrapes());
        let passed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = passed.local_addr().expect("addr");
        listeners
            .adopt(vec![(passed, "metrics".into())])
            .expect("adopt");
        let bound = listeners.bind(&[address]).expect("served already");
        assert!(bound.new.is_empty());
        listeners.commit(bound);
        assert_eq!(
            listeners.endpoints(),
            vec![Endpoint {
                address,
                from: "socket from systemd (metrics)".into(),
                error: None,
            }]
        );
        // metrics.listen emptied: the socket from systemd stays.
        listeners.commit(listeners.bind(&[]).expect("bind"));
        assert_eq!(listeners.endpoints().len(), 1);
    }
}
