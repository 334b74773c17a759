//! FastCGI 1.0 protocol tests against the real `myflask serve` binary:
//! every bullet of the "FastCGI 1.0" section of the server issue, checked
//! record by record with the raw client in `common::raw`, plus the
//! independent `fastcgi-client` crate.
//!
//! Every wait is bounded (`raw::within` / `tokio::time::timeout`), and the
//! raw client asserts exactly one END_REQUEST per request and nothing after
//! it, for every request these tests send.

mod common;

use bytes::BytesMut;
use common::raw::{self, Conn, Http};
use common::{Server, json_pairs};
use myflask::fastcgi::params::encode_pair;
use myflask::fastcgi::record;
use serde_json::Value;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers

fn values_of<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Sends a PARAMS stream as records whose contents are cut at `cuts`
/// (offsets into `p`), then the empty PARAMS record.
fn params_cut(id: u16, p: &[u8], cuts: &[usize]) -> BytesMut {
    let mut b = BytesMut::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&p.len())) {
        assert!(c >= start && c <= p.len());
        if c > start {
            record::put_record(&mut b, record::PARAMS, id, &p[start..c]);
        }
        start = c;
    }
    record::put_stream_end(&mut b, record::PARAMS, id);
    b
}

fn empty_stdin(id: u16) -> BytesMut {
    let mut b = BytesMut::new();
    record::put_stream_end(&mut b, record::STDIN, id);
    b
}

fn assert_ok(h: &Http, what: &str) {
    assert_eq!(h.status, 200, "{what}: {}", h.text());
}

/// A tokio stream behind the `futures-io` traits the `fastcgi-client`
/// crate speaks (its `tokio` feature is not enabled here).
struct Compat(tokio::net::UnixStream);

impl futures_util::io::AsyncRead for Compat {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut rb = tokio::io::ReadBuf::new(buf);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_util::io::AsyncWrite for Compat {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
    }
}

fn crate_params(method: &str, uri: &str, len: usize) -> fastcgi_client::Params<'static> {
    fastcgi_client::Params::default()
        .request_method(method.to_string())
        .request_uri(uri.to_string())
        .script_name(uri.to_string())
        .document_uri(uri.to_string())
        .query_string("")
        .remote_addr("127.0.0.1")
        .remote_port(4321)
        .server_name("localhost")
        .server_port(80)
        .content_type("application/octet-stream")
        .content_length(len)
        .custom("HTTP_HOST", "localhost")
}

fn crate_http(out: fastcgi_client::Response) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let stdout = out.stdout.unwrap_or_default();
    myflask::fastcgi::client::parse_cgi(&stdout).expect("CGI response")
}

// ---------------------------------------------------------------------------
// Records

#[tokio::test]
async fn wrong_version_closes_only_that_connection() {
    let srv = Server::start(&[]);
    let sock = srv.sock.clone();

    // A request in flight on another connection: its body is half sent.
    let body = raw::noise(100_000, 1);
    let mut good = Conn::connect(&sock).await;
    let mut b = raw::begin(1, true);
    b.extend_from_slice(&raw::stream(
        record::PARAMS,
        1,
        &raw::std_params("POST", "/echo", Some(body.len()), &[]),
    ));
    record::put_record(&mut b, record::STDIN, 1, &body[..50_000]);
    good.send(&b).await;

    // Version 2 on a second connection, after one valid request on it.
    let mut bad = Conn::connect(&sock).await;
    assert_ok(
        &bad.get(1, "/healthz").await,
        "healthz before the bad record",
    );
    let mut rec = raw::record_padded(record::BEGIN_REQUEST, 2, &[0, 1, 1, 0, 0, 0, 0, 0], 0);
    rec[0] = 2;
    bad.send(&rec).await;
    let (r, took) = bad.eof_timed().await;
    r.expect("a connection with a bad version is closed (EOF, not a reset)");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");

    // The other connection's request is unaffected.
    let mut rest = BytesMut::new();
    record::put_stream(&mut rest, record::STDIN, 1, &body[50_000..]);
    record::put_stream_end(&mut rest, record::STDIN, 1);
    good.send(&rest).await;
    let h = good.reply(1).await.http();
    assert_ok(&h, "echo on the other connection");
    raw::assert_same(&h.body, &body, "echo on the other connection");
    assert_ok(&good.get(2, "/healthz").await, "same connection afterwards");
    good.finish().await;

    let log = srv.stderr();
    assert!(
        log.contains("unsupported FastCGI version 2"),
        "no log line with context for the bad version:\n{log}"
    );
    assert!(log.contains("closing FastCGI connection"), "{log}");
}

#[tokio::test]
async fn any_padding_is_accepted() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    for pad in 0..=255u8 {
        let marker = format!("pad-{pad}");
        let p = raw::std_params("POST", "/echo", Some(marker.len()), &[]);
        let mut b = raw::record_padded(
            record::BEGIN_REQUEST,
            1,
            &[0, 1, record::KEEP_CONN, 0, 0, 0, 0, 0],
            pad,
        );
        // The params in two records, both with this padding.
        let half = p.len() / 2;
        b.extend(raw::record_padded(record::PARAMS, 1, &p[..half], pad));
        b.extend(raw::record_padded(record::PARAMS, 1, &p[half..], pad));
        b.extend(raw::record_padded(record::PARAMS, 1, b"", pad));
        b.extend(raw::record_padded(record::STDIN, 1, marker.as_bytes(), pad));
        b.extend(raw::record_padded(record::STDIN, 1, b"", pad));
        c.send(&b).await;
        let h = c.reply(1).await.http();
        assert_ok(&h, &marker);
        assert_eq!(h.text(), marker, "padding {pad}");
    }
    c.finish().await;
}

