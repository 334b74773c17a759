//! `--mount-prefix` behind a real nginx: the app mounted at `/hello` the
//! way two apps share one server (`location /hello/ { fastcgi_pass ...; }`),
//! over FastCGI and over HTTP (`proxy_pass` to `--http`), plus the flag's
//! validation against the built binary.
//!
//! The test starts its own nginx (own prefix, a free loopback port) and
//! talks HTTP/1.0 to it (one request per connection, no chunking to undo).

mod common;

use common::{BIN, Proc, Server, clean_cmd, free_tcp_port, http_once, target_tmpdir};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// nginx on a free loopback port: `location /` answers itself, the
/// test's locations go to the app.
struct Nginx {
    _inner: common::Nginx,
    addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx with `locations` inside its one `server { }`.
    fn start(dir: &Path, locations: &str) -> Nginx {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let http = format!(
            "server {{\n listen {addr};\n server_name localhost;\n\
             location / {{ return 200 \"nginx itself\\n\"; }}\n{locations}\n }}\n"
        );
        let inner = common::Nginx::start(dir, &http, addr, None);
        Nginx {
            _inner: inner,
            addr,
        }
    }

    /// One HTTP/1.0 request; (status, headers as text, body).
    fn send(&self, method: &str, target: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
        http_once(self.addr, method, target, body)
    }

    fn get(&self, target: &str) -> (u16, String, String) {
        let (st, head, body) = self.send("GET", target, b"");
        (st, head, String::from_utf8_lossy(&body).into_owned())
    }

    fn json(&self, target: &str) -> serde_json::Value {
        let (st, _, body) = self.get(target);
        assert_eq!(st, 200, "{target}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{target}: {e}: {body}"))
    }
}

/// The param `name` of a `/request` dump.
fn param<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    v["params"].as_array()?.iter().find_map(|p| {
        (p[0].as_str() == Some(name))
            .then(|| p[1].as_str())
            .flatten()
    })
}

const APP_404: &str = "404 not found\n";
const SERVER_404: &str = "404 not found: this server serves paths under /hello/\n";

/// What an app mounted at /hello answers through `nginx`, whatever the
/// transport behind it.
fn check_mounted(nginx: &Nginx, transport: &str) {
    let v = nginx.json("/hello/request?x=1&y");
    assert_eq!(v["uri"], "/request?x=1&y", "{v:#}");
    assert_eq!(v["mount_prefix"], "/hello", "{v:#}");
    assert_eq!(v["transport"], transport, "{v:#}");

    // Percent-escapes in the prefix: nginx routes /hell%6F/ to /hello/,
    // and so does myflask; the rest stays as sent.
    let v = nginx.json("/hell%6F/request?q=a%20b");
    assert_eq!(v["uri"], "/request?q=a%20b", "{v:#}");
    let v = nginx.json("/hello%2Frequest");
    assert_eq!(v["uri"], "/request", "{v:#}");

    // The index's links carry the prefix (SCRIPT_NAME for url_for).
    let (st, _, body) = nginx.get("/hello/");
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("href=\"/hello/healthz\""), "{body}");

    // nginx itself redirects the bare prefix to prefix + '/'.
    let (st, head, _) = nginx.get("/hello");
    assert_eq!(st, 301, "{head}");
    assert!(head.contains("/hello/\r\n"), "{head}");

    // Inside the prefix, the app's own 404; outside, the server's.
    let (st, _, body) = nginx.get("/hello/nope");
    assert_eq!((st, body.as_str()), (404, APP_404));
    for outside in ["/hellofoo", "/hello%66oo", "/other/request"] {
        let (st, _, body) = nginx.get(outside);
        assert_eq!((st, body.as_str()), (404, SERVER_404), "{outside}");
    }
    assert_eq!(nginx.get("/elsewhere").2, "nginx itself\n");

    // A body still flows through.
    let (st, _, body) = nginx.send("POST", "/hello/echo", b"mounted body");
    assert_eq!((st, &body[..]), (200, &b"mounted body"[..]));
}

/// Locations that send /hello/, and (to show the server's own 404)
/// /hellofoo and /other/, to `pass`.
fn locations(pass: &str) -> String {
    ["/hello/", "/hellofoo", "/other/"]
        .iter()
        .map(|l| format!("location {l} {{ {pass} }}\n"))
        .collect()
}

#[test]
fn fastcgi_app_under_a_prefix_behind_nginx() {
    let server = Server::start(&["--mount-prefix", "/hello/"]);
    let dir = target_tmpdir();
    let pass = format!(
        "include /etc/nginx/fastcgi_params; fastcgi_pass unix:{};",
        server.sock.display()
    );
    let nginx = Nginx::start(dir.path(), &locations(&pass));
    check_mounted(&nginx, "FastCGI");
    // nginx sent the full URI; the app saw it without the prefix.
    let v = nginx.json("/hello/request");
    assert_eq!(param(&v, "REQUEST_URI"), Some("/hello/request"), "{v:#}");
    assert!(server.stderr().contains("under the path prefix /hello"));
}

#[test]
fn http_app_under_a_prefix_behind_nginx() {
    let dir = target_tmpdir();
    let http = dir.path().join("http.sock");
    let fcgi = dir.path().join("fcgi.sock");
    let mut cmd = clean_cmd(BIN);
    cmd.args(["serve", "--listen"])
        .arg(format!("unix:{}", fcgi.display()))
        .arg("--http")
        .arg(format!("unix:{}", http.display()))
        .env("MYFLASK_MOUNT_PREFIX", "/hello");
    let mut p = Proc::spawn(&mut cmd, &dir.path().join("myflask.log"));
    p.wait_log("ready", Duration::from_secs(20));
    let pass = format!(
        "proxy_pass http://unix:{}; proxy_set_header Host $host;",
        http.display()
    );
    let nginx = Nginx::start(&dir.path().join("nginx"), &locations(&pass));
    check_mounted(&nginx, "HTTP");
}

#[test]
fn bad_prefixes_are_refused_with_one_sentence() {
    for (bad, why) in [
        ("hello", "must start with '/'"),
        ("/a/../b", "has a '.' or '..' segment"),
        ("/a//b", "has an empty segment"),
        ("/a%2Fb", "has '%'"),
    ] {
        let (code, _, err) = common::run(&["serve", "--mount-prefix", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(
            err.contains(&format!("mount prefix {bad:?} {why}")),
            "{bad}: {err}"
        );
    }
}
