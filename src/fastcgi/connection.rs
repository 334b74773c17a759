//! One FastCGI connection: reads records, demultiplexes them into requests,
//! runs each request's handler, and writes the responses.
//!
//! Shape (data flows one way):
//!
//! ```text
//!  socket ──read──> Reader ──STDIN chunks──> Body (per request, bounded)
//!                     │  ├─spawn──> request task ──> service ──> response
//!                     │  └─inline─> request (bodiless, alone) ──┐   │
//!                     │                                  direct │   │ records
//!                     └──management replies──┐                  v   v
//!                                   out queue (bounded) ──> Writer ──> socket
//! ```
//!
//! - The reader and the writer are one task (joined, reader first). A
//!   request without a body that is alone on its connection, which is every
//!   GET nginx sends, runs inside that task too, as hyper runs an HTTP/1
//!   request; its output goes to the writer directly (`Signals::direct`).
//!   Other requests get a task each, so multiplexed ones run in parallel.
//! - The reader owns the per-request state table. It never waits on a
//!   handler except when a body's window is full: that is the backpressure
//!   that keeps a slow handler from making the server read unbounded data.
//! - All output of a connection goes through one writer. It takes
//!   everything queued (up to a batch limit) and writes it with one
//!   vectored write, so a response's records, and the records of concurrent
//!   responses, share syscalls instead of costing one each.
//! - Each request task sends its own END_REQUEST, also when it is aborted
//!   (the abort reaches it as a cancellation), so exactly one END_REQUEST per
//!   request is structural, not a race between two writers.
//! - Shutdown loses no request on a kept-alive connection. FastCGI has no
//!   "Connection: close", but nginx drops a cached connection on which
//!   anything arrives after END_REQUEST (or while it sits idle in the
//!   cache). So once shutdown begins, every response ends with an extra
//!   empty STDERR record after its END_REQUEST, and an idle connection gets
//!   one such record at once; nginx then stops using the connection by
//!   itself, and we close only after that (or after a short grace), never
//!   under a request nginx has just sent.
//! - A response is held back until its request's STDIN is complete: nginx
//!   stops sending a request body the moment a response header arrives
//!   (`ngx_http_upstream_send_response` closes the body's temp file), which
//!   is how Go's net/http/fcgi truncates echoes behind nginx.

use super::params::{self, Params};
use super::record::{self, BeginRequest, Record};
use super::{request, response};
use crate::access::AccessLog;
use crate::body::{Body, BodyError, BodyShared};
use crate::service::{
    App, BoxError, BoxFuture, ResponseBody, ServerError, error_response, error_response_boxed,
    panic_message,
};
use crate::stats::Stats;
use crate::{ConnMeta, RequestInfo, Transport};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http_body::Body as _;
use http_body_util::BodyExt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// STDIN records a request may have queued before the reader waits for its
/// handler (nginx sends 32 KiB records: 4 of them is 128 KiB per request).
const BODY_WINDOW: usize = 4;
/// Output batches a connection may have queued before handlers wait for
/// the peer to read.
const OUT_QUEUE: usize = 16;
/// A request task hands its output to the writer once it has this much.
const FLUSH_AT: usize = 64 * 1024;
/// Body chunks at least this large are written from the service's own
/// buffer (a vectored write) instead of being copied.
const ZERO_COPY_MIN: usize = 8 * 1024;
/// The writer stops collecting a batch at this size.
const WRITE_BATCH: usize = 256 * 1024;
/// How long a closing connection drains what the peer still sends, so the
/// peer gets a FIN and not a reset (golang.org/issue/4183).
const LINGER: Duration = Duration::from_secs(2);
/// After shutdown begins, how long an idle keep-alive connection stays
/// open for the web server to notice (see `Reader::begin_drain`).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Read size when the buffer has no partial record to complete.
const READ_CHUNK: usize = 16 * 1024;
/// A connection idle this long gives its read buffer back (so 10,000 idle
/// keep-alive connections hold no buffers), while one that nginx keeps
/// busy reuses its buffer from request to request.
const BUFFER_RELEASE: Duration = Duration::from_secs(1);

/// Limits and timeouts of the protocol engine.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    pub max_requests_per_conn: usize,
    pub max_params_bytes: usize,
    pub max_body_bytes: u64,
    /// A record, a PARAMS stream, or a gap in a STDIN stream may take no
    /// longer than this (slowloris); also how long a handler may leave its
    /// body unread, and how long the peer may leave our output unread.
    pub stall_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Advertised through FCGI_GET_VALUES.
    pub max_conns: usize,
    pub max_requests: usize,
}

/// What every connection shares.
pub struct Engine {
    pub app: App,
    pub config: ConnConfig,
    pub stats: Arc<Stats>,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
}

/// The read half of a connection. `readable` lets an idle connection wait
/// without holding a read buffer (10,000 idle connections cost no buffers).
pub trait ConnRead: AsyncRead + Unpin + Send + Sync + 'static {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

impl ConnRead for tokio::net::unix::OwnedReadHalf {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::unix::OwnedReadHalf::readable(self)
    }
}

impl ConnRead for tokio::net::tcp::OwnedReadHalf {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::tcp::OwnedReadHalf::readable(self)
    }
}

impl<T: AsyncRead + Send + Sync + 'static> ConnRead for tokio::io::ReadHalf<T> {}

impl ConnRead for tokio::io::DuplexStream {}

enum Out {
    /// One buffer: a whole small response (no Vec to allocate).
    One(Bytes),
    Batch(Vec<Bytes>),
    /// Write what is queued, shut down writing, linger, close.
    Close,
}

/// Connection-wide signals between the reader, the writer and the tasks.
///
/// The events the reader waits for are bits in one atomic with one waker,
/// not a token or `Notify` each: the reader polls every branch of its
/// `select!` on every pass, and each of those polls took a mutex (two of
/// them shared by every connection of the server).
struct Signals {
    /// `DEAD`, `CLOSING`, `DONE`, `DRAINING` (see their docs).
    events: std::sync::atomic::AtomicU8,
    /// The reader's waker: it is the only task that waits on `events`.
    waker: futures_util::task::AtomicWaker,
    /// When a request task last finished, in ns after `base` (0: never).
    last_done: std::sync::atomic::AtomicU64,
    base: Instant,
    /// Output of inline requests (see `Reader::start`), handed to the
    /// writer without a wake-up: an inline request runs inside the reader,
    /// and the connection task polls the writer right after the reader, so
    /// the writer finds it in the same pass. Sending it through `Out`
    /// instead made the task wake itself, which tokio's scheduler answers
    /// by waking another worker thread to steal (a futex call a request).
    direct: std::sync::Mutex<Vec<Bytes>>,
    engine: Arc<Engine>,
}

