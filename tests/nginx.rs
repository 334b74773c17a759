//! myflask behind a real nginx: the test starts its own nginx (own prefix,
//! temp port, `fastcgi_pass` to an upstream with keepalive over myflask's
//! unix socket) and talks HTTP/1.1 to it.

mod common;

use common::{Server, free_tcp_port, json_pairs, noise};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// nginx listening on a free loopback port, its one `server { }` the
/// test's.
struct Nginx {
    inner: common::Nginx,
    port: u16,
}

impl Nginx {
    /// Starts nginx with `server_body` (the inside of `server { }`) and
    /// `http_extra` (more `http { }` directives, e.g. upstreams).
    fn start(dir: &Path, http_extra: &str, server_body: &str) -> Nginx {
        let port = free_tcp_port();
        let http = format!(
            r#"
    # One client connection carries all of the keep-alive loop (default 1000).
    keepalive_requests 10000;
    {http_extra}
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        client_max_body_size 16m;
        {server_body}
    }}
"#
        );
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let inner = common::Nginx::start(dir, &http, listen, None);
        Nginx { inner, port }
    }

    fn errors(&self) -> Vec<String> {
        self.inner.errors()
    }

    fn connect(&self) -> Http {
        let mut h = Http::connect(self.port);
        h.error_log = Some(self.inner.dir.join("logs/error.log"));
        h
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 keep-alive client (Content-Length and chunked).
struct Http {
    r: BufReader<TcpStream>,
    /// The last request line and nginx's error log, for failure messages.
    last: String,
    error_log: Option<PathBuf>,
}

impl Http {
    fn connect(port: u16) -> Http {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Http {
            r: BufReader::with_capacity(64 * 1024, s),
            last: String::new(),
            error_log: None,
        }
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.last = format!("{method} {path} ({} body bytes)", body.len());
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let s = self.r.get_mut();
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        self.read_response(method == "HEAD")
    }

    fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, &[], b"")
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).unwrap_or_else(|e| {
            panic!("{}: reading from nginx: {e}{}", self.last, self.log_tail())
        });
        assert!(
            n > 0,
            "{}: nginx closed the connection{}",
            self.last,
            self.log_tail()
        );
        l.trim_end_matches(['\r', '\n']).to_string()
    }

    fn log_tail(&self) -> String {
        let Some(p) = &self.error_log else {
            return String::new();
        };
        let log = std::fs::read_to_string(p).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "; nginx error.log ends with:\n{}",
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }

    fn read_response(&mut self, head_only: bool) -> Resp {
        let status_line = self.line();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("header line");
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only {
            return resp;
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let size_line = self.line();
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
                if size == 0 {
                    while !self.line().is_empty() {}
                    break;
                }
                let start = resp.body.len();
                resp.body.resize(start + size, 0);
                self.r.read_exact(&mut resp.body[start..]).unwrap();
                assert!(self.line().is_empty(), "chunk not followed by CRLF");
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            resp.body.resize(len, 0);
            self.r.read_exact(&mut resp.body).unwrap();
        } else {
            self.r.read_to_end(&mut resp.body).unwrap();
        }
        resp
    }
}

fn standard_upstream(sock: &Path) -> (String, String) {
    (
        format!(
            "upstream myflask {{ server unix:{}; keepalive 8; }}",
            sock.display()
        ),
        "location / {
            include /etc/nginx/fastcgi_params;
            fastcgi_keep_conn on;
            fastcgi_pass myflask;
        }"
        .to_string(),
    )
}

/// POSTs `len` pattern bytes to `/echo` with a content type: both must
/// come back as sent.
fn echo_roundtrip(h: &mut Http, len: usize, seed: u32) {
    let body = noise(len, u64::from(seed));
    let r = h.send(
        "POST",
        "/echo",
        &[("Content-Type", "application/x-test")],
        &body,
    );
    assert_eq!(r.status, 200, "{len}-byte echo: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-test"));
    assert_eq!(r.body.len(), body.len(), "{len}-byte echo length");
    assert!(r.body == body, "{len}-byte echo differs");
}

fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

fn accepted_connections(h: &mut Http) -> u64 {
    let r = h.get("/status");
    assert_eq!(r.status, 200, "{}", r.text());
    json(&r)["accepted_connections"].as_u64().unwrap()
}

