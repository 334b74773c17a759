//! The writer's queue: everything a connection sends (the request tasks'
//! output, the reader's own answers, the close) in the order it was
//! pushed, bounded in bytes, with one waker for the writer and a list for
//! the senders waiting for room.
//!
//! A queue in the connection's shared state, not a channel: a tokio
//! channel is two allocations more per connection (one of them
//! cache-aligned, the slowest kind glibc serves), every send is a future
//! of a few hundred bytes in the sender's state, and the writer would poll
//! two queues where one does.

use super::output::{Count, Tally, WriterGone};
use bytes::{Buf, Bytes, BytesMut};
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

/// Senders wait (`Outbox::room`) while this many bytes are queued; a push
/// is then taken whole, however large: a response never waits for itself.
pub(super) const QUEUE_BYTES: usize = 256 * 1024;

/// Output on its way to the socket, and the tallies and counts of what it
/// carries: they are credited once all of it is written, and dropped
/// uncredited if a write fails.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) bufs: Vec<Chunk>,
    pub(super) tallies: Vec<Tally>,
    pub(super) counts: Vec<Count>,
}

/// One buffer of a batch: records a sender encoded in place, moved in
/// whole, or a body chunk passed by reference. The first kind stays a
/// `BytesMut`: freezing a buffer with spare capacity into `Bytes`
/// allocates a shared header for it, one allocation more a response.
pub(super) enum Chunk {
    Owned(BytesMut),
    Shared(Bytes),
}

impl Chunk {
    /// Drops the first `n` bytes (written).
    pub(super) fn advance(&mut self, n: usize) {
        match self {
            Chunk::Owned(b) => b.advance(n),
            Chunk::Shared(b) => b.advance(n),
        }
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Owned(b) => b,
            Chunk::Shared(b) => b,
        }
    }
}

/// What one push appends, in this order (each part may be empty).
pub(super) struct Push<'a> {
    /// Buffers already split into records (large bodies by reference).
    pub(super) parts: &'a mut Vec<Bytes>,
    /// Records encoded in place; taken whole, so a small response, which
    /// is only this, costs no Vec of its own.
    pub(super) buf: &'a mut BytesMut,
    /// The tally of what this push carries (see `Tally`)...
    pub(super) tally: Option<Tally>,
    /// ...or its count (see `Count`).
    pub(super) count: Option<Count>,
    /// After this, shut down writing and close.
    pub(super) close: bool,
}

impl<'a> Push<'a> {
    /// A push that is not counted (the server's own records, tests).
    pub(super) fn plain(parts: &'a mut Vec<Bytes>, buf: &'a mut BytesMut, close: bool) -> Self {
        Push {
            parts,
            buf,
            tally: None,
            count: None,
            close,
        }
    }
}

/// A batch the writer took: its size in bytes and whether it ends with
/// the close.
pub(super) struct Taken {
    pub(super) size: usize,
    pub(super) close: bool,
}

/// The queue and who may still push to it.
pub(super) struct Outbox {
    q: Mutex<Queue>,
    /// The reader and every request's `Output`: once none is left and the
    /// queue is empty, the writer ends.
    senders: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    batch: Pending,
    /// Bytes in `batch.bufs`.
    size: usize,
    close: bool,
    /// The writer has ended: pushes fail.
    gone: bool,
    writer: Option<Waker>,
    /// Senders waiting for room.
    waiting: Vec<Waker>,
}

impl Default for Outbox {
    /// An empty queue whose one sender is the reader.
    fn default() -> Outbox {
        Outbox {
            q: Mutex::default(),
            senders: AtomicUsize::new(1),
        }
    }
}

