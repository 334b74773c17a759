//! Logging choices: stderr lines by default, journald only when stderr is
//! the journal (JOURNAL_STREAM matches) or when asked, a single warning and
//! stderr when journald cannot be reached, and --log-level / RUST_LOG.

mod common;

use common::{Proc, fcgi_get, serve_cmd};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

fn serve(
    dir: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Proc, myflask::addr::ListenAddr) {
    let sock = dir.join("fcgi.sock");
    let p = Proc::spawn(&mut serve_cmd(&sock, extra, env), &dir.join("stderr.log"));
    (p, myflask::addr::ListenAddr::Unix(sock))
}

fn journald_present() -> bool {
    std::path::Path::new("/run/systemd/journal/socket").exists()
}

#[test]
fn journald_requested_but_absent_falls_back_to_stderr_with_one_warning() {
    // This machine has no journald (PID 1 is not systemd): exactly the case.
    assert!(
        !journald_present(),
        "this test needs a machine without journald; the real-journald case is tests/systemd/run.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut p, addr) = serve(dir.path(), &["--log-target", "journald"], &[]);
    p.wait_log(" ready", Duration::from_secs(20));
    let r = fcgi_get(&addr, "/healthz");
    assert_eq!(r.status, 200);
    p.wait_log("GET /healthz 200", Duration::from_secs(5));
    let log = p.log();
    assert_eq!(log.matches("journald is not reachable").count(), 1, "{log}");
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn journal_stream_of_another_file_is_not_the_journal() {
    // A JOURNAL_STREAM inherited from a parent whose stderr was the journal,
    // while ours is a file: the value names another inode, so stderr lines.
    let dir = tempfile::tempdir().unwrap();
    let other = std::fs::metadata("/").unwrap();
    let stream = format!("{}:{}", other.dev(), other.ino());
    let (mut p, addr) = serve(dir.path(), &[], &[("JOURNAL_STREAM", &stream)]);
    p.wait_log(" ready", Duration::from_secs(20));
    assert_eq!(fcgi_get(&addr, "/healthz").status, 200);
    p.wait_log("GET /healthz 200", Duration::from_secs(5));
    assert!(!p.log().contains("journald"), "{}", p.log());
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn journal_stream_matching_stderr_selects_journald() {
    // JOURNAL_STREAM naming our own stderr means "stderr is the journal":
    // the server then wants journald (and, without one here, says so once).
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    std::fs::write(&log_path, b"").unwrap();
    let m = std::fs::metadata(&log_path).unwrap();
    let stream = format!("{}:{}", m.dev(), m.ino());
    let (mut p, _addr) = serve(dir.path(), &[], &[("JOURNAL_STREAM", &stream)]);
    p.wait_log(" ready", Duration::from_secs(20));
    assert_eq!(
        p.log().matches("journald is not reachable").count(),
        1,
        "{}",
        p.log()
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn log_level_flag_overrides_rust_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, addr) = serve(
        dir.path(),
        &["--log-level", "warn"],
        &[("RUST_LOG", "debug")],
    );
    // Nothing at info is logged, so wait for the socket instead of "ready".
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut ok = false;
    while std::time::Instant::now() < deadline {
        if let myflask::addr::ListenAddr::Unix(s) = &addr {
            if std::os::unix::net::UnixStream::connect(s).is_ok() {
                ok = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok, "server did not come up: {}", p.log());
    assert_eq!(fcgi_get(&addr, "/healthz").status, 200);
    assert_eq!(fcgi_get(&addr, "/nope").status, 404);
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(20)).success());
    let log = p.log();
    assert!(
        !log.contains(" INFO "),
        "info lines at --log-level warn:\n{log}"
    );
    assert!(
        !log.contains("DEBUG"),
        "RUST_LOG=debug won over --log-level:\n{log}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (mut p, addr) = serve(dir.path(), &[], &[("RUST_LOG", "debug")]);
    p.wait_log(" ready", Duration::from_secs(20));
    assert_eq!(fcgi_get(&addr, "/healthz").status, 200);
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(20)).success());
    assert!(
        p.log().contains("DEBUG"),
        "RUST_LOG=debug ignored:\n{}",
        p.log()
    );
}
