//! Bench peer: the FastCGI floor, the least work a FastCGI responder can
//! do. Not an application server: it answers every request with the same
//! canned "Hello, World!\n" response the moment the request's STDIN stream
//! ends, parsing nothing but record headers (no params, no HTTP request,
//! no routing), and its reply is byte for byte what myflask sends for
//! `GET /`. Behind nginx with the same `fastcgi_pass` configuration as the
//! real FastCGI peers, the gap between it and hyper behind `proxy_pass` is
//! what nginx's FastCGI path costs against its HTTP path on this machine,
//! whatever the server does; the gap between it and myflask is what
//! myflask's own work costs. Same runtime as the Rust peers (tokio,
//! multi-threaded, one task per connection).
//! Usage: bench-fastcgi-floor UNIX_SOCKET_PATH
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const HEAD: &[u8] = b"Status: 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 14\r\n\r\n";
const BODY: &[u8] = b"Hello, World!\n";

/// One STDOUT record of `data`, padded to a multiple of 8 as myflask pads.
fn stdout(out: &mut Vec<u8>, id: [u8; 2], data: &[u8]) {
    let [lh, ll] = (data.len() as u16).to_be_bytes();
    let pad = (8 - data.len() % 8) % 8;
    out.extend_from_slice(&[1, 6, id[0], id[1], lh, ll, pad as u8, 0]);
    out.extend_from_slice(data);
    out.extend_from_slice(&[0; 8][..pad]);
}

/// What myflask sends for `GET /`, for request `id`: the head and the body
/// as one STDOUT record each, the empty STDOUT, END_REQUEST.
fn response(out: &mut Vec<u8>, id: u16) {
    let id = id.to_be_bytes();
    stdout(out, id, HEAD);
    stdout(out, id, BODY);
    out.extend_from_slice(&[1, 6, id[0], id[1], 0, 0, 0, 0]);
    out.extend_from_slice(&[1, 3, id[0], id[1], 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
}

async fn conn(mut s: UnixStream) {
    let mut buf = vec![0u8; 16 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out = Vec::with_capacity(1024);
    let mut keep = true;
    loop {
        if start == end {
            start = 0;
            end = 0;
        } else if buf.len() - end < 8 + 65535 + 255 && start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if buf.len() - end < 8 + 65535 + 255 {
            buf.resize(end + 8 + 65535 + 255, 0);
        }
        match s.read(&mut buf[end..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => end += n,
        }
        while end - start >= 8 {
            let h = &buf[start..start + 8];
            let (kind, id) = (h[1], u16::from_be_bytes([h[2], h[3]]));
            let total = 8 + u16::from_be_bytes([h[4], h[5]]) as usize + h[6] as usize;
            if end - start < total {
                break;
            }
            if kind == 1 {
                // BEGIN_REQUEST: flags byte, bit 0 = keep the connection.
                keep = buf.get(start + 10).is_some_and(|f| f & 1 == 1);
            } else if kind == 5 && total == 8 {
                response(&mut out, id);
            }
            start += total;
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
            if !keep {
                return;
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: bench-fastcgi-floor SOCKET");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(conn(s));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}
