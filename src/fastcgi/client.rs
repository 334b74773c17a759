//! A small FastCGI client on the project's own codec: `myflask request`,
//! the integration tests and the benchmark's load generator use it.
//!
//! It sends what nginx sends (BEGIN_REQUEST, one PARAMS stream shaped like
//! Debian's `fastcgi_params`, STDIN in 32 KiB records) and reads STDOUT and
//! STDERR until END_REQUEST.

use super::params::encode_pair;
use super::record::{self, EndRequest};
use crate::addr::ListenAddr;
use bytes::{Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A request to send.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// Path and query, e.g. `/status?full`.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Extra params sent as they are (after the standard ones).
    pub params: Vec<(String, String)>,
}

/// A response as received.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub stderr: Vec<u8>,
    pub app_status: u32,
    pub protocol_status: u8,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Any stream the client can talk over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects to `addr`.
pub async fn connect(addr: &ListenAddr) -> io::Result<Box<dyn Stream>> {
    Ok(match addr {
        ListenAddr::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
        ListenAddr::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
    })
}

/// Appends the records of one request: BEGIN, PARAMS, empty PARAMS, STDIN
/// in 32 KiB records, empty STDIN.
pub fn encode_request(buf: &mut BytesMut, id: u16, keep_conn: bool, req: &Request) {
    let flags = if keep_conn { record::KEEP_CONN } else { 0 };
    record::put_begin_request(buf, id, record::ROLE_RESPONDER, flags);
    let mut p = BytesMut::with_capacity(512);
    let (path, query) = match req.uri.split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.uri.as_str(), ""),
    };
    let len = req.body.len().to_string();
    let std: [(&str, &str); 12] = [
        ("QUERY_STRING", query),
        ("REQUEST_METHOD", &req.method),
        (
            "CONTENT_LENGTH",
            if req.body.is_empty() { "" } else { &len },
        ),
        ("SCRIPT_NAME", path),
        ("REQUEST_URI", &req.uri),
        ("DOCUMENT_URI", path),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "myflask-client"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("SERVER_NAME", "localhost"),
    ];
    for (k, v) in std {
        encode_pair(&mut p, k.as_bytes(), v.as_bytes());
    }
    for (k, v) in &req.headers {
        if k.eq_ignore_ascii_case("content-type") {
            encode_pair(&mut p, b"CONTENT_TYPE", v.as_bytes());
            continue;
        }
        let name = format!("HTTP_{}", k.to_ascii_uppercase().replace('-', "_"));
        encode_pair(&mut p, name.as_bytes(), v.as_bytes());
    }
    if !req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        encode_pair(&mut p, b"HTTP_HOST", b"localhost");
    }
    for (k, v) in &req.params {
        encode_pair(&mut p, k.as_bytes(), v.as_bytes());
    }
    record::put_stream(buf, record::PARAMS, id, &p);
    record::put_stream_end(buf, record::PARAMS, id);
    for chunk in req.body.chunks(32 * 1024) {
        record::put_record(buf, record::STDIN, id, chunk);
    }
    record::put_stream_end(buf, record::STDIN, id);
}

/// A parsed CGI response: status, headers in order, body.
pub type CgiResponse = (u16, Vec<(String, String)>, Vec<u8>);

/// Splits a CGI response (`Status:` + headers + blank line + body).
pub fn parse_cgi(stdout: &[u8]) -> io::Result<CgiResponse> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let (head_end, sep) = match find(stdout, b"\r\n\r\n") {
        Some(i) => (i, 4),
        None => find(stdout, b"\n\n")
            .map(|i| (i, 2))
            .ok_or_else(|| bad("response has no end of headers"))?,
    };
    let head = std::str::from_utf8(&stdout[..head_end]).map_err(|_| bad("header is not UTF-8"))?;
    let mut status = 200;
    let mut headers = Vec::new();
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            return Err(bad("header line without a colon"));
        };
        let v = v.trim().to_string();
        if k.eq_ignore_ascii_case("status") {
            status = v
                .get(..3)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("bad Status header"))?;
        } else {
            headers.push((k.to_string(), v));
        }
    }
    Ok((status, headers, stdout[head_end + sep..].to_vec()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads records for request `id` until its END_REQUEST. Records of other
/// ids are an error here (this client does not multiplex).
pub async fn read_response<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    id: u16,
    buf: &mut BytesMut,
) -> io::Result<Response> {
    let mut stdout = Vec::new();
    let mut resp = Response::default();
    loop {
        while let Some(rec) = record::decode(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        {
            if rec.request_id != id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "record type {} for unexpected id {}",
                        rec.kind, rec.request_id
                    ),
                ));
            }
            match rec.kind {
                record::STDOUT => stdout.extend_from_slice(&rec.content),
                record::STDERR => resp.stderr.extend_from_slice(&rec.content),
                record::END_REQUEST => {
                    let end = EndRequest::parse(&rec.content).ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "short END_REQUEST")
                    })?;
                    resp.app_status = end.app_status;
                    resp.protocol_status = end.protocol_status;
                    if end.protocol_status == record::REQUEST_COMPLETE && !stdout.is_empty() {
                        let (status, headers, body) = parse_cgi(&stdout)?;
                        resp.status = status;
                        resp.headers = headers;
                        resp.body = body;
                    }
                    return Ok(resp);
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected record type {other}"),
                    ));
                }
            }
        }
        buf.reserve(64 * 1024);
        if s.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before END_REQUEST",
            ));
        }
    }
}

/// One request on a new connection (no KEEP_CONN).
///
/// Writes and reads at the same time: a server that answers while the body
/// is still arriving (Go's net/http/fcgi does) would otherwise deadlock
/// against a client that sends its whole body first.
pub async fn request_once(addr: &ListenAddr, req: &Request) -> io::Result<Response> {
    request_on(connect(addr).await?, req).await
}

/// One request on a connection made by [`connect`], which it then drops
/// (no KEEP_CONN). Apart from `request_once` so that a caller can tell a
/// failed connect from a failed exchange.
pub async fn request_on(s: Box<dyn Stream>, req: &Request) -> io::Result<Response> {
    let (mut rd, mut wr) = tokio::io::split(s);
    let mut out = BytesMut::new();
    encode_request(&mut out, 1, false, req);
    let write = async move {
        // A server may answer early and close; what it said still counts.
        let _ = wr.write_all(&out).await;
        wr
    };
    let read = async move {
        let mut buf = BytesMut::new();
        read_response(&mut rd, 1, &mut buf).await
    };
    let (_wr, resp) = tokio::join!(write, read);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cgi_forms() {
        let (s, h, b) =
            parse_cgi(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope").unwrap();
        assert_eq!(s, 404);
        assert_eq!(h, vec![("Content-Type".into(), "text/plain".into())]);
        assert_eq!(b, b"nope");
        let (s, _, b) = parse_cgi(b"Content-Type: x\n\nbody").unwrap();
        assert_eq!(s, 200);
        assert_eq!(b, b"body");
        assert!(parse_cgi(b"no end").is_err());
    }
}
