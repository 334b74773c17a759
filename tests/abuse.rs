//! Bad input, hostile clients and limits, against the real `myflask serve`
//! binary: garbage, truncated records, absurd lengths, protocol violations,
//! 1000 idle connections, slowloris, idle keep-alive, and a params flood
//! with a memory bound. Each must end only the offending connection, be
//! logged with context, and leave the server serving (checked at the end of
//! every test: `/healthz` answers and SIGTERM still exits 0).

mod common;

use bytes::BytesMut;
use common::Server;
use common::raw::{self, Conn};
use myflask::fastcgi::record;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The server still serves, then drains and exits 0 on SIGTERM.
async fn alive_then_stop(mut srv: Server) -> String {
    raw::healthz(&srv.sock).await;
    // Only /status itself in flight (a finished request's counter drops
    // just after its END_REQUEST is queued, hence the wait).
    raw::wait_status(&srv.sock, "active_requests", 1, Duration::from_secs(5)).await;
    let log = srv.stderr();
    let code = tokio::task::spawn_blocking(move || srv.stop())
        .await
        .expect("stop");
    assert!(code.success(), "exit status {code}; log:\n{log}");
    log
}

/// Reads until the peer closes; returns how the connection ended (EOF or
/// an error such as ECONNRESET) and when, bounded by `raw::WAIT`.
async fn closed(s: &mut UnixStream) -> (io::Result<()>, Duration) {
    let t = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match raw::within("waiting for the server to close", s.read(&mut buf)).await {
            Ok(0) => return (Ok(()), t.elapsed()),
            Ok(_) => {}
            Err(e) => return (Err(e), t.elapsed()),
        }
    }
}

/// A connection with a request in flight (body half sent) that must come
/// through whatever other connections do.
struct Bystander {
    c: Conn,
    body: Vec<u8>,
}

impl Bystander {
    async fn start(sock: &std::path::Path) -> Bystander {
        let body = raw::noise(200_000, 99);
        let mut c = Conn::connect(sock).await;
        let mut b = raw::begin(1, true);
        b.extend_from_slice(&raw::stream(
            record::PARAMS,
            1,
            &raw::std_params("POST", "/echo", Some(body.len()), &[]),
        ));
        record::put_stream(&mut b, record::STDIN, 1, &body[..100_000]);
        c.send(&b).await;
        c.barrier().await;
        Bystander { c, body }
    }

    async fn finish(mut self) {
        let mut b = BytesMut::new();
        record::put_stream(&mut b, record::STDIN, 1, &self.body[100_000..]);
        record::put_stream_end(&mut b, record::STDIN, 1);
        self.c.send(&b).await;
        let h = self.c.reply(1).await.http();
        assert_eq!(h.status, 200);
        raw::assert_same(&h.body, &self.body, "bystander echo");
        let h = self.c.get(2, "/healthz").await;
        assert_eq!(h.status, 200);
        self.c.finish().await;
    }
}

fn bad_version_record() -> Vec<u8> {
    let mut r = raw::record_padded(record::STDIN, 1, b"x", 0);
    r[0] = 0;
    r
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn garbage_closes_only_the_offending_connection() {
    let srv = Server::start(&["--stall-timeout", "2"]);
    let bystander = Bystander::start(&srv.sock).await;
    let mut noise = raw::noise(100_000, 11);
    noise[0] = 0x47;
    let mut typed = raw::record_padded(66, 0, &[0u8; 4096], 0);
    typed.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("64 KiB of 0xff", vec![0xff; 64 * 1024]),
        ("100 KB of noise", noise),
        ("an unknown type, then garbage", typed),
        ("8 zero bytes", vec![0; 8]),
    ];
    for (what, bytes) in cases {
        let mut s = UnixStream::connect(&srv.sock).await.unwrap();
        // A write may fail once the server has closed: that is fine.
        let _ = raw::within("write garbage", s.write_all(&bytes)).await;
        let (r, took) = closed(&mut s).await;
        assert!(
            took < Duration::from_secs(5),
            "{what}: closed after {took:?} ({r:?})"
        );
        // The server closes: EOF, or a reset when it did not read it all.
        if let Err(e) = r {
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{what}: {e}");
        }
    }
    // A valid request first, then garbage on the same connection.
    let mut c = Conn::connect(&srv.sock).await;
    assert_eq!(c.get(1, "/healthz").await.status, 200);
    c.send(&bad_version_record()).await;
    c.eof().await.expect("EOF after garbage");

    bystander.finish().await;
    let log = alive_then_stop(srv).await;
    assert!(
        log.contains("is an HTTP client talking to the FastCGI socket?"),
        "the HTTP case is named in the log:\n{log}"
    );
    assert!(log.contains("unsupported FastCGI version 255"), "{log}");
    assert!(log.contains("unsupported FastCGI version 222"), "{log}");
}

