//! W3C Trace Context: the `traceparent` a request arrives with (the header
//! over HTTP; over FastCGI nginx passes it as the `HTTP_TRACEPARENT` param,
//! which becomes the same header).
//!
//! Parsing is strict, as the W3C Trace Context spec (level 1, section 3.2)
//! asks of a version-00 value: exactly 55 characters, `00-` + 32 + `-` +
//! 16 + `-` + 2 lowercase hex digits, trace id and parent id not all
//! zeros. Anything else, a repeated header included, is no trace context:
//! ignored, never an error, since a tracing header must not fail a request.

use http::HeaderMap;
use std::fmt;

/// A valid `traceparent`: the caller's trace and the span it called from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 32],
    span_id: [u8; 16],
    flags: u8,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id(),
            self.span_id(),
            self.flags
        )
    }
}

fn lower_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn not_zero(s: &[u8]) -> bool {
    s.iter().any(|&b| b != b'0')
}

impl TraceContext {
    /// Parses one `traceparent` value; `None` if it is not a valid one.
    pub fn parse(v: &[u8]) -> Option<TraceContext> {
        if v.len() != 55 || !v.starts_with(b"00-") || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let (trace, span, flags) = (&v[3..35], &v[36..52], &v[53..55]);
        if !lower_hex(trace) || !lower_hex(span) || !lower_hex(flags) {
            return None;
        }
        if !not_zero(trace) || !not_zero(span) {
            return None;
        }
        let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
        Some(TraceContext {
            trace_id: trace.try_into().ok()?,
            span_id: span.try_into().ok()?,
            flags,
        })
    }

    /// The request's trace context, if it carries exactly one valid
    /// `traceparent` header.
    pub fn from_headers(h: &HeaderMap) -> Option<TraceContext> {
        let mut all = h.get_all("traceparent").iter();
        let first = all.next()?;
        if all.next().is_some() {
            return None;
        }
        TraceContext::parse(first.as_bytes())
    }

    /// 32 lowercase hex digits.
    pub fn trace_id(&self) -> &str {
        // Checked to be ASCII hex by `parse`.
        std::str::from_utf8(&self.trace_id).unwrap_or_default()
    }

    /// The caller's span: 16 lowercase hex digits.
    pub fn span_id(&self) -> &str {
        std::str::from_utf8(&self.span_id).unwrap_or_default()
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }
}

/// Trace contexts waiting for their request's access-log line, by request
/// id. The layer that parses a `traceparent` puts it here; the access log
/// takes it when the request ends (the transports build that line, and
/// carry no trace field of their own yet). Untraced requests only read one
/// shard's count; a request whose end is never logged is purged after
/// [`Pending::MAX_AGE`] once its shard holds more than a few entries.
#[derive(Debug, Default)]
pub struct Pending {
    shards: [PendingShard; 8],
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct PendingShard {
    count: std::sync::atomic::AtomicUsize,
    entries: std::sync::Mutex<Vec<(u64, TraceContext, std::time::Instant)>>,
}

impl Pending {
    pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

    fn shard(&self, request_id: u64) -> &PendingShard {
        &self.shards[(request_id % self.shards.len() as u64) as usize]
    }

    pub fn put(&self, request_id: u64, t: TraceContext) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.shard(request_id);
        let mut e = s.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() >= 64 {
            e.retain(|(_, _, at)| at.elapsed() < Self::MAX_AGE);
        }
        e.push((request_id, t, std::time::Instant::now()));
        s.count.store(e.len(), Relaxed);
    }

    pub fn take(&self, request_id: u64) -> Option<TraceContext> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.shard(request_id);
        if s.count.load(Relaxed) == 0 {
            return None;
        }
        let mut e = s.entries.lock().unwrap_or_else(|p| p.into_inner());
        let i = e.iter().position(|(id, _, _)| *id == request_id)?;
        let (_, t, _) = e.swap_remove(i);
        s.count.store(e.len(), Relaxed);
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_valid_values() {
        let t = TraceContext::parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id(), "00f067aa0ba902b7");
        assert_eq!(t.flags(), 1);
        assert_eq!(format!("{t:?}"), GOOD);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            TraceContext::parse(unsampled.as_bytes()).map(|t| t.flags()),
            Some(0)
        );
    }

    #[test]
    fn rejects_malformed_values() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("00", "truncated"),
            (&GOOD[..54], "one short"),
            (&format!("{GOOD}0"), "one long"),
            (
                &format!("{GOOD}-extra"),
                "a version-00 value with more fields",
            ),
            (&format!(" {}", &GOOD[1..]), "leading space"),
            (&GOOD.replace("00-4b", "01-4b"), "version 01"),
            (&GOOD.replace("00-4b", "ff-4b"), "version ff"),
            (&GOOD.replace("4bf9", "4BF9"), "upper-case trace id"),
            (
                &GOOD.replace("00f067aa", "00F067AA"),
                "upper-case parent id",
            ),
            (&GOOD.replace("-01", "-0A"), "upper-case flags"),
            (&GOOD.replace("4bf9", "4bg9"), "non-hex trace id"),
            (&GOOD.replace("a902", "a9z2"), "non-hex parent id"),
            (&GOOD.replace("-01", "-0x"), "non-hex flags"),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all-zero trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "all-zero parent id",
            ),
            (&GOOD.replace("-00f0", "_00f0"), "wrong separator"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                "separator moved",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\u{e9}",
                "non-ASCII",
            ),
        ];
        for (v, why) in cases {
            assert_eq!(TraceContext::parse(v.as_bytes()), None, "{why}: {v:?}");
        }
    }

    #[test]
    fn pending_hands_each_context_out_once() {
        let p = Pending::default();
        let t = TraceContext::parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(p.take(3), None);
        p.put(3, t);
        p.put(11, t); // same shard
        assert_eq!(p.take(3), Some(t));
        assert_eq!(p.take(3), None);
        assert_eq!(p.take(11), Some(t));
    }

    #[test]
    fn one_header_only() {
        let mut h = HeaderMap::new();
        assert_eq!(TraceContext::from_headers(&h), None, "absent");
        h.append("traceparent", GOOD.parse().expect("value"));
        assert!(TraceContext::from_headers(&h).is_some());
        h.append("traceparent", GOOD.parse().expect("value"));
        assert_eq!(TraceContext::from_headers(&h), None, "repeated");
    }
}
