//! `myflask::Body`: the request body every service receives, whatever the
//! transport.
//!
//! Over FastCGI the body is fed by the connection's reader, one STDIN record
//! at a time, through a small bounded channel: the channel is the per-request
//! backpressure (a handler that reads slowly makes the reader wait, so the
//! server never holds more than a few records of any one body). Over HTTP it
//! wraps hyper's `Incoming`. Both carry the configured size limit, so a
//! handler sees the same error either way.
//!
//! When the in-flight registry is on, a body tells its request's
//! [`Progress`] when it is over (the phase "reading body" ends): over
//! FastCGI the connection's demultiplexer does, at the end of STDIN; over
//! HTTP the body itself, at its end or when the app drops it.

use crate::inflight::Progress;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Why a request body ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The body grew past the server's `--max-body-bytes`.
    TooLarge { limit: u64 },
    /// The web server aborted the request (FCGI_ABORT_REQUEST).
    Aborted,
    /// The connection closed before the body was complete.
    ConnectionClosed,
    /// The stream ended with a length other than the declared CONTENT_LENGTH.
    LengthMismatch { declared: u64, received: u64 },
    /// The HTTP transport failed (text from hyper).
    Http(String),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge { limit } => {
                write!(f, "request body exceeds the limit of {limit} bytes")
            }
            BodyError::Aborted => f.write_str("request aborted by the web server"),
            BodyError::ConnectionClosed => {
                f.write_str("connection closed before the request body was complete")
            }
            BodyError::LengthMismatch { declared, received } => write!(
                f,
                "request body has {received} bytes but CONTENT_LENGTH declared {declared}"
            ),
            BodyError::Http(e) => write!(f, "http body error: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// Shared between a channel body and the connection that feeds it: the
/// feeder records why it stopped before dropping its sender, and says when
/// the body has all arrived.
#[derive(Debug, Default)]
pub(crate) struct BodyShared {
    error: Mutex<Option<BodyError>>,
    /// The request's progress, when the in-flight registry is on.
    progress: OnceLock<Progress>,
    /// No more of the body will arrive (see `arrived`).
    arrived: AtomicBool,
}

impl BodyShared {
    /// No more of the body will arrive: its end came, or the rest will be
    /// dropped (over the limit).
    pub(crate) fn arrived(&self) {
        self.arrived.store(true, Ordering::Relaxed);
        // With the fence in `watch`: whichever of the two runs second sees
        // what the first one stored.
        fence(Ordering::SeqCst);
        if let Some(p) = self.progress.get() {
            p.body_done();
        }
    }

    fn watch(&self, p: &Progress) {
        let _ = self.progress.set(p.clone());
        fence(Ordering::SeqCst);
        if self.arrived.load(Ordering::Relaxed) {
            p.body_done();
        }
    }

    pub(crate) fn fail(&self, e: BodyError) {
        if let Ok(mut g) = self.error.lock() {
            g.get_or_insert(e);
        }
    }

    /// The recorded failure (left in place: the server reads it again to
    /// turn an over-limit body into a 413 whatever the handler did).
    fn get(&self) -> Option<BodyError> {
        self.error.lock().ok().and_then(|g| g.clone())
    }

    pub(crate) fn failed_too_large(&self) -> bool {
        self.error
            .lock()
            .map(|g| matches!(*g, Some(BodyError::TooLarge { .. })))
            .unwrap_or(false)
    }
}

/// The request body handed to services.
pub struct Body {
    kind: Kind,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Channel {
        rx: mpsc::Receiver<Bytes>,
        shared: Arc<BodyShared>,
        declared: Option<u64>,
        received: u64,
        done: bool,
    },
    Incoming {
        inner: hyper::body::Incoming,
        limit: u64,
        received: u64,
        done: bool,
        end: EndWatch,
    },
}

/// Tells an HTTP request's progress that its body is over: at its end, on
/// an error, or when the app drops it (hyper then reads no more of it).
#[derive(Default)]
struct EndWatch(Option<Progress>);

impl EndWatch {
    fn over(&mut self) {
        if let Some(p) = self.0.take() {
            p.body_done();
        }
    }
}

impl Drop for EndWatch {
    fn drop(&mut self) {
        self.over();
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Channel { .. } => "fastcgi-stdin",
            Kind::Incoming { .. } => "http",
        };
        f.debug_struct("Body").field("kind", &kind).finish()
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body {
            kind: Kind::Full(Some(b)),
        }
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::from(Bytes::from_static(s.as_bytes()))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::from(Bytes::from(v))
    }
}

