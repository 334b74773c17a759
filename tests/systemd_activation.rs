//! Socket activation and socket handling of `myflask serve`, against the
//! real binary: the real `systemd-socket-activate` tool, hand-made
//! `LISTEN_FDS` environments, and sockets myflask binds itself.

mod common;

use common::{
    BIN, Proc, clean_cmd, fcgi_get, free_tcp_port, http_over_unix, require_tool, target_tmpdir,
    under_tmp,
};
use myflask::addr::ListenAddr;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const START: Duration = Duration::from_secs(20);
const STOP: Duration = Duration::from_secs(20);

fn wait_for_path(p: &Path) {
    let deadline = Instant::now() + START;
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn unix(p: &Path) -> ListenAddr {
    ListenAddr::Unix(p.to_path_buf())
}

/// Puts `fd` on fd 3 of the child, without FD_CLOEXEC.
fn pass_as_fd3(cmd: &mut Command, fd: RawFd) {
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `myflask serve <args>` run through `sh` so that `LISTEN_PID` is the pid
/// of the process that ends up serving (the shell execs myflask).
fn serve_with_own_listen_pid(args: &[&str]) -> Command {
    let mut cmd = clean_cmd("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" serve \"$@\"")
        .arg(BIN)
        .args(args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "fastcgi");
    cmd
}

#[test]
fn activation_fastcgi_socket() {
    let sa = require_tool("systemd-socket-activate");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let mut cmd = clean_cmd(&sa);
    cmd.arg("-l")
        .arg(&sock)
        .arg("--fdname=fastcgi")
        .arg(BIN)
        .arg("serve");
    let mut p = Proc::spawn(&mut cmd, &dir.path().join("log"));
    wait_for_path(&sock);
    p.wait_log("Listening on", START);
    // Nothing runs until the first connection.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !p.log().contains("ready"),
        "myflask started before any connection:\n{}",
        p.log()
    );

    let r = fcgi_get(&unix(&sock), "/");
    assert_eq!(r.status, 200);
    let page = String::from_utf8_lossy(&r.body);
    assert!(page.contains("<strong>FastCGI</strong>"), "{page}");
    assert!(page.contains("inherited from systemd"), "{page}");
    assert!(page.contains(&format!("unix:{}", sock.display())), "{page}");
    let log = p.log();
    assert!(
        log.contains(&format!(
            "listening: FastCGI on unix:{} (inherited from systemd, fd name \"fastcgi\")",
            sock.display()
        )),
        "{log}"
    );
    // systemd-socket-activate execs: the pid we hold is myflask's.
    let exe = std::fs::read_link(format!("/proc/{}/exe", p.pid())).unwrap();
    assert_eq!(exe, std::fs::canonicalize(BIN).unwrap());
    // The inherited socket under /tmp gets no PrivateTmp lecture (the
    // .socket unit chose its place).
    assert!(!log.contains("PrivateTmp"), "{log}");

    let r = fcgi_get(&unix(&sock), "/healthz");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    // A body of known size carries its length (nginx then needs no chunking).
    assert_eq!(r.header("content-length"), Some("3"), "{:?}", r.headers);

    p.signal(libc::SIGTERM);
    let st = p.wait_exit(STOP);
    assert_eq!(st.code(), Some(0), "{}", p.log());
    assert!(
        sock.exists(),
        "myflask unlinked a socket it inherited:\n{}",
        p.log()
    );
}

#[test]
fn activation_fastcgi_http_and_tcp_sockets() {
    let sa = require_tool("systemd-socket-activate");
    let dir = tempfile::tempdir().unwrap();
    let fcgi = dir.path().join("fcgi.sock");
    let http = dir.path().join("http.sock");
    let port = free_tcp_port();
    let tcp = format!("127.0.0.1:{port}");
    let mut cmd = clean_cmd(&sa);
    cmd.arg("-l")
        .arg(&fcgi)
        .arg("-l")
        .arg(&http)
        .arg("-l")
        .arg(&tcp)
        .arg("--fdname=fastcgi:http:tcp-fcgi")
        .arg(BIN)
        .arg("serve");
    let mut p = Proc::spawn(&mut cmd, &dir.path().join("log"));
    wait_for_path(&http);
    p.wait_log(&format!("Listening on 127.0.0.1:{port}"), START);

    // The first connection, on the HTTP socket, activates the service.
    let resp = http_over_unix(
        &http,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("<strong>HTTP</strong>"), "{resp}");
    assert!(resp.contains("inherited from systemd"), "{resp}");
    let resp = http_over_unix(
        &http,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nok\n"), "{resp}");
    assert!(resp.contains("content-length: 3\r\n"), "{resp}");

    let r = fcgi_get(&unix(&fcgi), "/");
    assert_eq!(r.status, 200);
    let page = String::from_utf8_lossy(&r.body);
    assert!(
        page.contains("<strong>FastCGI</strong>") && page.contains("inherited from systemd"),
        "{page}"
    );

    // A TCP socket with any other name speaks FastCGI too.
    let r = fcgi_get(&tcp.parse().unwrap(), "/");
    assert_eq!(r.status, 200);
    let page = String::from_utf8_lossy(&r.body);
    assert!(
        page.contains("<strong>FastCGI</strong>") && page.contains(&tcp),
        "{page}"
    );

    let log = p.log();
    for want in [
        "HTTP on unix:".to_string(),
        "(inherited from systemd, fd name \"http\")".to_string(),
        format!("FastCGI on {tcp} (inherited from systemd, fd name \"tcp-fcgi\")"),
    ] {
        assert!(log.contains(&want), "no {want:?} in:\n{log}");
    }

    // An idle HTTP keep-alive connection is closed at SIGTERM, promptly.
    let mut idle = std::os::unix::net::UnixStream::connect(&http).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = idle.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let t0 = Instant::now();
    p.signal(libc::SIGTERM);
    assert_eq!(
        idle.read(&mut buf).unwrap(),
        0,
        "idle HTTP connection not closed"
    );
    assert_eq!(p.wait_exit(STOP).code(), Some(0), "{}", p.log());
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert!(
        fcgi.exists() && http.exists(),
        "an inherited socket was unlinked"
    );
}

#[test]
fn activation_with_idle_exit() {
    let sa = require_tool("systemd-socket-activate");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let mut cmd = clean_cmd(&sa);
    cmd.arg("-l")
        .arg(&sock)
        .arg("--fdname=fastcgi")
        .arg(BIN)
        .arg("serve")
        .arg("--idle-exit")
        .arg("0.5");
    let mut p = Proc::spawn(&mut cmd, &dir.path().join("log"));
    wait_for_path(&sock);
    p.wait_log("Listening on", START);
    assert_eq!(fcgi_get(&unix(&sock), "/healthz").status, 200);
    let t0 = Instant::now();
    let st = p.wait_exit(Duration::from_secs(10));
    let took = t0.elapsed();
    assert_eq!(st.code(), Some(0), "{}", p.log());
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after the last connection with --idle-exit 0.5"
    );
    assert!(p.log().contains("idle exit (no connection)"), "{}", p.log());
    assert!(sock.exists(), "the inherited socket was unlinked");
}

#[test]
fn listen_pid_mismatch_ignores_the_fds() {
    let dir = target_tmpdir();
    let foreign = dir.path().join("foreign.sock");
    let own = dir.path().join("own.sock");
    let foreign_listener = std::os::unix::net::UnixListener::bind(&foreign).unwrap();
    let mut cmd = clean_cmd(BIN);
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("unix:{}", own.display()))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDNAMES", "fastcgi");
    pass_as_fd3(&mut cmd, foreign_listener.as_raw_fd());
    let mut p = Proc::spawn(&mut cmd, &dir.path().join("log"));
    p.wait_log(" ready", START);
    let log = p.log();
    assert!(
        log.contains("ignoring LISTEN_FDS=1: LISTEN_PID=1 is another process"),
        "{log}"
    );
    assert!(!log.contains("inherited from systemd"), "{log}");

    let r = fcgi_get(&unix(&own), "/");
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("a socket myflask bound itself"));

    // Nobody accepts on the foreign socket: the connection stays in its
    // backlog, where the test itself finds it.
    let req = myflask::fastcgi::client::Request {
        method: "GET".into(),
        uri: "/healthz".into(),
        ..Default::default()
    };
    let err = common::fcgi_request(&unix(&foreign), &req, Duration::from_millis(700))
        .expect_err("myflask served a socket meant for another pid");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    foreign_listener.set_nonblocking(true).unwrap();
    foreign_listener.accept().expect(
        "the connection is still in the foreign listener's backlog (myflask did not take it)",
    );

    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(STOP).code(), Some(0), "{}", p.log());
    assert!(!own.exists(), "own socket not removed on exit");
    assert!(foreign.exists());
}

