//! One request's response on its way to the writer: STDOUT records encoded
//! in place, large body chunks passed by reference, the gate that holds the
//! response until the request's STDIN is complete, and the END_REQUEST. Also
//! the records of the server's own error responses.

use super::events::{ConnEvents, WRITE_FAILED};
use super::link::RequestLink;
use super::writer::ToWriter;
use crate::access::AccessLog;
use crate::fastcgi::{record, response};
use crate::service::{ServerError, error_response};
use crate::stats::Stats;
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A request task hands its output to the writer once it has this much.
pub(super) const FLUSH_AT: usize = 64 * 1024;
/// Body chunks at least this large are written from the service's own
/// buffer (a vectored write) instead of being copied.
const ZERO_COPY_MIN: usize = 8 * 1024;

/// The writer's queue is closed: the connection is gone.
pub(super) struct WriterGone;

/// A request's output on its way to the writer.
pub(super) struct Output {
    id: u16,
    tx: mpsc::Sender<ToWriter>,
    pub(super) link: Arc<RequestLink>,
    /// Set for an inline request: its output may go to
    /// `ConnEvents::inline_out`.
    pub(super) inline: Option<Arc<ConnEvents>>,
    pub(super) buf: BytesMut,
    parts: Vec<Bytes>,
    parts_len: usize,
    /// The gate was found open: output may go to the writer.
    opened: bool,
    /// Count what the writer writes of this response (see `Tally`).
    tallied: bool,
    /// Body bytes encoded since the last hand-over.
    body_pending: u64,
}

impl Output {
    pub(super) fn new(id: u16, tx: mpsc::Sender<ToWriter>, link: Arc<RequestLink>) -> Output {
        Output {
            id,
            tx,
            link,
            inline: None,
            buf: BytesMut::new(),
            parts: Vec::new(),
            parts_len: 0,
            opened: false,
            tallied: false,
            body_pending: 0,
        }
    }

    /// Counts what the writer writes of this response, for the access log.
    pub(super) fn tally(&mut self) {
        self.tallied = true;
    }

    pub(super) fn tallied(&self) -> bool {
        self.tallied
    }

    /// `n` bytes just encoded were response body (not head or framing).
    pub(super) fn add_body(&mut self, n: u64) {
        self.body_pending += n;
    }

    pub(super) fn id(&self) -> u16 {
        self.id
    }

