//! The same service over plain HTTP/1.1 (hyper): for development, health
//! checks, and nginx `proxy_pass` setups.
//!
//! The request body is wrapped in [`Body`] with the same size limit as over
//! FastCGI, a handler panic becomes a 500, and each request produces the
//! same access-log event (logged when hyper is done with the response body,
//! so bytes and duration cover the whole response).

use crate::access::AccessLog;
use crate::body::Body;
use crate::fastcgi::connection::{ConnMeta, Engine};
use crate::service::{ResponseBody, box_body};
use crate::stats::RequestGuard;
use crate::{RequestInfo, Transport};
use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

/// Serves one HTTP connection until it closes or the server shuts down.
pub(crate) async fn serve<IO>(io: IO, peer: Option<String>, engine: Arc<Engine>, meta: ConnMeta)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = engine.shutdown.clone();
    let svc_engine = engine.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        handle(req, svc_engine.clone(), meta.clone(), peer.clone()).map(Ok::<_, Infallible>)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(engine.config.stall_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("http connection ended: {e}");
            }
        }
        _ = shutdown.cancelled() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    engine: Arc<Engine>,
    meta: ConnMeta,
    peer: Option<String>,
) -> Response<LoggedBody> {
    let request_id = engine.stats.next_request_id();
    let log = AccessLog::new("http", req.method(), req.uri(), peer.as_deref(), request_id);
    let limit = engine.config.max_body_bytes;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let resp = if declared.is_some_and(|n| n > limit) {
        (engine.stats.metrics).refused(crate::metrics::Refusal::BodyTooLarge);
        crate::app::text_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("413 request body exceeds the limit of {limit} bytes\n"),
        )
    } else {
        let Some(guard) = engine.stats.try_request(engine.config.max_requests) else {
            engine.stats.refused_overloaded();
            let mut r = crate::app::text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 server is at its concurrent request limit\n",
            );
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            return wrap(r, log, engine, None);
        };
        let (parts, body) = req.into_parts();
        let mut req = Request::from_parts(parts, Body::incoming(body, limit));
        req.extensions_mut().insert(RequestInfo {
            transport: Transport::Http,
            listener: meta.listener.clone(),
            inherited: meta.inherited,
            request_id,
            peer,
            scheme: http::uri::Scheme::HTTP,
            params: None,
        });
        let r = match AssertUnwindSafe(engine.app.call(req)).catch_unwind().await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(request_id, "service returned an error: {e}");
                crate::app::text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal server error\n",
                )
            }
            Err(p) => {
                let msg = crate::service::panic_message(&*p);
                tracing::error!(request_id, uri = %log.uri, "handler panicked: {msg}");
                crate::app::text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal server error\n",
                )
            }
        };
        return wrap(r, log, engine, Some(guard));
    };
    wrap(resp, log, engine, None)
}

fn wrap(
    resp: Response<ResponseBody>,
    log: AccessLog,
    engine: Arc<Engine>,
    guard: Option<RequestGuard>,
) -> Response<LoggedBody> {
    let status = resp.status().as_u16();
    resp.map(|inner| LoggedBody {
        inner: box_body(inner),
        log: Some(log),
        engine,
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
    engine: Arc<Engine>,
    status: u16,
    bytes: u64,
    /// Counts the request in flight (none for the server's own 413/503).
    _guard: Option<RequestGuard>,
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.finish(&self.engine.stats, self.status, self.bytes, None);
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
