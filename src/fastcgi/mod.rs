//! FastCGI 1.0, responder role, written in-house (no async server crate
//! handles multiplexing, straddling params and streaming bodies correctly).
//!
//! `record` is the wire format, `params` the name-value pairs, `request` and
//! `response` the CGI <-> http mapping, `connection` one connection's
//! engine, and `client` the small client used by `myflask request`, the
//! tests and the benchmark's load generator. Nothing here knows of systemd.

pub mod client;
pub mod connection;
#[doc(hidden)]
pub mod fuzz;
pub mod params;
pub mod record;
pub mod request;
pub mod response;