    /// Bytes encoded and not yet handed to the writer.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len() + self.parts_len
    }

    /// Drops everything not yet handed to the writer.
    pub(super) fn discard(&mut self) {
        self.buf.clear();
        self.parts.clear();
        self.parts_len = 0;
        self.body_pending = 0;
    }

    /// Waits until the request's STDIN is complete (once); never resolves
    /// for a cancelled request (see `RequestLink::wait_open`).
    pub(super) async fn wait_gate(&mut self) {
        if !self.opened {
            self.link.wait_open().await;
            self.opened = true;
        }
    }

    /// Whether the gate was found open (output may have gone out).
    pub(super) fn opened(&self) -> bool {
        self.opened
    }

    /// Whether output may go to the writer now.
    pub(super) fn gate_open(&mut self) -> bool {
        if !self.opened && self.link.input_done() && !self.link.cancelled() {
            self.opened = true;
        }
        self.opened
    }

    /// Appends the CGI head as one STDOUT record, encoded in place (no
    /// intermediate buffer): the header is written once the length is known.
    pub(super) fn head(&mut self, parts: &http::response::Parts, exact_len: Option<u64>) {
        // Room for the head, a small body and the closing records in one
        // allocation, so a small response never grows its buffer.
        let small_body = exact_len.filter(|&n| n < ZERO_COPY_MIN as u64).unwrap_or(0);
        self.buf
            .reserve(response::head_len_estimate(parts) + small_body as usize + 64);
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; record::HEADER_LEN]);
        response::encode_head(&mut self.buf, parts, exact_len);
        let len = self.buf.len() - start - record::HEADER_LEN;
        if len <= record::MAX_CONTENT_LEN {
            let (h, pad) = record::header_bytes(record::STDOUT, self.id, len);
            self.buf[start..start + record::HEADER_LEN].copy_from_slice(&h);
            self.buf.extend_from_slice(&[0u8; 8][..pad]);
        } else {
            // A head over 64 KiB (nginx would refuse it anyway): split it.
            let head = self.buf.split_off(start + record::HEADER_LEN);
            self.buf.truncate(start);
            self.stdout_copy(&head);
        }
    }

    fn stdout_copy(&mut self, data: &[u8]) {
        record::put_stream(&mut self.buf, record::STDOUT, self.id, data);
    }

    /// Appends body data as STDOUT records.
    pub(super) fn stdout(&mut self, data: Bytes) {
        self.body_pending += data.len() as u64;
        if data.len() < ZERO_COPY_MIN {
            self.stdout_copy(&data);
            return;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(record::STREAM_CHUNK));
            let pad = record::put_header(&mut self.buf, record::STDOUT, self.id, chunk.len());
            let head = self.buf.split().freeze();
            self.parts_len += head.len() + chunk.len();
            self.parts.push(head);
            self.parts.push(chunk);
            self.buf.extend_from_slice(&[0u8; 8][..pad]);
        }
    }

    /// Hands what is encoded to the writer, after waiting for the gate.
    /// (Not an `async fn`: it returns `hand_over`'s future itself, with
    /// no state machine of its own around it.)
    pub(super) fn flush(&mut self) -> impl Future<Output = Result<(), WriterGone>> + Send + '_ {
        self.hand_over(None)
    }

    /// `flush`, with the request's receipt after its last bytes.
    async fn hand_over(&mut self, receipt: Option<Box<Receipt>>) -> Result<(), WriterGone> {
        if self.buffered() == 0 && receipt.is_none() {
            return Ok(());
        }
        self.wait_gate().await;
        let mut tally = self.tallied.then(|| Tally {
            link: self.link.clone(),
            body: std::mem::take(&mut self.body_pending),
            len: self.buffered(),
            at: 0,
            receipt,
        });
        // The buffer is handed over whole, not split off: a split would
        // allocate a shared header for it, and only a streamed body reuses
        // the rest of its capacity (at 64 KiB a flush, one allocation is
        // nothing next to the copy).
        if let Some(events) = &self.inline {
            if events.is_set(WRITE_FAILED) {
                return Err(WriterGone);
            }
            // Only while nothing of ours can still be in the queue (the
            // writer takes `inline_out` first, so order is kept).
            if self.tx.capacity() == self.tx.max_capacity()
                && events.push_inline_out(&mut self.parts, &mut self.buf, &mut tally)
            {
                self.parts_len = 0;
                return Ok(());
            }
        }
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf).freeze();
            if self.parts.is_empty() && tally.is_none() {
                return queue(&self.tx, ToWriter::One(buf)).await;
            }
            self.parts.push(buf);
        }
        self.parts_len = 0;
        let parts = std::mem::take(&mut self.parts);
        match tally {
            Some(t) => queue(&self.tx, ToWriter::Tallied(parts, Box::new(t))).await,
            None if parts.is_empty() => Ok(()),
            None => queue(&self.tx, ToWriter::Batch(parts)).await,
        }
    }

    /// Ends STDOUT and the request. Waits for the gate first, then marks the
    /// request ended, then queues END_REQUEST: in that order the reader
    /// never frees the id while its STDIN is still wanted, and the peer
    /// never sees END_REQUEST before the id is free.
    /// With `farewell` (shutdown has begun on a kept-alive connection) an
    /// empty STDERR record follows END_REQUEST: nginx then does not put the
    /// connection back into its keepalive cache.
    /// With a `receipt`, the access log is written once all of it is.
    pub(super) async fn finish(
        &mut self,
        events: &ConnEvents,
        end: End,
        receipt: Option<Box<Receipt>>,
    ) {
        // Any reason the gate opened will do here: what is buffered now is
        // what the request task decided to send, cancelled or not.
        if !self.opened {
            self.link.wait_gate().await;
            self.opened = true;
        }
        if end.stdout_end {
            record::put_stream_end(&mut self.buf, record::STDOUT, self.id);
        }
        record::put_end_request(
            &mut self.buf,
            self.id,
            end.app_status,
            record::REQUEST_COMPLETE,
        );
        if end.farewell {
            record::put_stream_end(&mut self.buf, record::STDERR, self.id);
        }
        // Before `end`: a reader that sees the request ended must also
        // see when, or it would date the connection's idleness too early.
        events.mark_task_end();
        self.link.end();
        let _ = self.hand_over(receipt).await;
        if end.close {
            let _ = queue(&self.tx, ToWriter::Close).await;
        }
    }
}

/// How a request's output ends.
#[derive(Clone, Copy)]
pub(super) struct End {
    /// END_REQUEST's appStatus: 0 served, 1 failed or aborted.
    pub(super) app_status: u32,
    /// Close the STDOUT stream (not for a request aborted before it wrote).
    pub(super) stdout_end: bool,
    /// Close the connection after (the request had no KEEP_CONN).
    pub(super) close: bool,
    /// Add the "do not reuse" marker (shutdown has begun).
    pub(super) farewell: bool,
}

/// The access-log record of a finished request, written when its last
/// bytes have reached the socket (or can no longer), so that BYTES_OUT
/// counts body bytes written, not queued.
pub(super) struct Receipt {
    pub(super) log: AccessLog,
    pub(super) stats: Arc<Stats>,
    pub(super) status: u16,
    pub(super) note: Option<String>,
    /// The service's spent response body, dropped with the receipt: the
    /// management layer's body holds the request's in-flight entry, which
    /// so stays listed ("writing") until its last bytes are written.
    pub(super) _spent: Option<crate::service::ResponseBody>,
}

