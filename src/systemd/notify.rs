//! The sd_notify protocol: READY, STATUS, WATCHDOG, STOPPING, and the
//! reload hand-over (RELOADING, MAINPID).
//!
//! Every call is a no-op without `NOTIFY_SOCKET`, so the same binary runs
//! under systemd, under `systemd-socket-activate`, and by hand. Failures to
//! notify are logged, never fatal: the service manager being unreachable is
//! its problem to report.
//!
//! Every `STATUS=` line ends with `; app NAME` (`crate::appname`): the unit
//! name need not be the app's, and the line's start stays the state
//! (`serving;`, `stopping (...)`, `failed to start: ...`) for scripts.
//!
//! Only the service's main process may notify (`NotifyAccess=main`);
//! systemd refuses anyone else's message with a warning in the journal. So
//! a process is *muted* while it is not the main process: a successor
//! started by a reload (it has [`HANDOVER_ENV`]) until its predecessor has
//! sent `MAINPID=` for it, and a predecessor from that moment on.

use sd_notify::NotifyState;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

fn named(status: &str) -> String {
    format!("{status}; app {}", crate::appname::get())
}

/// Set in the environment of a process a reload starts: the fd of its
/// channel to the process it takes over from (see `crate::reload`).
pub const HANDOVER_ENV: &str = "MYFLASK_RELOAD_FD";

const UNKNOWN: u8 = 0;
const SPEAKS: u8 = 1;
const MUTED: u8 = 2;
static VOICE: AtomicU8 = AtomicU8::new(UNKNOWN);

fn muted() -> bool {
    match VOICE.load(Ordering::Acquire) {
        UNKNOWN => {
            let m = std::env::var_os(HANDOVER_ENV).is_some();
            let _ = VOICE.compare_exchange(
                UNKNOWN,
                if m { MUTED } else { SPEAKS },
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            VOICE.load(Ordering::Acquire) == MUTED
        }
        v => v == MUTED,
    }
}

/// Stops (or resumes) all notifications of this process: it is no longer
/// (or now is) the service's main process.
pub fn set_muted(m: bool) {
    VOICE.store(if m { MUTED } else { SPEAKS }, Ordering::Release);
}

fn send(states: &[NotifyState]) {
    if muted() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify to NOTIFY_SOCKET failed: {e}");
    }
}

/// `READY=1` plus a first status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&named(status))]);
}

/// `STATUS=...`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(&named(status))]);
}

/// `WATCHDOG=1`.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `STOPPING=1` plus why.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(&named(status))]);
}

/// `RELOADING=1`: a reload began; systemd waits for the `READY=1` that
/// ends it (sent by [`handed_over`] or [`reload_failed`]). With
/// `MONOTONIC_USEC=`, which systemd 252 ignores and `Type=notify-reload`
/// (253 and later) requires.
pub fn reloading(status: &str) {
    let status = named(status);
    let mut states = vec![NotifyState::Reloading, NotifyState::Status(&status)];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// `MAINPID=<pid>` + `READY=1` in one datagram from the (still) main
/// process: systemd takes `pid` as the main process before it reads
/// `READY=1`, and from then on accepts messages from `pid` only. Mutes this
/// process afterwards.
pub fn handed_over(pid: u32, status: &str) {
    send(&[
        NotifyState::MainPid(pid),
        NotifyState::Ready,
        NotifyState::Status(&named(status)),
    ]);
    set_muted(true);
}

/// `READY=1` after a failed reload: this process still serves.
pub fn reload_failed(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&named(status))]);
}

/// The watchdog period the service manager asked for (`WATCHDOG_USEC`),
/// if it is meant for this process (`WATCHDOG_PID`).
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}
