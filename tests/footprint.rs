//! What a running `myflask serve` maps: no libm (see src/nolibm.rs). The
//! idle-RSS figure itself is a benchmark (`bench/`), not a test; this checks
//! the mechanism behind half a MiB of it, which a dependency change could
//! silently undo.

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