/// Body bytes of one request handed to the writer in one go. The writer
/// credits them to the request once everything before the tally is
/// written, and drops the tally uncredited when a write fails. The
/// request's last tally carries its receipt: the access log is written
/// when that tally is dropped, with what was credited by then.
pub(super) struct Tally {
    link: Arc<RequestLink>,
    /// Body bytes in its output.
    pub(super) body: u64,
    /// Bytes of its output (records: head, body, framing).
    pub(super) len: usize,
    /// Where its output ends in the writer's batch (set by the writer).
    pub(super) at: usize,
    /// Boxed: a pointer, not the record, in every request's future.
    receipt: Option<Box<Receipt>>,
}

impl Tally {
    pub(super) fn credit(&self, body: u64) {
        self.link.credit(body);
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if let Some(r) = self.receipt.take() {
            let written = self.link.body_written();
            r.log.finish(&r.stats, r.status, written, r.note.as_deref());
        }
    }
}

/// Queues `out` for the writer: at once when there is room, as there
/// nearly always is; else it waits, in a boxed future. Awaited inline, the
/// channel's send future is a few hundred bytes of every request task's
/// future, which pushes it past the size glibc serves from its per-thread
/// cache.
pub(super) async fn queue(tx: &mpsc::Sender<ToWriter>, out: ToWriter) -> Result<(), WriterGone> {
    match tx.try_send(out) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(WriterGone),
        Err(mpsc::error::TrySendError::Full(out)) => {
            Box::pin(tx.send(out)).await.map_err(|_| WriterGone)
        }
    }
}

/// Writes the server's own response to `err` as STDOUT records (the same
/// bytes the HTTP transport sends for it); returns the body length.
pub(super) fn encode_error(b: &mut BytesMut, id: u16, err: &ServerError) -> u64 {
    let (parts, text) = error_response(err).into_parts();
    let mut head = BytesMut::with_capacity(128);
    response::encode_head(&mut head, &parts, Some(text.len() as u64));
    head.extend_from_slice(&text);
    record::put_stream(b, record::STDOUT, id, &head);
    text.len() as u64
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A tally without a receipt, for the writer's tests.
    pub(in crate::fastcgi::connection) fn tally(
        link: &Arc<RequestLink>,
        body: u64,
        len: usize,
        at: usize,
    ) -> Tally {
        Tally {
            link: link.clone(),
            body,
            len,
            at,
            receipt: None,
        }
    }

    fn decode_all(mut b: BytesMut) -> Vec<record::Record> {
        let mut v = Vec::new();
        while let Ok(Some(r)) = record::decode(&mut b) {
            v.push(r);
        }
        assert!(b.is_empty(), "only whole records");
        v
    }

    fn output() -> (Output, mpsc::Receiver<ToWriter>) {
        let (tx, rx) = mpsc::channel(4);
        (Output::new(3, tx, Arc::new(RequestLink::default())), rx)
    }

    #[test]
    fn encode_error_is_one_stdout_stream_with_status_and_reason() {
        let mut b = BytesMut::new();
        let n = encode_error(&mut b, 5, &ServerError::ConnectionBusy { limit: 2 });
        let recs = decode_all(b);
        assert_eq!(recs.len(), 1);
        assert_eq!((recs[0].kind, recs[0].request_id), (record::STDOUT, 5));
        let text = String::from_utf8_lossy(&recs[0].content);
        assert!(text.starts_with("Status: 503"), "{text}");
        assert!(text.contains("retry-after: 1"), "{text}");
        let body = "503 too many concurrent requests on this connection (limit 2)\n";
        assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{text}");
        assert_eq!(n, body.len() as u64);
    }

    #[test]
    fn large_chunks_are_passed_by_reference_small_ones_copied() {
        let (mut out, _rx) = output();
        out.stdout(Bytes::from_static(b"small"));
        assert!(out.parts.is_empty());
        let big = Bytes::from(vec![7u8; ZERO_COPY_MIN]);
        out.stdout(big.clone());
        assert!(out.parts.iter().any(|p| p.as_ptr() == big.as_ptr()));
        assert_eq!(out.buffered(), out.buf.len() + out.parts_len);
        out.discard();
        assert_eq!(out.buffered(), 0);
    }

    #[tokio::test]
    async fn finish_waits_for_the_gate_then_ends_the_request() {
        let (mut out, mut rx) = output();
        let events = ConnEvents::new(super::super::demux::tests::engine());
        out.stdout(Bytes::from_static(b"hi"));
        let end = End {
            app_status: 0,
            stdout_end: true,
            close: false,
            farewell: true,
        };
        let link = out.link.clone();
        let mut fin = Box::pin(async move {
            out.finish(&events, end, None).await;
        });
        assert!(futures_util::poll!(fin.as_mut()).is_pending(), "gate shut");
        assert!(!link.ended());
        link.open_gate();
        fin.await;
        assert!(link.ended());
        let Some(ToWriter::One(b)) = rx.recv().await else {
            panic!("one buffer queued");
        };
        let kinds: Vec<u8> = decode_all(BytesMut::from(&b[..]))
            .iter()
            .map(|r| r.kind)
            .collect();
        let want = [
            record::STDOUT,
            record::STDOUT,
            record::END_REQUEST,
            record::STDERR,
        ];
        assert_eq!(kinds, want);
    }
}
