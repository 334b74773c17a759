//! `--allowed-clients` end to end, on the built binary: the refusal to
//! bind a non-loopback TCP address without a list, the warning for an
//! inherited non-loopback socket without one, and peers outside a list
//! closed at accept with rate-limited log lines. (The parsing and matching
//! tables are unit tests in src/allow.rs; several hosts behind nginx are
//! tests/multihost.rs.)
//!
//! Non-loopback sockets are bound only inside a network namespace of their
//! own (`unshare --net`, root), never on the machine's interfaces.

mod common;

use common::{BIN, Proc, clean_cmd, require_tool};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn non_loopback_listen_without_a_list_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (args, env, want)) in [
        (
            vec!["--listen", "0.0.0.0:9"],
            None,
            "refusing to listen on 0.0.0.0:9 without --allowed-clients",
        ),
        (
            vec!["--http", "[::]:9"],
            None,
            "refusing to listen on [::]:9 without --allowed-clients",
        ),
        (
            vec!["--listen", "127.0.0.1:0"],
            Some("10.0.0.1,bogus"),
            "\"bogus\" is not an IP address",
        ),
        (
            vec!["--listen", "127.0.0.1:0"],
            Some("any,10.0.0.1"),
            "cannot be combined",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // As root, in a network namespace of its own: a build that binds
        // anyway does so there. (Without root, port 9 cannot be bound.)
        let mut cmd = if is_root() {
            let mut c = clean_cmd("unshare");
            c.args(["--net", "--", BIN]);
            c
        } else {
            clean_cmd(BIN)
        };
        cmd.arg("serve")
            .args(&args)
            .args(["--log-target", "stderr"]);
        if let Some(v) = env {
            cmd.env("MYFLASK_ALLOWED_CLIENTS", v);
        }
        let mut p = Proc::spawn(&mut cmd, &dir.path().join(format!("log-{i}")));
        let st = p.wait_exit(Duration::from_secs(10));
        assert!(!st.success(), "{args:?} {env:?} started:\n{}", p.log());
        assert!(
            p.log().contains(want),
            "{args:?} {env:?}: no {want:?} in\n{}",
            p.log()
        );
    }
}

/// `myflask serve` under systemd-socket-activate on `addr`, in a network
/// namespace of its own with `lo` up; `env` extra variables.
fn activated_in_netns(addr: &str, env: &[&str], log: &std::path::Path) -> Proc {
    let sa = require_tool("systemd-socket-activate");
    let mut cmd = clean_cmd("unshare");
    cmd.args([
        "--net",
        "--",
        "sh",
        "-c",
        "ip link set lo up && exec \"$@\"",
        "sh",
    ])
    .arg(&sa)
    .args(["-l", addr, "--fdname=fastcgi"]);
    for e in env {
        cmd.arg(format!("-E{e}"));
    }
    cmd.args([BIN, "serve", "--log-target", "stderr"]);
    let mut p = Proc::spawn(&mut cmd, log);
    p.wait_log("Listening on", Duration::from_secs(10));
    p
}

/// Connects to 127.0.0.1:`port` inside the network namespace of `pid`,
/// sends a FastCGI GET /healthz and returns what came back (empty when the
/// server closed the connection).
fn exchange_in_netns_of(pid: i32, port: u16) -> Vec<u8> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("netns of pid");
            // SAFETY: setns on an fd we own; it moves only this thread.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut req = Vec::new();
            let rec = |t: u8, body: &[u8], out: &mut Vec<u8>| {
                let len = (body.len() as u16).to_be_bytes();
                out.extend_from_slice(&[1, t, 0, 1, len[0], len[1], 0, 0]);
                out.extend_from_slice(body);
            };
            rec(1, &[0, 1, 0, 0, 0, 0, 0, 0], &mut req);
            let mut params = vec![14, 3];
            params.extend_from_slice(b"REQUEST_METHODGET");
            params.extend_from_slice(&[11, 8]);
            params.extend_from_slice(b"REQUEST_URI/healthz");
            rec(4, &params, &mut req);
            rec(4, &[], &mut req);
            rec(5, &[], &mut req);
            let _ = c.write_all(&req);
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            got
        })
        .join()
        .expect("client thread")
    })
}

#[test]
fn inherited_non_loopback_socket_without_a_list_is_warned_about() {
    if !is_root() {
        eprintln!("skipped: a network namespace of its own needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut p = activated_in_netns("0.0.0.0:9000", &[], &dir.path().join("log"));
    let got = exchange_in_netns_of(p.pid(), 9000);
    assert!(
        String::from_utf8_lossy(&got).contains("ok"),
        "no answer:\n{}",
        p.log()
    );
    p.wait_log(
        "accepts FastCGI from any client: set IPAddressAllow=",
        Duration::from_secs(5),
    );
    p.signal(libc::SIGTERM);
    p.wait_exit(Duration::from_secs(20));

    // Loopback, or a list: no warning.
    for (addr, env) in [
        ("127.0.0.1:9000", vec![]),
        ("0.0.0.0:9000", vec!["MYFLASK_ALLOWED_CLIENTS=127.0.0.1"]),
    ] {
        let log = dir.path().join(format!("log-{}", env.len()));
        let mut p = activated_in_netns(addr, &env, &log);
        assert!(
            !exchange_in_netns_of(p.pid(), 9000).is_empty(),
            "{}",
            p.log()
        );
        p.signal(libc::SIGTERM);
        p.wait_exit(Duration::from_secs(20));
        assert!(
            !p.log().contains("any client"),
            "{addr} {env:?}:\n{}",
            p.log()
        );
    }
}

#[test]
fn peers_outside_the_list_are_closed_and_logged_at_most_ten_times() {
    if !is_root() {
        eprintln!("skipped: a network namespace of its own needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = ["MYFLASK_ALLOWED_CLIENTS=10.0.0.1,fd00::/8"];
    let mut p = activated_in_netns("0.0.0.0:9000", &env, &dir.path().join("log"));
    let t0 = Instant::now();
    for i in 0..25 {
        let got = exchange_in_netns_of(p.pid(), 9000);
        assert!(got.is_empty(), "refused peer {i} got an answer: {got:?}");
    }
    let lines = p
        .log()
        .matches("closed a connection from 127.0.0.1:")
        .count();
    assert_eq!(lines, 10, "25 refusals in {:?}:\n{}", t0.elapsed(), p.log());
    assert!(
        p.log()
            .contains("not in --allowed-clients (10.0.0.1/32,fd00::/8)"),
        "{}",
        p.log()
    );
    p.signal(libc::SIGTERM);
    assert!(
        p.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        p.log()
    );
}
