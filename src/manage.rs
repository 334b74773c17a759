//! Management endpoints the server answers before the app, for any app it
//! hosts, over FastCGI and HTTP alike: a status page (JSON; `?full` lists
//! the requests in flight), `/metrics` (OpenMetrics or Prometheus text) and
//! a ping, at paths the operator chooses (php-fpm's `pm.status_path` and
//! `ping.path`). Off by default for a hosted app; `myflask serve` answers
//! `/status`, `/metrics` and `/healthz`.
//!
//! The same layer carries each request's W3C trace context to the app: a
//! valid `traceparent` becomes [`RequestInfo::trace`] (and, as before, a
//! [`TraceContext`] request extension), and
//! the app's future runs in a `request` span whose `trace_id` / `span_id`
//! fields journald stores as `TRACE_ID` / `SPAN_ID` on every entry the
//! request logs; the access log's line gets the same two fields.
//!
//! Deadlines and the slow log (`deadline.rs`) are applied here too, to the
//! app's future and response body.
//!
//! A request for any other path costs a few string compares and a header
//! lookup; the status page and the slow log add the in-flight registry's
//! insert and remove and the request's `Progress` (one small allocation,
//! whose phase bits are set without a lock), a deadline a timer.

use crate::RequestInfo;
use crate::body::Body;
use crate::deadline::{self, Deadlines, Kill};
use crate::exposition::{self, Format, Scrape};
use crate::inflight::{InFlight, Tracked};
use crate::listen_queue::ListenQueues;
use crate::service::{App, BoxFuture, ResponseBody, box_body};
use crate::stats::Stats;
use crate::trace::TraceContext;
use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;
use tracing::Instrument;

fn parse_path(s: &str) -> Result<String, String> {
    if s.is_empty() || (s.starts_with('/') && !s.contains(['?', '#', ' '])) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a path such as /status (\"\" turns the endpoint off)"
        ))
    }
}

/// The `serve` flags that place the endpoints.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ManageArgs {
    /// Path of the server's status page (JSON; ?full lists each request in
    /// flight), answered before the app, like php-fpm's pm.status_path.
    /// Default: /status for the built-in app, off for a hosted one; ""
    /// turns it off.
    #[arg(long, value_name = "PATH", value_parser = parse_path, env = "MYFLASK_STATUS_PATH")]
    pub status_path: Option<String>,

    /// Path of the metrics (OpenMetrics or Prometheus text, by the Accept
    /// header). Default: /metrics for the built-in app, off for a hosted
    /// one; "" turns it off.
    #[arg(long, value_name = "PATH", value_parser = parse_path, env = "MYFLASK_METRICS_PATH")]
    pub metrics_path: Option<String>,

    /// Path answered "ok" while the server runs, like php-fpm's ping.path.
    /// Default: /healthz for the built-in app, off for a hosted one; ""
    /// turns it off.
    #[arg(long, value_name = "PATH", value_parser = parse_path, env = "MYFLASK_PING_PATH")]
    pub ping_path: Option<String>,
}

/// Where each endpoint answers (`None`: off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub status: Option<String>,
    pub metrics: Option<String>,
    pub ping: Option<String>,
}

impl Endpoints {
    /// What `myflask serve` answers with no flags.
    pub fn builtin() -> Endpoints {
        Endpoints {
            status: Some("/status".into()),
            metrics: Some("/metrics".into()),
            ping: Some("/healthz".into()),
        }
    }

    /// The flags over `defaults`: a given path wins, `""` turns it off.
    pub fn resolve(args: &ManageArgs, defaults: Endpoints) -> Endpoints {
        let pick = |flag: &Option<String>, default: Option<String>| match flag {
            Some(p) if p.is_empty() => None,
            Some(p) => Some(p.clone()),
            None => default,
        };
        Endpoints {
            status: pick(&args.status_path, defaults.status),
            metrics: pick(&args.metrics_path, defaults.metrics),
            ping: pick(&args.ping_path, defaults.ping),
        }
    }
}

#[derive(Clone, Copy)]
enum Endpoint {
    Status,
    Metrics,
    Ping,
}

struct Layer {
    inner: App,
    stats: Arc<Stats>,
    endpoints: Endpoints,
    deadlines: Deadlines,
    queues: ListenQueues,
    /// Present when the status page or the slow log is on.
    inflight: Option<Arc<InFlight>>,
}

/// What the layer does besides passing requests on.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub endpoints: Endpoints,
    pub deadlines: Deadlines,
    /// `--slow-request-threshold`.
    pub slow_threshold: Option<std::time::Duration>,
}

