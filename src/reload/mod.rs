//! Reload without a stall: a new process of the binary now on disk takes
//! over the listening sockets while the old one drains.
//!
//! The old (main) process, on SIGHUP:
//! 1. sends `RELOADING=1` and starts the successor ([`spawn`]) on copies of
//!    its listening sockets, with a channel (a socket pair) to it;
//! 2. waits until the successor writes `READY` on the channel (it serves
//!    by then: its accept loops run), at most `--reload-timeout`;
//! 3. sends `MAINPID=<successor>` + `READY=1` to systemd in one datagram
//!    (the main process may name its successor under `NotifyAccess=main`),
//!    falls silent, writes `MAIN` on the channel, and returns: the server
//!    then drains exactly as on SIGTERM and exits 0;
//! 4. on failure (the successor exits, fails to exec, or is not ready in
//!    time, and then gets SIGTERM) it keeps serving, logs one line with
//!    the reason and sends `READY=1` with a `STATUS=` that says so.
//!
//! The successor notifies nothing until `MAIN` arrives (systemd would
//! refuse it), then speaks and pings the watchdog as the main process. It
//! keeps its channel open: end of file means its predecessor has exited,
//! which its own shutdown waits for (bounded), because with
//! `KillMode=mixed` systemd kills what is left of the service when the
//! main process exits.
//!
//! Rules: a SIGHUP during an attempt joins it (one successor, every
//! requester gets the outcome); a process that has handed over ignores
//! SIGHUP (the new main process is the one to reload), so reloads during a
//! drain start a further generation from the main process, and several
//! generations may drain at once. Reload needs sockets passed by systemd
//! (or `systemd-socket-activate`): sockets a process bound itself stay
//! tied to its arguments, and a successor would bind them again.

pub mod client;
pub mod request;
pub mod spawn;

use crate::systemd::listen::Listener;
use crate::systemd::notify::{self, HANDOVER_ENV};
use futures_util::FutureExt;
use spawn::Passed;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tracing::{error, info, warn};

/// How long a successor waits for `MAIN` after it wrote `READY`.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The old side: turns SIGHUPs into reload attempts.
pub struct Reloader {
    passed: Vec<Passed>,
    /// Why this process cannot reload, if it cannot.
    refusal: Option<String>,
    timeout: Duration,
    hup: Option<tokio::signal::unix::Signal>,
    /// The channel to the successor that took over, held until we exit.
    successor: Option<UnixStream>,
}

impl Reloader {
    /// Notes the sockets to pass on (call before the listeners move into
    /// the runtime). `enabled` installs the SIGHUP handler.
    pub fn new(listeners: &[Listener], timeout: Duration, enabled: bool) -> std::io::Result<Self> {
        let refusal = listeners.iter().find(|l| l.inherited.is_none()).map(|l| {
            format!(
                "{} was bound by this process, not passed by systemd; a new process \
                 would bind it again (restart instead)",
                l.address
            )
        });
        let passed = listeners
            .iter()
            .map(|l| Passed {
                fd: raw_fd(l),
                name: l.inherited.clone().unwrap_or_default(),
            })
            .collect();
        let hup = if enabled {
            Some(request::listen()?)
        } else {
            None
        };
        Ok(Reloader {
            passed,
            refusal,
            timeout,
            hup,
            successor: None,
        })
    }

