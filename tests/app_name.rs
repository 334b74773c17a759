//! The app's name (`--app-name`, `MYFLASK_APP_NAME`, default the
//! executable's file name) against the real binary: the man page, `--help`,
//! `/status`, the `STATUS=` line on a real `NOTIFY_SOCKET`, and the
//! journal's `SYSLOG_IDENTIFIER=` on a real journald socket.
//!
//! The default is tested with a copy of the binary named `hello` (what a
//! user's binary built on `myflask::cli::main_with` is). The journal test
//! binds the datagram socket journald would own and shows it to the server
//! at `/run/systemd/journal/socket` (tracing-journald's fixed path) through
//! a bind mount in a private mount namespace (`unshare -m`, as root).

mod common;

use common::{BIN, Proc, clean_cmd, fcgi_get, require_tool, target_tmpdir};
use myflask::addr::ListenAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const START: Duration = Duration::from_secs(20);

/// A copy of the binary named `name` in `dir`.
fn copy_as(dir: &Path, name: &str) -> PathBuf {
    // A hard link, not a copy: a copy holds the new file open for writing,
    // and a child that another test thread forks meanwhile inherits that
    // fd, so exec fails with ETXTBSY ("Text file busy").
    let p = dir.join(name);
    if std::fs::hard_link(BIN, &p).is_err() {
        std::fs::copy(BIN, &p).expect("copy the binary");
    }
    p
}