#[tokio::test]
async fn truncated_records_then_close() {
    let srv = Server::start(&[]);
    let bystander = Bystander::start(&srv.sock).await;
    let full = raw::request(1, true, "POST", "/echo", &[], &raw::noise(10_000, 12));
    let begin_len = 16;
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("3 bytes of a header".into(), full[..3].to_vec()),
        ("a header promising 1000 bytes, 10 sent".into(), {
            let mut v = raw::record_padded(record::PARAMS, 1, &[b'a'; 1000], 0);
            v.truncate(18);
            v
        }),
        ("BEGIN only".into(), full[..begin_len].to_vec()),
    ];
    // Every cut of the request that leaves PARAMS or STDIN unfinished.
    for cut in [
        begin_len + 9,
        begin_len + 100,
        full.len() / 2,
        full.len() - 9,
        full.len() - 8,
    ] {
        cases.push((
            format!("request cut at {cut} of {}", full.len()),
            full[..cut].to_vec(),
        ));
    }
    for (what, bytes) in &cases {
        let mut s = UnixStream::connect(&srv.sock).await.unwrap();
        raw::within("write", s.write_all(bytes))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        drop(s);
    }
    // All those connections and their handlers go away.
    raw::wait_status(&srv.sock, "active_connections", 2, Duration::from_secs(10)).await;
    raw::wait_status(&srv.sock, "active_requests", 2, Duration::from_secs(10)).await;
    bystander.finish().await;
    raw::wait_status(&srv.sock, "active_connections", 1, Duration::from_secs(10)).await;
    alive_then_stop(srv).await;
}

#[tokio::test]
async fn absurd_lengths() {
    let srv = Server::start(&["--stall-timeout", "1", "--max-body-bytes", "1000000"]);
    // (The bystander must not pause for the 1 s stall timeout itself, so
    // it is finished before the stalling case below.)
    let bystander = Bystander::start(&srv.sock).await;
    let mut c = Conn::connect(&srv.sock).await;
    let good = raw::std_params("GET", "/request", None, &[]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "2 GiB name length",
            [good.as_slice(), &[0xff, 0xff, 0xff, 0xff, 0x01], b"ab"].concat(),
            400,
        ),
        (
            "2 GiB value length",
            [good.as_slice(), &[0x01, 0xff, 0xff, 0xff, 0xff], b"ab"].concat(),
            400,
        ),
        (
            "CONTENT_LENGTH u64::MAX",
            raw::std_params(
                "POST",
                "/echo",
                None,
                &[("CONTENT_LENGTH", "18446744073709551615")],
            ),
            413,
        ),
        (
            "CONTENT_LENGTH past u64",
            raw::std_params(
                "POST",
                "/echo",
                None,
                &[("CONTENT_LENGTH", "99999999999999999999999")],
            ),
            400,
        ),
        (
            "CONTENT_LENGTH negative",
            raw::std_params("POST", "/echo", None, &[("CONTENT_LENGTH", "-5")]),
            400,
        ),
    ];
    for (what, p, want) in cases {
        let mut b = raw::begin(65535, true);
        b.extend_from_slice(&raw::stream(record::PARAMS, 65535, &p));
        record::put_stream_end(&mut b, record::STDIN, 65535);
        c.send(&b).await;
        let h = c.reply(65535).await.http();
        assert_eq!(h.status, want, "{what}: {}", h.text());
    }
    assert_eq!(c.get(1, "/healthz").await.status, 200);
    bystander.finish().await;

    // A record header promising 65535 + 255 bytes that never come: closed
    // after the stall timeout; an idle keep-alive connection is unaffected.
    let mut s = UnixStream::connect(&srv.sock).await.unwrap();
    s.write_all(&[1, record::STDIN, 0, 1, 0xff, 0xff, 0xff, 0])
        .await
        .unwrap();
    let (r, took) = closed(&mut s).await;
    r.expect("EOF");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(c.get(1, "/healthz").await.status, 200);
    c.finish().await;
    let log = alive_then_stop(srv).await;
    assert!(log.contains("peer stalled"), "{log}");
}

