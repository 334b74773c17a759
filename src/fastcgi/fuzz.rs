//! Fuzzing harnesses, shared by the cargo-fuzz targets in `fuzz/` and by the
//! corpus replay that runs in `cargo test` (tests/fuzz_replay.rs).
//!
//! Each function takes arbitrary bytes and panics only if an invariant is
//! broken:
//! - [`record_decoder`]: decoding never panics, consumes exactly what each
//!   header says, and re-encoding a decoded record gives the same content;
//! - [`params_parser`]: parsing never panics, parse ∘ encode is the
//!   identity on whatever parsed, and the one-pass request mapping (names
//!   noted while parsing) agrees with the two-pass one;
//! - [`connection`]: the whole engine fed the bytes as a client stream
//!   (through an in-memory duplex, with an echoing and a streaming service)
//!   never panics or hangs, writes only well-formed records, never answers
//!   an id that was not begun, and never sends more END_REQUESTs for an id
//!   than it received BEGIN_REQUESTs.

use super::connection::{self, ConnConfig, Engine};
use super::params::{self, Params};
use super::{record, request};
use crate::ConnMeta;
use crate::body::Body;
use crate::service::App;
use crate::stats::Stats;
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Decodes records until the input runs out or is rejected.
pub fn record_decoder(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match record::decode(&mut buf) {
            Ok(Some(rec)) => {
                let used = before - buf.len();
                assert!(used >= record::HEADER_LEN + rec.content.len());
                assert!(rec.content.len() <= record::MAX_CONTENT_LEN);
                let mut again = BytesMut::new();
                record::put_record(&mut again, rec.kind, rec.request_id, &rec.content);
                let back = record::decode(&mut again)
                    .expect("re-encoded record decodes")
                    .expect("re-encoded record is whole");
                assert_eq!(back, rec);
                assert!(again.is_empty());
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "incomplete record consumed bytes");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Parses a name-value stream; whatever parses must survive a round trip.
pub fn params_parser(data: &[u8]) {
    let Ok(p) = Params::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut enc = BytesMut::new();
    for (k, v) in p.iter() {
        params::encode_pair(&mut enc, k, v);
    }
    // Parsed again with the names noted on the way (what the connection
    // does): the same pairs, and the same request or the same error as the
    // two-pass `build`.
    let mut known = request::Known::default();
    let q =
        Params::parse_with(enc.freeze(), |i, n| known.note(i, n)).expect("re-encoded params parse");
    assert!(p.iter().eq(q.iter()));
    // Lookups on arbitrary names must not panic either.
    let _ = p.get("REQUEST_METHOD");
    let one = request::build_known(&q, &known);
    match (request::build(&p), one) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.request.method(), b.request.method());
            assert_eq!(a.request.uri(), b.request.uri());
            assert_eq!(a.request.headers(), b.request.headers());
            assert_eq!(a.content_length, b.content_length);
            assert_eq!(a.peer, b.peer);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("build and build_known disagree: {a:?} / {b:?}"),
    }
}

/// A text response of the fuzz app (its own: protocol code does not call
/// the built-in app).
fn plain(status: http::StatusCode, text: String) -> Response<crate::ResponseBody> {
    let mut r = Response::new(crate::service::box_body(http_body_util::Full::new(
        bytes::Bytes::from(text),
    )));
    *r.status_mut() = status;
    r
}

fn fuzz_app() -> App {
    App::from_hyper(hyper::service::service_fn(
        |req: Request<Body>| async move {
            let path = req.uri().path().to_string();
            let resp: Response<crate::ResponseBody> = match path.as_str() {
                "/echo" => match req.into_body().collect().await {
                    Ok(c) => Response::new(crate::service::box_body(http_body_util::Full::new(
                        c.to_bytes(),
                    ))),
                    Err(e) => plain(http::StatusCode::BAD_REQUEST, e.to_string()),
                },
                "/stream" => {
                    // Streams the request body back as it arrives.
                    let body = req.into_body();
                    let s = futures_util::stream::unfold(body, |mut b| async move {
                        match b.frame().await {
                            Some(Ok(f)) => Some((Ok::<_, crate::BodyError>(f), b)),
                            Some(Err(e)) => Some((Err(e), b)),
                            None => None,
                        }
                    });
                    Response::new(crate::service::box_body(StreamBody::new(s)))
                }
                // libFuzzer's panic hook aborts on any panic, caught or not, so
                // under `cargo fuzz` (which sets cfg(fuzzing)) this route is
                // off; `cargo test` replays it.
                "/panic" if !cfg!(fuzzing) => panic!("fuzz handler panic"),
                _ => plain(http::StatusCode::OK, "ok\n".into()),
            };
            Ok::<_, Infallible>(resp)
        },
    ))
}

/// Feeds `data` to one connection as a client would, then checks the output.
pub fn connection(data: &[u8]) {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
    }
    let out = RT.with(|rt| rt.block_on(run_connection(data)));
    check_output(data, &out);
}