fn expect_start_failure(cmd: &mut Command, log: &Path) -> String {
    let mut p = Proc::spawn(cmd, log);
    let st = p.wait_exit(START);
    let log = p.log();
    assert!(!st.success(), "myflask started anyway:\n{log}");
    assert_eq!(st.code(), Some(1), "{log}");
    log
}

#[test]
fn inherited_regular_file_is_refused_naming_fd_3() {
    let dir = target_tmpdir();
    let file = std::fs::File::create(dir.path().join("plain-file")).unwrap();
    let fallback = dir.path().join("fallback.sock");
    let mut cmd = serve_with_own_listen_pid(&["--listen", &format!("unix:{}", fallback.display())]);
    pass_as_fd3(&mut cmd, file.as_raw_fd());
    let log = expect_start_failure(&mut cmd, &dir.path().join("log"));
    assert!(
        log.contains("cannot start: inherited fd 3 (name \"fastcgi\") is not a socket"),
        "{log}"
    );
    assert!(
        !fallback.exists(),
        "bound its own socket despite the bad fd"
    );
}

#[test]
fn inherited_connected_socket_is_refused_naming_fd_3() {
    let dir = target_tmpdir();
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut cmd = serve_with_own_listen_pid(&[
        "--listen",
        &format!("unix:{}", dir.path().join("fallback.sock").display()),
    ]);
    pass_as_fd3(&mut cmd, a.as_raw_fd());
    let log = expect_start_failure(&mut cmd, &dir.path().join("log"));
    assert!(
        log.contains(
            "inherited fd 3 (name \"fastcgi\") is a connected socket, not a listening one"
        ),
        "{log}"
    );
    assert!(log.contains("Accept=no"), "{log}");
}

