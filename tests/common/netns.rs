//! Private networks for tests that need more than one address: network
//! namespaces joined by veth pairs to a bridge that lives in a namespace
//! too, so no packet touches the machine's own network. Needs root.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `ip ARGS`; panics with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into network namespace `ns` (for good).
pub fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("opening netns {ns}: {e}"));
    // SAFETY: setns on an fd we own; it changes only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread inside `ns`: sockets it creates and processes it
/// starts belong to that namespace.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .expect("thread in netns")
    })
}

/// Whether this process may create network namespaces; when not, prints
/// why `test` is skipped (CI runs as root).
pub fn can_build_lans(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{test}: skipped, network namespaces need root (CI runs as root)");
    }
    root
}

/// The namespaces of one private network; deleted on drop, also when a
/// check fails.
pub struct Lan {
    tag: String,
    lan: String,
    hosts: Vec<String>,
}

/// Tells apart the networks of one test process (tests run in parallel).
static LANS: AtomicU32 = AtomicU32::new(0);

impl Lan {
    /// A bridge in its own namespace, and one namespace per
    /// (name, address) plugged into it with a veth pair; each has its
    /// address on `eth0` (a /24) and `lo` up.
    pub fn build(members: &[(&str, &str)]) -> Lan {
        let n = LANS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("mfh{}-{n}", std::process::id());
        let lan = Lan {
            lan: format!("{tag}-lan"),
            hosts: members.iter().map(|(m, _)| format!("{tag}-{m}")).collect(),
            tag,
        };
        ip(&["netns", "add", &lan.lan]);
        ip(&["-n", &lan.lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan.lan, "link", "set", "br0", "up"]);
        for (ns, (short, addr)) in lan.hosts.iter().zip(members) {
            plug(&lan.lan, ns, short, addr);
        }
        lan
    }

    /// The namespace of member `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.tag)
    }
}

/// Namespace `ns`, with `addr` on a veth pair whose other end (`v-SHORT`)
/// is on the bridge in `lan`.
fn plug(lan: &str, ns: &str, short: &str, addr: &str) {
    let port = format!("v-{short}");
    ip(&["netns", "add", ns]);
    ip(&[
        "-n", lan, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ]);
    ip(&["-n", lan, "link", "set", &port, "master", "br0", "up"]);
    let cidr = format!("{addr}/24");
    ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
    ip(&["-n", ns, "link", "set", "eth0", "up"]);
    ip(&["-n", ns, "link", "set", "lo", "up"]);
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.lan]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
