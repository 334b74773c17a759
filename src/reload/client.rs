//! `myflask reload --pid PID`: asks a running server to reload and waits
//! for the outcome, so `ExecReload=` (and with it `systemctl reload`)
//! succeeds only once the new process serves, and fails when it could not
//! start. systemd 252 ends a reload job when the `ExecReload=` command
//! exits and takes its exit status as the result; a bare `kill -HUP` would
//! report success before anything happened.

use super::request::{DONE, FAILED, MAGIC};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How often we check that the server still exists while waiting.
const POLL: Duration = Duration::from_millis(200);

fn blocked_answers() -> libc::sigset_t {
    // SAFETY: building and installing a signal set; this command is single
    // threaded, so sigprocmask is the whole process's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, DONE);
        libc::sigaddset(&mut set, FAILED);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Waits for one answer from `pid`: `Some(Ok(new pid))`, `Some(Err(()))`
/// or `None` when `limit` passes first or `pid` exits.
fn wait_answer(set: &libc::sigset_t, pid: i32, limit: Duration) -> Option<Result<u32, ()>> {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let step = left.min(POLL);
        let ts = libc::timespec {
            tv_sec: step.as_secs() as libc::time_t,
            tv_nsec: step.subsec_nanos() as libc::c_long,
        };
        // SAFETY: siginfo is written by the kernel on success.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let sig = unsafe { libc::sigtimedwait(set, &mut info, &ts) };
        if sig > 0 && unsafe { info.si_pid() } == pid {
            let value = unsafe { info.si_value().sival_ptr as usize };
            return Some(if sig == DONE {
                Ok(value as u32)
            } else {
                Err(())
            });
        }
        if sig < 0 && !alive(pid) {
            return None;
        }
    }
    None
}

/// The whole command; exit 0 only when the new process serves.
pub fn run(pid: i32, limit: Duration) -> ExitCode {
    if pid <= 1 {
        eprintln!("myflask reload: --pid {pid} is not a server's pid");
        return ExitCode::FAILURE;
    }
    let set = blocked_answers();
    let v = libc::sigval {
        sival_ptr: MAGIC as *mut libc::c_void,
    };
    // SAFETY: sigqueue with a plain value.
    if unsafe { libc::sigqueue(pid, libc::SIGHUP, v) } != 0 {
        let e = std::io::Error::last_os_error();
        eprintln!("myflask reload: cannot signal PID {pid}: {e}");
        return ExitCode::FAILURE;
    }
    match wait_answer(&set, pid, limit) {
        Some(Ok(new)) => {
            println!("myflask reload: PID {new} serves now; PID {pid} drains and exits");
            ExitCode::SUCCESS
        }
        Some(Err(())) => {
            eprintln!(
                "myflask reload: failed; PID {pid} did not hand over (the reason is in its \
                 log: journalctl -u <service>, and in systemctl status)"
            );
            ExitCode::FAILURE
        }
        None if !alive(pid) => {
            eprintln!("myflask reload: PID {pid} exited before answering");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("myflask reload: no answer from PID {pid} within {limit:?}");
            ExitCode::FAILURE
        }
    }
}
