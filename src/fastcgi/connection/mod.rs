//! One FastCGI connection: reads records, demultiplexes them into requests,
//! runs each request's handler, and writes the responses. This file holds
//! the data flow, the configuration every connection shares, and `serve()`.
//!
//! Shape (data flows one way):
//!
//! ```text
//!  socket ──read──> Reader ──records──> Demux ──STDIN chunks──> Body (per request, bounded)
//!                     │                   └─admitted request─┐
//!                     │          dispatch: spawn ──> request task ──> service ──> response
//!                     │                    inline ─> request (bodiless, alone) ──┐   │
//!                     │                                           inline output  │   │ records
//!                     └──the server's own answers──┐                             v   v
//!                                   writer queue (bounded) ───────────────> Writer ──> socket
//! ```
//!
//! Files, each one idea (the shape of hyper's `proto/h1`: buffering and I/O,
//! a state machine that knows nothing of the service, the service calls):
//! - `reader`: socket reads, timers, drain on shutdown; hands each record
//!   to the demultiplexer and does what it asks.
//! - `bufpool`: spare read buffers per worker thread.
//! - `demux`: the synchronous demultiplexer: records in, actions out
//!   (begin, params, stdin, abort, get-values), admission caps, the
//!   per-request input state. No I/O, no service.
//! - `dispatch`: turns an admitted request into an `http::Request`, calls
//!   the service, and runs the request task that writes its response.
//! - `output`: one request's response on its way to the writer (records,
//!   the gate that holds it until its body is read).
//! - `writer`: the one writer of the connection (vectored batches).
//! - `linger`: the lingering close after a response without KEEP_CONN,
//!   off the connection's task (one sweeper per listener).
//! - `events`: the connection's event bits and the reader's wake-ups.
//! - `link`: the flags a request task and the reader share.
//!
//! Rules of the engine:
//! - The reader and the writer are one task (joined, reader first). A
//!   request without a body that is alone on its connection, which is every
//!   GET nginx sends, runs inside that task too, as hyper runs an HTTP/1
//!   request; its output reaches the writer without a wake-up (`outbox`).
//!   Other requests get a task each, so multiplexed ones run in parallel.
//! - The reader owns the per-request state table (in `Demux`). It never
//!   waits on a handler except when a body's window is full: that is the
//!   backpressure that keeps a slow handler from making the server read
//!   unbounded data.
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

mod bufpool;
mod demux;
mod dispatch;
mod events;
pub(crate) mod linger;
mod link;
mod outbox;
mod output;
mod reader;
mod writer;

use crate::ConnMeta;
use crate::service::App;
use crate::stats::Stats;
use events::ConnEvents;
use futures_util::FutureExt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

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

/// What every connection of the server shares: the service, the limits,
/// the statistics and the shutdown signal.
pub struct Engine {
    pub app: App,
    pub config: ConnConfig,
    pub stats: Arc<Stats>,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
}

/// The read half of a connection. `poll_read_ready` lets an idle
/// connection wait without holding a read buffer (10,000 idle connections
/// cost no buffers). It polls the socket's own read-readiness slot, the one
/// `poll_read` uses, not `readable()`'s waiter list: the reader is the only
/// one waiting, and the list's lock and entry cost about 1,000 instructions
/// per wait (one per request).
pub trait ConnRead: AsyncRead + Unpin + Send + Sync + 'static {
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ConnRead for tokio::net::unix::OwnedReadHalf {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_ref().poll_read_ready(cx)
    }
}

impl ConnRead for tokio::net::tcp::OwnedReadHalf {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_ref().poll_read_ready(cx)
    }
}

impl<T: AsyncRead + Send + Sync + 'static> ConnRead for tokio::io::ReadHalf<T> {}

impl ConnRead for tokio::io::DuplexStream {}

/// Puts a connection's two halves back together as one socket out of the
/// runtime, for its lingering close (`linger`). Streams that are no
/// socket (in-memory ones, in tests) just close.
pub trait Reunite<W>: Sized {
    fn reunite_socket(self, _w: W) -> Option<linger::Socket> {
        None
    }
}

impl Reunite<tokio::net::unix::OwnedWriteHalf> for tokio::net::unix::OwnedReadHalf {
    fn reunite_socket(self, w: tokio::net::unix::OwnedWriteHalf) -> Option<linger::Socket> {
        // `into_std` takes the socket out of the poller: a lingering socket
        // wakes nobody.
        let s = self.reunite(w).ok()?.into_std().ok()?;
        Some(linger::Socket::Unix(s))
    }
}

impl Reunite<tokio::net::tcp::OwnedWriteHalf> for tokio::net::tcp::OwnedReadHalf {
    fn reunite_socket(self, w: tokio::net::tcp::OwnedWriteHalf) -> Option<linger::Socket> {
        let s = self.reunite(w).ok()?.into_std().ok()?;
        Some(linger::Socket::Tcp(s))
    }
}

impl<T> Reunite<tokio::io::WriteHalf<T>> for tokio::io::ReadHalf<T> {}

impl Reunite<tokio::io::DuplexStream> for tokio::io::DuplexStream {}

/// Serves one connection until it closes. Returns its socket if it is to
/// linger (after a response without KEEP_CONN): the caller hands it to
/// its listener's `linger::Lingerer`.
///
/// Not an `async fn`: the returned future is the join of the two halves
/// and nothing else, no copies of the arguments beside them. Its size is
/// what each accepted connection allocates (the accept loop boxes it), and
/// under 1 KiB that allocation comes from the allocator's per-thread cache
/// (glibc's tcache ends at 1,032 bytes); above it, every fresh connection
/// pays the allocator's slow path. A unit test keeps it there.
pub fn serve<R, W>(
    reader: R,
    writer: W,
    engine: Arc<Engine>,
    meta: ConnMeta,
) -> impl Future<Output = Option<linger::Socket>> + Send
where
    R: ConnRead + Reunite<W>,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let events = Arc::new(ConnEvents::new(engine.clone()));
    let reader = reader::Reader::new(reader, engine.clone(), meta, events.clone());
    // One task for both halves. The reader goes first on every wake-up, so
    // output that an inline request (see `dispatch`) produced is written in
    // the same pass.
    futures_util::future::join(reader.run(), writer::run(writer, engine, events)).map(|halves| {
        match halves {
            (Some(r), Some(w)) => r.reunite_socket(w),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc's per-thread cache serves allocations up to this many bytes.
    const TCACHE_MAX: usize = 1032;
    /// What the accept loop wraps around the future (the connection's slot
    /// and statistics guard), with room to spare.
    const ACCEPT_WRAP: usize = 16;

    #[tokio::test]
    async fn a_connection_future_fits_the_allocators_thread_cache() {
        let meta = || ConnMeta {
            listener: Arc::from("test"),
            inherited: false,
        };
        let (unix, _peer) = tokio::net::UnixStream::pair().expect("pair");
        let (r, w) = unix.into_split();
        let unix = std::mem::size_of_val(&serve(r, w, demux::tests::engine(), meta()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (r, w) = tcp.into_split();
        let tcp = std::mem::size_of_val(&serve(r, w, demux::tests::engine(), meta()));
        for (kind, size) in [("unix", unix), ("tcp", tcp)] {
            assert!(
                size + ACCEPT_WRAP <= TCACHE_MAX,
                "{kind}: the connection's future is {size} bytes; boxed at accept with \
                 its guards it no longer comes from the allocator's thread cache"
            );
        }
    }
}
