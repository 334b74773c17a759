//! The library API in-process: an axum `Router` served unchanged through
//! `App::from_tower`, a hyper `service_fn` through `App::from_hyper`, on a
//! socket bound with `systemd::listen::bind`, talked to over FastCGI.

mod common;

use axum::Router;
use axum::extract::Extension;
use axum::routing::{get, post};
use bytes::Bytes;
use common::fcgi_request;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use myflask::addr::ListenAddr;
use myflask::fastcgi::client;
use myflask::systemd::listen::{self, BindOptions};
use myflask::{App, RequestInfo, Server, ServerConfig, Transport};
use std::convert::Infallible;
use std::time::{Duration, Instant};

/// A server running on its own runtime in this process.
struct Running {
    rt: tokio::runtime::Runtime,
    shutdown: tokio_util::sync::CancellationToken,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    addr: ListenAddr,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn serve(app: App) -> Running {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("app.sock");
    let addr = ListenAddr::Unix(path.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = listen::bind(&addr, Transport::FastCgi, &BindOptions::default()).unwrap();
    let server = Server::new(ServerConfig::default(), vec![listener]);
    let shutdown = server.shutdown_token();
    let served = rt.spawn(server.serve(app));
    Running {
        rt,
        shutdown,
        served: Some(served),
        addr,
        path,
        _dir: dir,
    }
}

impl Running {
    fn get(&self, uri: &str) -> client::Response {
        self.send("GET", uri, Bytes::new())
    }

    fn send(&self, method: &str, uri: &str, body: Bytes) -> client::Response {
        let req = client::Request {
            method: method.into(),
            uri: uri.into(),
            body,
            ..Default::default()
        };
        fcgi_request(&self.addr, &req, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{method} {uri}: {e}"))
    }

    /// Cancels the shutdown token and waits (bounded) for `serve` to return.
    fn stop(&mut self) -> Duration {
        let t0 = Instant::now();
        self.shutdown.cancel();
        let h = self.served.take().unwrap();
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .expect("serve did not return after the shutdown token was cancelled")
                .expect("serve task panicked")
                .expect("serve returned an error");
        });
        t0.elapsed()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `n` chunks of `size` bytes, `delay` apart, numbered so that a lost,
/// repeated or reordered chunk shows.
fn chunk(i: usize, size: usize) -> Bytes {
    let mut v = format!("<{i:05}>").into_bytes();
    v.extend((0..size.saturating_sub(7)).map(|j| b'a' + ((i + j) % 26) as u8));
    v.truncate(size);
    Bytes::from(v)
}

fn expected(n: usize, size: usize) -> Vec<u8> {
    (0..n).flat_map(|i| chunk(i, size).to_vec()).collect()
}

fn slow_stream(
    n: usize,
    size: usize,
    delay: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    stream::unfold(0usize, move |i| async move {
        if i == n {
            return None;
        }
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((Ok(chunk(i, size)), i + 1))
    })
}

fn router() -> Router {
    Router::new()
        .route("/hello", get(|| async { "Hello, World!\n" }))
        .route(
            "/panic",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("deliberate panic in a handler");
                }
                "unreachable"
            }),
        )
        .route(
            "/stream",
            get(|| async {
                axum::body::Body::from_stream(slow_stream(5, 10, Duration::from_millis(50)))
            }),
        )
        .route(
            "/big-stream",
            get(|| async {
                // 40 chunks of 3000 bytes and a 100 KiB one: records of at
                // most 65535 bytes, batches, and waits in between.
                let small = slow_stream(40, 3000, Duration::from_millis(2));
                let big = stream::once(async { Ok::<_, Infallible>(chunk(40, 100 * 1024)) });
                axum::body::Body::from_stream(futures_util::StreamExt::chain(small, big))
            }),
        )
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/cgi",
            get(|Extension(info): Extension<RequestInfo>| async move {
                let param = |n| info.params.as_ref().and_then(|p| p.get_str(n));
                format!(
                    "{} {} {}",
                    param("REMOTE_ADDR").unwrap_or("-"),
                    param("SERVER_SOFTWARE").unwrap_or("-"),
                    info.transport.as_str()
                )
            }),
        )
}

#[test]
fn axum_router_served_unchanged() {
    let mut s = serve(App::from_tower(router()));
    let r = s.get("/hello");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"Hello, World!\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("content-length"), Some("14"));

    let r = s.get("/nope");
    assert_eq!(r.status, 404);

    let body = Bytes::from(
        (0..300_000u32)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    let r = s.send("POST", "/echo", body.clone());
    assert_eq!(r.status, 200);
    assert!(r.body == body, "echo through axum differs");

    let r = s.get("/cgi");
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "127.0.0.1 myflask-client FastCGI"
    );
    s.stop();
}

