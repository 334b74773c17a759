//! The connection engine's known defects (issue 12, item 6), each pinned by
//! a test against real sockets: STDIN that disagrees with CONTENT_LENGTH,
//! a handler that streams its response while still reading its body, and
//! BYTES_OUT counting what reached the socket.

mod common;

use common::Server;
use common::raw::{self, Conn, within};
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use myflask::fastcgi::connection::{self, ConnConfig, Engine};
use myflask::fastcgi::record;
use myflask::{App, Body, BodyError, ConnMeta, Stats};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Polls the server's log (bounded) until it contains `needle`.
fn wait_log(srv: &Server, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = srv.stderr();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A POST to `/echo` declaring `declared` bytes (None: no CONTENT_LENGTH)
/// whose STDIN carries `body` in one record.
fn post(id: u16, declared: Option<usize>, body: &[u8]) -> Vec<u8> {
    let mut b = raw::begin(id, true);
    let params = raw::std_params("POST", "/echo", declared, &[]);
    b.extend_from_slice(&raw::stream(record::PARAMS, id, &params));
    b.extend_from_slice(&raw::stream(record::STDIN, id, body));
    b.to_vec()
}

#[tokio::test]
async fn stdin_that_disagrees_with_content_length_is_a_400_naming_both_figures() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    // (declared, sent, the log line that must name both figures)
    let cases: [(usize, &[u8], &str); 3] = [
        (
            0,
            b"data",
            "STDIN carried more than the CONTENT_LENGTH of 0 bytes (4 so far)",
        ),
        (
            5,
            b"hello, world",
            "STDIN carried more than the CONTENT_LENGTH of 5 bytes (12 so far)",
        ),
        (
            5,
            b"hel",
            "STDIN ended after 3 bytes but CONTENT_LENGTH declared 5",
        ),
    ];
    for (i, (declared, sent, line)) in cases.iter().enumerate() {
        let id = i as u16 + 1;
        c.send(&post(id, Some(*declared), sent)).await;
        let h = within("reply", c.reply(id)).await.http();
        assert_eq!(
            h.status,
            400,
            "declared {declared}, sent {}: {}",
            sent.len(),
            h.text()
        );
        assert!(h.text().contains("CONTENT_LENGTH"), "{}", h.text());
        wait_log(&srv, line);
    }
    // The connection still serves: an honest request on it is echoed.
    c.send(&post(9, Some(5), b"hello")).await;
    let h = within("reply", c.reply(9)).await.http();
    assert_eq!((h.status, h.body.as_slice()), (200, &b"hello"[..]));
    // And the access log carries the 400s.
    let log = srv.stderr();
    assert_eq!(log.matches("POST /echo 400").count(), 3, "{log}");
}

/// A handler that streams its request body back as it reads it.
fn streaming_echo() -> App {
    App::from_hyper(hyper::service::service_fn(
        |req: Request<Body>| async move {
            let body = req.into_body();
            let frames = futures_util::stream::unfold(body, |mut b| async move {
                match b.frame().await {
                    Some(Ok(f)) => Some((Ok::<_, BodyError>(f), b)),
                    Some(Err(e)) => Some((Err(e), b)),
                    None => None,
                }
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
        },
    ))
}

/// A FastCGI engine serving `app` in this process on a unix socket in a
/// temporary directory (every connection accepted, each served by
/// `connection::serve`).
struct InProcess {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

async fn serve_in_process(app: App, stall: Duration) -> InProcess {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().join("engine.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let engine = Arc::new(Engine {
        app,
        config: ConnConfig {
            max_requests_per_conn: 16,
            max_params_bytes: 64 * 1024,
            max_body_bytes: 32 << 20,
            stall_timeout: stall,
            idle_timeout: Duration::from_secs(60),
            max_conns: 16,
            max_requests: 64,
        },
        stats: Arc::new(Stats::new()),
        shutdown: tokio_util::sync::CancellationToken::new(),
    });
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let meta = ConnMeta {
                listener: Arc::from("test"),
                inherited: false,
            };
            let (r, w) = s.into_split();
            tokio::spawn(connection::serve(r, w, engine.clone(), meta));
        }
    });
    InProcess { _dir: dir, path }
}

/// What this process logs (the in-process engine's lines), kept for the
/// tests to search.
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut l) = LOG.lock() {
            l.extend_from_slice(b);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .try_init();
}

