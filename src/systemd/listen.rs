//! Listening sockets: the ones systemd hands over, or our own.
//!
//! Inherited sockets follow sd_listen_fds(3): fds from 3 on, `LISTEN_FDS` of
//! them, valid only if `LISTEN_PID` is our pid, named by `LISTEN_FDNAMES`
//! (from `FileDescriptorName=`). What an inherited socket speaks is the
//! server's decision, by that name; this file only hands the name on. This
//! must run before any thread exists: it unsets the variables (so children
//! do not inherit them) and `remove_var` is only sound while the process is
//! single-threaded.
//!
//! Our own sockets are bound where the caller asks, tagged with the
//! transport it wants on them (which ones, and the default, are the
//! server's choice: `server::listeners`). A stale unix socket file (nothing
//! answers on it) is replaced; a live one is an error. A path under /tmp or
//! /var/tmp gets a warning: with systemd's PrivateTmp= (implied by
//! DynamicUser=) the server and nginx see different /tmp directories, and
//! nginx fails with `connect() to unix:/tmp/fcgi.sock failed (2: No such
//! file or directory)`.

use crate::Transport;
use crate::addr::ListenAddr;
use anyhow::{Context, bail};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A listening socket, not yet registered with a runtime.
#[derive(Debug)]
pub enum Socket {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// A listening socket with what we know about it.
#[derive(Debug)]
pub struct Listener {
    pub socket: Socket,
    /// The transport the caller bound it for (see [`bind`]); `None` for a
    /// socket systemd passed, which the server assigns by its fd name.
    pub transport: Option<Transport>,
    /// `unix:/path` or `host:port`.
    pub address: String,
    /// Inherited from systemd (`Some(fd name)`) or bound by us (`None`).
    pub inherited: Option<String>,
    /// A socket file we created and must remove on exit (never one that
    /// systemd owns).
    pub owned_path: Option<PathBuf>,
}

impl Listener {
    /// The address and where the socket came from, e.g.
    /// `unix:/run/myflask/fcgi.sock (inherited from systemd, fd name "fcgi")`.
    pub fn describe(&self) -> String {
        match &self.inherited {
            Some(name) => format!(
                "{} (inherited from systemd, fd name {name:?})",
                self.address
            ),
            None => format!("{} (bound by myflask)", self.address),
        }
    }
}

/// How to create unix sockets we bind ourselves (php-fpm's `listen.mode`
/// and `listen.group`).
#[derive(Debug, Clone, Default)]
pub struct BindOptions {
    pub mode: Option<u32>,
    pub group: Option<String>,
}

const SD_LISTEN_FDS_START: RawFd = 3;

fn unset_listen_env() {
    // SAFETY: called from `inherited()`, which the binary calls before it
    // starts any thread (documented at the top of this file).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(v)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Checks that `fd` is a listening stream socket; returns its family.
fn check_fd(fd: RawFd, name: &str) -> anyhow::Result<libc::c_int> {
    let what = format!("inherited fd {fd} (name {name:?})");
    // SAFETY: fstat into a zeroed buffer of the right type.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        bail!("{what} is not open: {}", std::io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        bail!("{what} is not a socket");
    }
    let ty = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
        .with_context(|| format!("{what}: cannot read its socket type"))?;
    if ty != libc::SOCK_STREAM {
        bail!(
            "{what} is not a stream socket (SO_TYPE {ty}); use ListenStream=, not ListenDatagram="
        );
    }
    let listening = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)
        .with_context(|| format!("{what}: cannot tell whether it listens"))?;
    if listening == 0 {
        bail!(
            "{what} is a connected socket, not a listening one (is the socket unit Accept=yes? myflask needs Accept=no)"
        );
    }
    let family = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
        .with_context(|| format!("{what}: cannot read its address family"))?;
    if !matches!(family, libc::AF_UNIX | libc::AF_INET | libc::AF_INET6) {
        bail!("{what} has address family {family}; only unix and TCP sockets are served");
    }
    Ok(family)
}

/// Takes the sockets systemd passed us, if any, and validates them.
///
/// Must be called before any thread is started.
pub fn inherited() -> anyhow::Result<Vec<Listener>> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(Vec::new());
    };
    if !listen_pid_is_ours(&count) {
        unset_listen_env();
        return Ok(Vec::new());
    }
    let n: usize = count
        .parse()
        .with_context(|| format!("LISTEN_FDS={count:?} is not a number"))?;
    let names = fd_names(std::env::var("LISTEN_FDNAMES").ok().as_deref(), n);
    let mut fds = listenfd::ListenFd::from_env();
    unset_listen_env();
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| take_inherited(&mut fds, i, name))
        .collect()
}