    /// Serves reload requests until one hands over; returns the pid of the
    /// successor that is now the main process. Pending forever when
    /// signals are not handled (`enabled` was false).
    pub async fn handed_over(&mut self) -> u32 {
        loop {
            let got = match self.hup.as_mut() {
                Some(h) => h.recv().await.is_some(),
                None => false,
            };
            if !got {
                std::future::pending::<()>().await;
            }
            let mut attempt = Attempt { successor: None };
            let outcome = attempt.run(self).await;
            // SIGHUPs that arrived meanwhile joined this attempt.
            if let Some(h) = self.hup.as_mut() {
                while let Some(Some(())) = h.recv().now_or_never() {}
            }
            let waiting = request::take_waiting();
            match outcome {
                Ok((pid, channel)) => {
                    request::answer(&waiting, Some(pid));
                    self.successor = Some(channel);
                    if let Some(hup) = self.hup.take() {
                        tokio::spawn(refuse_reloads(hup, pid));
                    }
                    return pid;
                }
                Err(why) => {
                    error!(
                        "reload failed: {why}; this process (PID {}) keeps serving",
                        std::process::id()
                    );
                    notify::reload_failed(&format!("serving; reload failed: {why}"));
                    request::answer(&waiting, None);
                }
            }
        }
    }
}

/// After the hand-over, SIGHUPs are for the new main process: each is
/// logged and answered as failed at once.
async fn refuse_reloads(mut hup: tokio::signal::unix::Signal, successor: u32) {
    while hup.recv().await.is_some() {
        warn!(
            "reload request ignored: this process handed over to PID {successor} and drains; \
             reload the main process (systemctl reload, or myflask reload --pid {successor})"
        );
        request::answer(&request::take_waiting(), None);
    }
}

fn raw_fd(l: &Listener) -> RawFd {
    match &l.socket {
        crate::systemd::listen::Socket::Unix(s) => s.as_raw_fd(),
        crate::systemd::listen::Socket::Tcp(s) => s.as_raw_fd(),
    }
}