/// The package's location snippet as `snippets/myflask.conf` installs it:
/// its template (rendered by `cargo myflask deb`) with the name filled in,
/// written into `dir`.
fn shipped_snippet(dir: &Path) -> PathBuf {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/debian/nginx/app.conf");
    let text = std::fs::read_to_string(template).unwrap();
    let path = dir.join("myflask.conf");
    std::fs::write(&path, text.replace("{{name}}", "myflask")).unwrap();
    path
}

/// The params of `/request` as (name, value) pairs.
#[test]
fn nginx_with_the_shipped_snippet_sends_what_myflask_maps() {
    // The snippet lists its params instead of including fastcgi_params:
    // the request must come out the same, and the params must be exactly
    // those it lists plus the request's headers.
    let mut app = Server::start(&[]);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (upstream, _) = standard_upstream(&app.sock);
    let snippet = shipped_snippet(dir.path());
    let location = format!("location / {{ include {}; }}", snippet.display());
    let nginx = Nginx::start(dir.path(), &upstream, &location);
    let mut h = nginx.connect();

    let text = std::fs::read_to_string(&snippet).unwrap();
    let listed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("fastcgi_param "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(listed.contains(&"REQUEST_URI"), "{listed:?}");

    let r = h.send("GET", "/request?a=1&b=%20x", &[("X-Single", "s")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["uri"], "/request?a=1&b=%20x");
    assert_eq!(v["scheme"], "http");
    assert!(
        v["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{v}"
    );
    let params = json_pairs(&v, "params");
    let mut names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    // HTTPS is `if_not_empty`: absent over plain HTTP.
    let mut want: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|n| *n != "HTTPS")
        .chain(["HTTP_X_SINGLE"])
        .collect();
    want.sort_unstable();
    assert_eq!(names, want, "{params:?}");
    let host: Vec<_> = v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "host")
        .collect();
    assert_eq!(host.len(), 1, "one Host header: {v}");
    assert_eq!(host[0][1], "localhost");

    // A body: CONTENT_TYPE and CONTENT_LENGTH make the request's headers.
    echo_roundtrip(&mut h, 1 << 20, 7);

    // HTTP/1.0 without Host: myflask's Host is then the server's name.
    let mut s = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /request HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"SERVER_NAME\""), "{out}");

    assert!(nginx.errors().is_empty(), "{:?}", nginx.errors());
    assert_eq!(app.stop().code(), Some(0));
}