#[tokio::test]
async fn protocol_violations_close_the_connection_with_a_log_line() {
    let srv = Server::start(&[]);
    let bystander = Bystander::start(&srv.sock).await;
    let params = raw::stream(record::PARAMS, 1, &raw::std_params("GET", "/", None, &[]));
    let mut half_params = raw::begin(1, true);
    record::put_record(
        &mut half_params,
        record::PARAMS,
        1,
        &raw::std_params("POST", "/echo", None, &[]),
    );
    let mut begin_zero = BytesMut::new();
    record::put_begin_request(
        &mut begin_zero,
        0,
        record::ROLE_RESPONDER,
        record::KEEP_CONN,
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "BEGIN with id 0",
            begin_zero.to_vec(),
            "BEGIN_REQUEST with request id 0",
        ),
        (
            "STDIN before PARAMS ends",
            [
                &half_params[..],
                &raw::stream(record::STDIN, 1, b"early")[..],
            ]
            .concat(),
            "STDIN for request id 1 before its PARAMS stream ended",
        ),
        (
            "PARAMS after PARAMS ended",
            [
                &raw::begin(1, true)[..],
                &raw::stream(
                    record::PARAMS,
                    1,
                    &raw::std_params("POST", "/echo", None, &[]),
                )[..],
                &params[..],
            ]
            .concat(),
            "after its PARAMS stream ended",
        ),
        (
            "BEGIN for an active id",
            [&half_params[..], &raw::begin(1, true)[..]].concat(),
            "which is still active",
        ),
        (
            "BEGIN with a 2-byte body",
            raw::record_padded(record::BEGIN_REQUEST, 4, &[0, 1], 0),
            "has a 2-byte body",
        ),
    ];
    for (what, bytes, logged) in cases {
        let mut c = Conn::connect(&srv.sock).await;
        // A request before the violation is served...
        assert_eq!(c.get(7, "/healthz").await.status, 200, "{what}");
        c.send(&bytes).await;
        // ...and the violation closes the connection (without any answer
        // for the offending request).
        c.eof().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let log = srv.stderr();
        assert!(
            log.contains(logged),
            "{what}: no {logged:?} in the log:\n{log}"
        );
    }
    // Records for ids never begun are ignored, not fatal.
    let mut c = Conn::connect(&srv.sock).await;
    let mut b = BytesMut::new();
    record::put_record(&mut b, record::STDIN, 9, b"stray");
    record::put_record(&mut b, record::PARAMS, 9, b"stray");
    record::put_record(&mut b, record::ABORT_REQUEST, 9, b"");
    record::put_record(&mut b, record::DATA, 9, b"data");
    record::put_record(&mut b, record::STDOUT, 9, b"wrong direction");
    c.send(&b).await;
    assert_eq!(c.get(1, "/healthz").await.status, 200);
    bystander.finish().await;
    alive_then_stop(srv).await;
}

