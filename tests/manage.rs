//! The management layer around a hosted app, in-process over FastCGI: off
//! unless asked, answered before the app at the operator's paths, the
//! in-flight view (`?full`) with a slow request's age, and the trace
//! context handed to the app (in `RequestInfo`, as `main_with` wraps it).

mod common;

use bytes::Bytes;
use common::{current_thread_runtime, fcgi_get, fcgi_request};
use http::{Request, Response};
use http_body_util::Full;
use myflask::Transport;
use myflask::addr::ListenAddr;
use myflask::deadline::Deadlines;
use myflask::fastcgi::client;
use myflask::listen_queue::ListenQueues;
use myflask::manage::{self, Endpoints, Settings};
use myflask::systemd::listen::{self, BindOptions};
use myflask::{App, Body, RequestInfo, Server, ServerConfig, TraceContext};
use std::convert::Infallible;
use std::time::{Duration, Instant};

/// Ten 1 KiB chunks 200 ms apart: a response whose head is out long
/// before its end.
fn drip() -> myflask::ResponseBody {
    let chunks = futures_util::stream::unfold(0u8, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let frame = http_body::Frame::data(Bytes::from(vec![b'a' + i; 1024]));
        Some((Ok::<_, Infallible>(frame), i + 1))
    });
    myflask::service::box_body(http_body_util::StreamBody::new(chunks))
}

async fn hosted(req: Request<Body>) -> Result<Response<myflask::ResponseBody>, Infallible> {
    let path = req.uri().path().to_string();
    let text = match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            "slept".to_string()
        }
        "/pause" => {
            tokio::time::sleep(Duration::from_millis(600)).await;
            "paused".to_string()
        }
        "/drip" => return Ok(Response::new(drip())),
        "/log" => {
            tracing::info!("the app logs for {}", req.uri());
            "logged".to_string()
        }
        // In `RequestInfo`, and the extension says the same.
        "/trace" => {
            let info = req.extensions().get::<RequestInfo>().and_then(|i| i.trace);
            match (info, req.extensions().get::<TraceContext>()) {
                (Some(t), Some(ext)) if t == *ext => format!("{} {}", t.trace_id(), t.span_id()),
                (None, None) => "none".to_string(),
                other => format!("RequestInfo and the extension differ: {other:?}"),
            }
        }
        p => format!("app saw {p}"),
    };
    Ok(Response::new(myflask::service::box_body(Full::new(
        Bytes::from(text),
    ))))
}

/// Everything logged in this test process, as the `fmt` subscriber writes
/// it: the fields of the spans an event is in come first.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The process's one capture (a global subscriber: the app's events
    /// come from the server's runtime threads).
    fn get() -> &'static Captured {
        static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let c = Captured::default();
            let writer = c.clone();
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
            c
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