/// One reload attempt; dropping it before hand-over stops the successor.
struct Attempt {
    successor: Option<i32>,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(pid) = self.successor.take() {
            warn!("stopping PID {pid}, the successor of a failed reload (SIGTERM)");
            // SAFETY: a signal to the process we started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

impl Attempt {
    async fn run(&mut self, r: &Reloader) -> Result<(u32, UnixStream), String> {
        if let Some(why) = &r.refusal {
            return Err(why.clone());
        }
        let program = spawn::program_path().map_err(|e| format!("cannot find our program: {e}"))?;
        info!("reload requested: starting {}", program.display());
        notify::reloading(&format!("reloading: starting {}", program.display()));
        let passed = r.passed.clone();
        let p = program.clone();
        let channel = tokio::task::spawn_blocking(move || spawn::spawn(&p, &passed))
            .await
            .map_err(|e| format!("starting {}: {e}", program.display()))?
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        channel.set_nonblocking(true).map_err(|e| e.to_string())?;
        let channel = UnixStream::from_std(channel).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + r.timeout;
        let (read, mut write) = channel.into_split();
        let mut lines = BufReader::new(read).lines();
        let pid = self.expect_pid(&mut lines, deadline, &program).await?;
        self.successor = Some(pid);
        wait_ready(&mut lines, deadline, pid, r.timeout).await?;
        let me = std::process::id();
        notify::handed_over(
            pid as u32,
            &format!("serving; reloaded: PID {pid} took over from PID {me}"),
        );
        info!("reload: PID {pid} serves and is now the main process; this process drains");
        let _ = write.write_all(b"MAIN\n").await;
        self.successor = None;
        let channel = lines
            .into_inner()
            .into_inner()
            .reunite(write)
            .map_err(|e| e.to_string())?;
        Ok((pid as u32, channel))
    }

    /// The first line: `PID <n>` from the successor before exec, or the
    /// error of the step that failed.
    async fn expect_pid(
        &mut self,
        lines: &mut tokio::io::Lines<BufReader<OwnedReadHalf>>,
        deadline: Instant,
        program: &std::path::Path,
    ) -> Result<i32, String> {
        match next_line(lines, deadline).await? {
            Some(l) => match l.split_once(' ') {
                Some(("PID", n)) => n.parse().map_err(|_| format!("bad line {l:?}")),
                Some((step, n)) => {
                    let e = std::io::Error::from_raw_os_error(n.parse().unwrap_or(0));
                    Err(format!(
                        "{} failed for {}: {e}",
                        step.to_lowercase(),
                        program.display()
                    ))
                }
                None => Err(format!("bad line {l:?} from the new process")),
            },
            None => Err("the new process vanished before exec".into()),
        }
    }
}

async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<OwnedReadHalf>>,
    deadline: Instant,
) -> Result<Option<String>, String> {
    match tokio::time::timeout_at(deadline.into(), lines.next_line()).await {
        Ok(Ok(l)) => Ok(l),
        Ok(Err(e)) => Err(format!("reading from the new process: {e}")),
        Err(_) => Err("timeout".into()),
    }
}

async fn wait_ready(
    lines: &mut tokio::io::Lines<BufReader<OwnedReadHalf>>,
    deadline: Instant,
    pid: i32,
    timeout: Duration,
) -> Result<(), String> {
    match next_line(lines, deadline).await {
        Ok(Some(l)) if l == "READY" => Ok(()),
        Ok(Some(l)) if l.starts_with("EXEC ") => {
            let n = l[5..].parse().unwrap_or(0);
            Err(format!(
                "exec failed: {}",
                std::io::Error::from_raw_os_error(n)
            ))
        }
        Ok(Some(l)) => Err(format!("unexpected line {l:?} from PID {pid}")),
        Ok(None) => Err(format!(
            "new process PID {pid} exited before it was ready (its log says why)"
        )),
        Err(e) if e == "timeout" => Err(format!(
            "new process PID {pid} was not ready within {timeout:?} (--reload-timeout)"
        )),
        Err(e) => Err(e),
    }
}

/// The successor's side, kept until it exits: end of file on it means the
/// predecessor has exited.
pub struct Predecessor {
    channel: UnixStream,
}

impl Predecessor {
    /// Resolves when the predecessor has exited.
    pub async fn gone(mut self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut self.channel, &mut buf).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// The channel of a process started by a reload, if this is one.
fn handover_channel() -> anyhow::Result<Option<UnixStream>> {
    let Some(v) = std::env::var_os(HANDOVER_ENV) else {
        return Ok(None);
    };
    let what = format!("{HANDOVER_ENV}={v:?}");
    let fd: RawFd = v
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| anyhow::anyhow!("{what} is not an fd number"))?;
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        anyhow::bail!("{what} is not an open socket (set only by a reloading myflask)");
    }
    // SAFETY: the fd was passed to us for this purpose and nothing else
    // owns it; close-on-exec so that a later successor does not inherit it.
    let s = unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        std::os::unix::net::UnixStream::from_raw_fd(fd)
    };
    s.set_nonblocking(true)?;
    Ok(Some(UnixStream::from_std(s)?))
}

/// Announces readiness: `READY=1` to systemd, or, in a process started by
/// a reload, `READY` to the predecessor and then waits until it has made us
/// the main process.
pub async fn announce_ready(status: &str) -> anyhow::Result<Option<Predecessor>> {
    let Some(mut channel) = handover_channel()? else {
        notify::ready(status);
        return Ok(None);
    };
    channel.write_all(b"READY\n").await?;
    let mut line = Vec::new();
    let read = async {
        let mut b = [0u8; 1];
        while tokio::io::AsyncReadExt::read(&mut channel, &mut b).await? == 1 {
            if b[0] == b'\n' {
                return Ok::<_, std::io::Error>(true);
            }
            line.push(b[0]);
        }
        Ok(false)
    };
    match tokio::time::timeout(HANDSHAKE, read).await {
        Ok(Ok(true)) if line == b"MAIN" => {}
        _ => anyhow::bail!(
            "the process that started us (reload) did not hand over within {HANDSHAKE:?}"
        ),
    }
    notify::set_muted(false);
    notify::status(status);
    info!("took over from the previous process (reload); now the main process");
    Ok(Some(Predecessor { channel }))
}
