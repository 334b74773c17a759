//! The same service over plain HTTP/1.1 (hyper): for development, health
//! checks, and nginx `proxy_pass` setups.
//!
//! The request body is wrapped in [`Body`] with the same size limit as over
//! FastCGI; the server's own answers (413, 503, and the 500 for a handler
//! that panics or fails) come from [`crate::service::error_response`], as
//! over FastCGI; and each request produces the same access-log event
//! (logged when hyper is done with the response body, so bytes and
//! duration cover the whole response). This file knows nothing of FastCGI:
//! the server hands it an `HttpShared`.

use crate::access::AccessLog;
use crate::body::Body;
use crate::http_drain::Drain;
use crate::service::{App, ResponseBody, ServerError, box_body, error_response_boxed};
use crate::stats::{RequestGuard, Stats};
use crate::{ConnMeta, RequestInfo, Transport};
use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// What every HTTP connection shares: the app, the limits that apply over
/// HTTP, the live figures and the shutdown signal.
pub(crate) struct HttpShared {
    pub app: App,
    /// `--max-body-bytes`: a larger declared body is a 413, a larger
    /// streamed one fails the handler's body.
    pub max_body_bytes: u64,
    /// `--max-requests` (server-wide, shared with FastCGI through `stats`).
    pub max_requests: usize,
    /// `--stall-timeout`: how long a request head may take to arrive.
    pub header_timeout: Duration,
    pub stats: Arc<Stats>,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
}

/// Serves one HTTP connection until it closes or the server shuts down.
pub(crate) async fn serve<IO>(io: IO, peer: Option<String>, shared: Arc<HttpShared>, meta: ConnMeta)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = shared.shutdown.clone();
    let header_timeout = shared.header_timeout;
    let drain = Drain::new(shutdown.clone());
    let svc_drain = drain.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let busy = svc_drain.busy();
        handle(req, shared.clone(), meta.clone(), peer.clone())
            .map(move |r| Ok::<_, Infallible>(busy.attach(r)))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("http connection ended: {e}");
            }
        }
        _ = shutdown.cancelled() => drain.finish(conn).await,
    }
}

/// Answers one request: the server's own refusal, or the app's response.
async fn handle(
    req: Request<Incoming>,
    shared: Arc<HttpShared>,
    meta: ConnMeta,
    peer: Option<String>,
) -> Response<LoggedBody> {
    let request_id = shared.stats.next_request_id();
    let log = AccessLog::new(
        Transport::Http,
        req.method(),
        req.uri(),
        peer.as_deref(),
        request_id,
    );
    let guard = match admit(&req, &shared) {
        Ok(guard) => guard,
        Err(refusal) => return wrap(error_response_boxed(&refusal), log, shared, None),
    };
    let (parts, body) = req.into_parts();
    let mut req = Request::from_parts(parts, Body::incoming(body, shared.max_body_bytes));
    req.extensions_mut().insert(RequestInfo {
        transport: Transport::Http,
        listener: meta.listener.clone(),
        inherited: meta.inherited,
        request_id,
        peer,
        scheme: http::uri::Scheme::HTTP,
        params: None,
        mount_prefix: None,
        trace: None,
    });
    let result = AssertUnwindSafe(shared.app.call(req)).catch_unwind().await;
    wrap(
        app_response(result, request_id, &log.uri),
        log,
        shared,
        Some(guard),
    )
}

/// Counts the request in flight, or refuses it: a declared body over
/// `--max-body-bytes` (413), or `--max-requests` already in flight (503).
fn admit(req: &Request<Incoming>, shared: &HttpShared) -> Result<RequestGuard, ServerError> {
    let limit = shared.max_body_bytes;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        (shared.stats.metrics).refused(crate::metrics::Refusal::BodyTooLarge);
        return Err(ServerError::BodyTooLarge { limit });
    }
    let max = shared.max_requests;
    shared.stats.try_request(max).ok_or_else(|| {
        shared.stats.refused_overloaded();
        ServerError::Overloaded { limit: max }
    })
}

/// The app's response; a panic or an error in its place is logged and
/// becomes the server's 500. A plain function, not an async one around the
/// call: a second future level around every request's call costs on each
/// poll.
fn app_response(
    result: std::thread::Result<Result<Response<ResponseBody>, crate::BoxError>>,
    request_id: u64,
    uri: &str,
) -> Response<ResponseBody> {
    match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(request_id, "service returned an error: {e}");
            error_response_boxed(&ServerError::AppFailed)
        }
        Err(p) => {
            let msg = crate::service::panic_message(&*p);
            tracing::error!(request_id, uri, "handler panicked: {msg}");
            error_response_boxed(&ServerError::AppFailed)
        }
    }
}

fn wrap(
    resp: Response<ResponseBody>,
    log: AccessLog,
    shared: Arc<HttpShared>,
    guard: Option<RequestGuard>,
) -> Response<LoggedBody> {
    let status = resp.status().as_u16();
    resp.map(|inner| LoggedBody {
        inner: box_body(inner),
        log: Some(log),
        shared,
        status,
        bytes: 0,
        _guard: guard,
    })
}

/// A response body that logs the request when hyper drops it (done or
/// cancelled), so the log carries the real byte count and duration.
pub(crate) struct LoggedBody {
    inner: ResponseBody,
    log: Option<AccessLog>,
    shared: Arc<HttpShared>,
    status: u16,
    bytes: u64,
    /// Counts the request in flight (none for the server's own 413/503).
    _guard: Option<RequestGuard>,
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.finish(&self.shared.stats, self.status, self.bytes, None);
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.bytes += d.len() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