impl From<Endpoints> for Settings {
    fn from(endpoints: Endpoints) -> Settings {
        Settings {
            endpoints,
            ..Settings::default()
        }
    }
}

/// Wraps `app` with the endpoints, deadlines and slow log (and the trace
/// context, always). Turns the metrics recorder on when `/metrics` is
/// served; starts the slow log's watcher thread when it is on.
pub fn wrap(
    app: App,
    stats: Arc<Stats>,
    settings: impl Into<Settings>,
    queues: ListenQueues,
) -> App {
    let s = settings.into();
    if s.endpoints.metrics.is_some() {
        stats.metrics.enable();
    }
    let wanted = s.endpoints.status.is_some() || s.slow_threshold.is_some();
    let inflight = wanted.then(|| Arc::new(InFlight::default()));
    if let (Some(reg), Some(t)) = (&inflight, s.slow_threshold) {
        deadline::watch_slow(Arc::downgrade(reg), t);
    }
    let layer = Arc::new(Layer {
        inner: app,
        stats,
        endpoints: s.endpoints,
        deadlines: s.deadlines,
        queues,
        inflight,
    });
    App::from_fn(move |req| layer.call(req))
}

impl Layer {
    fn endpoint(&self, path: &str) -> Option<Endpoint> {
        let is = |p: &Option<String>| p.as_deref() == Some(path);
        if is(&self.endpoints.ping) {
            Some(Endpoint::Ping)
        } else if is(&self.endpoints.metrics) {
            Some(Endpoint::Metrics)
        } else if is(&self.endpoints.status) {
            Some(Endpoint::Status)
        } else {
            None
        }
    }

    fn call(&self, mut req: Request<Body>) -> BoxFuture {
        if let Some(e) = self.endpoint(req.uri().path()) {
            let resp = self.answer(e, &req);
            return Box::pin(std::future::ready(Ok(resp)));
        }
        let request_id = req
            .extensions()
            .get::<RequestInfo>()
            .map_or(0, |i| i.request_id);
        let trace = TraceContext::from_headers(req.headers());
        if let Some(t) = trace {
            self.stats.traces.put(request_id, t);
            let ext = req.extensions_mut();
            ext.insert(t);
            if let Some(info) = ext.get_mut::<RequestInfo>() {
                info.trace = Some(t);
            }
        }
        let tracked = self
            .inflight
            .as_ref()
            .map(|reg| enter(reg, &mut req, trace));
        let kill = match self.deadlines.is_off() {
            true => None,
            false => self
                .deadlines
                .for_path(req.uri().path())
                .map(|d| Kill::new(d, request_id, &req, trace, self.stats.clone())),
        };
        let fut = self.inner.call(req);
        if trace.is_none() && tracked.is_none() && kill.is_none() {
            return fut;
        }
        Box::pin(run(fut, trace, tracked, kill))
    }

    fn answer(&self, e: Endpoint, req: &Request<Body>) -> Response<ResponseBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match e {
            Endpoint::Ping => plain(StatusCode::OK, "ok\n"),
            Endpoint::Status => {
                let full = req.uri().query().is_some_and(|q| {
                    q.split('&')
                        .any(|kv| kv == "full" || kv.starts_with("full="))
                });
                let list = full.then(|| self.inflight.as_ref().map(|r| r.list()));
                respond(
                    "application/json",
                    json_bytes(&status_json(&self.stats, list.flatten())),
                )
            }
            Endpoint::Metrics => {
                let fmt = Format::negotiate(req.headers().get(ACCEPT).map(HeaderValue::as_bytes));
                let text = exposition::render(
                    fmt,
                    &Scrape {
                        stats: &self.stats.snapshot(),
                        figures: &self.stats.metrics.figures(),
                        queues: &self.queues.read(),
                    },
                );
                respond(fmt.content_type(), Bytes::from(text))
            }
        }
    }
}

/// Lists the request; its body reports when it is over.
fn enter(reg: &InFlight, req: &mut Request<Body>, trace: Option<TraceContext>) -> Tracked {
    let info = req.extensions().get::<RequestInfo>();
    let tracked = reg.enter(
        info.map_or(0, |i| i.request_id),
        req.method(),
        req.uri(),
        info.map_or(crate::Transport::Http, |i| i.transport),
        trace,
    );
    req.body_mut().report_end(tracked.progress());
    tracked
}