#[tokio::test]
async fn records_of_65535_bytes_are_accepted() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;

    // One PARAMS record of exactly 65535 bytes of content.
    let base = raw::std_params("GET", "/request", None, &[]);
    let name = b"X_FILL";
    let value_len = 65535 - base.len() - name.len() - 1 - 4;
    let value = vec![b'v'; value_len];
    let mut p = base.clone();
    let mut pair = BytesMut::new();
    encode_pair(&mut pair, name, &value);
    p.extend_from_slice(&pair);
    assert_eq!(p.len(), 65535);
    let mut b = raw::begin(1, true);
    record::put_record(&mut b, record::PARAMS, 1, &p);
    record::put_stream_end(&mut b, record::PARAMS, 1);
    b.extend_from_slice(&empty_stdin(1));
    c.send(&b).await;
    let h = c.reply(1).await.http();
    assert_ok(&h, "65535-byte PARAMS record");
    let params = json_pairs(&h.json(), "params");
    assert_eq!(
        values_of(&params, "X_FILL"),
        vec![String::from_utf8(value).unwrap()]
    );

    // STDIN records of exactly 65535 bytes.
    let body = raw::noise(3 * 65535 + 17, 2);
    let mut b = raw::begin(1, true);
    b.extend_from_slice(&raw::stream(
        record::PARAMS,
        1,
        &raw::std_params("POST", "/echo", Some(body.len()), &[]),
    ));
    for chunk in body.chunks(65535) {
        record::put_record(&mut b, record::STDIN, 1, chunk);
    }
    b.extend_from_slice(&empty_stdin(1));
    c.send(&b).await;
    let h = c.reply(1).await.http();
    assert_ok(&h, "65535-byte STDIN records");
    raw::assert_same(&h.body, &body, "echo of 65535-byte records");
    c.finish().await;
}

#[tokio::test]
async fn large_response_is_split_into_records_and_reassembles() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    let body = raw::noise(300 * 1024 + 3, 3);
    c.send(&raw::request(1, true, "POST", "/echo", &[], &body))
        .await;
    let reply = c.reply(1).await;
    assert!(
        reply.stdout_records.len() >= 5,
        "300 KiB in {} STDOUT records",
        reply.stdout_records.len()
    );
    assert!(
        reply.stdout_records.iter().all(|&n| n <= 65535),
        "{:?}",
        reply.stdout_records
    );
    let h = reply.http();
    assert_ok(&h, "large echo");
    assert_eq!(
        h.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    raw::assert_same(&h.body, &body, "300 KiB echo");
    c.finish().await;
}

#[tokio::test]
async fn no_transfer_encoding_in_any_response() {
    let srv = Server::start(&["--max-body-bytes", "100"]);
    let mut c = Conn::connect(&srv.sock).await;
    // `Reply::http` fails on any Transfer-Encoding; this walks every route
    // and every kind of answer the server writes itself.
    let cases: &[(&str, &str, &[u8], u16)] = &[
        ("GET", "/", b"", 200),
        ("HEAD", "/", b"", 200),
        ("GET", "/healthz", b"", 200),
        ("GET", "/status", b"", 200),
        ("GET", "/request?x=1", b"", 200),
        ("POST", "/echo", b"hello", 200),
        ("POST", "/echo", &[7u8; 200], 413),
        ("GET", "/nope", b"", 404),
        ("POST", "/healthz", b"x", 405),
        ("G T", "/", b"", 400),
    ];
    for (i, (method, uri, body, want)) in cases.iter().enumerate() {
        let h = c
            .roundtrip(
                1 + i as u16,
                true,
                method,
                uri,
                &[("HTTP_TE", "chunked")],
                body,
            )
            .await;
        assert_eq!(h.status, *want, "{method} {uri}: {}", h.text());
        for (k, _) in &h.headers {
            assert!(
                !k.eq_ignore_ascii_case("transfer-encoding"),
                "{method} {uri}"
            );
        }
    }
    c.finish().await;
}

#[tokio::test]
async fn simple_get_arrives_in_one_read() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    // Each response's records leave in one write: the client needs one read
    // (a reader may still need two if it wakes between two writes, so this
    // allows one slow case in twenty).
    let mut reads = Vec::new();
    for i in 0..20u16 {
        let before = c.reads;
        let h = c.get(1 + i % 3, "/healthz").await;
        assert_ok(&h, "healthz");
        reads.push(c.reads - before);
    }
    let multi = reads.iter().filter(|&&n| n > 1).count();
    eprintln!("reads per /healthz response: {reads:?}");
    assert!(multi <= 1, "responses took several reads: {reads:?}");
    c.finish().await;
}

// ---------------------------------------------------------------------------
// BEGIN_REQUEST

