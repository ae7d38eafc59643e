//! Whether a connection has a request or an answer under way, kept from hyper's side of it:
//! its requests, and the bytes of their answers still to reach the socket.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// What a connection is doing, shared by its task, its socket, its requests and the table.
pub(super) struct Activity {
    /// Requests under way: from their head until hyper has taken their answer's body.
    pub(super) requests: AtomicUsize,
    /// hyper has bytes for the socket it has not seen flushed: an answer still going out to
    /// a client that reads slowly, after hyper took its body.
    pub(super) unflushed: AtomicBool,
    /// Milliseconds from `born` to the last write that moved bytes (or began an answer).
    progress_ms: AtomicU64,
    /// Milliseconds from `born` to when hyper last took an answer's body.
    answered_ms: AtomicU64,
    born: Instant,
    /// How long an unflushed answer may move no bytes and still count as under way: a
    /// client that never reads must not pin its connection (`limits.idle_timeout`).
    stall: Duration,
}

impl Activity {
    pub(super) fn new(stall: Duration) -> Activity {
        Activity {
            requests: AtomicUsize::new(0),
            unflushed: AtomicBool::new(false),
            progress_ms: AtomicU64::new(0),
            answered_ms: AtomicU64::new(0),
            born: Instant::now(),
            stall,
        }
    }

    /// A request or an answer is under way: the connection must not be closed under it. An
    /// answer whose bytes have not moved for `stall` is not.
    pub(super) fn busy(&self) -> bool {
        self.computing() > 0 || (self.unflushed.load(Ordering::Acquire) && !self.stalled())
    }

    /// Bytes are going out now.
    pub(super) fn progressed(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Release);
    }

    /// hyper took an answer's body: it is going out from now on.
    pub(super) fn answered(&self) {
        self.answered_ms.store(self.now_ms(), Ordering::Release);
        self.progressed();
    }

    /// A stop past its drain deadline may close this connection: nothing is being computed
    /// for it and its answer, if one is still going out, began more than `grace` ago. An
    /// answer computed late in the stop still gets `grace` to be read, as one begun long ago
    /// by a client that reads slowly does not.
    pub(super) fn may_cut(&self, grace: Duration) -> bool {
        self.computing() == 0 && (!self.busy() || self.since(&self.answered_ms) > grace)
    }

    fn stalled(&self) -> bool {
        self.since(&self.progress_ms) > self.stall
    }

    fn since(&self, ms: &AtomicU64) -> Duration {
        let then = Duration::from_millis(ms.load(Ordering::Acquire));
        self.born.elapsed().saturating_sub(then)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Requests whose answers hyper has not taken yet: being computed, or their bodies read.
    pub(super) fn computing(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }
}

/// The connection's socket as hyper sees it, keeping [`Activity::unflushed`]: set by every
/// write, cleared when hyper flushes (which it does only once its own buffer is empty).
pub(super) struct Tracked {
    pub(super) io: TokioIo<UnixStream>,
    pub(super) activity: Arc<Activity>,
}

impl hyper::rt::Read for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !buf.is_empty() {
            self.activity.unflushed.store(true, Ordering::Release);
        }
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            self.activity.progressed();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if bufs.iter().any(|b| !b.is_empty()) {
            self.activity.unflushed.store(true, Ordering::Release);
        }
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            self.activity.progressed();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.activity.unflushed.store(false, Ordering::Release);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
