//! The service boundary: how any hyper or tower service becomes the thing
//! both transports call.
//!
//! Services receive `http::Request<myflask::Body>` with the
//! [`crate::RequestInfo`] extension (how the request arrived, its CGI
//! params, its mount prefix and W3C trace context), and may answer with any
//! `http_body::Body`. Two doors lead in:
//! - [`App::from_hyper`] for a `hyper::service::Service` (`&self`, e.g.
//!   `service_fn`);
//! - [`App::from_tower`] for a `tower::Service` such as an axum `Router`,
//!   unchanged: it is cloned per request and driven through `poll_ready`.
//!
//! Behind both is one object-safe trait, so the connection code is not
//! generic over the application (one copy of it in the binary, and the
//! service's future is boxed once per request, nothing more).
//!
//! The server's own answers (a body over the limit, an overload, a failed
//! handler) are built here too, by [`error_response`]: every transport
//! meets the application at this boundary, so a failure reads the same
//! whichever way the request came.

use crate::body::Body;
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Errors services and bodies may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type after erasure.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;
/// A service's response future, erased.
pub(crate) type BoxFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

/// A service behind one object-safe call: what `App` erases both doors to.
trait Call: Send + Sync + 'static {
    fn call(&self, req: Request<Body>) -> BoxFuture;
}

/// A service ready to be served: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct App(Arc<dyn Call>);

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
}

/// Erases a response body: any `Buf` data becomes `Bytes` (zero-copy when it
/// already is `Bytes`), any error a `BoxError`. The size hint survives (it
/// becomes the `Content-Length` of both transports); http-body-util's
/// `map_frame` would drop it.
///
/// One allocation; none for a body that is already a `ResponseBody`: a
/// body can pass through here more than once (a service that boxes its
/// own, then `App`, then the HTTP transport's logging wrapper), and must be
/// boxed only once.
pub fn box_body<B>(body: B) -> ResponseBody
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut slot = Some(body);
    if let Some(boxed) =
        (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<ResponseBody>>()
    {
        if let Some(b) = boxed.take() {
            return b;
        }
    }
    match slot {
        Some(body) => ToBytes { body }.boxed_unsync(),
        // Only taken above, where it was returned.
        None => ResponseBody::default(),
    }
}

pin_project_lite::pin_project! {
    /// A body whose data is turned into `Bytes` and whose error is boxed.
    struct ToBytes<B> {
        #[pin]
        body: B,
    }
}

impl<B> http_body::Body for ToBytes<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx).map(|f| {
            f.map(|r| {
                r.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
                    .map_err(Into::into)
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A `hyper::service::Service`, called through `&self`.
struct Hyper<S>(S);

impl<S, B> Call for Hyper<S>
where
    S: hyper::service::Service<Request<Body>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn call(&self, req: Request<Body>) -> BoxFuture {
        // Keep `map`: an `async move` block would hold the captured future
        // and, once it awaits it, a second copy, doubling this per-request
        // allocation.
        Box::pin(self.0.call(req).map(|r| match r {
            Ok(resp) => Ok(resp.map(box_body)),
            Err(e) => Err(e.into()),
        }))
    }
}

/// A layer of the crate's own (the management endpoints): called as is,
/// no further boxing.
struct Raw<F>(F);

impl<F> Call for Raw<F>
where
    F: Fn(Request<Body>) -> BoxFuture + Send + Sync + 'static,
{
    fn call(&self, req: Request<Body>) -> BoxFuture {
        (self.0)(req)
    }
}

/// A `tower::Service`, cloned per request and driven through `poll_ready`.
struct Tower<S>(S);

impl<S, B> Call for Tower<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn call(&self, req: Request<Body>) -> BoxFuture {
        let mut svc = self.0.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| svc.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            match svc.call(req).await {
                Ok(resp) => Ok(resp.map(box_body)),
                Err(e) => Err(e.into()),
            }
        })
    }
}

impl App {
    /// Serves a hyper service (`hyper::service::service_fn(...)` and the like).
    pub fn from_hyper<S, B>(svc: S) -> App
    where
        S: hyper::service::Service<Request<Body>, Response = Response<B>> + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        App(Arc::new(Hyper(svc)))
    }

    /// Serves a tower service such as an axum `Router`.
    pub fn from_tower<S, B>(svc: S) -> App
    where
        S: tower_service::Service<Request<Body>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        App(Arc::new(Tower(svc)))
    }

    /// An app from a function that already returns the erased future.
    pub(crate) fn from_fn<F>(f: F) -> App
    where
        F: Fn(Request<Body>) -> BoxFuture + Send + Sync + 'static,
    {
        App(Arc::new(Raw(f)))
    }

    /// Calls the service. What runs before its future is returned (the
    /// synchronous part of a `service_fn` closure, say) runs here, so a
    /// panic there is caught here and raised again from the future: the
    /// transports catch panics where they poll it, and answer 500 for
    /// that one request.
    pub(crate) fn call(&self, req: Request<Body>) -> BoxFuture {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.call(req))) {
            Ok(fut) => fut,
            Err(panic) => rethrow(panic),
        }
    }
}

