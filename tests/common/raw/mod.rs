//! A FastCGI client that works record by record, so tests can send exactly
//! the bytes they mean (odd padding, straddling pairs, interleaved ids,
//! garbage) and check every record that comes back. It enforces the
//! invariants of the protocol on everything it reads: no record for an id
//! the client did not begin, nothing for an id after its END_REQUEST
//! (exactly one END_REQUEST per request), nothing after the end of STDOUT,
//! and no `Transfer-Encoding` in any CGI response head.
//!
//! Here: the bound of every wait and the one-call helpers (a request on a
//! fresh connection, `/healthz`, `/status`).

mod build;
mod conn;
mod reply;

// Today's `raw::` names for the helpers `measure` owns.
#[allow(unused_imports)]
pub use super::measure::{assert_same, fnv, noise, proc_kib};
#[allow(unused_imports)]
pub use build::{
    begin, head, pairs, record_padded, record_padded_with, request, std_params, stream,
};
pub use conn::Conn;
pub use reply::{Http, Reply};

use bytes::Bytes;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bound of every single wait in these helpers.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `f` for at most [`WAIT`]; panics naming `what` past it.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

/// One request on a fresh connection without KEEP_CONN; also checks
/// that the server then closes the connection cleanly.
pub async fn once(
    path: &Path,
    method: &str,
    uri: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Http {
    let mut c = Conn::connect(path).await;
    let h = c.roundtrip(1, false, method, uri, extra, body).await;
    c.eof()
        .await
        .unwrap_or_else(|e| panic!("connection did not end cleanly after {uri}: {e}"));
    h
}

pub async fn get(path: &Path, uri: &str) -> Http {
    once(path, "GET", uri, &[], b"").await
}

/// `GET /healthz` answers `200 ok`.
pub async fn healthz(path: &Path) {
    let h = get(path, "/healthz").await;
    assert_eq!(h.status, 200, "healthz: {}", h.text());
    assert_eq!(h.body, b"ok\n");
}

/// `GET /status` as JSON.
pub async fn status(path: &Path) -> serde_json::Value {
    let h = get(path, "/status").await;
    assert_eq!(h.status, 200);
    h.json()
}

/// Polls `/status` until `field` equals `want` (the `/status` request
/// itself counts as one active request and one active connection);
/// panics with the last value after `limit`.
pub async fn wait_status(path: &Path, field: &str, want: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let v = status(path).await;
        let got = v[field].as_u64();
        if got == Some(want) {
            return;
        }
        if Instant::now() > deadline {
            panic!("/status {field} is {got:?}, want {want}, after {limit:?}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
/// `Bytes` from a slice (for the codec's API).
pub fn bytes(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}
