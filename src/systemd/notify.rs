//! The sd_notify protocol: READY, STATUS, WATCHDOG, STOPPING.
//!
//! Every call is a no-op without `NOTIFY_SOCKET`, so the same binary runs
//! under systemd, under `systemd-socket-activate`, and by hand. Failures to
//! notify are logged, never fatal: the service manager being unreachable is
//! its problem to report.
//!
//! Every `STATUS=` line ends with `; app NAME` (`crate::appname`): the unit
//! name need not be the app's, and the line's start stays the state
//! (`serving;`, `stopping (...)`, `failed to start: ...`) for scripts.

use sd_notify::NotifyState;
use std::time::Duration;

fn named(status: &str) -> String {
    format!("{status}; app {}", crate::appname::get())
}

fn send(states: &[NotifyState]) {
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

/// The watchdog period the service manager asked for (`WATCHDOG_USEC`),
/// if it is meant for this process (`WATCHDOG_PID`).
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}
