//! Why `myflask request` could not connect, said in an operator's terms
//! rather than as a bare OS error. The three failures this covers are the
//! ones deployments hit:
//! - a unix socket that does not exist (under /tmp or /var/tmp, the
//!   PrivateTmp explanation `serve` also logs);
//! - permission denied: the socket's (or a blocking directory's) owner,
//!   group and mode beside the caller's user and groups, and what nginx's
//!   `www-data` would need;
//! - nothing listening on an existing socket (connection refused).
//!
//! Every other error is reported as it is, with the address.

use crate::addr::ListenAddr;
use crate::systemd::listen::private_tmp_hint;
use std::ffi::CStr;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The message for a failed connect to `addr`.
pub fn connect_error(addr: &ListenAddr, e: &io::Error) -> String {
    let head = format!("cannot connect to {addr}: {e}");
    let why = match (addr, e.kind()) {
        (ListenAddr::Unix(p), io::ErrorKind::NotFound) => missing(p),
        (ListenAddr::Unix(p), io::ErrorKind::PermissionDenied) => denied(p),
        (ListenAddr::Unix(p), io::ErrorKind::ConnectionRefused) => refused(p),
        (ListenAddr::Tcp(_), io::ErrorKind::ConnectionRefused) => {
            "nothing is listening on that address and port".to_string()
        }
        _ => return head,
    };
    format!("{head}\n{why}")
}

fn missing(path: &Path) -> String {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let mut why = match dir {
        Some(d) if !d.exists() => format!("{} does not exist (nor its directory)", path.display()),
        _ => format!("{} does not exist", path.display()),
    };
    match private_tmp_hint(path) {
        // A server with PrivateTmp= made it in its own /tmp, not this one.
        Some(hint) => why = format!("{why} in this /tmp; {hint}"),
        None => why.push_str(
            ": is the server running, and is this the path it (or its .socket unit) listens on?",
        ),
    }
    why
}

fn refused(path: &Path) -> String {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if !m.file_type().is_socket() => format!(
            "{} is not a socket: it is {}",
            path.display(),
            owner_and_mode(path)
        ),
        _ => "nothing is listening on it: the socket file exists but no process accepts on it \
              (the server has stopped, or died and left the file behind; \
              `systemctl list-sockets` shows which unit owns a systemd socket)"
            .to_string(),
    }
}

/// Names what refuses the caller: the first directory it may not search,
/// else the socket it may not write to; then whether nginx's user could.
fn denied(path: &Path) -> String {
    let me = Caller::current();
    let blocked = dirs_above(path).into_iter().find(|d| !may(d, libc::X_OK));
    let mut why = match blocked {
        Some(dir) => format!(
            "the directory {} is {}, which does not let you search it (you are {me}); \
             connecting needs search (x) permission on every directory above the socket",
            dir.display(),
            owner_and_mode(dir)
        ),
        None => format!(
            "the socket is {}, and you are {me}; connecting needs write permission on the \
             socket, so connect as its owner or as a member of its group",
            owner_and_mode(path)
        ),
    };
    why.push_str(&nginx_view(path));
    why
}

/// The directories above `path`, outermost first.
fn dirs_above(path: &Path) -> Vec<&Path> {
    let mut dirs: Vec<&Path> = path
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
        .collect();
    dirs.reverse();
    dirs
}

/// Whether nginx's usual user, www-data, could connect, and if not what
/// would let it.
fn nginx_view(path: &Path) -> String {
    let Some(www) = Caller::named("www-data") else {
        return ". nginx's workers usually run as www-data, which does not exist here".into();
    };
    if let Some(dir) = dirs_above(path).into_iter().find(|d| !www.granted(d, 1)) {
        return format!(
            ". nginx's workers (www-data) could not connect either: they cannot search {}",
            dir.display()
        );
    }
    if www.granted(path, 2) {
        return ". nginx's workers (www-data) can connect".into();
    }
    ". nginx's workers (www-data) could not connect either: the packaged socket is \
     root:www-data 0660 (SocketGroup=www-data and SocketMode=0660 in the .socket unit, or \
     --socket-group www-data when myflask binds the socket itself)"
        .into()
}

/// Whether the caller's effective ids grant `mode` (X_OK, W_OK) on `p`.
fn may(p: &Path, mode: libc::c_int) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return true;
    };
    // SAFETY: a valid NUL-terminated path; faccessat only reads it.
    unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), mode, libc::AT_EACCESS) == 0 }
}

