//! Listen-queue depth of each listening socket: connections the kernel has
//! completed that myflask has not accepted yet, and the queue's limit.
//!
//! - TCP: `getsockopt(TCP_INFO)` on the listener; for a listening socket
//!   the kernel reports the accept queue in `tcpi_unacked` and its limit
//!   in `tcpi_sacked` (what `ss -lt` shows as Recv-Q / Send-Q).
//! - Unix: no socket option or ioctl reports it (`SIOCINQ` is `EINVAL` on
//!   a listener, `/proc/net/unix` has no queue column). Only netlink
//!   `sock_diag` does (`UDIAG_SHOW_RQLEN`, what `ss -lx` uses), looked up
//!   by the socket's inode. That works where the service may open an
//!   `AF_NETLINK` socket and shares the network namespace the socket was
//!   created in. The shipped unit has neither (`RestrictAddressFamilies=
//!   AF_UNIX`, `PrivateNetwork=yes`), so there the figure is absent and the
//!   reason is logged once; it is never reported as a made-up 0.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The sockets to report on: the server's listening fds by number, each
/// with the inode it had when recorded. The server closes its listeners
/// when it stops; a number reused by then names another inode and is not
/// read. (A duplicate fd would be simpler but would keep a stopped server's
/// listener open, queueing connections that should be refused.)
#[derive(Debug, Default)]
pub struct ListenQueues {
    sockets: Vec<(String, Kind, RawFd, u64)>,
    /// Why a queue is absent has been logged (once per process run).
    explained: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Unix,
}

/// One listener's reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReading {
    pub listener: String,
    /// `(queued, limit)`, or why it cannot be read here.
    pub depth: Result<(u64, u64), String>,
}

fn inode(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino as u64)
}

impl ListenQueues {
    /// Records each listener (call before the server takes them).
    pub fn new(listeners: &[crate::systemd::listen::Listener]) -> ListenQueues {
        use crate::systemd::listen::Socket;
        let mut sockets = Vec::new();
        for l in listeners {
            let (kind, fd) = match &l.socket {
                Socket::Tcp(s) => (Kind::Tcp, s.as_raw_fd()),
                Socket::Unix(s) => (Kind::Unix, s.as_raw_fd()),
            };
            if let Some(ino) = inode(fd) {
                sockets.push((l.address.clone(), kind, fd, ino));
            }
        }
        ListenQueues {
            sockets,
            ..ListenQueues::default()
        }
    }

    /// Reads every queue; the first time one cannot be read, says why.
    pub fn read(&self) -> Vec<QueueReading> {
        let readings = self.read_all();
        let absent = readings
            .iter()
            .find_map(|r| Some((&r.listener, r.depth.as_ref().err()?)));
        if let Some((listener, why)) = absent {
            if !self
                .explained
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::info!(
                    listener = %listener,
                    "/metrics reports no listen queue for {listener}: {why}"
                );
            }
        }
        readings
    }

    fn read_all(&self) -> Vec<QueueReading> {
        self.sockets
            .iter()
            .map(|(name, kind, fd, ino)| QueueReading {
                listener: name.clone(),
                depth: match (inode(*fd) == Some(*ino), kind) {
                    (false, _) => Err("the listener is closed".into()),
                    (true, Kind::Tcp) => tcp_queue(*fd),
                    (true, Kind::Unix) => unix_queue(*fd, *ino),
                },
            })
            .collect()
    }
}

fn tcp_queue(fd: RawFd) -> Result<(u64, u64), String> {
    // SAFETY: getsockopt into a zeroed tcp_info of the size we pass.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(format!("TCP_INFO: {}", std::io::Error::last_os_error()));
    }
    Ok((u64::from(info.tcpi_unacked), u64::from(info.tcpi_sacked)))
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;
const TCP_LISTEN_STATE: u32 = 10;

