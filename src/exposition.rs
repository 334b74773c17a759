//! `/metrics` text: OpenMetrics 1.0 (ends with `# EOF`) or the Prometheus
//! 0.0.4 text format, chosen by the scraper's `Accept` header.
//!
//! The two differ only in framing: OpenMetrics names a counter's family
//! without `_total` (its sample keeps it), may declare `# UNIT`, and must
//! end with `# EOF`; 0.0.4 names the family after the sample and has no
//! terminator. Build info is a gauge of value 1 in both: Debian's promtool
//! 2.42 rejects the OpenMetrics `info` type.

use crate::listen_queue::QueueReading;
use crate::metrics::{BUCKETS_US, Figures, TRANSPORTS};
use crate::stats::Snapshot;
use std::fmt::Write;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Prometheus,
}

impl Format {
    pub fn content_type(&self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Prometheus => PROMETHEUS,
        }
    }

    /// OpenMetrics when the `Accept` header lists
    /// `application/openmetrics-text` with a non-zero q (what Prometheus
    /// sends first); the 0.0.4 text format otherwise, as for curl.
    pub fn negotiate(accept: Option<&[u8]>) -> Format {
        let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
            return Format::Prometheus;
        };
        let wanted = accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
        });
        if wanted {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// Everything one scrape reports.
pub struct Scrape<'a> {
    pub stats: &'a Snapshot,
    pub figures: &'a Figures,
    pub queues: &'a [QueueReading],
}

/// A label value with `\`, `"` and newlines escaped (both formats).
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