#[test]
fn nginx_fastcgi_pass_to_myflask() {
    let mut app = Server::start(&[]);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (upstream, location) = standard_upstream(&app.sock);
    let nginx = Nginx::start(dir.path(), &upstream, &location);
    let mut h = nginx.connect();

    let r = h.get("/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("<strong>FastCGI</strong>"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));

    let r = h.get("/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    // The length myflask knows reaches the client (no chunking).
    assert_eq!(r.header("content-length"), Some("3"));

    let r = h.get("/no/such/page");
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "404 not found\n");

    let r = h.send("HEAD", "/", &[], b"");
    assert_eq!(r.status, 200);

    // What nginx sent, as the application sees it.
    let r = h.send(
        "GET",
        "/request?a=1&b=%20x",
        &[("X-Dup", "one"), ("X-Dup", "two"), ("X-Single", "s")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["uri"], "/request?a=1&b=%20x");
    assert_eq!(v["transport"], "FastCGI");
    let params = json_pairs(&v, "params");
    let param = |name: &str| -> Vec<&str> {
        params
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let port = nginx.port.to_string();
    for (name, want) in [
        ("REQUEST_URI", "/request?a=1&b=%20x"),
        ("SCRIPT_NAME", "/request"),
        ("DOCUMENT_URI", "/request"),
        ("QUERY_STRING", "a=1&b=%20x"),
        ("REQUEST_METHOD", "GET"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", port.as_str()),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("CONTENT_LENGTH", ""),
        ("HTTP_HOST", "localhost"),
        ("HTTP_X_SINGLE", "s"),
    ] {
        assert_eq!(param(name), vec![want], "param {name} in {params:?}");
    }
    assert!(
        param("SERVER_SOFTWARE")
            .first()
            .is_some_and(|s| s.starts_with("nginx/")),
        "{params:?}"
    );
    assert_eq!(param("REMOTE_PORT").len(), 1);
    assert_eq!(param("DOCUMENT_ROOT").len(), 1);
    // nginx 1.22 sends a repeated header as repeated params (1.23+ joins
    // them with ", "): both must reach the application, in order.
    let dup = param("HTTP_X_DUP");
    assert!(
        dup == vec!["one", "two"] || dup == vec!["one, two"],
        "HTTP_X_DUP: {dup:?}"
    );
    let headers: Vec<String> = v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "x-dup")
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect();
    assert!(
        headers == vec!["one", "two"] || headers == vec!["one, two"],
        "x-dup headers: {headers:?}"
    );

    // 1 MiB and 8 MiB echoes, byte for byte.
    for (len, seed) in [(1 << 20, 1), (8 << 20, 2), (1, 3), (32 * 1024 + 1, 4)] {
        echo_roundtrip(&mut h, len, seed);
    }

    // An over-limit body is refused by nginx itself (client_max_body_size).
    let r = h.send("POST", "/echo", &[], &vec![0u8; 17 << 20]);
    assert_eq!(r.status, 413);

    // 1000 requests on one client connection; nginx reuses its upstream
    // connection (keepalive 8, fastcgi_keep_conn on).
    let mut h = nginx.connect();
    let before = accepted_connections(&mut h);
    let t0 = Instant::now();
    for i in 0..1000u32 {
        match i % 3 {
            0 => {
                let r = h.get("/healthz");
                assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]), "#{i}");
            }
            1 => {
                let uri = format!("/request?i={i}");
                let r = h.get(&uri);
                assert_eq!(r.status, 200, "#{i}");
                assert_eq!(json(&r)["uri"], uri.as_str(), "#{i}");
            }
            _ => {
                let body = noise(i as usize * 37, u64::from(i));
                let r = h.send("POST", "/echo", &[], &body);
                assert_eq!(r.status, 200, "#{i}");
                assert!(r.body == body, "#{i}: echo differs");
            }
        }
    }
    let took = t0.elapsed();
    let after = accepted_connections(&mut h);
    eprintln!(
        "1000 keep-alive requests through nginx in {took:?}; myflask accepted {} new connections",
        after - before
    );
    assert!(
        after - before <= 8,
        "nginx opened {} upstream connections for 1000 sequential requests: keepalive does not work",
        after - before
    );

    // HEAD: nginx answers from the head alone and, not having read
    // END_REQUEST, drops that upstream connection (ngx_http_fastcgi_module
    // sets keepalive only when it parses END_REQUEST). Each costs a new
    // connection, but none may fail.
    for i in 0..20 {
        let r = h.send("HEAD", if i % 2 == 0 { "/" } else { "/healthz" }, &[], b"");
        assert_eq!(r.status, 200, "HEAD #{i}");
        if i % 2 == 1 {
            assert_eq!(r.header("content-length"), Some("3"));
        }
        assert_eq!(h.get("/healthz").body, b"ok\n", "GET after HEAD #{i}");
    }

    // The only error line allowed is the one the 413 above provoked.
    let errors: Vec<String> = nginx
        .errors()
        .into_iter()
        .filter(|l| !l.contains("client intended to send too large body: 17825792 bytes"))
        .collect();
    assert!(errors.is_empty(), "nginx error.log:\n{}", errors.join("\n"));
    let complaints: Vec<String> = app
        .stderr()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| !l.contains("PrivateTmp"))
        .map(str::to_string)
        .collect();
    assert!(
        complaints.is_empty(),
        "myflask complained:\n{}",
        complaints.join("\n")
    );
    drop(h);
    drop(nginx);
    assert_eq!(app.stop().code(), Some(0));
}

/// An in-process myflask (the library) whose `/…/stream` answers four
/// chunks 300 ms apart; `/xaccel/stream` also says `X-Accel-Buffering: no`.
type Served = tokio::task::JoinHandle<anyhow::Result<()>>;

fn streaming_app(
    sock: &Path,
) -> (
    tokio::runtime::Runtime,
    tokio_util::sync::CancellationToken,
    Served,
) {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use myflask::Transport;
    use myflask::systemd::listen::{BindOptions, bind};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let svc = hyper::service::service_fn(|req: http::Request<myflask::Body>| async move {
        let s = futures_util::stream::unfold(0u32, |i| async move {
            if i == 4 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let data = Bytes::from(format!("chunk-{i}:{}\n", "x".repeat(100)));
            Some((Ok::<_, std::convert::Infallible>(Frame::data(data)), i + 1))
        });
        let mut resp = http::Response::new(StreamBody::new(s));
        resp.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        if req.uri().path().starts_with("/xaccel/") {
            resp.headers_mut()
                .insert("x-accel-buffering", "no".parse().unwrap());
        }
        Ok::<_, std::convert::Infallible>(resp)
    });
    let addr = myflask::addr::ListenAddr::Unix(sock.to_path_buf());
    let l = bind(&addr, Transport::FastCgi, &BindOptions::default()).unwrap();
    let server = myflask::Server::new(myflask::ServerConfig::default(), vec![l]);
    let token = server.shutdown_token();
    let served = rt.spawn(server.serve(myflask::App::from_hyper(svc)));
    (rt, token, served)
}

