//! The connection engine's known defects (issue 12, item 6), each pinned by
//! a test against real sockets: STDIN that disagrees with CONTENT_LENGTH.

mod common;

use common::Server;
use common::raw::{self, Conn, within};
use myflask::fastcgi::record;
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
