//! The server's own error responses read the same over both transports: a
//! handler panic (inside its future or before it), a service error, a body
//! over the limit and an overload each get one status, one `Content-Type`,
//! one `Retry-After` and one body, whether the request came over FastCGI or
//! HTTP/1.1. A real server (the library API, as the binary builds it) on
//! real unix sockets, one of each transport.

mod common;

use bytes::Bytes;
use common::{fcgi_request, http_over_unix};
use http::{Request, Response};
use http_body_util::Full;
use myflask::addr::ListenAddr;
use myflask::fastcgi::client;
use myflask::systemd::listen::{self, BindOptions};
use myflask::{App, Server, ServerConfig, Stats, Transport};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What a client sees of an answer, transport aside.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<String>,
    body: String,
}

impl Seen {
    fn of_fastcgi(r: &client::Response) -> Seen {
        Seen {
            status: r.status,
            content_type: r.header("content-type").map(str::to_string),
            retry_after: r.header("retry-after").map(str::to_string),
            body: String::from_utf8_lossy(&r.body).into_owned(),
        }
    }

    /// Parses a whole `Connection: close` HTTP/1.1 answer.
    fn of_http(raw: &str) -> Seen {
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {raw:?}"));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {raw:?}"));
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        Seen {
            status,
            content_type: header("content-type"),
            retry_after: header("retry-after"),
            body: body.to_string(),
        }
    }
}

/// A server with one FastCGI and one HTTP listener, at most one request in
/// flight and bodies of at most 1 KiB.
struct Both {
    rt: tokio::runtime::Runtime,
    fcgi: ListenAddr,
    http: PathBuf,
    stats: Arc<Stats>,
    shutdown: tokio_util::sync::CancellationToken,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// `/panic` panics inside its future, `/sync-panic` before it has one,
/// `/fail` returns an error, `/hold` waits for a permit of `gate`.
fn app(gate: Arc<Semaphore>) -> App {
    App::from_hyper(hyper::service::service_fn(
        move |req: Request<myflask::Body>| {
            let path = req.uri().path().to_string();
            if path == "/sync-panic" {
                panic!("deliberate panic before the handler future exists");
            }
            let gate = gate.clone();
            async move {
                match path.as_str() {
                    "/panic" => panic!("deliberate panic in a handler"),
                    "/fail" => return Err(std::io::Error::other("backend unavailable")),
                    "/hold" => drop(gate.acquire().await),
                    _ => {}
                }
                Ok(Response::new(Full::new(Bytes::from_static(b"fine\n"))))
            }
        },
    ))
}

fn serve(gate: Arc<Semaphore>) -> Both {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let fcgi = ListenAddr::Unix(dir.path().join("fcgi.sock"));
    let http = dir.path().join("http.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = BindOptions::default();
    let listeners = vec![
        listen::bind(&fcgi, Transport::FastCgi, &opts).unwrap(),
        listen::bind(&ListenAddr::Unix(http.clone()), Transport::Http, &opts).unwrap(),
    ];
    let config = ServerConfig {
        max_requests: 1,
        max_body_bytes: 1024,
        handle_signals: false,
        ..ServerConfig::default()
    };
    let server = Server::new(config, listeners);
    let (stats, shutdown) = (server.stats(), server.shutdown_token());
    let served = Some(rt.spawn(server.serve(app(gate))));
    Both {
        rt,
        fcgi,
        http,
        stats,
        shutdown,
        served,
        _dir: dir,
    }
}

impl Both {
    fn fastcgi(&self, method: &str, uri: &str, body: &[u8]) -> Seen {
        let req = client::Request {
            method: method.into(),
            uri: uri.into(),
            body: Bytes::copy_from_slice(body),
            ..Default::default()
        };
        let r = fcgi_request(&self.fcgi, &req, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("FastCGI {method} {uri}: {e}"));
        Seen::of_fastcgi(&r)
    }

    fn http(&self, method: &str, uri: &str, body: &[u8]) -> Seen {
        let req = format!(
            "{method} {uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            String::from_utf8_lossy(body)
        );
        Seen::of_http(&http_over_unix(&self.http, &req))
    }

    /// Asks both transports; asserts they agree and returns the answer.
    fn same_over_both(&self, method: &str, uri: &str, body: &[u8]) -> Seen {
        let f = self.fastcgi(method, uri, body);
        let h = self.http(method, uri, body);
        assert_eq!(
            f, h,
            "{method} {uri}: FastCGI (left) and HTTP (right) differ"
        );
        f
    }

    fn stop(mut self) {
        self.shutdown.cancel();
        let h = self.served.take().unwrap();
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .expect("serve did not return after shutdown")
                .expect("serve task panicked")
                .expect("serve failed")
        });
    }
}

