//! `RequestLink`: the flags one request's task and the connection's reader
//! share. It is the one allocation a request needs besides its handler:
//! plain atomics with one waker, because only the request task ever waits
//! on them (a `Notify` or a channel would each be an allocation more and a
//! lock per use).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;

/// The flags a request task and the reader share.
#[derive(Default)]
pub(super) struct RequestLink {
    /// Set just before END_REQUEST is queued: from then on the id is free.
    ended: AtomicBool,
    /// The request's STDIN is complete (or will never be read): the gate
    /// for its response is open.
    input_done: AtomicBool,
    /// The web server aborted the request, or its connection is gone: the
    /// handler is dropped (see `RequestTask::run`).
    cancelled: AtomicBool,
    /// STDIN disagreed with CONTENT_LENGTH: the request is cancelled and
    /// answered 400 (set before `cancelled`).
    bad_length: AtomicBool,
    /// Body bytes of the response the writer has written to the socket
    /// (counted only while the access log is on, see `output::Tally`).
    body_written: AtomicU64,
    /// The request task's waker, for the flags above: only that one task
    /// ever waits on them.
    task: futures_util::task::AtomicWaker,
}

impl RequestLink {
    /// STDIN is complete: the response may go out.
    pub(super) fn open_gate(&self) {
        self.input_done.store(true, Ordering::Release);
        self.task.wake();
    }

    /// The reader gives the request up (aborted, or the connection is
    /// gone): its handler is cancelled and its gate opened, so a task
    /// waiting to respond cannot wait forever. One wake-up for both.
    /// `cancelled` is set before `input_done`, so a task that finds its
    /// gate open can tell whether that is because it was cancelled (see
    /// `wait_open`).
    pub(super) fn abandon(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.input_done.store(true, Ordering::Release);
        self.task.wake();
    }

    /// STDIN disagreed with CONTENT_LENGTH: the handler is cancelled and
    /// the request task answers 400 instead.
    pub(super) fn refuse_bad_length(&self) {
        self.bad_length.store(true, Ordering::Release);
        self.abandon();
    }

    pub(super) fn bad_length(&self) -> bool {
        self.bad_length.load(Ordering::Acquire)
    }

    /// The writer wrote `n` more body bytes of this request.
    pub(super) fn credit(&self, n: u64) {
        self.body_written.fetch_add(n, Ordering::AcqRel);
    }

    pub(super) fn body_written(&self) -> u64 {
        self.body_written.load(Ordering::Acquire)
    }

    pub(super) fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the id free (the END_REQUEST is about to be queued).
    pub(super) fn end(&self) {
        self.ended.store(true, Ordering::Release);
    }

    pub(super) fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub(super) fn input_done(&self) -> bool {
        self.input_done.load(Ordering::Acquire)
    }

    /// Resolves once the gate is open, cancelled or not.
    pub(super) fn wait_gate(&self) -> impl Future<Output = ()> + '_ {
        self.wait_for(&self.input_done)
    }

    /// Resolves once the gate is open for a response the service wrote;
    /// never for a cancelled request, whose task answers in its own way
    /// (an abort, a 400): the caller races it against `wait_cancelled`,
    /// which then wins, so the service's response never goes out.
    pub(super) fn wait_open(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.cancelled() {
                return Poll::Pending;
            }
            if self.input_done() {
                return Poll::Ready(());
            }
            self.task.register(cx.waker());
            if self.cancelled() {
                Poll::Pending
            } else if self.input_done() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Resolves once the request is cancelled.
    pub(super) fn wait_cancelled(&self) -> impl Future<Output = ()> + '_ {
        self.wait_for(&self.cancelled)
    }

    fn wait_for<'a>(&'a self, flag: &'a AtomicBool) -> impl Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx| {
            if flag.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.task.register(cx.waker());
            if flag.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandon_opens_the_gate_and_cancels_open_gate_only_opens() {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let l = RequestLink::default();
        let mut gate = std::pin::pin!(l.wait_gate());
        let mut cancel = std::pin::pin!(l.wait_cancelled());
        assert!(gate.as_mut().poll(&mut cx).is_pending());
        l.open_gate();
        assert!(gate.as_mut().poll(&mut cx).is_ready());
        assert!(cancel.as_mut().poll(&mut cx).is_pending());
        l.abandon();
        assert!(cancel.as_mut().poll(&mut cx).is_ready());
        assert!(l.input_done() && !l.ended());
        l.end();
        assert!(l.ended());
    }
}
