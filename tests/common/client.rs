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

/// One HTTP/1.0 request on a new TCP connection (the server closes it
/// after the answer, so no chunking to undo); (status, head as text,
/// body). Panics on a transport error or an answer without a head.
pub fn http_once(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use std::io::Write;
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let head = format!(
        "{method} {target} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(body).expect("send body");
    let raw = read_all(s);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head, raw[split + 4..].to_vec())
}