#[test]
fn inherited_datagram_socket_is_refused_naming_fd_3() {
    let dir = target_tmpdir();
    let d = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let mut cmd = serve_with_own_listen_pid(&[
        "--listen",
        &format!("unix:{}", dir.path().join("fallback.sock").display()),
    ]);
    pass_as_fd3(&mut cmd, d.as_raw_fd());
    let log = expect_start_failure(&mut cmd, &dir.path().join("log"));
    assert!(
        log.contains("inherited fd 3 (name \"fastcgi\") is not a stream socket"),
        "{log}"
    );
}

/// The one test that uses 127.0.0.1:9000 (no other test may).
#[test]
fn no_flags_unprivileged_listens_on_port_9000() {
    let root = unsafe { libc::geteuid() } == 0;
    match std::net::TcpListener::bind("127.0.0.1:9000") {
        Ok(l) => drop(l),
        Err(e) => panic!(
            "127.0.0.1:9000 is taken by another process ({e}); this test needs it to check \
             the default address of `myflask serve`"
        ),
    }
    let dir = target_tmpdir();
    // As root, drop to nobody (setpriv execs: the pid stays myflask's);
    // otherwise the test user is unprivileged already. The log file is
    // opened here and handed over as stderr.
    let mut cmd = if root {
        let mut c = clean_cmd(require_tool("setpriv"));
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(BIN);
        c
    } else {
        clean_cmd(BIN)
    };
    cmd.arg("serve").current_dir("/");
    let mut p = Proc::spawn(&mut cmd, &dir.path().join("log"));
    p.wait_log(" ready", START);
    let log = p.log();
    assert!(
        log.contains("listening: FastCGI on 127.0.0.1:9000 (bound by myflask)"),
        "{log}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u != "0"),
        "not running unprivileged: {uid_line}"
    );
    if root {
        assert!(
            uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
            "not running as nobody: {uid_line}"
        );
    }
    let r = fcgi_get(&"127.0.0.1:9000".parse().unwrap(), "/healthz");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(STOP).code(), Some(0), "{}", p.log());
}

fn serve_on(args: &[String], dir: &Path, log: &str) -> Proc {
    let mut cmd = clean_cmd(BIN);
    cmd.arg("serve").args(args);
    Proc::spawn(&mut cmd, &dir.join(log))
}