fn plain(status: u16, retry_after: Option<&str>, body: &str) -> Seen {
    Seen {
        status,
        content_type: Some("text/plain; charset=utf-8".into()),
        retry_after: retry_after.map(str::to_string),
        body: body.into(),
    }
}

#[test]
fn a_panic_and_a_service_error_get_the_same_500_over_fastcgi_and_http() {
    let s = serve(Arc::new(Semaphore::new(0)));
    let want = plain(500, None, "500 internal server error\n");
    for uri in ["/panic", "/sync-panic", "/fail"] {
        assert_eq!(s.same_over_both("GET", uri, b""), want, "{uri}");
    }
    // The failures ended their requests only.
    let fine = s.same_over_both("GET", "/", b"");
    assert_eq!((fine.status, fine.body.as_str()), (200, "fine\n"));
    s.stop();
}

#[test]
fn a_body_over_the_limit_gets_the_same_413_over_fastcgi_and_http() {
    let s = serve(Arc::new(Semaphore::new(0)));
    let got = s.same_over_both("POST", "/", &[b'x'; 2048]);
    let want = plain(
        413,
        None,
        "413 request body exceeds the limit of 1024 bytes\n",
    );
    assert_eq!(got, want);
    s.stop();
}

#[test]
fn an_overload_gets_the_same_503_over_fastcgi_and_http() {
    let gate = Arc::new(Semaphore::new(0));
    let s = serve(gate.clone());
    std::thread::scope(|scope| {
        // The one request allowed in flight, held until the gate opens.
        let held = scope.spawn(|| s.fastcgi("GET", "/hold", b""));
        let t0 = Instant::now();
        while s.stats.active_requests() == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "/hold never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let got = s.same_over_both("GET", "/", b"");
        let want = plain(
            503,
            Some("1"),
            "503 server is at its limit of 1 concurrent requests\n",
        );
        assert_eq!(got, want);
        gate.add_permits(1);
        let held = held.join().expect("the held request");
        assert_eq!((held.status, held.body.as_str()), (200, "fine\n"));
    });
    s.stop();
}

#[test]
fn the_binary_refuses_a_large_body_alike_and_logs_each_transport_by_name() {
    let http_dir = common::target_tmpdir();
    let http = http_dir.path().join("http.sock");
    let http_arg = format!("unix:{}", http.display());
    let mut s = common::Server::start(&["--http", &http_arg, "--max-body-bytes", "1024"]);
    let req = client::Request {
        method: "POST".into(),
        uri: "/echo".into(),
        body: Bytes::from(vec![b'x'; 2048]),
        ..Default::default()
    };
    let over_fastcgi = fcgi_request(&s.addr(), &req, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("FastCGI POST /echo: {e}"));
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2048\r\n\r\n{}",
        "x".repeat(2048)
    );
    let over_http = Seen::of_http(&http_over_unix(&http, &raw));
    let want = plain(
        413,
        None,
        "413 request body exceeds the limit of 1024 bytes\n",
    );
    assert_eq!(Seen::of_fastcgi(&over_fastcgi), want);
    assert_eq!(over_http, want);
    s.stop();
    // The access log names the transport in its `transport` field
    // (TRANSPORT under journald), lowercase.
    let log = s.stderr();
    for name in ["fastcgi", "http"] {
        let field = format!("transport=\"{name}\"");
        assert!(
            log.lines()
                .any(|l| l.contains(&field) && l.contains("status=413")),
            "no access-log line with {field} and status=413 in:\n{log}"
        );
    }
}
