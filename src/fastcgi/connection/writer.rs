//! The connection's one writer: takes everything queued (see `outbox`)
//! and writes it with as few vectored writes as the socket allows, so the
//! records of one response, and of concurrent responses, share syscalls.

use super::Engine;
use super::events::{ConnEvents, WRITE_FAILED, WRITER_CLOSED};
use super::linger::LINGER;
use super::outbox::{Chunk, Pending, Taken};
use super::output::{Count, Tally};
use crate::Transport;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tracing::{debug, warn};

/// Buffers handed to one `write_vectored` call at most.
const MAX_IOV: usize = 64;

/// Writes what the connection queues until no sender is left, a write
/// fails, or the close is written; then the queue refuses more. Gives the
/// socket's write half back after the close (it lingers, see `linger`).
///
/// (The futures here are `async move` blocks, not `async fn`s: an async
/// fn keeps each argument twice, as argument and as local, and every byte
/// counts in the connection's future, see `connection::serve`.)
#[allow(clippy::manual_async_fn)] // see above: not an async fn on purpose
pub(super) fn run<W: AsyncWrite + Unpin>(
    w: W,
    engine: Arc<Engine>,
    events: Arc<ConnEvents>,
) -> impl Future<Output = Option<W>> {
    async move {
        let closed = write_until_done(w, &engine, &events).await;
        events.outbox.writer_gone();
        closed
    }
}

#[allow(clippy::manual_async_fn)] // not an async fn on purpose, see `run`
fn write_until_done<'a, W: AsyncWrite + Unpin + 'a>(
    mut w: W,
    engine: &'a Engine,
    events: &'a ConnEvents,
) -> impl Future<Output = Option<W>> + 'a {
    async move {
        let stall = engine.config.stall_timeout;
        // Allocated on first use: an idle connection holds no batch.
        let mut batch = Pending::default();
        loop {
            let taken = std::future::poll_fn(|cx| events.outbox.poll_take(cx, &mut batch)).await;
            let Taken { size, close } = taken?;
            let mut written = 0;
            // None: the stall timeout.
            let result = if size > 0 {
                let mut at = 0;
                within(stall, |cx| {
                    poll_write_all(&mut w, &mut batch.bufs, &mut at, &mut written, cx)
                })
                .await
            } else {
                Some(Ok(()))
            };
            let failure = match result {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(Some(e)),
                None => Err(None),
            };
            engine.stats.add_bytes_out(written as u64);
            if !batch.tallies.is_empty() {
                settle(&mut batch.tallies, written);
            }
            if !batch.counts.is_empty() {
                let body = settle_counts(&mut batch.counts, written);
                engine
                    .stats
                    .metrics
                    .add_body_bytes(Transport::FastCgi, body);
            }
            if let Err(e) = failure {
                match e {
                    Some(e) => debug!("write failed, closing connection: {e}"),
                    None => warn!("peer left our output unread for {stall:?}; closing connection"),
                }
                events.raise(WRITE_FAILED);
                return None;
            }
            batch.bufs.clear();
            if close {
                let _ = within(LINGER, |cx| Pin::new(&mut w).poll_shutdown(cx)).await;
                events.raise(WRITER_CLOSED);
                return Some(w);
            }
        }
    }
}

/// Credits each tally with the body bytes of its output among the first
/// `written` bytes of the batch (all of them once the batch is written),
/// then drops it, which writes the access log of a request's last one. The
/// framing (the head, record headers) is taken off first, so a partly
/// written output is never credited more body than reached the socket.
fn settle(tallies: &mut Vec<Tally>, written: usize) {
    for t in tallies.drain(..) {
        t.credit(body_written(t.at, t.len, t.body, written));
    }
}

/// `settle` for counts: the body bytes written among them, summed (and
/// the counts dropped).
fn settle_counts(counts: &mut Vec<Count>, written: usize) -> u64 {
    counts
        .drain(..)
        .map(|c| body_written(c.at, c.len, c.body, written))
        .sum()
}

/// Of an output of `len` bytes (`body` of them body) ending at `at` in a
/// batch of which `written` bytes were written, the body bytes written:
/// the framing (the head, record headers) is taken off first, so a partly
/// written output is never credited more body than reached the socket.
fn body_written(at: usize, len: usize, body: u64, written: usize) -> u64 {
    let start = at.saturating_sub(len);
    let data = written.saturating_sub(start).min(len) as u64;
    let framing = (len as u64).saturating_sub(body);
    data.saturating_sub(framing)
}

/// Polls `f` until it is ready, for at most `limit`; None when the time
/// is up. The timer is set up only if the first poll is pending: a socket
/// takes a small response at once, and a timer reads the clock and
/// touches the timer wheel. Boxed, so the connection's future does not
/// carry a timer it rarely needs (it stays small enough for the
/// allocator's per-thread cache).
fn within<T>(
    limit: Duration,
    mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> impl Future<Output = Option<T>> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = f(cx) {
            return Poll::Ready(Some(v));
        }
        let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        t.as_mut().poll(cx).map(|()| None)
    })
}

