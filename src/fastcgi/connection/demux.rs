//! The synchronous demultiplexer: FastCGI records in, actions out. It owns
//! the table of one connection's requests and their input state (PARAMS
//! being gathered, STDIN being fed), the admission caps (per connection,
//! per server, params and body size), and the server's own answers
//! (rejections, GET_VALUES, UNKNOWN_TYPE). It does no I/O and knows nothing
//! of the service: an admitted request goes to a `Dispatch`, and anything
//! that may have to wait (an answer to queue, body data to pass on) is
//! returned as an `Action` for the reader to carry out.

mod params_buf;

use super::Engine;
use super::link::RequestLink;
use super::output::encode_error;
use crate::Transport;
use crate::access::AccessLog;
use crate::body::{Body, BodyError, BodyShared};
use crate::fastcgi::params::{self, Params};
use crate::fastcgi::record::{self, BeginRequest, Record};
use crate::fastcgi::request;
use crate::service::ServerError;
use bytes::{Bytes, BytesMut};
use params_buf::ParamsBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// STDIN records a request may have queued before the reader waits for its
/// handler (nginx sends 32 KiB records: 4 of them is 128 KiB per request).
const BODY_WINDOW: usize = 4;

/// What a record asks of the reader beyond the demultiplexer's own state.
pub(super) enum Action {
    /// Nothing to wait for.
    Nothing,
    /// Queue records the server wrote itself.
    Send(Answer),
    /// Pass body data on to a handler.
    Feed(BodyChunk),
}

impl Action {
    fn send(b: BytesMut, close: bool) -> Action {
        Action::Send(Answer { records: b, close })
    }
}

/// Records the server wrote itself, then perhaps the close of a connection
/// whose request did not ask for KEEP_CONN.
pub(super) struct Answer {
    pub(super) records: BytesMut,
    pub(super) close: bool,
}

/// STDIN data for a request's body channel.
pub(super) struct BodyChunk {
    pub(super) id: u16,
    pub(super) sender: mpsc::Sender<Bytes>,
    pub(super) body: Arc<BodyShared>,
    pub(super) data: Bytes,
}

/// Why the connection closes (logged once by the reader, with context).
pub(super) enum CloseReason {
    /// The peer closed (or reset) the connection.
    PeerClosed,
    /// An orderly close: idle timeout, shutdown, a finished request without
    /// KEEP_CONN, the writer gone.
    Routine(&'static str),
    /// The peer broke the protocol or stalled.
    Protocol(String),
}

/// A request whose params are complete and which passed admission.
pub(super) struct Admitted {
    pub(super) id: u16,
    pub(super) keep_conn: bool,
    pub(super) link: Arc<RequestLink>,
    pub(super) body: Body,
    /// `None` for a request known to have no body.
    pub(super) body_shared: Option<Arc<BodyShared>>,
    /// Run it inside the connection's task (see `dispatch`).
    pub(super) inline: bool,
}

/// Where admitted requests go: the reader's side of the demultiplexer.
pub(super) trait Dispatch {
    /// Whether the connection's task is free to run a request itself.
    fn inline_free(&self) -> bool;
    /// Starts the handler of an admitted request (counted in flight).
    /// The params and the mapped request come as arguments of their own,
    /// not in `Admitted`: gathering them into a struct copies them.
    fn start(&mut self, req: Admitted, params: Params, mapped: request::Mapped);
}

/// Which input stream of a request the demultiplexer is reading.
enum Input {
    /// Gathering PARAMS; a request already refused swallows them.
    Params {
        buf: ParamsBuf,
        reject: Option<ServerError>,
    },
    /// The handler runs; STDIN goes to its body.
    Body {
        tx: Option<mpsc::Sender<Bytes>>,
        /// `None` for a request known to have no body (no channel either).
        body: Option<Arc<BodyShared>>,
        received: u64,
        declared: Option<u64>,
    },
}

/// One request of the table.
struct Entry {
    id: u16,
    keep_conn: bool,
    link: Arc<RequestLink>,
    input: Input,
    /// When the current input stream began or last progressed.
    input_since: Instant,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Whatever happens to the reader, the request is given up. (Not
        // one that has ended: its task is past both flags, and a wake-up
        // would be a wasted poll.)
        if !self.link.ended() {
            self.link.abandon();
        }
    }
}

/// One connection's requests and their input state.
pub(super) struct Demux {
    engine: Arc<Engine>,
    reqs: Vec<Entry>,
    /// Shutdown has begun: the server's own answers carry the farewell
    /// marker (an empty STDERR after END_REQUEST).
    pub(super) draining: bool,
    /// A response carrying the farewell marker went out: the peer will not
    /// send on this connection again.
    pub(super) answered_in_drain: bool,
}

impl Demux {
    pub(super) fn new(engine: Arc<Engine>) -> Demux {
        Demux {
            engine,
            reqs: Vec::new(),
            draining: false,
            answered_in_drain: false,
        }
    }

