//! Reload (`myflask reload`, SIGHUP) against the real binary under the
//! real `systemd-socket-activate`, with a stand-in for systemd's notify
//! socket that, like systemd with `NotifyAccess=main`, knows each sender's
//! pid (SCM_CREDENTIALS) and follows `MAINPID=`: a new process takes over
//! the same sockets and becomes the main process, the old one drains its
//! slow requests and exits 0, requests under load during reloads all
//! succeed without waiting for the slow ones, and a successor that cannot
//! start leaves the old process serving with the failure visible.

mod common;

use common::{BIN, Proc, become_subreaper, clean_cmd, free_tcp_port, require_tool, target_tmpdir};
use myflask::addr::ListenAddr;
use myflask::fastcgi::client;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const START: Duration = Duration::from_secs(20);

/// One datagram: when, from which pid, what.
#[derive(Debug, Clone)]
struct Msg {
    at: Instant,
    pid: i32,
    text: String,
}

impl Msg {
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
    fn value(&self, key: &str) -> Option<String> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key).map(str::to_string))
    }
}

/// The service manager's end of `NOTIFY_SOCKET`, recording senders' pids.
struct Manager {
    path: PathBuf,
    /// The first process (a `Proc` owns and stops it).
    first: std::sync::atomic::AtomicI32,
    msgs: Arc<Mutex<Vec<Msg>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// recvmsg with SCM_CREDENTIALS: the sender's pid, as systemd sees it.
fn recv_with_pid(sock: &UnixDatagram) -> Option<(i32, String)> {
    let mut buf = [0u8; 4096];
    let mut cmsg = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr points at live buffers of the sizes given; the cmsg
    // walk uses the libc macros on what the kernel wrote.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return None;
        }
        let mut pid = 0;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                pid = cred.pid;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Some((
            pid,
            String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
        ))
    }
}

