//! The server under test: `myflask serve` started from the built binary on
//! a socket in a temporary directory, its stderr captured to a file, and
//! `myflask <args>` run to completion.

use super::measure::rss_kib;
use super::process::{clean_cmd, wait_child};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_myflask");

/// `myflask serve --listen unix:<sock> <extra...>` with `env` on top of a
/// clean environment ([`clean_cmd`]); stderr is the caller's to direct.
pub fn serve_cmd(sock: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = clean_cmd(BIN);
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A running `myflask serve`.
pub struct Server {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    stderr_path: PathBuf,
}

impl Server {
    /// Starts `myflask serve --listen unix:<tmp>/fcgi.sock <extra...>` with
    /// logs on stderr captured to a file.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_env(extra, &[])
    }

    /// Like [`Server::start`], with `env` added to the server's environment.
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("fcgi.sock");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = serve_cmd(&sock, extra, env)
            .stderr(stderr)
            .spawn()
            .expect("spawn myflask");
        let s = Server {
            child: Some(child),
            dir,
            sock,
            stderr_path,
        };
        s.wait_ready();
        s
    }

    /// Waits until the log says "ready" (every listener serving).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.stderr().contains(" ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not become ready; stderr:\n{}", self.stderr());
    }

    pub fn addr(&self) -> myflask::addr::ListenAddr {
        myflask::addr::ListenAddr::Unix(self.sock.clone())
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(40))
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.take().expect("server already stopped");
        wait_child(child, limit, || self.stderr())
    }

    /// RSS of the server process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `myflask <args>` to completion and returns (status, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run myflask");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
