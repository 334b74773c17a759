//! The figures behind `/metrics` that `Stats` does not keep: requests by
//! transport and status class, response bytes by transport, the request
//! duration histogram, refused requests by reason and deadline kills.
//!
//! Recording is off until a metrics endpoint is configured
//! ([`Recorder::enable`]): then the access log's `finish` adds each request
//! here. Like `Stats`, the per-request counters live in one shard per
//! thread, each on its own cache line, and are summed when scraped; the
//! rare ones (refusals, deadline kills) are plain server-wide atomics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the duration buckets, in microseconds (Prometheus'
/// usual 5 ms .. 10 s ladder, extended down to 0.5 ms: a FastCGI request
/// behind nginx on one host is often under a millisecond).
pub const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];
/// One slot per bound plus the `+Inf` one.
const SLOTS: usize = BUCKETS_US.len() + 1;
/// FastCGI, HTTP.
pub const TRANSPORTS: [&str; 2] = ["fastcgi", "http"];
const SHARDS: usize = 8;

/// Whether some server in this process records durations: the access log
/// then reads the clock even when its own output is off.
static TIMING: AtomicBool = AtomicBool::new(false);

/// True when request durations are wanted (see [`Recorder::enable`]).
pub(crate) fn timing_on() -> bool {
    TIMING.load(Relaxed)
}

/// Why the server answered a request itself instead of calling the app.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// 503: `--max-requests` reached.
    Overloaded,
    /// 413: the declared body exceeds `--max-body-bytes`.
    BodyTooLarge,
    /// 431: the params exceed `--max-params-bytes`.
    ParamsTooLarge,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    by_class: [[AtomicU64; 5]; 2],
    body_bytes_out: [AtomicU64; 2],
    buckets: [[AtomicU64; SLOTS]; 2],
    duration_sum_us: [AtomicU64; 2],
}

#[derive(Debug, Default)]
pub struct Recorder {
    enabled: AtomicBool,
    shards: [Shard; SHARDS],
    refused_body: AtomicU64,
    refused_params: AtomicU64,
    deadline_kills: AtomicU64,
}

/// One transport's summed figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransportFigures {
    pub by_class: [u64; 5],
    pub body_bytes_out: u64,
    /// Cumulative, one per bound in [`BUCKETS_US`] then `+Inf` (= count).
    pub cumulative: [u64; SLOTS],
    pub duration_sum_us: u64,
}

/// A point-in-time sum of every shard.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub transports: [TransportFigures; 2],
    pub refused_body: u64,
    pub refused_params: u64,
    pub deadline_kills: u64,
}

/// This thread's shard (threads take them in turn as they first record).
fn shard_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

fn transport_index(transport: crate::Transport) -> usize {
    usize::from(transport == crate::Transport::Http)
}

fn slot(us: u64) -> usize {
    BUCKETS_US.partition_point(|&b| b < us)
}