impl Manager {
    fn start(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with an int.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&one as *const libc::c_int).cast(),
                4,
            )
        };
        assert_eq!(r, 0, "SO_PASSCRED");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (msgs, stop) = (msgs.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((pid, text)) = recv_with_pid(&sock) {
                        let at = Instant::now();
                        msgs.lock().unwrap().push(Msg { at, pid, text });
                    }
                }
            })
        };
        Manager {
            path,
            first: std::sync::atomic::AtomicI32::new(0),
            msgs,
            stop,
            thread: Some(thread),
        }
    }

    fn msgs(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// Waits for a message from `pid` with `line`; returns it.
    fn wait_for(&self, pid: i32, line: &str, limit: Duration) -> Msg {
        let deadline = Instant::now() + limit;
        loop {
            let hit = self.msgs().into_iter().find(|m| {
                m.pid == pid && (m.has(line) || (line.ends_with('=') && m.value(line).is_some()))
            });
            if let Some(m) = hit {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} from PID {pid} within {limit:?}; got {:#?}",
                self.msgs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// What systemd with `NotifyAccess=main` would refuse: messages from
    /// any pid but the main one, which starts as `first` and follows
    /// `MAINPID=` (from the main process only).
    fn refused(&self, first: i32) -> Vec<Msg> {
        let mut main = first;
        let mut out = vec![];
        for m in self.msgs() {
            if m.pid != main {
                out.push(m);
            } else if let Some(p) = m.value("MAINPID=") {
                main = p.parse().expect("MAINPID= is a pid");
            }
        }
        out
    }
}

impl Drop for Manager {
    /// Also stops every successor a failed test left running: each one
    /// that notified us and is still our (adopted) running child.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let first = self.first.load(Ordering::Relaxed);
        let mut pids: Vec<i32> = self.msgs().iter().map(|m| m.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids.into_iter().filter(|p| *p > 0 && *p != first) {
            let mut st = 0;
            // SAFETY: waitpid/kill only on a running child of ours (0 from
            // WNOHANG), never on a pid that may have been reused.
            unsafe {
                if libc::waitpid(pid, &mut st, libc::WNOHANG) == 0 {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut st, 0);
                }
            }
        }
    }
}

/// Waits (bounded) for an adopted process to exit; its exit code.
fn reap(pid: i32, limit: Duration) -> i32 {
    let st = reap_status(pid, limit);
    assert!(libc::WIFEXITED(st), "PID {pid} died of a signal: {st:#x}");
    libc::WEXITSTATUS(st)
}

/// Waits (bounded) for an adopted process to exit; its wait status.
fn reap_status(pid: i32, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        let mut st = 0;
        // SAFETY: waitpid on a pid that is (or becomes) our child.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return st;
        }
        if Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("PID {pid} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A server under `systemd-socket-activate`: FastCGI on a unix socket
/// (fd name `fastcgi`) and HTTP on TCP (fd name `http`).
struct Bed {
    dir: tempfile::TempDir,
    manager: Manager,
    proc: Proc,
    fcgi: PathBuf,
    http: String,
}

impl Bed {
    /// `program` is what the activator execs (a path we may replace).
    fn start(program: &Path, extra: &[&str]) -> Bed {
        become_subreaper();
        let dir = target_tmpdir();
        let manager = Manager::start(dir.path());
        let fcgi = dir.path().join("fcgi.sock");
        let http = format!("127.0.0.1:{}", free_tcp_port());
        let mut cmd = clean_cmd(require_tool("systemd-socket-activate"));
        cmd.arg("-l")
            .arg(&fcgi)
            .arg("--fdname=fastcgi")
            .arg("-l")
            .arg(&http)
            .arg("--fdname=http")
            .arg(format!("--setenv=NOTIFY_SOCKET={}", manager.path.display()))
            .arg("--setenv=WATCHDOG_USEC=1000000")
            .arg("--setenv=RUST_LOG=info")
            .arg(program)
            .arg("serve")
            .args(extra);
        let proc = Proc::spawn(&mut cmd, &dir.path().join("log"));
        manager.first.store(proc.pid(), Ordering::Relaxed);
        let bed = Bed {
            dir,
            manager,
            proc,
            fcgi,
            http,
        };
        bed.wait_listening();
        // The activator starts the server on the first connection.
        let (st, body) = bed.get_fcgi("/healthz");
        let why = String::from_utf8_lossy(&body);
        assert_eq!(st, 200, "first request: {why}\n{}", bed.log());
        bed.manager.wait_for(bed.proc.pid(), "READY=1", START);
        bed
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + START;
        while std::net::TcpStream::connect(&self.http).is_err() || !self.fcgi.exists() {
            assert!(Instant::now() < deadline, "sockets never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn get_fcgi(&self, uri: &str) -> (u16, Vec<u8>) {
        let req = client::Request {
            method: "GET".into(),
            uri: uri.into(),
            ..Default::default()
        };
        let addr = ListenAddr::Unix(self.fcgi.clone());
        match common::fcgi_request(&addr, &req, Duration::from_secs(10)) {
            Ok(r) => (r.status, r.body),
            Err(e) => (0, e.to_string().into_bytes()),
        }
    }

    /// `myflask reload --pid <pid>`: exit code and output.
    fn reload(&self, pid: i32) -> (i32, String) {
        let out = clean_cmd(BIN)
            .args(["reload", "--pid", &pid.to_string(), "--timeout", "30"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run myflask reload");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    fn log(&self) -> String {
        self.proc.log()
    }
}

/// The new main pid named in the reload command's output.
fn new_pid(out: &str) -> i32 {
    out.split("PID ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"))
}

/// The socket inode behind fd `fd` of `pid` (`socket:[N]`).
fn fd_target(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// FNV-1a 64 of `len` bytes of the pattern the slow clients send.
fn fnv_of_pattern(len: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..len {
        h = (h ^ (i % 251) as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A POST /upload over HTTP whose body trickles in `chunks` pieces of 1000
/// bytes `gap` apart; the whole answer.
fn slow_http_upload(addr: &str, chunks: usize, gap: Duration) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let len = chunks * 1000;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    for c in body.chunks(1000) {
        std::thread::sleep(gap);
        s.write_all(c).unwrap();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn reload_hands_sockets_and_main_pid_to_a_new_process() {
    let b = Bed::start(Path::new(BIN), &["--status-interval", "0.2"]);
    let old = b.proc.pid();
    // A slow request in flight on the old process: about 3 s of body.
    let http = b.http.clone();
    let slow = std::thread::spawn(move || slow_http_upload(&http, 30, Duration::from_millis(100)));
    std::thread::sleep(Duration::from_millis(500));

    let before: Vec<String> = [3, 4].iter().map(|fd| fd_target(old, *fd)).collect();
    let t0 = Instant::now();
    let (code, out) = b.reload(old);
    let took = t0.elapsed();
    assert_eq!(code, 0, "reload failed: {out}\n{}", b.log());
    let new = new_pid(&out);
    assert_ne!(new, old);
    // It returned when the new process served, not after the drain.
    assert!(took < Duration::from_secs(2), "reload took {took:?}");
    assert!(
        !slow.is_finished(),
        "the slow request ended before the reload did"
    );

    // The same sockets: fds 3 and 4 of both are the same socket objects.
    for (fd, a) in [3, 4].into_iter().zip(before) {
        let n = fd_target(new, fd);
        assert!(
            a.starts_with("socket:") && a == n,
            "fd {fd}: old {a} new {n}"
        );
    }
    let m = &b.manager;
    let reloading = m.wait_for(old, "RELOADING=1", START);
    assert!(
        reloading.value("MONOTONIC_USEC=").is_some(),
        "{reloading:?}"
    );
    let handover = m.wait_for(old, "MAINPID=", START);
    assert!(
        handover.at >= reloading.at && handover.has("READY=1"),
        "{handover:?}"
    );
    assert_eq!(
        handover.value("MAINPID="),
        Some(new.to_string()),
        "{handover:?}"
    );
    // The new main process pings the watchdog (WATCHDOG_PID is its own).
    let ping = m.wait_for(new, "WATCHDOG=1", START);
    assert!(ping.at > handover.at);

    // Both transports now reach the new process (its /status says so).
    let (st, body) = b.get_fcgi("/status");
    assert_eq!(st, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["pid"], new, "{j}");

    // The old process, draining, refuses a reload at once.
    let t1 = Instant::now();
    let (code, out) = b.reload(old);
    assert_eq!(code, 1, "{out}");
    assert!(t1.elapsed() < Duration::from_secs(2), "{:?}", t1.elapsed());
    assert!(b.log().contains("reload request ignored"), "{}", b.log());
    assert!(
        !slow.is_finished(),
        "the slow request ended before the check"
    );

    // The slow request completes on the old process, correct to the byte.
    let answer = slow.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&fnv_of_pattern(30_000)), "{answer}");
    let mut p = b.proc;
    let st = p.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "old process: {}", p.log());
    let log = p.log();
    assert!(
        log.contains(&format!("reloaded (PID {new} took over)")),
        "{log}"
    );

    // Nothing was sent that systemd (NotifyAccess=main) would refuse.
    let refused = m.refused(old);
    assert!(
        refused.is_empty(),
        "refused by NotifyAccess=main: {refused:#?}"
    );
    assert!(
        m.msgs()
            .iter()
            .all(|x| !x.has("STOPPING=1") || x.pid == new)
    );

    // SIGTERM to the new main process: it drains and exits 0.
    unsafe { libc::kill(new, libc::SIGTERM) };
    assert_eq!(reap(new, Duration::from_secs(20)), 0, "{}", p.log());
    drop(b.dir);
}

/// Replaces `path` (atomically, as dpkg does) with a shell script.
fn install_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The pid in the old process's "reload failed: new process PID <n>" line.
fn failed_successor(log: &str) -> i32 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("reload failed: new process PID"))
        .unwrap_or_else(|| panic!("no failed reload in the log:\n{log}"));
    new_pid(line.split("new process ").nth(1).unwrap_or(""))
}

/// Checks one failed reload: exit 1, the old process still main and
/// serving, the reason in its log and in `STATUS=`.
fn assert_failed_reload(b: &Bed, old: i32, reason: &str) {
    let before = b.manager.msgs().len();
    let (code, out) = b.reload(old);
    assert_eq!(code, 1, "{out}\n{}", b.log());
    let expected = format!("failed; PID {old} did not hand over");
    assert!(out.contains(&expected), "{out}");
    assert!(b.log().contains(reason), "no {reason:?} in:\n{}", b.log());
    // The datagram leaves before the answer, but our reader may lag.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ready = loop {
        let after = b.manager.msgs().split_off(before);
        if let Some(m) = after.into_iter().find(|m| m.has("READY=1")) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no READY=1 after the failed reload"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(ready.pid, old);
    assert!(ready.value("MAINPID=").is_none(), "{ready:?}");
    let status = ready.value("STATUS=").unwrap_or_default();
    assert!(
        status.contains("reload failed") && status.contains(reason),
        "{status}"
    );
    let (st, body) = b.get_fcgi("/status");
    assert_eq!(st, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["pid"], old, "{j}");
}

#[test]
fn a_successor_that_cannot_start_leaves_the_old_one_serving() {
    let progdir = target_tmpdir();
    let prog = progdir.path().join("myflask");
    std::os::unix::fs::symlink(BIN, &prog).unwrap();
    let b = Bed::start(&prog, &["--reload-timeout", "2"]);
    let old = b.proc.pid();

    // A new version that refuses its settings (exits 2 at start).
    install_script(
        &prog,
        &format!("MYFLASK_MAX_CONNECTIONS=many exec {BIN} \"$@\""),
    );
    assert_failed_reload(&b, old, "exited before it was ready");
    let gone = failed_successor(&b.log());
    assert_eq!(reap(gone, Duration::from_secs(10)), 2);

    // One that never becomes ready: stopped after --reload-timeout.
    install_script(&prog, "exec sleep 60");
    let starts = |log: &str| log.matches("reload requested: starting").count();
    let before = starts(&b.log());
    let t0 = Instant::now();
    // A second request during the attempt joins it: same outcome, no
    // second successor.
    let joined = std::thread::scope(|s| {
        let other = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            b.reload(old)
        });
        assert_failed_reload(&b, old, "was not ready within 2s");
        other.join().unwrap()
    });
    assert_eq!(joined.0, 1, "{}", joined.1);
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(starts(&b.log()) - before, 1, "{}", b.log());
    let log = b.log();
    let hung = new_pid(log.split("stopping PID ").nth(1).unwrap_or(""));
    let st = reap_status(hung, Duration::from_secs(10));
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGTERM,
        "{st:#x}"
    );

    // No program at the path at all.
    std::fs::remove_file(&prog).unwrap();
    assert_failed_reload(&b, old, "exec failed");

    // Put back, the next reload works: the old process was unharmed.
    std::os::unix::fs::symlink(BIN, &prog).unwrap();
    let (code, out) = b.reload(old);
    assert_eq!(code, 0, "{out}\n{}", b.log());
    let new = new_pid(&out);
    let mut p = b.proc;
    assert_eq!(p.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let refused = b.manager.refused(old);
    assert!(
        refused.is_empty(),
        "refused by NotifyAccess=main: {refused:#?}"
    );
    unsafe { libc::kill(new, libc::SIGTERM) };
    assert_eq!(reap(new, Duration::from_secs(20)), 0, "{}", p.log());
}

/// nginx in front of both sockets, each through an upstream with
/// keepalive (where a connection closed under nginx costs a POST): `port`
/// does `proxy_pass` to the HTTP socket, `fport` `fastcgi_pass` to the
/// FastCGI one.
struct ProxyNginx {
    proc: Proc,
    port: u16,
    fport: u16,
    dir: PathBuf,
}

impl ProxyNginx {
    fn start(dir: &Path, b: &Bed) -> ProxyNginx {
        let (port, fport) = (free_tcp_port(), free_tcp_port());
        let (http, fcgi) = (&b.http, b.fcgi.display());
        for sub in ["logs", "client_body", "proxy", "fastcgi", "scgi", "uwsgi"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        // Workers must reach the test's root-owned socket directory.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let conf = format!(
            "{user} daemon off; worker_processes 1; pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body; proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi; scgi_temp_path {d}/scgi; uwsgi_temp_path {d}/uwsgi;
    upstream app {{ server {http}; keepalive 32; }}
    upstream fapp {{ server unix:{fcgi}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
    server {{
        listen 127.0.0.1:{fport};
        location / {{
            include /etc/nginx/fastcgi_params;
            fastcgi_keep_conn on;
            fastcgi_pass fapp;
        }}
    }}
}}
"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = clean_cmd(require_tool("nginx"));
        cmd.arg("-p").arg(dir).arg("-c").arg(&conf_path);
        cmd.arg("-e").arg(dir.join("logs/error.log"));
        let mut proc = Proc::spawn(&mut cmd, &dir.join("nginx.stderr"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", fport)).is_err() {
            assert!(
                proc.running() && Instant::now() < deadline,
                "nginx did not start: {}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ProxyNginx {
            proc,
            port,
            fport,
            dir: dir.to_path_buf(),
        }
    }

    /// error.log lines about failed upstream connections.
    fn upstream_errors(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("logs/error.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("[error]") || l.contains("upstream"))
            .filter(|l| !l.contains("[info]"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for ProxyNginx {
    fn drop(&mut self) {
        self.proc.signal(libc::SIGTERM);
        let _ = self.proc.wait_exit(Duration::from_secs(10));
    }
}

/// One POST /upload of `len` pattern bytes through nginx, on a fresh
/// client connection; `Ok` only for a 200 carrying the right hash.
fn post_through(port: u16, len: usize) -> Result<(), String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(&body).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out.get(9..12).unwrap_or("");
    if status == "200" && out.contains(&fnv_of_pattern(len)) {
        Ok(())
    } else {
        Err(out.lines().next().unwrap_or("no answer").to_string())
    }
}

/// POST load from `clients` threads until `stop`; (sent, failures).
fn post_load(
    port: u16,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u64, Vec<String>)>> {
    (0..clients)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut sent, mut failed) = (0u64, vec![]);
                while !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    if let Err(e) = post_through(port, 512 + 97 * (c + sent as usize % 13)) {
                        failed.push(e);
                    }
                }
                (sent, failed)
            })
        })
        .collect()
}

#[test]
fn posts_through_nginx_keepalive_lose_nothing_across_reloads() {
    let b = Bed::start(Path::new(BIN), &[]);
    let nginx = ProxyNginx::start(&b.dir.path().join("nginx"), &b);
    let stop = Arc::new(AtomicBool::new(false));
    let http = post_load(nginx.port, 4, stop.clone());
    let fcgi = post_load(nginx.fport, 4, stop.clone());
    let mut main = b.proc.pid();
    let mut olds = vec![];
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(700));
        let (code, out) = b.reload(main);
        assert_eq!(code, 0, "{out}\n{}", b.log());
        olds.push(main);
        main = new_pid(&out);
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let mut sent = [0, 0];
    let mut failed = vec![];
    for (i, load) in [http, fcgi].into_iter().enumerate() {
        for t in load {
            let (s, f) = t.join().unwrap();
            sent[i] += s;
            failed.extend(f);
        }
    }
    eprintln!(
        "POSTs through nginx across 6 reloads: {} proxy_pass, {} fastcgi_pass, {} failed",
        sent[0],
        sent[1],
        failed.len()
    );
    assert!(sent.iter().all(|n| *n > 300), "too little load: {sent:?}");
    assert!(
        failed.is_empty(),
        "{} of {sent:?} failed: {:?}\nnginx: {:#?}",
        failed.len(),
        &failed[..failed.len().min(5)],
        nginx.upstream_errors()
    );
    assert!(
        nginx.upstream_errors().is_empty(),
        "{:#?}",
        nginx.upstream_errors()
    );
    // Every older generation drained and exited 0.
    let mut p = b.proc;
    assert_eq!(p.wait_exit(Duration::from_secs(20)).code(), Some(0));
    for pid in &olds[1..] {
        assert_eq!(reap(*pid, Duration::from_secs(20)), 0, "{}", p.log());
    }
    unsafe { libc::kill(main, libc::SIGTERM) };
    assert_eq!(reap(main, Duration::from_secs(20)), 0);
}

/// A FastCGI POST /upload whose STDIN trickles in `chunks` records of 1000
/// bytes `gap` apart, without KEEP_CONN; everything the server sent.
fn slow_fcgi_upload(path: &Path, chunks: usize, gap: Duration) -> Vec<u8> {
    use common::raw;
    use myflask::fastcgi::record;
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect fcgi");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let len = chunks * 1000;
    let mut head = raw::begin(1, false);
    head.extend_from_slice(&raw::stream(
        record::PARAMS,
        1,
        &raw::std_params("POST", "/upload", Some(len), &[]),
    ));
    s.write_all(&head).unwrap();
    let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    for c in body.chunks(1000) {
        std::thread::sleep(gap);
        s.write_all(&raw::record_padded(record::STDIN, 1, c, 0))
            .unwrap();
    }
    s.write_all(&raw::record_padded(record::STDIN, 1, &[], 0))
        .unwrap();
    let mut out = vec![];
    let _ = s.read_to_end(&mut out);
    out
}

/// Result of a load thread: requests, failures, the longest one.
type LoadResult = (u64, Vec<String>, Duration);

/// FastCGI GETs, each on a new connection, until `stop`.
fn fcgi_load(b: &Bed, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<LoadResult> {
    let addr = ListenAddr::Unix(b.fcgi.clone());
    std::thread::spawn(move || {
        let req = client::Request {
            method: "GET".into(),
            uri: "/healthz".into(),
            ..Default::default()
        };
        let (mut n, mut failed, mut worst) = (0, vec![], Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            n += 1;
            match common::fcgi_request(&addr, &req, Duration::from_secs(20)) {
                Ok(r) if r.status == 200 && r.body == b"ok\n" => {}
                Ok(r) => failed.push(format!("status {}", r.status)),
                Err(e) => failed.push(e.to_string()),
            }
            worst = worst.max(t.elapsed());
        }
        (n, failed, worst)
    })
}

/// One keep-alive HTTP GET on `s`; `Ok(true)` if the server said close.
fn http_get_keepalive(s: &mut std::net::TcpStream) -> Result<bool, String> {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The whole answer is small: the head plus "ok\n".
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {} bytes", got.len()));
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    if !text.starts_with("http/1.1 200") {
        return Err(text.lines().next().unwrap_or("").to_string());
    }
    Ok(text.contains("connection: close"))
}

/// HTTP GETs on a kept-alive connection (a new one only after the server
/// says `Connection: close`), until `stop`.
fn http_load(b: &Bed, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<LoadResult> {
    let addr = b.http.clone();
    std::thread::spawn(move || {
        let (mut n, mut failed, mut worst) = (0, vec![], Duration::ZERO);
        let mut conn = None;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            n += 1;
            let s = conn.get_or_insert_with(|| std::net::TcpStream::connect(&addr).unwrap());
            match http_get_keepalive(s) {
                Ok(false) => {}
                Ok(true) => conn = None,
                Err(e) => {
                    failed.push(e);
                    conn = None;
                }
            }
            worst = worst.max(t.elapsed());
        }
        (n, failed, worst)
    })
}

#[test]
fn reloads_under_load_with_a_slow_request_fail_nothing_and_stall_nothing() {
    let b = Bed::start(Path::new(BIN), &[]);
    let gen1 = b.proc.pid();
    // About 4 s of request body on the first generation.
    let fcgi = b.fcgi.clone();
    let slow = std::thread::spawn(move || slow_fcgi_upload(&fcgi, 40, Duration::from_millis(100)));
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| fcgi_load(&b, stop.clone()))
        .chain([http_load(&b, stop.clone())])
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (code, out) = b.reload(gen1);
    assert_eq!(code, 0, "{out}");
    let gen2 = new_pid(&out);
    // A second reload while the first generation still drains.
    std::thread::sleep(Duration::from_millis(500));
    let (code, out) = b.reload(gen2);
    assert_eq!(code, 0, "{out}");
    let gen3 = new_pid(&out);
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    assert!(
        !slow.is_finished(),
        "the slow request ended too early to prove anything"
    );
    let (mut n, mut failed, mut worst) = (0, vec![], Duration::ZERO);
    for t in load {
        let (a, f, w) = t.join().unwrap();
        n += a;
        failed.extend(f);
        worst = worst.max(w);
    }
    eprintln!(
        "{n} requests during 2 reloads, {} failed, longest {worst:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}\n{}", b.log());
    assert!(n > 100, "too little load: {n}");
    // The slow request still had about 2 s to go: nobody waited for it.
    assert!(
        worst < Duration::from_millis(1000),
        "a request waited {worst:?}"
    );

    let out = slow.join().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("40000") && text.contains(&fnv_of_pattern(40_000)),
        "{text}"
    );
    let (st, body) = b.get_fcgi("/status");
    assert_eq!(st, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["pid"], gen3, "{j}");
    let mut p = b.proc;
    assert_eq!(p.wait_exit(Duration::from_secs(20)).code(), Some(0));
    assert_eq!(reap(gen2, Duration::from_secs(20)), 0);
    let refused = b.manager.refused(gen1);
    assert!(
        refused.is_empty(),
        "refused by NotifyAccess=main: {refused:#?}"
    );
    unsafe { libc::kill(gen3, libc::SIGTERM) };
    assert_eq!(reap(gen3, Duration::from_secs(20)), 0, "{}", p.log());
}

#[test]
fn the_main_process_outlives_a_draining_predecessor_when_stopped() {
    // systemd (KillMode=mixed) kills the rest of the service once the main
    // process exits: a stop must not cut the previous generation's drain.
    let b = Bed::start(Path::new(BIN), &[]);
    let gen1 = b.proc.pid();
    let fcgi = b.fcgi.clone();
    let slow = std::thread::spawn(move || slow_fcgi_upload(&fcgi, 20, Duration::from_millis(100)));
    std::thread::sleep(Duration::from_millis(300));
    let (code, out) = b.reload(gen1);
    assert_eq!(code, 0, "{out}");
    let gen2 = new_pid(&out);
    unsafe { libc::kill(gen2, libc::SIGTERM) };
    let mut p = b.proc;
    // Watch both: gen2 must not be gone while gen1 still runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "gen1 did not exit");
        let mut st = 0;
        // SAFETY: waitpid on an adopted child, without blocking.
        let gen2_gone = unsafe { libc::waitpid(gen2, &mut st, libc::WNOHANG) } == gen2;
        // gen1's fds close (gen2 sees end of file) a moment before gen1
        // becomes waitable; a loaded machine can stretch that moment.
        let grace = Instant::now() + Duration::from_millis(300);
        while gen2_gone && p.running() && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !(gen2_gone && p.running()),
            "the main process exited while its predecessor still drained"
        );
        if gen2_gone {
            assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "{st:#x}");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(p.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let text = String::from_utf8_lossy(&slow.join().unwrap()).into_owned();
    assert!(text.contains(&fnv_of_pattern(20_000)), "{text}");
}