#[tokio::test]
async fn a_thousand_idle_connections_do_not_stop_service() {
    common::require_nofile(4096);
    let srv = Server::start(&[]);
    raw::healthz(&srv.sock).await;
    let rss0 = raw::proc_kib(srv.pid(), "VmRSS");
    let sock = srv.sock.clone();
    // Blocking connects: they wait in the backlog instead of failing.
    let idle = tokio::task::spawn_blocking(move || {
        (0..1000)
            .map(|i| {
                std::os::unix::net::UnixStream::connect(&sock)
                    .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    raw::wait_status(
        &srv.sock,
        "active_connections",
        1001,
        Duration::from_secs(20),
    )
    .await;
    let rss1 = raw::proc_kib(srv.pid(), "VmRSS");
    // Requests on other connections are served meanwhile, also multiplexed.
    let t = Instant::now();
    let mut c = Conn::connect(&srv.sock).await;
    for i in 0..50u16 {
        let h = c
            .roundtrip(
                1 + i % 4,
                true,
                "POST",
                "/echo",
                &[],
                format!("req {i}").as_bytes(),
            )
            .await;
        assert_eq!(h.text(), format!("req {i}"));
    }
    for _ in 0..20 {
        raw::healthz(&srv.sock).await;
    }
    let took = t.elapsed();
    eprintln!(
        "1000 idle connections: RSS {rss0} KiB -> {rss1} KiB (+{} KiB, {:.1} KiB each); \
         70 requests meanwhile in {took:?}",
        rss1.saturating_sub(rss0),
        rss1.saturating_sub(rss0) as f64 / 1000.0
    );
    assert!(
        rss1.saturating_sub(rss0) < 64 * 1024,
        "1000 idle connections cost {} KiB",
        rss1 - rss0
    );
    drop(idle);
    c.finish().await;
    raw::wait_status(&srv.sock, "active_connections", 1, Duration::from_secs(20)).await;
    alive_then_stop(srv).await;
}

#[tokio::test]
async fn at_max_connections_accepting_pauses() {
    let srv = Server::start(&["--max-connections", "5"]);
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut c = Conn::connect(&srv.sock).await;
        c.barrier().await; // served, so it holds a slot
        idle.push(c);
    }
    // The sixth connects (the backlog holds it) but is not served...
    let mut sixth = Conn::connect(&srv.sock).await;
    sixth
        .send(&raw::request(1, true, "GET", "/healthz", &[], b""))
        .await;
    sixth.quiet(Duration::from_millis(500)).await;
    // ...until a slot frees.
    idle.pop();
    assert_eq!(sixth.reply(1).await.http().status, 200);
    drop(idle);
    drop(sixth);
    alive_then_stop(srv).await;
}

/// Writes `bytes` one at a time, `every` apart, until the server closes.
fn trickle(mut w: tokio::net::unix::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    tokio::spawn(async move {
        for b in bytes {
            if w.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        // Then hold the connection open without sending anything.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(w);
    });
}

#[tokio::test]
async fn slowloris_is_cut_off_after_the_stall_timeout() {
    let srv = Server::start(&["--stall-timeout", "1"]);
    let sock = srv.sock.clone();
    let full = raw::request(1, true, "GET", "/healthz", &[], b"");
    let mut params_drip = raw::begin(1, true).to_vec();
    let p = raw::std_params("GET", "/", None, &[]);
    for chunk in p.chunks(3) {
        params_drip.extend(raw::record_padded(record::PARAMS, 1, chunk, 0));
    }
    let kinds: Vec<(&str, Vec<u8>, Duration)> = vec![
        (
            "partial header, then nothing",
            full[..4].to_vec(),
            Duration::from_secs(60),
        ),
        (
            "one byte every 200 ms",
            full.to_vec(),
            Duration::from_millis(200),
        ),
        // Whole records, but a PARAMS stream that never ends.
        ("PARAMS records every 200 ms", params_drip, Duration::ZERO),
    ];
    let mut tasks = Vec::new();
    for (what, bytes, every) in kinds {
        let s = UnixStream::connect(&sock).await.unwrap();
        let (mut r, mut w) = s.into_split();
        if every.is_zero() {
            // Send it record by record, 200 ms apart.
            let mut recs = Vec::new();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Some(rec) = record::decode(&mut buf).unwrap() {
                let mut b = BytesMut::new();
                record::put_record(&mut b, rec.kind, rec.request_id, &rec.content);
                recs.push(b);
            }
            tokio::spawn(async move {
                for b in recs {
                    if w.write_all(&b).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        } else {
            trickle(w, bytes, every);
        }
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let mut buf = vec![0u8; 4096];
            let end = match raw::within(what, r.read(&mut buf)).await {
                Ok(0) => "EOF".to_string(),
                Ok(n) => panic!("{what}: got {n} bytes of answer"),
                Err(e) => e.to_string(),
            };
            (what, t.elapsed(), end)
        }));
    }
    // Meanwhile other clients are served promptly.
    let t = Instant::now();
    let mut served = 0;
    while t.elapsed() < Duration::from_millis(1500) {
        let t1 = Instant::now();
        raw::healthz(&sock).await;
        assert!(
            t1.elapsed() < Duration::from_millis(900),
            "a request took {:?}",
            t1.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        let (what, took, end) = t.await.unwrap();
        eprintln!("slowloris {what:?}: closed after {took:?} ({end})");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{what}: closed after {took:?} with --stall-timeout 1"
        );
    }
    eprintln!("{served} requests served during the slowloris");
    let log = alive_then_stop(srv).await;
    assert!(log.contains("peer stalled for 1s"), "{log}");
}

#[tokio::test]
async fn a_slow_but_steady_upload_is_not_a_slowloris() {
    let srv = Server::start(&["--stall-timeout", "1"]);
    let mut c = Conn::connect(&srv.sock).await;
    let mut b = raw::begin(1, true);
    b.extend_from_slice(&raw::stream(
        record::PARAMS,
        1,
        &raw::std_params("POST", "/echo", Some(6 * 100), &[]),
    ));
    c.send(&b).await;
    // 6 records 400 ms apart: 2.4 s in all, more than the stall timeout,
    // but never a gap of a whole second.
    for i in 0..6u8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut r = BytesMut::new();
        record::put_record(&mut r, record::STDIN, 1, &[b'0' + i; 100]);
        c.send(&r).await;
    }
    c.send(&raw::stream(record::STDIN, 1, b"")).await;
    let h = c.reply(1).await.http();
    assert_eq!(h.status, 200);
    assert_eq!(h.body.len(), 600);
    c.finish().await;
    alive_then_stop(srv).await;
}

#[tokio::test]
async fn idle_keep_alive_is_closed_after_the_idle_timeout() {
    let srv = Server::start(&["--idle-timeout", "1"]);
    // After a request.
    let mut c = Conn::connect(&srv.sock).await;
    assert_eq!(c.get(1, "/healthz").await.status, 200);
    let (r, took) = c.eof_timed().await;
    r.expect("EOF");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "idle connection closed after {took:?}"
    );
    // A connection that never sends anything.
    let mut s = UnixStream::connect(&srv.sock).await.unwrap();
    let (r, took) = closed(&mut s).await;
    r.expect("EOF");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // Steady use keeps a connection open well past the timeout.
    let mut c = Conn::connect(&srv.sock).await;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(2500) {
        assert_eq!(c.get(1, "/healthz").await.status, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    c.finish().await;
    alive_then_stop(srv).await;
}

#[tokio::test]
async fn idle_clock_starts_when_a_slow_response_is_done() {
    // Request tasks do not wake the reader when they finish; the idle
    // timeout must still count from the end of the response, not from the
    // last bytes read (here 1.5 s before the response).
    let srv = Server::start(&["--idle-timeout", "1"]);
    let mut c = Conn::connect(&srv.sock).await;
    let t = Instant::now();
    // Three 60 KiB STDIN records; the handler waits 500 ms after each.
    let body = vec![b'x'; 3 * 60 * 1024];
    let h = c
        .roundtrip(1, true, "POST", "/upload?pace_ms=500", &[], &body)
        .await;
    assert_eq!(h.status, 200, "{}", h.text());
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    let (r, took) = c.eof_timed().await;
    r.expect("EOF");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "closed {took:?} after the response although --idle-timeout is 1 s"
    );
    alive_then_stop(srv).await;
}

#[tokio::test]
async fn idle_timer_restarts_after_a_request_the_server_answers_itself() {
    // 400 and 431 answers come from the connection engine, not a handler;
    // they are activity too.
    let srv = Server::start(&["--idle-timeout", "2"]);
    let mut c = Conn::connect(&srv.sock).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let h = c.roundtrip(1, true, "G T", "/", &[], b"").await;
    assert_eq!(h.status, 400);
    let (r, took) = c.eof_timed().await;
    r.expect("EOF");
    assert!(
        took >= Duration::from_millis(1700),
        "closed {took:?} after a request although --idle-timeout is 2 s"
    );
    alive_then_stop(srv).await;
}

#[tokio::test]
async fn params_flood_is_refused_with_bounded_memory() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    // Warm up: the normal paths, and one small over-the-cap request.
    assert_eq!(c.get(1, "/healthz").await.status, 200);
    let big = "x".repeat(200 * 1024);
    let h = c
        .roundtrip(1, true, "GET", "/", &[("HTTP_X_BIG", &big)], b"")
        .await;
    assert_eq!(h.status, 431);
    let rss0 = raw::proc_kib(srv.pid(), "VmRSS");
    let hwm0 = raw::proc_kib(srv.pid(), "VmHWM");

    let t = Instant::now();
    c.send(&raw::begin(1, true)).await;
    let mut one = BytesMut::new();
    record::put_record(&mut one, record::PARAMS, 1, &[b'p'; 65535]);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 16).collect();
    let mut sent = 0usize;
    while sent < 64 << 20 {
        c.send_untracked(&batch).await.expect("flood write");
        sent += 16 * 65535;
    }
    let mut end = BytesMut::new();
    record::put_stream_end(&mut end, record::PARAMS, 1);
    record::put_stream_end(&mut end, record::STDIN, 1);
    c.send(&end).await;
    let h = c.reply(1).await.http();
    let took = t.elapsed();
    assert_eq!(h.status, 431, "{}", h.text());
    let rss1 = raw::proc_kib(srv.pid(), "VmRSS");
    let hwm1 = raw::proc_kib(srv.pid(), "VmHWM");
    eprintln!(
        "params flood: {} MiB of PARAMS in {took:?}; RSS {rss0} -> {rss1} KiB, \
         peak {hwm0} -> {hwm1} KiB (peak over the flood's start RSS: +{} KiB)",
        sent >> 20,
        hwm1.saturating_sub(rss0)
    );
    assert!(
        hwm1.saturating_sub(rss0) < 16 * 1024,
        "RSS grew by {} KiB during a params flood",
        hwm1 - rss0
    );
    // The connection is fine afterwards.
    assert_eq!(c.get(1, "/healthz").await.status, 200);
    c.finish().await;
    alive_then_stop(srv).await;
}

#[tokio::test]
async fn body_flood_past_the_limit_is_refused_with_bounded_memory() {
    // 64 MiB of STDIN for a handler that stops reading at the limit.
    let srv = Server::start(&["--max-body-bytes", "1048576"]);
    let mut c = Conn::connect(&srv.sock).await;
    assert_eq!(
        c.roundtrip(1, true, "POST", "/echo", &[], b"warm")
            .await
            .status,
        200
    );
    let rss0 = raw::proc_kib(srv.pid(), "VmRSS");
    let mut b = raw::begin(1, true);
    b.extend_from_slice(&raw::stream(
        record::PARAMS,
        1,
        &raw::std_params("POST", "/echo", None, &[]),
    ));
    c.send(&b).await;
    let mut one = BytesMut::new();
    record::put_record(&mut one, record::STDIN, 1, &[b's'; 65535]);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 16).collect();
    for _ in 0..64 {
        c.send_untracked(&batch).await.expect("flood write");
    }
    c.send(&raw::stream(record::STDIN, 1, b"")).await;
    let h = c.reply(1).await.http();
    assert_eq!(h.status, 413, "{}", h.text());
    let hwm = raw::proc_kib(srv.pid(), "VmHWM");
    eprintln!("body flood: RSS before {rss0} KiB, peak {hwm} KiB");
    assert!(
        hwm.saturating_sub(rss0) < 16 * 1024,
        "peak grew by {} KiB",
        hwm - rss0
    );
    c.finish().await;
    alive_then_stop(srv).await;
}

