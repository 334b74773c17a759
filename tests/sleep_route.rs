//! The built-in `GET /sleep?ms=N` against the real binary over FastCGI: it
//! takes the time asked, does not hold up other requests, is drained like
//! any request on SIGTERM, and refuses bad input and values above the cap
//! with a 400 and one sentence.

mod common;

use common::{Server, fcgi_get, fcgi_request};
use myflask::fastcgi::client;
use std::time::{Duration, Instant};

/// GET `uri` on a thread; the answer and how long it took.
fn get_in_background(
    server: &Server,
    uri: &str,
) -> std::thread::JoinHandle<(client::Response, Duration)> {
    let addr = server.addr();
    let uri = uri.to_string();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = fcgi_get(&addr, &uri);
        (r, t0.elapsed())
    })
}

#[test]
fn sleep_answers_after_the_time_asked_without_holding_up_others() {
    let server = Server::start(&[]);
    let slow = get_in_background(&server, "/sleep?ms=1500");
    std::thread::sleep(Duration::from_millis(200));
    // In flight: counted by /status, and other requests pass it by.
    let t0 = Instant::now();
    let status = fcgi_get(&server.addr(), "/status");
    let v: serde_json::Value = serde_json::from_slice(&status.body).expect("JSON");
    assert_eq!(v["active_requests"], 2, "{v:#}");
    assert_eq!(fcgi_get(&server.addr(), "/healthz").status, 200);
    assert!(
        t0.elapsed() < Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );

    let (r, took) = slow.join().expect("slow request");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(v["slept_ms"], 1500);
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let t0 = Instant::now();
    assert_eq!(fcgi_get(&server.addr(), "/sleep?ms=0").status, 200);
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn sleep_is_drained_on_sigterm() {
    let mut server = Server::start(&[]);
    let slow = get_in_background(&server, "/sleep?ms=1000");
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let st = server.stop();
    let (r, _) = slow.join().expect("slow request");
    assert_eq!(
        (r.status, &r.body[..]),
        (200, &b"{\n  \"slept_ms\": 1000\n}\n"[..])
    );
    assert_eq!(st.code(), Some(0), "{}", server.stderr());
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn sleep_refuses_bad_input_and_values_above_the_cap() {
    let server = Server::start(&[]);
    let addr = server.addr();
    for (uri, want) in [
        (
            "/sleep",
            "400 /sleep needs ?ms=N, a whole number of milliseconds from 0 to 60000\n",
        ),
        (
            "/sleep?ms=60001",
            "400 ms=60001 is above the cap of 60000 ms\n",
        ),
        (
            "/sleep?ms=abc",
            "400 ms=\"abc\" is not a whole number of milliseconds from 0 to 60000\n",
        ),
        (
            "/sleep?ms=-5",
            "400 ms=\"-5\" is not a whole number of milliseconds from 0 to 60000\n",
        ),
    ] {
        let r = fcgi_get(&addr, uri);
        assert_eq!(r.status, 400, "{uri}");
        assert_eq!(String::from_utf8_lossy(&r.body), want, "{uri}");
    }
    let post = client::Request {
        method: "POST".into(),
        uri: "/sleep?ms=1".into(),
        ..Default::default()
    };
    let r = fcgi_request(&addr, &post, Duration::from_secs(10)).expect("POST");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    // The cap itself is accepted: no quick 400, the request just waits.
    let get = client::Request {
        method: "GET".into(),
        uri: "/sleep?ms=60000".into(),
        ..Default::default()
    };
    let waited = fcgi_request(&addr, &get, Duration::from_millis(800));
    assert!(
        matches!(&waited, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "{waited:?}"
    );
}