/// "owned by root:www-data with mode 0660 (srw-rw----)", or why not known.
fn owner_and_mode(p: &Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) => format!(
            "owned by {}:{} with mode {:04o} ({})",
            user_name(m.uid()),
            group_name(m.gid()),
            m.mode() & 0o7777,
            mode_string(m.mode())
        ),
        Err(e) => format!("not readable to you ({e})"),
    }
}

/// `ls -l` style: type letter and rwx triplets.
fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFSOCK => 's',
        libc::S_IFDIR => 'd',
        libc::S_IFREG => '-',
        libc::S_IFLNK => 'l',
        _ => '?',
    };
    let mut s = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// The caller's effective user and groups.
struct Caller {
    uid: libc::uid_t,
    groups: Vec<libc::gid_t>,
}

impl Caller {
    /// The user `name` with its groups, if it exists.
    fn named(name: &str) -> Option<Caller> {
        let cname = std::ffi::CString::new(name).ok()?;
        let mut buf = vec![0 as libc::c_char; 4096];
        // SAFETY: getpwnam_r fills `pw` from `buf`; getgrouplist fills at
        // most `n` entries and updates `n` (retried once with the size it
        // asks for).
        unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut out = std::ptr::null_mut();
            let rc = libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            );
            if rc != 0 || out.is_null() {
                return None;
            }
            let mut n: libc::c_int = 64;
            let mut groups = vec![0 as libc::gid_t; n as usize];
            if libc::getgrouplist(cname.as_ptr(), pw.pw_gid, groups.as_mut_ptr(), &mut n) < 0 {
                groups = vec![0; n.max(0) as usize];
                libc::getgrouplist(cname.as_ptr(), pw.pw_gid, groups.as_mut_ptr(), &mut n);
            }
            groups.truncate(n.max(0) as usize);
            Some(Caller {
                uid: pw.pw_uid,
                groups,
            })
        }
    }

    /// Whether the mode bits of `p` grant this user `bit` (1 = x, 2 = w),
    /// as the kernel checks them: owner, else group, else others.
    fn granted(&self, p: &Path, bit: u32) -> bool {
        let Ok(m) = std::fs::metadata(p) else {
            return false;
        };
        let shift = if self.uid == 0 {
            return true;
        } else if m.uid() == self.uid {
            6
        } else if self.groups.contains(&m.gid()) {
            3
        } else {
            0
        };
        (m.mode() >> shift) & bit != 0
    }

    fn current() -> Caller {
        // SAFETY: plain id getters; getgroups(0, NULL) returns the count,
        // then fills a buffer of exactly that size.
        let (uid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) }.max(0);
        let mut groups = vec![0; n as usize];
        let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) }.max(0);
        groups.truncate(got as usize);
        groups.retain(|g| *g != egid);
        groups.insert(0, egid);
        Caller { uid, groups }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| format!("{} ({g})", group_name(*g)))
            .collect();
        write!(
            f,
            "{}, uid {}, in groups {}",
            user_name(self.uid),
            self.uid,
            groups.join(", ")
        )
    }
}

/// The user's name, or its number.
fn user_name(uid: libc::uid_t) -> String {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: getpwuid_r writes into `pw` and `buf` (of the given length)
    // and sets `out` to &pw or NULL; the name is read before both go.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) == 0
            && !out.is_null()
        {
            return CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned();
        }
    }
    uid.to_string()
}

/// The group's name, or its number.
fn group_name(gid: libc::gid_t) -> String {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: as in user_name, with getgrgid_r.
    unsafe {
        let mut gr: libc::group = std::mem::zeroed();
        let mut out = std::ptr::null_mut();
        if libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) == 0
            && !out.is_null()
        {
            return CStr::from_ptr(gr.gr_name).to_string_lossy().into_owned();
        }
    }
    gid.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_string(libc::S_IFSOCK | 0o660), "srw-rw----");
        assert_eq!(mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(libc::S_IFREG | 0o640), "-rw-r-----");
    }

    #[test]
    fn names_of_ids_that_always_exist() {
        assert_eq!(user_name(0), "root");
        assert_eq!(group_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "4000000000");
    }

    #[test]
    fn other_errors_are_reported_as_they_are() {
        let addr: ListenAddr = "unix:/run/x.sock".parse().expect("addr");
        let e = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(
            connect_error(&addr, &e),
            format!("cannot connect to {addr}: {e}")
        );
    }
}