#[test]
fn stale_socket_replaced_live_socket_refused() {
    let dir = target_tmpdir();
    let path = dir.path().join("fcgi.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "stale socket file for the test");
    let listen = vec!["--listen".to_string(), format!("unix:{}", path.display())];

    let mut a = serve_on(&listen, dir.path(), "a.log");
    a.wait_log(" ready", START);
    assert!(
        a.log()
            .contains(&format!("replacing stale socket file {}", path.display())),
        "{}",
        a.log()
    );
    assert_eq!(
        a.log().contains("PrivateTmp"),
        under_tmp(&path),
        "{}",
        a.log()
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "default --socket-mode");

    // A second server on the same path fails and leaves the live one be.
    let mut b = serve_on(&listen, dir.path(), "b.log");
    let st = b.wait_exit(START);
    assert_eq!(st.code(), Some(1), "{}", b.log());
    assert!(
        b.log().contains(&format!(
            "{} is in use: another server answers on it",
            path.display()
        )),
        "{}",
        b.log()
    );
    assert_eq!(fcgi_get(&unix(&path), "/healthz").status, 200);

    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(STOP).code(), Some(0), "{}", a.log());
    assert!(!path.exists(), "bound socket not removed on exit");

    // A regular file in the way is never replaced.
    std::fs::write(&path, b"precious").unwrap();
    let mut c = serve_on(&listen, dir.path(), "c.log");
    assert_eq!(c.wait_exit(START).code(), Some(1), "{}", c.log());
    assert!(
        c.log().contains("exists and is not a socket"),
        "{}",
        c.log()
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn socket_under_tmp_gets_the_private_tmp_warning() {
    let dir = tempfile::Builder::new()
        .prefix("myflask-test")
        .tempdir_in("/tmp")
        .unwrap();
    let path = dir.path().join("fcgi.sock");
    let mut p = serve_on(
        &["--listen".into(), format!("unix:{}", path.display())],
        dir.path(),
        "log",
    );
    p.wait_log(" ready", START);
    let log = p.log();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("PrivateTmp"))
        .unwrap_or_else(|| panic!("no PrivateTmp warning:\n{log}"));
    assert!(warning.contains(&path.display().to_string()), "{warning}");
    assert!(warning.contains("/run/myflask/fcgi.sock"), "{warning}");
    assert!(warning.contains("No such file or directory"), "{warning}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(STOP).code(), Some(0));
}

fn group_gid(name: &str) -> u32 {
    let groups = std::fs::read_to_string("/etc/group").unwrap();
    groups
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("group {name} is not in /etc/group"))
}

#[test]
fn socket_mode_and_group_are_applied_and_files_removed_on_exit() {
    // Root may give the socket any group; anyone else only one of theirs
    // other than the one it would get anyway.
    let (group, gid) = if unsafe { libc::geteuid() } == 0 {
        ("nogroup".to_string(), group_gid("nogroup"))
    } else {
        let mut groups = vec![0 as libc::gid_t; 256];
        let n = unsafe { libc::getgroups(groups.len() as i32, groups.as_mut_ptr()) };
        let egid = unsafe { libc::getegid() };
        let g = groups[..n.max(0) as usize]
            .iter()
            .copied()
            .find(|g| *g != egid)
            .expect(
                "this test needs root or a supplementary group to hand a socket to                  (tests/run.sh runs as root)",
            );
        (g.to_string(), g)
    };
    let dir = target_tmpdir();
    let fcgi = dir.path().join("fcgi.sock");
    let http = dir.path().join("http.sock");
    let mut p = serve_on(
        &[
            "--listen".into(),
            format!("unix:{}", fcgi.display()),
            "--http".into(),
            format!("unix:{}", http.display()),
            "--socket-mode".into(),
            "0600".into(),
            "--socket-group".into(),
            group,
        ],
        dir.path(),
        "log",
    );
    p.wait_log(" ready", START);
    for s in [&fcgi, &http] {
        let m = std::fs::metadata(s).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", s.display());
        assert_eq!(m.gid(), gid, "{}", s.display());
    }
    let resp = http_over_unix(
        &http,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(STOP).code(), Some(0), "{}", p.log());
    assert!(
        !fcgi.exists() && !http.exists(),
        "bound sockets left behind"
    );
}

#[test]
fn failed_start_leaves_no_socket_file() {
    let dir = target_tmpdir();
    let first = dir.path().join("first.sock");
    // The second listener cannot be bound: the first one's file must go.
    let mut p = serve_on(
        &[
            "--listen".into(),
            format!("unix:{}", first.display()),
            "--http".into(),
            "unix:/nonexistent-myflask-dir/http.sock".into(),
        ],
        dir.path(),
        "a.log",
    );
    assert_eq!(p.wait_exit(START).code(), Some(1), "{}", p.log());
    assert!(
        p.log()
            .contains("directory /nonexistent-myflask-dir does not exist"),
        "{}",
        p.log()
    );
    assert!(
        !first.exists(),
        "a failed start left {} behind",
        first.display()
    );

    // An unknown group fails before anything is created.
    let mut p = serve_on(
        &[
            "--listen".into(),
            format!("unix:{}", first.display()),
            "--socket-group".into(),
            "no-such-group-myflask".into(),
        ],
        dir.path(),
        "b.log",
    );
    assert_eq!(p.wait_exit(START).code(), Some(1), "{}", p.log());
    assert!(
        p.log()
            .contains("group \"no-such-group-myflask\" does not exist"),
        "{}",
        p.log()
    );
    assert!(
        !first.exists(),
        "a failed start left {} behind",
        first.display()
    );
}

/// What `systemctl restart myflask.service` does with the socket unit's
/// listener: the old process drains, connections arriving meanwhile wait
/// in the backlog of the socket systemd (here: the test) keeps open, and
/// the next process answers them. None is lost.
#[test]
fn restart_hands_queued_connections_to_the_next_process() {
    use bytes::BytesMut;
    use myflask::fastcgi::{client, record};
    use tokio::io::AsyncWriteExt;

    let dir = target_tmpdir();
    let path = dir.path().join("fcgi.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let start = |log: &str| {
        let mut cmd = serve_with_own_listen_pid(&[]);
        pass_as_fd3(&mut cmd, listener.as_raw_fd());
        let mut p = Proc::spawn(&mut cmd, &dir.path().join(log));
        p.wait_log(" ready", START);
        p
    };
    let rt = common::current_thread_runtime();

    let mut old = start("old.log");
    let body = common::noise(100_000, 3);
    let mut slow = rt.block_on(async {
        let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut out = common::raw::head(1, false, "POST", "/echo", &[], Some(body.len()));
        record::put_stream(&mut out, record::STDIN, 1, &body[..50_000]);
        c.write_all(&out).await.unwrap();
        c
    });
    std::thread::sleep(Duration::from_millis(100));
    old.signal(libc::SIGTERM);
    old.wait_log("SIGTERM: shutting down", STOP);
    std::thread::sleep(Duration::from_millis(100));

    // A client arriving during the drain: queued, not taken by the old one.
    let addr = unix(&path);
    let queued = std::thread::spawn(move || {
        let req = client::Request {
            method: "GET".into(),
            uri: "/status".into(),
            ..Default::default()
        };
        common::fcgi_request(&addr, &req, Duration::from_secs(30))
    });
    std::thread::sleep(Duration::from_millis(200));

    // The in-flight request completes on the old process, which then exits.
    let resp = rt.block_on(async {
        let mut out = BytesMut::new();
        record::put_stream(&mut out, record::STDIN, 1, &body[50_000..]);
        record::put_stream_end(&mut out, record::STDIN, 1);
        slow.write_all(&out).await.unwrap();
        let mut buf = BytesMut::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            client::read_response(&mut slow, 1, &mut buf),
        )
        .await
        .expect("drained request never answered")
        .expect("drained request failed")
    });
    assert_eq!(resp.status, 200);
    assert!(resp.body == body, "drained echo differs");
    assert_eq!(old.wait_exit(STOP).code(), Some(0), "{}", old.log());
    assert!(
        path.exists(),
        "the old process unlinked the inherited socket"
    );
    assert!(
        !queued.is_finished(),
        "the queued client was answered (or failed) too early"
    );

    // The next process answers the queued client.
    let mut new = start("new.log");
    let r = queued
        .join()
        .unwrap()
        .expect("the connection queued during the restart was lost");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["pid"].as_u64(), Some(new.pid() as u64), "{v}");
    new.signal(libc::SIGTERM);
    assert_eq!(new.wait_exit(STOP).code(), Some(0), "{}", new.log());
    assert!(path.exists());
}
