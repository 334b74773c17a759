//! The built-in application: what `myflask serve` answers with no app of
//! your own. It is an ordinary hyper service; it reads the request
//! extension `RequestInfo` (with the CGI params) but knows nothing of
//! FastCGI records or systemd.
//!
//! - `GET /`        a small HTML page saying what serves it
//! - `GET /healthz` `200 ok`
//! - `GET /status`  JSON with php-fpm status-page parity, and the app's
//!   `name` (`--app-name`)
//! - `GET /request` JSON of the request (with its `mount_prefix` and its
//!   `trace`, from `RequestInfo`) and every CGI param received (the tool to
//!   debug an nginx `fastcgi_param` setup)
//! - `POST /echo`   the body back, byte for byte, with its Content-Type
//! - `POST /upload` reads the body as it streams in, keeps none of it, and
//!   answers its size and FNV-1a hash (`?pace_ms=N` waits N ms per chunk:
//!   a slow consumer, to see backpressure at work)
//! - `GET /sleep?ms=N` answers `{"slept_ms": N}` after N ms (0 to 60000;
//!   400 with one sentence otherwise): a slow request on demand, to watch
//!   drains and reloads and to check timeouts
//! - anything else  404

use crate::RequestInfo;
use crate::body::Body;
use crate::service::{App, ResponseBody, box_body};
use crate::stats::Stats;
use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;

/// A complete text response.
pub fn text_response(status: StatusCode, text: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(box_body(Full::new(text.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(v: &Value) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(box_body(Full::new(Bytes::from(body))));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut r = text_response(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn index(req: &Request<Body>) -> Response<ResponseBody> {
    let info = req.extensions().get::<RequestInfo>();
    // Links go through the mount prefix, as Flask's url_for does with
    // SCRIPT_NAME.
    let base = html_escape(info.and_then(|i| i.mount_prefix.as_deref()).unwrap_or(""));
    let (transport, listener, origin) = match info {
        Some(i) => (
            i.transport.as_str(),
            html_escape(&i.listener),
            if i.inherited {
                "a socket inherited from systemd"
            } else {
                "a socket myflask bound itself"
            },
        ),
        None => ("an unknown transport", String::new(), "an unknown socket"),
    };
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>myflask</title></head>\n\
         <body><h1>myflask {version}</h1>\n\
         <p>Served over <strong>{transport}</strong> on <code>{listener}</code>, {origin}.</p>\n\
         <ul><li><a href=\"{base}/healthz\">/healthz</a></li><li><a href=\"{base}/status\">/status</a></li>\
         <li><a href=\"{base}/request\">/request</a></li></ul>\n</body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    let mut r = Response::new(box_body(Full::new(Bytes::from(page))));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// The server's status JSON (`myflask serve` answers `/status` in front
/// of this app; this route serves the same to a program that embeds it).
fn status(stats: &Stats) -> Response<ResponseBody> {
    json_response(&crate::manage::status_json(stats, None))
}

fn request_dump(req: &Request<Body>) -> Response<ResponseBody> {
    let headers: Vec<Value> = req
        .headers()
        .iter()
        .map(|(k, v)| json!([k.as_str(), lossy(v.as_bytes())]))
        .collect();
    let info = req.extensions().get::<RequestInfo>();
    let params: Option<Vec<Value>> = info
        .and_then(|i| i.params.as_ref())
        .map(|p| p.iter().map(|(k, v)| json!([lossy(k), lossy(v)])).collect());
    json_response(&json!({
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "transport": info.map(|i| i.transport.as_str()),
        "scheme": info.map(|i| i.scheme.as_str().to_string()),
        "peer": info.and_then(|i| i.peer.clone()),
        "request_id": info.map(|i| i.request_id),
        "mount_prefix": info.and_then(|i| i.mount_prefix.as_deref()),
        "trace": info.and_then(|i| i.trace).map(|t| json!({
            "trace_id": t.trace_id(),
            "span_id": t.span_id(),
            "flags": t.flags(),
        })),
        "headers": headers,
        "params": params,
    }))
}

/// Reads the whole body, then answers with it.
///
/// Collecting first is deliberate: nginx stops sending a request body as
/// soon as the response head arrives, so an echo that answers while the
/// body still streams in comes back truncated behind nginx (Go's
/// net/http/fcgi does exactly that). The server caps the body size. The
/// chunks are kept as they arrived and sent back as they are: no copy into
/// one contiguous buffer.
async fn echo(req: Request<Body>) -> Response<ResponseBody> {
    let ct = req.headers().get(CONTENT_TYPE).cloned();
    let mut body = req.into_body();
    let mut chunks = std::collections::VecDeque::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    len += d.len() as u64;
                    chunks.push_back(d);
                }
            }
            Err(e) => {
                let status = match e {
                    crate::BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                return text_response(status, format!("{} {e}\n", status.as_u16()));
            }
        }
    }
    let mut r = Response::new(box_body(Chunks { chunks, len }));
    r.headers_mut().insert(
        CONTENT_TYPE,
        ct.unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    r
}

/// A body made of chunks already in memory, with an exact length.
struct Chunks {
    chunks: std::collections::VecDeque<Bytes>,
    len: u64,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let next = self.chunks.pop_front();
        if let Some(c) = &next {
            self.len -= c.len() as u64;
        }
        std::task::Poll::Ready(next.map(|c| Ok(http_body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// Streams the body through without keeping it: memory stays flat however
/// large the upload.
async fn upload(req: Request<Body>) -> Response<ResponseBody> {
    let pace = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("pace_ms=")))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| std::time::Duration::from_millis(ms.min(10_000)));
    let mut body = req.into_body();
    let mut bytes = 0u64;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    bytes += d.len() as u64;
                    for b in d.iter() {
                        hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
                    }
                }
                if let Some(p) = pace {
                    tokio::time::sleep(p).await;
                }
            }
            Err(e) => {
                let status = match e {
                    crate::BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                return text_response(status, format!("{} {e}\n", status.as_u16()));
            }
        }
    }
    json_response(&json!({ "bytes": bytes, "fnv1a64": format!("{hash:016x}") }))
}

/// The longest `/sleep`, one minute: as long as nginx's default
/// `fastcgi_read_timeout` and twice the default `--shutdown-timeout`, so
/// either can be reached, while no request holds a slot for long.
pub const SLEEP_CAP_MS: u64 = 60_000;

/// `ms` from `/sleep`'s query, or the one-sentence 400 body.
fn sleep_ms(query: Option<&str>) -> Result<u64, String> {
    let raw = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="));
    let Some(raw) = raw else {
        return Err(format!(
            "400 /sleep needs ?ms=N, a whole number of milliseconds from 0 to {SLEEP_CAP_MS}\n"
        ));
    };
    match raw.parse::<u64>() {
        Ok(ms) if ms <= SLEEP_CAP_MS => Ok(ms),
        Ok(_) => Err(format!(
            "400 ms={raw} is above the cap of {SLEEP_CAP_MS} ms\n"
        )),
        // All digits yet no u64: far above the cap.
        Err(_) if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) => Err(format!(
            "400 ms={raw} is above the cap of {SLEEP_CAP_MS} ms\n"
        )),
        Err(_) => Err(format!(
            "400 ms={raw:?} is not a whole number of milliseconds from 0 to {SLEEP_CAP_MS}\n"
        )),
    }
}

/// Answers after the asked time; the request is in flight meanwhile (it
/// counts in `/status`, and a drain waits for it).
async fn sleep(req: &Request<Body>) -> Response<ResponseBody> {
    match sleep_ms(req.uri().query()) {
        Ok(ms) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            json_response(&json!({ "slept_ms": ms }))
        }
        Err(why) => text_response(StatusCode::BAD_REQUEST, why),
    }
}

