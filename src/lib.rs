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
//!     let listeners = myflask::systemd::listen::listeners(&[], &[], &Default::default())?;
//!     let app = App::from_hyper(hyper::service::service_fn(hello));
//!     let rt = tokio::runtime::Runtime::new()?;
//!     rt.block_on(Server::new(ServerConfig::default(), listeners).serve(app))
//! }
//! ```
//!
//! Data flows one way: socket -> records -> request -> service -> response
//! -> records -> socket. The protocol code (`fastcgi`) knows nothing of
//! systemd, the systemd code (`systemd`) nothing of FastCGI, and
//! the built-in application (`app`) neither.

pub mod access;
pub mod addr;
pub mod app;
pub mod body;
pub mod cli;
pub mod deadline;
pub mod exposition;
pub mod fastcgi;
pub mod http_server;
pub mod inflight;
pub mod listen_queue;
pub mod manage;
pub mod metrics;
#[cfg(all(feature = "libm-free", target_os = "linux"))]
mod nolibm;
pub mod server;
pub mod service;
pub mod stats;
pub mod systemd;
pub mod trace;

pub use body::{Body, BodyError};
pub use fastcgi::params::Params;
pub use server::{Server, ServerConfig};
pub use service::{App, BoxError, ResponseBody};
pub use stats::Stats;
pub use trace::TraceContext;

use std::sync::Arc;

/// Which protocol carried a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    FastCgi,
    Http,
}

impl Transport {
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::FastCgi => "FastCGI",
            Transport::Http => "HTTP",
        }
    }
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
}
