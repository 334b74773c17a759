//! The connection's one writer: takes everything queued (the inline
//! request's output first, then the queue, up to a batch limit) and writes
//! it with as few vectored writes as the socket allows, so the records of
//! one response, and of concurrent responses, share syscalls.

use super::Engine;
use super::events::{ConnEvents, WRITE_FAILED, WRITER_CLOSED};
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
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
    /// Write what is queued, shut down writing, linger, close.
    Close,
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
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let Some((size, close)) = collect(&mut rx, &events, &mut batch).await else {
            return;
        };
        if size > 0 {
            // The timer only when the socket does not take it all at once
            // (setting one up reads the clock and touches the timer wheel).
            let write = write_all_vectored(&mut w, &mut batch);
            tokio::pin!(write);
            let written = match (&mut write).now_or_never() {
                Some(r) => Ok(r),
                None => tokio::time::timeout(stall, write).await,
            };
            match written {
                Ok(Ok(())) => engine.stats.add_bytes_out(size as u64),
                Ok(Err(e)) => {
                    debug!("write failed, closing connection: {e}");
                    events.raise(WRITE_FAILED);
                    return;
                }
                Err(_) => {
                    warn!("peer left our output unread for {stall:?}; closing connection");
                    events.raise(WRITE_FAILED);
                    return;
                }
            }
        }
        batch.clear();
        if close {
            let _ = tokio::time::timeout(LINGER, w.shutdown()).await;
            events.raise(WRITER_CLOSED);
            return;
        }
    }
}

/// Waits for output, then takes all that is ready into `batch`; returns its
/// size and whether a `Close` came, or `None` once the queue is closed.
async fn collect(
    rx: &mut mpsc::Receiver<ToWriter>,
    events: &ConnEvents,
    batch: &mut Vec<Bytes>,
) -> Option<(usize, bool)> {
    let mut close = false;
    let mut size = 0usize;
    // The inline output first: see `ConnEvents::inline_out`.
    let first = std::future::poll_fn(|cx| {
        if events.take_inline_out(batch, &mut size) {
            return std::task::Poll::Ready(Some(None));
        }
        rx.poll_recv(cx).map(|m| m.map(Some))
    })
    .await?;
    if let Some(m) = first {
        take(m, batch, &mut size, &mut close);
    }
    while !close && size < WRITE_BATCH {
        events.take_inline_out(batch, &mut size);
        match rx.try_recv() {
            Ok(m) => take(m, batch, &mut size, &mut close),
            Err(_) => break,
        }
    }
    Some((size, close))
}

fn take(m: ToWriter, batch: &mut Vec<Bytes>, size: &mut usize, close: &mut bool) {
    match m {
        ToWriter::One(b) => {
            *size += b.len();
            batch.push(b);
        }
        ToWriter::Batch(v) => {
            for b in v {
                *size += b.len();
                batch.push(b);
            }
        }
        ToWriter::Close => *close = true,
    }
}

/// Writes every buffer with as few syscalls as the socket allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut [Bytes],
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
        write_all_vectored(&mut a, &mut bufs)
            .await
            .expect("written");
        drop(a);
        let got = reader.await.expect("joined").expect("read");
        assert_eq!(got, "abcdefghijklmnopqrstu");
    }

    #[tokio::test]
    async fn writes_batches_in_order_then_closes_on_close() {
        let engine = super::super::demux::tests::engine();
        let events = Arc::new(ConnEvents::new(engine.clone()));
        let (tx, rx) = mpsc::channel(QUEUE);
        let (a, mut b) = tokio::io::duplex(1024);
        events.push_inline_out(&mut vec![Bytes::from_static(b"1")], &mut Default::default());
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