impl Body {
    pub fn empty() -> Body {
        Body { kind: Kind::Empty }
    }

    pub(crate) fn channel(
        rx: mpsc::Receiver<Bytes>,
        shared: Arc<BodyShared>,
        declared: Option<u64>,
    ) -> Body {
        Body {
            kind: Kind::Channel {
                rx,
                shared,
                declared,
                received: 0,
                done: false,
            },
        }
    }

    pub(crate) fn incoming(inner: hyper::body::Incoming, limit: u64) -> Body {
        Body {
            kind: Kind::Incoming {
                inner,
                limit,
                received: 0,
                done: false,
                end: EndWatch::default(),
            },
        }
    }

    /// Reports the end of this body to `p` (the in-flight registry's
    /// phase): at once for a body that is already whole.
    pub(crate) fn report_end(&mut self, p: &Progress) {
        match &mut self.kind {
            Kind::Empty | Kind::Full(_) => p.body_done(),
            Kind::Channel { shared, .. } => shared.watch(p),
            Kind::Incoming {
                inner, done, end, ..
            } => {
                if *done || inner.is_end_stream() {
                    p.body_done();
                } else {
                    end.0 = Some(p.clone());
                }
            }
        }
    }
}

/// The next frame of an HTTP body, counted against `limit`.
fn poll_incoming(
    inner: Pin<&mut hyper::body::Incoming>,
    cx: &mut Context<'_>,
    limit: u64,
    received: &mut u64,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    match inner.poll_frame(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Http(e.to_string())))),
        Poll::Ready(Some(Ok(frame))) => {
            if let Some(d) = frame.data_ref() {
                *received += d.len() as u64;
                if *received > limit {
                    return Poll::Ready(Some(Err(BodyError::TooLarge { limit })));
                }
            }
            Poll::Ready(Some(Ok(frame)))
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Channel {
                rx,
                shared,
                declared,
                received,
                done,
            } => {
                if *done {
                    return Poll::Ready(None);
                }
                match rx.poll_recv(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(chunk)) => {
                        *received += chunk.len() as u64;
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                    Poll::Ready(None) => {
                        *done = true;
                        if let Some(e) = shared.get() {
                            return Poll::Ready(Some(Err(e)));
                        }
                        if let Some(d) = *declared {
                            if d != *received {
                                return Poll::Ready(Some(Err(BodyError::LengthMismatch {
                                    declared: d,
                                    received: *received,
                                })));
                            }
                        }
                        Poll::Ready(None)
                    }
                }
            }
            Kind::Incoming {
                inner,
                limit,
                received,
                done,
                end,
            } => {
                if *done {
                    return Poll::Ready(None);
                }
                let r = poll_incoming(Pin::new(inner), cx, *limit, received);
                *done = matches!(r, Poll::Ready(None | Some(Err(_))));
                if *done || inner.is_end_stream() {
                    end.over();
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Kind::Channel { done, .. } => *done,
            Kind::Incoming { inner, done, .. } => *done || inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Channel {
                declared, received, ..
            } => match declared {
                Some(d) => SizeHint::with_exact(d.saturating_sub(*received)),
                None => SizeHint::default(),
            },
            Kind::Incoming { inner, .. } => inner.size_hint(),
        }
    }
}
