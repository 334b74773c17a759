//! One record-level client connection: it sends what the test built,
//! files every record that comes back under its request id, and panics on
//! anything a FastCGI server must never send.

use super::{Http, Reply, WAIT, request, within};
use bytes::BytesMut;
use myflask::fastcgi::record::{self, EndRequest, Record};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One client connection.
pub struct Conn {
    pub s: UnixStream,
    buf: BytesMut,
    /// What we sent, decoded, to learn which ids we began (`None` once
    /// we deliberately sent something that is not FastCGI).
    shadow: Option<BytesMut>,
    begun: HashSet<u16>,
    /// Ids whose END_REQUEST arrived (until we begin them again).
    ended: HashSet<u16>,
    replies: HashMap<u16, Reply>,
    /// Management records (request id 0), in arrival order.
    pub mgmt: VecDeque<Record>,
    /// read() calls that returned data.
    pub reads: usize,
}

impl Conn {
    pub async fn connect(path: &Path) -> Conn {
        let s = within("connect", connect_unix(path))
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        Conn {
            s,
            buf: BytesMut::new(),
            shadow: Some(BytesMut::new()),
            begun: HashSet::new(),
            ended: HashSet::new(),
            replies: HashMap::new(),
            mgmt: VecDeque::new(),
            reads: 0,
        }
    }

    fn note_sent(&mut self, b: &[u8]) {
        let Some(sh) = self.shadow.as_mut() else {
            return;
        };
        sh.extend_from_slice(b);
        let mut begun = Vec::new();
        loop {
            match record::decode(sh) {
                Ok(Some(r)) => {
                    if r.kind == record::BEGIN_REQUEST && r.request_id != 0 {
                        begun.push(r.request_id);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    self.shadow = None;
                    break;
                }
            }
        }
        for id in begun {
            self.begun.insert(id);
            self.ended.remove(&id);
            self.replies.insert(id, Reply::default());
        }
    }

    /// Writes `b`; returns the error instead of panicking.
    pub async fn try_send(&mut self, b: &[u8]) -> io::Result<()> {
        self.note_sent(b);
        match tokio::time::timeout(WAIT, self.s.write_all(b)).await {
            Ok(r) => r,
            Err(_) => panic!("timed out after {WAIT:?} writing {} bytes", b.len()),
        }
    }

    /// Writes `b` (panics on error).
    pub async fn send(&mut self, b: &[u8]) {
        let n = b.len();
        self.try_send(b)
            .await
            .unwrap_or_else(|e| panic!("writing {n} bytes: {e}"));
    }

    /// Writes `b` without tracking what it contains (floods).
    pub async fn send_untracked(&mut self, b: &[u8]) -> io::Result<()> {
        within("write", self.s.write_all(b)).await
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        self.buf.reserve(64 * 1024);
        let n = within("read", self.s.read_buf(&mut self.buf)).await?;
        if n > 0 {
            self.reads += 1;
        }
        Ok(n)
    }

    /// Takes one record off the connection and files it; `Ok(None)` at
    /// EOF. Panics on anything a FastCGI server must never send.
    pub async fn next_record(&mut self) -> io::Result<Option<(u8, u16)>> {
        loop {
            match record::decode(&mut self.buf) {
                Ok(Some(rec)) => {
                    let meta = (rec.kind, rec.request_id);
                    self.file(rec);
                    return Ok(Some(meta));
                }
                Ok(None) => {}
                Err(e) => panic!("server sent a malformed record: {e}"),
            }
            if self.read_more().await? == 0 {
                assert!(
                    self.buf.is_empty(),
                    "connection closed inside a record ({} bytes buffered)",
                    self.buf.len()
                );
                return Ok(None);
            }
        }
    }

    fn file(&mut self, rec: Record) {
        let id = rec.request_id;
        if id == 0 {
            self.mgmt.push_back(rec);
            return;
        }
        if !self.begun.contains(&id) {
            if self.ended.contains(&id) {
                panic!(
                    "record type {} for request {id} after its END_REQUEST \
                     (more than one END_REQUEST, or output after the end)",
                    rec.kind
                );
            }
            panic!(
                "record type {} for request id {id}, which this client never began",
                rec.kind
            );
        }
        let reply = self.replies.entry(id).or_default();
        match rec.kind {
            record::STDOUT => {
                assert!(
                    !reply.stdout_closed,
                    "STDOUT record for request {id} after its empty STDOUT record"
                );
                if rec.content.is_empty() {
                    reply.stdout_closed = true;
                } else {
                    reply.stdout_records.push(rec.content.len());
                    reply.stdout.extend_from_slice(&rec.content);
                }
            }
            record::STDERR => reply.stderr.extend_from_slice(&rec.content),
            record::END_REQUEST => {
                let end = EndRequest::parse(&rec.content).unwrap_or_else(|| {
                    panic!(
                        "END_REQUEST for {id} with a {}-byte body",
                        rec.content.len()
                    )
                });
                reply.end = Some(end);
                self.begun.remove(&id);
                self.ended.insert(id);
            }
            other => panic!("server sent record type {other} for request {id}"),
        }
    }

    /// Reads until request `id` has its END_REQUEST; returns what came.
    pub async fn reply(&mut self, id: u16) -> Reply {
        loop {
            if self.replies.get(&id).is_some_and(|r| r.end.is_some()) {
                return self.replies.remove(&id).unwrap_or_default();
            }
            match self.next_record().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("connection closed before END_REQUEST of request {id}"),
                Err(e) => panic!("read failed before END_REQUEST of request {id}: {e}"),
            }
        }
    }

