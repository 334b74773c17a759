//! Starting a successor: the binary now on disk (the path we were started
//! from, so a reload after `dpkg -i` runs the new version), with our
//! arguments and environment, the listening sockets at fds 3.. as
//! sd_listen_fds(3) describes, and its end of the hand-over channel after
//! them (its number in [`HANDOVER_ENV`]).
//!
//! The process is forked twice and the middle one exits at once, so the
//! successor is the service manager's child, not ours (PID 1 adopts
//! orphans): once it is the main process systemd supervises it as its own
//! child, sees its exit status, and it never becomes our zombie.
//!
//! Between fork and exec only async-signal-safe calls are allowed (another
//! thread may hold the allocator's lock at the moment of the fork), so all
//! memory is prepared before: the child writes its pid's digits into
//! buffers reserved for `LISTEN_PID=` and `WATCHDOG_PID=`, moves fds with
//! dup2, writes one line to the channel and calls execve.

use crate::systemd::notify::HANDOVER_ENV;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// A listening socket to pass on, with its `LISTEN_FDNAMES` entry.
#[derive(Debug, Clone)]
pub struct Passed {
    pub fd: RawFd,
    pub name: String,
}

/// Variables we set for the successor (any inherited value is dropped).
const OURS: [&str; 5] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "WATCHDOG_PID",
    HANDOVER_ENV,
];
/// Room for a pid's digits and the terminating NUL.
const PID_ROOM: usize = 21;