/// The app's part of a request with what the layer adds: the trace span
/// around its future, the deadline over its future and body, and its
/// in-flight entry until the body is done.
async fn run(
    fut: BoxFuture,
    trace: Option<TraceContext>,
    tracked: Option<Tracked>,
    kill: Option<Kill>,
) -> Result<Response<ResponseBody>, crate::BoxError> {
    let fut: BoxFuture = match trace {
        Some(t) => {
            let span =
                tracing::info_span!("request", trace_id = t.trace_id(), span_id = t.span_id());
            Box::pin(fut.instrument(span))
        }
        None => fut,
    };
    let resp = match &kill {
        Some(k) => match tokio::time::timeout_at(k.at(), fut).await {
            Ok(r) => r?,
            Err(_) => return Ok(k.before_head(tracked.as_ref().map(|t| t.progress().phase()))),
        },
        None => fut.await?,
    };
    // The head goes out now, or over FastCGI once the body is in (the
    // phase says "reading body" until then).
    if let Some(t) = &tracked {
        t.progress().answered();
    }
    if tracked.is_none() && kill.is_none() {
        return Ok(resp);
    }
    Ok(resp.map(|inner| {
        box_body(LayerBody {
            inner,
            deadline: kill.map(|k| (Box::pin(tokio::time::sleep_until(k.at())), k)),
            done: false,
            _tracked: tracked,
        })
    }))
}

/// The status page's JSON: the server's figures with php-fpm status-page
/// parity, `version`, `package_version` (the Debian package's, null for a
/// binary `cargo myflask deb` did not package) and `pid`; with `requests`,
/// each request in flight.
pub fn status_json(
    stats: &Stats,
    requests: Option<Vec<crate::inflight::InFlightRequest>>,
) -> Value {
    let mut v = serde_json::to_value(stats.snapshot()).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        m.insert("name".into(), json!(crate::appname::get()));
        m.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
        m.insert(
            "package_version".into(),
            json!(crate::package_version::get()),
        );
        m.insert("pid".into(), json!(std::process::id()));
        if let Some(list) = requests {
            let list: Vec<Value> = list
                .iter()
                .map(|r| {
                    json!({
                        "request_id": r.request_id,
                        "method": r.method.as_str(),
                        "uri": r.uri.to_string(),
                        "transport": r.transport.as_str(),
                        "age_ms": r.age.as_millis() as u64,
                        "phase": r.phase.as_str(),
                    })
                })
                .collect();
            m.insert("requests".into(), Value::Array(list));
        }
    }
    v
}

/// Pretty JSON with a final newline.
pub fn json_bytes(v: &Value) -> Bytes {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    Bytes::from(body)
}

/// A complete, uncacheable response.
fn respond(content_type: &'static str, body: Bytes) -> Response<ResponseBody> {
    let mut r = Response::new(box_body(Full::new(body)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut r = respond(
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    );
    *r.status_mut() = status;
    r
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request listed until it is dropped
    /// and ends it with an error when its deadline passes.
    struct LayerBody {
        #[pin]
        inner: ResponseBody,
        deadline: Option<(std::pin::Pin<Box<tokio::time::Sleep>>, Kill)>,
        done: bool,
        _tracked: Option<Tracked>,
    }
}

impl http_body::Body for LayerBody {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.done {
            return std::task::Poll::Ready(None);
        }
        if let Some((sleep, kill)) = this.deadline {
            if sleep.as_mut().poll(cx).is_ready() {
                *this.done = true;
                return std::task::Poll::Ready(Some(Err(kill.after_head())));
            }
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_defaults_and_empty_turns_off() {
        let none = ManageArgs::default();
        assert_eq!(
            Endpoints::resolve(&none, Endpoints::default()),
            Endpoints::default()
        );
        assert_eq!(
            Endpoints::resolve(&none, Endpoints::builtin()),
            Endpoints::builtin()
        );
        let args = ManageArgs {
            status_path: Some("".into()),
            metrics_path: Some("/-/metrics".into()),
            ping_path: None,
        };
        let e = Endpoints::resolve(&args, Endpoints::builtin());
        assert_eq!(e.status, None);
        assert_eq!(e.metrics.as_deref(), Some("/-/metrics"));
        assert_eq!(e.ping.as_deref(), Some("/healthz"));
    }

    #[test]
    fn paths_are_checked() {
        assert!(parse_path("/fpm-status").is_ok());
        assert!(parse_path("").is_ok());
        for bad in ["status", "/status?full", "/a b", "/x#y"] {
            assert!(parse_path(bad).is_err(), "{bad:?}");
        }
    }
}
