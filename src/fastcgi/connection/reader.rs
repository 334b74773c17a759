//! The reader: socket reads into one buffer (given back while idle),
//! records handed to the demultiplexer, what it asks carried out (answers
//! queued, body data fed with backpressure), the inline request polled,
//! timers (stall, idle, buffer release, drain grace), the drain on shutdown,
//! and whether the socket lingers after the close (see `linger`).

use super::bufpool::{self, READ_CHUNK};
use super::demux::{Action, BodyChunk, CloseReason, Demux};
use super::dispatch::{InlineRequest, Starter};
use super::events::{
    ConnEvents, DRAINING, SHUTDOWN_POKED, TASK_ENDED, WRITE_FAILED, WRITER_CLOSED,
};
use super::outbox::Push;
use super::{ConnMeta, ConnRead, Engine};
use crate::body::{BodyError, BodyShared};
use crate::fastcgi::record;
use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Sleep;
use tracing::{debug, warn};

/// After shutdown begins, how long an idle keep-alive connection stays
/// open for the web server to notice (see `Reader::begin_drain`).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// A connection idle this long gives its read buffer back (so 10,000 idle
/// keep-alive connections hold no buffers), while one that nginx keeps
/// busy reuses its buffer from request to request.
const BUFFER_RELEASE: Duration = Duration::from_secs(1);
/// A deadline far enough away to mean "none".
const FAR: Duration = Duration::from_secs(86400);

/// The read side of one connection, and the owner of its demultiplexer.
pub(super) struct Reader<R> {
    io: R,
    buf: BytesMut,
    /// When the partial record at the front of `buf` began to arrive.
    partial_since: Option<Instant>,
    idle_since: Instant,
    /// When the last read returned: the time of every record in `buf`
    /// (read once per read, not once per record).
    read_at: Instant,
    engine: Arc<Engine>,
    meta: ConnMeta,
    events: Arc<ConnEvents>,
    demux: Demux,
    /// The request run by this task instead of a spawned one (see
    /// `dispatch`).
    inline: Option<InlineRequest>,
    /// When the drain grace ends (set when shutdown begins).
    drain: Option<Instant>,
    /// The connection ended after a response without KEEP_CONN: its
    /// socket lingers (see `linger`).
    lingers: bool,
}

/// The futures the reader's loop waits on, made once per connection:
/// building and dropping them on every pass (cancellation tokens, a timer
/// registration) would be a measurable share of a keep-alive request.
/// Pinned in the loop's own state (the connection's future is boxed).
struct Waits<'a> {
    shutdown: Pin<&'a mut tokio_util::sync::WaitForCancellationFutureOwned>,
    shutdown_waker: std::task::Waker,
    sleep: Pin<&'a mut Sleep>,
    /// When the timer should fire.
    armed: Instant,
    /// What `sleep` is set for: it is reset to `armed` only when it is
    /// polled, that is when the reader actually waits. A connection whose
    /// input is already there when it looks (a fresh one from nginx, a
    /// request read with the response to the last) touches the timer
    /// wheel less.
    set: Instant,
}

impl<R: ConnRead> Reader<R> {
    pub(super) fn new(
        io: R,
        engine: Arc<Engine>,
        meta: ConnMeta,
        events: Arc<ConnEvents>,
    ) -> Reader<R> {
        Reader {
            io,
            buf: BytesMut::new(),
            partial_since: None,
            idle_since: Instant::now(),
            read_at: Instant::now(),
            demux: Demux::new(engine.clone()),
            engine,
            meta,
            events,
            inline: None,
            drain: None,
            lingers: false,
        }
    }

    /// Reads until the connection closes, then gives up what is in flight.
    /// Gives the socket's read half back if it is to linger.
    /// (An `async move` block, not an `async fn`: that would hold the
    /// reader twice, as argument and as local.)
    #[allow(clippy::manual_async_fn)] // see above: not an async fn on purpose
    pub(super) fn run(mut self) -> impl Future<Output = Option<R>> {
        async move {
            let reason = self.read_loop().await;
            self.log_close(&reason);
            // Dropping the entries cancels their tasks and opens their gates.
            self.demux.clear();
            // The inline request ends the same way (it sends its END_REQUEST
            // and access-log line), promptly now that it is cancelled.
            if let Some(req) = self.inline.take() {
                req.await;
            }
            bufpool::give(std::mem::take(&mut self.buf));
            // The writer ends once the requests' outputs are gone too.
            self.events.outbox.drop_sender();
            self.lingers.then_some(self.io)
        }
    }

