//! What a running `myflask serve` costs beyond its work: no libm mapped
//! (see src/nolibm.rs), and no output per request with the access log off.
//! The idle-RSS and speed figures themselves are benchmarks (`bench/`), not
//! tests; these check mechanisms behind them that a dependency change or a
//! stray line could silently undo.

mod common;

use common::Server;

#[test]
fn serving_process_maps_no_libm() {
    let mut s = Server::start(&[]);
    // Serve one request first, so the request path's code is loaded too.
    let r = common::fcgi_get(&s.addr(), "/healthz");
    assert_eq!(r.status, 200);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", s.pid())).expect("maps");
    let libs: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(".so"))
        .collect();
    s.stop();
    assert!(libs.iter().any(|p| p.contains("libc.so")), "{libs:?}");
    assert!(
        !libs.iter().any(|p| p.contains("libm.so")),
        "libm is mapped: {libs:?}"
    );
}

#[test]
fn with_the_access_log_off_requests_write_nothing_to_stderr() {
    // Each write to stderr is a syscall; a stray per-request print (a
    // debug line left in) cost a benchmark run three of them a request.
    let mut s = Server::start(&["--log-level", "info,myflask::access=off"]);
    let before = s.stderr();
    for path in ["/healthz", "/", "/request", "/missing"] {
        for _ in 0..25 {
            let r = common::fcgi_get(&s.addr(), path);
            assert!(r.status == 200 || r.status == 404, "{path}: {}", r.status);
        }
    }
    let after = s.stderr();
    s.stop();
    assert_eq!(
        after.len(),
        before.len(),
        "requests wrote to stderr:\n{}",
        &after[before.len().min(after.len())..]
    );
}
