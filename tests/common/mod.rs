//! Shared helpers for the integration tests: start the real binary on a
//! temporary socket, wait until it serves, stop it with a signal, and read
//! what it logged.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_myflask");

/// A running `myflask serve`.
pub struct Server {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    stderr_path: PathBuf,
}

impl Server {
    /// Starts `myflask serve --listen unix:<tmp>/fcgi.sock <extra...>` with
    /// logs on stderr captured to a file.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_env(extra, &[])
    }

    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("fcgi.sock");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .args(extra)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn myflask");
        let s = Server {
            child: Some(child),
            dir,
            sock,
            stderr_path,
        };
        s.wait_ready();
        s
    }

    /// Waits until the log says "ready" (every listener serving).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.stderr().contains(" ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not become ready; stderr:\n{}", self.stderr());
    }

    pub fn addr(&self) -> myflask::addr::ListenAddr {
        myflask::addr::ListenAddr::Unix(self.sock.clone())
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(40))
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.take().expect("server already stopped");
        wait_child(child, limit, || self.stderr())
    }

    /// RSS of the server process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits (bounded) for `child` to exit; past `limit` kills it and panics
/// with what it logged.
pub fn wait_child(mut child: Child, limit: Duration, log: impl Fn() -> String) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {limit:?}; log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A temporary directory outside /tmp and /var/tmp (so sockets in it get no
/// PrivateTmp warning) with a short path (unix socket paths are limited to
/// 107 bytes, and CI may clone the repository anywhere).
pub fn target_tmpdir() -> tempfile::TempDir {
    for base in ["/run", "/dev/shm"] {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("myflask-test-")
            .tempdir_in(base)
        {
            return d;
        }
    }
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

/// Whether the server is expected to warn about PrivateTmp for `path`.
pub fn under_tmp(path: &Path) -> bool {
    path.starts_with("/tmp") || path.starts_with("/var/tmp")
}

pub fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs `myflask <args>` to completion and returns (status, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run myflask");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Finds a program or fails the test with an explanation (tests never skip
/// silently: `.ci/run` installs what they need).
pub fn require_tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} is not installed; run tests/run.sh (it installs nginx, systemd and libfcgi-bin)"
    );
}

pub fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

// ---------------------------------------------------------------------------
// Helpers for the systemd, notify, nginx and library tests.

