//! Table-driven tests of the demultiplexer: each case is a record stream
//! and what each record must produce (nothing, a started request, an
//! answer, body data to feed, or the close of the connection).

use super::*;
use crate::fastcgi::connection::ConnConfig;
use crate::service::App;
use crate::stats::Stats;
use std::convert::Infallible;
use std::time::Duration;

pub(in crate::fastcgi::connection) fn engine() -> Arc<Engine> {
    engine_with(|_| {})
}

fn engine_with(tweak: fn(&mut ConnConfig)) -> Arc<Engine> {
    let mut config = ConnConfig {
        max_requests_per_conn: 4,
        max_params_bytes: 4096,
        max_body_bytes: 1024,
        stall_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        max_conns: 16,
        max_requests: 8,
    };
    tweak(&mut config);
    let app = App::from_hyper(hyper::service::service_fn(|_req| async {
        Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
    }));
    Arc::new(Engine {
        app,
        config,
        stats: Arc::new(Stats::new()),
        shutdown: tokio_util::sync::CancellationToken::new(),
    })
}

/// A record of a case's input.
enum In {
    Begin(u16),
    BeginNoKeep(u16),
    BeginRole(u16, u16),
    Params(u16, &'static [(&'static str, &'static str)]),
    ParamsRaw(u16, &'static [u8]),
    ParamsEnd(u16),
    Stdin(u16, &'static [u8]),
    StdinEnd(u16),
    Abort(u16),
    GetValues(&'static [&'static str]),
    Raw(u8, u16, &'static [u8]),
}

/// What one input record must produce.
#[derive(Debug, PartialEq)]
enum Want {
    Nothing,
    /// A request handed to the dispatcher: id, inline, declared length.
    Started(u16, bool, Option<u64>),
    /// The server's own error response: id, HTTP status, close after.
    Status(u16, u16, bool),
    /// A bare END_REQUEST: id, appStatus, protocolStatus, close after.
    End(u16, u32, u8, bool),
    /// Body data for request id, of this length.
    Feed(u16, usize),
    /// A GET_VALUES_RESULT holding these names.
    Values(&'static [&'static str]),
    /// UNKNOWN_TYPE for this record type.
    Unknown(u8),
    /// The connection closes with a message containing this.
    Close(&'static str),
}

const GET: &[(&str, &str)] = &[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/")];
const POST5: &[(&str, &str)] = &[
    ("REQUEST_METHOD", "POST"),
    ("REQUEST_URI", "/echo"),
    ("CONTENT_LENGTH", "5"),
];
const POST_UNDECLARED: &[(&str, &str)] = &[("REQUEST_METHOD", "POST"), ("REQUEST_URI", "/")];
const POST_HUGE: &[(&str, &str)] = &[
    ("REQUEST_METHOD", "POST"),
    ("REQUEST_URI", "/"),
    ("CONTENT_LENGTH", "1025"),
];
const NO_METHOD: &[(&str, &str)] = &[("REQUEST_URI", "/")];

fn encode(rec: &In, b: &mut BytesMut) {
    match rec {
        In::Begin(id) => record::put_begin_request(b, *id, record::ROLE_RESPONDER, 1),
        In::BeginNoKeep(id) => record::put_begin_request(b, *id, record::ROLE_RESPONDER, 0),
        In::BeginRole(id, role) => record::put_begin_request(b, *id, *role, 1),
        In::Params(id, pairs) => {
            let mut p = BytesMut::new();
            for (k, v) in pairs.iter() {
                params::encode_pair(&mut p, k.as_bytes(), v.as_bytes());
            }
            record::put_record(b, record::PARAMS, *id, &p);
        }
        In::ParamsRaw(id, raw) => record::put_record(b, record::PARAMS, *id, raw),
        In::ParamsEnd(id) => record::put_stream_end(b, record::PARAMS, *id),
        In::Stdin(id, data) => record::put_record(b, record::STDIN, *id, data),
        In::StdinEnd(id) => record::put_stream_end(b, record::STDIN, *id),
        In::Abort(id) => record::put_record(b, record::ABORT_REQUEST, *id, b""),
        In::GetValues(names) => {
            let mut p = BytesMut::new();
            for n in names.iter() {
                params::encode_pair(&mut p, n.as_bytes(), b"");
            }
            record::put_record(b, record::GET_VALUES, 0, &p);
        }
        In::Raw(kind, id, content) => record::put_record(b, *kind, *id, content),
    }
}

/// Records started requests; `busy` says the inline slot is taken.
#[derive(Default)]
struct Recorder {
    busy: bool,
    started: Vec<(Admitted, Option<u64>)>,
}

impl Dispatch for Recorder {
    fn inline_free(&self) -> bool {
        !self.busy
    }

    fn start(&mut self, req: Admitted, _params: Params, mapped: request::Mapped) {
        self.started.push((req, mapped.content_length));
    }
}

/// What an action (or the lack of one) amounts to, in `Want` terms.
fn describe(action: Result<Action, CloseReason>, rec: &mut Recorder, before: usize) -> Want {
    let action = match action {
        Err(CloseReason::Protocol(m)) => return Want::Close(Box::leak(m.into_boxed_str())),
        Err(_) => return Want::Close("routine"),
        Ok(a) => a,
    };
    match action {
        Action::Nothing if rec.started.len() > before => {
            let (a, declared) = rec.started.last().expect("started");
            Want::Started(a.id, a.inline, *declared)
        }
        Action::Nothing => Want::Nothing,
        Action::Feed(c) => Want::Feed(c.id, c.data.len()),
        Action::Send(answer) => describe_answer(answer),
    }
}

fn describe_answer(answer: Answer) -> Want {
    let mut b = BytesMut::from(&answer.records[..]);
    let first = record::decode(&mut b).expect("valid").expect("whole");
    match first.kind {
        record::STDOUT => {
            let text = String::from_utf8_lossy(&first.content).to_string();
            let status = text
                .strip_prefix("Status: ")
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse().ok())
                .expect("a status line");
            Want::Status(first.request_id, status, answer.close)
        }
        record::END_REQUEST => {
            let e = record::EndRequest::parse(&first.content).expect("END_REQUEST body");
            Want::End(
                first.request_id,
                e.app_status,
                e.protocol_status,
                answer.close,
            )
        }
        record::GET_VALUES_RESULT => {
            let p = Params::parse(first.content).expect("pairs");
            let names: Vec<String> = p
                .iter()
                .map(|(k, _)| String::from_utf8_lossy(k).to_string())
                .collect();
            Want::Values(Box::leak(
                names
                    .into_iter()
                    .map(|s| &*Box::leak(s.into_boxed_str()))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            ))
        }
        record::UNKNOWN_TYPE => Want::Unknown(first.content[0]),
        other => panic!("unexpected answer record type {other}"),
    }
}

/// Runs one case: the records are encoded into one buffer and decoded one
/// at a time, as the reader does, so `rest` is what really follows.
fn run(name: &str, engine: Arc<Engine>, steps: &[(In, Want)]) -> (Demux, Recorder) {
    let mut buf = BytesMut::new();
    for (rec, _) in steps {
        encode(rec, &mut buf);
    }
    let mut demux = Demux::new(engine);
    let mut rec = Recorder::default();
    let now = Instant::now();
    for (i, (_, want)) in steps.iter().enumerate() {
        let r = record::decode(&mut buf).expect("valid").expect("whole");
        let before = rec.started.len();
        let got = describe(demux.on_record(r, &buf, now, &mut rec), &mut rec, before);
        match (want, &got) {
            (Want::Close(part), Want::Close(msg)) => {
                assert!(msg.contains(part), "{name}, step {i}: closed with {msg:?}");
            }
            _ => assert_eq!(&got, want, "{name}, step {i}"),
        }
    }
    (demux, rec)
}

#[test]
fn record_streams_produce_the_expected_actions() {
    use In::*;
    use Want::*;
    let unknown_role = record::UNKNOWN_ROLE;
    let complete = record::REQUEST_COMPLETE;
    let cases: Vec<(&str, Vec<(In, Want)>)> = vec![
        (
            "bodiless GET alone runs inline",
            vec![
                (Begin(1), Nothing),
                (Params(1, GET), Nothing),
                (ParamsEnd(1), Started(1, true, None)),
                (StdinEnd(1), Nothing),
            ],
        ),
        (
            "a body is fed in chunks",
            vec![
                (Begin(1), Nothing),
                (Params(1, POST5), Nothing),
                (ParamsEnd(1), Started(1, false, Some(5))),
                (Stdin(1, b"hel"), Feed(1, 3)),
                (Stdin(1, b"lo"), Feed(1, 2)),
                (StdinEnd(1), Nothing),
            ],
        ),
        (
            "no CONTENT_LENGTH and a body: not inline",
            vec![
                (Begin(1), Nothing),
                (Params(1, POST_UNDECLARED), Nothing),
                (ParamsEnd(1), Started(1, false, None)),
                (Stdin(1, b"x"), Feed(1, 1)),
            ],
        ),
        (
            "a second request beside a live one is not inline",
            vec![
                (Begin(1), Nothing),
                (Begin(2), Nothing),
                (Params(1, GET), Nothing),
                (ParamsEnd(1), Started(1, false, None)),
                (StdinEnd(1), Nothing),
            ],
        ),
        (
            "PARAMS split over records are joined",
            vec![
                (Begin(1), Nothing),
                (Params(1, &[("REQUEST_METHOD", "GET")]), Nothing),
                (Params(1, &[("REQUEST_URI", "/x")]), Nothing),
                (ParamsEnd(1), Started(1, false, None)),
            ],
        ),
        (
            "role other than responder",
            vec![(BeginRole(1, 2), End(1, 0, unknown_role, false))],
        ),
        (
            "request id 0",
            vec![(Begin(0), Close("BEGIN_REQUEST with request id 0"))],
        ),
        (
            "BEGIN for a live id",
            vec![(Begin(1), Nothing), (Begin(1), Close("still active"))],
        ),
        (
            "STDIN before PARAMS ended",
            vec![
                (Begin(1), Nothing),
                (Stdin(1, b"x"), Close("before its PARAMS stream ended")),
            ],
        ),
        (
            "PARAMS after PARAMS ended",
            vec![
                (Begin(1), Nothing),
                (ParamsEnd(1), Status(1, 400, false)),
                (Begin(1), Nothing),
                (Params(1, GET), Nothing),
                (ParamsEnd(1), Started(1, false, None)),
                (Params(1, GET), Close("after its PARAMS stream ended")),
            ],
        ),
        (
            "records for ids never begun are ignored",
            vec![
                (Params(5, GET), Nothing),
                (ParamsEnd(5), Nothing),
                (Stdin(5, b"x"), Nothing),
                (Abort(5), Nothing),
            ],
        ),
        (
            "malformed params: 400",
            vec![
                (Begin(1), Nothing),
                (ParamsRaw(1, b"\x05"), Nothing),
                (ParamsEnd(1), Status(1, 400, false)),
            ],
        ),
        (
            "params that map to no request: 400, and no KEEP_CONN closes",
            vec![
                (BeginNoKeep(1), Nothing),
                (Params(1, NO_METHOD), Nothing),
                (ParamsEnd(1), Status(1, 400, true)),
            ],
        ),
        (
            "declared body over the limit: 413 before any handler",
            vec![
                (Begin(1), Nothing),
                (Params(1, POST_HUGE), Nothing),
                (ParamsEnd(1), Status(1, 413, false)),
                (Stdin(1, b"ignored"), Nothing),
            ],
        ),
        (
            "abort while gathering params: END_REQUEST from the server",
            vec![
                (Begin(1), Nothing),
                (Params(1, GET), Nothing),
                (Abort(1), End(1, 1, complete, false)),
                (ParamsEnd(1), Nothing),
            ],
        ),
        (
            "abort of a running request: the handler is cancelled",
            vec![
                (Begin(1), Nothing),
                (Params(1, POST5), Nothing),
                (ParamsEnd(1), Started(1, false, Some(5))),
                (Abort(1), Nothing),
                (Stdin(1, b"hello"), Nothing),
            ],
        ),
        (
            "GET_VALUES",
            vec![(
                GetValues(&["FCGI_MAX_CONNS", "FCGI_NOPE", "FCGI_MPXS_CONNS"]),
                Values(&["FCGI_MAX_CONNS", "FCGI_MPXS_CONNS"]),
            )],
        ),
        (
            "unknown management record",
            vec![(Raw(42, 0, b""), Unknown(42))],
        ),
        (
            "records sent the wrong way are ignored",
            vec![
                (Raw(record::STDOUT, 1, b"x"), Nothing),
                (Raw(record::DATA, 1, b"x"), Nothing),
            ],
        ),
    ];
    for (name, steps) in &cases {
        run(name, engine(), steps);
    }
}

/// A case run with a tweaked configuration.
type CapCase = (&'static str, fn(&mut ConnConfig), Vec<(In, Want)>);

#[test]
fn caps_refuse_with_the_right_status() {
    use In::*;
    use Want::*;
    let cases: Vec<CapCase> = vec![
        (
            "params over the cap: 431 once the stream ends",
            |c| c.max_params_bytes = 16,
            vec![
                (Begin(1), Nothing),
                (Params(1, GET), Nothing),
                (ParamsEnd(1), Status(1, 431, false)),
            ],
        ),
        (
            "over the per-connection cap: 503",
            |c| c.max_requests_per_conn = 1,
            vec![
                (Begin(1), Nothing),
                (Begin(2), Nothing),
                (Params(2, GET), Nothing),
                (ParamsEnd(2), Status(2, 503, false)),
            ],
        ),
        (
            "past the hard cap: the connection closes",
            |c| {
                c.max_requests_per_conn = 1;
                c.max_requests = 1;
            },
            vec![
                (Begin(1), Nothing),
                (Begin(2), Nothing),
                (Begin(3), Close("already in flight")),
            ],
        ),
        (
            "over the server-wide cap: 503",
            |c| c.max_requests = 1,
            vec![
                (Begin(1), Nothing),
                (Params(1, POST5), Nothing),
                (ParamsEnd(1), Started(1, false, Some(5))),
                (Begin(2), Nothing),
                (Params(2, GET), Nothing),
                (ParamsEnd(2), Status(2, 503, false)),
            ],
        ),
    ];
    for (name, tweak, steps) in &cases {
        run(name, engine_with(*tweak), steps);
    }
}

const POST0: &[(&str, &str)] = &[
    ("REQUEST_METHOD", "POST"),
    ("REQUEST_URI", "/"),
    ("CONTENT_LENGTH", "0"),
];

/// A case, its params, the records after BEGIN and PARAMS, and whether the
/// request is refused.
type LengthCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    Vec<(In, Want)>,
    bool,
);

#[test]
fn stdin_that_disagrees_with_content_length_is_refused() {
    use In::*;
    use Want::*;
    let cases: Vec<LengthCase> = vec![
        (
            "exactly as declared",
            POST5,
            vec![(Stdin(1, b"hello"), Feed(1, 5)), (StdinEnd(1), Nothing)],
            false,
        ),
        (
            "more than declared",
            POST5,
            vec![(Stdin(1, b"hello!"), Nothing), (Stdin(1, b"x"), Nothing)],
            true,
        ),
        (
            "more than declared, over two records",
            POST5,
            vec![(Stdin(1, b"hel"), Feed(1, 3)), (Stdin(1, b"lo!"), Nothing)],
            true,
        ),
        (
            "less than declared",
            POST5,
            vec![(Stdin(1, b"hel"), Feed(1, 3)), (StdinEnd(1), Nothing)],
            true,
        ),
        (
            "CONTENT_LENGTH 0 with data (no body channel at all)",
            POST0,
            vec![(Stdin(1, b"data"), Nothing), (StdinEnd(1), Nothing)],
            true,
        ),
        (
            "no CONTENT_LENGTH: any length",
            POST_UNDECLARED,
            vec![(Stdin(1, b"data"), Feed(1, 4)), (StdinEnd(1), Nothing)],
            false,
        ),
    ];
    for (name, params, rest, refused) in cases {
        let mut steps = vec![(Begin(1), Nothing), (Params(1, params), Nothing)];
        let cl = if params == POST5 {
            Some(5)
        } else if params == POST0 {
            Some(0)
        } else {
            None
        };
        // A declared empty body is bodiless: it runs inline.
        steps.push((ParamsEnd(1), Started(1, cl == Some(0), cl)));
        steps.extend(rest);
        let (_d, rec) = run(name, engine(), &steps);
        let link = &rec.started[0].0.link;
        assert_eq!(link.bad_length(), refused, "{name}: refused");
        assert_eq!(link.cancelled(), refused, "{name}: handler cancelled");
        assert!(link.input_done(), "{name}: gate open");
    }
}

#[test]
fn body_over_the_limit_fails_the_body() {
    use In::*;
    use Want::*;
    let steps = [
        (Begin(1), Nothing),
        (Params(1, POST_UNDECLARED), Nothing),
        (ParamsEnd(1), Started(1, false, None)),
        (Stdin(1, &[0u8; 1000]), Feed(1, 1000)),
        (Stdin(1, &[0u8; 100]), Nothing),
    ];
    let (_d, rec) = run("over the limit", engine(), &steps);
    let shared = rec.started[0].0.body_shared.as_ref().expect("a body");
    assert!(shared.failed_too_large());
    assert!(rec.started[0].0.link.input_done(), "gate open for the 413");
    assert!(
        !rec.started[0].0.link.cancelled(),
        "the handler still answers"
    );
}

#[test]
fn ended_requests_are_reaped_and_their_ids_reusable() {
    use In::*;
    use Want::*;
    let steps = [
        (Begin(1), Nothing),
        (Params(1, GET), Nothing),
        (ParamsEnd(1), Started(1, true, None)),
        (StdinEnd(1), Nothing),
    ];
    let (mut demux, rec) = run("one GET", engine(), &steps);
    assert_eq!(demux.live(), 1);
    rec.started[0].0.link.end();
    assert_eq!(demux.live(), 0);
    demux.reap();
    assert!(demux.reqs.is_empty());
}

#[test]
fn dropping_the_table_cancels_live_requests() {
    use In::*;
    use Want::*;
    let steps = [
        (Begin(1), Nothing),
        (Params(1, POST5), Nothing),
        (ParamsEnd(1), Started(1, false, Some(5))),
    ];
    let (mut demux, rec) = run("one POST", engine(), &steps);
    let link = rec.started[0].0.link.clone();
    assert!(!link.input_done());
    demux.clear();
    assert!(link.input_done(), "gate opened so the task cannot hang");
}

#[test]
fn answers_while_draining_carry_the_farewell_marker() {
    let mut demux = Demux::new(engine());
    demux.draining = true;
    let mut b = BytesMut::new();
    encode(&In::Begin(1), &mut b);
    encode(&In::ParamsRaw(1, b"\x05"), &mut b);
    encode(&In::ParamsEnd(1), &mut b);
    let mut rec = Recorder::default();
    let mut last = None;
    while let Some(r) = record::decode(&mut b).expect("valid") {
        last = Some(demux.on_record(r, &b, Instant::now(), &mut rec));
    }
    let Some(Ok(Action::Send(answer))) = last else {
        panic!("an answer");
    };
    let mut out = BytesMut::from(&answer.records[..]);
    let mut kinds = Vec::new();
    while let Ok(Some(r)) = record::decode(&mut out) {
        kinds.push(r.kind);
    }
    assert_eq!(kinds.last(), Some(&record::STDERR));
    assert!(demux.answered_in_drain);
}

#[test]
fn a_busy_inline_slot_means_a_task() {
    let mut demux = Demux::new(engine());
    let mut b = BytesMut::new();
    for r in [
        In::Begin(1),
        In::Params(1, GET),
        In::ParamsEnd(1),
        In::StdinEnd(1),
    ] {
        encode(&r, &mut b);
    }
    let mut rec = Recorder {
        busy: true,
        ..Default::default()
    };
    while let Some(r) = record::decode(&mut b).expect("valid") {
        let _ = demux.on_record(r, &b, Instant::now(), &mut rec);
    }
    assert!(!rec.started[0].0.inline);
}

#[test]
fn empty_stdin_next_recognises_only_the_end_of_that_requests_body() {
    let mut b = BytesMut::new();
    record::put_stream_end(&mut b, record::STDIN, 7);
    assert!(empty_stdin_next(&b, 7));
    assert!(!empty_stdin_next(&b, 8), "another request's");
    assert!(!empty_stdin_next(&b[..7], 7), "a partial header");
    let mut data = BytesMut::new();
    record::put_record(&mut data, record::STDIN, 7, b"x");
    assert!(!empty_stdin_next(&data, 7), "a body follows");
    let mut other = BytesMut::new();
    record::put_stream_end(&mut other, record::PARAMS, 7);
    assert!(!empty_stdin_next(&other, 7), "not STDIN");
    let mut v2 = b.to_vec();
    v2[0] = 2;
    assert!(!empty_stdin_next(&v2, 7), "not version 1");
}