    /// True once request `id` has its END_REQUEST (without waiting).
    pub fn has_ended(&self, id: u16) -> bool {
        self.ended.contains(&id)
    }

    /// Output received so far for a request still in flight.
    pub fn partial(&self, id: u16) -> Option<&Reply> {
        self.replies.get(&id)
    }

    /// Reads until a management record (id 0) arrives.
    pub async fn mgmt_record(&mut self) -> Record {
        loop {
            if let Some(r) = self.mgmt.pop_front() {
                return r;
            }
            match self.next_record().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("connection closed before a management record"),
                Err(e) => panic!("read failed before a management record: {e}"),
            }
        }
    }

    /// Sends an (empty) GET_VALUES and waits for its answer: the server
    /// reads records in order, so every record sent before has then been
    /// processed (a request whose PARAMS ended has its handler running,
    /// or has been refused).
    pub async fn barrier(&mut self) {
        let mut q = BytesMut::new();
        record::put_record(&mut q, record::GET_VALUES, 0, b"");
        self.send(&q).await;
        let mut others = Vec::new();
        loop {
            let r = self.mgmt_record().await;
            if r.kind == record::GET_VALUES_RESULT {
                for o in others.into_iter().rev() {
                    self.mgmt.push_front(o);
                }
                return;
            }
            others.push(r);
        }
    }

    /// Reads (and checks) everything until EOF; `Err` if the connection
    /// ended with an error such as ECONNRESET instead.
    pub async fn eof(&mut self) -> io::Result<()> {
        while self.next_record().await?.is_some() {}
        Ok(())
    }

    /// Ends a connection whose requests all completed: shuts down our
    /// side and reads to EOF, so a stray record (a second END_REQUEST,
    /// output after the end) still fails the test.
    pub async fn finish(mut self) {
        within("shutdown", self.s.shutdown())
            .await
            .expect("shutdown");
        self.eof().await.expect("clean EOF after our shutdown");
        assert!(
            self.begun.is_empty(),
            "requests without END_REQUEST: {:?}",
            self.begun
        );
    }

    /// Like [`Conn::eof`], and also says how long it took.
    pub async fn eof_timed(&mut self) -> (io::Result<()>, Duration) {
        let t = Instant::now();
        let r = self.eof().await;
        (r, t.elapsed())
    }

    /// Asserts that no record arrives for `d` (and the peer does not close).
    pub async fn quiet(&mut self, d: Duration) {
        if let Ok(r) = tokio::time::timeout(d, self.next_record()).await {
            panic!("expected silence for {d:?}, got {r:?}");
        }
    }

    /// Sends a whole request and returns its checked response.
    pub async fn roundtrip(
        &mut self,
        id: u16,
        keep: bool,
        method: &str,
        uri: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Http {
        let b = request(id, keep, method, uri, extra, body);
        self.send(&b).await;
        self.reply(id).await.http()
    }

    /// `GET uri` as request `id` with KEEP_CONN.
    pub async fn get(&mut self, id: u16, uri: &str) -> Http {
        self.roundtrip(id, true, "GET", uri, &[], b"").await
    }
}

/// Connects to a unix socket, waiting while its backlog is full: a unix
/// socket's non-blocking connect fails with EAGAIN then (the abuse tests
/// fill the backlog on purpose), where a TCP client would wait in SYN.
async fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    loop {
        match UnixStream::connect(path).await {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            r => return r,
        }
    }
}
