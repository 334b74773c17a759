//! The service boundary: how any hyper or tower service becomes the thing
//! both transports call.
//!
//! Services receive `http::Request<myflask::Body>` and may answer with any
//! `http_body::Body`. Two doors lead in:
//! - [`App::from_hyper`] for a `hyper::service::Service` (`&self`, e.g.
//!   `service_fn`);
//! - [`App::from_tower`] for a `tower::Service` such as an axum `Router`,
//!   unchanged: it is cloned per request and driven through `poll_ready`.
//!
//! Behind both is one object-safe trait, so the connection code is not
//! generic over the application (one copy of it in the binary, and the
//! service's future is boxed once per request, nothing more).

use crate::body::Body;
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Errors services and bodies may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type after erasure.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;
/// A service's response future, erased.
pub(crate) type BoxFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

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
/// One allocation; none for a body that is already a `ResponseBody` (a
/// service that boxed its own, passed through `App` and the HTTP
/// transport's logging wrapper, was boxed three times over).
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
        // `map`, not an `async move` block: a block holds the captured
        // future and, once it awaits it, a second copy, which doubled the
        // allocation (past the 1 KiB glibc serves from its thread cache).
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
}