/// The built-in service.
#[derive(Clone)]
pub struct Builtin {
    stats: Arc<Stats>,
}

impl Builtin {
    pub fn new(stats: Arc<Stats>) -> Builtin {
        Builtin { stats }
    }

    /// Routes `req`. The body-reading routes are boxed so that this future,
    /// and any service future that awaits it, stays a few hundred bytes:
    /// a future is moved and copied whole, and theirs are kilobytes.
    pub async fn handle(&self, req: Request<Body>) -> Response<ResponseBody> {
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        match req.uri().path() {
            "/" if get => index(&req),
            "/healthz" if get => text_response(StatusCode::OK, "ok\n"),
            "/status" if get => status(&self.stats),
            "/request" => request_dump(&req),
            "/sleep" if get => Box::pin(sleep(&req)).await,
            "/echo" if req.method() == Method::POST || req.method() == Method::PUT => {
                Box::pin(echo(req)).await
            }
            "/" | "/healthz" | "/status" | "/sleep" => method_not_allowed("GET, HEAD"),
            "/upload" if req.method() == Method::POST || req.method() == Method::PUT => {
                Box::pin(upload(req)).await
            }
            "/echo" | "/upload" => method_not_allowed("POST, PUT"),
            _ => text_response(StatusCode::NOT_FOUND, "404 not found\n"),
        }
    }
}

impl hyper::service::Service<Request<Body>> for Builtin {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn call(&self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// The built-in application, ready to serve.
pub fn builtin(stats: Arc<Stats>) -> App {
    App::from_hyper(Builtin::new(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_takes_whole_milliseconds_up_to_the_cap() {
        assert_eq!(sleep_ms(Some("ms=0")), Ok(0));
        assert_eq!(sleep_ms(Some("x=1&ms=250")), Ok(250));
        assert_eq!(sleep_ms(Some("ms=60000")), Ok(SLEEP_CAP_MS));
        let cases = [
            (None, "needs ?ms=N"),
            (Some("msx=1"), "needs ?ms=N"),
            (Some("ms=60001"), "ms=60001 is above the cap of 60000 ms"),
            (Some("ms=-1"), "ms=\"-1\" is not a whole number"),
            (Some("ms=1.5"), "is not a whole number"),
            (Some("ms="), "ms=\"\" is not a whole number"),
            (Some("ms=99999999999999999999"), "is above the cap"),
        ];
        for (q, want) in cases {
            let e = sleep_ms(q).expect_err(want);
            assert!(e.starts_with("400 ") && e.contains(want), "{q:?}: {e}");
        }
    }
}
