//! Several myflask hosts behind one nginx (issue 15), with the shipped
//! configuration: packaging/debian/examples/app-several-hosts.conf and
//! packaging/debian/nginx/app.conf, rendered for the myflask package.
//!
//! The test builds a private network of its own: network namespaces joined
//! by veth pairs to a bridge that lives in a namespace too, so no packet
//! touches the machine's own network. 10.0.0.1 runs nginx, 10.0.0.2-4 run
//! one myflask each, 10.0.0.99 is an outsider. Each backend's listening
//! socket is bound once by this test process and handed to every myflask it
//! starts as systemd does (fd 3, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), so
//! the socket outlives each process and a restart loses no connection.
//!
//! Named checks, each under GET and POST load through nginx: `spread`,
//! `rolling_upgrade` (restarts), `rolling_reload` (reloads), `sigkill`,
//! `allow_list`; and `management_local`: the site keeps /status, /metrics
//! and /healthz to the nginx host's own clients. Needs root (CI runs as
//! root); skipped with a message otherwise. Every wait is bounded.

mod common;

use common::{
    Adopted, BIN, Lan, Nginx, Proc, become_subreaper, clean_cmd, enter, in_netns, require_tool,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const NGINX_IP: &str = "10.0.0.1";
const BACKENDS: [&str; 3] = ["10.0.0.2", "10.0.0.3", "10.0.0.4"];
const OUTSIDER_IP: &str = "10.0.0.99";
/// In a rolling upgrade, load before the first host and between hosts:
/// each new process serves thousands of requests before the next host goes.
const ROLL_PAUSE: Duration = Duration::from_millis(500);
/// `fail_timeout` of the shipped example.
const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// A backend host: the socket held by this process, myflask started on it.

/// The process serving a host: one the test started, or the successor a
/// reload started (double-forked by the old process; this test adopts it
/// as subreaper, as systemd does as PID 1).
enum Serving {
    Started(Proc),
    Adopted(Adopted),
}

impl Serving {
    fn pid(&self) -> i32 {
        match self {
            Serving::Started(p) => p.pid(),
            Serving::Adopted(a) => a.pid(),
        }
    }

    fn signal(&self, sig: i32) {
        match self {
            Serving::Started(p) => p.signal(sig),
            Serving::Adopted(a) => a.signal(sig),
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match self {
            Serving::Started(p) => p.wait_exit(limit),
            Serving::Adopted(a) => a.wait_exit(limit),
        }
    }
}

/// One application host: its listening socket (held here, as systemd holds
/// it) and the myflask process currently serving it.
struct Host {
    name: String,
    ns: String,
    addr: SocketAddr,
    sock: std::net::TcpListener,
    proc: Option<Serving>,
    dir: PathBuf,
    generation: u32,
}

impl Host {
    /// Binds `addr` inside `ns` once, with systemd's backlog.
    fn bind(name: &str, ns: String, addr: SocketAddr, dir: &Path) -> Host {
        let sock = in_netns(&ns, || std::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("binding {addr} in {ns}: {e}"));
        // SAFETY: listen() again on our own socket only raises the backlog.
        unsafe { libc::listen(sock.as_raw_fd(), 4096) };
        Host {
            name: name.to_string(),
            ns,
            addr,
            sock,
            proc: None,
            dir: dir.to_path_buf(),
            generation: 0,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}-{}.log", self.name, self.generation))
    }

    /// Starts a new myflask on the held socket and waits until it is ready.
    fn start(&mut self) {
        self.generation += 1;
        let fd = self.sock.as_raw_fd();
        let log = self.log_path();
        let mut proc = in_netns(&self.ns, || {
            // LISTEN_PID must be the server's own pid: the shell sets it to
            // its own and then becomes the server (exec keeps the pid).
            let mut cmd = clean_cmd("sh");
            cmd.arg("-c")
                .arg("export LISTEN_PID=$$; exec \"$0\" \"$@\"")
                .arg(BIN)
                .args([
                    "serve",
                    "--allowed-clients",
                    NGINX_IP,
                    "--log-target",
                    "stderr",
                ])
                .env("LISTEN_FDS", "1")
                .env("LISTEN_FDNAMES", "fastcgi");
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || pass_as_fd3(fd));
            }
            Proc::spawn(&mut cmd, &log)
        });
        proc.wait_log(" ready", Duration::from_secs(20));
        self.proc = Some(Serving::Started(proc));
    }

    fn pid(&self) -> i32 {
        self.proc.as_ref().map(Serving::pid).expect("host running")
    }

    /// What `systemctl reload` does through the unit's `ExecReload=`:
    /// `myflask reload --pid MAINPID`, which returns once the successor
    /// serves. Returns the old process (draining) and how long the command
    /// took.
    fn reload(&mut self) -> (Serving, Duration) {
        let old = self.proc.take().expect("host running");
        let t = Instant::now();
        let out = clean_cmd(BIN)
            .args(["reload", "--pid", &old.pid().to_string()])
            .args(["--timeout", "30"])
            .stdout(Stdio::piped())
            .output()
            .expect("running myflask reload");
        let took = t.elapsed();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "reload of {} (PID {}): {}; {said}{}\n{}",
            self.name,
            old.pid(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.all_logs()
        );
        // "myflask reload: PID <new> serves now; PID <old> drains and exits"
        let new = said
            .split("PID ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no new PID in {said:?}"));
        self.proc = Some(Serving::Adopted(Adopted::new(new)));
        (old, took)
    }

    /// The socket behind fd `fd` of process `pid`, as `socket:[INODE]`.
    fn fd_target(pid: u32, fd: i32) -> String {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| format!("({e})"))
    }

    /// Whether the running process's fd 3 is the socket this test holds.
    fn serves_held_socket(&self) -> bool {
        let held = Self::fd_target(std::process::id(), self.sock.as_raw_fd());
        Self::fd_target(self.pid() as u32, 3) == held
    }

    /// What `systemctl restart` does: SIGTERM (drain), wait, start again.
    /// Returns how long the drain took.
    fn restart(&mut self) -> Duration {
        let t = Instant::now();
        let mut p = self.proc.take().expect("host running");
        p.signal(libc::SIGTERM);
        let st = p.wait_exit(Duration::from_secs(40));
        assert!(st.success(), "{} exited with {st} after SIGTERM", self.name);
        let drained = t.elapsed();
        self.start();
        drained
    }

    /// A crash: SIGKILL, then systemd's RestartSec=500ms, then a new start.
    fn crash_and_restart(&mut self) {
        let mut p = self.proc.take().expect("host running");
        p.signal(libc::SIGKILL);
        p.wait_exit(Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(500));
        self.start();
    }

    /// Waits (at most 3 s) until a request other than the /status that
    /// asks is in flight here; whether one was.
    fn wait_busy(&self, front: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.status(front)["active_requests"].as_u64() < Some(2) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Every log line of every process this host ran.
    fn all_logs(&self) -> String {
        (1..=self.generation)
            .map(|g| {
                let p = self.dir.join(format!("{}-{g}.log", self.name));
                std::fs::read_to_string(p).unwrap_or_default()
            })
            .collect()
    }

    /// `/status` of the running process, straight over FastCGI from `ns`
    /// (the nginx host: the only client the allow-list lets in).
    fn status(&self, ns: &str) -> serde_json::Value {
        let req = myflask::fastcgi::client::Request {
            method: "GET".into(),
            uri: "/status".into(),
            ..Default::default()
        };
        let addr = myflask::addr::ListenAddr::Tcp(self.addr);
        let resp = in_netns(ns, || {
            common::fcgi_request(&addr, &req, Duration::from_secs(10))
        })
        .unwrap_or_else(|e| panic!("/status of {}: {e}", self.name));
        serde_json::from_slice(&resp.body).expect("/status JSON")
    }
}