#[tokio::test]
async fn without_keep_conn_the_server_closes_with_a_lingering_close() {
    let srv = Server::start(&[]);
    for round in 0..5 {
        let mut c = Conn::connect(&srv.sock).await;
        let b = raw::request(1, false, "GET", "/healthz", &[], b"");
        c.send(&b).await;
        let h = c.reply(1).await.http();
        assert_ok(&h, "healthz");
        // Like flup's client: after END_REQUEST, one more (empty) record.
        let mut trailing = BytesMut::new();
        record::put_stream_end(&mut trailing, record::STDIN, 1);
        c.try_send(&trailing)
            .await
            .expect("the trailing record is accepted, not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.try_send(&trailing)
            .await
            .expect("a second trailing record is accepted too");
        let (r, took) = c.eof_timed().await;
        r.unwrap_or_else(|e| panic!("round {round}: want EOF, got {e} (a reset)"));
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
    }
    raw::healthz(&srv.sock).await;
}

#[tokio::test]
async fn without_keep_conn_a_client_that_closes_first_is_fine() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    c.send(&raw::request(1, false, "GET", "/", &[], b"")).await;
    let h = c.reply(1).await.http();
    assert_ok(&h, "index");
    assert!(h.text().contains("FastCGI"), "{}", h.text());
    let (r, took) = c.eof_timed().await;
    r.expect("EOF");
    // The server shuts its side down right after END_REQUEST: EOF comes
    // at once, it does not wait for the linger to end.
    assert!(took < Duration::from_millis(1500), "EOF after {took:?}");
}

#[tokio::test]
async fn keep_conn_serves_sequential_requests_on_one_connection() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    for i in 0..10 {
        let h = c.get(1, &format!("/request?n={i}")).await;
        assert_ok(&h, "request");
        assert_eq!(h.json()["uri"], format!("/request?n={i}"));
        let h = c
            .roundtrip(
                1,
                true,
                "POST",
                "/echo",
                &[],
                format!("body {i}").as_bytes(),
            )
            .await;
        assert_eq!(h.text(), format!("body {i}"));
    }
    // The last request without KEEP_CONN ends the connection.
    let h = c.roundtrip(1, false, "GET", "/healthz", &[], b"").await;
    assert_ok(&h, "last");
    c.eof().await.expect("EOF after the last request");
    let st = raw::status(&srv.sock).await;
    assert!(st["accepted_connections"].as_u64().unwrap() <= 3, "{st}");
}

#[tokio::test]
async fn fastcgi_client_crate_keep_alive_and_short_connections() {
    let srv = Server::start(&[]);
    let s = tokio::net::UnixStream::connect(&srv.sock).await.unwrap();
    let mut client = fastcgi_client::Client::new_keep_alive(Compat(s));
    for i in 0..3 {
        let uri = format!("/request?i={i}");
        let out = raw::within(
            "fastcgi-client keep-alive",
            client.execute(fastcgi_client::Request::new(
                crate_params("GET", &uri, 0).query_string(format!("i={i}")),
                fastcgi_client::io::empty(),
            )),
        )
        .await
        .expect("fastcgi-client execute");
        let (status, headers, body) = crate_http(out);
        assert_eq!(status, 200);
        assert!(
            headers
                .iter()
                .all(|(k, _)| !k.eq_ignore_ascii_case("transfer-encoding"))
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["uri"], uri);
    }
    drop(client);

    // A short connection with a 1 MiB body through the crate.
    let body = raw::noise(1 << 20, 4);
    let s = tokio::net::UnixStream::connect(&srv.sock).await.unwrap();
    let out = raw::within(
        "fastcgi-client execute_once",
        fastcgi_client::Client::new(Compat(s)).execute_once(fastcgi_client::Request::new(
            crate_params("POST", "/echo", body.len()),
            fastcgi_client::io::Cursor::new(body.clone()),
        )),
    )
    .await
    .expect("fastcgi-client execute_once");
    let (status, _, got) = crate_http(out);
    assert_eq!(status, 200);
    raw::assert_same(&got, &body, "1 MiB echo via fastcgi-client");
}

// ---------------------------------------------------------------------------
// PARAMS

#[tokio::test]
async fn params_with_one_and_four_byte_lengths() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    let n127 = "N".repeat(127);
    let n128 = "M".repeat(128);
    let n300 = format!("HTTP_X_{}", "L".repeat(300));
    let v127 = "a".repeat(127);
    let v128 = "b".repeat(128);
    let v70k = "c".repeat(70_000);
    let extra: Vec<(&str, &str)> = vec![
        (&n127, &v127),
        (&n128, &v128),
        (&n300, "short"),
        ("SHORT_NAME_LONG_VALUE", &v70k),
        ("EMPTY", ""),
    ];
    let p = raw::std_params("GET", "/request", None, &extra);
    let mut b = raw::begin(1, true);
    b.extend_from_slice(&raw::stream(record::PARAMS, 1, &p));
    b.extend_from_slice(&empty_stdin(1));
    c.send(&b).await;
    let h = c.reply(1).await.http();
    assert_ok(&h, "long params");
    let v = h.json();
    let params = json_pairs(&v, "params");
    for (k, want) in &extra {
        assert_eq!(
            values_of(&params, k),
            vec![*want],
            "param {} bytes",
            k.len()
        );
    }
    let headers = json_pairs(&v, "headers");
    let hname = format!("x-{}", "l".repeat(300));
    assert_eq!(values_of(&headers, &hname), vec!["short"]);
    c.finish().await;
}

