//! The shipped example site (packaging/debian/nginx/site-example.conf, with
//! the location and upstream snippets), rendered by cargo-myflask's own
//! template code as `cargo myflask deb` renders it, in front of `myflask
//! serve` through a real nginx: the management endpoints answer the nginx
//! host's local clients (127.0.0.1 and ::1) and nobody else (403, path
//! variants included), while the app's pages stay public; with the
//! endpoints off (a hosted app's default) the same paths reach the app from
//! local clients only. nginx runs in a network namespace this test makes, a
//! second one is the remote client.
//! Needs root (CI runs as root); skipped with a message otherwise.
//!
//! The template module comes in by path, so this binary also runs its
//! three unit tests.

mod common;
#[path = "../cargo-myflask/src/template.rs"]
mod template;

use common::{Lan, Nginx, Server, http_once, in_netns, target_tmpdir};
use std::net::SocketAddr;
use std::path::Path;

const WEB_IP: [u8; 4] = [10, 0, 1, 1];
const REMOTE_IP: &str = "10.0.1.99";

/// Renders `packaging/debian/<from>` for the myflask package, mounted at
/// `prefix` ("" for none).
fn render(from: &str, prefix: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/debian")
        .join(from);
    let text = std::fs::read_to_string(&path).expect("template");
    let mut v = template::Vars::default();
    v.set("name", "myflask");
    v.set("socket_group", "www-data");
    v.set("mount_prefix", prefix);
    v.flag("prefix", !prefix.is_empty());
    template::render(from, &text, &v).unwrap_or_else(|e| panic!("{e}"))
}

/// The site as installed, its upstream pointing at `server`'s socket
/// instead of /run/myflask/fcgi.sock.
fn install_site(dir: &Path, prefix: &str, server: &Server) {
    std::fs::create_dir_all(dir.join("snippets")).expect("snippets dir");
    let upstream = render("nginx/app-upstream.conf", prefix);
    let shipped = "unix:/run/myflask/fcgi.sock";
    assert!(upstream.contains(shipped), "{upstream}");
    let ours = format!("unix:{}", server.sock.display());
    let files = [
        ("site.conf", render("nginx/site-example.conf", prefix)),
        ("snippets/myflask.conf", render("nginx/app.conf", prefix)),
        (
            "snippets/myflask-upstream.conf",
            upstream.replace(shipped, &ours),
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("site file");
    }
}

/// nginx with the shipped site in the `web` namespace of `lan`.
fn start_nginx(dir: &Path, lan: &Lan) -> Nginx {
    let listen = SocketAddr::from(([127, 0, 0, 1], 80));
    Nginx::start(dir, "include site.conf;\n", listen, Some(&lan.ns("web")))
}

/// GET `target` through nginx from the nginx host's 127.0.0.1 or ::1, or
/// from the remote namespace: (status, body).
fn get(lan: &Lan, from: &str, target: &str) -> (u16, String) {
    let (ns, to) = match from {
        "127.0.0.1" => ("web", SocketAddr::from(([127, 0, 0, 1], 80))),
        "::1" => ("web", SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 80))),
        _ => ("remote", SocketAddr::from((WEB_IP, 80))),
    };
    let (status, _, body) = in_netns(&lan.ns(ns), || http_once(to, "GET", target, b""));
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What each endpoint answers when it is the server's: a piece of it.
fn mark(path: &str) -> &'static str {
    match path.rsplit('/').next() {
        Some("status") => "\"accepted_connections\"",
        Some("metrics") => "myflask_requests_total",
        _ => "ok",
    }
}

/// Whether the server answers the endpoints itself (a hosted app's are
/// off until set: the app gets those paths like any other).
#[derive(Clone, Copy, PartialEq)]
enum Endpoints {
    On,
    Off,
}

/// Checks the site in front of `server`, its endpoints at `prefix`/status,
/// /metrics and /healthz when `on`.
fn check_site(prefix: &str, server: &Server, on: Endpoints) {
    if !common::can_build_lans("nginx_site") {
        return;
    }
    let lan = Lan::build(&[("web", "10.0.1.1"), ("remote", REMOTE_IP)]);
    let dir = target_tmpdir();
    install_site(dir.path(), prefix, server);
    let nginx = start_nginx(dir.path(), &lan);
    let endpoints = ["status", "metrics", "healthz"].map(|e| format!("{prefix}/{e}"));
    for path in &endpoints {
        for from in ["127.0.0.1", "::1"] {
            let (status, body) = get(&lan, from, path);
            let what = format!("{path} from {from}: {status} {body}");
            match on {
                Endpoints::On => assert!(status == 200 && body.contains(mark(path)), "{what}"),
                // Passed on to the app, which has no metrics of its own.
                Endpoints::Off => {
                    assert!(status != 403 && !body.contains(mark("/metrics")), "{what}")
                }
            }
        }
    }
    let refused = check_remote(&lan, prefix, &endpoints);
    // nginx logs each refusal with the client's address, and nothing else.
    let refusal = format!("access forbidden by rule, client: {REMOTE_IP},");
    let errors = nginx.errors();
    let (refusals, other): (Vec<_>, Vec<_>) = errors.iter().partition(|l| l.contains(&refusal));
    assert_eq!(refusals.len(), refused.len(), "{errors:#?}");
    assert!(other.is_empty(), "{other:#?}");
    eprintln!(
        "nginx_site{prefix} (endpoints {}): {endpoints:?} passed from 127.0.0.1 and ::1; \
         403 from {REMOTE_IP} for {refused:?}; {prefix}/ 200 from there",
        if on == Endpoints::On { "on" } else { "off" }
    );
}

/// From the remote address: the endpoints and every spelling of them
/// refused (nginx compares its normalized path), the app's pages served.
/// Returns the refused targets.
fn check_remote(lan: &Lan, prefix: &str, endpoints: &[String]) -> Vec<String> {
    let variants = [
        "/status?full",
        "//status",
        "/%73tatus",
        "/./status",
        "/x/../status",
    ]
    .map(|v| format!("{prefix}{v}"));
    let refused: Vec<String> = endpoints.iter().chain(&variants).cloned().collect();
    for target in &refused {
        let (status, body) = get(lan, REMOTE_IP, target);
        assert_eq!(status, 403, "{target} from {REMOTE_IP}: {body}");
    }
    // A path nginx does not match stays with the app, never the status page.
    let (_, body) = get(lan, REMOTE_IP, &format!("{prefix}/status/"));
    assert!(!body.contains(mark("/status")), "{body}");
    let (status, body) = get(lan, REMOTE_IP, &format!("{prefix}/"));
    assert_eq!(status, 200, "{prefix}/ from {REMOTE_IP}: {body}");
    refused
}

#[test]
fn the_site_keeps_the_builtin_apps_endpoints_local() {
    // myflask's built-in app: /status, /metrics and /healthz by default.
    check_site("", &Server::start(&[]), Endpoints::On);
}

#[test]
fn the_site_keeps_a_mounted_apps_endpoints_local() {
    // An app mounted at /hello, its endpoints set as /etc/default suggests.
    let server = Server::start(&[
        "--mount-prefix",
        "/hello",
        "--status-path",
        "/hello/status",
        "--metrics-path",
        "/hello/metrics",
        "--ping-path",
        "/hello/healthz",
    ]);
    check_site("/hello", &server, Endpoints::On);
}

#[test]
fn the_site_refuses_the_paths_when_the_endpoints_are_off() {
    // A hosted app's default: the app gets the paths, from local clients only.
    let server = Server::start(&["--status-path", "", "--metrics-path", "", "--ping-path", ""]);
    check_site("", &server, Endpoints::Off);
}
