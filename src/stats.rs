//! Live server figures: the numbers behind `/status`, the systemd `STATUS=`
//! line and the per-request log.
//!
//! Plain relaxed atomics: each figure is independent, and a status page that
//! is a microsecond stale is fine. Counting is done by guards so that a
//! cancelled connection or request can never leave a figure behind (the
//! "live requests return to zero" check in the abuse tests relies on it).

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub struct Stats {
    started: SystemTime,
    started_at: Instant,
    accepted_conns: AtomicU64,
    active_conns: AtomicU64,
    active_requests: AtomicU64,
    max_active_requests: AtomicU64,
    requests: AtomicU64,
    by_class: [AtomicU64; 5],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    next_request_id: AtomicU64,
    refused_overload: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// A point-in-time copy, serialisable for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub start_time: u64,
    pub start_time_rfc3339: String,
    pub uptime_seconds: u64,
    pub accepted_connections: u64,
    pub active_connections: u64,
    pub active_requests: u64,
    pub max_active_requests: u64,
    pub total_requests: u64,
    pub requests_1xx: u64,
    pub requests_2xx: u64,
    pub requests_3xx: u64,
    pub requests_4xx: u64,
    pub requests_5xx: u64,
    pub refused_overloaded: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Formats seconds since the epoch as an RFC 3339 UTC timestamp (civil-date
/// arithmetic from Howard Hinnant's algorithm; avoids a date crate for one
/// field).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            started: SystemTime::now(),
            started_at: Instant::now(),
            accepted_conns: AtomicU64::new(0),
            active_conns: AtomicU64::new(0),
            active_requests: AtomicU64::new(0),
            max_active_requests: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            by_class: Default::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            next_request_id: AtomicU64::new(1),
            refused_overload: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let start = self
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Snapshot {
            start_time: start,
            start_time_rfc3339: rfc3339(start),
            uptime_seconds: self.started_at.elapsed().as_secs(),
            accepted_connections: self.accepted_conns.load(Relaxed),
            active_connections: self.active_conns.load(Relaxed),
            active_requests: self.active_requests.load(Relaxed),
            max_active_requests: self.max_active_requests.load(Relaxed),
            total_requests: self.requests.load(Relaxed),
            requests_1xx: self.by_class[0].load(Relaxed),
            requests_2xx: self.by_class[1].load(Relaxed),
            requests_3xx: self.by_class[2].load(Relaxed),
            requests_4xx: self.by_class[3].load(Relaxed),
            requests_5xx: self.by_class[4].load(Relaxed),
            refused_overloaded: self.refused_overload.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
        }
    }

    pub fn active_connections(&self) -> u64 {
        self.active_conns.load(Relaxed)
    }

    pub fn active_requests(&self) -> u64 {
        self.active_requests.load(Relaxed)
    }

    pub fn total_requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    pub(crate) fn next_request_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Relaxed)
    }

    pub(crate) fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    pub(crate) fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    pub(crate) fn refused_overloaded(&self) {
        self.refused_overload.fetch_add(1, Relaxed);
    }

    /// Records a finished request's status.
    pub(crate) fn finished(&self, status: u16) {
        self.requests.fetch_add(1, Relaxed);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Relaxed);
    }

    pub(crate) fn connection(self: &std::sync::Arc<Self>) -> ConnGuard {
        self.accepted_conns.fetch_add(1, Relaxed);
        self.active_conns.fetch_add(1, Relaxed);
        ConnGuard(self.clone())
    }

    pub(crate) fn request(self: &std::sync::Arc<Self>) -> RequestGuard {
        let now = self.active_requests.fetch_add(1, Relaxed) + 1;
        self.max_active_requests.fetch_max(now, Relaxed);
        RequestGuard(self.clone())
    }
}

/// Counts one open connection while it lives.
#[derive(Debug)]
pub(crate) struct ConnGuard(std::sync::Arc<Stats>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active_conns.fetch_sub(1, Relaxed);
    }
}

/// Counts one request in flight while it lives.
#[derive(Debug)]
pub(crate) struct RequestGuard(std::sync::Arc<Stats>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951782400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1795650123), "2026-11-25T23:42:03Z");
    }

    #[test]
    fn guards_return_counts_to_zero() {
        let s = std::sync::Arc::new(Stats::new());
        {
            let _c = s.connection();
            let _r1 = s.request();
            let _r2 = s.request();
            assert_eq!(s.active_requests(), 2);
        }
        let snap = s.snapshot();
        assert_eq!(snap.active_requests, 0);
        assert_eq!(snap.max_active_requests, 2);
        assert_eq!(snap.active_connections, 0);
        assert_eq!(snap.accepted_connections, 1);
    }
}
