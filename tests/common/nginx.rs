//! A real nginx in front of the server under test: its own prefix
//! directory, the process-level settings a test needs (no daemon, one
//! worker, logs and temp files under the prefix), the test's own `http { }`
//! directives, optionally inside a network namespace; stopped on drop.

use super::netns::in_netns;
use super::process::{Proc, clean_cmd, require_tool};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A running nginx; stopped (SIGTERM, bounded wait) on drop so that no
/// worker outlives the test.
pub struct Nginx {
    pub proc: Proc,
    pub dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with prefix `dir` (relative `include`s resolve there)
    /// and `http` inside its `http { }` block, in network namespace `ns`
    /// when given; returns once `listen` accepts connections.
    pub fn start(dir: &Path, http: &str, listen: SocketAddr, ns: Option<&str>) -> Nginx {
        let nginx = require_tool("nginx");
        for sub in ["logs", "client_body", "fastcgi", "proxy", "scgi", "uwsgi"] {
            std::fs::create_dir_all(dir.join(sub)).expect("nginx directories");
        }
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(dir, http)).expect("nginx.conf");
        let spawn = || {
            let mut cmd = clean_cmd(&nginx);
            cmd.arg("-p").arg(dir).arg("-c").arg(&conf);
            cmd.arg("-e").arg(dir.join("logs/error.log"));
            Proc::spawn(&mut cmd, &dir.join("nginx.stderr"))
        };
        let proc = match ns {
            Some(ns) => in_netns(ns, spawn),
            None => spawn(),
        };
        let mut n = Nginx {
            proc,
            dir: dir.to_path_buf(),
        };
        n.wait_listening(listen, ns);
        n
    }

    fn wait_listening(&mut self, listen: SocketAddr, ns: Option<&str>) {
        let connect = || TcpStream::connect(listen).is_ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ns.map_or_else(connect, |ns| in_netns(ns, connect)) {
            assert!(
                self.proc.running() && Instant::now() < deadline,
                "nginx did not listen on {listen}; stderr:\n{}\nerror.log:\n{}",
                self.proc.log(),
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }

    /// Lines of the error log at level error or worse.
    pub fn errors(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| {
                ["[error]", "[crit]", "[alert]", "[emerg]"]
                    .iter()
                    .any(|lvl| l.contains(lvl))
            })
            .map(str::to_string)
            .collect()
    }
}

/// The whole nginx.conf: process settings, then `http` after the paths
/// every test shares. The access log names the client, the upstream
/// address(es) tried and their statuses, for reading a failure.
fn config(dir: &Path, http: &str) -> String {
    let d = dir.display();
    // As root, workers run as root so they reach myflask's 0660 sockets.
    // SAFETY: geteuid has no preconditions.
    let user = match unsafe { libc::geteuid() } {
        0 => "user root;",
        _ => "",
    };
    format!(
        "{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 4096; }}
http {{
    log_format mf '$remote_addr \"$request\" $status [$upstream_addr] [$upstream_status]';
    access_log {d}/logs/access.log mf;
    client_body_temp_path {d}/client_body;
    fastcgi_temp_path {d}/fastcgi;
    proxy_temp_path {d}/proxy;
    scgi_temp_path {d}/scgi;
    uwsgi_temp_path {d}/uwsgi;
{http}
}}
"
    )
}

impl Drop for Nginx {
    /// SIGTERM lets the master stop its workers; a SIGKILL alone would
    /// orphan them.
    fn drop(&mut self) {
        if self.proc.running() {
            self.proc.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.proc.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