impl Signals {
    fn new(engine: Arc<Engine>) -> Signals {
        Signals {
            engine,
            events: Default::default(),
            waker: Default::default(),
            last_done: Default::default(),
            base: Instant::now(),
            direct: Default::default(),
        }
    }

    /// Queues `parts`, then `buf`, for the writer (emptying both) unless
    /// too much is queued already. (`buf` is not pushed onto `parts`
    /// first: for a small response that is the only part, and a Vec for it
    /// was an allocation a request.)
    fn push_direct(&self, parts: &mut Vec<Bytes>, buf: &mut BytesMut) -> bool {
        let Ok(mut q) = self.direct.lock() else {
            return false;
        };
        let queued: usize = q.iter().map(Bytes::len).sum();
        if queued >= WRITE_BATCH {
            return false;
        }
        q.append(parts);
        if !buf.is_empty() {
            q.push(std::mem::take(buf).freeze());
        }
        true
    }

    /// Moves what `push_direct` queued into the writer's batch.
    fn take_direct(&self, batch: &mut Vec<Bytes>, size: &mut usize) -> bool {
        let Ok(mut q) = self.direct.lock() else {
            return false;
        };
        if q.is_empty() {
            return false;
        }
        for b in q.drain(..) {
            *size += b.len();
            batch.push(b);
        }
        true
    }

    /// Sets `bit` and wakes the reader.
    fn raise(&self, bit: u8) {
        self.events.fetch_or(bit, Ordering::AcqRel);
        self.waker.wake();
    }

    fn is_set(&self, bit: u8) -> bool {
        self.events.load(Ordering::Acquire) & bit != 0
    }

    /// Waits until one of the bits in `mask` is set; returns all bits.
    fn wait(&self, mask: u8) -> impl Future<Output = u8> + '_ {
        std::future::poll_fn(move |cx| {
            let bits = self.events.load(Ordering::Acquire);
            if bits & mask != 0 {
                return std::task::Poll::Ready(bits);
            }
            self.waker.register(cx.waker());
            let bits = self.events.load(Ordering::Acquire);
            if bits & mask != 0 {
                std::task::Poll::Ready(bits)
            } else {
                std::task::Poll::Pending
            }
        })
    }

    fn mark_done(&self) {
        let ns = self.base.elapsed().as_nanos().max(1);
        self.last_done
            .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Release);
    }

    fn last_done(&self) -> Option<Instant> {
        match self.last_done.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns)),
        }
    }
}

/// The writer failed: the peer is gone.
const DEAD: u8 = 1;
/// The writer has shut down its side after a request without KEEP_CONN.
const CLOSING: u8 = 2;
/// A request task finished during shutdown (the reader may close).
/// Outside shutdown tasks do not wake the reader: that wake-up cost a
/// reader poll and a lock per request, for nothing but the idle clock,
/// which `last_done` keeps instead (see `Reader::deadline`).
const DONE: u8 = 4;
/// The reader has begun the drain: responses carry the farewell marker.
const DRAINING: u8 = 8;
/// The server's shutdown token may have fired: the reader polls it again
/// (it polls it only then; see `Signals`'s `Wake`).
const SHUTDOWN: u8 = 16;

/// The waker the reader polls the server's shutdown future with. Polled
/// with the connection task's own waker on every pass of the reader's
/// loop, the future took its token's lock each time (tokio's `Notified`
/// re-checks its waker under the lock); this way it is polled once, and
/// again only when shutdown has actually been signalled.
impl std::task::Wake for Signals {
    fn wake(self: Arc<Self>) {
        self.raise(SHUTDOWN);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raise(SHUTDOWN);
    }
}

/// State a request task and the reader share: the one allocation a
/// request needs besides its handler (a `Notify` for the gate and a
/// oneshot channel for the cancellation were two more, and each use of
/// them took a lock).
#[derive(Default)]
struct ReqShared {
    /// Set just before END_REQUEST is queued: from then on the id is free.
    ended: AtomicBool,
    /// The request's STDIN is complete (or will never be read): the gate
    /// for its response is open.
    input_done: AtomicBool,
    /// The web server aborted the request, or its connection is gone: the
    /// handler is dropped (see `RequestTask::run`).
    cancelled: AtomicBool,
    /// The request task's waker, for both flags above: only that one task
    /// ever waits on them.
    task: futures_util::task::AtomicWaker,
}

impl ReqShared {
    fn open_gate(&self) {
        self.input_done.store(true, Ordering::Release);
        self.task.wake();
    }