impl Recorder {
    /// Starts recording (idempotent). Off, `record` returns at once.
    pub fn enable(&self) {
        self.enabled.store(true, Relaxed);
        TIMING.store(true, Relaxed);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Adds one finished request. `duration` is `None` only when recording
    /// was switched on while the request ran.
    pub(crate) fn record(
        &self,
        transport: crate::Transport,
        status: u16,
        body_bytes: u64,
        duration: Option<Duration>,
    ) {
        if !self.is_enabled() {
            return;
        }
        let t = transport_index(transport);
        let shard = &self.shards[shard_index()];
        let class = (status / 100).clamp(1, 5) as usize - 1;
        shard.by_class[t][class].fetch_add(1, Relaxed);
        shard.body_bytes_out[t].fetch_add(body_bytes, Relaxed);
        if let Some(d) = duration {
            let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            shard.buckets[t][slot(us)].fetch_add(1, Relaxed);
            shard.duration_sum_us[t].fetch_add(us, Relaxed);
        }
    }

    /// Adds body bytes written to the sum of requests already recorded
    /// (FastCGI with the access log off records a request with 0 bytes
    /// and its writer adds them as they reach the socket).
    pub(crate) fn add_body_bytes(&self, transport: crate::Transport, n: u64) {
        if !self.is_enabled() || n == 0 {
            return;
        }
        let t = transport_index(transport);
        self.shards[shard_index()].body_bytes_out[t].fetch_add(n, Relaxed);
    }

    /// Counts a request the server answered itself. 503s are in `Stats`
    /// already (`refused_overloaded`), so only the other reasons are here.
    pub fn refused(&self, why: Refusal) {
        match why {
            Refusal::Overloaded => {}
            Refusal::BodyTooLarge => {
                self.refused_body.fetch_add(1, Relaxed);
            }
            Refusal::ParamsTooLarge => {
                self.refused_params.fetch_add(1, Relaxed);
            }
        }
    }

    /// Counts a request ended by its deadline.
    pub fn deadline_killed(&self) {
        self.deadline_kills.fetch_add(1, Relaxed);
    }

    pub fn figures(&self) -> Figures {
        let mut f = Figures {
            refused_body: self.refused_body.load(Relaxed),
            refused_params: self.refused_params.load(Relaxed),
            deadline_kills: self.deadline_kills.load(Relaxed),
            ..Figures::default()
        };
        for s in &self.shards {
            for (t, out) in f.transports.iter_mut().enumerate() {
                for (c, n) in out.by_class.iter_mut().enumerate() {
                    *n += s.by_class[t][c].load(Relaxed);
                }
                out.body_bytes_out += s.body_bytes_out[t].load(Relaxed);
                out.duration_sum_us += s.duration_sum_us[t].load(Relaxed);
                for (k, n) in out.cumulative.iter_mut().enumerate() {
                    *n += s.buckets[t][k].load(Relaxed);
                }
            }
        }
        for t in &mut f.transports {
            for k in 1..SLOTS {
                t.cumulative[k] += t.cumulative[k - 1];
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_bounds_inclusive() {
        assert_eq!(slot(0), 0);
        assert_eq!(slot(500), 0, "le=0.0005 includes 500 us");
        assert_eq!(slot(501), 1);
        assert_eq!(slot(10_000_000), 13);
        assert_eq!(slot(10_000_001), 14, "+Inf");
    }

    #[test]
    fn off_records_nothing_on_sums_shards_and_accumulates() {
        let r = Recorder::default();
        r.record(
            crate::Transport::FastCgi,
            200,
            10,
            Some(Duration::from_micros(300)),
        );
        assert_eq!(r.figures().transports[0].cumulative[SLOTS - 1], 0);
        r.enable();
        r.record(
            crate::Transport::FastCgi,
            200,
            10,
            Some(Duration::from_micros(300)),
        );
        r.record(
            crate::Transport::FastCgi,
            404,
            5,
            Some(Duration::from_millis(3)),
        );
        std::thread::spawn({
            let r = std::sync::Arc::new(r);
            move || {
                r.record(
                    crate::Transport::Http,
                    503,
                    7,
                    Some(Duration::from_secs(20)),
                );
                r.record(crate::Transport::FastCgi, 200, 1, None);
                r.figures()
            }
        })
        .join()
        .map(|f| {
            let (fc, http) = (&f.transports[0], &f.transports[1]);
            assert_eq!(fc.by_class, [0, 2, 0, 1, 0]);
            assert_eq!(fc.body_bytes_out, 16);
            assert_eq!(fc.cumulative[0], 1);
            assert_eq!(fc.cumulative[3], 2, "3 ms is under le=0.005");
            assert_eq!(fc.cumulative[SLOTS - 1], 2, "no duration, no observation");
            assert_eq!(fc.duration_sum_us, 3_300);
            assert_eq!(http.by_class[4], 1);
            assert_eq!(http.cumulative[SLOTS - 2], 0);
            assert_eq!(http.cumulative[SLOTS - 1], 1);
        })
        .expect("thread");
    }
}
