//! The connection's one writer: takes everything queued (the inline
//! request's output first, then the queue, up to a batch limit) and writes
//! it with as few vectored writes as the socket allows, so the records of
//! one response, and of concurrent responses, share syscalls.

use super::Engine;
use super::events::{ConnEvents, WRITE_FAILED, WRITER_CLOSED};
use super::output::Tally;
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Output batches a connection may have queued before handlers wait for
/// the peer to read.
pub(super) const QUEUE: usize = 16;
/// The writer stops collecting a batch at this size.
pub(super) const WRITE_BATCH: usize = 256 * 1024;
/// How long a closing connection drains what the peer still sends, so the
/// peer gets a FIN and not a reset (golang.org/issue/4183).
pub(super) const LINGER: Duration = Duration::from_secs(2);
/// Buffers handed to one `write_vectored` call at most.
const MAX_IOV: usize = 64;

/// What the writer's queue carries.
pub(super) enum ToWriter {
    /// One buffer: a whole small response (no Vec to allocate).
    One(Bytes),
    Batch(Vec<Bytes>),
    /// A request's output with its tally (see `Tally`).
    Tallied(Vec<Bytes>, Box<Tally>),
    /// Write what is queued, shut down writing, linger, close.
    Close,
}

/// Output on its way to the socket, and the tallies of what it carries:
/// they are credited once all of it is written, and dropped uncredited if
/// a write fails.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) bufs: Vec<Bytes>,
    pub(super) tallies: Vec<Tally>,
}

/// Writes what the connection queues until the queue closes, a write fails,
/// or a `Close` is written.
pub(super) async fn run<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<ToWriter>,
    engine: Arc<Engine>,
    events: Arc<ConnEvents>,
) {
    let stall = engine.config.stall_timeout;
    // Allocated on first use: an idle connection holds no batch.
    let mut batch = Pending::default();
    loop {
        let Some((size, close)) = collect(&mut rx, &events, &mut batch).await else {
            return;
        };
        let mut written = 0;
        // Err(None): the stall timeout.
        let failure: Result<(), Option<io::Error>> = if size > 0 {
            // The timer only when the socket does not take it all at once
            // (setting one up reads the clock and touches the timer wheel).
            let write = write_all_vectored(&mut w, &mut batch.bufs, &mut written);
            tokio::pin!(write);
            let result = match (&mut write).now_or_never() {
                Some(r) => Ok(r),
                None => tokio::time::timeout(stall, write).await,
            };
            match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Some(e)),
                Err(_) => Err(None),
            }
        } else {
            Ok(())
        };
        engine.stats.add_bytes_out(written as u64);
        if !batch.tallies.is_empty() {
            settle(&mut batch.tallies, written);
        }
        if let Err(e) = failure {
            match e {
                Some(e) => debug!("write failed, closing connection: {e}"),
                None => warn!("peer left our output unread for {stall:?}; closing connection"),
            }
            events.raise(WRITE_FAILED);
            return;
        }
        batch.bufs.clear();
        if close {
            let _ = tokio::time::timeout(LINGER, w.shutdown()).await;
            events.raise(WRITER_CLOSED);
            return;
        }
    }
}

/// Waits for output, then takes all that is ready into `batch`; returns its
/// size and whether a `Close` came, or `None` once the queue is closed.
/// (A `poll_fn`, not an `async fn`: no state machine of its own per batch.)
fn collect<'a>(
    rx: &'a mut mpsc::Receiver<ToWriter>,
    events: &'a ConnEvents,
    batch: &'a mut Pending,
) -> impl Future<Output = Option<(usize, bool)>> + 'a {
    std::future::poll_fn(move |cx| {
        let (mut size, mut close) = (0usize, false);
        // The inline output first: see `ConnEvents::inline_out`.
        if !events.take_inline_out(batch, &mut size) {
            match std::task::ready!(rx.poll_recv(cx)) {
                Some(m) => take(m, batch, &mut size, &mut close),
                None => return std::task::Poll::Ready(None),
            }
        }
        while !close && size < WRITE_BATCH {
            events.take_inline_out(batch, &mut size);
            match rx.try_recv() {
                Ok(m) => take(m, batch, &mut size, &mut close),
                Err(_) => break,
            }
        }
        std::task::Poll::Ready(Some((size, close)))
    })
}