fn logged() -> String {
    LOG.lock()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_handler_streaming_its_answer_while_reading_its_body_fails_fast_with_500() {
    // The stall timeout is what the request waited for before; it is set
    // far above the bound of this test.
    capture_logs();
    let srv = serve_in_process(streaming_echo(), Duration::from_secs(60)).await;
    let mut c = Conn::connect(&srv.path).await;
    // Small enough for the response to be held whole: served.
    c.send(&post(1, Some(1000), &[7u8; 1000])).await;
    let h = within("small reply", c.reply(1)).await.http();
    assert_eq!((h.status, h.body.len()), (200, 1000));
    // 1 MiB: the handler's answer outgrows what is held before the body is
    // complete, long before the body is.
    let body = vec![9u8; 1 << 20];
    let t0 = Instant::now();
    c.send(&post(2, Some(body.len()), &body)).await;
    let h = within("large reply", c.reply(2)).await.http();
    assert_eq!(h.status, 500, "{}", h.text());
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    let log = logged();
    assert!(
        log.contains("before reading its whole request body"),
        "no log line says why:\n{log}"
    );
    // The connection goes on serving.
    c.send(&post(3, Some(5), b"hello")).await;
    let h = within("reply after", c.reply(3)).await.http();
    assert_eq!((h.status, h.body.as_slice()), (200, &b"hello"[..]));
}

/// The BYTES_OUT of the first access-log line for `what` ("POST /echo 200").
fn logged_bytes(log: &str, what: &str) -> Option<u64> {
    let rest = &log[log.find(what)? + what.len()..];
    rest.trim_start().split('B').next()?.parse().ok()
}

/// PUTs a 4 MiB echo on a connection of its own, reads 1 KiB of the
/// answer and leaves.
async fn echo_4_mib_and_leave_after_1_kib(srv: &Server) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(&srv.sock)
        .await
        .expect("connect");
    let req = raw::request(2, true, "PUT", "/echo", &[], &vec![b'x'; 4 << 20]);
    within("send", s.write_all(&req))
        .await
        .expect("request sent");
    let mut some = [0u8; 1024];
    within("read", s.read_exact(&mut some))
        .await
        .expect("1 KiB of answer");
}

#[tokio::test]
async fn bytes_out_counts_what_reached_the_socket_not_what_was_queued() {
    let srv = Server::start(&[]);
    // A whole response: every body byte is counted.
    let mut c = Conn::connect(&srv.sock).await;
    c.send(&post(1, Some(5), b"hello")).await;
    let h = within("reply", c.reply(1)).await.http();
    assert_eq!(h.status, 200);
    let log = wait_log(&srv, "POST /echo 200");
    assert_eq!(logged_bytes(&log, "POST /echo 200"), Some(5), "{log}");
    c.finish().await;
    // A 4 MiB echo to a client that reads 1 KiB of it and leaves: what
    // the log reports is what the socket took, far less than 4 MiB.
    echo_4_mib_and_leave_after_1_kib(&srv).await;
    let log = wait_log(&srv, "PUT /echo 200");
    let n = logged_bytes(&log, "PUT /echo 200").expect("a byte count");
    eprintln!("BYTES_OUT {n}");
    assert!(
        n < 1 << 20,
        "BYTES_OUT {n} for a client that left after 1 KiB:\n{log}"
    );
}

/// `myflask_response_body_bytes_total{transport="fastcgi"}` of a scrape.
async fn metrics_body_bytes(srv: &Server) -> u64 {
    let h = raw::get(&srv.sock, "/metrics").await;
    assert_eq!(h.status, 200, "{}", h.text());
    let text = h.text();
    let line = text
        .lines()
        .find(|l| l.starts_with("myflask_response_body_bytes_total{transport=\"fastcgi\"}"))
        .unwrap_or_else(|| panic!("no FastCGI body bytes in:\n{text}"));
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not a count: {line}"))
}

/// The metrics' body bytes with the access log off (the writer sums them
/// as they reach the socket, no per-request record): a whole answer is
/// counted whole, one its client left after 1 KiB far from whole.
#[tokio::test]
async fn metrics_count_body_bytes_written_with_the_access_log_off() {
    let srv = Server::start(&[
        "--metrics-path",
        "/metrics",
        "--log-level",
        "info,myflask::access=off",
    ]);
    let before = metrics_body_bytes(&srv).await;
    let body = raw::noise(300_000, 7);
    let h = raw::once(&srv.sock, "POST", "/echo", &[], &body).await;
    raw::assert_same(&h.body, &body, "echo");
    // Counted once written, which races with the next scrape: wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut grown = metrics_body_bytes(&srv).await - before;
    while grown < 300_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        grown = metrics_body_bytes(&srv).await - before;
    }
    // The scrapes' own bodies are counted too (a few KiB each).
    assert!(
        (300_000..400_000).contains(&grown),
        "a whole 300,000-byte echo grew the count by {grown}"
    );
    let before = metrics_body_bytes(&srv).await;
    echo_4_mib_and_leave_after_1_kib(&srv).await;
    raw::wait_status(&srv.sock, "active_connections", 1, Duration::from_secs(10)).await;
    let grown = metrics_body_bytes(&srv).await - before;
    eprintln!("body bytes counted for a 4 MiB echo left after 1 KiB: {grown}");
    assert!(
        grown < 1 << 20,
        "{grown} counted for a client that left after 1 KiB"
    );
}
