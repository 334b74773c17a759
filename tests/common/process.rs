//! Child processes a test starts (myflask, nginx, systemd tools): a clean
//! environment, stderr to a file, bounded waits, killed on drop; programs
//! run to completion on a given stdin; descendants adopted as subreaper (a
//! reload's successor); and finding the programs themselves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Calls `f` every 20 ms until it returns `Some`, for at most `limit`;
/// then panics naming `what`. For figures the server settles after the
/// client has its answer (a request is counted once its last byte is
/// written, which races with the client's next request).
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) for `child` to exit; past `limit` kills it and panics
/// with what it logged.
pub fn wait_child(mut child: Child, limit: Duration, log: impl Fn() -> String) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {limit:?}; log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Finds a program or fails the test with an explanation (tests never skip
/// silently: `.ci/run` installs what they need).
pub fn require_tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} is not installed; run tests/run.sh (it installs nginx, systemd and libfcgi-bin)"
    );
}

/// `myflask` (or any program) as a test starts it: stdin and stdout null,
/// none of the systemd variables of the environment the tests run in.
pub fn clean_cmd(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for v in [
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
        "INVOCATION_ID",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// A child process whose stderr goes to a file; killed on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub log_path: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stderr appended to `log_path`.
    pub fn spawn(cmd: &mut Command, log_path: &Path) -> Proc {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("log file");
        cmd.stderr(f);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Proc {
            child: Some(child),
            log_path: log_path.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log (or when
    /// the process exits first).
    pub fn wait_log(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    if self.log().contains(needle) {
                        return;
                    }
                    panic!(
                        "process exited ({st}) before logging {needle:?}; log:\n{}",
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no {needle:?} in the log within {limit:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits (bounded) for the exit status; kills and panics past `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.take().expect("process already reaped");
        wait_child(child, limit, || self.log())
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes this process the subreaper of its descendants: one whose parent
/// exits (a reload's successor, which the old server double-forks) becomes
/// our child, so the test can signal it, reap it and read its exit status.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// A descendant adopted through [`become_subreaper`], known by its pid
/// only; killed and reaped on drop if still running.
pub struct Adopted {
    pid: i32,
    reaped: bool,
}

impl Adopted {
    pub fn new(pid: i32) -> Adopted {
        Adopted { pid, reaped: false }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: a signal to a process not yet reaped, so its pid is not
        // reused.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// Waits (bounded) for the exit status; kills and panics past `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + limit;
        loop {
            let mut st = 0;
            // SAFETY: waitpid on our (adopted) child, without blocking.
            let r = unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG) };
            assert!(r >= 0, "waitpid {}: not our child", self.pid);
            if r == self.pid {
                self.reaped = true;
                return ExitStatus::from_raw(st);
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                panic!("PID {} did not exit within {limit:?}", self.pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        let mut st = 0;
        // SAFETY: kill only a child of ours that still runs (0 from
        // WNOHANG), then reap it.
        unsafe {
            if !self.reaped && libc::waitpid(self.pid, &mut st, libc::WNOHANG) == 0 {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, &mut st, 0);
            }
        }
    }
}

/// Runs `cmd` to completion with `input` on its stdin; (exit code, -1 for
/// a signal; what it wrote to stdout, then stderr).
pub fn pipe_through(cmd: &mut Command, input: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    // A program that exits without reading all of it is its own answer.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().expect("its output");
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), said)
}
