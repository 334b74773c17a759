//! Whole requests through ready-made clients: the project's FastCGI client
//! (one request a connection) and raw HTTP/1.1 over a unix socket. For
//! record-level control, see [`super::raw`].

use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// One FastCGI request on a new connection through the project's client,
/// bounded by `limit`.
pub fn fcgi_request(
    addr: &myflask::addr::ListenAddr,
    req: &myflask::fastcgi::client::Request,
    limit: Duration,
) -> std::io::Result<myflask::fastcgi::client::Response> {
    current_thread_runtime().block_on(async {
        tokio::time::timeout(limit, myflask::fastcgi::client::request_once(addr, req))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {limit:?}"),
                ))
            })
    })
}

/// A single-threaded tokio runtime with I/O and timers, for a synchronous
/// test that drives async clients with `block_on`.
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `GET uri` over FastCGI; panics on a transport error.
pub fn fcgi_get(addr: &myflask::addr::ListenAddr, uri: &str) -> myflask::fastcgi::client::Response {
    let req = myflask::fastcgi::client::Request {
        method: "GET".into(),
        uri: uri.into(),
        ..Default::default()
    };
    fcgi_request(addr, &req, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("FastCGI GET {uri} on {addr}: {e}"))
}

/// Sends `request` (raw HTTP/1.1, should say `Connection: close`) over a
/// unix socket and returns everything the server answered.
pub fn http_over_unix(path: &Path, request: &str) -> String {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    String::from_utf8_lossy(&read_all(s)).into_owned()
}

pub fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}