/// In the child between fork and exec: `fd` becomes fd 3, inheritable.
fn pass_as_fd3(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl/dup2 on fds of this (forked) process.
    let r = unsafe {
        if fd == 3 {
            libc::fcntl(3, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, 3)
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// nginx on 10.0.0.1 with the shipped site.

/// nginx in `ns` with the shipped site file and location snippet,
/// unchanged; only the process settings around them are the test's.
fn start_nginx(ns: &str, dir: &Path) -> Nginx {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("snippets")).unwrap();
    // The templates rendered as `cargo myflask deb` renders them for
    // the myflask package (they hold no other placeholder).
    let render = |from: &str, to: PathBuf| {
        let text = std::fs::read_to_string(repo.join(from)).unwrap();
        std::fs::write(to, text.replace("{{name}}", "myflask")).unwrap();
    };
    render(
        "packaging/debian/nginx/app.conf",
        dir.join("snippets/myflask.conf"),
    );
    render(
        "packaging/debian/examples/app-several-hosts.conf",
        dir.join("site.conf"),
    );
    let http = "    keepalive_requests 1000000;\n\
                # Which host served each response (the last address on retries).\n\
                add_header X-Upstream $upstream_addr always;\n    include site.conf;\n";
    let listen = SocketAddr::from(([10, 0, 0, 1], 80));
    Nginx::start(dir, http, listen, Some(ns))
}

// ---------------------------------------------------------------------------
// HTTP/1.1 clients: keep-alive connections to nginx, GET and POST.

type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// One keep-alive connection to nginx from its own host (its loopback: the
/// shipped site keeps /healthz to local clients), reopened after an error.
#[derive(Default)]
struct Client {
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn exchange(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Reply, String> {
        let r = self.try_exchange(method, path, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn try_exchange(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Reply, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(("127.0.0.1", 80)).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            self.conn = Some(BufReader::new(s));
        }
        let c = self.conn.as_mut().expect("connected");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // One write: head and body apart would meet Nagle and delayed ACK.
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        c.get_mut()
            .write_all(&msg)
            .map_err(|e| format!("send: {e}"))?;
        read_reply(c).map_err(|e| format!("reply: {e}"))
    }
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut l = String::new();
    if r.read_line(&mut l)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(l.trim_end().to_string())
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let status_line = read_line(r)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&status_line))?;
    let mut headers = Vec::new();
    loop {
        let l = read_line(r)?;
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad(&l))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let size = usize::from_str_radix(&read_line(r)?, 16).map_err(|_| bad("chunk size"))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = header("content-length") {
        body.resize(n.parse().map_err(|_| bad("content-length"))?, 0);
        r.read_exact(&mut body)?;
    }
    Ok((status, headers, body))
}

/// What the load sends: GET /healthz, POST /echo (4 KiB, checked byte for
/// byte), slow POST /upload (192 KiB read at 30 ms per record: long enough
/// to be in flight when a host goes away; size and hash checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Get,
    Echo,
    Upload,
}

struct Outcome {
    kind: Kind,
    /// 0: no HTTP answer at all.
    status: u16,
    /// nginx's $upstream_addr: every host tried, the last one answered.
    upstream: String,
    at: Instant,
    error: Option<String>,
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One request of `kind`, checked.
fn one(client: &mut Client, kind: Kind, n: u64) -> Outcome {
    let body: Vec<u8> = match kind {
        Kind::Get => Vec::new(),
        Kind::Echo => (0..4096u64).map(|i| (i * 31 + n) as u8).collect(),
        Kind::Upload => (0..192 * 1024u64).map(|i| (i * 7 + n) as u8).collect(),
    };
    let (method, path) = match kind {
        Kind::Get => ("GET", "/healthz"),
        Kind::Echo => ("POST", "/echo"),
        Kind::Upload => ("POST", "/upload?pace_ms=30"),
    };
    let at = Instant::now();
    let (status, upstream, error) = match client.exchange(method, path, &body) {
        Err(e) => (0, String::new(), Some(e)),
        Ok((status, headers, got)) => {
            let up = headers.iter().find(|(k, _)| k == "x-upstream");
            let up = up.map(|(_, v)| v.clone()).unwrap_or_default();
            let good = match kind {
                Kind::Get => got == b"ok\n",
                Kind::Echo => got == body,
                Kind::Upload => {
                    String::from_utf8_lossy(&got).contains(&format!("{:016x}", fnv1a64(&body)))
                }
            };
            let error = (status != 200 || !good).then(|| {
                format!(
                    "status {status}: {}",
                    String::from_utf8_lossy(&got[..got.len().min(200)])
                )
            });
            (status, up, error)
        }
    };
    Outcome {
        kind,
        status,
        upstream,
        at,
        error,
    }
}

/// Client threads in the nginx namespace, sending until told to stop
/// (bounded: 200,000 requests or 120 s per thread).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Outcome>>>,
}

impl Load {
    fn start(ns: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let kinds = [Kind::Get; 4]
            .into_iter()
            .chain([Kind::Echo; 3])
            .chain([Kind::Upload; 3]);
        let threads = kinds
            .map(|kind| {
                let (stop, ns) = (stop.clone(), ns.to_string());
                std::thread::spawn(move || {
                    enter(&ns);
                    let (mut client, mut out) = (Client::default(), Vec::new());
                    let deadline = Instant::now() + Duration::from_secs(120);
                    for n in 0..200_000u64 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        out.push(one(&mut client, kind, n));
                    }
                    out
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> Summary {
        self.stop.store(true, Ordering::Relaxed);
        let all = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect();
        Summary(all)
    }
}

struct Summary(Vec<Outcome>);

impl Summary {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.0.iter().filter(|o| f(o)).count()
    }

    fn failed(&self, post: bool) -> Vec<&Outcome> {
        let is_post = |k: Kind| k != Kind::Get;
        self.0
            .iter()
            .filter(|o| o.error.is_some() && is_post(o.kind) == post)
            .collect()
    }

    /// Requests served per host (the last address nginx tried).
    fn served_by(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for o in self.0.iter().filter(|o| o.error.is_none()) {
            let last = o.upstream.rsplit(", ").next().unwrap_or_default();
            *m.entry(last.to_string()).or_default() += 1;
        }
        m
    }

    fn line(&self) -> String {
        let by = |k| self.count(|o| o.kind == k);
        format!(
            "{} requests (GET {}, POST /echo {}, slow POST /upload {}), {} retried on another host, served by {:?}",
            self.0.len(),
            by(Kind::Get),
            by(Kind::Echo),
            by(Kind::Upload),
            self.count(|o| o.upstream.contains(", ")),
            self.served_by()
        )
    }
}

fn show(failures: &[&Outcome]) -> String {
    failures
        .iter()
        .take(5)
        .map(|o| {
            format!(
                "{:?} [{}] {}",
                o.kind,
                o.upstream,
                o.error.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// The bed and the checks.

/// Fields drop in order: nginx and the servers stop before the
/// namespaces go.
struct Bed {
    nginx: Nginx,
    hosts: Vec<Host>,
    front: String,
    outsider: String,
    _lan: Lan,
}

impl Bed {
    fn new(dir: &Path) -> Bed {
        let mut members = vec![("nginx", NGINX_IP), ("x", OUTSIDER_IP)];
        let names = ["h2", "h3", "h4"];
        members.extend(names.iter().copied().zip(BACKENDS));
        let lan = Lan::build(&members);
        let hosts = names
            .iter()
            .zip(BACKENDS)
            .map(|(n, ip)| {
                let addr = format!("{ip}:9000").parse().expect("address");
                let mut h = Host::bind(n, lan.ns(n), addr, dir);
                h.start();
                h
            })
            .collect();
        let front = lan.ns("nginx");
        Bed {
            nginx: start_nginx(&front, &dir.join("nginx")),
            hosts,
            outsider: lan.ns("x"),
            front,
            _lan: lan,
        }
    }

    fn total_requests(&self, h: &Host) -> u64 {
        h.status(&self.front)["total_requests"]
            .as_u64()
            .expect("total_requests")
    }
}

fn assert_no_failures(name: &str, s: &Summary) {
    for post in [false, true] {
        let f = s.failed(post);
        let what = if post { "POST" } else { "GET" };
        assert!(
            f.is_empty(),
            "{name}: {} {what} requests failed:\n{}",
            f.len(),
            show(&f)
        );
    }
}

/// Requests spread over the three hosts (each one's own /status).
fn spread(bed: &mut Bed) {
    let before: Vec<u64> = bed.hosts.iter().map(|h| bed.total_requests(h)).collect();
    let load = Load::start(&bed.front);
    std::thread::sleep(Duration::from_secs(3));
    let s = load.finish();
    assert_no_failures("spread", &s);
    let served: Vec<u64> = bed
        .hosts
        .iter()
        .zip(before)
        .map(|(h, b)| bed.total_requests(h) - b)
        .collect();
    let total: u64 = served.iter().sum();
    eprintln!("check spread: {}; /status counts {served:?}", s.line());
    for (h, n) in bed.hosts.iter().zip(&served) {
        assert!(
            *n * 100 >= total * 15,
            "spread: {} served {n} of {total}",
            h.name
        );
    }
}

/// Rolling upgrade: each host in turn drained (SIGTERM) and replaced by a
/// new process on the same held socket; nothing fails, POSTs included.
fn rolling_upgrade(bed: &mut Bed) {
    let load = Load::start(&bed.front);
    std::thread::sleep(ROLL_PAUSE);
    let mut drains = Vec::new();
    for h in bed.hosts.iter_mut() {
        let old = h.pid();
        drains.push(h.restart());
        assert_ne!(old, h.pid());
        std::thread::sleep(ROLL_PAUSE);
    }
    let s = load.finish();
    assert_no_failures("rolling_upgrade", &s);
    for h in &bed.hosts {
        assert!(
            bed.total_requests(h) > 10,
            "rolling_upgrade: new {} served nothing",
            h.name
        );
        assert!(
            h.all_logs().contains("SIGTERM: shutting down"),
            "{}",
            h.all_logs()
        );
    }
    eprintln!(
        "check rolling_upgrade: {}; drains took {drains:?}",
        s.line()
    );
}

/// Rolling upgrade by reload: each host in turn reloaded as the unit's
/// `ExecReload=` does, while requests are in flight there; nothing fails,
/// POSTs included. Each host is then served by a new PID on the very socket
/// this test holds, and each old process drains and exits 0.
fn rolling_reload(bed: &mut Bed) {
    let load = Load::start(&bed.front);
    std::thread::sleep(ROLL_PAUSE);
    let (mut olds, mut done) = (Vec::new(), Vec::new());
    for h in bed.hosts.iter_mut() {
        let busy = h.wait_busy(&bed.front);
        let (old, took) = h.reload();
        assert_ne!(old.pid(), h.pid(), "rolling_reload: {}", h.name);
        assert!(
            h.serves_held_socket(),
            "rolling_reload: PID {} of {} does not serve the held socket",
            h.pid(),
            h.name
        );
        let what = if busy { "" } else { ", nothing in flight" };
        done.push(format!(
            "{} PID {} -> {} in {took:?}{what}",
            h.name,
            old.pid(),
            h.pid()
        ));
        olds.push((h.name.clone(), old));
        std::thread::sleep(ROLL_PAUSE);
    }
    let s = load.finish();
    assert_no_failures("rolling_reload", &s);
    for (name, mut old) in olds {
        let st = old.wait_exit(Duration::from_secs(40));
        assert!(st.success(), "rolling_reload: old {name} exited with {st}");
    }
    for h in &bed.hosts {
        let st = h.status(&bed.front);
        assert_eq!(
            st["pid"],
            h.pid(),
            "rolling_reload: {} answered by {st}",
            h.name
        );
        assert!(
            st["total_requests"].as_u64() > Some(10),
            "rolling_reload: new {} served nothing",
            h.name
        );
    }
    eprintln!("check rolling_reload: {}; {}", s.line(), done.join(", "));
}

/// One host SIGKILLed and restarted as systemd would (RestartSec=500ms):
/// GETs never fail (nginx retries them on another host); POSTs already
/// sent to the dead process fail with 502 (nginx does not run a
/// non-idempotent request twice): counted and reported. The restarted host
/// gets traffic again within fail_timeout: nginx skips a failed host for
/// fail_timeout from its last failure, counted in whole seconds (so up to
/// a second more), then the next request probes it: 2 s of slack for the
/// rounding, that request and a busy machine.
fn sigkill(bed: &mut Bed) {
    let load = Load::start(&bed.front);
    std::thread::sleep(Duration::from_secs(1));
    let victim = &mut bed.hosts[0];
    let vaddr = victim.addr.to_string();
    // Kill while requests are in flight there.
    victim.wait_busy(&bed.front);
    let killed_at = Instant::now();
    victim.crash_and_restart();
    let ready_at = Instant::now();
    std::thread::sleep(FAIL_TIMEOUT + Duration::from_secs(3));
    let s = load.finish();
    let gets = s.failed(false);
    assert!(
        gets.is_empty(),
        "sigkill: {} GETs failed:\n{}",
        gets.len(),
        show(&gets)
    );
    let posts = s.failed(true);
    for o in &posts {
        let on_victim = o.upstream.rsplit(", ").next() == Some(vaddr.as_str());
        assert!(
            o.status == 502 && on_victim,
            "sigkill: unexpected POST failure:\n{}",
            show(&[o])
        );
    }
    let before_kill = posts.iter().filter(|o| o.at < killed_at).count();
    let rejoined =
        s.0.iter()
            .filter(|o| o.at > ready_at && o.error.is_none() && o.upstream.ends_with(&vaddr))
            .map(|o| o.at - ready_at)
            .min();
    eprintln!(
        "check sigkill: {}; POSTs in flight on the killed host failed with 502: {} \
         ({before_kill} sent before the kill, {} while it restarted); \
         restart took {:?}; the new process got traffic {rejoined:?} after it was ready",
        s.line(),
        posts.len(),
        posts.len() - before_kill,
        ready_at - killed_at,
    );
    let rejoined = rejoined.expect("sigkill: the restarted host got no traffic");
    assert!(
        rejoined <= FAIL_TIMEOUT + Duration::from_secs(2),
        "rejoined after {rejoined:?}"
    );
}

/// A client outside --allowed-clients is closed at accept and logged, while
/// nginx's traffic flows.
fn allow_list(bed: &mut Bed) {
    let load = Load::start(&bed.front);
    let target = &bed.hosts[1];
    let req = myflask::fastcgi::client::Request {
        method: "GET".into(),
        uri: "/healthz".into(),
        ..Default::default()
    };
    let addr = myflask::addr::ListenAddr::Tcp(target.addr);
    let got = in_netns(&bed.outsider, || {
        common::fcgi_request(&addr, &req, Duration::from_secs(5))
    });
    assert!(
        got.is_err(),
        "allow_list: the outsider got an answer: {:?}",
        got.map(|r| r.status)
    );
    let needle = format!("closed a connection from {OUTSIDER_IP}:");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !target.all_logs().contains(&needle) {
        assert!(
            Instant::now() < deadline,
            "allow_list: no {needle:?} in\n{}",
            target.all_logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let s = load.finish();
    assert_no_failures("allow_list", &s);
    let line = target
        .all_logs()
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or("")
        .to_string();
    eprintln!(
        "check allow_list: outsider refused ({}); logged: {line}",
        got.err().map(|e| e.to_string()).unwrap_or_default()
    );
}

/// The shipped site keeps the management endpoints to local clients: from
/// the outsider's address nginx refuses them (403) and serves `/`; from the
/// nginx host's loopback they answer.
fn management_local(bed: &mut Bed) {
    let nginx = SocketAddr::from(([10, 0, 0, 1], 80));
    let from_outside = |target: &str| {
        in_netns(&bed.outsider, || {
            common::http_once(nginx, "GET", target, b"")
        })
    };
    for target in [
        "/status",
        "/status?full",
        "/metrics",
        "/healthz",
        "//status",
    ] {
        let (status, _, body) = from_outside(target);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(
            status, 403,
            "management_local: {target} from outside: {body}"
        );
    }
    let (status, _, body) = from_outside("/");
    assert_eq!(status, 200, "management_local: / from outside");
    let index = String::from_utf8_lossy(&body).into_owned();
    let local = SocketAddr::from(([127, 0, 0, 1], 80));
    let (status, _, body) = in_netns(&bed.front, || {
        common::http_once(local, "GET", "/status", b"")
    });
    let json: serde_json::Value = serde_json::from_slice(&body).expect("/status JSON");
    assert_eq!(status, 200, "management_local: local /status: {json}");
    assert!(json["pid"].is_number(), "management_local: {json}");
    eprintln!(
        "check management_local: /status, /metrics, /healthz from {OUTSIDER_IP}: 403; \
         / from there: 200 ({} bytes); /status from the nginx host: 200 (PID {})",
        index.len(),
        json["pid"]
    );
}

/// A named check.
type Check = (&'static str, fn(&mut Bed));

#[test]
fn several_hosts_behind_one_nginx() {
    if !common::can_build_lans("multihost") {
        return;
    }
    require_tool("ip");
    // Reloads' successors (double-forked) become our children to reap.
    become_subreaper();
    let t0 = Instant::now();
    let dir = common::target_tmpdir();
    let mut bed = Bed::new(dir.path());
    eprintln!("multihost: 3 hosts and nginx up in {:?}", t0.elapsed());
    let checks: [Check; 6] = [
        ("spread", spread),
        ("rolling_upgrade", rolling_upgrade),
        ("rolling_reload", rolling_reload),
        ("sigkill", sigkill),
        ("allow_list", allow_list),
        ("management_local", management_local),
    ];
    for (name, check) in checks {
        eprintln!("== check {name}");
        check(&mut bed);
    }
    let errors = bed.nginx.error_log();
    let count = |s: &str| errors.matches(s).count();
    eprintln!(
        "multihost: all checks passed in {:?}; nginx error.log: {} 'prematurely closed', {} 'failed (104', {} 'temporarily disabled'",
        t0.elapsed(),
        count("prematurely closed"),
        count("failed (104"),
        count("temporarily disabled"),
    );
}
