//! Request deadlines and the slow-request threshold: the `serve` flags and
//! the rule that picks a request's deadline.
//!
//! - `--request-timeout SECS`: the deadline of every request (off by
//!   default, as nginx's own `fastcgi_read_timeout` already bounds what a
//!   client waits);
//! - `--request-timeout-prefix PREFIX=SECS` (repeatable): the deadline of
//!   requests whose path starts with PREFIX, a plain string prefix as in an
//!   nginx `location PREFIX`; the longest matching prefix wins, and `0`
//!   means no deadline there (an upload or report route);
//! - `--slow-request-threshold MS`: one warning per request still running
//!   after MS milliseconds, written when it passes.
//!
//! The management layer applies both to the app's part of a request (its
//! future and its response body): a deadline that passes before the
//! response head answers 504, after it ends the body with an error, which
//! both transports turn into an aborted response; other requests on the
//! connection are not touched.

use std::time::Duration;

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

fn parse_prefix(s: &str) -> Result<(String, Duration), String> {
    let (prefix, secs) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not PREFIX=SECS, e.g. /reports/=300"))?;
    if !prefix.starts_with('/') {
        return Err(format!("prefix {prefix:?} does not start with /"));
    }
    Ok((prefix.to_string(), parse_secs(secs)?))
}

fn parse_ms(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{s:?} is not a number of milliseconds"))
}

/// The `serve` flags of this module.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeadlineArgs {
    /// Seconds a request may take in the app: past it, 504 if no response
    /// head was sent, else the response is aborted. 0 or unset: none.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, env = "MYFLASK_REQUEST_TIMEOUT")]
    pub request_timeout: Option<Duration>,

    /// PREFIX=SECS: another deadline for paths starting with PREFIX
    /// (repeatable; the longest match wins; 0: none).
    #[arg(
        long,
        value_name = "PREFIX=SECS",
        value_parser = parse_prefix,
        env = "MYFLASK_REQUEST_TIMEOUT_PREFIX",
        value_delimiter = ','
    )]
    pub request_timeout_prefix: Vec<(String, Duration)>,

    /// Log one warning (target myflask::slow) for each request still
    /// running after MS milliseconds, while it runs. Unset: off.
    #[arg(long, value_name = "MS", value_parser = parse_ms, env = "MYFLASK_SLOW_REQUEST_THRESHOLD")]
    pub slow_request_threshold: Option<Duration>,
}

/// Which deadline a request gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deadlines {
    default: Option<Duration>,
    /// Longest prefix first; `None`: no deadline under it.
    prefixes: Vec<(String, Option<Duration>)>,
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl Deadlines {
    pub fn new(default: Option<Duration>, prefixes: &[(String, Duration)]) -> Deadlines {
        let mut prefixes: Vec<_> = prefixes
            .iter()
            .map(|(p, d)| (p.clone(), nonzero(*d)))
            .collect();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Deadlines {
            default: default.and_then(nonzero),
            prefixes,
        }
    }

    pub fn from_args(a: &DeadlineArgs) -> Deadlines {
        Deadlines::new(a.request_timeout, &a.request_timeout_prefix)
    }

    /// No deadline anywhere: the layer skips the lookup.
    pub fn is_off(&self) -> bool {
        self.default.is_none() && self.prefixes.iter().all(|(_, d)| d.is_none())
    }

    /// The deadline of a request for `path`.
    pub fn for_path(&self, path: &str) -> Option<Duration> {
        match self
            .prefixes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
        {
            Some((_, d)) => *d,
            None => self.default,
        }
    }
}

/// One request's deadline, with what its log line names.
#[derive(Debug)]
pub(crate) struct Kill {
    at: tokio::time::Instant,
    limit: Duration,
    request_id: u64,
    method: String,
    uri: String,
    trace: Option<crate::TraceContext>,
    stats: std::sync::Arc<crate::Stats>,
}

impl Kill {
    pub(crate) fn new<B>(
        limit: Duration,
        request_id: u64,
        req: &http::Request<B>,
        trace: Option<crate::TraceContext>,
        stats: std::sync::Arc<crate::Stats>,
    ) -> Kill {
        Kill {
            at: tokio::time::Instant::now() + limit,
            limit,
            request_id,
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            trace,
            stats,
        }
    }

    pub(crate) fn at(&self) -> tokio::time::Instant {
        self.at
    }