    /// The reader gives the request up (aborted, or the connection is
    /// gone): its handler is cancelled and its gate opened, so a task
    /// waiting to respond cannot wait forever. One wake-up for both.
    fn abandon(&self) {
        self.input_done.store(true, Ordering::Release);
        self.cancelled.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Resolves once `flag` (one of this struct's) is set.
    fn wait_for<'a>(&'a self, flag: &'a AtomicBool) -> impl Future<Output = ()> + 'a {
        std::future::poll_fn(move |cx| {
            if flag.load(Ordering::Acquire) {
                return std::task::Poll::Ready(());
            }
            self.task.register(cx.waker());
            if flag.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }

    async fn wait_gate(&self) {
        self.wait_for(&self.input_done).await
    }

    fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

/// A PARAMS stream as it arrives. nginx sends the whole stream in one
/// record, whose content is kept as it is (a slice of the read buffer);
/// only a stream of several records is joined into a buffer of its own.
#[derive(Default)]
enum Gather {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Gather {
    fn len(&self) -> usize {
        match self {
            Gather::Empty => 0,
            Gather::One(b) => b.len(),
            Gather::Many(b) => b.len(),
        }
    }

    fn push(&mut self, more: Bytes) {
        *self = match std::mem::take(self) {
            Gather::Empty => Gather::One(more),
            Gather::One(first) => {
                let mut b = BytesMut::with_capacity(first.len() + more.len());
                b.extend_from_slice(&first);
                b.extend_from_slice(&more);
                Gather::Many(b)
            }
            Gather::Many(mut b) => {
                b.extend_from_slice(&more);
                Gather::Many(b)
            }
        }
    }

    /// The whole stream. With `own`, never a slice of the read buffer: a
    /// request that outlives this pass of the reader must not pin that
    /// buffer (its 16 KiB and more), which could then not be reused.
    fn finish(self, own: bool) -> Bytes {
        match self {
            Gather::Empty => Bytes::new(),
            Gather::One(b) if own => Bytes::copy_from_slice(&b),
            Gather::One(b) => b,
            Gather::Many(b) => b.freeze(),
        }
    }
}

enum Phase {
    Params {
        buf: Gather,
        reject: Option<ServerError>,
    },
    Running {
        tx: Option<mpsc::Sender<Bytes>>,
        /// `None` for a request known to have no body (no channel either).
        body: Option<Arc<BodyShared>>,
        received: u64,
        declared: Option<u64>,
    },
}

struct Entry {
    id: u16,
    keep_conn: bool,
    shared: Arc<ReqShared>,
    phase: Phase,
    /// When the current input phase began or last progressed.
    input_since: Instant,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Whatever happens to the reader, the request is given up. (Not
        // one that has ended: its task is past both flags, and a wake-up
        // would be a wasted poll.)
        if !self.shared.ended() {
            self.shared.abandon();
        }
    }
}

/// Serves one connection until it closes.
pub async fn serve<R, W>(reader: R, writer: W, engine: Arc<Engine>, meta: ConnMeta)
where
    R: ConnRead,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let signals = Arc::new(Signals::new(engine.clone()));
    let reader = Reader {
        io: reader,
        buf: BytesMut::new(),
        partial_since: None,
        idle_since: Instant::now(),
        read_at: Instant::now(),
        engine: engine.clone(),
        meta,
        out: out_tx,
        signals: signals.clone(),
        reqs: Vec::new(),
        inline: None,
        shutting_down: false,
        drain: None,
        answered_in_drain: false,
    };
    // One task for both halves. The reader goes first on every wake-up, so
    // output that an inline request (see `Reader::start`) produced is
    // written in the same pass.
    futures_util::future::join(reader.run(), write_loop(writer, out_rx, engine, signals)).await;
}

/// A request handled inside the connection's own task.
type InlineRequest = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Polls the inline request, if any, with the connection task's own waker
/// (it is polled on every pass of the reader's loop; nginx's request is
/// usually done in its first poll). Empties the slot when it is done.
fn poll_inline(slot: &mut Option<InlineRequest>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| {
        let Some(req) = slot.as_mut() else {
            return std::task::Poll::Pending;
        };
        std::task::ready!(req.as_mut().poll(cx));
        *slot = None;
        std::task::Poll::Ready(())
    })
}

struct Reader<R> {
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
    out: mpsc::Sender<Out>,
    signals: Arc<Signals>,
    reqs: Vec<Entry>,
    /// Requests run by this task instead of a spawned one (see `start`).
    /// At most one: a second request on the connection gets a task.
    inline: Option<InlineRequest>,
    shutting_down: bool,
    /// When the drain grace ends (set when shutdown begins).
    drain: Option<Instant>,
    /// A response (carrying the "do not reuse" marker) went out after
    /// shutdown began: the peer will not send on this connection again.
    answered_in_drain: bool,
}

/// What handling a record left to do that may have to wait.
enum Step {
    Done,
    /// Queue an answer the reader wrote itself.
    Reply(Reply),
    /// Pass body data on to a handler.
    Feed(Feed),
}

impl Step {
    fn reply(b: BytesMut, close: bool) -> Step {
        Step::Reply(Reply {
            out: b.freeze(),
            close,
        })
    }
}

/// An answer from the reader itself: records, then perhaps the close of a
/// connection without KEEP_CONN.
struct Reply {
    out: Bytes,
    close: bool,
}

/// STDIN data for a request's body channel.
struct Feed {
    id: u16,
    sender: mpsc::Sender<Bytes>,
    body: Arc<BodyShared>,
    data: Bytes,
}

/// Why the reader closes the connection (logged once, with context).
enum Stop {
    Eof,
    Quiet(&'static str),
    Protocol(String),
}

impl<R: ConnRead> Reader<R> {
    async fn run(mut self) {
        let stop = self.run_inner().await;
        let live = self.live();
        match &stop {
            Stop::Eof if live > 0 => debug!(
                listener = %self.meta.listener,
                live,
                "peer closed the connection; cancelling its requests"
            ),
            Stop::Eof => debug!(listener = %self.meta.listener, "peer closed the connection"),
            Stop::Quiet(why) => debug!(listener = %self.meta.listener, "closing connection: {why}"),
            Stop::Protocol(why) => warn!(
                listener = %self.meta.listener,
                live,
                buffered = self.buf.len(),
                "closing FastCGI connection: {why}"
            ),
        }
        // Dropping the entries cancels their tasks and opens their gates.
        self.reqs.clear();
        // Inline requests end the same way (each sends its END_REQUEST and
        // access-log line), promptly now that they are cancelled.
        if let Some(req) = self.inline.take() {
            req.await;
        }
    }

    fn live(&self) -> usize {
        self.reqs.iter().filter(|e| !e.shared.ended()).count()
    }

    fn reap(&mut self) {
        self.reqs.retain(|e| !e.shared.ended());
    }

    fn find(&self, id: u16) -> Option<usize> {
        self.reqs
            .iter()
            .position(|e| e.id == id && !e.shared.ended())
    }

    /// The earliest moment something must have happened, if any.
    fn deadline(&self) -> Option<Instant> {
        let stall = self.engine.config.stall_timeout;
        let mut d: Option<Instant> = self.partial_since.map(|t| t + stall);
        let mut live = 0;
        for e in &self.reqs {
            if e.shared.ended() {
                continue;
            }
            live += 1;
            if !e.shared.input_done.load(Ordering::Acquire) {
                let t = e.input_since + stall;
                d = Some(d.map_or(t, |d| d.min(t)));
            }
        }
        if let (Some(t), 0) = (self.drain, live) {
            d = Some(d.map_or(t, |d| d.min(t)));
        }
        if live > 0 {
            // Tasks finish without waking the reader (see `Signals`), so
            // look again in a while: that is when the idle clock, which
            // then starts from `last_done`, gets noticed.
            let t = Instant::now() + BUFFER_RELEASE;
            d = Some(d.map_or(t, |d| d.min(t)));
        }
        if live == 0 && self.buf.is_empty() {
            let mut t = self.idle_since + self.engine.config.idle_timeout;
            if self.buf.capacity() > 0 {
                t = t.min(self.idle_since + BUFFER_RELEASE);
            }
            d = Some(d.map_or(t, |d| d.min(t)));
        }
        d
    }

    async fn run_inner(&mut self) -> Stop {
        // The futures the loop waits on are made once and reused: building
        // and dropping them on every pass (cancellation tokens, a timer
        // registration) was a measurable share of a keep-alive request.
        let signals = self.signals.clone();
        let shutdown = self.engine.shutdown.clone().cancelled_owned();
        let shutdown_waker = std::task::Waker::from(signals.clone());
        let far = || Instant::now() + Duration::from_secs(86400);
        let mut armed = far();
        let sleep = tokio::time::sleep_until(armed.into());
        tokio::pin!(shutdown, sleep);
        // The first poll registers the waker (or finds shutdown begun).
        signals.raise(SHUTDOWN);
        loop {
            loop {
                match record::decode(&mut self.buf) {
                    Ok(Some(rec)) => {
                        // Records are handled synchronously; only what
                        // must wait (a reply to queue, body data to pass
                        // on) is awaited, and only when there is some. The
                        // handlers were async, and each record then built
                        // and moved a future the size of the largest of
                        // them (about 1 KiB of memcpy a request).
                        let step = match self.on_record(rec) {
                            Ok(Step::Done) => Ok(()),
                            Ok(Step::Reply(reply)) => self.reply(reply).await,
                            Ok(Step::Feed(feed)) => self.feed(feed).await,
                            Err(stop) => Err(stop),
                        };
                        if let Err(stop) = step {
                            return stop;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Stop::Protocol(e.to_string()),
                }
            }
            self.partial_since = if self.buf.is_empty() {
                None
            } else {
                self.partial_since.or(Some(Instant::now()))
            };
            self.reap();
            let live = self.live();
            if live == 0 {
                // The idle clock starts when the last response was done.
                if let Some(t) = signals.last_done() {
                    self.idle_since = self.idle_since.max(t);
                }
            }
            if self.shutting_down && live == 0 && self.buf.is_empty() && self.answered_in_drain {
                return Stop::Quiet("server is shutting down; the last response is out");
            }
            // Re-arm the timer only when something must happen sooner than
            // it is set for; a later deadline just means one spurious wake-up,
            // after which it is re-armed (so a busy connection touches the
            // timer wheel about once a second, not once per request).
            let deadline = self.deadline();
            if let Some(d) = deadline {
                if d < armed || sleep.is_elapsed() {
                    armed = d;
                    sleep.as_mut().reset(d.into());
                }
            } else if sleep.is_elapsed() {
                armed = far();
                sleep.as_mut().reset(armed.into());
            }
            let mask = if live > 0 {
                DEAD | CLOSING | SHUTDOWN | DONE
            } else {
                DEAD | CLOSING | SHUTDOWN
            };
            tokio::select! {
                biased;
                bits = signals.wait(mask) => {
                    if bits & DEAD != 0 {
                        return Stop::Quiet("write side failed");
                    }
                    if bits & CLOSING != 0 {
                        self.linger().await;
                        return Stop::Quiet("request without FCGI_KEEP_CONN finished");
                    }
                    if bits & SHUTDOWN != 0 {
                        signals.events.fetch_and(!SHUTDOWN, Ordering::AcqRel);
                        // (Never again once it has fired.)
                        let fired = !self.shutting_down && {
                            let mut cx = std::task::Context::from_waker(&shutdown_waker);
                            shutdown.as_mut().poll(&mut cx).is_ready()
                        };
                        if fired {
                            // From here on finishing tasks report (DONE);
                            // the ones that ended before are not live.
                            signals.events.fetch_or(DRAINING, Ordering::AcqRel);
                            self.reap();
                            if let Err(stop) = self.begin_drain(self.live()).await {
                                return stop;
                            }
                        }
                    }
                    if bits & DONE != 0 {
                        signals.events.fetch_and(!DONE, Ordering::AcqRel);
                        if self.shutting_down {
                            self.answered_in_drain = true;
                        }
                        if self.live() == 0 {
                            self.idle_since = Instant::now();
                        }
                    }
                }
                // Before the socket: a client that keeps sending (a
                // multiplexing one) must not starve the inline request.
                () = poll_inline(&mut self.inline), if self.inline.is_some() => {
                    // As for DONE above (this request's own DONE would
                    // come too late: `live` is 0 on the next pass).
                    if self.shutting_down {
                        self.answered_in_drain = true;
                    }
                }
                r = read_some(&mut self.io, &mut self.buf) => match r {
                    Ok(0) => return Stop::Eof,
                    Ok(n) => {
                        self.engine.stats.add_bytes_in(n as u64);
                        // Any input is activity: a request the reader
                        // answers itself (400, 431, 503, UNKNOWN_ROLE)
                        // never signals request_done.
                        self.read_at = Instant::now();
                        self.idle_since = self.read_at;
                    }
                    // A reset is something clients do, not a protocol error.
                    Err(e) if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) => return Stop::Eof,
                    Err(e) => return Stop::Protocol(format!("read failed: {e}")),
                },
                _ = &mut sleep, if deadline.is_some() => {
                    if self.live() != live || self.deadline().is_some_and(|d| d > Instant::now()) {
                        // A request ended since this pass began (tasks do
                        // not wake the reader), or the deadline moved:
                        // look again from the top.
                        continue;
                    }
                    if live == 0 && self.drain.is_some_and(|t| Instant::now() >= t) {
                        return Stop::Quiet("server is shutting down; drain grace over");
                    }
                    if live == 0
                        && self.buf.is_empty()
                        && self.buf.capacity() > 0
                        && Instant::now() < self.idle_since + self.engine.config.idle_timeout
                    {
                        // Idle for BUFFER_RELEASE: hold no buffer from now on.
                        self.buf = BytesMut::new();
                        continue;
                    }
                    return if live == 0 && self.buf.is_empty() {
                        Stop::Quiet("idle keep-alive timeout")
                    } else {
                        Stop::Protocol(format!(
                            "peer stalled for {:?} in the middle of a record or request \
                             ({} bytes of a partial record buffered)",
                            self.engine.config.stall_timeout,
                            self.buf.len()
                        ))
                    };
                }
            }
        }
    }

    /// Shutdown began. Requests in flight finish (their responses carry the
    /// marker, see `Output::finish`). An idle connection gets the marker on
    /// its own: an empty STDERR record for id 1, the id nginx always uses.
    /// nginx reads it either as "data on an idle cached connection" (and
    /// closes it without sending anything) or, if it has just sent a request
    /// here, as a harmless empty STDERR of that request, which we then answer
    /// with the marker. Either way nothing is lost; the grace bounds it.
    async fn begin_drain(&mut self, live: usize) -> Result<(), Stop> {
        self.shutting_down = true;
        self.drain = Some(Instant::now() + DRAIN_GRACE);
        if live == 0 && self.buf.is_empty() {
            let mut b = BytesMut::with_capacity(8);
            record::put_stream_end(&mut b, record::STDERR, 1);
            self.send(Out::One(b.freeze())).await?;
        }
        Ok(())
    }

    /// Reads and discards for a short while after our side has shut down.
    async fn linger(&mut self) {
        let mut scratch = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + LINGER;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, self.io.read(&mut scratch)).await {
            if n == 0 {
                break;
            }
        }
    }

    // `&mut self`: the reader is Send but not Sync (`inline` holds
    // handler futures), so no `&self` may live across an await.
    async fn send(&mut self, out: Out) -> Result<(), Stop> {
        self.out
            .send(out)
            .await
            .map_err(|_| Stop::Quiet("writer is gone"))
    }

    /// Sends what a record's handler answered.
    async fn reply(&mut self, reply: Reply) -> Result<(), Stop> {
        self.send(Out::One(reply.out)).await?;
        if reply.close {
            self.send(Out::Close).await?;
        }
        Ok(())
    }

    fn on_record(&mut self, rec: Record) -> Result<Step, Stop> {
        match rec.kind {
            record::BEGIN_REQUEST => self.on_begin(rec),
            record::PARAMS => self.on_params(rec),
            record::STDIN => self.on_stdin(rec),
            record::ABORT_REQUEST => self.on_abort(rec),
            record::GET_VALUES => Ok(self.on_get_values(rec)),
            record::DATA => Ok(Step::Done), // filter role only; a responder ignores it
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
                Ok(Step::Done)
            }
            other => {
                debug!(
                    kind = other,
                    id = rec.request_id,
                    "answering FCGI_UNKNOWN_TYPE"
                );
                let mut b = BytesMut::with_capacity(16);
                record::put_unknown_type(&mut b, other);
                Ok(Step::reply(b, false))
            }
        }
    }

    fn on_get_values(&mut self, rec: Record) -> Step {
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
        Step::reply(b, false)
    }

    fn on_begin(&mut self, rec: Record) -> Result<Step, Stop> {
        let id = rec.request_id;
        if id == 0 {
            return Err(Stop::Protocol("BEGIN_REQUEST with request id 0".into()));
        }
        let Some(begin) = BeginRequest::parse(&rec.content) else {
            return Err(Stop::Protocol(format!(
                "BEGIN_REQUEST for id {id} has a {}-byte body",
                rec.content.len()
            )));
        };
        self.reap();
        if self.find(id).is_some() {
            return Err(Stop::Protocol(format!(
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
            return Ok(Step::reply(b, !begin.keep_conn()));
        }
        let max = self.engine.config.max_requests_per_conn;
        // Requests over the cap still get an entry (to swallow their PARAMS
        // and answer 503), so bound how many: every record costs a scan of
        // the table, and 65535 BEGINs (1 MiB) would pin a core for ~40 s.
        // A client that honours FCGI_MAX_REQS never reaches this.
        let hard = max.saturating_mul(2).max(self.engine.config.max_requests);
        let live = self.live();
        if live >= hard {
            return Err(Stop::Protocol(format!(
                "BEGIN_REQUEST for id {id} with {live} requests already in flight on this \
                 connection (FCGI_MAX_REQS is {})",
                self.engine.config.max_requests
            )));
        }
        let reject = (live >= max).then_some(ServerError::ConnectionBusy { limit: max });
        self.reqs.push(Entry {
            id,
            keep_conn: begin.keep_conn(),
            shared: Arc::new(ReqShared::default()),
            phase: Phase::Params {
                buf: Gather::Empty,
                reject,
            },
            input_since: self.read_at,
        });
        Ok(Step::Done)
    }

    fn on_params(&mut self, rec: Record) -> Result<Step, Stop> {
        let Some(i) = self.find(rec.request_id) else {
            return Ok(Step::Done); // inactive id: ignored, as the spec says
        };
        let cap = self.engine.config.max_params_bytes;
        let entry = &mut self.reqs[i];
        let Phase::Params { buf, reject } = &mut entry.phase else {
            return Err(Stop::Protocol(format!(
                "PARAMS for request id {} after its PARAMS stream ended",
                rec.request_id
            )));
        };
        if rec.content.is_empty() {
            return Ok(self.params_complete(i));
        }
        if reject.is_none() {
            if buf.len() + rec.content.len() > cap {
                *reject = Some(ServerError::HeadTooLarge { limit: cap });
                // Keep nothing of a flood.
                *buf = Gather::Empty;
            } else {
                buf.push(rec.content);
            }
        }
        Ok(Step::Done)
    }

    fn params_complete(&mut self, i: usize) -> Step {
        let (buf, reject) = match &mut self.reqs[i].phase {
            Phase::Params { buf, reject } => (std::mem::take(buf), reject.take()),
            Phase::Running { .. } => return Step::Done,
        };
        if let Some(r) = reject {
            return self.answer(i, r, None);
        }
        // Likely to run inline (see `start`): then the request is usually
        // over within this pass of the reader, so its params (and the
        // request head, which shares their bytes) may stay in the read
        // buffer. Anything else gets a copy.
        let stdin_ends_next = empty_stdin_next(&self.buf, self.reqs[i].id);
        let inline_likely = self.inline.is_none() && self.live() == 1 && stdin_ends_next;
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
        let limit = self.engine.config.max_body_bytes;
        if mapped.content_length.is_some_and(|n| n > limit) {
            let r = ServerError::BodyTooLarge { limit };
            return self.answer(i, r, Some(&params));
        }
        if !self
            .engine
            .stats
            .try_begin_request(self.engine.config.max_requests)
        {
            self.engine.stats.refused_overloaded();
            let r = ServerError::Overloaded {
                limit: self.engine.config.max_requests,
            };
            return self.answer(i, r, Some(&params));
        }
        // Counted in flight from here; the task's drop ends it.
        self.start(i, params, mapped, stdin_ends_next);
        Step::Done
    }

    /// Starts the handler for entry `i`: as its own task, or inline.
    /// `stdin_ends_next`: the next record in the buffer is this request's
    /// empty STDIN (see `empty_stdin_next`).
    fn start(&mut self, i: usize, params: Params, mapped: request::Mapped, stdin_ends_next: bool) {
        let request_id = self.engine.stats.next_request_id();
        // A request known to have no body gets no channel. nginx declares
        // no CONTENT_LENGTH for a GET but sends its empty STDIN in the same
        // write as the PARAMS, so it is usually in the buffer already.
        // (A declared length with an empty STDIN is a mismatch, which the
        // channel reports to the handler as an error.)
        let bodiless = match mapped.content_length {
            Some(n) => n == 0,
            None => stdin_ends_next,
        };
        let (tx, body_shared, body) = if bodiless {
            (None, None, Body::empty())
        } else {
            let (tx, rx) = mpsc::channel(BODY_WINDOW);
            let shared = Arc::new(BodyShared::default());
            let body = Body::channel(rx, shared.clone(), mapped.content_length);
            (Some(tx), Some(shared), body)
        };
        let (parts, ()) = mapped.request.into_parts();
        let mut req = http::Request::from_parts(parts, body);
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
        });

        let inline = bodiless && self.inline.is_none() && self.live() == 1;
        let entry = &mut self.reqs[i];
        let task = RequestTask {
            id: entry.id,
            keep_conn: entry.keep_conn,
            head_only: req.method() == http::Method::HEAD,
            body: body_shared.clone(),
            signals: self.signals.clone(),
            log,
            status: 0,
        };
        let mut out = Output::new(entry.id, self.out.clone(), entry.shared.clone());
        if inline {
            out.direct = Some(self.signals.clone());
        }
        entry.phase = Phase::Running {
            tx,
            body: body_shared,
            received: 0,
            declared: mapped.content_length,
        };
        entry.input_since = self.read_at;
        // Boxed: the future is about 2 KiB, and tokio moves a spawned future
        // by value through several frames and then writes each stage of the
        // task over it; behind a pointer those are 8-byte moves (callgrind:
        // -1.9k of 32k instructions per request for one more allocation).
        // The service is called here and its future awaited by the task,
        // which then holds a pointer, not the request: as the task's
        // argument and again inside its handler future, the request made
        // the task's future 2 KiB, past the size glibc serves from its
        // thread cache. (A panic in the call itself comes out of the
        // future, see `App::call`, and is answered in the task.)
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
        if inline {
            self.inline = Some(fut);
        } else {
            tokio::spawn(fut);
        }
    }

    /// Answers entry `i` with an error response written by the server.
    fn answer(&mut self, i: usize, r: ServerError, params: Option<&Params>) -> Step {
        let entry = &self.reqs[i];
        let (id, keep_conn) = (entry.id, entry.keep_conn);
        let get = |n: &str| params.and_then(|p| p.get_str(n)).unwrap_or("-").to_string();
        let log = AccessLog {
            transport: Transport::FastCgi,
            method: get("REQUEST_METHOD"),
            uri: get("REQUEST_URI"),
            peer: get("REMOTE_ADDR"),
            request_id: self.engine.stats.next_request_id(),
            started: Some(Instant::now()),
        };
        let mut b = BytesMut::with_capacity(256);
        let body_len = encode_error(&mut b, id, &r);
        record::put_stream_end(&mut b, record::STDOUT, id);
        record::put_end_request(&mut b, id, 0, record::REQUEST_COMPLETE);
        if keep_conn && self.shutting_down {
            record::put_stream_end(&mut b, record::STDERR, id);
            self.answered_in_drain = true;
        }
        // Ended before queued: the peer may reuse the id once it reads this.
        entry.shared.ended.store(true, Ordering::Release);
        log.finish(
            &self.engine.stats,
            r.status().as_u16(),
            body_len,
            Some(&r.to_string()),
        );
        Step::reply(b, !keep_conn)
    }

    fn on_stdin(&mut self, rec: Record) -> Result<Step, Stop> {
        let id = rec.request_id;
        let Some(i) = self.find(id) else {
            return Ok(Step::Done); // inactive (e.g. already answered with an error)
        };
        let limit = self.engine.config.max_body_bytes;
        let entry = &mut self.reqs[i];
        let shared = entry.shared.clone();
        let Phase::Running {
            tx,
            body,
            received,
            declared,
            ..
        } = &mut entry.phase
        else {
            return Err(Stop::Protocol(format!(
                "STDIN for request id {id} before its PARAMS stream ended"
            )));
        };
        entry.input_since = self.read_at;
        if shared.input_done.load(Ordering::Acquire) {
            return Ok(Step::Done); // after the end of the stream, or after a failure
        }
        if rec.content.is_empty() {
            tx.take();
            shared.open_gate();
            return Ok(Step::Done);
        }
        *received += rec.content.len() as u64;
        if *received > limit {
            if let Some(body) = body {
                body.fail(BodyError::TooLarge { limit });
            }
            tx.take();
            shared.open_gate();
            return Ok(Step::Done);
        }
        if let Some(d) = *declared {
            if *received > d {
                if let Some(body) = body {
                    body.fail(BodyError::LengthMismatch {
                        declared: d,
                        received: *received,
                    });
                }
                tx.take();
                shared.open_gate();
                return Ok(Step::Done);
            }
        }
        let (Some(sender), Some(body)) = (tx.clone(), body.clone()) else {
            return Ok(Step::Done); // the handler dropped its body: discard
        };
        Ok(Step::Feed(Feed {
            id,
            sender,
            body,
            data: rec.content,
        }))
    }

    /// Passes body data to the handler, waiting (up to the stall timeout)
    /// while it has not read what it was given before.
    async fn feed(&mut self, feed: Feed) -> Result<(), Stop> {
        let Feed {
            id,
            sender,
            body,
            data,
        } = feed;
        let stall = self.engine.config.stall_timeout;
        let signals = self.signals.clone();
        let outcome = tokio::select! {
            r = sender.send(data) => Some(r.is_ok()),
            _ = tokio::time::sleep(stall) => None,
            _ = signals.wait(DEAD) => return Err(Stop::Quiet("write side failed")),
        };
        let still_wanted = match outcome {
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
        };
        if !still_wanted {
            if let Some(i) = self.find(id) {
                if let Phase::Running { tx, .. } = &mut self.reqs[i].phase {
                    tx.take();
                }
            }
        }
        Ok(())
    }

    fn on_abort(&mut self, rec: Record) -> Result<Step, Stop> {
        let id = rec.request_id;
        let Some(i) = self.find(id) else {
            return Ok(Step::Done);
        };
        let entry = &mut self.reqs[i];
        match &mut entry.phase {
            Phase::Params { .. } => {
                // No handler yet: the reader answers for it.
                let keep_conn = entry.keep_conn;
                entry.shared.ended.store(true, Ordering::Release);
                debug!(id, "request aborted before its params were complete");
                let mut b = BytesMut::with_capacity(16);
                record::put_end_request(&mut b, id, 1, record::REQUEST_COMPLETE);
                return Ok(Step::reply(b, !keep_conn));
            }
            Phase::Running { tx, body, .. } => {
                if let Some(body) = body {
                    body.fail(BodyError::Aborted);
                }
                tx.take();
                entry.shared.abandon();
            }
        }
        Ok(Step::Done)
    }
}

/// Waits for data and reads it, holding a buffer only once data is there.
async fn read_some<R: ConnRead>(io: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.is_empty() {
        io.readable().await?;
    }
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    io.read_buf(buf).await
}

/// Writes the server's own response to `err` as STDOUT records; returns the
/// body length.
fn encode_error(b: &mut BytesMut, id: u16, err: &ServerError) -> u64 {
    let (parts, text) = error_response(err).into_parts();
    let mut head = BytesMut::with_capacity(128);
    response::encode_head(&mut head, &parts, Some(text.len() as u64));
    head.extend_from_slice(&text);
    record::put_stream(b, record::STDOUT, id, &head);
    text.len() as u64
}

/// A request's output on its way to the writer.
struct Output {
    id: u16,
    tx: mpsc::Sender<Out>,
    shared: Arc<ReqShared>,
    /// Set for an inline request: its output may go to `Signals::direct`.
    direct: Option<Arc<Signals>>,
    buf: BytesMut,
    parts: Vec<Bytes>,
    parts_len: usize,
    opened: bool,
}

struct Gone;

impl Output {
    fn new(id: u16, tx: mpsc::Sender<Out>, shared: Arc<ReqShared>) -> Output {
        Output {
            id,
            tx,
            shared,
            direct: None,
            buf: BytesMut::new(),
            parts: Vec::new(),
            parts_len: 0,
            opened: false,
        }
    }

    fn buffered(&self) -> usize {
        self.buf.len() + self.parts_len
    }

    /// Drops everything not yet handed to the writer.
    fn discard(&mut self) {
        self.buf.clear();
        self.parts.clear();
        self.parts_len = 0;
    }

    /// Appends the CGI head as one STDOUT record, encoded in place (no
    /// intermediate buffer): the header is written once the length is known.
    fn head(&mut self, parts: &http::response::Parts, exact_len: Option<u64>) {
        // Room for the head, a small body and the closing records in one
        // allocation: growing from empty cost four reallocations a request.
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

    fn stdout(&mut self, data: Bytes) {
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

    async fn flush(&mut self) -> Result<(), Gone> {
        if !self.opened {
            self.shared.wait_gate().await;
            self.opened = true;
        }
        // The buffer is handed over whole, not split off: a split would
        // allocate a shared header for it, and only a streamed body reuses
        // the rest of its capacity (at 64 KiB a flush, one allocation is
        // nothing next to the copy).
        if let Some(signals) = &self.direct {
            if signals.is_set(DEAD) {
                return Err(Gone);
            }
            // Only while nothing of ours can still be in the queue (the
            // writer takes `direct` first, so order is kept).
            if self.tx.capacity() == self.tx.max_capacity()
                && ((self.parts.is_empty() && self.buf.is_empty())
                    || signals.push_direct(&mut self.parts, &mut self.buf))
            {
                self.parts_len = 0;
                return Ok(());
            }
        }
        let out = if self.parts.is_empty() {
            if self.buf.is_empty() {
                return Ok(());
            }
            Out::One(std::mem::take(&mut self.buf).freeze())
        } else {
            if !self.buf.is_empty() {
                self.parts.push(std::mem::take(&mut self.buf).freeze());
            }
            self.parts_len = 0;
            Out::Batch(std::mem::take(&mut self.parts))
        };
        queue(&self.tx, out).await
    }

    /// Ends STDOUT and the request. Waits for the gate first, then marks the
    /// request ended, then queues END_REQUEST: in that order the reader
    /// never frees the id while its STDIN is still wanted, and the peer
    /// never sees END_REQUEST before the id is free.
    /// With `farewell` (shutdown has begun on a kept-alive connection) an
    /// empty STDERR record follows END_REQUEST: nginx then does not put the
    /// connection back into its keepalive cache.
    async fn finish(
        &mut self,
        signals: &Signals,
        app_status: u32,
        stdout_end: bool,
        close: bool,
        farewell: bool,
    ) {
        if !self.opened {
            self.shared.wait_gate().await;
            self.opened = true;
        }
        if stdout_end {
            record::put_stream_end(&mut self.buf, record::STDOUT, self.id);
        }
        record::put_end_request(&mut self.buf, self.id, app_status, record::REQUEST_COMPLETE);
        if farewell {
            record::put_stream_end(&mut self.buf, record::STDERR, self.id);
        }
        // Before `ended`: a reader that sees the request ended must also
        // see when, or it would date the connection's idleness too early.
        signals.mark_done();
        self.shared.ended.store(true, Ordering::Release);
        let _ = self.flush().await;
        if close {
            let _ = queue(&self.tx, Out::Close).await;
        }
    }
}

/// Queues `out` for the writer: at once when there is room, as there
/// nearly always is; else it waits, in a boxed future. Awaited inline, the
/// channel's send future was a few hundred bytes of every request task's
/// future, which it pushed past the size glibc serves from its per-thread
/// cache.
async fn queue(tx: &mpsc::Sender<Out>, out: Out) -> Result<(), Gone> {
    match tx.try_send(out) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(Gone),
        Err(mpsc::error::TrySendError::Full(out)) => Box::pin(tx.send(out)).await.map_err(|_| Gone),
    }
}

enum Outcome {
    Done,
    BodyFailed(String),
    Gone,
}

/// One request's handler and its output. Reaches the engine through the
/// connection's `Signals`: a clone of the server-wide `Arc<Engine>` per
/// request was a reference count both cores kept writing.
struct RequestTask {
    id: u16,
    keep_conn: bool,
    head_only: bool,
    body: Option<Arc<BodyShared>>,
    signals: Arc<Signals>,
    log: AccessLog,
    status: u16,
}

impl Drop for RequestTask {
    /// The request was counted in flight before the task was made (see
    /// `Stats::try_begin_request`); however it ends, it ends here.
    fn drop(&mut self) {
        self.signals.engine.stats.end_request();
    }
}

impl RequestTask {
    /// Runs the handler and writes its response. Not an `async fn`: one
    /// stores its arguments in the future twice (as arguments and again as
    /// the `mut` bindings), which here was 232 of its bytes.
    fn run(self, call: BoxFuture, out: Output) -> impl Future<Output = ()> + Send {
        let mut task = self;
        let mut out = out;
        async move {
            let mut bytes_out = 0u64;
            let shared = out.shared.clone();
            let result = {
                let respond =
                    AssertUnwindSafe(task.respond(call, &mut out, &mut bytes_out)).catch_unwind();
                tokio::select! {
                    biased;
                    () = shared.wait_for(&shared.cancelled) => None,
                    r = respond => Some(r),
                }
            };
            let close = !task.keep_conn;
            let farewell = task.keep_conn && task.signals.is_set(DRAINING);
            let note: Option<String> = match result {
                Some(Ok(Outcome::Done)) => {
                    out.finish(&task.signals, 0, true, close, farewell).await;
                    None
                }
                Some(Ok(Outcome::BodyFailed(e))) => {
                    out.finish(&task.signals, 1, true, close, farewell).await;
                    Some(format!("response body failed after the head was sent: {e}"))
                }
                Some(Ok(Outcome::Gone)) => Some("connection closed while responding".into()),
                Some(Err(panic)) => {
                    let msg = panic_message(&*panic);
                    error!(
                        request_id = task.log.request_id,
                        uri = %task.log.uri,
                        "handler panicked: {msg}"
                    );
                    if task.status == 0 {
                        out.discard();
                        bytes_out = encode_error(&mut out.buf, task.id, &ServerError::AppFailed);
                        task.status = 500;
                    }
                    out.finish(&task.signals, 1, true, close, farewell).await;
                    Some(format!("handler panicked: {msg}"))
                }
                None => {
                    // Aborted by the web server, or the connection is gone.
                    out.discard();
                    out.finish(&task.signals, 1, false, close, farewell).await;
                    if task.status == 0 {
                        task.status = 499;
                    }
                    Some("request aborted".into())
                }
            };
            if task.signals.is_set(DRAINING) {
                task.signals.raise(DONE);
            }
            task.log.finish(
                &task.signals.engine.stats,
                if task.status == 0 { 499 } else { task.status },
                bytes_out,
                note.as_deref(),
            );
        }
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
            let limit = self.signals.engine.config.max_body_bytes;
            error_response_boxed(&ServerError::BodyTooLarge { limit })
        } else {
            resp
        };
        let (parts, body) = resp.into_parts();
        self.status = parts.status.as_u16();
        out.head(&parts, body.size_hint().exact());
        body
    }

    async fn respond(&mut self, call: BoxFuture, out: &mut Output, bytes_out: &mut u64) -> Outcome {
        // The head is written in a plain function: as locals here, the
        // response head (a HeaderMap and more) was kept in the task's future
        // across the awaits below.
        let mut body = self.head(call.await, out);
        if self.head_only {
            return match out.flush().await {
                Ok(()) => Outcome::Done,
                Err(Gone) => Outcome::Gone,
            };
        }
        loop {
            // Take every frame that is ready now; hand the batch to the
            // writer only when the body would wait (or the batch is big).
            let frame = match body.frame().now_or_never() {
                Some(f) => f,
                None => {
                    if out.flush().await.is_err() {
                        return Outcome::Gone;
                    }
                    body.frame().await
                }
            };
            match frame {
                None => {
                    // Wait for the gate here, inside the cancellable part:
                    // a response held for its body must still yield to an
                    // ABORT_REQUEST (finish() would send it regardless).
                    if !out.opened {
                        out.shared.wait_gate().await;
                        out.opened = true;
                    }
                    return Outcome::Done;
                }
                Some(Err(e)) => return Outcome::BodyFailed(e.to_string()),
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        *bytes_out += data.remaining() as u64;
                        out.stdout(data.copy_to_bytes(data.remaining()));
                        if out.buffered() >= FLUSH_AT && out.flush().await.is_err() {
                            return Outcome::Gone;
                        }
                    }
                }
            }
        }
    }
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

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Out>,
    engine: Arc<Engine>,
    signals: Arc<Signals>,
) {
    let stall = engine.config.stall_timeout;
    // Allocated on first use: an idle connection holds no batch.
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let mut close = false;
        let mut size = 0usize;
        // `direct` first: see `Signals::direct`.
        let first = std::future::poll_fn(|cx| {
            if signals.take_direct(&mut batch, &mut size) {
                return std::task::Poll::Ready(Some(None));
            }
            rx.poll_recv(cx).map(|m| m.map(Some))
        })
        .await;
        match first {
            None => return,
            Some(Some(m)) => take(m, &mut batch, &mut size, &mut close),
            Some(None) => {}
        }
        while !close && size < WRITE_BATCH {
            signals.take_direct(&mut batch, &mut size);
            match rx.try_recv() {
                Ok(m) => take(m, &mut batch, &mut size, &mut close),
                Err(_) => break,
            }
        }
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
                    signals.raise(DEAD);
                    return;
                }
                Err(_) => {
                    warn!("peer left our output unread for {stall:?}; closing connection");
                    signals.raise(DEAD);
                    return;
                }
            }
        }
        batch.clear();
        if close {
            let _ = tokio::time::timeout(LINGER, w.shutdown()).await;
            signals.raise(CLOSING);
            return;
        }
    }
}

fn take(m: Out, batch: &mut Vec<Bytes>, size: &mut usize, close: &mut bool) {
    match m {
        Out::One(b) => {
            *size += b.len();
            batch.push(b);
        }
        Out::Batch(v) => {
            for b in v {
                *size += b.len();
                batch.push(b);
            }
        }
        Out::Close => *close = true,
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
                .take(64)
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

    #[test]
    fn empty_stdin_next_recognises_only_the_end_of_that_requests_body() {
        let mut b = BytesMut::new();
        record::put_stream_end(&mut b, record::STDIN, 7);
        assert!(empty_stdin_next(&b, 7));
        assert!(!empty_stdin_next(&b, 8), "another request's");
        assert!(!empty_stdin_next(&b[..7], 7), "a partial header");
        let mut data = BytesMut::new();
        record::put_record(&mut data, record::STDIN, 7, b"x");
        assert!(!empty_stdin_next(&data, 7), "a body follows");
        let mut other = BytesMut::new();
        record::put_stream_end(&mut other, record::PARAMS, 7);
        assert!(!empty_stdin_next(&other, 7), "not STDIN");
        let mut v2 = b.to_vec();
        v2[0] = 2;
        assert!(!empty_stdin_next(&v2, 7), "not version 1");
    }
}