/// GETs `path` and returns when each of the four chunks arrived, relative
/// to the first, plus the whole decoded body.
fn chunk_arrivals(port: u16, path: &str) -> (Vec<Duration>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut seen: Vec<Option<Instant>> = vec![None; 4];
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        for (i, t) in seen.iter_mut().enumerate() {
            if t.is_none() && text.contains(&format!("chunk-{i}:")) {
                *t = Some(Instant::now());
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(
        text.ends_with("\r\n0\r\n\r\n"),
        "response not complete:\n{text}"
    );
    let seen: Vec<Instant> = seen
        .into_iter()
        .map(|t| t.unwrap_or_else(|| panic!("a chunk is missing:\n{text}")))
        .collect();
    (seen.iter().map(|t| *t - seen[0]).collect(), text)
}

#[test]
fn nginx_streams_with_fastcgi_buffering_off() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sock = dir.path().join("stream.sock");
    let (rt, token, served) = streaming_app(&sock);
    let upstream = format!(
        "upstream streamer {{ server unix:{}; keepalive 4; }}",
        sock.display()
    );
    let locations = "
        location /unbuffered/ {
            include /etc/nginx/fastcgi_params;
            fastcgi_keep_conn on;
            fastcgi_buffering off;
            fastcgi_pass streamer;
        }
        location / {
            include /etc/nginx/fastcgi_params;
            fastcgi_keep_conn on;
            fastcgi_pass streamer;
        }";
    let nginx = Nginx::start(&dir.path().join("nginx"), &upstream, locations);

    for path in ["/unbuffered/stream", "/xaccel/stream"] {
        let (at, text) = chunk_arrivals(nginx.port, path);
        eprintln!("{path}: chunks at {at:?}");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("x-accel-buffering"),
            "nginx should consume X-Accel-Buffering: {text}"
        );
        // 300 ms between chunks must show on the client's side.
        assert!(at[3] >= Duration::from_millis(800), "{path}: {at:?}");
        for i in 1..4 {
            let gap = at[i] - at[i - 1];
            assert!(
                gap >= Duration::from_millis(150),
                "{path}: chunk {i} came {gap:?} after chunk {}: not streamed ({at:?})",
                i - 1
            );
        }
    }
    // (nginx 1.22 forwards these small chunks as they come even with
    // buffering on, so the check above is about myflask: a server that held
    // a streamed body until it ended, or until 64 KiB, fails it.)
    // Shutdown (the library's SIGTERM) while a response streams through
    // nginx: the response completes, then serve returns.
    let port = nginx.port;
    let client = std::thread::spawn(move || chunk_arrivals(port, "/unbuffered/stream"));
    std::thread::sleep(Duration::from_millis(150));
    token.cancel();
    let (at, _) = client
        .join()
        .expect("streamed response cut by the shutdown");
    assert!(at[3] >= Duration::from_millis(600), "{at:?}");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("serve did not return")
            .unwrap()
            .unwrap()
    });

    let errors = nginx.errors();
    assert!(errors.is_empty(), "nginx error.log:\n{}", errors.join("\n"));
}