    fn log_close(&self, reason: &CloseReason) {
        let live = self.demux.live();
        let listener = &self.meta.listener;
        match reason {
            CloseReason::PeerClosed if live > 0 => debug!(
                %listener,
                live, "peer closed the connection; cancelling its requests"
            ),
            CloseReason::PeerClosed => debug!(%listener, "peer closed the connection"),
            CloseReason::Routine(why) => debug!(%listener, "closing connection: {why}"),
            CloseReason::Protocol(why) => warn!(
                %listener,
                live,
                buffered = self.buf.len(),
                "closing FastCGI connection: {why}"
            ),
        }
    }

    async fn read_loop(&mut self) -> CloseReason {
        let events = self.events.clone();
        let now = Instant::now();
        let shutdown = std::pin::pin!(self.engine.shutdown.clone().cancelled_owned());
        let sleep = std::pin::pin!(tokio::time::sleep_until((now + FAR).into()));
        let mut w = Waits {
            shutdown,
            shutdown_waker: std::task::Waker::from(events.clone()),
            sleep,
            armed: now + FAR,
            set: now + FAR,
        };
        // The first poll registers the waker (or finds shutdown begun).
        events.raise(SHUTDOWN_POKED);
        loop {
            if let Err(reason) = self.handle_buffered().await {
                return reason;
            }
            let live = self.after_records();
            if self.demux.draining
                && live == 0
                && self.buf.is_empty()
                && self.demux.answered_in_drain
            {
                return CloseReason::Routine("server is shutting down; the last response is out");
            }
            let deadline = self.deadline();
            w.arm(deadline);
            let mask = if live > 0 {
                WRITE_FAILED | WRITER_CLOSED | SHUTDOWN_POKED | TASK_ENDED
            } else {
                WRITE_FAILED | WRITER_CLOSED | SHUTDOWN_POKED
            };
            let step = tokio::select! {
                biased;
                bits = events.wait(mask) => self.on_events(bits, &mut w).await,
                // Before the socket: a client that keeps sending (a
                // multiplexing one) must not starve the inline request.
                () = poll_inline(&mut self.inline), if self.inline.is_some() => {
                    // As for TASK_ENDED (this request's own would come too
                    // late: `live` is 0 on the next pass).
                    if self.demux.draining {
                        self.demux.answered_in_drain = true;
                    }
                    Ok(())
                }
                r = read_some(&mut self.io, &mut self.buf) => self.on_read(r),
                () = w.timer(), if deadline.is_some() => self.on_deadline(live),
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    /// Hands every whole record in the buffer to the demultiplexer. Records
    /// are handled synchronously; only what must wait (an answer to queue,
    /// body data to pass on) is awaited, and only when there is some.
    async fn handle_buffered(&mut self) -> Result<(), CloseReason> {
        loop {
            let rec = match record::decode(&mut self.buf) {
                Ok(Some(rec)) => rec,
                Ok(None) => return Ok(()),
                Err(e) => return Err(CloseReason::Protocol(e.to_string())),
            };
            // Neither the dispatcher nor the action is kept across the
            // awaits below (in the connection's future): the dispatcher
            // ends with the block, and each arm makes its future from the
            // action before awaiting it.
            let wait = {
                let mut to = Starter {
                    engine: &self.engine,
                    meta: &self.meta,
                    events: &self.events,
                    inline: &mut self.inline,
                };
                match self
                    .demux
                    .on_record(rec, &self.buf, self.read_at, &mut to)?
                {
                    Action::Nothing => continue,
                    Action::Send(a) => Either::Left(self.send(a.records, a.close)),
                    Action::Feed(chunk) => Either::Right(self.feed(chunk)),
                }
            };
            wait.await?;
        }
    }

    /// Bookkeeping after the records of a read: the partial-record clock,
    /// ended requests reaped, the idle clock. Returns the live requests.
    fn after_records(&mut self) -> usize {
        self.partial_since = if self.buf.is_empty() {
            None
        } else {
            self.partial_since.or(Some(Instant::now()))
        };
        self.demux.reap();
        let live = self.demux.live();
        if live == 0 {
            // The idle clock starts when the last response was done.
            if let Some(t) = self.events.last_task_end() {
                self.idle_since = self.idle_since.max(t);
            }
        }
        live
    }

    /// The earliest moment something must have happened, if any.
    fn deadline(&self) -> Option<Instant> {
        let stall = self.engine.config.stall_timeout;
        let earliest = |d: Option<Instant>, t: Instant| Some(d.map_or(t, |d: Instant| d.min(t)));
        let (mut d, live) = self.demux.input_deadline(stall);
        if let Some(t) = self.partial_since {
            d = earliest(d, t + stall);
        }
        if let (Some(t), 0) = (self.drain, live) {
            d = earliest(d, t);
        }
        if live > 0 && !(live == 1 && self.inline.is_some()) {
            // Tasks end without waking the reader (see `TASK_ENDED`), so
            // look again in a while: that is when the idle clock, which
            // then starts from `last_task_end`, gets noticed. (Not for the
            // inline request alone: the reader sees it end.)
            d = earliest(d, Instant::now() + BUFFER_RELEASE);
        }
        if live == 0 && self.buf.is_empty() {
            let mut t = self.idle_since + self.engine.config.idle_timeout;
            if self.buf.capacity() > 0 {
                t = t.min(self.idle_since + BUFFER_RELEASE);
            }
            d = earliest(d, t);
        }
        d
    }

    async fn on_events(&mut self, bits: u8, w: &mut Waits<'_>) -> Result<(), CloseReason> {
        if bits & WRITE_FAILED != 0 {
            return Err(CloseReason::Routine("write side failed"));
        }
        if bits & WRITER_CLOSED != 0 {
            self.lingers = true;
            return Err(CloseReason::Routine(
                "request without FCGI_KEEP_CONN finished",
            ));
        }
        if bits & SHUTDOWN_POKED != 0 {
            self.events.clear(SHUTDOWN_POKED);
            // (Never again once it has fired.)
            if !self.demux.draining && w.shutdown_fired() {
                // From here on ending tasks report (TASK_ENDED); the ones
                // that ended before are not live.
                self.events.set(DRAINING);
                self.demux.reap();
                self.begin_drain().await?;
            }
        }
        if bits & TASK_ENDED != 0 {
            self.events.clear(TASK_ENDED);
            if self.demux.draining {
                self.demux.answered_in_drain = true;
            }
            if self.demux.live() == 0 {
                self.idle_since = Instant::now();
            }
        }
        Ok(())
    }

    fn on_read(&mut self, r: io::Result<usize>) -> Result<(), CloseReason> {
        match r {
            Ok(0) => Err(CloseReason::PeerClosed),
            Ok(n) => {
                self.engine.stats.add_bytes_in(n as u64);
                // Any input is activity: a request the server answers
                // itself (400, 431, 503, UNKNOWN_ROLE) never ends a task.
                self.read_at = Instant::now();
                self.idle_since = self.read_at;
                Ok(())
            }
            // A reset is something clients do, not a protocol error.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                Err(CloseReason::PeerClosed)
            }
            Err(e) => Err(CloseReason::Protocol(format!("read failed: {e}"))),
        }
    }

    /// The timer fired; `live` is what the pass that armed it counted.
    fn on_deadline(&mut self, live: usize) -> Result<(), CloseReason> {
        let now = Instant::now();
        if self.demux.live() != live || self.deadline().is_some_and(|d| d > now) {
            // A request ended since this pass began (tasks do not wake the
            // reader), or the deadline moved: look again from the top.
            return Ok(());
        }
        if live == 0 && self.drain.is_some_and(|t| now >= t) {
            return Err(CloseReason::Routine(
                "server is shutting down; drain grace over",
            ));
        }
        let idle = live == 0 && self.buf.is_empty();
        if idle
            && self.buf.capacity() > 0
            && now < self.idle_since + self.engine.config.idle_timeout
        {
            // Idle for BUFFER_RELEASE: hold no buffer from now on.
            bufpool::give(std::mem::take(&mut self.buf));
            return Ok(());
        }
        Err(if idle {
            CloseReason::Routine("idle keep-alive timeout")
        } else {
            CloseReason::Protocol(format!(
                "peer stalled for {:?} in the middle of a record or request \
                 ({} bytes of a partial record buffered)",
                self.engine.config.stall_timeout,
                self.buf.len()
            ))
        })
    }

    /// Shutdown began. Requests in flight finish (their responses carry the
    /// marker, see `Output::finish`). An idle connection gets the marker on
    /// its own: an empty STDERR record for id 1, the id nginx always uses.
    /// nginx reads it either as "data on an idle cached connection" (and
    /// closes it without sending anything) or, if it has just sent a request
    /// here, as a harmless empty STDERR of that request, which we then answer
    /// with the marker. Either way nothing is lost; the grace bounds it.
    async fn begin_drain(&mut self) -> Result<(), CloseReason> {
        self.demux.draining = true;
        self.drain = Some(Instant::now() + DRAIN_GRACE);
        if self.demux.live() == 0 && self.buf.is_empty() {
            let mut b = BytesMut::with_capacity(8);
            record::put_stream_end(&mut b, record::STDERR, 1);
            self.send(b, false).await?;
        }
        Ok(())
    }

    /// Queues records the server wrote itself, and the close after them
    /// if `close`. (`&mut self`: the reader is Send but not Sync, `inline`
    /// holding a handler future, so no `&self` may live across an await.)
    /// (An `async move` block: an `async fn` would hold the records twice.)
    #[allow(clippy::manual_async_fn)] // see above: not an async fn on purpose
    fn send(
        &mut self,
        mut records: BytesMut,
        close: bool,
    ) -> impl Future<Output = Result<(), CloseReason>> + '_ {
        async move {
            let gone = |_| CloseReason::Routine("writer is gone");
            let own_task = self.events.outbox.room().await.map_err(gone)?;
            let mut no_parts = Vec::new();
            let push = Push::plain(&mut no_parts, &mut records, close);
            self.events.outbox.push(push, own_task).map_err(gone)
        }
    }

    /// Passes body data to the handler, waiting (up to the stall timeout)
    /// while it has not read what it was given before.
    /// (An `async move` block: an `async fn` would hold the chunk twice.)
    #[allow(clippy::manual_async_fn)] // see above: not an async fn on purpose
    fn feed(&mut self, chunk: BodyChunk) -> impl Future<Output = Result<(), CloseReason>> + '_ {
        async move {
            let BodyChunk {
                id,
                sender,
                body,
                data,
            } = chunk;
            let still_wanted = match sender.try_send(data) {
                Ok(()) => true,
                Err(TrySendError::Closed(_)) => false,
                // Boxed: the body's window is rarely full, and the wait's timer
                // would otherwise sit in every connection's future.
                Err(TrySendError::Full(data)) => {
                    let events = &self.events;
                    let stall = self.engine.config.stall_timeout;
                    Box::pin(feed_when_read(id, sender, data, &body, events, stall)).await?
                }
            };
            if !still_wanted {
                self.demux.body_unwanted(id);
            }
            Ok(())
        }
    }
}

