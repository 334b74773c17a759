//! Serving the app under a path prefix (`--mount-prefix /hello`), with the
//! semantics of WSGI's `SCRIPT_NAME`, which Flask builds its URLs from.
//!
//! The rule, for a prefix `/hello` (matched on whole path segments, case
//! sensitive):
//! - `/hello/rest?q` reaches the app as `/rest?q`, and `/hello` alone (or
//!   `/hello?q`) as `/`; `RequestInfo::mount_prefix` is `/hello`, so the
//!   app builds its links as prefix + path;
//! - anything else, `/hellofoo` included, is answered 404 by the server and
//!   never reaches the app: nginx's `location /hello/` does not send
//!   `/hellofoo` either, and under `location /hello` (no slash) it is
//!   another app's path, not a sub-path of this one;
//! - the path is compared as nginx's `location` compares it: percent-escapes
//!   decoded (`/hell%6F/x` and `/hello%2Fx` are under `/hello`, as nginx
//!   routes them) and repeated slashes merged (`merge_slashes on`); what
//!   follows the prefix is passed on as sent, still encoded. Dot segments
//!   (`/x/../hello/`) are not resolved: such a path is outside (clients
//!   resolve them before sending).
//!
//! The prefix itself is written plainly: `/`-separated segments of the
//! characters a path never needs to escape (no `%`, `.`/`..`, empty
//! segments, `?`, `#`, spaces or non-ASCII). A trailing `/` is dropped;
//! empty or `/` alone means no prefix. The access log keeps the URI as
//! received.

use crate::RequestInfo;
use crate::body::Body;
use crate::service::{App, BoxError, BoxFuture, ResponseBody, ServerError, error_response_boxed};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use std::sync::Arc;

/// A validated mount prefix such as `/hello`; empty for the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPrefix(Arc<str>);

/// Characters allowed in a prefix segment: RFC 3986 `pchar` without
/// `pct-encoded`, so a prefix never has two spellings.
fn plain_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
}

impl MountPrefix {
    /// Parses the `--mount-prefix` value (the error is one sentence).
    pub fn parse(s: &str) -> Result<MountPrefix, String> {
        let trimmed = s.trim_end_matches('/');
        if s.is_empty() || trimmed.is_empty() && s.starts_with('/') {
            return Ok(MountPrefix(Arc::from("")));
        }
        let fail = |why: &str| Err(format!("mount prefix {s:?} {why}"));
        let Some(rest) = trimmed.strip_prefix('/') else {
            return fail("must start with '/', e.g. /hello");
        };
        for seg in rest.split('/') {
            if seg.is_empty() {
                return fail("has an empty segment ('//')");
            }
            if seg == "." || seg == ".." {
                return fail("has a '.' or '..' segment");
            }
            if let Some(c) = seg.chars().find(|c| !plain_path_char(*c)) {
                return fail(&format!(
                    "has {c:?}: use letters, digits and -._~!$&'()*+,;=:@ only (write it unescaped)"
                ));
            }
        }
        Ok(MountPrefix(Arc::from(trimmed)))
    }

    /// The prefix, e.g. `/hello`; empty for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root (no prefix at all).
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for MountPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_root() { "/" } else { &self.0 })
    }
}

/// Reads one decoded byte at `raw[i..]`: a `%XX` escape or a plain byte.
/// Returns the byte and how many raw bytes it took.
fn decoded_at(raw: &[u8], i: usize) -> Option<(u8, usize)> {
    let b = *raw.get(i)?;
    let hex = raw
        .get(i + 1..i + 3)
        .and_then(|h| std::str::from_utf8(h).ok());
    match hex.map(|h| u8::from_str_radix(h, 16)) {
        Some(Ok(v)) if b == b'%' => Some((v, 3)),
        _ => Some((b, 1)),
    }
}

/// The path the app sees for `path`, or `None` when `path` is not under
/// `prefix` (see the module comment for the rule).
pub fn strip<'a>(prefix: &str, path: &'a str) -> Option<std::borrow::Cow<'a, str>> {
    let raw = path.as_bytes();
    let mut i = 0;
    for want in prefix.bytes() {
        let (got, used) = decoded_at(raw, i)?;
        if got != want {
            return None;
        }
        i += used;
        // merge_slashes: more separators after a '/' belong to it.
        while want == b'/' && matches!(decoded_at(raw, i), Some((b'/', _))) {
            i += decoded_at(raw, i).map_or(1, |(_, n)| n);
        }
    }
    let rest = &path[i..];
    if rest.is_empty() {
        return Some("/".into());
    }
    match decoded_at(raw, i) {
        Some((b'/', 1)) => Some(rest.into()),
        // An escaped separator: the app's path starts with a plain one.
        Some((b'/', _)) => Some(format!("/{}", &rest[3..]).into()),
        _ => None,
    }
}