/// Writes `bufs[*at..]` with as few syscalls as the socket allows, then
/// flushes; `*at` and `written` (what the socket took, also when it then
/// fails) carry the progress from one poll to the next. A poll function,
/// not an async one: the slices live on the stack of one poll, so no
/// state crosses an await and nothing is allocated per batch.
fn poll_write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut [Chunk],
    at: &mut usize,
    written: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        while bufs.get(*at).is_some_and(|b| b.is_empty()) {
            *at += 1;
        }
        if *at == bufs.len() {
            return Pin::new(&mut *w).poll_flush(cx);
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut k = 0;
        for b in bufs[*at..].iter().filter(|b| !b.is_empty()).take(MAX_IOV) {
            slices[k] = IoSlice::new(b);
            k += 1;
        }
        let n = ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..k]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *written += n;
        advance(bufs, at, n);
    }
}

/// Consumes `n` written bytes from `bufs[*at..]`.
fn advance(bufs: &mut [Chunk], at: &mut usize, mut n: usize) {
    while n > 0 && *at < bufs.len() {
        let len = bufs[*at].len();
        if n >= len {
            n -= len;
            *at += 1;
        } else {
            bufs[*at].advance(n);
            n = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn vectored_writes_survive_short_writes_and_empty_buffers() {
        // A 7-byte pipe forces many partial writes across buffer edges.
        let (mut a, mut b) = tokio::io::duplex(7);
        // Both kinds of buffer, owned and shared.
        let mut bufs: Vec<Chunk> = ["abc", "", "defghij", "k", "", "lmnopqrstu"]
            .iter()
            .enumerate()
            .map(|(i, s)| match i % 2 {
                0 => Chunk::Owned(bytes::BytesMut::from(s.as_bytes())),
                _ => Chunk::Shared(Bytes::from_static(s.as_bytes())),
            })
            .collect();
        let reader = tokio::spawn(async move {
            let mut s = String::new();
            b.read_to_string(&mut s).await.map(|_| s)
        });
        let (mut n, mut at) = (0, 0);
        std::future::poll_fn(|cx| poll_write_all(&mut a, &mut bufs, &mut at, &mut n, cx))
            .await
            .expect("written");
        assert_eq!(n, 21, "every byte counted");
        drop(a);
        let got = reader.await.expect("joined").expect("read");
        assert_eq!(got, "abcdefghijklmnopqrstu");
    }

    #[test]
    fn settle_credits_only_body_bytes_that_were_written() {
        use super::super::link::RequestLink;
        use super::super::output::tests::tally;
        // Two outputs in one batch: 100 bytes (80 of them body) ending at
        // 100, then 50 bytes (all body) ending at 150.
        let cases = [
            (0, 0, 0),
            (30, 10, 0),
            (100, 80, 0),
            (120, 80, 20),
            (150, 80, 50),
            (175, 80, 50),
        ];
        for (written, first, second) in cases {
            let (a, b) = (
                Arc::new(RequestLink::default()),
                Arc::new(RequestLink::default()),
            );
            let mut tallies = vec![tally(&a, 80, 100, 100), tally(&b, 50, 50, 150)];
            settle(&mut tallies, written);
            assert!(tallies.is_empty());
            assert_eq!(
                (a.body_written(), b.body_written()),
                (first, second),
                "{written}"
            );
        }
    }

    #[tokio::test]
    async fn writes_pushes_in_order_then_closes_on_close() {
        use super::super::outbox::tests::push_now;
        use std::task::Poll;
        let engine = super::super::demux::tests::engine();
        let events = Arc::new(ConnEvents::new(engine.clone()));
        let (a, mut b) = tokio::io::duplex(1024);
        let pushes: [(&[&str], &str, bool); 3] =
            [(&["1"], "", false), (&[], "2", false), (&["3"], "4", true)];
        for (parts, buf, close) in pushes {
            let parts = parts
                .iter()
                .map(|p| Bytes::copy_from_slice(p.as_bytes()))
                .collect();
            let queued = push_now(&events.outbox, parts, buf.as_bytes(), close);
            assert_eq!(queued, Poll::Ready(true), "queued");
        }
        run(a, engine.clone(), events.clone()).await;
        let mut s = String::new();
        b.read_to_string(&mut s).await.expect("read");
        assert_eq!(s, "1234");
        assert!(events.is_set(WRITER_CLOSED));
        assert_eq!(engine.stats.snapshot().bytes_out, 4);
        let refused = push_now(&events.outbox, Vec::new(), b"5", false);
        assert_eq!(refused, Poll::Ready(false), "refused after the close");
    }
}