/// `myflask` (or any program) as a test starts it: stdin and stdout null,
/// none of the systemd variables of the environment the tests run in.
pub fn clean_cmd(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for v in [
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
        "INVOCATION_ID",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// A child process whose stderr goes to a file; killed on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub log_path: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stderr appended to `log_path`.
    pub fn spawn(cmd: &mut Command, log_path: &Path) -> Proc {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("log file");
        cmd.stderr(f);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Proc {
            child: Some(child),
            log_path: log_path.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log (or when
    /// the process exits first).
    pub fn wait_log(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    if self.log().contains(needle) {
                        return;
                    }
                    panic!(
                        "process exited ({st}) before logging {needle:?}; log:\n{}",
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no {needle:?} in the log within {limit:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits (bounded) for the exit status; kills and panics past `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.take().expect("process already reaped");
        wait_child(child, limit, || self.log())
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One FastCGI request on a new connection through the project's client,
/// bounded by `limit`.
pub fn fcgi_request(
    addr: &myflask::addr::ListenAddr,
    req: &myflask::fastcgi::client::Request,
    limit: Duration,
) -> std::io::Result<myflask::fastcgi::client::Response> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        tokio::time::timeout(limit, myflask::fastcgi::client::request_once(addr, req))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {limit:?}"),
                ))
            })
    })
}

/// `GET uri` over FastCGI; panics on a transport error.
pub fn fcgi_get(addr: &myflask::addr::ListenAddr, uri: &str) -> myflask::fastcgi::client::Response {
    let req = myflask::fastcgi::client::Request {
        method: "GET".into(),
        uri: uri.into(),
        ..Default::default()
    };
    fcgi_request(addr, &req, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("FastCGI GET {uri} on {addr}: {e}"))
}

/// Sends `request` (raw HTTP/1.1, should say `Connection: close`) over a
/// unix socket and returns everything the server answered.
pub fn http_over_unix(path: &Path, request: &str) -> String {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    String::from_utf8_lossy(&read_all(s)).into_owned()
}

// ---------------------------------------------------------------------------
// A raw record-level FastCGI client for the protocol and abuse tests.

/// A FastCGI client that works record by record, so tests can send exactly
/// the bytes they mean (odd padding, straddling pairs, interleaved ids,
/// garbage) and check every record that comes back. It enforces the
/// invariants of the protocol on everything it reads: no record for an id
/// the client did not begin, nothing for an id after its END_REQUEST
/// (exactly one END_REQUEST per request), nothing after the end of STDOUT,
/// and no `Transfer-Encoding` in any CGI response head.
pub mod raw {
    use bytes::{Bytes, BytesMut};
    use myflask::fastcgi::client::parse_cgi;
    use myflask::fastcgi::params::encode_pair;
    use myflask::fastcgi::record::{self, EndRequest, Record};
    use std::collections::{HashMap, HashSet, VecDeque};
    use std::io;
    use std::path::Path;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// Bound of every single wait in these helpers.
    pub const WAIT: Duration = Duration::from_secs(20);

    /// Awaits `f` for at most [`WAIT`]; panics naming `what` past it.
    pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
        match tokio::time::timeout(WAIT, f).await {
            Ok(v) => v,
            Err(_) => panic!("timed out after {WAIT:?}: {what}"),
        }
    }

    /// What came back for one request id.
    #[derive(Debug, Default, Clone)]
    pub struct Reply {
        pub stdout: Vec<u8>,
        /// Content length of every non-empty STDOUT record, in order.
        pub stdout_records: Vec<usize>,
        /// The empty STDOUT record arrived.
        pub stdout_closed: bool,
        pub stderr: Vec<u8>,
        pub end: Option<EndRequest>,
    }

    /// A parsed CGI response.
    #[derive(Debug, Clone)]
    pub struct Http {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Http {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.header_all(name).into_iter().next()
        }

        pub fn header_all(&self, name: &str) -> Vec<&str> {
            self.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        }

        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }

        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
        }
    }

    impl Reply {
        /// The END_REQUEST body (panics if none arrived).
        pub fn end(&self) -> EndRequest {
            self.end.expect("no END_REQUEST")
        }

        /// Parses and checks the CGI response: END_REQUEST with
        /// REQUEST_COMPLETE, STDOUT closed by its empty record, a head that
        /// parses, and no `Transfer-Encoding` header.
        pub fn http(&self) -> Http {
            let end = self.end();
            assert_eq!(
                end.protocol_status,
                record::REQUEST_COMPLETE,
                "protocol status of END_REQUEST"
            );
            assert!(
                self.stdout_closed,
                "STDOUT was not closed by an empty record before END_REQUEST"
            );
            let (status, headers, body) = parse_cgi(&self.stdout).unwrap_or_else(|e| {
                panic!(
                    "bad CGI response ({e}): {:?}",
                    String::from_utf8_lossy(&self.stdout[..self.stdout.len().min(500)])
                )
            });
            for (k, v) in &headers {
                assert!(
                    !k.eq_ignore_ascii_case("transfer-encoding"),
                    "a CGI response carries `{k}: {v}` (nginx does not de-chunk)"
                );
            }
            Http {
                status,
                headers,
                body,
            }
        }
    }

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
            let s = within("connect", UnixStream::connect(path))
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

    /// BEGIN_REQUEST (responder) for `id`.
    pub fn begin(id: u16, keep: bool) -> BytesMut {
        let mut b = BytesMut::new();
        let flags = if keep { record::KEEP_CONN } else { 0 };
        record::put_begin_request(&mut b, id, record::ROLE_RESPONDER, flags);
        b
    }

    /// A name-value stream.
    pub fn pairs(p: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut b = BytesMut::new();
        for (k, v) in p {
            encode_pair(&mut b, k, v);
        }
        b.to_vec()
    }

    /// The params nginx sends for `method uri` (plus `extra`, in order);
    /// `CONTENT_LENGTH` is sent as given, empty when `None`. A standard name
    /// that also appears in `extra` is left to `extra`.
    pub fn std_params(
        method: &str,
        uri: &str,
        content_length: Option<usize>,
        extra: &[(&str, &str)],
    ) -> Vec<u8> {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let cl = content_length.map(|n| n.to_string()).unwrap_or_default();
        let mut v: Vec<(&str, &str)> = vec![
            ("QUERY_STRING", query),
            ("REQUEST_METHOD", method),
            ("CONTENT_TYPE", ""),
            ("CONTENT_LENGTH", &cl),
            ("SCRIPT_NAME", path),
            ("REQUEST_URI", uri),
            ("DOCUMENT_URI", path),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_SCHEME", "http"),
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("REMOTE_PORT", "40000"),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("HTTP_HOST", "localhost"),
        ];
        // A standard param the caller gives itself is sent once, its way.
        v.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        v.extend_from_slice(extra);
        let p: Vec<(&[u8], &[u8])> = v
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        pairs(&p)
    }

    /// `data` as records of `kind` (split at the codec's chunk size) plus
    /// the empty record that ends the stream.
    pub fn stream(kind: u8, id: u16, data: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        record::put_stream(&mut b, kind, id, data);
        record::put_stream_end(&mut b, kind, id);
        b
    }

    /// One record with explicit padding (filled with 0xAA, which a server
    /// must ignore).
    pub fn record_padded(kind: u8, id: u16, content: &[u8], pad: u8) -> Vec<u8> {
        assert!(content.len() <= record::MAX_CONTENT_LEN);
        let mut v = Vec::with_capacity(8 + content.len() + pad as usize);
        v.push(record::VERSION_1);
        v.push(kind);
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&(content.len() as u16).to_be_bytes());
        v.push(pad);
        v.push(0);
        v.extend_from_slice(content);
        v.extend(std::iter::repeat_n(0xAA, pad as usize));
        v
    }

    /// A whole request: BEGIN, PARAMS (standard ones plus `extra`), empty
    /// PARAMS, STDIN, empty STDIN. CONTENT_LENGTH is the body's length, or
    /// empty for an empty body.
    pub fn request(
        id: u16,
        keep: bool,
        method: &str,
        uri: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> BytesMut {
        let cl = (!body.is_empty()).then_some(body.len());
        let mut b = begin(id, keep);
        b.extend_from_slice(&stream(
            record::PARAMS,
            id,
            &std_params(method, uri, cl, extra),
        ));
        b.extend_from_slice(&stream(record::STDIN, id, body));
        b
    }

    /// One request on a fresh connection without KEEP_CONN; also checks
    /// that the server then closes the connection cleanly.
    pub async fn once(
        path: &Path,
        method: &str,
        uri: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Http {
        let mut c = Conn::connect(path).await;
        let h = c.roundtrip(1, false, method, uri, extra, body).await;
        c.eof()
            .await
            .unwrap_or_else(|e| panic!("connection did not end cleanly after {uri}: {e}"));
        h
    }

    pub async fn get(path: &Path, uri: &str) -> Http {
        once(path, "GET", uri, &[], b"").await
    }

    /// `GET /healthz` answers `200 ok`.
    pub async fn healthz(path: &Path) {
        let h = get(path, "/healthz").await;
        assert_eq!(h.status, 200, "healthz: {}", h.text());
        assert_eq!(h.body, b"ok\n");
    }

    /// `GET /status` as JSON.
    pub async fn status(path: &Path) -> serde_json::Value {
        let h = get(path, "/status").await;
        assert_eq!(h.status, 200);
        h.json()
    }

    /// Polls `/status` until `field` equals `want` (the `/status` request
    /// itself counts as one active request and one active connection);
    /// panics with the last value after `limit`.
    pub async fn wait_status(path: &Path, field: &str, want: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let v = status(path).await;
            let got = v[field].as_u64();
            if got == Some(want) {
                return;
            }
            if Instant::now() > deadline {
                panic!("/status {field} is {got:?}, want {want}, after {limit:?}: {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deterministic pseudo-random bytes (xorshift), for bodies whose every
    /// byte matters.
    pub fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    /// FNV-1a, to name a body in a failure message.
    pub fn fnv(b: &[u8]) -> u64 {
        b.iter().fold(0xcbf29ce484222325, |h, &x| {
            (h ^ x as u64).wrapping_mul(0x100000001b3)
        })
    }

    /// Asserts two bodies are equal, reporting length, hash and the first
    /// difference instead of dumping megabytes.
    pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
        if got != want {
            let first = got.iter().zip(want).position(|(a, b)| a != b);
            panic!(
                "{what}: got {} bytes (fnv {:016x}), want {} bytes (fnv {:016x}); first difference at {first:?}",
                got.len(),
                fnv(got),
                want.len(),
                fnv(want)
            );
        }
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM, ...).
    pub fn proc_kib(pid: i32, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// `Bytes` from a slice (for the codec's API).
    pub fn bytes(b: &[u8]) -> Bytes {
        Bytes::copy_from_slice(b)
    }
}