    /// Requests whose END_REQUEST is not yet on its way.
    pub(super) fn live(&self) -> usize {
        self.reqs.iter().filter(|e| !e.link.ended()).count()
    }

    /// Drops the entries of ended requests.
    pub(super) fn reap(&mut self) {
        self.reqs.retain(|e| !e.link.ended());
    }

    /// Gives every request up (the connection is closing).
    pub(super) fn clear(&mut self) {
        self.reqs.clear();
    }

    fn find(&self, id: u16) -> Option<usize> {
        self.reqs.iter().position(|e| e.id == id && !e.link.ended())
    }

    /// The earliest input stall deadline among live requests, and how many
    /// are live.
    pub(super) fn input_deadline(&self, stall: std::time::Duration) -> (Option<Instant>, usize) {
        let mut d: Option<Instant> = None;
        let mut live = 0;
        for e in self.reqs.iter().filter(|e| !e.link.ended()) {
            live += 1;
            if !e.link.input_done() {
                let t = e.input_since + stall;
                d = Some(d.map_or(t, |d| d.min(t)));
            }
        }
        (d, live)
    }

    /// Handles one record. `rest` is what follows it in the read buffer,
    /// `now` when it was read. Inlined into the reader's loop: a call per
    /// record, returning its `Action` through memory, costs more than the
    /// work of most records.
    #[inline(always)]
    pub(super) fn on_record(
        &mut self,
        rec: Record,
        rest: &[u8],
        now: Instant,
        to: &mut impl Dispatch,
    ) -> Result<Action, CloseReason> {
        match rec.kind {
            record::BEGIN_REQUEST => self.on_begin(rec, now),
            record::PARAMS => self.on_params(rec, rest, now, to),
            record::STDIN => self.on_stdin(rec, now),
            record::ABORT_REQUEST => Ok(self.on_abort(rec)),
            record::GET_VALUES => Ok(self.on_get_values(rec)),
            record::DATA => Ok(Action::Nothing), // filter role only; a responder ignores it
            record::END_REQUEST
            | record::STDOUT
            | record::STDERR
            | record::GET_VALUES_RESULT
            | record::UNKNOWN_TYPE
                if rec.request_id != 0 =>
            {
                debug!(
                    kind = rec.kind,
                    id = rec.request_id,
                    "ignoring record sent in the wrong direction"
                );
                Ok(Action::Nothing)
            }
            other => {
                debug!(
                    kind = other,
                    id = rec.request_id,
                    "answering FCGI_UNKNOWN_TYPE"
                );
                let mut b = BytesMut::with_capacity(16);
                record::put_unknown_type(&mut b, other);
                Ok(Action::send(b, false))
            }
        }
    }

    fn on_get_values(&mut self, rec: Record) -> Action {
        let cfg = &self.engine.config;
        let mut body = BytesMut::new();
        // An unparsable query gets an empty answer, like an unknown name.
        if let Ok(query) = Params::parse(rec.content) {
            for (name, _) in query.iter() {
                let value = match name {
                    b"FCGI_MAX_CONNS" => cfg.max_conns.to_string(),
                    b"FCGI_MAX_REQS" => cfg.max_requests.to_string(),
                    b"FCGI_MPXS_CONNS" => "1".to_string(),
                    _ => continue,
                };
                params::encode_pair(&mut body, name, value.as_bytes());
            }
        }
        let mut b = BytesMut::with_capacity(body.len() + 16);
        // The three answers are a few dozen bytes: always one record.
        record::put_record(&mut b, record::GET_VALUES_RESULT, 0, &body);
        Action::send(b, false)
    }