/// Whether `LISTEN_PID` names this process (sd_listen_fds(3)); warns when
/// it does not, since the fds were then meant for someone else.
fn listen_pid_is_ours(count: &str) -> bool {
    let pid = std::env::var("LISTEN_PID").ok();
    let me = std::process::id();
    let why = match pid.as_deref().map(str::parse::<u32>) {
        Some(Ok(p)) if p == me => return true,
        None => "LISTEN_PID is not set".to_string(),
        Some(Err(_)) => format!("LISTEN_PID={:?} is not a pid", pid.unwrap_or_default()),
        Some(Ok(p)) => format!("LISTEN_PID={p} is another process (we are {me})"),
    };
    tracing::warn!(
        "ignoring LISTEN_FDS={count}: {why}; the fds were meant for another process \
         (was myflask started through a wrapper that forks?)"
    );
    false
}

/// The `n` fd names from `LISTEN_FDNAMES` (colon-separated); `unknown` for
/// every fd when the variable is missing (sd_listen_fds_with_names(3)'s
/// default) or, with a warning, when it does not hold one name per fd.
fn fd_names(var: Option<&str>, n: usize) -> Vec<String> {
    let names: Vec<String> = var
        .map(|s| s.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    if names.len() == n {
        return names;
    }
    if !names.is_empty() {
        tracing::warn!(
            "LISTEN_FDNAMES has {} names for {n} fds; treating all as \"unknown\"",
            names.len()
        );
    }
    vec!["unknown".to_string(); n]
}

/// Takes inherited fd number `i` (fd 3 + `i`), named `name`, after checking
/// that it is a listening stream socket.
fn take_inherited(
    fds: &mut listenfd::ListenFd,
    i: usize,
    name: String,
) -> anyhow::Result<Listener> {
    let fd = SD_LISTEN_FDS_START + i as RawFd;
    let family = check_fd(fd, &name)?;
    let taking = || format!("taking inherited fd {fd}");
    let taken = || format!("inherited fd {fd} was already taken");
    let (socket, address) = if family == libc::AF_UNIX {
        let l = fds
            .take_unix_listener(i)
            .with_context(taking)?
            .with_context(taken)?;
        let path = l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf));
        let address = match path {
            Some(p) => format!("unix:{}", p.display()),
            None => format!("unix socket fd {fd}"),
        };
        (Socket::Unix(l), address)
    } else {
        let l = fds
            .take_tcp_listener(i)
            .with_context(taking)?
            .with_context(taken)?;
        let address = l
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| format!("tcp socket fd {fd}"));
        (Socket::Tcp(l), address)
    };
    set_nonblocking(&socket)?;
    Ok(Listener {
        socket,
        transport: None,
        address,
        inherited: Some(name),
        owned_path: None,
    })
}

fn set_nonblocking(s: &Socket) -> anyhow::Result<()> {
    // tokio refuses blocking sockets (it would stall a worker thread).
    match s {
        Socket::Unix(l) => l.set_nonblocking(true),
        Socket::Tcp(l) => l.set_nonblocking(true),
    }
    .context("setting the socket non-blocking")
}

/// Raises the listen backlog: std binds with 128, and the backlog is what
/// holds connections while `--max-connections` pauses accepting.
fn raise_backlog(fd: RawFd) {
    // SAFETY: listen() on a socket we own; on Linux a second listen() only
    // changes the backlog (the kernel caps it at net.core.somaxconn).
    unsafe {
        libc::listen(fd, 4096);
    }
}

fn lookup_group(name: &str) -> anyhow::Result<libc::gid_t> {
    if let Ok(gid) = name.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let cname = std::ffi::CString::new(name).context("group name has a NUL byte")?;
    // SAFETY: getgrnam returns a pointer into static storage or NULL; we
    // read one field immediately, before any other call could reuse it.
    let gr = unsafe { libc::getgrnam(cname.as_ptr()) };
    if gr.is_null() {
        bail!("group {name:?} does not exist");
    }
    Ok(unsafe { (*gr).gr_gid })
}

/// Why a socket under /tmp or /var/tmp goes missing for nginx (`None`
/// elsewhere); `myflask request` prints it too when such a socket is absent.
pub fn private_tmp_hint(path: &Path) -> Option<String> {
    let p = path.to_string_lossy();
    if p.starts_with("/tmp/") || p.starts_with("/var/tmp/") {
        return Some(format!(
            "socket {p} is under /tmp or /var/tmp: if myflask or nginx runs with systemd's \
             PrivateTmp= (DynamicUser= implies it), each sees its own private /tmp and nginx \
             fails with \"connect() to unix:{p} failed (2: No such file or directory)\"; \
             use a directory under /run (e.g. /run/myflask/fcgi.sock) instead"
        ));
    }
    None
}

fn warn_if_tmp(path: &Path) {
    if let Some(hint) = private_tmp_hint(path) {
        tracing::warn!("{hint}");
    }
}