#[test]
fn panicking_handler_gives_500_and_the_server_serves_on() {
    let mut s = serve(App::from_tower(router()));
    for _ in 0..3 {
        let r = s.get("/panic");
        assert_eq!(r.status, 500, "{r:?}");
        assert_eq!(r.protocol_status, 0);
        let r = s.get("/hello");
        assert_eq!(r.status, 200);
    }
    // Also on one keep-alive connection: the panic ends that request only.
    let statuses = s.rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut c = client::connect(&s.addr).await.unwrap();
        let mut out = Vec::new();
        for uri in ["/hello", "/panic", "/hello"] {
            let req = client::Request {
                method: "GET".into(),
                uri: uri.into(),
                ..Default::default()
            };
            let mut b = bytes::BytesMut::new();
            client::encode_request(&mut b, 1, true, &req);
            c.write_all(&b).await.unwrap();
            let mut buf = bytes::BytesMut::new();
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                client::read_response(&mut c, 1, &mut buf),
            )
            .await
            .unwrap()
            .unwrap();
            out.push(r.status);
        }
        out
    });
    assert_eq!(statuses, vec![200, 500, 200]);
    s.stop();
}

#[test]
fn hyper_service_fn() {
    let svc = hyper::service::service_fn(|req: Request<myflask::Body>| async move {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let body = req.into_body().collect().await?.to_bytes();
        let text = format!("{method} {path} {} bytes\n", body.len());
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        if path == "/teapot" {
            *resp.status_mut() = StatusCode::IM_A_TEAPOT;
        }
        Ok::<_, myflask::BodyError>(resp)
    });
    let mut s = serve(App::from_hyper(svc));
    let r = s.get("/x");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"GET /x 0 bytes\n"[..])
    );
    let r = s.send("PUT", "/teapot", Bytes::from(vec![7u8; 70_000]));
    assert_eq!(
        (r.status, r.body.as_slice()),
        (418, &b"PUT /teapot 70000 bytes\n"[..])
    );
    s.stop();
}

#[test]
fn hyper_service_error_is_a_500() {
    let svc = hyper::service::service_fn(|_req: Request<myflask::Body>| async move {
        Err::<Response<Full<Bytes>>, _>(std::io::Error::other("backend unavailable"))
    });
    let mut s = serve(App::from_hyper(svc));
    let r = s.get("/");
    assert_eq!(r.status, 500);
    s.stop();
}

#[test]
fn hyper_service_panicking_before_its_future_is_a_500_for_that_request_only() {
    // The panic comes from the closure itself, before it returns a future:
    // the server calls the service outside the request's task, and must
    // still answer this one request 500 and serve on.
    let svc = hyper::service::service_fn(|req: Request<myflask::Body>| {
        if req.uri().path() == "/sync-panic" {
            panic!("deliberate panic before the handler future exists");
        }
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n")))) }
    });
    // Over HTTP too, on one keep-alive connection.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("http.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(async {
        listen::bind(
            &ListenAddr::Unix(path.clone()),
            Transport::Http,
            &BindOptions::default(),
        )
    });
    let server = Server::new(ServerConfig::default(), vec![listener.unwrap()]);
    let token = server.shutdown_token();
    let served = rt.spawn(server.serve(App::from_hyper(svc)));
    let statuses = rt.block_on(async {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let c = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut c = tokio::io::BufReader::new(c);
        let mut out = Vec::new();
        for uri in ["/fine", "/sync-panic", "/fine"] {
            let req = format!("GET {uri} HTTP/1.1\r\nHost: x\r\n\r\n");
            c.get_mut().write_all(req.as_bytes()).await.unwrap();
            let mut status = String::new();
            c.read_line(&mut status).await.unwrap();
            let mut len = 0;
            loop {
                let mut line = String::new();
                c.read_line(&mut line).await.unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            c.read_exact(&mut body).await.unwrap();
            out.push(status.split(' ').nth(1).unwrap_or("").to_string());
        }
        out
    });
    assert_eq!(statuses, ["200", "500", "200"]);
    token.cancel();
    rt.block_on(served).unwrap().unwrap();

    let mut s = serve(App::from_hyper(svc));
    for _ in 0..3 {
        let r = s.get("/sync-panic");
        assert_eq!(r.status, 500, "{r:?}");
        assert_eq!(r.protocol_status, 0);
        let r = s.get("/fine");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    }
    s.stop();
}