#[tokio::test]
async fn a_pair_may_straddle_params_records() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    let long_value = "s".repeat(1000);
    let head = raw::std_params("GET", "/request", None, &[]);
    let mut tail = BytesMut::new();
    encode_pair(&mut tail, b"HTTP_X_STRADDLE", long_value.as_bytes());
    encode_pair(&mut tail, b"AFTER", b"yes");
    let p = [head.as_slice(), &tail].concat();
    let at = head.len();
    // The straddling pair: 1-byte name length at `at`, 4-byte value length
    // at `at+1..at+5`, name at `at+5..at+20`, value after.
    let splits: Vec<(&str, Vec<usize>)> = vec![
        ("inside the 4-byte value length", vec![at + 2]),
        ("between the two lengths", vec![at + 1]),
        ("inside the name", vec![at + 10]),
        ("inside the value", vec![at + 20 + 500]),
        (
            "everywhere",
            vec![at + 1, at + 3, at + 4, at + 7, at + 21, at + 900],
        ),
        ("one byte per record", (1..p.len()).collect()),
    ];
    for (what, cuts) in splits {
        let mut b = raw::begin(1, true);
        b.extend_from_slice(&params_cut(1, &p, &cuts));
        b.extend_from_slice(&empty_stdin(1));
        c.send(&b).await;
        let h = c.reply(1).await.http();
        assert_ok(&h, what);
        let v = h.json();
        let params = json_pairs(&v, "params");
        assert_eq!(
            values_of(&params, "HTTP_X_STRADDLE"),
            vec![long_value.as_str()],
            "{what}"
        );
        assert_eq!(values_of(&params, "AFTER"), vec!["yes"], "{what}");
        let headers = json_pairs(&v, "headers");
        assert_eq!(
            values_of(&headers, "x-straddle"),
            vec![long_value.as_str()],
            "{what}"
        );
    }
    c.finish().await;
}

#[tokio::test]
async fn repeated_params_are_kept_in_order() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    let extra = [
        ("HTTP_ACCEPT", "text/html"),
        ("HTTP_X_DUP", "one"),
        ("HTTP_ACCEPT", "application/json"),
        ("MY_PARAM", "first"),
        ("HTTP_X_DUP", "two"),
        ("MY_PARAM", "second"),
    ];
    let h = c.roundtrip(1, true, "GET", "/request", &extra, b"").await;
    assert_ok(&h, "repeated params");
    let v = h.json();
    let params = json_pairs(&v, "params");
    assert_eq!(
        values_of(&params, "HTTP_ACCEPT"),
        vec!["text/html", "application/json"]
    );
    assert_eq!(values_of(&params, "HTTP_X_DUP"), vec!["one", "two"]);
    assert_eq!(values_of(&params, "MY_PARAM"), vec!["first", "second"]);
    let headers = json_pairs(&v, "headers");
    assert_eq!(
        values_of(&headers, "accept"),
        vec!["text/html", "application/json"]
    );
    assert_eq!(values_of(&headers, "x-dup"), vec!["one", "two"]);
    c.finish().await;
}

#[tokio::test]
async fn params_over_the_cap_get_431_and_the_connection_goes_on() {
    let srv = Server::start(&["--max-params-bytes", "4096"]);
    let mut c = Conn::connect(&srv.sock).await;
    let big = "x".repeat(8000);
    for _ in 0..3 {
        let h = c
            .roundtrip(
                1,
                true,
                "POST",
                "/echo",
                &[("HTTP_X_BIG", &big)],
                b"some body",
            )
            .await;
        assert_eq!(h.status, 431, "{}", h.text());
        assert!(h.text().contains("4096"), "{}", h.text());
        let h = c.roundtrip(1, true, "POST", "/echo", &[], b"small").await;
        assert_ok(&h, "after 431");
        assert_eq!(h.body, b"small");
    }
    // Just under the cap is fine.
    let base = raw::std_params("GET", "/healthz", None, &[]);
    let fill = "y".repeat(4096 - base.len() - 4 - 1 - 6);
    let h = c
        .roundtrip(1, true, "GET", "/healthz", &[("X_FILL", &fill)], b"")
        .await;
    assert_ok(&h, "params exactly at the cap");
    raw::healthz(&srv.sock).await;
    c.finish().await;
}

#[tokio::test]
async fn malformed_params_get_400_with_a_reason() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    let good = raw::std_params("GET", "/request", None, &[]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "value shorter than its length",
            [good.as_slice(), &[4, 100], b"NAMEvalue"].concat(),
            "malformed FastCGI params",
        ),
        (
            "stream ends inside a 4-byte length",
            [good.as_slice(), &[0x80, 0]].concat(),
            "malformed FastCGI params",
        ),
        (
            "absurd 4-byte length",
            [good.as_slice(), &[0xff, 0xff, 0xff, 0xff, 1], b"x"].concat(),
            "malformed FastCGI params",
        ),
        (
            "no REQUEST_METHOD",
            raw::pairs(&[(b"REQUEST_URI", b"/"), (b"HTTP_HOST", b"h")]),
            "REQUEST_METHOD",
        ),
        (
            "bad method",
            raw::std_params("G(T", "/", None, &[]),
            "not a valid method",
        ),
        (
            "CONTENT_LENGTH not a number",
            raw::pairs(&[
                (b"REQUEST_METHOD", b"POST"),
                (b"REQUEST_URI", b"/echo"),
                (b"CONTENT_LENGTH", b"12abc"),
            ]),
            "CONTENT_LENGTH",
        ),
        (
            "header value with a control byte",
            raw::pairs(&[
                (b"REQUEST_METHOD", b"GET"),
                (b"REQUEST_URI", b"/"),
                (b"HTTP_X_BAD", b"a\x01b"),
            ]),
            "forbidden",
        ),
        (
            "bad Host",
            raw::pairs(&[
                (b"REQUEST_METHOD", b"GET"),
                (b"REQUEST_URI", b"/"),
                (b"HTTP_HOST", b"a b"),
            ]),
            "Host",
        ),
    ];
    for (what, p, reason) in cases {
        let mut b = raw::begin(1, true);
        b.extend_from_slice(&raw::stream(record::PARAMS, 1, &p));
        b.extend_from_slice(&empty_stdin(1));
        c.send(&b).await;
        let h = c.reply(1).await.http();
        assert_eq!(h.status, 400, "{what}: {}", h.text());
        assert!(h.text().contains(reason), "{what}: body {:?}", h.text());
        // The connection still works.
        assert_ok(&c.get(2, "/healthz").await, what);
    }
    let log = srv.stderr();
    assert!(
        log.contains("malformed FastCGI params"),
        "400s are logged:\n{log}"
    );
    c.finish().await;
}

