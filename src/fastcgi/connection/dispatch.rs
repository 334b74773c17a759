//! Service calls: an admitted request becomes an `http::Request`, the
//! service is called, and the request task turns its response into
//! records (or into a 500, a 413, or an abort), ends the request and logs
//! it. A bodiless request alone on its connection runs inside the
//! connection's task; any other gets a task of its own.

use super::Engine;
use super::demux::{Admitted, Dispatch};
use super::events::{ConnEvents, DRAINING, TASK_ENDED};
use super::output::{Counting, End, FLUSH_AT, Output, Receipt, WriterGone, encode_error};
use crate::access::AccessLog;
use crate::body::BodyShared;
use crate::fastcgi::params::Params;
use crate::fastcgi::request;
use crate::service::{
    BoxError, BoxFuture, ResponseBody, ServerError, error_response_boxed, panic_message,
};
use crate::{ConnMeta, RequestInfo, Transport};
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use tracing::error;

/// A request handled inside the connection's own task.
pub(super) type InlineRequest = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts admitted requests for one connection (the reader's `Dispatch`).
pub(super) struct Starter<'a> {
    pub(super) engine: &'a Engine,
    pub(super) meta: &'a ConnMeta,
    pub(super) events: &'a Arc<ConnEvents>,
    /// The connection's slot for an inline request (at most one: a second
    /// request on the connection gets a task).
    pub(super) inline: &'a mut Option<InlineRequest>,
}

impl Dispatch for Starter<'_> {
    fn inline_free(&self) -> bool {
        self.inline.is_none()
    }

    // Inlined into the demultiplexer, so that the params and the mapped
    // request are not copied into a call.
    #[inline(always)]
    fn start(&mut self, a: Admitted, params: Params, mapped: request::Mapped) {
        let request_id = self.engine.stats.next_request_id();
        let (parts, ()) = mapped.request.into_parts();
        let mut req = http::Request::from_parts(parts, a.body);
        let log = AccessLog::new(
            Transport::FastCgi,
            req.method(),
            req.uri(),
            mapped.peer.as_deref(),
            request_id,
        );
        req.extensions_mut().insert(RequestInfo {
            transport: Transport::FastCgi,
            listener: self.meta.listener.clone(),
            inherited: self.meta.inherited,
            request_id,
            peer: mapped.peer,
            scheme: mapped.scheme,
            params: Some(params),
            mount_prefix: None,
            trace: None,
        });
        let task = RequestTask {
            keep_conn: a.keep_conn,
            head_only: req.method() == http::Method::HEAD,
            body: a.body_shared,
            events: self.events.clone(),
            log,
            status: 0,
        };
        let mut out = Output::new(a.id, self.events.clone(), a.link);
        // Body bytes are counted as written: per request for the access
        // log's line, or only their sum when the metrics alone want them.
        out.count(if task.log.on {
            Counting::PerRequest
        } else if task.log.started.is_some() {
            Counting::Sum
        } else {
            Counting::Off
        });
        // The service is called here and its future awaited by the task,
        // which then holds a pointer, not the request: the request inside
        // the task's future would take it past the size glibc serves from
        // its thread cache. (A panic in the call itself comes out of the
        // future, see `App::call`, and is answered in the task.) Boxed:
        // tokio moves a spawned future by value through several frames.
        let call = self.engine.app.call(req);
        let fut = Box::pin(task.run(call, out));
        // A bodiless request alone on its connection (every request nginx
        // sends without a body: it does not multiplex) runs inside this
        // task, as hyper runs an HTTP/1 request: no task to create and
        // schedule, no hand-off between threads. It cannot hold up its own
        // input, having none, and the reader keeps polling it alongside the
        // socket, so an ABORT_REQUEST or EOF still reaches it. Requests
        // with a body, or beside others on a multiplexed connection, get
        // their own task so that they run in parallel.
        if a.inline {
            *self.inline = Some(fut);
        } else {
            tokio::spawn(fut);
        }
    }
}