#[test]
fn streamed_bodies_arrive_complete() {
    let mut s = serve(App::from_tower(router()));
    let t0 = Instant::now();
    let r = s.get("/stream");
    let took = t0.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected(5, 10));
    assert!(
        took >= Duration::from_millis(200),
        "a body with 4 waits of 50 ms came in {took:?}"
    );
    // A streamed body of unknown length has no Content-Length (and never a
    // Transfer-Encoding over FastCGI).
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("transfer-encoding"), None);

    let r = s.get("/big-stream");
    assert_eq!(r.status, 200);
    let mut want = expected(40, 3000);
    want.extend_from_slice(&chunk(40, 100 * 1024));
    assert_eq!(r.body.len(), want.len());
    assert!(r.body == want, "the 220 KiB streamed body is corrupted");
    s.stop();
}

#[test]
fn shutdown_token_makes_serve_return() {
    let mut s = serve(App::from_tower(router()));
    assert_eq!(s.get("/hello").status, 200);
    assert!(s.path.exists());
    let took = s.stop();
    assert!(
        took < Duration::from_secs(2),
        "serve took {took:?} to return"
    );
    assert!(!s.path.exists(), "the socket file was not removed");
    let req = client::Request {
        method: "GET".into(),
        uri: "/hello".into(),
        ..Default::default()
    };
    assert!(fcgi_request(&s.addr, &req, Duration::from_secs(2)).is_err());
}

#[test]
fn shutdown_token_waits_for_a_request_in_flight() {
    let mut s = serve(App::from_tower(router()));
    let addr = s.addr.clone();
    let client = std::thread::spawn(move || {
        let req = client::Request {
            method: "GET".into(),
            uri: "/stream".into(),
            ..Default::default()
        };
        fcgi_request(&addr, &req, Duration::from_secs(20))
    });
    std::thread::sleep(Duration::from_millis(80));
    let took = s.stop();
    let r = client.join().unwrap().expect("in-flight request lost");
    assert_eq!(r.body, expected(5, 10));
    assert!(
        took >= Duration::from_millis(50),
        "serve returned in {took:?}"
    );
}

/// Counts handler starts and drops of a handler future that never ends.
#[derive(Clone, Default)]
struct Hang {
    started: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

struct DropCount(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Hang {
    fn app(&self) -> App {
        let h = self.clone();
        App::from_hyper(hyper::service::service_fn(
            move |req: Request<myflask::Body>| {
                let h = h.clone();
                async move {
                    if req.uri().path() == "/hang" {
                        let _guard = DropCount(h.dropped.clone());
                        h.started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"fast"))))
                }
            },
        ))
    }

    async fn wait(&self, what: &std::sync::atomic::AtomicUsize, n: usize) {
        let t = Instant::now();
        while what.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(t.elapsed() < Duration::from_secs(10), "waited for {n}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[test]
fn bodiless_request_runs_inline_without_holding_up_its_connection() {
    // A GET without a body, alone on its connection, runs inside the
    // connection's task (as nginx's requests do). It must not block that
    // connection, and an abort or a vanished client must still end it.
    use common::raw::{self, Conn};
    use myflask::fastcgi::record;
    let hang = Hang::default();
    let mut s = serve(hang.app());
    let path = s.path.clone();
    s.rt.block_on(async {
        let mut c = Conn::connect(&path).await;
        c.send(&raw::request(1, true, "GET", "/hang", &[], b""))
            .await;
        hang.wait(&hang.started, 1).await;
        // The same connection serves a second request meanwhile.
        let h = c.get(2, "/fast").await;
        assert_eq!(h.status, 200);
        assert_eq!(h.body, b"fast");
        // ABORT_REQUEST ends the hung one: one END_REQUEST, no output, and
        // its handler future is dropped.
        let mut abort = bytes::BytesMut::new();
        record::put_record(&mut abort, record::ABORT_REQUEST, 1, b"");
        c.send(&abort).await;
        let r = c.reply(1).await;
        assert!(r.stdout.is_empty());
        hang.wait(&hang.dropped, 1).await;
        assert_eq!(c.get(1, "/fast").await.status, 200);
        c.finish().await;

        // A client that goes away: the handler is dropped too.
        let mut c = Conn::connect(&path).await;
        c.send(&raw::request(1, true, "GET", "/hang", &[], b""))
            .await;
        hang.wait(&hang.started, 2).await;
        drop(c);
        hang.wait(&hang.dropped, 2).await;
    });
    s.stop();
}
