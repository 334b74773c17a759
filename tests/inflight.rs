//! The phase of each request in `/status?full`, against the built binary
//! over FastCGI and over HTTP (unix sockets, whose small buffers let a
//! client hold a response back): a paced upload is "reading body" until
//! its last byte arrives, `GET /sleep?ms=N` is "in handler", and a large
//! response its client does not read is "writing"; each request leaves the
//! list once it is over.

mod common;

use common::{Server, fcgi_get, raw, read_all, wait_none_in_flight, wait_phase};
use myflask::fastcgi::record;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

fn connect(path: &Path) -> UnixStream {
    let c = UnixStream::connect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    c
}

/// `GET /sleep?ms=2000` on a thread (over FastCGI).
fn sleeper(s: &Server) -> std::thread::JoinHandle<u16> {
    let addr = s.addr();
    std::thread::spawn(move || fcgi_get(&addr, "/sleep?ms=2000").status)
}

/// Connects to the HTTP socket `path` and sends the head of a `POST uri`
/// with a `len`-byte body, which the test sends itself.
fn http_post_head(path: &Path, uri: &str, len: usize) -> UnixStream {
    let mut c = connect(path);
    let head = format!(
        "POST {uri} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n"
    );
    c.write_all(head.as_bytes()).expect("head");
    c
}

/// The request for `uri` is "writing", and stays so while `client` reads
/// nothing of its response; once the client goes, it leaves the list.
fn writing_until_the_client_goes(s: &Server, uri: &str, client: UnixStream) {
    wait_phase(&s.addr(), uri, "writing");
    std::thread::sleep(Duration::from_millis(300));
    wait_phase(&s.addr(), uri, "writing");
    drop(client);
    wait_none_in_flight(&s.addr());
}

const BODY: usize = 64 * 1024;
/// Large enough that the writer's queue and the socket buffers cannot
/// hold all of it.
const ECHO: usize = 4 * 1024 * 1024;

#[test]
fn phases_over_fastcgi() {
    let s = Server::start(&[]);
    let mut up = connect(&s.sock);
    let uri = "/upload?over=fastcgi";
    up.write_all(&raw::head(1, false, "POST", uri, &[], Some(BODY)))
        .expect("head");
    up.write_all(&raw::record_padded(record::STDIN, 1, &[7u8; 1024], 0))
        .expect("first KiB");
    let e = wait_phase(&s.addr(), uri, "reading body");
    assert_eq!(e["transport"], "FastCGI");

    let slow = sleeper(&s);
    wait_phase(&s.addr(), "/sleep?ms=2000", "in handler");
    std::thread::sleep(Duration::from_millis(400));
    let e = wait_phase(&s.addr(), "/sleep?ms=2000", "in handler");
    assert!(
        e["age_ms"].as_u64() >= Some(400),
        "listed with its age: {e}"
    );
    // Still waiting for the rest of its body, however long that takes.
    wait_phase(&s.addr(), uri, "reading body");
    up.write_all(&raw::stream(record::STDIN, 1, &[7u8; BODY - 1024]))
        .expect("the rest");
    let reply = String::from_utf8_lossy(&read_all(&mut up)).into_owned();
    assert!(reply.contains(&format!("\"bytes\": {BODY}")), "{reply}");
    assert_eq!(slow.join().expect("sleeper"), 200);

    let mut echo = connect(&s.sock);
    let body = vec![1u8; ECHO];
    let uri = "/echo?over=fastcgi";
    echo.write_all(&raw::request(1, false, "POST", uri, &[], &body))
        .expect("echo request");
    // Not read: the response backs up.
    writing_until_the_client_goes(&s, uri, echo);
}

/// A response the app has handed over whole but whose last bytes still
/// wait for the socket (its client reads nothing) stays listed "writing"
/// until they are written: it is in flight until then.
#[test]
fn a_response_stays_listed_until_its_last_byte_is_written() {
    let s = Server::start(&[]);
    // Less than the writer's queue holds: the app's body ends at once.
    let body = vec![3u8; 600 * 1024];
    let uri = "/echo?whole=1";
    let mut echo = connect(&s.sock);
    echo.write_all(&raw::request(1, false, "POST", uri, &[], &body))
        .expect("echo request");
    wait_phase(&s.addr(), uri, "writing");
    std::thread::sleep(Duration::from_millis(300));
    wait_phase(&s.addr(), uri, "writing");
    let reply = read_all(&mut echo);
    assert!(reply.len() > body.len(), "{} bytes", reply.len());
    wait_none_in_flight(&s.addr());
}

#[test]
fn phases_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = dir.path().join("http.sock");
    let s = Server::start(&["--http", &format!("unix:{}", http.display())]);
    let uri = "/upload?over=http";
    let mut up = http_post_head(&http, uri, BODY);
    up.write_all(&[7u8; 1024]).expect("first KiB");
    let e = wait_phase(&s.addr(), uri, "reading body");
    assert_eq!(e["transport"], "HTTP");

    let slow = sleeper(&s);
    wait_phase(&s.addr(), "/sleep?ms=2000", "in handler");
    wait_phase(&s.addr(), uri, "reading body");
    up.write_all(&[7u8; BODY - 1024]).expect("the rest");
    let reply = String::from_utf8_lossy(&read_all(&mut up)).into_owned();
    assert!(reply.contains(&format!("\"bytes\": {BODY}")), "{reply}");
    assert_eq!(slow.join().expect("sleeper"), 200);

    let uri = "/echo?over=http";
    let mut echo = http_post_head(&http, uri, ECHO);
    echo.write_all(&vec![1u8; ECHO]).expect("body");
    writing_until_the_client_goes(&s, uri, echo);
}
