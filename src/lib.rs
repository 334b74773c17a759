//! myflask: serve any hyper or tower HTTP service over FastCGI (and plain
//! HTTP/1.1), on sockets that systemd hands over, the way nginx expects.
//!
//! ```no_run
//! use myflask::{App, Body, Server, ServerConfig};
//! use http::{Request, Response};
//!
//! async fn hello(_req: Request<Body>) -> Result<Response<String>, std::convert::Infallible> {
//!     Ok(Response::new("Hello, World!\n".to_string()))
//! }
//!
//! fn main() -> anyhow::Result<()> {
//!     // The sockets systemd passed (LISTEN_FDS), or 127.0.0.1:9000 without
//!     // systemd. Call this before the runtime starts any thread.
//!     let listeners = myflask::server::listeners(&[], &[], &Default::default())?;
//!     let app = App::from_hyper(hyper::service::service_fn(hello));
//!     let rt = tokio::runtime::Runtime::new()?;
//!     rt.block_on(Server::new(ServerConfig::default(), listeners).serve(app))
//! }
//! ```
//!
//! Data flows one way: socket -> records -> request -> service -> response
//! -> records -> socket. Dependencies point down:
//! - `server` decides what each listener speaks and runs the lifecycle; it
//!   uses the two transports, `fastcgi` and `http_server`;
//! - the transports know nothing of each other, of systemd, or of the
//!   built-in application: they meet any application at `service` (the
//!   [`App`] boundary), which also builds the server's own error
//!   responses, so both answer a failure alike;
//! - `systemd` takes sockets, speaks sd_notify and sets up logging, and
//!   knows no protocol;
//! - `app`, the built-in application, is an ordinary service.

mod accept;
pub mod access;
pub mod addr;
pub mod allow;
pub mod app;
pub mod appname;
pub mod body;
pub mod cli;
pub mod deadline;
pub mod diagnose;
pub mod exposition;
pub mod fastcgi;
mod http_drain;
pub mod http_server;
pub mod inflight;
pub mod listen_queue;
pub mod manage;
pub mod metrics;
pub mod mount;
#[cfg(all(feature = "libm-free", target_os = "linux"))]
mod nolibm;
pub mod package_version;
pub mod reload;
pub mod server;
pub mod service;
pub mod stats;
pub mod systemd;
pub mod trace;

pub use body::{Body, BodyError};
pub use fastcgi::params::Params;
pub use server::{Server, ServerConfig};
pub use service::{App, BoxError, ResponseBody, ServerError, error_response};
pub use stats::Stats;
pub use trace::TraceContext;

use std::sync::Arc;

/// The protocol a listener speaks, and so the one that carried a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// FastCGI responder (nginx `fastcgi_pass`).
    FastCgi,
    /// HTTP/1.1 (development, health checks, nginx `proxy_pass`).
    Http,
}

impl Transport {
    /// The name people read: `FastCGI` or `HTTP`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::FastCgi => "FastCGI",
            Transport::Http => "HTTP",
        }
    }

    /// The access log's `TRANSPORT` field: `fastcgi` or `http` (journal
    /// queries match it exactly, so it stays lowercase).
    pub fn log_name(&self) -> &'static str {
        match self {
            Transport::FastCgi => "fastcgi",
            Transport::Http => "http",
        }
    }
}

/// Where a connection came from; both transports copy it into each of its
/// requests' [`RequestInfo`].
#[derive(Debug, Clone)]
pub struct ConnMeta {
    /// The listener, e.g. `unix:/run/myflask/fcgi.sock`.
    pub listener: Arc<str>,
    /// Whether the listening socket was inherited from systemd.
    pub inherited: bool,
}

/// Request extension: how and where a request arrived, and over FastCGI
/// every CGI param. One extension, not one per item: each costs the request
/// an allocation and a hash-map insert, and its drop, on the hot path.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub transport: Transport,
    /// The listener, e.g. `unix:/run/myflask/fcgi.sock`.
    pub listener: Arc<str>,
    /// Whether the listening socket was inherited from systemd.
    pub inherited: bool,
    /// Server-wide request number (also in the access log).
    pub request_id: u64,
    /// The client as the web server saw it (`REMOTE_ADDR:REMOTE_PORT`), or
    /// the socket peer over HTTP.
    pub peer: Option<String>,
    /// From `HTTPS` / `REQUEST_SCHEME` over FastCGI; `http` over HTTP.
    pub scheme: http::uri::Scheme,
    /// FastCGI only: every CGI param as received, in order, repeated names
    /// included (what nginx sends: Debian's `fastcgi_params` adds
    /// SCRIPT_NAME, DOCUMENT_ROOT, ... to the ones the package's snippet
    /// lists).
    pub params: Option<Params>,
    /// The path prefix the app is mounted under (`--mount-prefix`, e.g.
    /// `/hello`), WSGI's `SCRIPT_NAME`: already stripped from the request's
    /// URI, so a request for `/hello/x` reaches the app as `/x`. Prepend it
    /// to build links. `None` when the app is not mounted under a prefix.
    pub mount_prefix: Option<Arc<str>>,
    /// The request's W3C trace context: its `traceparent` (the header over
    /// HTTP; nginx passes it as the `HTTP_TRACEPARENT` param over FastCGI)
    /// when it carries exactly one valid value, `None` otherwise (a
    /// malformed one is ignored). Its ids are the `TRACE_ID` / `SPAN_ID`
    /// fields of the request's journal entries, so an app that calls
    /// another service can pass the trace on. Filled in by the server's
    /// management layer ([`manage::wrap`], which `myflask serve` and
    /// [`cli::main_with`] put around every app); the same value is also
    /// the [`TraceContext`] request extension.
    pub trace: Option<TraceContext>,
}
