//! `myflask request` explains why it could not connect, against the built
//! binary and real sockets: a missing socket (with the PrivateTmp text
//! `serve` logs when it is under /tmp or /var/tmp), permission denied (run
//! as `nobody` through `setpriv`, the tests running as root), nothing
//! listening, and not a socket. Exit status 1 in every case.

mod common;

use common::{BIN, Proc, clean_cmd, free_tcp_port, require_tool, target_tmpdir};
use myflask::systemd::listen::private_tmp_hint;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `[setpriv as USER:GROUP] myflask request ADDR /healthz`; (exit code,
/// stderr).
fn request_as(user: Option<(&str, &str)>, addr: &str) -> (i32, String) {
    let mut cmd = match user {
        Some((u, g)) => {
            let mut c = Command::new(require_tool("setpriv"));
            c.args(["--reuid", u, "--regid", g, "--init-groups", BIN]);
            c
        }
        None => Command::new(BIN),
    };
    let out = cmd
        .args(["request", "--timeout", "10", addr, "/healthz"])
        .output()
        .expect("run myflask request");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs [`request_as`], which must fail (exit status 1) and say each of
/// `parts` on stderr; returns what it said.
fn refused(user: Option<(&str, &str)>, addr: &str, parts: &[&str]) -> String {
    let (code, err) = request_as(user, addr);
    assert_eq!(code, 1, "{err}");
    for p in parts {
        assert!(err.contains(p), "no {p:?} in:\n{err}");
    }
    err
}

#[test]
fn missing_socket_under_tmp_gets_the_private_tmp_explanation() {
    for base in ["/tmp", "/var/tmp"] {
        let path = format!(
            "{base}/myflask-diag-{}-absent/fcgi.sock",
            std::process::id()
        );
        let hint = private_tmp_hint(Path::new(&path)).expect("a /tmp path has a hint");
        refused(
            None,
            &format!("unix:{path}"),
            &[
                &format!("myflask: cannot connect to unix:{path}: No such file or directory"),
                &format!("{path} does not exist (nor its directory) in this /tmp; "),
                // The very text `serve` logs for a socket there.
                &hint,
                "PrivateTmp=",
            ],
        );
    }
}

#[test]
fn missing_socket_elsewhere_says_so() {
    let dir = target_tmpdir();
    let path = dir.path().join("absent.sock");
    let err = refused(
        None,
        &format!("unix:{}", path.display()),
        &[&format!(
            "{} does not exist: is the server running, and is this the path",
            path.display()
        )],
    );
    assert!(!err.contains("PrivateTmp"), "{err}");
}

#[test]
fn socket_file_with_nothing_listening_says_so() {
    let dir = target_tmpdir();
    let path = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    refused(
        None,
        &format!("unix:{}", path.display()),
        &[
            "Connection refused",
            "nothing is listening on it: the socket file exists but no process accepts on it",
        ],
    );

    let port = free_tcp_port();
    refused(
        None,
        &format!("127.0.0.1:{port}"),
        &["nothing is listening on that address and port"],
    );

    let file = dir.path().join("plain");
    std::fs::write(&file, b"").expect("file");
    refused(
        None,
        &format!("unix:{}", file.display()),
        &[&format!(
            "{} is not a socket: it is owned by root:root",
            file.display()
        )],
    );
}

#[test]
fn permission_denied_names_owner_group_mode_and_the_caller() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test runs the client as other users: run it as root (tests/run.sh)"
    );
    let dir = target_tmpdir();
    let sock = dir.path().join("fcgi.sock");
    let addr = format!("unix:{}", sock.display());
    let mut cmd = clean_cmd(BIN);
    cmd.args(["serve", "--listen", &addr]);
    let mut server = Proc::spawn(&mut cmd, &dir.path().join("log"));
    server.wait_log("ready", Duration::from_secs(20));
    let d = dir.path().display();

    // A 0700 directory: the directory is what refuses.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    refused(
        Some(("nobody", "nogroup")),
        &addr,
        &[
            "Permission denied",
            &format!("the directory {d} is owned by root:root with mode 0700 (drwx------)"),
            "you are nobody, uid 65534, in groups nogroup (65534)",
            "nginx's workers (www-data) could not connect either: they cannot search",
        ],
    );

    // Searchable directory, socket root:root 0660: the socket refuses.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    refused(
        Some(("nobody", "nogroup")),
        &addr,
        &[
            "the socket is owned by root:root with mode 0660 (srw-rw----)",
            "you are nobody, uid 65534, in groups nogroup (65534)",
            "connecting needs write permission on the socket",
            "nginx's workers (www-data) could not connect either: the packaged socket is \
             root:www-data 0660",
        ],
    );

    // The packaged ownership: www-data gets in, nobody still does not.
    let chgrp = Command::new("chgrp")
        .arg("www-data")
        .arg(&sock)
        .status()
        .expect("chgrp");
    assert!(chgrp.success());
    refused(
        Some(("nobody", "nogroup")),
        &addr,
        &[
            "owned by root:www-data with mode 0660",
            "nginx's workers (www-data) can connect",
        ],
    );
    let (code, err) = request_as(Some(("www-data", "www-data")), &addr);
    assert_eq!(code, 0, "{err}");
}
