//! One request's response on its way to the writer: STDOUT records encoded
//! in place, large body chunks passed by reference, the gate that holds the
//! response until the request's STDIN is complete, and the END_REQUEST. Also
//! the records of the server's own error responses.

use super::events::ConnEvents;
use super::link::RequestLink;
use super::outbox::Push;
use crate::access::AccessLog;
use crate::fastcgi::{record, response};
use crate::service::{ResponseBody, ServerError, error_response};
use crate::stats::Stats;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// A request task hands its output to the writer once it has this much.
pub(super) const FLUSH_AT: usize = 64 * 1024;
/// Body chunks at least this large are written from the service's own
/// buffer (a vectored write) instead of being copied.
const ZERO_COPY_MIN: usize = 8 * 1024;

/// The writer has ended: the connection is gone.
pub(super) struct WriterGone;

/// A request's output on its way to the writer; one of the writer's
/// senders while it lives (see `Outbox::drop_sender`).
pub(super) struct Output {
    id: u16,
    events: Arc<ConnEvents>,
    pub(super) link: Arc<RequestLink>,
    pub(super) buf: BytesMut,
    parts: Vec<Bytes>,
    parts_len: usize,
    /// The gate was found open: output may go to the writer.
    opened: bool,
    /// What the writer counts of this response.
    counting: Counting,
    /// Body bytes encoded since the last hand-over.
    body_pending: u64,
}

impl Output {
    pub(super) fn new(id: u16, events: Arc<ConnEvents>, link: Arc<RequestLink>) -> Output {
        events.outbox.add_sender();
        Output {
            id,
            events,
            link,
            buf: BytesMut::new(),
            parts: Vec::new(),
            parts_len: 0,
            opened: false,
            counting: Counting::Off,
            body_pending: 0,
        }
    }

    /// Sets what the writer counts of this response.
    pub(super) fn count(&mut self, c: Counting) {
        self.counting = c;
    }

    pub(super) fn counting(&self) -> Counting {
        self.counting
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

    /// Hands what is encoded to the writer, after waiting for the gate
    /// and for room in the writer's queue.
    pub(super) async fn flush(&mut self) -> Result<(), WriterGone> {
        if self.buffered() == 0 {
            return Ok(());
        }
        self.wait_gate().await;
        let own_task = self.events.outbox.room().await?;
        self.push(None, None, false, own_task)
    }

    /// Queues what is encoded, counted as `counting` says (a tally that
    /// carries `receipt`, or a count that carries `spent`), and the close
    /// after it if `close`. Not async: what it builds goes straight into
    /// the queue.
    fn push(
        &mut self,
        receipt: Option<Receipt>,
        spent: Option<ResponseBody>,
        close: bool,
        own_task: bool,
    ) -> Result<(), WriterGone> {
        let (len, body) = (self.buffered(), std::mem::take(&mut self.body_pending));
        let (tally, count) = match self.counting {
            Counting::Off => (None, None),
            Counting::Sum => {
                let count = Count {
                    body,
                    len,
                    at: 0,
                    _spent: spent,
                };
                (None, Some(count))
            }
            Counting::PerRequest => {
                let tally = Tally {
                    link: self.link.clone(),
                    body,
                    len,
                    at: 0,
                    receipt,
                };
                (Some(tally), None)
            }
        };
        self.parts_len = 0;
        let push = Push {
            parts: &mut self.parts,
            buf: &mut self.buf,
            tally,
            count,
            close,
        };
        self.events.outbox.push(push, own_task)
    }

    /// Ends STDOUT and the request. Waits for the gate first, then marks the
    /// request ended, then waits for room in the writer's queue; `last`
    /// then queues the closing records. In that order the reader never
    /// frees the id while its STDIN is still wanted, and the peer never
    /// sees END_REQUEST before the id is free.
    /// With `farewell` (shutdown has begun on a kept-alive connection) an
    /// empty STDERR record follows END_REQUEST: nginx then does not put the
    /// connection back into its keepalive cache.
    /// Returns what `last` needs (whether this runs in the writer's task),
    /// or `WriterGone`.
    pub(super) async fn finish(&mut self, end: End) -> Result<bool, WriterGone> {
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
        self.events.mark_task_end();
        self.link.end();
        self.events.outbox.room().await
    }

    /// Queues what `finish` closed, the close after it if `end.close`, and
    /// the request's `receipt`: the access log is then written once all of
    /// it is (or can no longer be), also when the writer is gone already.
    /// (`spent`, the service's spent body, goes with a count: see
    /// `Receipt::_spent`.)
    pub(super) fn last(
        &mut self,
        end: End,
        room: Result<bool, WriterGone>,
        receipt: Option<Receipt>,
        spent: Option<ResponseBody>,
    ) {
        // With the writer gone the push fails and drops its tally, which
        // logs the request with what was written.
        let _ = self.push(receipt, spent, end.close, room.unwrap_or(false));
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.events.outbox.drop_sender();
    }
}

/// What the writer counts of a response's body bytes as it writes them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Counting {
    /// Nothing: neither the access log nor the metrics want them.
    Off,
    /// Their sum, for the metrics (see `Count`): the access log is off.
    Sum,
    /// Each request's own, for its access-log line (see `Tally`).
    PerRequest,
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
    pub(super) _spent: Option<ResponseBody>,
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
    /// On the request's last tally only. Built once the request task has
    /// nothing more to wait for (see `Output::last`), so it is never kept
    /// in a future.
    receipt: Option<Receipt>,
}

/// Body bytes of one push of a request whose bytes are only summed (the
/// metrics' BYTES_OUT, with the access log off): the writer adds what it
/// wrote of them to the metrics. Plain numbers, no per-request state to
/// share, which is what makes this cheaper than a `Tally`.
pub(super) struct Count {
    /// Body bytes in its output.
    pub(super) body: u64,
    /// Bytes of its output (records: head, body, framing).
    pub(super) len: usize,
    /// Where its output ends in the writer's batch (set by the queue).
    pub(super) at: usize,
    /// On a request's last count: the spent body (see `Receipt::_spent`).
    pub(super) _spent: Option<ResponseBody>,
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

    fn output() -> (Output, Arc<ConnEvents>) {
        let events = Arc::new(ConnEvents::new(super::super::demux::tests::engine()));
        let link = Arc::new(RequestLink::default());
        (Output::new(3, events.clone(), link), events)
    }

    /// What the writer would take now.
    fn taken(events: &ConnEvents) -> Vec<super::super::outbox::Chunk> {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut batch = super::super::outbox::Pending::default();
        match events.outbox.poll_take(&mut cx, &mut batch) {
            std::task::Poll::Ready(Some(_)) => batch.bufs,
            _ => panic!("nothing queued"),
        }
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
        let (mut out, events) = output();
        out.stdout(Bytes::from_static(b"hi"));
        let end = End {
            app_status: 0,
            stdout_end: true,
            close: false,
            farewell: true,
        };
        let link = out.link.clone();
        let mut fin = Box::pin(async move {
            let room = out.finish(end).await;
            out.last(end, room, None, None);
        });
        assert!(futures_util::poll!(fin.as_mut()).is_pending(), "gate shut");
        assert!(!link.ended());
        link.open_gate();
        fin.await;
        assert!(link.ended());
        let bufs = taken(&events);
        assert_eq!(bufs.len(), 1, "one buffer queued");
        let kinds: Vec<u8> = decode_all(BytesMut::from(&bufs[0][..]))
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