impl Outbox {
    /// Waits until the queue has room (or the writer has ended); then
    /// `push` appends without waiting. Resolves to whether the caller runs
    /// in the writer's own task (the reader and the inline request do):
    /// its pushes need no wake-up, as the connection task polls the writer
    /// right after them, and a wake-up of one's own task makes tokio wake
    /// another worker thread to steal it.
    pub(super) fn room(&self) -> impl Future<Output = Result<bool, WriterGone>> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let Ok(mut q) = self.q.lock() else {
                return Poll::Ready(Err(WriterGone));
            };
            if q.gone {
                return Poll::Ready(Err(WriterGone));
            }
            if q.size >= QUEUE_BYTES {
                if !q.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                    q.waiting.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            let own = q.writer.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            Poll::Ready(Ok(own))
        })
    }

    /// Appends `push` (emptying its parts and buffer), whether or not there
    /// is room: a sender waits for `room` first, so the queue overshoots
    /// its bound by at most one push per sender. The push is built after
    /// the wait, so what it carries (a request's access-log record) is
    /// never kept in a waiting future. Fails once the writer has ended.
    pub(super) fn push(&self, push: Push<'_>, own_task: bool) -> Result<(), WriterGone> {
        let Ok(mut q) = self.q.lock() else {
            return Err(WriterGone);
        };
        if q.gone {
            return Err(WriterGone);
        }
        let q = &mut *q;
        for b in push.parts.drain(..) {
            q.size += b.len();
            q.batch.bufs.push(Chunk::Shared(b));
        }
        if !push.buf.is_empty() {
            q.size += push.buf.len();
            q.batch.bufs.push(Chunk::Owned(std::mem::take(push.buf)));
        }
        if let Some(mut t) = push.tally {
            t.at = q.size;
            q.batch.tallies.push(t);
        }
        if let Some(mut c) = push.count {
            c.at = q.size;
            q.batch.counts.push(c);
        }
        q.close |= push.close;
        if !own_task {
            if let Some(w) = &q.writer {
                w.wake_by_ref();
            }
        }
        Ok(())
    }

    /// The writer's side: waits for output, then swaps everything queued
    /// into `batch` (which must be empty); `None` once the queue is empty
    /// and no sender is left.
    pub(super) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        batch: &mut Pending,
    ) -> Poll<Option<Taken>> {
        let Ok(mut q) = self.q.lock() else {
            return Poll::Ready(None);
        };
        if q.batch.bufs.is_empty()
            && q.batch.tallies.is_empty()
            && q.batch.counts.is_empty()
            && !q.close
        {
            if self.senders.load(Ordering::Acquire) == 0 {
                return Poll::Ready(None);
            }
            match &q.writer {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => q.writer = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        std::mem::swap(&mut q.batch, batch);
        let taken = Taken {
            size: std::mem::take(&mut q.size),
            close: std::mem::take(&mut q.close),
        };
        let waiting = std::mem::take(&mut q.waiting);
        drop(q);
        for w in waiting {
            w.wake();
        }
        Poll::Ready(Some(taken))
    }

    /// The writer has ended: later pushes fail, waiting ones are woken to
    /// fail, and what is queued is dropped (its tallies uncredited, which
    /// writes their requests' access logs now).
    pub(super) fn writer_gone(&self) {
        let Ok(mut q) = self.q.lock() else {
            return;
        };
        q.gone = true;
        let dropped = std::mem::take(&mut q.batch);
        let waiting = std::mem::take(&mut q.waiting);
        q.size = 0;
        drop(q);
        drop(dropped);
        for w in waiting {
            w.wake();
        }
    }

    /// One sender more (a request's output).
    pub(super) fn add_sender(&self) {
        self.senders.fetch_add(1, Ordering::AcqRel);
    }

    /// One sender less; the last one wakes the writer so that it can end.
    pub(super) fn drop_sender(&self) {
        if self.senders.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // Under the lock: a writer that saw a sender left has registered
        // its waker by the time this takes it.
        if let Ok(q) = self.q.lock() {
            if let Some(w) = &q.writer {
                w.wake_by_ref();
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn take(ob: &Outbox) -> Poll<Option<(Vec<Chunk>, bool)>> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut batch = Pending::default();
        ob.poll_take(&mut cx, &mut batch)
            .map(|t| t.map(|t| (batch.bufs, t.close)))
    }

    /// Waits for room (polled once) and pushes: `Ready(false)` once the
    /// writer has ended, `Pending` while the queue is full.
    pub(in crate::fastcgi::connection) fn push_now(
        ob: &Outbox,
        parts: Vec<Bytes>,
        buf: &[u8],
        close: bool,
    ) -> Poll<bool> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut room = std::pin::pin!(ob.room());
        let own = match room.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(own)) => own,
            Poll::Ready(Err(WriterGone)) => return Poll::Ready(false),
            Poll::Pending => return Poll::Pending,
        };
        let mut parts = parts;
        let mut buf = BytesMut::from(buf);
        let push = Push::plain(&mut parts, &mut buf, close);
        Poll::Ready(ob.push(push, own).is_ok())
    }

    #[test]
    fn pushes_come_out_in_order_with_the_close() {
        let ob = Outbox::default();
        assert!(take(&ob).is_pending(), "empty, the reader still a sender");
        let p = vec![Bytes::from_static(b"ab")];
        assert_eq!(push_now(&ob, p, b"cd", false), Poll::Ready(true));
        assert_eq!(push_now(&ob, vec![], b"ef", true), Poll::Ready(true));
        let Poll::Ready(Some((bufs, close))) = take(&ob) else {
            panic!("a batch");
        };
        let all: Vec<u8> = bufs.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!((&all[..], close), (&b"abcdef"[..], true));
        assert!(take(&ob).is_pending());
    }

    #[test]
    fn a_full_queue_holds_pushes_until_the_writer_takes() {
        let ob = Outbox::default();
        let big = vec![Bytes::from(vec![0u8; QUEUE_BYTES])];
        assert_eq!(push_now(&ob, big, b"", false), Poll::Ready(true));
        assert!(push_now(&ob, vec![], b"x", false).is_pending(), "full");
        assert!(matches!(take(&ob), Poll::Ready(Some(_))));
        assert_eq!(push_now(&ob, vec![], b"x", false), Poll::Ready(true));
    }

    #[test]
    fn the_writer_ends_when_the_last_sender_leaves_and_pushes_fail_after() {
        let ob = Outbox::default();
        ob.add_sender();
        ob.drop_sender();
        assert!(take(&ob).is_pending(), "the reader is left");
        assert_eq!(push_now(&ob, vec![], b"x", false), Poll::Ready(true));
        ob.drop_sender();
        assert!(matches!(take(&ob), Poll::Ready(Some(_))), "queued first");
        assert!(matches!(take(&ob), Poll::Ready(None)));
        ob.writer_gone();
        assert_eq!(push_now(&ob, vec![], b"x", false), Poll::Ready(false));
    }
}