/// How the service's response ended.
enum Outcome {
    /// Sent whole; with the service's spent body when its bytes are
    /// counted, kept until its last bytes are written (see
    /// `Receipt::_spent`).
    Complete(Option<ResponseBody>),
    /// The response body failed after the head was sent.
    BodyFailed(String),
    /// The writer's queue closed: the connection is gone.
    WriterGone,
    /// The handler wrote `FLUSH_AT` bytes of response before its request's
    /// STDIN was complete. Responses wait for the body, so holding more
    /// would be unbounded memory, and a handler that streams its answer to
    /// what it reads would wait for itself (until the stall timeout).
    BeforeBody,
}

/// One request's handler and its output. Reaches the engine through the
/// connection's `ConnEvents`, so requests do not each clone (and keep
/// writing the reference count of) the server-wide `Arc<Engine>`.
struct RequestTask {
    keep_conn: bool,
    head_only: bool,
    body: Option<Arc<BodyShared>>,
    events: Arc<ConnEvents>,
    log: AccessLog,
    /// The response status once a head is written (0: none yet).
    status: u16,
}

impl Drop for RequestTask {
    /// The request was counted in flight before the task was made (see
    /// `Stats::try_begin_request`); however it ends, it ends here.
    fn drop(&mut self) {
        self.events.engine.stats.end_request();
    }
}

impl RequestTask {
    /// Runs the handler and writes its response. Not an `async fn`: one
    /// would store its arguments in the future twice (as arguments and
    /// again as the `mut` bindings).
    fn run(self, call: BoxFuture, out: Output) -> impl Future<Output = ()> + Send {
        let mut task = self;
        let mut out = out;
        async move {
            let link = out.link.clone();
            let result = {
                let respond = AssertUnwindSafe(task.respond(call, &mut out)).catch_unwind();
                tokio::select! {
                    biased;
                    () = link.wait_cancelled() => None,
                    r = respond => Some(r),
                }
            };
            let (result, mut spent) = take_spent(result);
            let (end, mut note) = task.ending(result, &mut out);
            let status = if task.status == 0 { 499 } else { task.status };
            match end {
                Some(end) => {
                    let room = out.finish(end).await;
                    // The access log is written once the response is (see
                    // `Receipt`), so that BYTES_OUT counts what reached the
                    // socket. (An Arc of the server's stats, not of the
                    // connection's events: a receipt waiting in the outbox
                    // would make a cycle that keeps the connection alive.)
                    if out.counting() == Counting::PerRequest {
                        let receipt = Receipt {
                            log: task.take_log(),
                            stats: task.events.engine.stats.clone(),
                            status,
                            note: note.take(),
                            _spent: spent.take(),
                        };
                        out.last(end, room, Some(receipt), None);
                    } else {
                        out.last(end, room, None, spent.take());
                        // Only the counters (the access log is off); the
                        // writer adds the body bytes as it writes them.
                        let stats = &task.events.engine.stats;
                        task.log.finish(stats, status, 0, note.as_deref());
                    }
                }
                // The connection is gone, no END_REQUEST can be sent.
                None => {
                    drop(spent);
                    let written = link.body_written();
                    let stats = &task.events.engine.stats;
                    task.log.finish(stats, status, written, note.as_deref());
                }
            }
            if task.events.is_set(DRAINING) {
                task.events.raise(TASK_ENDED);
            }
        }
    }

    /// The access log record, leaving an inert one behind (the task's
    /// `Drop` keeps the struct whole).
    fn take_log(&mut self) -> AccessLog {
        let inert = AccessLog {
            transport: self.log.transport,
            method: http::Method::GET,
            uri: String::new(),
            peer: String::new(),
            request_id: self.log.request_id,
            started: None,
            on: false,
        };
        std::mem::replace(&mut self.log, inert)
    }

