//! Where a test puts its sockets: short socket directories, and whether
//! the server will warn about PrivateTmp for them.

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