struct Running {
    _rt: tokio::runtime::Runtime,
    shutdown: tokio_util::sync::CancellationToken,
    addr: ListenAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn serve(settings: impl Into<Settings>) -> Running {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let addr = ListenAddr::Unix(dir.path().join("app.sock"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = listen::bind(&addr, Transport::FastCgi, &BindOptions::default()).expect("bind");
    let queues = ListenQueues::new(std::slice::from_ref(&listener));
    let server = Server::new(ServerConfig::default(), vec![listener]);
    let app = App::from_hyper(hyper::service::service_fn(hosted));
    let app = manage::wrap(app, server.stats(), settings, queues);
    let shutdown = server.shutdown_token();
    rt.spawn(server.serve(app));
    Running {
        _rt: rt,
        shutdown,
        addr,
        _dir: dir,
    }
}

fn send(r: &Running, method: &str, uri: &str, headers: &[(&str, &str)]) -> client::Response {
    let req = client::Request {
        method: method.into(),
        uri: uri.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    fcgi_request(&r.addr, &req, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{method} {uri}: {e}"))
}

fn body(r: &client::Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn operator_paths() -> Endpoints {
    Endpoints {
        status: Some("/fpm-status".into()),
        metrics: Some("/-/metrics".into()),
        ping: Some("/ping".into()),
    }
}

/// The operator's paths and `deadlines`; the server and its socket's path
/// (for the record-level client).
fn serve_with_deadlines(deadlines: Deadlines) -> (Running, std::path::PathBuf) {
    let r = serve(Settings {
        endpoints: operator_paths(),
        deadlines,
        slow_threshold: None,
    });
    let ListenAddr::Unix(path) = r.addr.clone() else {
        unreachable!("a unix socket")
    };
    (r, path)
}

#[test]
fn a_hosted_app_gets_no_endpoints_unless_asked() {
    let r = serve(Endpoints::default());
    for p in ["/status", "/metrics", "/healthz", "/ping"] {
        assert_eq!(body(&send(&r, "GET", p, &[])), format!("app saw {p}"));
    }
}

#[test]
fn endpoints_answer_at_the_operators_paths_before_the_app() {
    let r = serve(operator_paths());
    let ping = send(&r, "GET", "/ping", &[]);
    assert_eq!((ping.status, body(&ping).as_str()), (200, "ok\n"));
    let status = send(&r, "GET", "/fpm-status", &[]);
    let v: serde_json::Value = serde_json::from_slice(&status.body).expect("status JSON");
    assert!(v["total_requests"].as_u64().is_some(), "{v}");
    assert!(v.get("requests").is_none(), "only ?full lists requests");
    // A request is counted once its last byte is written, which races with
    // the client's next request: scrape k settles at 2 (ping, status) + k
    // (the scrapes before it).
    let mut k = 0;
    let m = common::eventually(Duration::from_secs(2), "2xx count settles", || {
        let m = body(&send(&r, "GET", "/-/metrics", &[]));
        let want = format!(
            "myflask_requests_total{{transport=\"fastcgi\",code=\"2xx\"}} {}\n",
            2 + k
        );
        k += 1;
        m.contains(&want).then_some(m)
    });
    assert!(m.contains("# TYPE myflask_requests_total counter"));
    let post = send(&r, "POST", "/ping", &[]);
    assert_eq!(post.status, 405);
    assert!(
        post.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("allow") && v == "GET, HEAD")
    );
    for p in ["/status", "/metrics", "/ping/x", "/fpm-status/"] {
        assert_eq!(body(&send(&r, "GET", p, &[])), format!("app saw {p}"));
    }
}

#[test]
fn status_full_lists_a_slow_request_with_its_age_and_phase() {
    let r = serve(operator_paths());
    let addr = r.addr.clone();
    let slow = std::thread::spawn(move || fcgi_get(&addr, "/slow?n=1"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline && seen.is_none() {
        let full = send(&r, "GET", "/fpm-status?full", &[]);
        let v: serde_json::Value = serde_json::from_slice(&full.body).expect("JSON");
        seen = v["requests"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["age_ms"].as_u64() >= Some(300)))
            .cloned();
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = seen.expect("the slow request listed with an age of 300 ms or more");
    assert_eq!(e["uri"], "/slow?n=1");
    assert_eq!(e["method"], "GET");
    assert_eq!(e["transport"], "FastCGI");
    assert_eq!(e["phase"], "in handler");
    assert!(e["request_id"].as_u64().is_some());
    assert_eq!(body(&slow.join().expect("thread")), "slept");
    let full = send(&r, "GET", "/fpm-status?full", &[]);
    let v: serde_json::Value = serde_json::from_slice(&full.body).expect("JSON");
    assert_eq!(v["requests"], serde_json::json!([]), "gone once answered");
}

#[test]
fn a_valid_traceparent_reaches_the_app_a_malformed_one_is_ignored() {
    let r = serve(Endpoints::default());
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = send(&r, "GET", "/trace", &[("traceparent", good)]);
    assert_eq!(
        body(&resp),
        "4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7"
    );
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let resp = send(&r, "GET", "/trace", &[("traceparent", bad)]);
    assert_eq!((resp.status, body(&resp).as_str()), (200, "none"));
}

/// What the app itself logs while it handles a traced request carries the
/// trace's ids (the layer's `request` span; journald stores its fields as
/// `TRACE_ID` / `SPAN_ID`, the journal layer setting no field prefix).
#[test]
fn the_apps_own_log_entries_carry_the_trace_ids() {
    let logs = Captured::get();
    let r = serve(Endpoints::default());
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        body(&send(&r, "GET", "/log?traced", &[("traceparent", good)])),
        "logged"
    );
    assert_eq!(body(&send(&r, "GET", "/log?untraced", &[])), "logged");
    let text = logs.text();
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{text}"))
    };
    let traced = line("the app logs for /log?traced");
    assert!(
        traced.contains("4bf92f3577b34da6a3ce929d0e0e4736") && traced.contains("00f067aa0ba902b7"),
        "{traced}"
    );
    assert!(
        traced.contains("trace_id") && traced.contains("span_id"),
        "{traced}"
    );
    let untraced = line("the app logs for /log?untraced");
    assert!(!untraced.contains("trace_id"), "{untraced}");
}

#[test]
fn a_deadline_answers_504_and_spares_the_other_request_on_the_connection() {
    let (r, path) = serve_with_deadlines(Deadlines::new(
        None,
        &[("/slow".into(), Duration::from_millis(300))],
    ));
    let t0 = Instant::now();
    let (killed, spared) = current_thread_runtime().block_on(async {
        let mut c = common::raw::Conn::connect(&path).await;
        c.send(&common::raw::request(1, true, "GET", "/slow", &[], b""))
            .await;
        c.send(&common::raw::request(2, true, "GET", "/pause", &[], b""))
            .await;
        let killed = c.reply(1).await.http();
        let after = t0.elapsed();
        (killed, (c.reply(2).await.http(), after))
    });
    let (spared, killed_after) = spared;
    assert_eq!(killed.status, 504, "{}", killed.text());
    assert!(killed.text().contains("deadline"), "{}", killed.text());
    assert!(
        killed_after < Duration::from_millis(1200),
        "answered at the deadline, not when the handler ended: {killed_after:?}"
    );
    assert_eq!((spared.status, spared.text().as_str()), (200, "paused"));
    let m = body(&send(&r, "GET", "/-/metrics", &[]));
    assert!(m.contains("myflask_deadline_kills_total 1\n"), "{m}");
}

#[test]
fn a_deadline_after_the_head_aborts_the_response() {
    let (r, path) = serve_with_deadlines(Deadlines::new(Some(Duration::from_millis(500)), &[]));
    let reply = current_thread_runtime().block_on(async {
        let mut c = common::raw::Conn::connect(&path).await;
        c.send(&common::raw::request(1, true, "GET", "/drip", &[], b""))
            .await;
        c.reply(1).await
    });
    let head_and_part = String::from_utf8_lossy(&reply.stdout).into_owned();
    let (status, _, _) = myflask::fastcgi::client::parse_cgi(&reply.stdout).expect("a CGI head");
    assert_eq!(status, 200, "{head_and_part}");
    let body_len = reply.stdout.len() - head_and_part.find("\r\n\r\n").map_or(0, |i| i + 4);
    assert!(
        (1024..10 * 1024).contains(&body_len),
        "part of the body, then the abort: {body_len} bytes"
    );
    let end = reply.end.expect("END_REQUEST");
    assert_ne!(end.app_status, 0, "the response is marked failed");
    let m = body(&send(&r, "GET", "/-/metrics", &[]));
    assert!(m.contains("myflask_deadline_kills_total 1\n"), "{m}");
}