/// The program to run: argv[0] as it was resolved when we started, read
/// again now. An absolute path is used as is; a relative one against our
/// working directory; a bare name through `PATH`.
pub fn program_path() -> io::Result<PathBuf> {
    let arg0 = std::env::args_os()
        .next()
        .ok_or_else(|| io::Error::other("argv[0] is empty"))?;
    let p = Path::new(&arg0);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    if arg0.as_bytes().contains(&b'/') {
        return Ok(std::env::current_dir()?.join(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| is_executable(c))
        .ok_or_else(|| io::Error::other(format!("{arg0:?} is not found in PATH")))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::other("an argument or variable contains a NUL byte"))
}

/// A NUL-terminated `NAME=` followed by room for a pid.
fn pid_slot(name: &str) -> Box<[u8]> {
    let mut v = format!("{name}=").into_bytes();
    v.resize(v.len() + PID_ROOM, 0);
    v.into_boxed_slice()
}

/// Everything the child needs, allocated before the fork.
struct Prepared {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<Box<[u8]>>,
    envp: Vec<*const libc::c_char>,
    /// Where the child writes its pid (into `env`'s buffers).
    pid_slots: Vec<*mut u8>,
    /// Copies of the sockets, numbered above the range they move to.
    sources: Vec<OwnedFd>,
    channel: OwnedFd,
    empty_mask: libc::sigset_t,
}

fn dup_above(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on an fd we hold; the new fd is ours to own.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

impl Prepared {
    fn new(program: &Path, passed: &[Passed], channel: &UnixStream) -> io::Result<Prepared> {
        let n = passed.len() as RawFd;
        // Above 3..=3+n, so no dup2 in the child overwrites a source.
        let min = 3 + n + 1;
        let sources = passed
            .iter()
            .map(|p| dup_above(p.fd, min))
            .collect::<io::Result<Vec<_>>>()?;
        let channel = dup_above(channel.as_raw_fd(), min)?;
        let argv: Vec<CString> = std::env::args_os()
            .map(|a| cstring(a.as_bytes()))
            .collect::<io::Result<_>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env = environment(passed)?;
        let mut pid_slots = vec![];
        for e in env.iter_mut() {
            if e.starts_with(b"LISTEN_PID=") || e.starts_with(b"WATCHDOG_PID=") {
                let at = e.iter().position(|b| *b == b'=').unwrap_or(0) + 1;
                pid_slots.push(e[at..].as_mut_ptr());
            }
        }
        let mut envp: Vec<_> = env.iter().map(|e| e.as_ptr().cast()).collect();
        envp.push(std::ptr::null());
        // SAFETY: sigemptyset initialises the set it is given.
        let mut empty_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe { libc::sigemptyset(&mut empty_mask) };
        Ok(Prepared {
            path: cstring(program.as_os_str().as_bytes())?,
            _argv: argv,
            argv_ptrs,
            _env: env,
            envp,
            pid_slots,
            sources,
            channel,
            empty_mask,
        })
    }
}

/// Our environment without [`OURS`], plus the successor's values of them.
fn environment(passed: &[Passed]) -> io::Result<Vec<Box<[u8]>>> {
    let mut env = vec![];
    let mut watchdog = false;
    for (k, v) in std::env::vars_os() {
        if OURS.iter().any(|o| OsStr::new(o) == k) {
            continue;
        }
        watchdog |= k == "WATCHDOG_USEC";
        let mut kv = k;
        kv.push("=");
        kv.push(v);
        env.push(
            cstring(kv.as_bytes())?
                .into_bytes_with_nul()
                .into_boxed_slice(),
        );
    }
    let names: Vec<&str> = passed.iter().map(|p| p.name.as_str()).collect();
    for kv in [
        format!("LISTEN_FDS={}", passed.len()),
        format!("LISTEN_FDNAMES={}", names.join(":")),
        format!("{HANDOVER_ENV}={}", 3 + passed.len()),
    ] {
        env.push(
            cstring(kv.as_bytes())?
                .into_bytes_with_nul()
                .into_boxed_slice(),
        );
    }
    env.push(pid_slot("LISTEN_PID"));
    if watchdog {
        // WATCHDOG_USEC applies to the main process, which it will be.
        env.push(pid_slot("WATCHDOG_PID"));
    }
    Ok(env)
}

/// Decimal digits of `n` into `buf`, returning how many (no allocation).
fn digits(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let mut tmp = [0u8; 20];
    let mut len = 0;
    loop {
        tmp[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = tmp[len - 1 - i];
    }
    len
}

/// Writes `WORD <n>\n` to `fd` (async-signal-safe).
fn report(fd: RawFd, word: &[u8], n: u64) {
    let mut line = [0u8; 40];
    let w = word.len().min(16);
    line[..w].copy_from_slice(&word[..w]);
    line[w] = b' ';
    let mut d = [0u8; 20];
    let k = digits(n, &mut d);
    line[w + 1..w + 1 + k].copy_from_slice(&d[..k]);
    line[w + 1 + k] = b'\n';
    // SAFETY: write(2) from a buffer on our stack.
    unsafe { libc::write(fd, line.as_ptr().cast(), w + 2 + k) };
}

fn errno() -> u64 {
    // SAFETY: reading this thread's errno.
    unsafe { *libc::__errno_location() as u64 }
}

/// The successor, between fork and exec. Only async-signal-safe calls.
unsafe fn exec_child(p: &Prepared) -> ! {
    let chan = p.channel.as_raw_fd();
    unsafe {
        let pid = libc::getpid() as u64;
        let mut d = [0u8; 20];
        let k = digits(pid, &mut d);
        for slot in &p.pid_slots {
            std::ptr::copy_nonoverlapping(d.as_ptr(), *slot, k);
            *slot.add(k) = 0;
        }
        for (i, src) in p.sources.iter().enumerate() {
            if libc::dup2(src.as_raw_fd(), 3 + i as RawFd) < 0 {
                report(chan, b"DUP", errno());
                libc::_exit(127);
            }
        }
        let target = 3 + p.sources.len() as RawFd;
        if libc::dup2(chan, target) < 0 {
            report(chan, b"DUP", errno());
            libc::_exit(127);
        }
        // The signal mask survives exec; a Rust runtime ignores SIGPIPE.
        libc::sigprocmask(libc::SIG_SETMASK, &p.empty_mask, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        report(target, b"PID", pid);
        libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.envp.as_ptr());
        report(target, b"EXEC", errno());
        libc::_exit(127);
    }
}

/// Starts the successor; returns our end of its channel. Blocks for the
/// moment the middle process takes to fork and exit.
pub fn spawn(program: &Path, passed: &[Passed]) -> io::Result<UnixStream> {
    let (ours, theirs) = UnixStream::pair()?;
    let p = Prepared::new(program, passed, &theirs)?;
    drop(theirs);
    // SAFETY: the child branches call only async-signal-safe functions
    // (see exec_child) and leave with execve or _exit.
    let middle = unsafe { libc::fork() };
    if middle < 0 {
        return Err(io::Error::last_os_error());
    }
    if middle == 0 {
        unsafe {
            match libc::fork() {
                -1 => {
                    report(p.channel.as_raw_fd(), b"FORK", errno());
                    libc::_exit(1)
                }
                0 => exec_child(&p),
                _ => libc::_exit(0),
            }
        }
    }
    drop(p);
    let mut status = 0;
    // SAFETY: waiting for our own child, which exits at once.
    while unsafe { libc::waitpid(middle, &mut status, 0) } < 0 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_decimal() {
        let mut d = [0u8; 20];
        for n in [0u64, 7, 10, 4194304, u64::MAX] {
            let k = digits(n, &mut d);
            assert_eq!(&d[..k], n.to_string().as_bytes());
        }
    }

    #[test]
    fn environment_replaces_ours() {
        let passed = [
            Passed {
                fd: 3,
                name: "fastcgi".into(),
            },
            Passed {
                fd: 4,
                name: "http".into(),
            },
        ];
        let env = environment(&passed).unwrap();
        let text: Vec<String> = env
            .iter()
            .map(|e| String::from_utf8_lossy(&e[..e.len() - 1]).into_owned())
            .collect();
        assert!(text.contains(&"LISTEN_FDS=2".to_string()), "{text:?}");
        assert!(text.contains(&"LISTEN_FDNAMES=fastcgi:http".to_string()));
        assert!(text.contains(&format!("{HANDOVER_ENV}=5")));
        assert_eq!(
            text.iter().filter(|t| t.starts_with("LISTEN_PID=")).count(),
            1
        );
    }
}