/// The message of a caught panic, for the log line that reports it (both
/// transports answer a panicking handler with a 500 and log this).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A future that raises `panic` again when first polled.
fn rethrow(panic: Box<dyn std::any::Any + Send>) -> BoxFuture {
    let mut panic = Some(panic);
    Box::pin(std::future::poll_fn(move |_| match panic.take() {
        Some(p) => std::panic::resume_unwind(p),
        None => std::task::Poll::Pending,
    }))
}

/// A failure the server answers itself, in place of the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerError {
    /// 400: the request could not be understood (the reason says why).
    BadRequest(String),
    /// 404: the path is outside what this server serves (the reason says
    /// what it does serve).
    NotFound(String),
    /// 413: the request body is larger than `--max-body-bytes`.
    BodyTooLarge { limit: u64 },
    /// 431: the request head (FastCGI params) is larger than
    /// `--max-params-bytes`.
    HeadTooLarge { limit: usize },
    /// 500: the application panicked or returned an error. The details go
    /// to the log, never to the client.
    AppFailed,
    /// 503: `--max-requests` requests are already in flight server-wide.
    Overloaded { limit: usize },
    /// 503: the FastCGI connection already carries
    /// `--max-requests-per-conn` requests.
    ConnectionBusy { limit: usize },
    /// 504: the request's deadline (`--request-timeout`) of `after` passed
    /// before the application answered.
    Timeout { after: Duration },
}

impl ServerError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ServerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServerError::NotFound(_) => StatusCode::NOT_FOUND,
            ServerError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServerError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ServerError::AppFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ServerError::Overloaded { .. } | ServerError::ConnectionBusy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServerError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// The one-sentence reason: the response body (after the status code) and
/// the access log's note.
impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::BadRequest(why) => f.write_str(why),
            ServerError::NotFound(why) => write!(f, "not found: {why}"),
            ServerError::BodyTooLarge { limit } => {
                write!(f, "request body exceeds the limit of {limit} bytes")
            }
            ServerError::HeadTooLarge { limit } => write!(
                f,
                "request head (FastCGI params) exceeds the limit of {limit} bytes"
            ),
            ServerError::AppFailed => f.write_str("internal server error"),
            ServerError::Overloaded { limit } => {
                write!(f, "server is at its limit of {limit} concurrent requests")
            }
            ServerError::ConnectionBusy { limit } => write!(
                f,
                "too many concurrent requests on this connection (limit {limit})"
            ),
            ServerError::Timeout { after } => {
                write!(f, "the request took longer than its deadline of {after:?}")
            }
        }
    }
}

/// Builds the server's own response to `err`, for every transport:
/// `text/plain`, the body `"<code> <reason>\n"`, and `Retry-After: 1` on a
/// 503 (the condition is momentary; nginx passes the header on). Cold path:
/// it allocates freely.
pub fn error_response(err: &ServerError) -> Response<Bytes> {
    let status = err.status();
    let body = Bytes::from(format!("{} {err}\n", status.as_u16()));
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    r
}

/// [`error_response`] with its body erased, as a service's response is.
pub fn error_response_boxed(err: &ServerError) -> Response<ResponseBody> {
    error_response(err).map(|b| box_body(http_body_util::Full::new(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn box_body_keeps_data_and_size_hint_also_when_already_erased() {
        let once = box_body(Full::new(Bytes::from_static(b"hello")));
        assert_eq!(once.size_hint().exact(), Some(5));
        // Already erased: passed through as is (same data, same hint).
        let twice = box_body(once);
        assert_eq!(twice.size_hint().exact(), Some(5));
        let got = twice.collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], b"hello");
    }

    #[test]
    fn error_responses_say_their_status_and_reason_in_plain_text() {
        let cases = [
            (
                ServerError::BadRequest("no REQUEST_METHOD".into()),
                "400 no REQUEST_METHOD\n",
            ),
            (
                ServerError::BodyTooLarge { limit: 10 },
                "413 request body exceeds the limit of 10 bytes\n",
            ),
            (
                ServerError::HeadTooLarge { limit: 20 },
                "431 request head (FastCGI params) exceeds the limit of 20 bytes\n",
            ),
            (ServerError::AppFailed, "500 internal server error\n"),
            (
                ServerError::Overloaded { limit: 3 },
                "503 server is at its limit of 3 concurrent requests\n",
            ),
            (
                ServerError::ConnectionBusy { limit: 4 },
                "503 too many concurrent requests on this connection (limit 4)\n",
            ),
            (
                ServerError::Timeout {
                    after: Duration::from_secs(5),
                },
                "504 the request took longer than its deadline of 5s\n",
            ),
            (
                ServerError::NotFound("this server serves paths under /app/".into()),
                "404 not found: this server serves paths under /app/\n",
            ),
        ];
        for (err, body) in cases {
            let r = error_response(&err);
            assert_eq!(r.status(), err.status());
            assert_eq!(&r.body()[..], body.as_bytes(), "{err:?}");
            assert_eq!(
                r.headers()[http::header::CONTENT_TYPE],
                "text/plain; charset=utf-8"
            );
            let retry = r.headers().get(http::header::RETRY_AFTER);
            assert_eq!(retry.is_some(), r.status() == 503, "{err:?}");
        }
    }
}