async fn run_connection(data: &[u8]) -> Vec<u8> {
    // Two one-way pipes, so the client can end its input (EOF) while still
    // reading the output.
    let (mut to_server, server_in) = tokio::io::duplex(64 * 1024);
    let (server_out, mut from_server) = tokio::io::duplex(64 * 1024);
    let engine = Arc::new(Engine {
        app: fuzz_app(),
        config: ConnConfig {
            max_requests_per_conn: 4,
            max_params_bytes: 4096,
            max_body_bytes: 64 * 1024,
            stall_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            max_conns: 16,
            max_requests: 8,
        },
        stats: Arc::new(Stats::new()),
        shutdown: tokio_util::sync::CancellationToken::new(),
    });
    let meta = ConnMeta {
        listener: Arc::from("fuzz"),
        inherited: false,
    };
    let server_task = tokio::spawn(connection::serve(
        server_in,
        server_out,
        engine.clone(),
        meta,
    ));
    let input = data.to_vec();
    let len = input.len() as u64;
    let writer = tokio::spawn(async move {
        let _ = to_server.write_all(&input).await;
        to_server
    });
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = from_server.read_to_end(&mut out).await;
        out
    });
    // Let the server work until it is quiet (all input read and every
    // handler finished, or no progress at all), so handlers get to answer
    // before the input ends: EOF cancels whatever is still running.
    let stats = engine.stats.clone();
    let mut last = (u64::MAX, 0, 0, 0);
    let mut still = 0;
    for _ in 0..200_000 {
        tokio::task::yield_now().await;
        if server_task.is_finished() {
            break;
        }
        let s = stats.snapshot();
        let now = (s.bytes_in, s.bytes_out, s.total_requests, s.active_requests);
        if writer.is_finished() && s.bytes_in == len && s.active_requests == 0 {
            break;
        }
        if now == last {
            still += 1;
            if still > 500 {
                break;
            }
        } else {
            still = 0;
            last = now;
        }
    }
    // End the input: dropping the pipe end gives the server EOF.
    writer.abort();
    let _ = writer.await;
    let done = tokio::time::timeout(Duration::from_secs(60), server_task).await;
    assert!(
        matches!(done, Ok(Ok(_))),
        "connection task did not end (hang or panic)"
    );
    let out = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("output did not end")
        .expect("reader task");
    // Every request task has ended: nothing may stay counted.
    for _ in 0..1000 {
        if engine.stats.active_requests() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(engine.stats.active_requests(), 0, "a request stayed live");
    out
}

fn check_output(input: &[u8], out: &[u8]) {
    let mut begun: HashMap<u16, usize> = HashMap::new();
    let mut inb = BytesMut::from(input);
    while let Ok(Some(rec)) = record::decode(&mut inb) {
        if rec.kind == record::BEGIN_REQUEST {
            *begun.entry(rec.request_id).or_default() += 1;
        }
    }
    let mut ended: HashMap<u16, usize> = HashMap::new();
    let mut outb = BytesMut::from(out);
    loop {
        match record::decode(&mut outb) {
            Ok(Some(rec)) => match rec.kind {
                record::STDOUT | record::STDERR => {
                    assert!(
                        begun.contains_key(&rec.request_id),
                        "output for id {} never begun",
                        rec.request_id
                    );
                }
                record::END_REQUEST => {
                    assert_eq!(rec.content.len(), 8, "END_REQUEST body");
                    let n = ended.entry(rec.request_id).or_default();
                    *n += 1;
                    let b = begun.get(&rec.request_id).copied().unwrap_or(0);
                    assert!(
                        *n <= b,
                        "id {}: {} END_REQUESTs for {} BEGINs",
                        rec.request_id,
                        n,
                        b
                    );
                }
                record::GET_VALUES_RESULT | record::UNKNOWN_TYPE => {
                    assert_eq!(rec.request_id, 0, "management record with an id");
                }
                other => panic!("server wrote record type {other}"),
            },
            Ok(None) => {
                assert!(outb.is_empty(), "server wrote a partial record");
                break;
            }
            Err(e) => panic!("server wrote a malformed record: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastcgi::client;

    fn ends(out: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut b = BytesMut::from(out);
        let mut v = Vec::new();
        let mut stdout: HashMap<u16, Vec<u8>> = HashMap::new();
        while let Ok(Some(r)) = record::decode(&mut b) {
            match r.kind {
                record::STDOUT => stdout
                    .entry(r.request_id)
                    .or_default()
                    .extend_from_slice(&r.content),
                record::END_REQUEST => v.push((
                    r.request_id,
                    stdout.remove(&r.request_id).unwrap_or_default(),
                )),
                _ => {}
            }
        }
        v
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn harness_sees_real_answers() {
        let mut input = BytesMut::new();
        let req = |uri: &str, body: &'static [u8]| client::Request {
            method: if body.is_empty() {
                "GET".into()
            } else {
                "POST".into()
            },
            uri: uri.into(),
            body: Bytes::from_static(body),
            ..Default::default()
        };
        client::encode_request(&mut input, 1, true, &req("/", b""));
        client::encode_request(&mut input, 2, true, &req("/echo", b"hello"));
        client::encode_request(&mut input, 3, true, &req("/panic", b""));
        let out = rt().block_on(run_connection(&input));
        check_output(&input, &out);
        let e = ends(&out);
        assert_eq!(e.len(), 3, "one END_REQUEST per request");
        assert!(String::from_utf8_lossy(&e[0].1).ends_with("ok\n"));
        assert!(String::from_utf8_lossy(&e[1].1).ends_with("\r\n\r\nhello"));
        assert!(String::from_utf8_lossy(&e[2].1).starts_with("Status: 500"));
    }

    #[test]
    #[should_panic(expected = "never begun")]
    fn harness_catches_answers_to_unknown_ids() {
        let mut out = BytesMut::new();
        record::put_record(&mut out, record::STDOUT, 9, b"x");
        check_output(b"", &out);
    }
}