// ---------------------------------------------------------------------------
// STDIN

#[tokio::test]
async fn echo_8_mib_is_byte_exact() {
    let srv = Server::start(&[]);
    let body = raw::noise(8 << 20, 5);
    let t = Instant::now();
    let mut c = Conn::connect(&srv.sock).await;
    c.send(&raw::request(
        1,
        true,
        "POST",
        "/echo",
        &[("CONTENT_TYPE", "application/x-test")],
        &body,
    ))
    .await;
    let h = c.reply(1).await.http();
    assert_ok(&h, "8 MiB echo");
    assert_eq!(h.header("content-type"), Some("application/x-test"));
    raw::assert_same(&h.body, &body, "8 MiB echo (raw client)");
    eprintln!(
        "8 MiB echo (raw client): {:?}, fnv {:016x}",
        t.elapsed(),
        raw::fnv(&h.body)
    );

    // The same through the independent client.
    let t = Instant::now();
    let s = tokio::net::UnixStream::connect(&srv.sock).await.unwrap();
    let out = raw::within(
        "fastcgi-client 8 MiB echo",
        fastcgi_client::Client::new(Compat(s)).execute_once(fastcgi_client::Request::new(
            crate_params("POST", "/echo", body.len()),
            fastcgi_client::io::Cursor::new(body.clone()),
        )),
    )
    .await
    .expect("fastcgi-client execute_once");
    let (status, _, got) = crate_http(out);
    assert_eq!(status, 200);
    raw::assert_same(&got, &body, "8 MiB echo (fastcgi-client)");
    eprintln!("8 MiB echo (fastcgi-client): {:?}", t.elapsed());
    c.finish().await;
}

#[tokio::test]
async fn echo_1_mib_in_odd_record_sizes() {
    let srv = Server::start(&[]);
    let body = raw::noise(1 << 20, 6);
    let sizes = [1usize, 7, 333, 4095, 65535, 12345, 2, 65534, 8191, 31];
    for declared in [true, false] {
        let mut c = Conn::connect(&srv.sock).await;
        let mut b = raw::begin(1, true);
        let cl = declared.then_some(body.len());
        b.extend_from_slice(&raw::stream(
            record::PARAMS,
            1,
            &raw::std_params("POST", "/echo", cl, &[]),
        ));
        let (mut off, mut i) = (0, 0);
        while off < body.len() {
            let n = sizes[i % sizes.len()].min(body.len() - off);
            b.extend(raw::record_padded(
                record::STDIN,
                1,
                &body[off..off + n],
                (i * 37 % 256) as u8,
            ));
            off += n;
            i += 1;
        }
        b.extend_from_slice(&empty_stdin(1));
        // Send it in uneven writes too, so records straddle reads.
        for chunk in b.chunks(77_777) {
            c.send(chunk).await;
        }
        let h = c.reply(1).await.http();
        assert_ok(&h, "odd records");
        raw::assert_same(
            &h.body,
            &body,
            &format!("odd-record echo, declared={declared}"),
        );
        c.finish().await;
    }
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let srv = Server::start(&["--max-body-bytes", "10000"]);
    let mut c = Conn::connect(&srv.sock).await;
    let body = raw::noise(25_000, 7);

    // Declared: answered from CONTENT_LENGTH alone.
    let h = c.roundtrip(1, true, "POST", "/echo", &[], &body).await;
    assert_eq!(h.status, 413, "declared: {}", h.text());
    // Declared, with the body never sent: answered without waiting for it.
    let mut b = raw::begin(1, true);
    b.extend_from_slice(&raw::stream(
        record::PARAMS,
        1,
        &raw::std_params("POST", "/echo", Some(20_000_000), &[]),
    ));
    c.send(&b).await;
    let h = c.reply(1).await.http();
    assert_eq!(h.status, 413, "declared, no body: {}", h.text());

    // Undeclared: the body streams past the limit.
    let mut b = raw::begin(1, true);
    b.extend_from_slice(&raw::stream(
        record::PARAMS,
        1,
        &raw::std_params("POST", "/echo", None, &[]),
    ));
    b.extend_from_slice(&raw::stream(record::STDIN, 1, &body));
    c.send(&b).await;
    let h = c.reply(1).await.http();
    assert_eq!(h.status, 413, "undeclared: {}", h.text());

    // At the limit exactly: fine, and the connection survived all of it.
    let h = c
        .roundtrip(1, true, "POST", "/echo", &[], &body[..10_000])
        .await;
    assert_ok(&h, "at the limit");
    raw::assert_same(&h.body, &body[..10_000], "echo at the limit");
    // (A handler's request is counted just after its END_REQUEST.)
    raw::wait_status(&srv.sock, "requests_4xx", 3, Duration::from_secs(5)).await;
    c.finish().await;
}

