//! The connection's event bits and wake-ups: how the writer and the request
//! tasks tell the reader something happened; and the state the reader, the
//! writer and the request tasks share (the writer's queue among it).
//!
//! The events the reader waits for are bits in one atomic with one waker,
//! not a token or `Notify` each: the reader polls every branch of its
//! `select!` on every pass, and a poll of either takes a mutex (the
//! server's shutdown token's is shared by every connection).

use super::Engine;
use super::outbox::Outbox;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

/// The writer failed: the peer is gone.
pub(super) const WRITE_FAILED: u8 = 1;
/// The writer has shut down its side after a request without KEEP_CONN.
pub(super) const WRITER_CLOSED: u8 = 2;
/// A request task ended while the connection drains (the reader may then
/// close). Outside a drain tasks do not raise it: the idle clock needs no
/// wake-up, it reads `last_task_end` instead (see `Reader::deadline`).
pub(super) const TASK_ENDED: u8 = 4;
/// The reader has begun the drain: responses carry the farewell marker.
pub(super) const DRAINING: u8 = 8;
/// The server's shutdown token may have fired: the reader polls it again
/// (only then; see the `Wake` impl below).
pub(super) const SHUTDOWN_POKED: u8 = 16;

/// Connection-wide events between the reader, the writer and the request
/// tasks (not OS signals), and the writer's queue.
pub(super) struct ConnEvents {
    /// Bits: `WRITE_FAILED`, `WRITER_CLOSED`, `TASK_ENDED`, `DRAINING`,
    /// `SHUTDOWN_POKED`.
    bits: AtomicU8,
    /// The reader's waker: it is the only task that waits on `bits`.
    waker: futures_util::task::AtomicWaker,
    /// When a request task last ended, in ns after `base` (0: never).
    last_task_end: AtomicU64,
    base: Instant,
    /// Everything on its way to the writer.
    pub(super) outbox: Outbox,
    pub(super) engine: Arc<Engine>,
}

impl ConnEvents {
    pub(super) fn new(engine: Arc<Engine>) -> ConnEvents {
        ConnEvents {
            engine,
            bits: Default::default(),
            waker: Default::default(),
            last_task_end: Default::default(),
            base: Instant::now(),
            outbox: Outbox::default(),
        }
    }

    /// Sets `bit` and wakes the reader.
    pub(super) fn raise(&self, bit: u8) {
        self.bits.fetch_or(bit, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Sets `bit` without a wake-up (for bits only the reader itself sets).
    pub(super) fn set(&self, bit: u8) {
        self.bits.fetch_or(bit, Ordering::AcqRel);
    }

    pub(super) fn clear(&self, bit: u8) {
        self.bits.fetch_and(!bit, Ordering::AcqRel);
    }

    pub(super) fn is_set(&self, bit: u8) -> bool {
        self.bits.load(Ordering::Acquire) & bit != 0
    }

    /// Waits until one of the bits in `mask` is set; returns all bits.
    pub(super) fn wait(&self, mask: u8) -> impl Future<Output = u8> + '_ {
        std::future::poll_fn(move |cx| {
            let bits = self.bits.load(Ordering::Acquire);
            if bits & mask != 0 {
                return Poll::Ready(bits);
            }
            self.waker.register(cx.waker());
            let bits = self.bits.load(Ordering::Acquire);
            if bits & mask != 0 {
                Poll::Ready(bits)
            } else {
                Poll::Pending
            }
        })
    }

    /// Records that a request task ended now.
    pub(super) fn mark_task_end(&self) {
        let ns = self.base.elapsed().as_nanos().max(1);
        self.last_task_end
            .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Release);
    }

    pub(super) fn last_task_end(&self) -> Option<Instant> {
        match self.last_task_end.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns)),
        }
    }
}

/// The waker the reader polls the server's shutdown future with. Polled
/// with the connection task's own waker on every pass of the reader's
/// loop, the future would take its token's lock each time (tokio's
/// `Notified` re-checks its waker under the lock); this way it is polled
/// once, and again only when shutdown has actually been signalled.
impl std::task::Wake for ConnEvents {
    fn wake(self: Arc<Self>) {
        self.raise(SHUTDOWN_POKED);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raise(SHUTDOWN_POKED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> ConnEvents {
        ConnEvents::new(super::super::demux::tests::engine())
    }

    #[test]
    fn wait_resolves_only_for_bits_in_its_mask() {
        let ev = events();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut w = std::pin::pin!(ev.wait(WRITE_FAILED | TASK_ENDED));
        assert!(w.as_mut().poll(&mut cx).is_pending());
        ev.raise(DRAINING);
        assert!(w.as_mut().poll(&mut cx).is_pending(), "a bit not asked for");
        ev.raise(TASK_ENDED);
        assert_eq!(w.as_mut().poll(&mut cx), Poll::Ready(DRAINING | TASK_ENDED));
        ev.clear(TASK_ENDED);
        assert!(!ev.is_set(TASK_ENDED));
        assert!(ev.is_set(DRAINING));
    }

    #[test]
    fn last_task_end_is_none_until_marked() {
        let ev = events();
        assert!(ev.last_task_end().is_none());
        let before = Instant::now();
        ev.mark_task_end();
        let t = ev.last_task_end().expect("marked");
        assert!(t + Duration::from_millis(1) >= before && t <= Instant::now());
    }
}
