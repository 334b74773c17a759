//! The access log: one structured event per finished request, whatever the
//! transport, plus the per-status counters behind `/status` and, when
//! `/metrics` is served, the figures behind it.
//!
//! Under journald each field becomes a journal field (METHOD, URI, STATUS,
//! DURATION_US, BYTES_OUT, REQUEST_ID, PEER, TRANSPORT, and TRACE_ID /
//! SPAN_ID for a request with a valid `traceparent`), so
//! `journalctl -u myflask STATUS=500` finds the failures and
//! `journalctl TRACE_ID=...` one trace's requests.

use crate::Transport;
use crate::metrics::Refusal;
use crate::stats::Stats;
use std::time::Instant;

/// One request's access-log record, from its start to [`AccessLog::finish`].
#[derive(Debug)]
pub(crate) struct AccessLog {
    pub transport: Transport,
    /// A clone, not a string: a standard method is a plain value.
    pub method: http::Method,
    pub uri: String,
    pub peer: String,
    pub request_id: u64,
    /// `None` when neither the access log nor the metrics want a
    /// duration: then not even the clock is read.
    pub started: Option<Instant>,
    /// Whether the access log was on when the request began (see
    /// [`AccessLog::enabled`]): asked once a request, not again at its end.
    pub on: bool,
}

/// The URI as a string: copied as it is for an origin-form URI (every one
/// nginx passes), without the formatting machinery `to_string` goes
/// through; formatted otherwise.
fn uri_string(uri: &http::Uri) -> String {
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_none() && uri.authority().is_none() => {
            String::from(pq.as_str())
        }
        _ => uri.to_string(),
    }
}

impl AccessLog {
    /// Starts the record of a request. The URI and peer strings are built only when the
    /// access log is on: with `myflask::access=off` a request costs no
    /// allocation here.
    pub fn new(
        transport: Transport,
        method: &http::Method,
        uri: &http::Uri,
        peer: Option<&str>,
        request_id: u64,
    ) -> AccessLog {
        let on = AccessLog::enabled();
        AccessLog {
            transport,
            method: method.clone(),
            uri: if on { uri_string(uri) } else { String::new() },
            peer: if on {
                peer.unwrap_or("-").to_string()
            } else {
                String::new()
            },
            request_id,
            started: (on || crate::metrics::timing_on()).then(Instant::now),
            on,
        }
    }

    /// Whether access-log lines can be written (some are warnings, so
    /// `--log-level warn` keeps it on). Asking the subscriber is not free:
    /// a request does it once.
    pub fn enabled() -> bool {
        tracing::enabled!(target: "myflask::access", tracing::Level::WARN)
    }

    /// Logs the request and counts it. `note` explains an unusual end
    /// (aborted, panicked, body failed) and raises the level to warn.
    pub fn finish(&self, stats: &Stats, status: u16, bytes_out: u64, note: Option<&str>) {
        stats.finished(status);
        let elapsed = self.started.map(|s| s.elapsed());
        stats
            .metrics
            .record(self.transport, status, bytes_out, elapsed);
        // The server's own refusals are the only 413/431 that come with a
        // note (its reason); the 503 ones are counted where refused.
        match (status, note.is_some()) {
            (413, true) => stats.metrics.refused(Refusal::BodyTooLarge),
            (431, true) => stats.metrics.refused(Refusal::ParamsTooLarge),
            _ => {}
        }
        // Taken whether or not the line is written, so none is left behind.
        let trace = stats.traces.take(self.request_id);
        let Some(elapsed) = elapsed else {
            return;
        };
        if !self.on {
            return;
        }
        let duration_us = elapsed.as_micros() as u64;
        match note {
            None => tracing::info!(
                target: "myflask::access",
                transport = self.transport.log_name(),
                method = %self.method,
                uri = %self.uri,
                status,
                duration_us,
                bytes_out,
                request_id = self.request_id,
                peer = %self.peer,
                trace_id = trace.as_ref().map(|t| t.trace_id()),
                span_id = trace.as_ref().map(|t| t.span_id()),
                "{} {} {} {}B {}us",
                self.method, self.uri, status, bytes_out, duration_us
            ),
            Some(note) => tracing::warn!(
                target: "myflask::access",
                transport = self.transport.log_name(),
                method = %self.method,
                uri = %self.uri,
                status,
                duration_us,
                bytes_out,
                request_id = self.request_id,
                peer = %self.peer,
                trace_id = trace.as_ref().map(|t| t.trace_id()),
                span_id = trace.as_ref().map(|t| t.span_id()),
                note,
                "{} {} {} {}B {}us: {}",
                self.method, self.uri, status, bytes_out, duration_us, note
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::uri_string;

    #[test]
    fn uri_string_is_what_to_string_gives() {
        for u in ["/", "/a/b?c=d&e", "/%7e?", "*", "http://h:8/x?y", "h:8"] {
            let uri: http::Uri = u.parse().expect("a valid URI");
            assert_eq!(uri_string(&uri), uri.to_string(), "{u}");
        }
    }
}