/// Waits up to `stall` for the handler to take `data`; whether the
/// handler still wants its body.
async fn feed_when_read(
    id: u16,
    sender: mpsc::Sender<Bytes>,
    data: Bytes,
    body: &BodyShared,
    events: &ConnEvents,
    stall: Duration,
) -> Result<bool, CloseReason> {
    let outcome = tokio::select! {
        r = sender.send(data) => Some(r.is_ok()),
        _ = tokio::time::sleep(stall) => None,
        _ = events.wait(WRITE_FAILED) => return Err(CloseReason::Routine("write side failed")),
    };
    Ok(match outcome {
        Some(ok) => ok,
        None => {
            warn!(
                id,
                "handler left its request body unread for {stall:?}; discarding the rest \
                 (responses wait for the whole body, so a handler must read it before answering)"
            );
            body.fail(BodyError::Aborted);
            false
        }
    })
}

impl Waits<'_> {
    /// Re-arms the timer only when something must happen sooner than it
    /// is set for; a later deadline just means one spurious wake-up, after
    /// which it is re-armed (so a busy connection touches the timer wheel
    /// about once a second, not once per request).
    fn arm(&mut self, deadline: Option<Instant>) {
        let fired = self.set == self.armed && self.sleep.is_elapsed();
        if let Some(d) = deadline {
            if d < self.armed || fired {
                self.armed = d;
            }
        } else if fired {
            self.armed = Instant::now() + FAR;
        }
    }

    /// Waits for the timer, setting it to `armed` first if it is not.
    fn timer(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.set != self.armed {
                self.set = self.armed;
                self.sleep.as_mut().reset(self.armed.into());
            }
            self.sleep.as_mut().poll(cx)
        })
    }

    /// Polls the server's shutdown future with the waker that raises
    /// `SHUTDOWN_POKED`.
    fn shutdown_fired(&mut self) -> bool {
        let mut cx = Context::from_waker(&self.shutdown_waker);
        self.shutdown.as_mut().poll(&mut cx).is_ready()
    }
}

/// Polls the inline request, if any, with the connection task's own waker
/// (it is polled on every pass of the reader's loop; nginx's request is
/// usually done in its first poll). Empties the slot when it is done.
fn poll_inline(slot: &mut Option<InlineRequest>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| {
        let Some(req) = slot.as_mut() else {
            return Poll::Pending;
        };
        std::task::ready!(req.as_mut().poll(cx));
        *slot = None;
        Poll::Ready(())
    })
}

/// Waits for data and reads it, holding a buffer only once data is there.
async fn read_some<R: ConnRead>(io: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.is_empty() {
        std::future::poll_fn(|cx| io.poll_read_ready(cx)).await?;
    }
    if buf.capacity() == 0 {
        *buf = bufpool::take();
    } else if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    io.read_buf(buf).await
}