/// The trace context through nginx, with the server configured as
/// `main_with` configures a hosted app (no management endpoints): the app
/// reads it in `RequestInfo::trace` (the built-in `/request` shows it), and
/// the access line carries its ids.
#[test]
fn a_traceparent_through_nginx_reaches_the_app_and_the_access_log_line() {
    let app = Server::start(&["--status-path", "", "--metrics-path", "", "--ping-path", ""]);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (upstream, location) = standard_upstream(&app.sock);
    let nginx = Nginx::start(dir.path(), &upstream, &location);
    let mut h = nginx.connect();
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = h.send("GET", "/request?traced", &[("traceparent", good)], b"");
    assert_eq!(r.status, 200);
    let seen = json(&r)["trace"].clone();
    assert_eq!(
        seen,
        serde_json::json!({
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7",
            "flags": 1,
        }),
        "RequestInfo::trace as the app reads it"
    );
    let bad = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let r = h.send("GET", "/request?zero", &[("traceparent", bad)], b"");
    assert_eq!(r.status, 200, "a malformed traceparent is no error");
    assert_eq!(json(&r)["trace"], serde_json::Value::Null);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = |needle: &str| {
        app.stderr()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
    };
    while line("/request?zero").is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let traced = line("GET /request?traced 200").expect("access line");
    assert!(
        traced.contains("trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"")
            && traced.contains("span_id=\"00f067aa0ba902b7\""),
        "{traced}"
    );
    let zero = line("GET /request?zero 200").expect("access line");
    assert!(!zero.contains("trace_id"), "{zero}");
}

/// The in-flight view behind nginx with the two settings that let a
/// client's pace reach myflask: with `fastcgi_request_buffering off` a
/// slow upload is "reading body" in myflask while nginx streams it; with
/// `fastcgi_buffering off` a response the client does not read is
/// "writing" (with nginx's defaults, nginx takes the whole body before
/// myflask sees the request, and the whole response after).
#[test]
fn in_flight_phases_through_nginx() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (upstream, _) = standard_upstream(&server.sock);
    let locations = "
        location /upload {
            include /etc/nginx/fastcgi_params;
            fastcgi_keep_conn on;
            fastcgi_request_buffering off;
            fastcgi_pass myflask;
        }
        location /echo {
            include /etc/nginx/fastcgi_params;
            fastcgi_keep_conn on;
            fastcgi_buffering off;
            fastcgi_pass myflask;
        }";
    let nginx = Nginx::start(dir.path(), &upstream, locations);
    let addr = server.addr();

    let mut up = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let len = 64 * 1024;
    let head = format!(
        "POST /upload?via=nginx HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n"
    );
    up.write_all(head.as_bytes()).unwrap();
    up.write_all(&[7u8; 1024]).unwrap();
    common::wait_phase(&addr, "/upload?via=nginx", "reading body");
    std::thread::sleep(Duration::from_millis(300));
    common::wait_phase(&addr, "/upload?via=nginx", "reading body");
    up.write_all(&vec![7u8; len - 1024]).unwrap();
    up.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let reply = String::from_utf8_lossy(&common::read_all(&mut up)).into_owned();
    assert!(reply.contains(&format!("\"bytes\": {len}")), "{reply}");

    // Past what the client's receive buffer, nginx's send buffer and the
    // upstream socket hold between them.
    let len = 12 * 1024 * 1024;
    let mut echo = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    let head = format!(
        "POST /echo?via=nginx HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n"
    );
    echo.write_all(head.as_bytes()).unwrap();
    echo.write_all(&vec![1u8; len]).unwrap();
    common::wait_phase(&addr, "/echo?via=nginx", "writing");
    std::thread::sleep(Duration::from_millis(300));
    common::wait_phase(&addr, "/echo?via=nginx", "writing");
    drop(echo);
    common::wait_none_in_flight(&addr);
    let errors: Vec<String> = nginx
        .errors()
        .into_iter()
        .filter(|l| !l.contains("Broken pipe") && !l.contains("Connection reset"))
        .collect();
    assert!(errors.is_empty(), "nginx error.log:\n{}", errors.join("\n"));
}

/// `--request-timeout-prefix` on the built binary behind nginx: a `/sleep`
/// past its deadline is answered 504 by myflask (nginx passes it on) long
/// before the handler would have ended, logged with the request's fields
/// and counted in `/metrics`; the next request on the same connections is
/// served.
#[test]
fn a_deadline_through_nginx_answers_504_logs_and_counts_it() {
    let app = Server::start(&["--request-timeout-prefix", "/sleep=0.3"]);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (upstream, location) = standard_upstream(&app.sock);
    let nginx = Nginx::start(dir.path(), &upstream, &location);
    let mut h = nginx.connect();
    let t0 = Instant::now();
    let r = h.get("/sleep?ms=5000");
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(
        r.text(),
        "504 the request took longer than its deadline of 300ms\n"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    let next = h.get("/request?after-the-deadline");
    assert_eq!(next.status, 200, "the next request on the connection");
    let log = app.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("deadline of 300ms passed"))
        .unwrap_or_else(|| panic!("no deadline line:\n{log}"));
    for field in [
        "WARN",
        "request_id=",
        "method=GET",
        "uri=/sleep?ms=5000",
        "deadline_ms=300",
        "phase=\"in handler\"",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    let m = common::fcgi_get(&app.addr(), "/metrics");
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.contains("myflask_deadline_kills_total 1\n"), "{text}");
    assert!(nginx.errors().is_empty(), "{:?}", nginx.errors());
}