    /// How the request ends after `respond` (`None`: cancelled): the
    /// END_REQUEST to send, if any can be, and the access log's note. Not
    /// async, so that its state is not kept in every request's future.
    fn ending(
        &mut self,
        result: Option<std::thread::Result<Outcome>>,
        out: &mut Output,
    ) -> (Option<End>, Option<String>) {
        let mut end = End {
            app_status: 1,
            stdout_end: true,
            close: !self.keep_conn,
            farewell: self.keep_conn && self.events.is_set(DRAINING),
        };
        // A cancellation that came while the service's answer was being cut
        // short is still a cancellation (an abort, a 400).
        let result = match result {
            Some(Ok(Outcome::BeforeBody)) if out.link.cancelled() => None,
            r => r,
        };
        let note = match result {
            Some(Ok(Outcome::Complete(_))) => {
                end.app_status = 0;
                None
            }
            Some(Ok(Outcome::BodyFailed(e))) => {
                Some(format!("response body failed after the head was sent: {e}"))
            }
            Some(Ok(Outcome::WriterGone)) => {
                return (None, Some("connection closed while responding".into()));
            }
            Some(Ok(Outcome::BeforeBody)) => Some(self.began_before_body(out)),
            Some(Err(panic)) => Some(self.panicked(&*panic, out)),
            None if out.link.bad_length() => {
                // The demultiplexer logged the figures.
                let why = "request body length does not match CONTENT_LENGTH";
                self.error_response(out, &ServerError::BadRequest(why.into()));
                end.app_status = 0;
                Some(why.into())
            }
            None => {
                // Aborted by the web server, or the connection is gone.
                out.discard();
                end.stdout_end = false;
                // The service's status only if some of its answer may
                // have gone out; a head still held at the gate never did.
                if self.status == 0 || !out.opened() {
                    self.status = 499;
                }
                Some("request aborted".into())
            }
        };
        (Some(end), note)
    }

    /// The service wrote `FLUSH_AT` bytes before its request's body was
    /// complete: a 500 instead, sent at once; returns the access log's note.
    fn began_before_body(&mut self, out: &mut Output) -> String {
        error!(
            request_id = self.log.request_id,
            uri = %self.log.uri,
            "handler wrote {FLUSH_AT} bytes of its response before reading its whole \
             request body; responses wait for the body (nginx stops sending it once a \
             response begins), so the request fails with 500: read the body first"
        );
        self.error_response(out, &ServerError::AppFailed);
        // Nothing of the body is wanted any more: the 500 goes out now, and
        // the reader drops the rest of STDIN.
        out.link.open_gate();
        "response began before the request body was read".into()
    }

    /// The service panicked: a 500 unless its head is written already;
    /// returns the access log's note.
    fn panicked(&mut self, panic: &(dyn std::any::Any + Send), out: &mut Output) -> String {
        let msg = panic_message(panic);
        error!(
            request_id = self.log.request_id,
            uri = %self.log.uri,
            "handler panicked: {msg}"
        );
        if self.status == 0 {
            self.error_response(out, &ServerError::AppFailed);
        }
        format!("handler panicked: {msg}")
    }

    /// Replaces whatever is buffered with the server's own error response.
    fn error_response(&mut self, out: &mut Output, err: &ServerError) {
        out.discard();
        let id = out.id();
        let body = encode_error(&mut out.buf, id, err);
        out.add_body(body);
        self.status = err.status().as_u16();
    }

