//! Where a test puts its sockets and how many it may open: short socket
//! directories, free loopback ports, and this process's RLIMIT_NOFILE.

use std::path::Path;

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

/// A loopback TCP port that was free a moment ago (the kernel picks it;
/// the listener is closed again, so a server started next can bind it).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"))
}

/// Lifts this process's soft RLIMIT_NOFILE to `want`, or to the hard limit
/// when that is lower (`u64::MAX`: to the hard limit). Children, the server
/// among them, inherit it. Returns (soft before, soft now, hard).
pub fn raise_nofile(want: u64) -> (u64, u64, u64) {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0, "getrlimit");
        let before = r.rlim_cur as u64;
        let target = (want as libc::rlim_t).min(r.rlim_max);
        if r.rlim_cur < target {
            r.rlim_cur = target;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0, "setrlimit");
        }
        (before, r.rlim_cur as u64, r.rlim_max as u64)
    }
}

/// Like [`raise_nofile`], and fails the test when the hard limit keeps the
/// soft one below `want`.
pub fn require_nofile(want: u64) {
    let (_, soft, hard) = raise_nofile(want);
    assert!(
        soft >= want,
        "RLIMIT_NOFILE is {soft} (hard {hard}); this test needs {want}"
    );
}
