//! sd_notify and shutdown behaviour of `myflask serve`, against the real
//! binary: the test binds the datagram socket systemd would own
//! (`NOTIFY_SOCKET`) and records every message with its arrival time; and
//! the drain on SIGTERM, over raw FastCGI connections.

mod common;

use bytes::BytesMut;
use common::{
    BIN, Proc, Server, clean_cmd, current_thread_runtime, fcgi_get, noise, raw, serve_cmd,
    target_tmpdir,
};
use myflask::addr::ListenAddr;
use myflask::fastcgi::{client, record};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const START: Duration = Duration::from_secs(20);

/// One datagram, with when it arrived (since the collector started).
#[derive(Debug, Clone)]
struct Msg {
    at: Duration,
    text: String,
}

/// The service manager's end of `NOTIFY_SOCKET`.
struct Collector {
    path: PathBuf,
    t0: Instant,
    msgs: Arc<Mutex<Vec<Msg>>>,
    /// Result of a FastCGI request made the moment READY=1 arrived.
    at_ready: Arc<Mutex<Option<Result<u16, String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    /// Binds `<dir>/notify.sock`; on READY=1 it immediately asks `probe`
    /// (a FastCGI socket) for /healthz.
    fn start(dir: &Path, probe: Option<ListenAddr>) -> Collector {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let t0 = Instant::now();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let at_ready = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (msgs, at_ready, stop) = (msgs.clone(), at_ready.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = sock.recv(&mut buf) else { continue };
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let at = t0.elapsed();
                    let ready = text.lines().any(|l| l == "READY=1");
                    msgs.lock().unwrap().push(Msg { at, text });
                    if ready {
                        if let Some(addr) = &probe {
                            let req = client::Request {
                                method: "GET".into(),
                                uri: "/healthz".into(),
                                ..Default::default()
                            };
                            let r = common::fcgi_request(addr, &req, Duration::from_secs(5))
                                .map(|r| r.status)
                                .map_err(|e| e.to_string());
                            *at_ready.lock().unwrap() = Some(r);
                        }
                    }
                }
            })
        };
        Collector {
            path,
            t0,
            msgs,
            at_ready,
            stop,
            thread: Some(thread),
        }
    }

    fn msgs(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// Messages with a line equal to `line` (or starting with it if it
    /// ends with `=`).
    fn with_line(&self, line: &str) -> Vec<Msg> {
        self.msgs()
            .into_iter()
            .filter(|m| {
                m.text.lines().any(|l| {
                    if line.ends_with('=') {
                        l.starts_with(line)
                    } else {
                        l == line
                    }
                })
            })
            .collect()
    }

    /// Waits for a message with `line`; returns the first one.
    fn wait_for(&self, line: &str, limit: Duration) -> Msg {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(m) = self.with_line(line).into_iter().next() {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} datagram within {limit:?}; got {:#?}",
                self.msgs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_notified(dir: &Path, n: &Collector, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = serve_cmd(&dir.join("fcgi.sock"), extra, env);
    cmd.env("NOTIFY_SOCKET", &n.path);
    Proc::spawn(&mut cmd, &dir.join("log"))
}

/// Status lines of every message (`STATUS=` stripped).
fn statuses(msgs: &[Msg]) -> Vec<(Duration, String)> {
    msgs.iter()
        .flat_map(|m| {
            m.text
                .lines()
                .filter_map(|l| l.strip_prefix("STATUS="))
                .map(|s| (m.at, s.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn requests_served(status: &str) -> Option<u64> {
    status
        .split(" requests served")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}

#[test]
fn ready_status_watchdog_stopping() {
    let dir = target_tmpdir();
    let sock = ListenAddr::Unix(dir.path().join("fcgi.sock"));
    let n = Collector::start(dir.path(), Some(sock.clone()));
    let mut p = serve_notified(
        dir.path(),
        &n,
        &["--status-interval", "0.2"],
        &[("WATCHDOG_USEC", "500000")],
    );
    let ready = n.wait_for("READY=1", START);
    // The socket answered at the very moment READY=1 arrived.
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = loop {
        if let Some(r) = n.at_ready.lock().unwrap().clone() {
            break r;
        }
        assert!(Instant::now() < deadline, "READY probe did not finish");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(probe, Ok(200), "socket not serving when READY=1 arrived");
    assert!(
        ready.text.lines().any(|l| l.starts_with("STATUS=serving;")),
        "READY=1 without a first status: {:?}",
        ready.text
    );

    // Traffic, then 2 s of observation after READY.
    for _ in 0..5 {
        assert_eq!(fcgi_get(&sock, "/healthz").status, 200);
    }
    let window = Duration::from_secs(2);
    while n.now() < ready.at + window + Duration::from_millis(100) {
        std::thread::sleep(Duration::from_millis(20));
    }

    let msgs = n.msgs();
    let pings: Vec<Duration> = n
        .with_line("WATCHDOG=1")
        .into_iter()
        .map(|m| m.at)
        .filter(|t| *t >= ready.at && *t < ready.at + window)
        .collect();
    let gaps: Vec<u128> = pings
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    eprintln!(
        "watchdog: {} pings in the 2 s after READY, gaps {gaps:?} ms",
        pings.len()
    );
    // WATCHDOG_USEC/2 = 250 ms: 8 pings in 2 s (the first at READY). Loose
    // bounds for a loaded machine; a delayed tick is made up at once, so
    // only the median and the longest gap say something.
    assert!(
        (6..=11).contains(&pings.len()),
        "{} WATCHDOG=1 in 2 s (want ~8): {msgs:#?}",
        pings.len()
    );
    let mut sorted = gaps.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        (200..=300).contains(&median),
        "median watchdog gap {median} ms, want 250: {gaps:?}"
    );
    assert!(
        sorted.last().is_some_and(|g| *g <= 600),
        "a watchdog gap over 600 ms: {gaps:?}"
    );

    // STATUS= refreshed every 0.2 s with live figures.
    let st = statuses(&msgs);
    let refreshed: Vec<&(Duration, String)> = st
        .iter()
        .filter(|(t, s)| *t > ready.at && s.contains("requests served"))
        .collect();
    eprintln!("{} STATUS refreshes in 2 s", refreshed.len());
    assert!(
        (5..=14).contains(&refreshed.len()),
        "{} STATUS refreshes in 2 s with --status-interval 0.2: {st:#?}",
        refreshed.len()
    );
    let last = &refreshed.last().unwrap().1;
    assert!(
        requests_served(last).unwrap_or(0) >= 6,
        "last status does not count the 6 requests: {last:?}"
    );
    assert!(last.contains("0 in flight"), "{last:?}");

    // SIGTERM: STOPPING=1, then exit 0.
    let before_stop = n.now();
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", p.log());
    let stopping = n.wait_for("STOPPING=1", Duration::from_secs(2));
    assert!(stopping.at >= before_stop);
    assert!(
        stopping
            .text
            .lines()
            .any(|l| l.starts_with("STATUS=stopping (SIGTERM)")),
        "{:?}",
        stopping.text
    );
    assert_eq!(
        n.with_line("READY=1").len(),
        1,
        "READY=1 not exactly once: {:#?}",
        n.msgs()
    );
    assert_eq!(n.with_line("STOPPING=1").len(), 1);
    assert!(
        p.log()
            .contains("systemd watchdog enabled: pinging every 250ms"),
        "{}",
        p.log()
    );
}

#[test]
fn watchdog_pid_of_another_process_means_no_pings() {
    let dir = target_tmpdir();
    let n = Collector::start(dir.path(), None);
    let mut p = serve_notified(
        dir.path(),
        &n,
        &[],
        &[("WATCHDOG_USEC", "500000"), ("WATCHDOG_PID", "1")],
    );
    let ready = n.wait_for("READY=1", START);
    while n.now() < ready.at + Duration::from_millis(1200) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        n.with_line("WATCHDOG=1").is_empty(),
        "pinged for another pid's watchdog: {:#?}",
        n.msgs()
    );
    assert!(!p.log().contains("watchdog enabled"), "{}", p.log());
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn watchdog_pid_of_this_process_means_pings() {
    let dir = target_tmpdir();
    let n = Collector::start(dir.path(), None);
    let sock = dir.path().join("fcgi.sock");
    // sh execs myflask, so $$ is the pid that ends up serving.
    let mut cmd = clean_cmd("/bin/sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" serve \"$@\"")
        .arg(BIN)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .env("NOTIFY_SOCKET", &n.path)
        .env("WATCHDOG_USEC", "500000");
    let mut p = Proc::spawn(&mut cmd, &dir.path().join("log"));
    let ready = n.wait_for("READY=1", START);
    while n.now() < ready.at + Duration::from_millis(1100) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pings = n.with_line("WATCHDOG=1").len();
    assert!((3..=6).contains(&pings), "{pings} pings in ~1 s");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn start_failure_is_reported_to_systemd() {
    let dir = target_tmpdir();
    let n = Collector::start(dir.path(), None);
    let mut cmd = clean_cmd(BIN);
    cmd.arg("serve")
        .arg("--listen")
        .arg("unix:/nonexistent-myflask-dir/fcgi.sock")
        .env("NOTIFY_SOCKET", &n.path)
        .env("WATCHDOG_USEC", "500000");
    let mut p = Proc::spawn(&mut cmd, &dir.path().join("log"));
    let st = p.wait_exit(START);
    assert_eq!(st.code(), Some(1), "{}", p.log());
    let failed = n.wait_for("STATUS=", Duration::from_secs(2));
    assert!(
        failed.text.starts_with(
            "STATUS=failed to start: directory /nonexistent-myflask-dir does not exist"
        ),
        "{:?}",
        failed.text
    );
    assert!(n.with_line("READY=1").is_empty());
    assert!(n.with_line("WATCHDOG=1").is_empty());
}

// ---------------------------------------------------------------------------
// Drain on SIGTERM.

/// BEGIN and PARAMS of `POST /echo` with a body of `len` bytes, which the
/// test then sends in pieces; the content type comes back in the echo.
fn begin_post(id: u16, keep_conn: bool, len: usize) -> BytesMut {
    let ct = [("CONTENT_TYPE", "application/x-drain-test")];
    raw::head(id, keep_conn, "POST", "/echo", &ct, Some(len))
}

/// After SIGTERM, connecting must fail, or the connection must never be
/// served.
fn assert_not_accepted(path: &Path) {
    let c = UnixStream::connect(path);
    eprintln!("connect() after SIGTERM: {c:?}");
    match c {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ),
            "{e}"
        ),
        Ok(_) => {
            let req = client::Request {
                method: "GET".into(),
                uri: "/healthz".into(),
                ..Default::default()
            };
            let r = common::fcgi_request(
                &ListenAddr::Unix(path.to_path_buf()),
                &req,
                Duration::from_secs(2),
            );
            assert!(r.is_err(), "served a connection made after SIGTERM: {r:?}");
        }
    }
}

#[test]
fn sigterm_mid_body_drains_the_request() {
    let mut s = Server::start(&[]);
    let body = noise(512 * 1024, 1);
    let chunks: Vec<&[u8]> = body.chunks(64 * 1024).collect();
    let rt = current_thread_runtime();
    let (resp, eof_after) = rt.block_on(async {
        let mut c = tokio::net::UnixStream::connect(&s.sock).await.unwrap();
        let out = begin_post(1, true, body.len());
        c.write_all(&out).await.unwrap();
        for (i, chunk) in chunks.iter().enumerate() {
            if i == 3 {
                s.signal(libc::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(5);
                while !s.stderr().contains("SIGTERM: shutting down") {
                    assert!(Instant::now() < deadline, "no shutdown log: {}", s.stderr());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert!(
                    s.stderr().contains("draining 1 requests in flight"),
                    "{}",
                    s.stderr()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Still draining: new connections are not served.
                let path = s.sock.clone();
                tokio::task::spawn_blocking(move || assert_not_accepted(&path))
                    .await
                    .unwrap();
            }
            let mut b = BytesMut::new();
            record::put_stream(&mut b, record::STDIN, 1, chunk);
            c.write_all(&b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let mut b = BytesMut::new();
        record::put_stream_end(&mut b, record::STDIN, 1);
        c.write_all(&b).await.unwrap();
        let mut buf = BytesMut::new();
        let resp = tokio::time::timeout(
            Duration::from_secs(20),
            client::read_response(&mut c, 1, &mut buf),
        )
        .await
        .expect("no response")
        .expect("response");
        // KEEP_CONN was set, but the server is shutting down: after
        // END_REQUEST comes the "do not reuse" marker (an empty STDERR
        // record), then the server closes.
        let mut rest = buf.to_vec();
        let eof = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
        (resp, eof.map(|r| r.map(|_| rest)))
    });
    assert_eq!(resp.status, 200);
    assert_eq!(resp.protocol_status, record::REQUEST_COMPLETE);
    assert_eq!(
        resp.header("content-type"),
        Some("application/x-drain-test")
    );
    assert_eq!(resp.body.len(), body.len());
    assert!(resp.body == body, "echo differs from the body sent");
    match eof_after {
        Ok(Ok(rest)) => assert_eq!(rest, FAREWELL, "bytes after END_REQUEST"),
        other => panic!("connection not closed after the drained request: {other:?}"),
    }
    let st = s.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", s.stderr());
    assert!(
        s.stderr().contains("all connections closed; exiting"),
        "{}",
        s.stderr()
    );
    assert!(!s.sock.exists(), "bound socket not removed on exit");
}

/// An empty STDERR record for request id 1: what the server sends after
/// END_REQUEST once shutdown has begun, and on idle connections. nginx
/// drops a cached connection on which anything arrives, so it never sends
/// a request into a connection the server is about to close.
const FAREWELL: [u8; 8] = [1, record::STDERR, 0, 1, 0, 0, 0, 0];

async fn keepalive_get(c: &mut tokio::net::UnixStream, buf: &mut BytesMut) -> client::Response {
    let req = client::Request {
        method: "GET".into(),
        uri: "/healthz".into(),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    client::encode_request(&mut out, 1, true, &req);
    c.write_all(&out).await.unwrap();
    client::read_response(c, 1, buf).await.unwrap()
}

#[test]
fn sigterm_tells_idle_keepalive_connections_then_closes_them() {
    let mut s = Server::start(&[]);
    let rt = current_thread_runtime();
    let (t_mark, t_eof) = rt.block_on(async {
        let mut c = tokio::net::UnixStream::connect(&s.sock).await.unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(keepalive_get(&mut c, &mut buf).await.status, 200);
        assert!(
            buf.is_empty(),
            "bytes after END_REQUEST before shutdown: {buf:?}"
        );
        // Idle now, kept open by KEEP_CONN.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        s.signal(libc::SIGTERM);
        let mut mark = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut mark))
            .await
            .expect("no farewell record within 2 s of SIGTERM")
            .expect("read");
        let t_mark = t0.elapsed();
        assert_eq!(mark, FAREWELL);
        // A client that does not close (nginx would): the server closes
        // after its grace.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .expect("idle connection still open 5 s after SIGTERM")
            .expect("read");
        assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
        (t_mark, t0.elapsed())
    });
    eprintln!("idle keep-alive connection: farewell {t_mark:?}, closed {t_eof:?} after SIGTERM");
    assert!(
        t_eof >= Duration::from_millis(1500),
        "closed before the grace: {t_eof:?}"
    );
    let st = s.wait(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{}", s.stderr());
}

#[test]
fn request_racing_the_farewell_is_served_then_the_connection_closes() {
    // nginx may have sent a request on a cached connection just before the
    // farewell reached it: that request must be answered, not reset.
    let mut s = Server::start(&[]);
    let rt = current_thread_runtime();
    rt.block_on(async {
        let mut c = tokio::net::UnixStream::connect(&s.sock).await.unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(keepalive_get(&mut c, &mut buf).await.status, 200);
        s.signal(libc::SIGTERM);
        let mut mark = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut mark))
            .await
            .expect("no farewell")
            .expect("read");
        assert_eq!(mark, FAREWELL);
        let t0 = Instant::now();
        let r = keepalive_get(&mut c, &mut buf).await;
        assert_eq!(r.status, 200);
        let mut rest = buf.to_vec();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .expect("not closed after the last response")
            .expect("read");
        assert_eq!(rest, FAREWELL, "marker after the last END_REQUEST");
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "closed only at the grace: {:?}",
            t0.elapsed()
        );
    });
    let st = s.wait(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "{}", s.stderr());
}

#[test]
fn shutdown_timeout_bounds_the_drain() {
    let mut s = Server::start(&["--shutdown-timeout", "1"]);
    let rt = current_thread_runtime();
    let _c = rt.block_on(async {
        let mut c = tokio::net::UnixStream::connect(&s.sock).await.unwrap();
        let mut out = begin_post(1, true, 1000);
        record::put_stream(&mut out, record::STDIN, 1, &[b'x'; 100]);
        c.write_all(&out).await.unwrap();
        // The rest of the body never comes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        c
    });
    let t0 = Instant::now();
    s.signal(libc::SIGTERM);
    let st = s.wait(Duration::from_secs(10));
    let took = t0.elapsed();
    assert_eq!(st.code(), Some(0), "{}", s.stderr());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM with --shutdown-timeout 1"
    );
    assert!(
        s.stderr()
            .contains("shutdown timeout (1s) passed with 1 requests still in flight"),
        "{}",
        s.stderr()
    );
}

#[test]
fn watchdog_keeps_pinging_while_draining() {
    let dir = target_tmpdir();
    let n = Collector::start(dir.path(), None);
    let mut p = serve_notified(dir.path(), &n, &[], &[("WATCHDOG_USEC", "500000")]);
    n.wait_for("READY=1", START);
    let sock = dir.path().join("fcgi.sock");
    let rt = current_thread_runtime();
    let body = noise(10_000, 2);
    let resp = rt.block_on(async {
        let mut c = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let mut out = begin_post(1, false, body.len());
        record::put_stream(&mut out, record::STDIN, 1, &body[..5000]);
        c.write_all(&out).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.signal(libc::SIGTERM);
        let stopping = n.wait_for("STOPPING=1", Duration::from_secs(5));
        // A drain of 1.5 s: systemd must keep seeing a live service.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pings = n
            .with_line("WATCHDOG=1")
            .iter()
            .filter(|m| m.at > stopping.at)
            .count();
        eprintln!("{pings} watchdog pings during a 1.5 s drain");
        assert!(pings >= 4, "{pings} pings during 1.5 s of draining");
        let mut out = BytesMut::new();
        record::put_stream(&mut out, record::STDIN, 1, &body[5000..]);
        record::put_stream_end(&mut out, record::STDIN, 1);
        c.write_all(&out).await.unwrap();
        let mut buf = BytesMut::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            client::read_response(&mut c, 1, &mut buf),
        )
        .await
        .unwrap()
        .unwrap()
    });
    assert_eq!(resp.status, 200);
    assert!(resp.body == body);
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(0));
}
