//! Where the built binary answers its management endpoints when the
//! operator places them through the environment (`MYFLASK_STATUS_PATH`,
//! `MYFLASK_METRICS_PATH`, `MYFLASK_PING_PATH`, what `/etc/default/myflask`
//! sets), as the flags do: a path moves an endpoint, an empty value turns
//! it off, and the paths they left go to the app.

mod common;

use common::{Server, fcgi_get};

#[test]
fn the_environment_places_the_endpoints_like_the_flags() {
    let s = Server::start_env(
        &[],
        &[
            ("MYFLASK_STATUS_PATH", "/fpm-status"),
            ("MYFLASK_PING_PATH", "/ping"),
            ("MYFLASK_METRICS_PATH", ""),
        ],
    );
    let addr = s.addr();
    let status = fcgi_get(&addr, "/fpm-status?full");
    assert_eq!(status.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&status.body).expect("status JSON");
    assert!(v["requests"].is_array(), "the server's status page: {v}");
    let ping = fcgi_get(&addr, "/ping");
    assert_eq!((ping.status, &ping.body[..]), (200, &b"ok\n"[..]));

    // Left to the built-in app, which has no /metrics, and whose own
    // /status has no `requests` list.
    assert_eq!(fcgi_get(&addr, "/metrics").status, 404);
    let app_status = fcgi_get(&addr, "/status?full");
    let v: serde_json::Value = serde_json::from_slice(&app_status.body).expect("app JSON");
    assert!(v.get("requests").is_none(), "answered by the app: {v}");
}
