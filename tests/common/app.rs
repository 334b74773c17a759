//! What tests read back from the built-in app's answers.

/// `(name, value)` pairs of a list in the app's `/request` JSON (`params`
/// or `headers`, each a list of `[name, value]`); panics naming the list
/// when it is missing.
pub fn json_pairs(v: &serde_json::Value, list: &str) -> Vec<(String, String)> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} list in {v}"))
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap_or_default().to_string(),
                p[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The requests in flight as the built-in `/status?full` lists them,
/// asked over FastCGI on `addr`.
pub fn in_flight(addr: &myflask::addr::ListenAddr) -> Vec<serde_json::Value> {
    let r = super::client::fcgi_get(addr, "/status?full");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("status JSON");
    v["requests"].as_array().cloned().unwrap_or_default()
}

/// Asks `/status?full` every 20 ms, for up to 10 s, until `found` picks
/// something from the list; else panics saying what was `wanted` and what
/// was listed last.
fn wait_listed<T>(
    addr: &myflask::addr::ListenAddr,
    wanted: &str,
    found: impl Fn(&[serde_json::Value]) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let list = in_flight(addr);
        if let Some(v) = found(&list) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within 10 s: {wanted}; listed: {list:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until the request for `uri` is listed in `phase`; returns its
/// entry.
pub fn wait_phase(addr: &myflask::addr::ListenAddr, uri: &str, phase: &str) -> serde_json::Value {
    wait_listed(addr, &format!("{uri} listed as {phase:?}"), |list| {
        list.iter()
            .find(|e| e["uri"] == uri && e["phase"] == phase)
            .cloned()
    })
}

/// Waits until no request but the status request itself is in flight.
pub fn wait_none_in_flight(addr: &myflask::addr::ListenAddr) {
    wait_listed(addr, "nothing else in flight", |list| {
        list.iter()
            .all(|e| e["uri"] == "/status?full")
            .then_some(())
    })
}
