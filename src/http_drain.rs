//! How an HTTP/1.1 connection ends when the server shuts down (SIGTERM,
//! or the old process of a reload), without losing a request.
//!
//! HTTP/1.1 gives a server no way to say "send nothing more" on an idle
//! keep-alive connection: closing it races the client, and nginx, which
//! may write a request into it at that very moment, then fails with
//! `writev() failed (32: Broken pipe)` and retries only idempotent
//! requests, so a POST becomes a 502. The present rule, per connection:
//! - once shutdown has begun, every response says `Connection: close`,
//!   and the connection closes right after it (nginx then opens a new
//!   connection, which the successor or the next process accepts);
//! - a connection is closed by us only when it has been idle — no request
//!   in progress, no response being sent — for [`GRACE`] since shutdown
//!   began and since its last response. A connection nginx still uses
//!   therefore ends with a `Connection: close` answer, never under a
//!   request; one left in nginx's keep-alive cache for the whole grace is
//!   the least recently used one there (nginx reuses the most recent) and
//!   is closed last.

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::server::conn::http1::Connection;
use hyper::service::HttpService;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a connection must stay idle after shutdown began before we
/// close it (the same grace as the FastCGI side's).
pub const GRACE: Duration = Duration::from_secs(2);
/// How often a draining connection checks whether it has become idle.
const CHECK: Duration = Duration::from_millis(50);

/// The drain state of one connection, shared with its requests.
#[derive(Clone)]
pub(crate) struct Drain {
    shutdown: CancellationToken,
    inner: Arc<Inner>,
}

struct Inner {
    /// Requests received and not yet fully answered.
    busy: AtomicUsize,
    /// When the last response finished, in ms since `epoch`.
    last_done_ms: AtomicU64,
    epoch: OnceLock<Instant>,
}

impl Drain {
    pub(crate) fn new(shutdown: CancellationToken) -> Drain {
        let inner = Inner {
            busy: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            epoch: OnceLock::new(),
        };
        inner.epoch.get_or_init(Instant::now);
        Drain {
            shutdown,
            inner: Arc::new(inner),
        }
    }

    /// Counts a request from its arrival until its response is sent.
    pub(crate) fn busy(&self) -> Busy {
        self.inner.busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            drain: Some(self.clone()),
        }
    }

    fn now_ms(&self) -> u64 {
        let epoch = *self.inner.epoch.get_or_init(Instant::now);
        epoch.elapsed().as_millis() as u64
    }

    /// How long the connection has been idle, or `None` while busy.
    fn idle_for(&self) -> Option<Duration> {
        if self.inner.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.inner.last_done_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(self.now_ms().saturating_sub(last)))
    }

    /// After shutdown began: serves `conn` until it has been idle for
    /// [`GRACE`] (counted from now at the earliest), then closes it.
    pub(crate) async fn finish<I, S, B>(&self, mut conn: Pin<&mut Connection<I, S>>)
    where
        S: HttpService<Incoming, ResBody = B>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        I: Read + Write + Unpin,
        B: http_body::Body + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let began = Instant::now();
        loop {
            let quiet = self.idle_for().map(|d| d.min(began.elapsed()));
            if quiet.is_some_and(|d| d >= GRACE) {
                break;
            }
            let step = quiet.map_or(CHECK, |d| (GRACE - d).min(CHECK * 4));
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!("http connection ended while draining: {e}");
                    }
                    return;
                }
                _ = tokio::time::sleep(step) => {}
            }
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// Held by a request until its response body is done (or dropped).
pub(crate) struct Busy {
    drain: Option<Drain>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(d) = self.drain.take() {
            d.inner.last_done_ms.store(d.now_ms(), Ordering::Release);
            d.inner.busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Busy {
    /// Ties this guard to `resp`'s body, and adds `Connection: close` if
    /// shutdown has begun.
    pub(crate) fn attach<B>(self, resp: Response<B>) -> Response<Tracked<B>> {
        let closing = self
            .drain
            .as_ref()
            .is_some_and(|d| d.shutdown.is_cancelled());
        let mut resp = resp.map(|inner| Tracked { inner, _busy: self });
        if closing {
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

/// A response body that keeps its request counted as busy.
pub(crate) struct Tracked<B> {
    inner: B,
    _busy: Busy,
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