#[tokio::test]
async fn everything_at_once_and_the_server_lives() {
    // One server, all kinds of abuse concurrently, while a well-behaved
    // client keeps making requests; every one of them must succeed.
    let srv = Server::start(&["--stall-timeout", "1", "--idle-timeout", "2"]);
    let sock = srv.sock.clone();
    let good = {
        let sock = sock.clone();
        tokio::spawn(async move {
            let mut c = Conn::connect(&sock).await;
            let mut n = 0u32;
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(3) {
                let body = raw::noise(5000 + n as usize, n as u64);
                let h = c
                    .roundtrip(1 + (n % 7) as u16, true, "POST", "/echo", &[], &body)
                    .await;
                assert_eq!(h.status, 200);
                raw::assert_same(&h.body, &body, "good client echo");
                n += 1;
            }
            n
        })
    };
    let mut abusers = Vec::new();
    for i in 0..60u64 {
        let sock = sock.clone();
        abusers.push(tokio::spawn(async move {
            let mut s = UnixStream::connect(&sock).await.unwrap();
            let bytes: Vec<u8> = match i % 6 {
                0 => raw::noise(5000, i),
                1 => b"GET / HTTP/1.0\r\n\r\n".to_vec(),
                2 => raw::request(1, true, "POST", "/echo", &[], &[1; 3000])[..1500].to_vec(),
                3 => {
                    let mut b = BytesMut::new();
                    record::put_begin_request(&mut b, 0, 1, 1);
                    b.to_vec()
                }
                4 => vec![1, 5, 0, 1, 0xff, 0xff, 0, 0],
                _ => Vec::new(), // idle
            };
            let _ = s.write_all(&bytes).await;
            if i % 2 == 0 {
                // Wait for the server to close it.
                let _ = closed(&mut s).await;
            }
        }));
    }
    for a in abusers {
        raw::within("abuser", a).await.unwrap();
    }
    let n = raw::within("good client", good).await.unwrap();
    eprintln!("good client: {n} echoes during the abuse");
    assert!(n >= 5);
    raw::wait_status(&sock, "active_connections", 1, Duration::from_secs(10)).await;
    let log = alive_then_stop(srv).await;
    for needle in [
        "unsupported FastCGI version",
        "HTTP client",
        "BEGIN_REQUEST with request id 0",
        "peer stalled",
    ] {
        assert!(log.contains(needle), "no {needle:?} in the log:\n{log}");
    }
}