/// `uri` with its path replaced by `path` (query, scheme and authority kept).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
    Uri::from_parts(parts).ok()
}

/// The app, served under `prefix`.
#[derive(Clone)]
struct Mounted {
    app: App,
    prefix: MountPrefix,
}

impl hyper::service::Service<Request<Body>> for Mounted {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn call(&self, mut req: Request<Body>) -> BoxFuture {
        let Some(path) = strip(self.prefix.as_str(), req.uri().path()) else {
            let why = format!("this server serves paths under {}/", self.prefix);
            return answer(ServerError::NotFound(why));
        };
        let Some(uri) = with_path(req.uri(), &path) else {
            // A sub-path of a valid URI is valid: kept as a 400, not a panic.
            let why = "path cannot be mapped below the mount prefix";
            return answer(ServerError::BadRequest(why.into()));
        };
        *req.uri_mut() = uri;
        if let Some(info) = req.extensions_mut().get_mut::<RequestInfo>() {
            info.mount_prefix = Some(self.prefix.0.clone());
        }
        self.app.call(req)
    }
}

/// The server's own answer (one error path with the transports').
fn answer(err: ServerError) -> BoxFuture {
    let r = error_response_boxed(&err);
    Box::pin(std::future::ready(Ok(r)))
}

/// Serves `app` under `prefix`; the root prefix returns `app` unchanged.
pub fn mount(app: App, prefix: &MountPrefix) -> App {
    if prefix.is_root() {
        return app;
    }
    App::from_hyper(Mounted {
        app,
        prefix: prefix.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_operators_write() {
        for (given, want) in [
            ("/hello", "/hello"),
            ("/hello/", "/hello"),
            ("/a/b-c.d~e", "/a/b-c.d~e"),
            ("/v1:@x", "/v1:@x"),
            ("", ""),
            ("/", ""),
            ("//", ""),
        ] {
            assert_eq!(
                MountPrefix::parse(given).expect(given).as_str(),
                want,
                "{given}"
            );
        }
        for (bad, why) in [
            ("hello", "must start with '/'"),
            ("/a//b", "empty segment"),
            ("/a/../b", "'..' segment"),
            ("/.", "'.' or '..'"),
            ("/a%20b", "has '%'"),
            ("/a b", "has ' '"),
            ("/a?x", "has '?'"),
            ("/a#x", "has '#'"),
            ("/caf\u{e9}", "has 'é'"),
        ] {
            let e = MountPrefix::parse(bad).expect_err(bad);
            assert!(e.starts_with(&format!("mount prefix {bad:?} ")), "{e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn paths_under_and_outside_the_prefix() {
        let under = [
            ("/hello", "/"),
            ("/hello/", "/"),
            ("/hello/rest", "/rest"),
            ("/hello/a/b%20c", "/a/b%20c"),
            ("/hell%6F/x", "/x"),
            ("/hell%6f/x", "/x"),
            ("/hello%2Fx", "/x"),
            ("/hello%2fx%2Fy", "/x%2Fy"),
            ("//hello//x", "//x"),
            ("/%2Fhello/x", "/x"),
        ];
        for (path, want) in under {
            assert_eq!(strip("/hello", path).as_deref(), Some(want), "{path}");
        }
        let outside = [
            "/",
            "/hellofoo",
            "/hello%66oo",
            "/Hello/x",
            "/hell",
            "/x/../hello/y",
            "/hello%",
            "/hello%2",
        ];
        for path in outside {
            assert_eq!(strip("/hello", path), None, "{path}");
        }
        assert_eq!(strip("/a/b", "/a%2Fb/c").as_deref(), Some("/c"));
        assert_eq!(strip("/a/b", "/a/bc"), None);
    }

    #[test]
    fn query_scheme_and_authority_survive() {
        let uri: Uri = "http://example.com/hello/x?q=1&r".parse().expect("uri");
        let got = with_path(&uri, "/x").expect("mapped");
        assert_eq!(got.to_string(), "http://example.com/x?q=1&r");
        let uri: Uri = "/hello?q".parse().expect("uri");
        assert_eq!(with_path(&uri, "/").expect("mapped").to_string(), "/?q");
    }
}
