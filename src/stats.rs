//! Live server figures: the numbers behind `/status`, the systemd `STATUS=`
//! line and the per-request log.
//!
//! Plain relaxed atomics: each figure is independent, and a status page that
//! is a microsecond stale is fine. Counting is done by guards so that a
//! cancelled connection or request can never leave a figure behind (the
//! "live requests return to zero" check in the abuse tests relies on it).
//!
//! Layout is for two or more cores. The counters every request adds to
//! (requests, status classes, bytes) have one copy per thread, each on its
//! own cache line, summed by `snapshot`; the three figures that must be
//! server-wide (request ids, requests in flight and their peak, which is
//! also the `--max-requests` limit) share one line of their own: figures
//! on one shared line would make every request's increments move that line
//! between the cores.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The live figures of one server, shared by every connection.
#[derive(Debug)]
pub struct Stats {
    started: SystemTime,
    started_at: Instant,
    accepted_conns: AtomicU64,
    active_conns: AtomicU64,
    refused_overload: AtomicU64,
    hot: Hot,
    shards: [Shard; SHARDS],
    /// The figures only `/metrics` reports (recording is off without it).
    pub metrics: crate::metrics::Recorder,
    /// Trace contexts on their way to their request's access-log line.
    pub traces: crate::trace::Pending,
}

/// The server-wide figures a request touches (see the module comment).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Hot {
    next_request_id: AtomicU64,
    active_requests: AtomicU64,
    max_active_requests: AtomicU64,
}

/// One thread's share of the summed counters.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    by_class: [AtomicU64; 5],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

const SHARDS: usize = 8;

/// This thread's shard: threads take shards in turn as they first count.
fn shard_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
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
            refused_overload: AtomicU64::new(0),
            hot: Hot {
                next_request_id: AtomicU64::new(1),
                ..Hot::default()
            },
            shards: Default::default(),
            metrics: Default::default(),
            traces: Default::default(),
        }
    }

    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    fn sum(&self, f: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
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
            active_requests: self.hot.active_requests.load(Relaxed),
            max_active_requests: self.hot.max_active_requests.load(Relaxed),
            total_requests: self.sum(|s| &s.requests),
            requests_1xx: self.sum(|s| &s.by_class[0]),
            requests_2xx: self.sum(|s| &s.by_class[1]),
            requests_3xx: self.sum(|s| &s.by_class[2]),
            requests_4xx: self.sum(|s| &s.by_class[3]),
            requests_5xx: self.sum(|s| &s.by_class[4]),
            refused_overloaded: self.refused_overload.load(Relaxed),
            bytes_in: self.sum(|s| &s.bytes_in),
            bytes_out: self.sum(|s| &s.bytes_out),
        }
    }

    pub fn active_connections(&self) -> u64 {
        self.active_conns.load(Relaxed)
    }

    pub fn active_requests(&self) -> u64 {
        self.hot.active_requests.load(Relaxed)
    }

    pub fn total_requests(&self) -> u64 {
        self.sum(|s| &s.requests)
    }

    pub(crate) fn next_request_id(&self) -> u64 {
        self.hot.next_request_id.fetch_add(1, Relaxed)
    }

    pub(crate) fn add_bytes_in(&self, n: u64) {
        self.shard().bytes_in.fetch_add(n, Relaxed);
    }

    pub(crate) fn add_bytes_out(&self, n: u64) {
        self.shard().bytes_out.fetch_add(n, Relaxed);
    }

    pub(crate) fn refused_overloaded(&self) {
        self.refused_overload.fetch_add(1, Relaxed);
    }

    /// Records a finished request's status.
    pub(crate) fn finished(&self, status: u16) {
        let shard = self.shard();
        shard.requests.fetch_add(1, Relaxed);
        let class = (status / 100).clamp(1, 5) as usize - 1;
        shard.by_class[class].fetch_add(1, Relaxed);
    }

    pub(crate) fn connection(self: &std::sync::Arc<Self>) -> ConnGuard {
        self.accepted_conns.fetch_add(1, Relaxed);
        self.active_conns.fetch_add(1, Relaxed);
        ConnGuard(self.clone())
    }

    /// Counts a request in flight if fewer than `limit` are (the
    /// `--max-requests` cap). One atomic: a semaphore would take a lock on
    /// every release. The caller must call `end_request` once for every
    /// `true`, or hold a [`RequestGuard`].
    pub(crate) fn try_begin_request(&self, limit: usize) -> bool {
        let now = self.hot.active_requests.fetch_add(1, Relaxed) + 1;
        if now > limit as u64 {
            self.hot.active_requests.fetch_sub(1, Relaxed);
            return false;
        }
        if now > self.hot.max_active_requests.load(Relaxed) {
            self.hot.max_active_requests.fetch_max(now, Relaxed);
        }
        true
    }

    pub(crate) fn end_request(&self) {
        self.hot.active_requests.fetch_sub(1, Relaxed);
    }

    /// [`Stats::try_begin_request`] with a guard that ends it.
    pub(crate) fn try_request(self: &std::sync::Arc<Self>, limit: usize) -> Option<RequestGuard> {
        self.try_begin_request(limit)
            .then(|| RequestGuard(self.clone()))
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
        self.0.end_request();
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
            let _r1 = s.try_request(2);
            let _r2 = s.try_request(2);
            assert!(_r1.is_some() && _r2.is_some());
            assert!(s.try_request(2).is_none(), "over the limit");
            assert_eq!(s.active_requests(), 2);
        }
        s.finished(200);
        s.finished(404);
        std::thread::spawn({
            let s = s.clone();
            move || s.finished(503)
        })
        .join()
        .unwrap();
        let snap = s.snapshot();
        assert_eq!(snap.active_requests, 0);
        assert_eq!(snap.max_active_requests, 2);
        assert_eq!(snap.active_connections, 0);
        assert_eq!(snap.accepted_connections, 1);
        assert_eq!(snap.total_requests, 3);
        assert_eq!(
            (snap.requests_2xx, snap.requests_4xx, snap.requests_5xx),
            (1, 1, 1)
        );
    }
}