    #[inline]
    fn on_begin(&mut self, rec: Record, now: Instant) -> Result<Action, CloseReason> {
        let id = rec.request_id;
        if id == 0 {
            return Err(CloseReason::Protocol(
                "BEGIN_REQUEST with request id 0".into(),
            ));
        }
        let Some(begin) = BeginRequest::parse(&rec.content) else {
            return Err(CloseReason::Protocol(format!(
                "BEGIN_REQUEST for id {id} has a {}-byte body",
                rec.content.len()
            )));
        };
        self.reap();
        if self.find(id).is_some() {
            return Err(CloseReason::Protocol(format!(
                "BEGIN_REQUEST for request id {id}, which is still active"
            )));
        }
        if begin.role != record::ROLE_RESPONDER {
            warn!(
                id,
                role = begin.role,
                "refusing a role other than responder"
            );
            let mut b = BytesMut::with_capacity(16);
            record::put_end_request(&mut b, id, 0, record::UNKNOWN_ROLE);
            return Ok(Action::send(b, !begin.keep_conn()));
        }
        let reject = self.admit_on_connection(id)?;
        self.reqs.push(Entry {
            id,
            keep_conn: begin.keep_conn(),
            link: Arc::new(RequestLink::default()),
            input: Input::Params {
                buf: ParamsBuf::Empty,
                reject,
            },
            input_since: now,
        });
        Ok(Action::Nothing)
    }

    /// The per-connection cap: over it a request is answered 503 once its
    /// params are in. Such requests still get an entry (to swallow their
    /// PARAMS), so there is a hard cap too: every record costs a scan of
    /// the table, and 65535 BEGINs (1 MiB) would pin a core for ~40 s. A
    /// client that honours FCGI_MAX_REQS never reaches it.
    fn admit_on_connection(&self, id: u16) -> Result<Option<ServerError>, CloseReason> {
        let cfg = &self.engine.config;
        let max = cfg.max_requests_per_conn;
        let hard = max.saturating_mul(2).max(cfg.max_requests);
        let live = self.live();
        if live >= hard {
            return Err(CloseReason::Protocol(format!(
                "BEGIN_REQUEST for id {id} with {live} requests already in flight on this \
                 connection (FCGI_MAX_REQS is {})",
                cfg.max_requests
            )));
        }
        Ok((live >= max).then_some(ServerError::ConnectionBusy { limit: max }))
    }

    #[inline]
    fn on_params(
        &mut self,
        rec: Record,
        rest: &[u8],
        now: Instant,
        to: &mut impl Dispatch,
    ) -> Result<Action, CloseReason> {
        let Some(i) = self.find(rec.request_id) else {
            return Ok(Action::Nothing); // inactive id: ignored, as the spec says
        };
        let cap = self.engine.config.max_params_bytes;
        let Input::Params { buf, reject } = &mut self.reqs[i].input else {
            return Err(CloseReason::Protocol(format!(
                "PARAMS for request id {} after its PARAMS stream ended",
                rec.request_id
            )));
        };
        if rec.content.is_empty() {
            let buf = std::mem::take(buf);
            return Ok(match reject.take() {
                Some(r) => self.answer(i, r, None),
                None => self.params_complete(i, buf, rest, now, to),
            });
        }
        if reject.is_none() {
            if buf.len() + rec.content.len() > cap {
                *reject = Some(ServerError::HeadTooLarge { limit: cap });
                // Keep nothing of a flood.
                *buf = ParamsBuf::Empty;
            } else {
                buf.push(rec.content);
            }
        }
        Ok(Action::Nothing)
    }

    /// Parses and maps the params of entry `i`, admits the request and
    /// hands it to `to`, or answers it with an error.
    fn params_complete(
        &mut self,
        i: usize,
        buf: ParamsBuf,
        rest: &[u8],
        now: Instant,
        to: &mut impl Dispatch,
    ) -> Action {
        // Likely to run inline: then the request is usually over within
        // this pass of the reader, so its params (and the request head,
        // which shares their bytes) may stay in the read buffer. Anything
        // else gets a copy.
        let stdin_ends_next = empty_stdin_next(rest, self.reqs[i].id);
        let inline_likely = to.inline_free() && self.live() == 1 && stdin_ends_next;
        let mut known = request::Known::default();
        let params = match Params::parse_with(buf.finish(!inline_likely), |i, n| known.note(i, n)) {
            Ok(p) => p,
            Err(e) => {
                let r = ServerError::BadRequest(format!("malformed FastCGI params: {e}"));
                return self.answer(i, r, None);
            }
        };
        let mapped = match request::build_known(&params, &known) {
            Ok(m) => m,
            Err(e) => {
                let r = ServerError::BadRequest(e.0);
                return self.answer(i, r, Some(&params));
            }
        };
        if let Some(r) = self.admit(&mapped) {
            return self.answer(i, r, Some(&params));
        }
        // Counted in flight from here; the request task's drop ends it.
        let (body, body_shared, bodiless) =
            self.open_body(i, mapped.content_length, stdin_ends_next, now);
        let inline = bodiless && to.inline_free() && self.live() == 1;
        let entry = &self.reqs[i];
        let admitted = Admitted {
            id: entry.id,
            keep_conn: entry.keep_conn,
            link: entry.link.clone(),
            body,
            body_shared,
            inline,
        };
        to.start(admitted, params, mapped);
        Action::Nothing
    }

