//! The table of open connections: who holds each, whether it is busy, and which one to close
//! when a new connection would pass the bound.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::activity::Activity;

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
    /// Whether it has a request or an answer under way (a connection with neither may be
    /// closed for a new one).
    activity: Arc<Activity>,
    /// When it opened or last finished a request.
    since: Instant,
    /// Told to close when evicted.
    close: Arc<Notify>,
}

/// What [`Connections::admit`] decided for a new connection.
pub(super) enum Admission {
    /// Served; `close` is notified if it is evicted later.
    Served {
        id: u64,
        close: Arc<Notify>,
        activity: Arc<Activity>,
    },
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
    /// `stall`: how long an answer may move no bytes and still hold its connection.
    pub(super) fn admit(&self, owner: Owner, max: usize, stall: Duration) -> Admission {
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
        let activity = Arc::new(Activity::new(stall));
        t.open.insert(
            id,
            Entry {
                owner,
                activity: activity.clone(),
                since: Instant::now(),
                close: close.clone(),
            },
        );
        t.report(max);
        Admission::Served {
            id,
            close,
            activity,
        }
    }

    /// A request on connection `id` began; the guard ends it.
    pub(super) fn begin(self: &Arc<Self>, id: u64, activity: Arc<Activity>) -> RequestGuard {
        activity.requests.fetch_add(1, Ordering::AcqRel);
        RequestGuard {
            connections: self.clone(),
            id,
            activity,
        }
    }

    /// Connection `id` is gone.
    fn remove(&self, id: u64) {
        self.lock().open.remove(&id);
    }
}

/// Removes a served connection from the table when its task ends, however it ends.
pub(super) struct Registered {
    pub(super) connections: Arc<Connections>,
    pub(super) id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.remove(self.id);
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
        .filter(|(_, e)| !e.activity.busy())
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

/// Ends a request when dropped. hyper drops it with the answer's body, when it takes the
/// body's last bytes (or the client went away); those bytes may not be on the socket yet, so
/// the connection counts as unflushed until hyper next flushes it (see [`super::activity::Tracked`]).
pub(super) struct RequestGuard {
    connections: Arc<Connections>,
    id: u64,
    activity: Arc<Activity>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Unflushed first, so the connection never looks idle in between.
        self.activity.answered();
        self.activity.unflushed.store(true, Ordering::Release);
        self.activity.requests.fetch_sub(1, Ordering::AcqRel);
        if let Some(e) = self.connections.lock().open.get_mut(&self.id) {
            e.since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(owner: Owner, requests: usize, age_ms: u64) -> Entry {
        let activity = Activity::new(Duration::from_secs(30));
        activity.requests.store(requests, Ordering::Release);
        Entry {
            owner,
            activity: Arc::new(activity),
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
            match c.admit(flood, 3, Duration::from_secs(30)) {
                Admission::Served { id, close, .. } => first.push((id, close)),
                Admission::Refused => panic!("refused under the bound"),
            }
        }
        // A fourth closes the oldest (the first).
        let Admission::Served { .. } = c.admit((1000, Some(8)), 3, Duration::from_secs(30)) else {
            panic!("refused with idle connections open");
        };
        assert_eq!(c.open(), 3);
        assert!(!c.lock().open.contains_key(&first[0].0));
        // With every connection busy, a new one is refused and nothing is closed.
        let open: Vec<(u64, Arc<Activity>)> = c
            .lock()
            .open
            .iter()
            .map(|(&id, e)| (id, e.activity.clone()))
            .collect();
        let guards: Vec<RequestGuard> = open
            .iter()
            .map(|(id, activity)| c.begin(*id, activity.clone()))
            .collect();
        assert!(open.iter().all(|(_, a)| a.busy()));
        assert!(matches!(
            c.admit(flood, 3, Duration::from_secs(30)),
            Admission::Refused
        ));
        assert_eq!(c.open(), 3);
        // Answers taken by hyper but not yet flushed still hold their connections.
        drop(guards);
        assert!(open.iter().all(|(_, a)| a.busy()));
        assert!(matches!(
            c.admit(flood, 3, Duration::from_secs(30)),
            Admission::Refused
        ));
        // Once flushed, one is closed for a new connection.
        for (_, a) in &open {
            a.unflushed.store(false, Ordering::Release);
        }
        assert!(matches!(
            c.admit(flood, 3, Duration::from_secs(30)),
            Admission::Served { .. }
        ));
    }

    #[test]
    fn an_answer_that_moves_no_bytes_for_the_stall_time_stops_holding_its_connection() {
        let a = Activity::new(Duration::from_millis(20));
        a.progressed();
        a.unflushed.store(true, Ordering::Release);
        assert!(a.busy());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!a.busy(), "a client that never reads pins nothing");
        a.progressed();
        assert!(a.busy());
    }

    #[test]
    fn a_stop_past_its_deadline_cuts_old_answers_but_lets_a_late_one_be_read() {
        let a = Activity::new(Duration::from_secs(30));
        a.requests.store(1, Ordering::Release);
        assert!(
            !a.may_cut(Duration::ZERO),
            "a request being computed is waited for"
        );
        a.requests.store(0, Ordering::Release);
        a.answered();
        a.unflushed.store(true, Ordering::Release);
        assert!(
            !a.may_cut(Duration::from_secs(10)),
            "an answer that just began going out is read"
        );
        std::thread::sleep(Duration::from_millis(30));
        a.progressed();
        assert!(
            a.may_cut(Duration::from_millis(20)),
            "an answer going out for longer than the grace is cut, even if bytes still move"
        );
        a.unflushed.store(false, Ordering::Release);
        assert!(
            a.may_cut(Duration::from_secs(10)),
            "an idle connection is closed"
        );
    }
}