struct Out {
    fmt: Format,
    text: String,
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Out {
    /// Writes `# HELP`/`# TYPE` (and `# UNIT`) for a family. `name` is the
    /// family name without `_total`.
    fn family(&mut self, name: &str, kind: Kind, unit: Option<&str>, help: &str) {
        let (ty, suffix) = match kind {
            Kind::Counter => ("counter", "_total"),
            Kind::Gauge => ("gauge", ""),
            Kind::Histogram => ("histogram", ""),
        };
        let family = match (self.fmt, kind) {
            (Format::Prometheus, Kind::Counter) => format!("{name}{suffix}"),
            _ => name.to_string(),
        };
        let _ = writeln!(self.text, "# HELP {family} {help}");
        let _ = writeln!(self.text, "# TYPE {family} {ty}");
        if let (Format::OpenMetrics, Some(u)) = (self.fmt, unit) {
            let _ = writeln!(self.text, "# UNIT {family} {u}");
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn one(
        &mut self,
        name: &str,
        kind: Kind,
        unit: Option<&str>,
        help: &str,
        v: impl std::fmt::Display,
    ) {
        self.family(name, kind, unit, help);
        let sample = match kind {
            Kind::Counter => format!("{name}_total"),
            _ => name.to_string(),
        };
        self.sample(&sample, &[], v);
    }
}

fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn requests(o: &mut Out, f: &Figures) {
    o.family(
        "myflask_requests",
        Kind::Counter,
        None,
        "Finished requests by transport and status class.",
    );
    for (t, name) in TRANSPORTS.iter().enumerate() {
        for (c, class) in CLASSES.iter().enumerate() {
            let labels = [("transport", *name), ("code", *class)];
            o.sample(
                "myflask_requests_total",
                &labels,
                f.transports[t].by_class[c],
            );
        }
    }
    o.family(
        "myflask_response_body_bytes",
        Kind::Counter,
        Some("bytes"),
        "Response body bytes sent, by transport.",
    );
    for (t, name) in TRANSPORTS.iter().enumerate() {
        let v = f.transports[t].body_bytes_out;
        o.sample(
            "myflask_response_body_bytes_total",
            &[("transport", name)],
            v,
        );
    }
}

fn histogram(o: &mut Out, f: &Figures) {
    let name = "myflask_request_duration_seconds";
    o.family(
        name,
        Kind::Histogram,
        Some("seconds"),
        "Time from the request's arrival to its last response byte.",
    );
    for (t, tname) in TRANSPORTS.iter().enumerate() {
        let tf = &f.transports[t];
        for (k, bound) in BUCKETS_US.iter().enumerate() {
            let le = format!("{:?}", seconds(*bound));
            let labels = [("transport", *tname), ("le", le.as_str())];
            o.sample(&format!("{name}_bucket"), &labels, tf.cumulative[k]);
        }
        let count = tf.cumulative[BUCKETS_US.len()];
        let labels = [("transport", *tname), ("le", "+Inf")];
        o.sample(&format!("{name}_bucket"), &labels, count);
        o.sample(&format!("{name}_count"), &[("transport", tname)], count);
        let sum = seconds(tf.duration_sum_us);
        o.sample(&format!("{name}_sum"), &[("transport", tname)], sum);
    }
}

fn load(o: &mut Out, s: &Snapshot, f: &Figures) {
    let g = Kind::Gauge;
    o.one(
        "myflask_requests_in_flight",
        g,
        None,
        "Requests being handled now.",
        s.active_requests,
    );
    o.one(
        "myflask_requests_in_flight_max",
        g,
        None,
        "Most requests handled at once since start.",
        s.max_active_requests,
    );
    o.one(
        "myflask_connections_open",
        g,
        None,
        "Connections open now.",
        s.active_connections,
    );
    o.one(
        "myflask_connections_accepted",
        Kind::Counter,
        None,
        "Connections accepted since start.",
        s.accepted_connections,
    );
    o.family(
        "myflask_refused_requests",
        Kind::Counter,
        None,
        "Requests the server answered itself: 503 at --max-requests, 413 over --max-body-bytes, 431 over --max-params-bytes.",
    );
    for (reason, v) in [
        ("overloaded", s.refused_overloaded),
        ("body_too_large", f.refused_body),
        ("params_too_large", f.refused_params),
    ] {
        o.sample("myflask_refused_requests_total", &[("reason", reason)], v);
    }
    o.one(
        "myflask_deadline_kills",
        Kind::Counter,
        None,
        "Requests ended by --request-timeout.",
        f.deadline_kills,
    );
}

fn wire(o: &mut Out, s: &Snapshot) {
    o.one(
        "myflask_fastcgi_received_bytes",
        Kind::Counter,
        Some("bytes"),
        "Bytes read from FastCGI connections (records included).",
        s.bytes_in,
    );
    o.one(
        "myflask_fastcgi_sent_bytes",
        Kind::Counter,
        Some("bytes"),
        "Bytes written to FastCGI connections (records included).",
        s.bytes_out,
    );
}

fn queues(o: &mut Out, q: &[QueueReading]) {
    let readable: Vec<_> = q
        .iter()
        .filter_map(|r| r.depth.as_ref().ok().map(|d| (r.listener.as_str(), d)))
        .collect();
    if readable.is_empty() {
        return;
    }
    o.family(
        "myflask_listen_queue_length",
        Kind::Gauge,
        None,
        "Connections the kernel completed that are waiting to be accepted.",
    );
    for (l, (n, _)) in &readable {
        o.sample("myflask_listen_queue_length", &[("listener", l)], n);
    }
    o.family(
        "myflask_listen_queue_limit",
        Kind::Gauge,
        None,
        "The listen backlog: the queue length at which the kernel stops completing connections.",
    );
    for (l, (_, max)) in &readable {
        o.sample("myflask_listen_queue_limit", &[("listener", l)], max);
    }
}

fn process(o: &mut Out, s: &Snapshot) {
    let g = Kind::Gauge;
    o.one(
        "myflask_uptime_seconds",
        g,
        Some("seconds"),
        "Seconds since the server started.",
        s.uptime_seconds,
    );
    o.one(
        "myflask_start_time_seconds",
        g,
        Some("seconds"),
        "Start time of the server, seconds since the Unix epoch.",
        s.start_time,
    );
    o.family(
        "myflask_build_info",
        g,
        None,
        "Always 1; the labels name the build.",
    );
    o.sample(
        "myflask_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
}

/// Renders one scrape.
pub fn render(fmt: Format, s: &Scrape<'_>) -> String {
    let mut o = Out {
        fmt,
        text: String::with_capacity(8 * 1024),
    };
    requests(&mut o, s.figures);
    histogram(&mut o, s.figures);
    load(&mut o, s.stats, s.figures);
    wire(&mut o, s.stats);
    queues(&mut o, s.queues);
    process(&mut o, s.stats);
    if fmt == Format::OpenMetrics {
        o.text.push_str("# EOF\n");
    }
    o.text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_accept() {
        let prom = b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some(b"*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(Some(b"text/plain")), Format::Prometheus);
        let refused = b"application/openmetrics-text; q=0, text/plain";
        assert_eq!(Format::negotiate(Some(refused)), Format::Prometheus);
        assert_eq!(Format::negotiate(Some(b"\xff")), Format::Prometheus);
    }

    fn scrape(fmt: Format) -> String {
        let stats = crate::Stats::new().snapshot();
        let figures = Figures::default();
        let queues = [QueueReading {
            listener: "unix:/run/a\"b\\c".into(),
            depth: Ok((2, 128)),
        }];
        render(
            fmt,
            &Scrape {
                stats: &stats,
                figures: &figures,
                queues: &queues,
            },
        )
    }

    #[test]
    fn framing_differs_by_format() {
        let om = scrape(Format::OpenMetrics);
        assert!(om.ends_with("\n# EOF\n"));
        assert!(om.contains("# TYPE myflask_requests counter\n"));
        assert!(om.contains("# UNIT myflask_request_duration_seconds seconds\n"));
        assert!(om.contains(
            "myflask_request_duration_seconds_bucket{transport=\"http\",le=\"0.0005\"} 0\n"
        ));
        assert!(om.contains("myflask_listen_queue_length{listener=\"unix:/run/a\\\"b\\\\c\"} 2\n"));
        let prom = scrape(Format::Prometheus);
        assert!(!prom.contains("# EOF") && !prom.contains("# UNIT"));
        assert!(prom.contains("# TYPE myflask_requests_total counter\n"));
        assert!(prom.contains("myflask_build_info{version=\""));
    }
}