/// The `SOCK_DIAG_BY_FAMILY` request for one unix socket, by inode, with
/// no cookie (all ones).
fn diag_request(ino: u32) -> [u8; 40] {
    let mut m = [0u8; 40];
    m[0..4].copy_from_slice(&40u32.to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m[16] = libc::AF_UNIX as u8;
    m[20..24].copy_from_slice(&(1u32 << TCP_LISTEN_STATE).to_ne_bytes());
    m[24..28].copy_from_slice(&ino.to_ne_bytes());
    m[28..32].copy_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes());
    m[32..40].fill(0xff);
    m
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Reads `(queued, limit)` out of the kernel's answer: an `NLMSG_ERROR`,
/// or a `unix_diag_msg` (16 bytes) followed by attributes.
fn parse_diag_reply(b: &[u8]) -> Result<(u64, u64), String> {
    let kind = u16_at(b, 4).ok_or("short netlink reply")?;
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = u32_at(b, 16).map(|e| -(e as i32)).unwrap_or(0);
        return Err(format!(
            "sock_diag: {} (the socket lives in another network namespace?)",
            std::io::Error::from_raw_os_error(errno)
        ));
    }
    // unix_diag_msg: family, type, state, pad, inode, cookie.
    if b.get(16 + 2).map(|&s| u32::from(s)) != Some(TCP_LISTEN_STATE) {
        return Err("sock_diag: not a listening socket".into());
    }
    let end = (u32_at(b, 0).ok_or("short netlink reply")? as usize).min(b.len());
    let mut at = 16 + 16;
    while at + 4 <= end {
        let len = usize::from(u16_at(b, at).ok_or("bad attribute")?);
        let ty = u16_at(b, at + 2).ok_or("bad attribute")?;
        if len < 4 {
            break;
        }
        if ty == UNIX_DIAG_RQLEN {
            let q = u32_at(b, at + 4).ok_or("short UNIX_DIAG_RQLEN")?;
            let lim = u32_at(b, at + 8).ok_or("short UNIX_DIAG_RQLEN")?;
            return Ok((u64::from(q), u64::from(lim)));
        }
        at += (len + 3) & !3;
    }
    Err("sock_diag reply without UNIX_DIAG_RQLEN".into())
}

fn unix_queue(_fd: RawFd, ino: u64) -> Result<(u64, u64), String> {
    let ino = u32::try_from(ino).map_err(|_| "inode beyond 32 bits".to_string())?;
    // SAFETY: a plain socket(2) call; the fd is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(format!(
            "no netlink sock_diag here ({}): a unix socket's queue is readable only through it",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let nl = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let req = diag_request(ino);
    // SAFETY: send/recv on our own socket with buffers of the given sizes;
    // a zeroed sockaddr_nl addresses the kernel.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    let sent = unsafe {
        libc::sendto(
            nl.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(format!(
            "sock_diag send: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut buf = [0u8; 1024];
    // The kernel answers before sendto returns; a timeout guards anyway.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    unsafe {
        libc::setsockopt(
            nl.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(format!(
            "sock_diag recv: {}",
            std::io::Error::last_os_error()
        ));
    }
    parse_diag_reply(&buf[..n as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills a listener's queue with `n` connections nobody accepts.
    fn queue_of<L: AsRawFd>(l: &L) -> (u64, u64) {
        let fd = l.as_raw_fd();
        let ino = inode(fd).expect("fstat");
        let kind = if tcp_queue(fd).is_ok() {
            Kind::Tcp
        } else {
            Kind::Unix
        };
        let q = ListenQueues {
            sockets: vec![("l".into(), kind, fd, ino)],
            ..ListenQueues::default()
        };
        q.read()
            .remove(0)
            .depth
            .expect("readable outside a sandbox")
    }

    #[test]
    fn tcp_listener_reports_unaccepted_connections() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        assert_eq!(queue_of(&l).0, 0);
        let held: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let (queued, limit) = queue_of(&l);
        assert_eq!(queued, 3);
        assert!(limit >= 3, "limit {limit}");
        drop(l.accept().expect("accept"));
        assert_eq!(queue_of(&l).0, 2);
        drop(held);
    }

    #[test]
    fn unix_listener_reports_unaccepted_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert_eq!(queue_of(&l).0, 0);
        let held: Vec<_> = (0..2)
            .map(|_| std::os::unix::net::UnixStream::connect(&path).expect("connect"))
            .collect();
        let (queued, limit) = queue_of(&l);
        assert_eq!(queued, 2);
        assert!(limit >= 2, "limit {limit}");
        drop(held);
    }

    #[test]
    fn a_socket_sock_diag_cannot_find_is_an_error_not_zero() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let ino = inode(a.as_raw_fd()).expect("fstat");
        assert!(unix_queue(a.as_raw_fd(), ino).is_err(), "not a listener");
        let closed = ListenQueues {
            sockets: vec![("l".into(), Kind::Unix, a.as_raw_fd(), ino + 1)],
            ..ListenQueues::default()
        };
        assert!(closed.read()[0].depth.is_err(), "another inode");
        assert!(parse_diag_reply(&[0u8; 3]).is_err());
    }
}