#[tokio::test]
async fn empty_content_length_means_no_body() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    let mut b = raw::begin(1, true);
    b.extend_from_slice(&raw::stream(
        record::PARAMS,
        1,
        &raw::std_params("POST", "/echo", None, &[]),
    ));
    b.extend_from_slice(&empty_stdin(1));
    c.send(&b).await;
    let h = c.reply(1).await.http();
    assert_ok(&h, "empty CONTENT_LENGTH");
    assert!(h.body.is_empty());
    let h = c.roundtrip(1, true, "GET", "/request", &[], b"").await;
    let headers = json_pairs(&h.json(), "headers");
    assert!(
        values_of(&headers, "content-length").is_empty(),
        "{headers:?}"
    );
    c.finish().await;
}

#[tokio::test]
async fn content_length_mismatch_is_an_error_and_the_server_survives() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    for (declared, sent) in [(100usize, 50usize), (10, 50), (1, 0)] {
        let body = vec![b'z'; sent];
        let mut b = raw::begin(1, true);
        b.extend_from_slice(&raw::stream(
            record::PARAMS,
            1,
            &raw::std_params("POST", "/echo", Some(declared), &[]),
        ));
        b.extend_from_slice(&raw::stream(record::STDIN, 1, &body));
        c.send(&b).await;
        let h = c.reply(1).await.http();
        assert!(
            h.status >= 400,
            "declared {declared}, sent {sent}: got {} {}",
            h.status,
            h.text()
        );
        assert!(h.text().contains("CONTENT_LENGTH"), "{}", h.text());
        assert_ok(&c.get(2, "/healthz").await, "after a mismatch");
    }
    raw::healthz(&srv.sock).await;
    c.finish().await;
}

// ---------------------------------------------------------------------------
// Multiplexing

fn get_values_query() -> Vec<u8> {
    raw::pairs(&[
        (b"FCGI_MAX_CONNS", b""),
        (b"FCGI_MAX_REQS", b""),
        (b"FCGI_MPXS_CONNS", b""),
        (b"FCGI_NO_SUCH_VARIABLE", b""),
    ])
}

fn check_values(rec: &record::Record) {
    assert_eq!(rec.kind, record::GET_VALUES_RESULT, "{rec:?}");
    let p = myflask::fastcgi::params::Params::parse(rec.content.clone()).expect("pairs");
    let got: Vec<(String, String)> = p
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("FCGI_MAX_CONNS".to_string(), "77".to_string()),
            ("FCGI_MAX_REQS".to_string(), "55".to_string()),
            ("FCGI_MPXS_CONNS".to_string(), "1".to_string()),
        ]
    );
}

#[tokio::test]
async fn get_values_at_start_and_mid_connection() {
    let srv = Server::start(&["--max-connections", "77", "--max-requests", "55"]);
    let mut c = Conn::connect(&srv.sock).await;
    let mut q = BytesMut::new();
    record::put_record(&mut q, record::GET_VALUES, 0, &get_values_query());
    c.send(&q).await;
    check_values(&c.mgmt_record().await);
    // A query that does not parse gets an empty answer, not a closed
    // connection.
    let mut bad = BytesMut::new();
    record::put_record(&mut bad, record::GET_VALUES, 0, &[0x80, 0]);
    c.send(&bad).await;
    let r = c.mgmt_record().await;
    assert_eq!(r.kind, record::GET_VALUES_RESULT);
    assert!(r.content.is_empty(), "{r:?}");

    // Between the records of two requests, one of them half sent.
    let body = raw::noise(70_000, 8);
    let mut b = raw::begin(1, true);
    let p = raw::std_params("POST", "/echo", Some(body.len()), &[]);
    record::put_record(&mut b, record::PARAMS, 1, &p[..20]);
    b.extend_from_slice(&q);
    record::put_record(&mut b, record::PARAMS, 1, &p[20..]);
    b.extend_from_slice(&raw::begin(2, true));
    b.extend_from_slice(&q);
    b.extend_from_slice(&raw::stream(
        record::PARAMS,
        2,
        &raw::std_params("GET", "/healthz", None, &[]),
    ));
    record::put_stream_end(&mut b, record::PARAMS, 1);
    record::put_record(&mut b, record::STDIN, 1, &body[..30_000]);
    b.extend_from_slice(&q);
    b.extend_from_slice(&empty_stdin(2));
    c.send(&b).await;
    let h2 = c.reply(2).await.http();
    assert_ok(&h2, "request 2");
    let mut rest = BytesMut::new();
    record::put_record(&mut rest, record::STDIN, 1, &body[30_000..]);
    rest.extend_from_slice(&q);
    record::put_stream_end(&mut rest, record::STDIN, 1);
    c.send(&rest).await;
    let h1 = c.reply(1).await.http();
    raw::assert_same(&h1.body, &body, "request 1 around GET_VALUES");
    for _ in 0..4 {
        check_values(&c.mgmt_record().await);
    }
    assert!(c.mgmt.is_empty());
    c.finish().await;
}

