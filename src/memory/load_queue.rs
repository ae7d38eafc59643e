//! The load queue: the admission lock every load holds (fair, FIFO, so requests waiting for
//! loads are served in arrival order and two loads never decide on the same free memory), the
//! bound on how many wait, which model's load holds the lock, and the loads counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The queue of loads and its counters; one per daemon, in the governor.
pub struct LoadQueue {
    /// Held for the whole of each load, so admission sees every byte already committed. A
    /// fair (FIFO) lock: requests waiting for loads queue on it in arrival order.
    pub admission: Arc<tokio::sync::Mutex<()>>,
    /// Requests waiting in the queue now.
    waiting: AtomicUsize,
    /// The model whose load holds the admission lock (waiting for room, or loading).
    admitting: Mutex<Option<String>>,
    /// Requests answered 503 because the queue was full or their wait ran out.
    refusals: AtomicU64,
    /// When each load of the last minute finished.
    recent_loads: Mutex<VecDeque<Instant>>,
    loads: AtomicU64,
}

/// A place in the load queue; leaving it (drop) frees the place.
pub struct QueuePlace<'a>(&'a LoadQueue);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        let n = self.0.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
        crate::metrics::get().queue_waiting.set(n as i64);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for LoadQueue {
    fn default() -> Self {
        LoadQueue {
            admission: Arc::new(tokio::sync::Mutex::new(())),
            waiting: AtomicUsize::new(0),
            admitting: Mutex::new(None),
            refusals: AtomicU64::new(0),
            recent_loads: Mutex::new(VecDeque::new()),
            loads: AtomicU64::new(0),
        }
    }
}

impl LoadQueue {
    /// Takes a place in the queue, or `None` when `max_waiting` requests already wait
    /// (`memory.load_queue.max_waiting`).
    pub fn enter(&self, max_waiting: usize) -> Option<QueuePlace<'_>> {
        let taken = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max_waiting).then_some(n + 1)
            });
        let n = taken.ok()? + 1;
        crate::metrics::get().queue_waiting.set(n as i64);
        Some(QueuePlace(self))
    }

    /// Records which model's load holds the admission lock (`None` when it is released).
    pub fn set_admitting(&self, id: Option<&str>) {
        *lock(&self.admitting) = id.map(str::to_owned);
    }

    /// The model whose load holds the admission lock.
    pub fn admitting(&self) -> Option<String> {
        lock(&self.admitting).clone()
    }

    /// Records a request refused by the queue (full, or its wait ran out).
    pub fn note_refusal(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests waiting in the queue now, and refused by it since start.
    pub fn counts(&self) -> (usize, u64) {
        (
            self.waiting.load(Ordering::Relaxed),
            self.refusals.load(Ordering::Relaxed),
        )
    }

    /// Records a finished load.
    pub fn note_load(&self) {
        self.loads.fetch_add(1, Ordering::Relaxed);
        let mut recent = lock(&self.recent_loads);
        recent.push_back(Instant::now());
        while recent
            .front()
            .is_some_and(|t| t.elapsed() > Duration::from_secs(60))
        {
            recent.pop_front();
        }
    }

    /// Loads since start, and in the last minute.
    pub fn loads(&self) -> (u64, usize) {
        let recent = lock(&self.recent_loads);
        let minute = recent
            .iter()
            .filter(|t| t.elapsed() <= Duration::from_secs(60))
            .count();
        (self.loads.load(Ordering::Relaxed), minute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_queue_is_bounded_and_a_place_comes_back_when_left() {
        let q = LoadQueue::default();
        let a = q.enter(2).expect("first place");
        let b = q.enter(2).expect("second place");
        assert!(q.enter(2).is_none(), "a third request past max_waiting");
        assert_eq!(q.counts().0, 2);
        drop(a);
        let c = q.enter(2).expect("a place freed by one that left");
        q.note_refusal();
        assert_eq!(q.counts(), (2, 1));
        drop((b, c));
        assert_eq!(q.counts().0, 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_admission_lock_serves_waiters_in_arrival_order() {
        let q = LoadQueue::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        let head = q.admission.clone().lock_owned().await;
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (lock, order) = (q.admission.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = lock.lock_owned().await;
                super::lock(&order).push(i);
                // Holding the lock across a yield: the next in line must still wait.
                tokio::task::yield_now().await;
            }));
            // Each waiter is queued before the next one is spawned.
            tokio::task::yield_now().await;
        }
        drop(head);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(*lock(&order), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn loads_are_counted_over_the_last_minute() {
        let q = LoadQueue::default();
        q.note_load();
        q.note_load();
        assert_eq!(q.loads(), (2, 2));
    }
}