fn bind_unix(path: &Path, opts: &BindOptions) -> anyhow::Result<std::os::unix::net::UnixListener> {
    warn_if_tmp(path);
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => bail!(
                    "{} is in use: another server answers on it (stop it, or choose another path)",
                    path.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(
                        "replacing stale socket file {} (nothing answers on it)",
                        path.display()
                    );
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing stale socket {}", path.display()))?;
                }
                Err(e) => bail!("{} exists and cannot be probed: {e}", path.display()),
            }
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("cannot inspect {}: {e}", path.display()),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "directory {} does not exist (create it, or let a systemd .socket unit own the socket)",
                dir.display()
            );
        }
    }
    // Resolve the group before creating anything: a failed start must not
    // leave a socket file behind.
    let gid = opts.group.as_deref().map(lookup_group).transpose()?;
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    raise_backlog(l.as_raw_fd());
    let mode = opts.mode.unwrap_or(0o660);
    let apply = || -> anyhow::Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
        if let (Some(gid), Some(group)) = (gid, &opts.group) {
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("setting group {group} on {}", path.display()))?;
        }
        Ok(())
    };
    if let Err(e) = apply() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(l)
}

/// Binds `addr` ourselves, for the server to serve `transport` on.
pub fn bind(
    addr: &ListenAddr,
    transport: Transport,
    opts: &BindOptions,
) -> anyhow::Result<Listener> {
    let (socket, owned_path) = match addr {
        ListenAddr::Unix(p) => (Socket::Unix(bind_unix(p, opts)?), Some(p.clone())),
        ListenAddr::Tcp(a) => {
            let l = std::net::TcpListener::bind(a).with_context(|| format!("binding {a}"))?;
            raise_backlog(l.as_raw_fd());
            (Socket::Tcp(l), None)
        }
    };
    let address = match (&socket, addr) {
        (Socket::Tcp(l), _) => l
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_string()),
        _ => addr.to_string(),
    };
    set_nonblocking(&socket)?;
    Ok(Listener {
        socket,
        transport: Some(transport),
        address,
        inherited: None,
        owned_path,
    })
}

/// Binds each of `wanted` and adds it to `listeners`. If one fails, the
/// socket files bound so far are removed, so a failed start leaves nothing
/// behind (inherited sockets are untouched).
pub fn bind_all<'a>(
    mut listeners: Vec<Listener>,
    wanted: impl IntoIterator<Item = (&'a ListenAddr, Transport)>,
    opts: &BindOptions,
) -> anyhow::Result<Vec<Listener>> {
    for (addr, transport) in wanted {
        match bind(addr, transport, opts) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                for p in listeners.iter().filter_map(|l| l.owned_path.as_ref()) {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        }
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_socket_is_replaced_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let opts = BindOptions::default();
        let live = bind_unix(&path, &opts).unwrap();
        let err = bind_unix(&path, &opts).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        drop(live);
        // The file is still there but nothing listens: replaced.
        assert!(path.exists());
        let _again = bind_unix(&path, &opts).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
    }

    #[test]
    fn fd_names_are_used_only_when_there_is_one_per_fd() {
        let cases: [(Option<&str>, usize, &[&str]); 5] = [
            (Some("fastcgi:http"), 2, &["fastcgi", "http"]),
            (Some("fastcgi"), 1, &["fastcgi"]),
            (Some("fastcgi"), 2, &["unknown", "unknown"]),
            (Some("a:b:c"), 2, &["unknown", "unknown"]),
            (None, 2, &["unknown", "unknown"]),
        ];
        for (var, n, want) in cases {
            assert_eq!(fd_names(var, n), want, "{var:?} for {n} fds");
        }
    }

    #[test]
    fn a_failed_bind_removes_the_socket_files_bound_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = ListenAddr::Unix(dir.path().join("first.sock"));
        let second = ListenAddr::Unix(dir.path().join("no-such-dir/second.sock"));
        let wanted = [(&first, Transport::FastCgi), (&second, Transport::Http)];
        let err = bind_all(Vec::new(), wanted, &BindOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(
            !dir.path().join("first.sock").exists(),
            "first.sock left behind"
        );
        // Both bound: both kept, each tagged with its transport.
        let second = ListenAddr::Unix(dir.path().join("second.sock"));
        let wanted = [(&first, Transport::FastCgi), (&second, Transport::Http)];
        let bound = bind_all(Vec::new(), wanted, &BindOptions::default()).unwrap();
        let tags: Vec<_> = bound.iter().map(|l| l.transport).collect();
        assert_eq!(tags, [Some(Transport::FastCgi), Some(Transport::Http)]);
    }

    #[test]
    fn regular_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let err = bind_unix(&path, &BindOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a socket"), "{err}");
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = bind_unix(
            Path::new("/nonexistent-dir-xyz/s.sock"),
            &BindOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