/// Runs `prog args` with `env`; (exit code, stdout, stderr).
fn run(prog: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(prog);
    cmd.args(args).env_remove("MYFLASK_APP_NAME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_man_names(page: &str, name: &str) {
    let upper = name.to_uppercase();
    for want in [
        format!(".TH {upper} 8 "),
        format!("/etc/default/{name}\n"),
        format!("/run/{name}/fcgi.sock\n"),
        format!("journalctl -u {name}\n"),
        format!(".SH \"{upper} SERVE\""),
        format!("\\fB{name} serve\\fR"),
    ] {
        assert!(page.contains(&want), "no {want:?} in the man page:\n{page}");
    }
    if name != "myflask" {
        assert!(!page.contains("/run/myflask"), "{page}");
        assert!(!page.contains("/etc/default/myflask"), "{page}");
    }
}

#[test]
fn man_page_is_named_after_the_executable_or_the_flag() {
    let dir = target_tmpdir();
    let hello = copy_as(dir.path(), "hello");
    let (code, page, err) = run(&hello, &["manpage"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_man_names(&page, "hello");

    let (code, page, err) = run(&hello, &["--app-name", "shop", "manpage"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_man_names(&page, "shop");

    let (code, page, err) = run(&hello, &["manpage"], &[("MYFLASK_APP_NAME", "shop2")]);
    assert_eq!(code, 0, "{err}");
    assert_man_names(&page, "shop2");

    let (code, page, err) = run(Path::new(BIN), &["manpage"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_man_names(&page, "myflask");
}

#[test]
fn help_and_usage_name_the_app() {
    let dir = target_tmpdir();
    let hello = copy_as(dir.path(), "hello_world");
    // An executable name becomes a valid one the way cargo-deb makes a
    // package name: `_` becomes `-`.
    let (code, out, err) = run(&hello, &["--help"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Usage: hello-world [OPTIONS] <COMMAND>"),
        "{out}"
    );
    assert!(out.contains("unix:/run/hello-world/fcgi.sock"), "{out}");
    let (code, out, _) = run(&hello, &["--app-name=shop", "serve", "--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage: shop serve [OPTIONS]"), "{out}");
    let (code, out, _) = run(&hello, &["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("hello-world (myflask {})", env!("CARGO_PKG_VERSION"))
    );
    // A usage error names the app too.
    let (code, _, err) = run(&hello, &["serve", "--no-such-flag"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("Usage: hello-world serve [OPTIONS]"), "{err}");
}

#[test]
fn invalid_names_are_refused_with_one_sentence() {
    for (args, env) in [
        (vec!["--app-name", "Shop", "serve"], vec![]),
        (vec!["--app-name", "a/b", "manpage"], vec![]),
        (vec!["serve"], vec![("MYFLASK_APP_NAME", "my_app")]),
        (vec!["--app-name", "", "serve"], vec![]),
    ] {
        let (code, _, err) = run(Path::new(BIN), &args, &env);
        assert_eq!(code, 2, "{args:?} {env:?}: {err}");
        assert!(
            err.contains("is not a valid app name: use 1 to 64 lowercase letters"),
            "{args:?} {env:?}: {err}"
        );
    }
}

/// Starts `prog serve` on `<dir>/fcgi.sock` and waits until it serves.
fn serve(prog: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Proc, ListenAddr) {
    let sock = dir.join("fcgi.sock");
    let mut cmd = clean_cmd(prog);
    cmd.args(args)
        .arg("serve")
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .env_remove("MYFLASK_APP_NAME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut p = Proc::spawn(&mut cmd, &dir.join("log"));
    p.wait_log("ready", START);
    (p, ListenAddr::Unix(sock))
}

/// The fields `/status` had before it named the app, which stay as they
/// were.
const STATUS_FIELDS: [&str; 19] = [
    "start_time",
    "start_time_rfc3339",
    "uptime_seconds",
    "accepted_connections",
    "active_connections",
    "active_requests",
    "max_active_requests",
    "total_requests",
    "requests_1xx",
    "requests_2xx",
    "requests_3xx",
    "requests_4xx",
    "requests_5xx",
    "refused_overloaded",
    "bytes_in",
    "bytes_out",
    "version",
    "package_version",
    "pid",
];

#[test]
fn status_json_names_the_app_and_keeps_its_fields() {
    let dir = target_tmpdir();
    let hello = copy_as(dir.path(), "hello");
    for (args, want) in [(&[][..], "hello"), (&["--app-name", "shop"][..], "shop")] {
        let run_dir = tempfile::tempdir_in(dir.path()).expect("tempdir");
        let (mut p, addr) = serve(&hello, run_dir.path(), args, &[]);
        let r = fcgi_get(&addr, "/status");
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
        assert_eq!(v["name"], want, "{v:#}");
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = STATUS_FIELDS.to_vec();
        expected.push("name");
        keys.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        // Not packaged by cargo myflask deb: no package version.
        assert_eq!(v["package_version"], serde_json::Value::Null);
        assert_eq!(v["pid"], p.pid());
        p.signal(libc::SIGTERM);
        assert_eq!(p.wait_exit(START).code(), Some(0), "{}", p.log());
    }
}

/// Every datagram `sock` receives within `limit`, until `done` says so.
fn collect(
    sock: &UnixDatagram,
    limit: Duration,
    done: impl Fn(&[Vec<u8>]) -> bool,
) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline && !done(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

fn has_line(dgram: &[u8], line: &str) -> bool {
    dgram.split(|b| *b == b'\n').any(|l| l == line.as_bytes())
}

/// The fields of one entry in journald's native protocol: `NAME=value\n`,
/// or `NAME\n` + 64-bit little-endian length + value + `\n` (values that
/// may hold newlines, which is how tracing-journald sends text).
fn journal_fields(mut d: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(nl) = d.iter().position(|b| *b == b'\n') {
        let head = &d[..nl];
        if let Some(eq) = head.iter().position(|b| *b == b'=') {
            let (k, v) = (&head[..eq], &head[eq + 1..]);
            out.push((lossy(k), lossy(v)));
            d = &d[nl + 1..];
            continue;
        }
        let rest = &d[nl + 1..];
        let len_bytes: [u8; 8] = rest
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .expect("length");
        let len = u64::from_le_bytes(len_bytes) as usize;
        let value = rest.get(8..8 + len).expect("value within the datagram");
        out.push((lossy(head), lossy(value)));
        d = rest.get(8 + len + 1..).unwrap_or_default();
    }
    out
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn field<'a>(entry: &'a [(String, String)], name: &str) -> Option<&'a str> {
    entry
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn status_line_to_systemd_names_the_app() {
    let dir = target_tmpdir();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    let notify_env = notify_path.to_str().expect("UTF-8 path");
    let hello = copy_as(dir.path(), "hello");
    let (mut p, _addr) = serve(&hello, dir.path(), &[], &[("NOTIFY_SOCKET", notify_env)]);
    let ready = |m: &[Vec<u8>]| m.iter().any(|d| has_line(d, "READY=1"));
    let msgs = collect(&notify, START, ready);
    let first = msgs.iter().find(|d| ready(std::slice::from_ref(*d)));
    let first = String::from_utf8_lossy(first.expect("READY=1 datagram"));
    let status = first
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("READY=1 without STATUS=: {first:?}"));
    assert!(
        status.starts_with("serving; ") && status.ends_with("; app hello"),
        "{status:?}"
    );
    p.signal(libc::SIGTERM);
    let stopping = |m: &[Vec<u8>]| m.iter().any(|d| has_line(d, "STOPPING=1"));
    let msgs = collect(&notify, START, stopping);
    let text: Vec<String> = msgs
        .iter()
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert!(
        text.iter()
            .any(|t| t.contains("STATUS=stopping (SIGTERM)") && t.contains("; app hello\n")),
        "{text:#?}"
    );
    assert_eq!(p.wait_exit(START).code(), Some(0), "{}", p.log());
}

/// Serves with `--log-target journald` in a private mount namespace where
/// `/run/systemd` is `<dir>/systemd`, whose `journal/socket` this test
/// reads; returns the entries up to the "ready" one.
fn journal_entries(prog: &Path, dir: &Path, args: &[&str]) -> Vec<Vec<(String, String)>> {
    let unshare = require_tool("unshare");
    let jdir = dir.join("systemd/journal");
    std::fs::create_dir_all(&jdir).expect("journal dir");
    let journal = UnixDatagram::bind(jdir.join("socket")).expect("bind the journal socket");
    let sock = dir.join("fcgi.sock");
    let script = format!(
        "mount --bind {} /run/systemd && exec \"$@\"",
        dir.join("systemd").display()
    );
    let mut cmd = clean_cmd(unshare);
    cmd.args(["-m", "sh", "-c", &script, "sh"])
        .arg(prog)
        .args(args)
        .args(["serve", "--log-target", "journald", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .env_remove("MYFLASK_APP_NAME");
    let mut p = Proc::spawn(&mut cmd, &dir.join("log"));
    let is_ready = |d: &Vec<u8>| field(&journal_fields(d), "MESSAGE") == Some("ready");
    let msgs = collect(&journal, START, |m| m.iter().any(is_ready));
    assert!(
        msgs.iter().any(is_ready),
        "no MESSAGE=ready entry on the journal socket; got {msgs:?}; log:\n{}",
        p.log()
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(START).code(), Some(0), "{}", p.log());
    msgs.iter()
        .filter(|d| !d.is_empty())
        .map(|d| journal_fields(d))
        .collect()
}

#[test]
fn journal_identifier_is_the_app_name() {
    let dir = target_tmpdir();
    let hello = copy_as(dir.path(), "hello");
    for (args, want) in [(&[][..], "hello"), (&["--app-name", "shop"][..], "shop")] {
        let run_dir = tempfile::tempdir_in(dir.path()).expect("tempdir");
        let entries = journal_entries(&hello, run_dir.path(), args);
        assert!(entries.len() >= 2, "{entries:#?}");
        for e in &entries {
            assert_eq!(field(e, "SYSLOG_IDENTIFIER"), Some(want), "{e:?}");
        }
    }
}