    fn report(&self, phase: crate::inflight::Phase, outcome: &str) {
        self.stats.metrics.deadline_killed();
        tracing::warn!(
            target: "myflask::deadline",
            request_id = self.request_id,
            method = %self.method,
            uri = %self.uri,
            deadline_ms = self.limit.as_millis() as u64,
            phase = phase.as_str(),
            trace_id = self.trace.as_ref().map(|t| t.trace_id()),
            "{} {}: deadline of {:?} passed {}; {outcome}",
            self.method, self.uri, self.limit, phase.as_str()
        );
    }

    /// The deadline passed before the app answered: its future has been
    /// dropped (cancelled); the client gets a 504. `phase`: as the
    /// in-flight registry tells it, when it is on.
    pub(crate) fn before_head(
        &self,
        phase: Option<crate::inflight::Phase>,
    ) -> http::Response<crate::ResponseBody> {
        let phase = phase.unwrap_or(crate::inflight::Phase::InHandler);
        self.report(phase, "answered 504");
        let mut r = crate::service::error_response_boxed(&crate::service::ServerError::Timeout {
            after: self.limit,
        });
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        r
    }

    /// The deadline passed while the body was being sent: the error ends
    /// the response (the transports abort it; the head is out already).
    pub(crate) fn after_head(&self) -> crate::BoxError {
        self.report(crate::inflight::Phase::Writing, "response aborted");
        format!("request deadline of {:?} passed", self.limit).into()
    }
}

/// Starts the slow log: a thread that looks at the requests in flight a
/// few times per threshold and warns once for each that has run past it,
/// while it still runs. A thread, not a task: the layer is built before
/// the runtime, and the check must run even when the runtime is stuck
/// (that is when requests hang). It ends when the registry goes away.
pub(crate) fn watch_slow(reg: std::sync::Weak<crate::inflight::InFlight>, threshold: Duration) {
    let tick = (threshold / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let spawned = std::thread::Builder::new()
        .name("myflask-slowlog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                let Some(reg) = reg.upgrade() else {
                    return;
                };
                for r in reg.newly_overdue(threshold) {
                    slow_warning(&r, threshold);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the slow-request log: {e}");
    }
}

fn slow_warning(r: &crate::inflight::InFlightRequest, threshold: Duration) {
    let duration_us = r.age.as_micros() as u64;
    tracing::warn!(
        target: "myflask::slow",
        uri = %r.uri,
        method = %r.method,
        duration_us,
        request_id = r.request_id,
        trace_id = r.trace.as_ref().map(|t| t.trace_id()),
        phase = r.phase.as_str(),
        transport = r.transport.as_str(),
        "slow request: {} {} running for {} ms ({}), past the {} ms threshold",
        r.method,
        r.uri,
        duration_us / 1000,
        r.phase.as_str(),
        threshold.as_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    #[test]
    fn longest_prefix_wins_and_zero_means_none() {
        let prefixes = [
            ("/api/".to_string(), Duration::from_secs(5)),
            ("/api/reports/".to_string(), Duration::from_secs(300)),
            ("/upload".to_string(), Duration::ZERO),
        ];
        let d = Deadlines::new(s(30), &prefixes);
        let cases = [
            ("/", s(30)),
            ("/api", s(30)),
            ("/api/x", s(5)),
            ("/api/reports/2026", s(300)),
            ("/upload/big", None),
            ("/uploads", None),
        ];
        for (path, want) in cases {
            assert_eq!(d.for_path(path), want, "{path}");
        }
        assert!(!d.is_off());
        assert!(Deadlines::new(Some(Duration::ZERO), &[]).is_off());
        assert_eq!(Deadlines::new(None, &prefixes).for_path("/other"), None);
    }

    #[test]
    fn flags_parse_or_explain() {
        assert_eq!(
            parse_prefix("/a=1.5"),
            Ok(("/a".into(), Duration::from_millis(1500)))
        );
        assert_eq!(
            parse_prefix("/q=x=2"),
            Ok(("/q=x".into(), Duration::from_secs(2)))
        );
        assert!(parse_prefix("/a").is_err());
        assert!(parse_prefix("a=1").is_err());
        assert!(parse_prefix("/a=-1").is_err());
        assert_eq!(parse_ms("250"), Ok(Duration::from_millis(250)));
        assert!(parse_ms("0.5").is_err());
        assert!(parse_secs("inf").is_err());
    }
}