fn take(m: ToWriter, batch: &mut Pending, size: &mut usize, close: &mut bool) {
    match m {
        ToWriter::One(b) => {
            *size += b.len();
            batch.bufs.push(b);
        }
        ToWriter::Batch(v) => {
            for b in v {
                *size += b.len();
                batch.bufs.push(b);
            }
        }
        ToWriter::Tallied(v, mut t) => {
            for b in v {
                *size += b.len();
                batch.bufs.push(b);
            }
            t.at = *size;
            batch.tallies.push(*t);
        }
        ToWriter::Close => *close = true,
    }
}

/// Credits each tally with the body bytes of its output among the first
/// `written` bytes of the batch (all of them once the batch is written),
/// then drops it, which writes the access log of a request's last one. The
/// framing (the head, record headers) is taken off first, so a partly
/// written output is never credited more body than reached the socket.
fn settle(tallies: &mut Vec<Tally>, written: usize) {
    for t in tallies.drain(..) {
        let start = t.at.saturating_sub(t.len);
        let data = written.saturating_sub(start).min(t.len) as u64;
        let framing = (t.len as u64).saturating_sub(t.body);
        t.credit(data.saturating_sub(framing));
    }
}

/// Writes every buffer with as few syscalls as the socket allows, counting
/// in `written` what the socket took (also when it then fails).
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut [Bytes],
    written: &mut usize,
) -> io::Result<()> {
    let mut i = 0;
    while i < bufs.len() {
        if bufs[i].is_empty() {
            i += 1;
            continue;
        }
        let n = {
            let slices: Vec<IoSlice<'_>> = bufs[i..]
                .iter()
                .filter(|b| !b.is_empty())
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *written += n;
        let mut n = n;
        while n > 0 && i < bufs.len() {
            let len = bufs[i].len();
            if n >= len {
                n -= len;
                i += 1;
            } else {
                bufs[i].advance(n);
                n = 0;
            }
        }
    }
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn vectored_writes_survive_short_writes_and_empty_buffers() {
        // A 7-byte pipe forces many partial writes across buffer edges.
        let (mut a, mut b) = tokio::io::duplex(7);
        let mut bufs: Vec<Bytes> = ["abc", "", "defghij", "k", "", "lmnopqrstu"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        let reader = tokio::spawn(async move {
            let mut s = String::new();
            b.read_to_string(&mut s).await.map(|_| s)
        });
        let mut n = 0;
        write_all_vectored(&mut a, &mut bufs, &mut n)
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
    async fn writes_batches_in_order_then_closes_on_close() {
        let engine = super::super::demux::tests::engine();
        let events = Arc::new(ConnEvents::new(engine.clone()));
        let (tx, rx) = mpsc::channel(QUEUE);
        let (a, mut b) = tokio::io::duplex(1024);
        events.push_inline_out(
            &mut vec![Bytes::from_static(b"1")],
            &mut Default::default(),
            &mut None,
        );
        tx.send(ToWriter::One(Bytes::from_static(b"2"))).await.ok();
        let batch = vec![Bytes::from_static(b"3"), Bytes::from_static(b"4")];
        tx.send(ToWriter::Batch(batch)).await.ok();
        tx.send(ToWriter::Close).await.ok();
        run(a, rx, engine.clone(), events.clone()).await;
        let mut s = String::new();
        b.read_to_string(&mut s).await.expect("read");
        assert_eq!(s, "1234");
        assert!(events.is_set(WRITER_CLOSED));
        assert_eq!(engine.stats.snapshot().bytes_out, 4);
    }
}