#[tokio::test]
async fn interleaved_requests_on_one_connection_are_served_concurrently() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    let ids: [u16; 4] = [1, 2, 300, 65535];
    let bodies: Vec<Vec<u8>> = ids
        .iter()
        .map(|&id| raw::noise(150_000 + id as usize, id as u64))
        .collect();
    let params: Vec<Vec<u8>> = bodies
        .iter()
        .map(|b| raw::std_params("POST", "/echo", Some(b.len()), &[]))
        .collect();
    // BEGIN all, then PARAMS in reverse order and in two halves each, then
    // STDIN round-robin in 10 KiB records.
    let mut b = BytesMut::new();
    for &id in &ids {
        b.extend_from_slice(&raw::begin(id, true));
    }
    for (k, &id) in ids.iter().enumerate().rev() {
        record::put_record(&mut b, record::PARAMS, id, &params[k][..30]);
    }
    for (k, &id) in ids.iter().enumerate() {
        record::put_record(&mut b, record::PARAMS, id, &params[k][30..]);
        record::put_stream_end(&mut b, record::PARAMS, id);
    }
    let mut off = 0;
    loop {
        let mut any = false;
        for (k, &id) in ids.iter().enumerate() {
            if off < bodies[k].len() {
                let end = (off + 10_000).min(bodies[k].len());
                record::put_record(&mut b, record::STDIN, id, &bodies[k][off..end]);
                any = true;
            }
        }
        if !any {
            break;
        }
        off += 10_000;
    }
    // Every body but the first one is complete; request 1 stays open.
    for &id in &ids[1..] {
        record::put_stream_end(&mut b, record::STDIN, id);
    }
    c.send(&b).await;
    for (k, &id) in ids.iter().enumerate().skip(1) {
        let h = c.reply(id).await.http();
        assert_ok(&h, &format!("request {id}"));
        raw::assert_same(&h.body, &bodies[k], &format!("interleaved echo {id}"));
    }
    // The others were answered while request 1 was still in flight.
    assert!(!c.has_ended(1));
    // A fresh GET on a reused id while request 1 is still open.
    assert_ok(&c.get(2, "/healthz").await, "id 2 again");
    c.send(&empty_stdin(1)).await;
    let h = c.reply(1).await.http();
    raw::assert_same(&h.body, &bodies[0], "interleaved echo 1");
    c.finish().await;
}

#[tokio::test]
async fn per_connection_request_cap_answers_503_before_end_request() {
    let srv = Server::start(&["--max-requests-per-connection", "2"]);
    let mut c = Conn::connect(&srv.sock).await;
    // Two requests in flight (bodies unfinished), a third one over the cap.
    let mut b = BytesMut::new();
    for id in [1u16, 2] {
        b.extend_from_slice(&raw::begin(id, true));
        b.extend_from_slice(&raw::stream(
            record::PARAMS,
            id,
            &raw::std_params("POST", "/echo", Some(10), &[]),
        ));
        record::put_record(&mut b, record::STDIN, id, b"01234");
    }
    b.extend_from_slice(&raw::request(3, true, "GET", "/healthz", &[], b""));
    c.send(&b).await;
    let h = c.reply(3).await.http();
    assert_eq!(h.status, 503, "{}", h.text());
    assert_eq!(h.header("retry-after"), Some("1"));
    assert!(h.text().contains("limit 2"), "{}", h.text());
    assert!(!c.has_ended(1) && !c.has_ended(2));

    // Finish them; then a third request fits again.
    let mut b = BytesMut::new();
    for id in [1u16, 2] {
        b.extend_from_slice(&raw::stream(record::STDIN, id, b"56789"));
    }
    c.send(&b).await;
    for id in [1u16, 2] {
        let h = c.reply(id).await.http();
        assert_eq!(h.body, b"0123456789");
    }
    assert_ok(&c.get(3, "/healthz").await, "after the others ended");
    c.finish().await;
}

#[tokio::test]
async fn server_wide_request_cap_answers_503() {
    let srv = Server::start(&["--max-requests", "2"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Conn::connect(&srv.sock).await;
        let mut b = raw::begin(1, true);
        b.extend_from_slice(&raw::stream(
            record::PARAMS,
            1,
            &raw::std_params("POST", "/echo", Some(4), &[]),
        ));
        record::put_record(&mut b, record::STDIN, 1, b"ab");
        c.send(&b).await;
        // Its handler holds a permit once the barrier returns.
        c.barrier().await;
        held.push(c);
    }
    let refused = raw::get(&srv.sock, "/healthz").await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.text().contains("limit of 2"), "{}", refused.text());
    for mut c in held {
        c.send(&raw::stream(record::STDIN, 1, b"cd")).await;
        let h = c.reply(1).await.http();
        assert_eq!(h.body, b"abcd");
        c.finish().await;
    }
    // The permits are released just after each END_REQUEST: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let h = raw::get(&srv.sock, "/healthz").await;
        if h.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after the held requests ended",
            h.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = raw::status(&srv.sock).await;
    assert!(st["refused_overloaded"].as_u64().unwrap() >= 1, "{st}");
}

// ---------------------------------------------------------------------------
// Management records

#[tokio::test]
async fn unknown_record_type_gets_unknown_type() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    for kind in [12u8, 42, 200, 255] {
        c.send(&raw::record_padded(kind, 0, b"whatever", 3)).await;
        let r = c.mgmt_record().await;
        assert_eq!(r.kind, record::UNKNOWN_TYPE);
        assert_eq!(r.content.len(), 8);
        assert_eq!(r.content[0], kind, "UNKNOWN_TYPE names the type");
        assert!(r.content[1..].iter().all(|&b| b == 0));
    }
    assert_ok(&c.get(1, "/healthz").await, "after unknown types");
    c.finish().await;
}

