//! Keeps the compute pool's threads awake through a forward pass.
//!
//! A pass over one short text is dozens of parallel steps (each linear layer, attention, the
//! norms) of tens of microseconds each, with a little serial work between them. rayon puts
//! a worker that finds nothing to do to sleep after a few dozen yields, so every step woke the
//! other threads again: about 35 context switches a pass, each a futex wake that on a virtual
//! machine is an interrupt to another vCPU, and one short text ran no faster on 2 threads than
//! on 1 in int8-fast. ONNX Runtime's threads spin through a run for the same reason.
//!
//! [`Awake::begin`] gives every other worker a job that takes part in the pass's steps
//! (`rayon::yield_now`) and waits between them without sleeping, and ends when no pass is
//! under way or it has found nothing to do for [`IDLE`]. That bound also covers the case where
//! a worker runs it while one of its own steps waits below it (rayon may start a job inside
//! a wait), so a pass can never be held up by more than [`IDLE`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Passes under way, of every model.
static PASSES: AtomicUsize = AtomicUsize::new(0);

/// How long a waiting worker looks for work before it gives up and lets rayon park it:
/// longer than the serial stretches between a pass's parallel steps.
const IDLE: Duration = Duration::from_micros(300);

/// A pass under way; the workers may sleep again once every one has ended.
pub struct Awake(());

impl Awake {
    /// Marks a pass as under way and wakes the other workers into it. Call on a compute
    /// thread (inside `rayon::scope`), which drives the pass.
    pub fn begin() -> Awake {
        PASSES.fetch_add(1, Ordering::SeqCst);
        let driver = rayon::current_thread_index();
        rayon::spawn_broadcast(move |ctx| {
            if Some(ctx.index()) != driver {
                wait_for_steps();
            }
        });
        Awake(())
    }
}

impl Drop for Awake {
    fn drop(&mut self) {
        PASSES.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs the pass's jobs as they appear, until no pass is under way or nothing came for
/// [`IDLE`].
fn wait_for_steps() {
    let mut idle_since = Instant::now();
    loop {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle_since = Instant::now(),
            _ if PASSES.load(Ordering::SeqCst) == 0 || idle_since.elapsed() > IDLE => return,
            // Gives the core to a runnable thread (the daemon's HTTP side) if there is one.
            _ => std::thread::yield_now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_join_a_pass_and_let_go_once_it_ends() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        let sum: u64 = pool.install(|| {
            let _awake = Awake::begin();
            use rayon::prelude::*;
            (0..100_000u64).into_par_iter().map(|i| i % 7).sum()
        });
        assert_eq!(sum, (0..100_000u64).map(|i| i % 7).sum::<u64>());
        // The waiting workers let go (other tests' passes may be under way, so at the latest
        // after `IDLE`): a broadcast after them is served.
        let seen = pool.broadcast(|ctx| ctx.index());
        assert_eq!(seen, vec![0, 1, 2]);
    }
}