    /// The body and server-wide caps; on success the request is counted in
    /// flight.
    fn admit(&self, mapped: &request::Mapped) -> Option<ServerError> {
        let cfg = &self.engine.config;
        let limit = cfg.max_body_bytes;
        if mapped.content_length.is_some_and(|n| n > limit) {
            return Some(ServerError::BodyTooLarge { limit });
        }
        if !self.engine.stats.try_begin_request(cfg.max_requests) {
            self.engine.stats.refused_overloaded();
            return Some(ServerError::Overloaded {
                limit: cfg.max_requests,
            });
        }
        None
    }

    /// Sets entry `i` reading its body; returns the handler's end of it
    /// and whether the request is known to be bodiless.
    /// `stdin_ends_next`: the next record in the buffer is this request's
    /// empty STDIN (see `empty_stdin_next`).
    fn open_body(
        &mut self,
        i: usize,
        declared: Option<u64>,
        stdin_ends_next: bool,
        now: Instant,
    ) -> (Body, Option<Arc<BodyShared>>, bool) {
        // A request known to have no body gets no channel. nginx declares
        // no CONTENT_LENGTH for a GET but sends its empty STDIN in the same
        // write as the PARAMS, so it is usually in the buffer already.
        let bodiless = match declared {
            Some(n) => n == 0,
            None => stdin_ends_next,
        };
        let (tx, body_shared, body) = if bodiless {
            (None, None, Body::empty())
        } else {
            let (tx, rx) = mpsc::channel(BODY_WINDOW);
            let shared = Arc::new(BodyShared::default());
            let body = Body::channel(rx, shared.clone(), declared);
            (Some(tx), Some(shared), body)
        };
        let entry = &mut self.reqs[i];
        entry.input = Input::Body {
            tx,
            body: body_shared.clone(),
            received: 0,
            declared,
        };
        entry.input_since = now;
        (body, body_shared, bodiless)
    }

    /// Answers entry `i` with an error response written by the server.
    fn answer(&mut self, i: usize, r: ServerError, params: Option<&Params>) -> Action {
        let entry = &self.reqs[i];
        let (id, keep_conn) = (entry.id, entry.keep_conn);
        let get = |n: &str| params.and_then(|p| p.get_str(n)).unwrap_or("-").to_string();
        let log = AccessLog {
            transport: Transport::FastCgi,
            // "-" (a valid extension method) for one that is not valid.
            method: params
                .and_then(|p| p.get("REQUEST_METHOD"))
                .and_then(|m| http::Method::from_bytes(m).ok())
                .unwrap_or_else(|| http::Method::from_bytes(b"-").unwrap_or_default()),
            uri: get("REQUEST_URI"),
            peer: get("REMOTE_ADDR"),
            request_id: self.engine.stats.next_request_id(),
            started: Some(Instant::now()),
            on: AccessLog::enabled(),
        };
        let mut b = BytesMut::with_capacity(256);
        let body_len = encode_error(&mut b, id, &r);
        record::put_stream_end(&mut b, record::STDOUT, id);
        record::put_end_request(&mut b, id, 0, record::REQUEST_COMPLETE);
        if keep_conn && self.draining {
            record::put_stream_end(&mut b, record::STDERR, id);
            self.answered_in_drain = true;
        }
        // Ended before queued: the peer may reuse the id once it reads this.
        entry.link.end();
        log.finish(
            &self.engine.stats,
            r.status().as_u16(),
            body_len,
            Some(&r.to_string()),
        );
        Action::send(b, !keep_conn)
    }

