//! `myflask::Body`: the request body every service receives, whatever the
//! transport.
//!
//! Over FastCGI the body is fed by the connection's reader, one STDIN record
//! at a time, through a small bounded channel: the channel is the per-request
//! backpressure (a handler that reads slowly makes the reader wait, so the
//! server never holds more than a few records of any one body). Over HTTP it
//! wraps hyper's `Incoming`. Both carry the configured size limit, so a
//! handler sees the same error either way.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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
/// feeder records why it stopped before dropping its sender.
#[derive(Debug, Default)]
pub(crate) struct BodyShared {
    error: Mutex<Option<BodyError>>,
}

impl BodyShared {
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
    },
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
            },
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
            } => {
                if *done {
                    return Poll::Ready(None);
                }
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(None) => {
                        *done = true;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        *done = true;
                        Poll::Ready(Some(Err(BodyError::Http(e.to_string()))))
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            *received += d.len() as u64;
                            if *received > *limit {
                                *done = true;
                                return Poll::Ready(Some(Err(BodyError::TooLarge {
                                    limit: *limit,
                                })));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                }
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
