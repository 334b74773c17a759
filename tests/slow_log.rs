//! `--slow-request-threshold`: the warning is written while the slow
//! request still runs, once, with its fields and the phase it is slow in
//! (the real binary: its built-in `/upload?pace_ms=N`, which reads its body
//! slowly, is slow in its body; `/sleep?ms=N` in its handler).

mod common;

use bytes::Bytes;
use common::{Server, fcgi_request};
use std::time::{Duration, Instant};

#[test]
fn a_slow_request_is_logged_while_it_runs_and_once() {
    let s = Server::start(&["--slow-request-threshold", "200"]);
    let addr = s.addr();
    let started = Instant::now();
    let slow = std::thread::spawn(move || {
        let req = myflask::fastcgi::client::Request {
            method: "POST".into(),
            uri: "/upload?pace_ms=300".into(),
            body: Bytes::from(vec![7u8; 256 * 1024]),
            headers: vec![(
                "traceparent".into(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            )],
            ..Default::default()
        };
        fcgi_request(&addr, &req, Duration::from_secs(20)).expect("upload")
    });
    let needle = "slow request: POST /upload?pace_ms=300";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.stderr().contains(needle) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let running = !slow.is_finished();
    let seen_after = started.elapsed();
    let log = s.stderr();
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no slow-request warning:\n{log}"));
    assert!(
        running,
        "logged only after the request ended ({seen_after:?})"
    );
    assert!(line.contains("WARN"), "{line}");
    for field in [
        "request_id=",
        "duration_us=",
        "method=POST",
        "phase=\"reading body\"",
        "trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    let resp = slow.join().expect("thread");
    assert_eq!(resp.status, 200);
    let total = started.elapsed();
    assert!(total > seen_after, "the request outlived its warning");
    assert_eq!(
        s.stderr().matches(needle).count(),
        1,
        "one warning per request"
    );
    eprintln!("warned after {seen_after:?}; the request took {total:?}");
}

#[test]
fn a_request_slow_in_its_handler_is_logged_in_that_phase() {
    let s = Server::start(&["--slow-request-threshold", "200"]);
    let addr = s.addr();
    let slow = std::thread::spawn(move || common::fcgi_get(&addr, "/sleep?ms=800").status);
    let needle = "slow request: GET /sleep?ms=800";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.stderr().contains(needle) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = s.stderr();
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no slow-request warning:\n{log}"));
    assert!(line.contains("phase=\"in handler\""), "{line}");
    assert_eq!(slow.join().expect("thread"), 200);
}