    #[inline]
    fn on_stdin(&mut self, rec: Record, now: Instant) -> Result<Action, CloseReason> {
        let id = rec.request_id;
        let Some(i) = self.find(id) else {
            return Ok(Action::Nothing); // inactive (e.g. already answered with an error)
        };
        let limit = self.engine.config.max_body_bytes;
        let entry = &mut self.reqs[i];
        let link = &entry.link;
        let Input::Body {
            tx,
            body,
            received,
            declared,
        } = &mut entry.input
        else {
            return Err(CloseReason::Protocol(format!(
                "STDIN for request id {id} before its PARAMS stream ended"
            )));
        };
        entry.input_since = now;
        if link.input_done() {
            return Ok(Action::Nothing); // after the end of the stream, or after a failure
        }
        if rec.content.is_empty() {
            match declared.filter(|&d| *received != d) {
                Some(d) => {
                    tx.take();
                    refuse_bad_length(id, link, body.as_deref(), d, *received, false);
                }
                None => {
                    // The gate opens before the body ends: a handler that
                    // sees its body end may answer at once, and must find
                    // the gate open (else a large answer is a 500).
                    body_arrived(link, body.as_deref());
                    tx.take();
                }
            }
            return Ok(Action::Nothing);
        }
        *received += rec.content.len() as u64;
        if let Some(d) = declared.filter(|&d| *received > d) {
            tx.take();
            refuse_bad_length(id, link, body.as_deref(), d, *received, true);
            return Ok(Action::Nothing);
        }
        if *received > limit {
            if let Some(body) = body {
                body.fail(BodyError::TooLarge { limit });
            }
            body_arrived(link, body.as_deref());
            tx.take();
            return Ok(Action::Nothing);
        }
        let (Some(sender), Some(body)) = (tx.clone(), body.clone()) else {
            return Ok(Action::Nothing); // the handler dropped its body: discard
        };
        Ok(Action::Feed(BodyChunk {
            id,
            sender,
            body,
            data: rec.content,
        }))
    }

    /// The handler no longer takes body data for request `id`.
    pub(super) fn body_unwanted(&mut self, id: u16) {
        if let Some(i) = self.find(id) {
            if let Input::Body { tx, .. } = &mut self.reqs[i].input {
                tx.take();
            }
        }
    }

    fn on_abort(&mut self, rec: Record) -> Action {
        let id = rec.request_id;
        let Some(i) = self.find(id) else {
            return Action::Nothing;
        };
        let entry = &mut self.reqs[i];
        match &mut entry.input {
            Input::Params { .. } => {
                // No handler yet: the server answers for it.
                let keep_conn = entry.keep_conn;
                entry.link.end();
                debug!(id, "request aborted before its params were complete");
                let mut b = BytesMut::with_capacity(16);
                record::put_end_request(&mut b, id, 1, record::REQUEST_COMPLETE);
                Action::send(b, !keep_conn)
            }
            Input::Body { tx, body, .. } => {
                if let Some(body) = body {
                    body.fail(BodyError::Aborted);
                }
                tx.take();
                entry.link.abandon();
                Action::Nothing
            }
        }
    }
}

/// STDIN is over (ended, or the rest is dropped): the response may go
/// out, and the in-flight registry's phase moves past "reading body".
fn body_arrived(link: &RequestLink, body: Option<&BodyShared>) {
    if let Some(body) = body {
        body.arrived();
    }
    link.open_gate();
}

/// STDIN disagrees with CONTENT_LENGTH: the request is answered 400 (by
/// its task, which is cancelled), never served with a truncated or padded
/// body. `more`: the data went past the declared length (`received` counts
/// it so far); else the stream ended short.
fn refuse_bad_length(
    id: u16,
    link: &RequestLink,
    body: Option<&BodyShared>,
    declared: u64,
    received: u64,
    more: bool,
) {
    if more {
        warn!(
            id,
            declared,
            received,
            "STDIN carried more than the CONTENT_LENGTH of {declared} bytes ({received} so far); \
             answering 400"
        );
    } else {
        warn!(
            id,
            declared,
            received,
            "STDIN ended after {received} bytes but CONTENT_LENGTH declared {declared}; \
             answering 400"
        );
    }
    if let Some(body) = body {
        body.fail(BodyError::LengthMismatch { declared, received });
    }
    link.refuse_bad_length();
}

/// Whether `buf` starts with the empty STDIN record that ends request
/// `id`'s (then empty) body.
fn empty_stdin_next(buf: &[u8], id: u16) -> bool {
    let Some(raw) = buf.first_chunk::<{ record::HEADER_LEN }>() else {
        return false;
    };
    let h = record::Header::parse(raw);
    h.version == record::VERSION_1
        && h.kind == record::STDIN
        && h.request_id == id
        && h.content_len == 0
}

#[cfg(test)]
pub(super) mod tests;