#[tokio::test]
async fn roles_other_than_responder_get_unknown_role() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    for role in [record::ROLE_AUTHORIZER, record::ROLE_FILTER, 0, 77] {
        let mut b = BytesMut::new();
        record::put_begin_request(&mut b, 1, role, record::KEEP_CONN);
        c.send(&b).await;
        let r = c.reply(1).await;
        assert_eq!(r.end().protocol_status, record::UNKNOWN_ROLE, "role {role}");
        assert!(r.stdout.is_empty() && !r.stdout_closed);
    }
    assert_ok(&c.get(1, "/healthz").await, "responder after refused roles");
    // Without KEEP_CONN the connection then closes.
    let mut b = BytesMut::new();
    record::put_begin_request(&mut b, 5, record::ROLE_FILTER, 0);
    c.send(&b).await;
    assert_eq!(c.reply(5).await.end().protocol_status, record::UNKNOWN_ROLE);
    c.eof().await.expect("EOF");
}

#[tokio::test]
async fn abort_request_ends_it_once_and_the_connection_goes_on() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    let mut abort = BytesMut::new();
    record::put_record(&mut abort, record::ABORT_REQUEST, 1, b"");

    // A running handler: POST /echo with its body half sent.
    let mut b = raw::begin(1, true);
    b.extend_from_slice(&raw::stream(
        record::PARAMS,
        1,
        &raw::std_params("POST", "/echo", Some(1000), &[]),
    ));
    record::put_record(&mut b, record::STDIN, 1, &[1u8; 100]);
    c.send(&b).await;
    // Make sure the handler is running before the abort.
    raw::wait_status(&srv.sock, "active_requests", 2, Duration::from_secs(10)).await;
    c.send(&abort).await;
    let r = c.reply(1).await;
    assert_eq!(r.end().protocol_status, record::REQUEST_COMPLETE);
    assert!(
        r.stdout.is_empty(),
        "no response body for an aborted request"
    );
    // Another request (id 2) proves no second END_REQUEST for 1 follows
    // (the raw client panics on any record for 1 from now on).
    assert_ok(&c.get(2, "/healthz").await, "after abort");
    // Late STDIN and a second abort for the ended id are ignored.
    let mut late = BytesMut::new();
    record::put_record(&mut late, record::STDIN, 1, &[2u8; 100]);
    late.extend_from_slice(&abort);
    c.send(&late).await;
    assert_ok(&c.get(2, "/healthz").await, "after late records");
    c.quiet(Duration::from_millis(300)).await;

    // Aborted while its PARAMS are still arriving.
    let mut b = raw::begin(3, true);
    record::put_record(
        &mut b,
        record::PARAMS,
        3,
        &raw::std_params("GET", "/", None, &[]),
    );
    record::put_record(&mut b, record::ABORT_REQUEST, 3, b"");
    c.send(&b).await;
    let r = c.reply(3).await;
    assert!(r.stdout.is_empty());
    // Abort of an id that was never begun: nothing happens.
    let mut b = BytesMut::new();
    record::put_record(&mut b, record::ABORT_REQUEST, 9, b"");
    c.send(&b).await;
    // id 1 is free again.
    let h = c.roundtrip(1, true, "POST", "/echo", &[], b"again").await;
    assert_eq!(h.body, b"again");
    raw::wait_status(&srv.sock, "active_requests", 1, Duration::from_secs(10)).await;
    c.finish().await;
}

#[tokio::test]
async fn abort_while_the_response_is_held_for_the_body() {
    // GET /request answers at once but its response waits for the end of
    // STDIN; aborting then must still give one END_REQUEST and no output.
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    let mut b = raw::begin(1, true);
    b.extend_from_slice(&raw::stream(
        record::PARAMS,
        1,
        &raw::std_params("POST", "/request", None, &[]),
    ));
    record::put_record(&mut b, record::STDIN, 1, b"partial");
    c.send(&b).await;
    c.quiet(Duration::from_millis(200)).await;
    let mut abort = BytesMut::new();
    record::put_record(&mut abort, record::ABORT_REQUEST, 1, b"");
    c.send(&abort).await;
    let r = c.reply(1).await;
    assert!(r.end.is_some());
    assert!(
        r.stdout.is_empty(),
        "held output is discarded: {:?}",
        r.stdout.len()
    );
    assert_ok(&c.get(1, "/healthz").await, "after abort");
    c.finish().await;
}

#[tokio::test]
async fn client_closing_mid_request_cancels_its_handlers() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    let mut b = BytesMut::new();
    for id in 1..=3u16 {
        b.extend_from_slice(&raw::begin(id, true));
        b.extend_from_slice(&raw::stream(
            record::PARAMS,
            id,
            &raw::std_params("POST", "/echo", None, &[]),
        ));
        record::put_record(&mut b, record::STDIN, id, b"unfinished");
    }
    c.send(&b).await;
    // 3 handlers + the /status request itself.
    raw::wait_status(&srv.sock, "active_requests", 4, Duration::from_secs(10)).await;
    drop(c);
    raw::wait_status(&srv.sock, "active_requests", 1, Duration::from_secs(10)).await;
    raw::wait_status(&srv.sock, "active_connections", 1, Duration::from_secs(10)).await;
    raw::healthz(&srv.sock).await;
}

#[tokio::test]
async fn head_request_has_headers_and_no_body() {
    let srv = Server::start(&[]);
    let mut c = Conn::connect(&srv.sock).await;
    let h = c.roundtrip(1, true, "HEAD", "/healthz", &[], b"").await;
    assert_ok(&h, "HEAD");
    assert!(h.body.is_empty(), "{:?}", h.text());
    assert_eq!(h.header("content-length"), Some("3"));
    c.finish().await;
}