    /// Writes the head of the service's response (or of the error that
    /// replaces it) into `out`; returns the body still to send.
    fn head(
        &mut self,
        result: Result<http::Response<ResponseBody>, BoxError>,
        out: &mut Output,
    ) -> ResponseBody {
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                error!(
                    request_id = self.log.request_id,
                    "service returned an error: {e}"
                );
                error_response_boxed(&ServerError::AppFailed)
            }
        };
        let resp = if self.body.as_ref().is_some_and(|b| b.failed_too_large()) {
            let limit = self.events.engine.config.max_body_bytes;
            error_response_boxed(&ServerError::BodyTooLarge { limit })
        } else {
            resp
        };
        let (parts, body) = resp.into_parts();
        self.status = parts.status.as_u16();
        out.head(&parts, body.size_hint().exact());
        body
    }

    async fn respond(&mut self, call: BoxFuture, out: &mut Output) -> Outcome {
        // The head is written in a plain function: as locals here, the
        // response head (a HeaderMap and more) would be kept in the task's
        // future across the awaits below.
        let mut body = self.head(call.await, out);
        if self.head_only {
            return match out.flush().await {
                Ok(()) => Outcome::Complete((out.counting() != Counting::Off).then_some(body)),
                Err(WriterGone) => Outcome::WriterGone,
            };
        }
        loop {
            // Take every frame that is ready now; only a body that would
            // wait goes through `wait_frame` (a future of its own).
            let frame = match body.frame().now_or_never() {
                Some(f) => f,
                None => match wait_frame(&mut body, out).await {
                    Ok(f) => f,
                    Err(WriterGone) => return Outcome::WriterGone,
                },
            };
            match frame {
                None => {
                    // Wait for the gate here, inside the cancellable part:
                    // a response held for its body must still yield to an
                    // ABORT_REQUEST (finish() would send it regardless).
                    out.wait_gate().await;
                    return Outcome::Complete((out.counting() != Counting::Off).then_some(body));
                }
                Some(Err(e)) => return Outcome::BodyFailed(e.to_string()),
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        out.stdout(data.copy_to_bytes(data.remaining()));
                        if out.buffered() >= FLUSH_AT {
                            if !out.gate_open() {
                                return Outcome::BeforeBody;
                            }
                            if out.flush().await.is_err() {
                                return Outcome::WriterGone;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Takes the spent body out of a complete outcome, for the receipt.
fn take_spent(
    r: Option<std::thread::Result<Outcome>>,
) -> (Option<std::thread::Result<Outcome>>, Option<ResponseBody>) {
    match r {
        Some(Ok(Outcome::Complete(spent))) => (Some(Ok(Outcome::Complete(None))), spent),
        r => (r, None),
    }
}

/// Waits for the response body's next frame, handing what is batched to
/// the writer first. While the request's STDIN is incomplete the batch is
/// held (responses wait for the body), but it goes out as soon as the gate
/// opens, even if the body still waits.
async fn wait_frame(
    body: &mut ResponseBody,
    out: &mut Output,
) -> Result<Option<Result<Frame<Bytes>, BoxError>>, WriterGone> {
    if !out.gate_open() {
        // Boxed: this wait is rare (a response begun before its request's
        // body is complete), and inline it would add its futures to every
        // request's future, past the size glibc serves from its per-thread
        // cache.
        let held = Box::pin(async {
            tokio::select! {
                biased;
                f = body.frame() => Some(f),
                () = out.wait_gate() => None,
            }
        });
        if let Some(f) = held.await {
            return Ok(f);
        }
    }
    out.flush().await?;
    Ok(body.frame().await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastcgi::connection::link::RequestLink;

    /// The request task's future is boxed once per request; glibc serves
    /// blocks up to 1,032 bytes from its per-thread cache, and a larger
    /// one costs a trip through the allocator's arenas on every request.
    #[test]
    fn the_request_task_future_fits_the_allocator_thread_cache() {
        let engine = super::super::demux::tests::engine();
        let events = Arc::new(ConnEvents::new(engine));
        let task = RequestTask {
            keep_conn: true,
            head_only: false,
            body: None,
            events: events.clone(),
            log: AccessLog::new(
                Transport::FastCgi,
                &http::Method::GET,
                &http::Uri::default(),
                None,
                1,
            ),
            status: 0,
        };
        let out = Output::new(1, events, Arc::new(RequestLink::default()));
        let call: BoxFuture = Box::pin(async { Err("unused".into()) });
        let size = std::mem::size_of_val(&task.run(call, out));
        assert!(size <= 1024, "the request task's future is {size} bytes");
    }
}
