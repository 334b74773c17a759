//! Reload requests arrive as SIGHUP; who asked, and the answer.
//!
//! A plain `kill -HUP` starts a reload and gets no answer (there is nobody
//! to tell reliably: its pid may be gone and reused). `myflask reload`
//! sends SIGHUP with `sigqueue(3)` and [`MAGIC`] as the value, so the
//! server knows its pid (`si_pid`) and answers it with SIGUSR1 (the
//! successor serves; the value is its pid) or SIGUSR2 (the reload failed;
//! the reason is in the server's log and `systemctl status`).

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The `sigqueue` value that marks a request expecting an answer.
pub const MAGIC: usize = 0x6d66_6c6b;
/// Answer: the reload succeeded (value: the new main pid).
pub const DONE: libc::c_int = libc::SIGUSR1;
/// Answer: the reload failed.
pub const FAILED: libc::c_int = libc::SIGUSR2;

/// Requesters waiting for an answer. A handful is plenty: systemd runs one
/// `ExecReload=` at a time; more (by hand) are answered when a slot frees.
static WAITING: [AtomicI32; 8] = [const { AtomicI32::new(0) }; 8];
static INSTALLED: OnceLock<io::Result<()>> = OnceLock::new();

/// Runs inside the signal handler: atomics only.
fn on_hup(info: &libc::siginfo_t) {
    if info.si_code != libc::SI_QUEUE {
        return;
    }
    // SAFETY: si_value and si_pid are valid for SI_QUEUE signals.
    let (value, pid) = unsafe { (info.si_value().sival_ptr as usize, info.si_pid()) };
    if value != MAGIC || pid <= 0 {
        return;
    }
    for slot in &WAITING {
        if slot
            .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

/// The SIGHUP stream, with requesters recorded (once per process).
pub fn listen() -> io::Result<Signal> {
    let installed = INSTALLED.get_or_init(|| {
        // SAFETY: `on_hup` only touches atomics (async-signal-safe).
        unsafe { signal_hook_registry::register_sigaction(libc::SIGHUP, on_hup) }.map(|_| ())
    });
    if let Err(e) = installed {
        return Err(io::Error::new(e.kind(), e.to_string()));
    }
    signal(SignalKind::hangup())
}

/// Takes every requester recorded so far.
pub fn take_waiting() -> Vec<i32> {
    WAITING
        .iter()
        .map(|s| s.swap(0, Ordering::AcqRel))
        .filter(|p| *p > 0)
        .collect()
}

/// Answers `pids`: `Some(new main pid)` for success, `None` for failure.
pub fn answer(pids: &[i32], outcome: Option<u32>) {
    let (sig, value) = match outcome {
        Some(pid) => (DONE, pid as usize),
        None => (FAILED, 0),
    };
    for &pid in pids {
        let v = libc::sigval {
            sival_ptr: value as *mut libc::c_void,
        };
        // SAFETY: sigqueue with a plain value.
        if unsafe { libc::sigqueue(pid, sig, v) } != 0 {
            tracing::warn!(
                "could not answer the reload request of PID {pid}: {}",
                io::Error::last_os_error()
            );
        }
    }
}