#[tokio::test]
async fn begin_flood_is_cut_off_quickly() {
    let srv = Server::start(&[]);
    // 200 requests in flight on one connection: over the per-connection cap
    // (128) but within FCGI_MAX_REQS (1024): the extras get 503, the
    // connection stays.
    let mut c = Conn::connect(&srv.sock).await;
    let mut b = BytesMut::new();
    for id in 1..=200u16 {
        b.extend_from_slice(&raw::begin(id, true));
        b.extend_from_slice(&raw::stream(
            record::PARAMS,
            id,
            &raw::std_params("POST", "/echo", Some(2), &[]),
        ));
        record::put_record(&mut b, record::STDIN, id, b"a");
    }
    c.send(&b).await;
    let mut b = BytesMut::new();
    for id in 1..=200u16 {
        b.extend_from_slice(&raw::stream(record::STDIN, id, b"b"));
    }
    c.send(&b).await;
    let (mut ok, mut busy) = (0, 0);
    for id in 1..=200u16 {
        match c.reply(id).await.http().status {
            200 => ok += 1,
            503 => busy += 1,
            s => panic!("request {id}: status {s}"),
        }
    }
    assert_eq!((ok, busy), (128, 72));
    assert_eq!(c.get(1, "/healthz").await.status, 200);

    // 65535 BEGIN_REQUESTs (1 MiB): the connection is closed at once
    // instead of costing a scan of every request per record.
    let mut s = UnixStream::connect(&srv.sock).await.unwrap();
    let mut b = BytesMut::new();
    for id in 1..=65535u16 {
        b.extend_from_slice(&raw::begin(id, true));
    }
    let t = Instant::now();
    let _ = raw::within("BEGIN flood", s.write_all(&b)).await;
    let (_, _) = closed(&mut s).await;
    let took = t.elapsed();
    eprintln!("65535 BEGINs: connection closed after {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    c.finish().await;
    let log = alive_then_stop(srv).await;
    assert!(log.contains("requests already in flight"), "{log}");
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_after_the_stall_timeout() {
    let srv = Server::start(&["--stall-timeout", "1"]);
    let mut c = Conn::connect(&srv.sock).await;
    // 100 requests for ~20 KiB responses each, never read.
    let big = "q".repeat(20_000);
    let mut b = BytesMut::new();
    for id in 1..=100u16 {
        b.extend_from_slice(&raw::request(
            id,
            true,
            "GET",
            "/request",
            &[("X_BIG", &big)],
            b"",
        ));
    }
    let t = Instant::now();
    c.send(&b).await;
    // Not reading: wait until the server gives up on us.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if srv.stderr().contains("left our output unread") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never dropped:\n{}",
            srv.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t.elapsed();
    eprintln!(
        "non-reading client dropped after {took:?}; server RSS {} KiB",
        raw::proc_kib(srv.pid(), "VmRSS")
    );
    assert!(took >= Duration::from_millis(900), "{took:?}");
    drop(c);
    raw::wait_status(&srv.sock, "active_connections", 1, Duration::from_secs(10)).await;
    alive_then_stop(srv).await;
}
