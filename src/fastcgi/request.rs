//! CGI params -> `http::Request`: the request half of the CGI/1.1 mapping.
//!
//! Rules (RFC 3875 plus what nginx actually sends):
//! - method from `REQUEST_METHOD`;
//! - URI from `REQUEST_URI` (Debian's stock `fastcgi_params` sends it, raw,
//!   with the query), else `DOCUMENT_URI` or `SCRIPT_NAME`+`PATH_INFO`, plus
//!   `?QUERY_STRING`;
//! - headers from `HTTP_*` (upper case, `_` for `-`) plus `CONTENT_TYPE` and
//!   `CONTENT_LENGTH`; an empty `CONTENT_LENGTH` means no body;
//! - `Host` from `HTTP_HOST`, else `SERVER_NAME[:SERVER_PORT]` (HTTP/2 and 3
//!   requests may carry no Host header);
//! - scheme from `HTTPS` / `REQUEST_SCHEME`, exposed through [`crate::RequestInfo`];
//! - every param stays reachable through [`crate::RequestInfo`]`::params`.
//!
//! A request that cannot be built is a 400 whose body says why.

use super::params::Params;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Uri, Version};
use std::fmt;

/// Why params did not make a valid request (sent back as the 400 body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

/// What the connection needs besides the request itself.
#[derive(Debug)]
pub struct Mapped {
    pub request: Request<()>,
    /// Declared body length (`None` when absent or empty: the body then runs
    /// until the empty STDIN record).
    pub content_length: Option<u64>,
    pub scheme: Scheme,
    /// `REMOTE_ADDR:REMOTE_PORT` as nginx saw the client, for logs.
    pub peer: Option<String>,
}

/// Percent-encodes the bytes `http::Uri` refuses (raw UTF-8 and controls
/// that nginx lets through in `$request_uri`), keeping everything else.
fn escape_uri(raw: &[u8]) -> String {
    let mut s = String::with_capacity(raw.len() + 16);
    for &b in raw {
        if b.is_ascii_graphic()
            && !matches!(
                b,
                b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
            )
        {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Parses an origin-form (or absolute) URI. `raw` usually shares the
/// params buffer, so the common case copies nothing.
fn parse_uri(raw: Bytes) -> Result<Uri, BadRequest> {
    let ok = |u: &Uri| u.path().starts_with('/') || u.scheme().is_some();
    if let Ok(u) = Uri::from_maybe_shared(raw.clone()) {
        if ok(&u) || &raw[..] == b"*" {
            return Ok(u);
        }
    }
    let escaped = escape_uri(&raw);
    match Uri::try_from(escaped.as_str()) {
        Ok(u) if ok(&u) => Ok(u),
        _ => Err(bad(format!(
            "request URI {:?} is not a valid origin-form URI",
            String::from_utf8_lossy(&raw)
        ))),
    }
}

/// Where the params `build` reads are (index of the first occurrence),
/// and which params are headers: noted one name at a time, as the params
/// are parsed (`Params::parse_with(buf, |i, n| known.note(i, n))`), so
/// the list is walked once. A dozen scans of it, then one walk for these
/// and another for the headers, were most of `build`.
#[derive(Default)]
pub struct Known {
    request_method: Option<usize>,
    request_uri: Option<usize>,
    document_uri: Option<usize>,
    script_name: Option<usize>,
    path_info: Option<usize>,
    query_string: Option<usize>,
    server_protocol: Option<usize>,
    server_name: Option<usize>,
    server_port: Option<usize>,
    content_type: Option<usize>,
    content_length: Option<usize>,
    remote_addr: Option<usize>,
    remote_port: Option<usize>,
    https: Option<usize>,
    request_scheme: Option<usize>,
    /// Bit `i` set: pair `i` (< 64) is an `HTTP_*` header param.
    headers: u64,
    /// Some `HTTP_*` param sits at index 64 or beyond (a request with
    /// that many params is rare: those are found by a scan).
    headers_beyond: bool,
}

impl Known {
    /// Notes the `i`-th param's name.
    pub fn note(&mut self, i: usize, name: &[u8]) {
        if let Some(slot) = self.slot(name) {
            // The first occurrence counts, as with `Params::get`.
            slot.get_or_insert(i);
        } else if is_header_param(name) {
            if i < 64 {
                self.headers |= 1 << i;
            } else {
                self.headers_beyond = true;
            }
        }
    }

    /// The slot for a name `build` reads. Chosen by length and first
    /// byte, then one comparison or a few: a plain `match` on the names
    /// compared a name with the arms one after another, and with the
    /// twenty-odd params of Debian's `fastcgi_params` that was the
    /// costliest line of a request's mapping.
    fn slot(&mut self, name: &[u8]) -> Option<&mut Option<usize>> {
        let slot = match (name.len(), name.first()) {
            (5, Some(b'H')) if name == b"HTTPS" => &mut self.https,
            (9, Some(b'P')) if name == b"PATH_INFO" => &mut self.path_info,
            (11, Some(b'R')) => match name {
                b"REQUEST_URI" => &mut self.request_uri,
                b"REMOTE_ADDR" => &mut self.remote_addr,
                b"REMOTE_PORT" => &mut self.remote_port,
                _ => return None,
            },
            (11, Some(b'S')) => match name {
                b"SCRIPT_NAME" => &mut self.script_name,
                b"SERVER_NAME" => &mut self.server_name,
                b"SERVER_PORT" => &mut self.server_port,
                _ => return None,
            },
            (12, Some(b'C')) if name == b"CONTENT_TYPE" => &mut self.content_type,
            (12, Some(b'D')) if name == b"DOCUMENT_URI" => &mut self.document_uri,
            (12, Some(b'Q')) if name == b"QUERY_STRING" => &mut self.query_string,
            (14, Some(b'C')) if name == b"CONTENT_LENGTH" => &mut self.content_length,
            (14, Some(b'R')) => match name {
                b"REQUEST_METHOD" => &mut self.request_method,
                b"REQUEST_SCHEME" => &mut self.request_scheme,
                _ => return None,
            },
            (15, Some(b'S')) if name == b"SERVER_PROTOCOL" => &mut self.server_protocol,
            _ => return None,
        };
        Some(slot)
    }

    fn find(p: &Params) -> Known {
        let mut k = Known::default();
        for (i, (name, _)) in p.iter().enumerate() {
            k.note(i, name);
        }
        k
    }
}

/// `HTTP_*` params are the request's headers, except `HTTP_CONTENT_*`:
/// `CONTENT_*` are authoritative (nginx may send both).
fn is_header_param(name: &[u8]) -> bool {
    name.starts_with(b"HTTP_") && name != b"HTTP_CONTENT_LENGTH" && name != b"HTTP_CONTENT_TYPE"
}

/// The value of the pair at `i`, if any.
fn val(p: &Params, i: Option<usize>) -> Option<&[u8]> {
    i.and_then(|i| p.value(i))
}

/// The value at `i` if it is UTF-8.
fn val_str(p: &Params, i: Option<usize>) -> Option<&str> {
    val(p, i).and_then(|v| std::str::from_utf8(v).ok())
}

fn uri_from_params(p: &Params, k: &Known) -> Result<Uri, BadRequest> {
    if let Some(raw) = k
        .request_uri
        .and_then(|i| p.value_shared(i))
        .filter(|v| !v.is_empty())
    {
        return parse_uri(raw);
    }
    let mut raw: Vec<u8> = match val(p, k.document_uri).filter(|v| !v.is_empty()) {
        Some(d) => d.to_vec(),
        None => {
            let mut v = val(p, k.script_name).unwrap_or_default().to_vec();
            v.extend_from_slice(val(p, k.path_info).unwrap_or_default());
            v
        }
    };
    if raw.is_empty() {
        raw.push(b'/');
    } else if raw[0] != b'/' {
        raw.insert(0, b'/');
    }
    if let Some(q) = val(p, k.query_string).filter(|q| !q.is_empty()) {
        raw.push(b'?');
        raw.extend_from_slice(q);
    }
    parse_uri(Bytes::from(raw))
}

fn version_from(p: &Params, k: &Known) -> Version {
    match val(p, k.server_protocol) {
        Some(b"HTTP/1.0") => Version::HTTP_10,
        Some(b"HTTP/0.9") => Version::HTTP_09,
        Some(b"HTTP/2.0") | Some(b"HTTP/2") => Version::HTTP_2,
        Some(b"HTTP/3.0") | Some(b"HTTP/3") => Version::HTTP_3,
        _ => Version::HTTP_11,
    }
}

/// `HTTP_ACCEPT_LANGUAGE` -> `accept-language`, lower-cased on the stack
/// (standard names then cost no allocation at all).
fn header_name(cgi: &[u8]) -> Option<HeaderName> {
    let rest = cgi.strip_prefix(b"HTTP_")?;
    let map = |b: &u8| {
        if *b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    };
    let mut tmp = [0u8; 64];
    if rest.len() <= tmp.len() {
        for (t, b) in tmp.iter_mut().zip(rest) {
            *t = map(b);
        }
        HeaderName::from_bytes(&tmp[..rest.len()]).ok()
    } else {
        HeaderName::from_bytes(&rest.iter().map(map).collect::<Vec<u8>>()).ok()
    }
}

/// Appends the header of `HTTP_*` param `i`.
fn add_header(
    p: &Params,
    i: usize,
    headers: &mut http::HeaderMap,
    has_host: &mut bool,
) -> Result<(), BadRequest> {
    let name = p.name(i).unwrap_or_default();
    let hn = header_name(name).ok_or_else(|| {
        bad(format!(
            "param {:?} does not make a valid header name",
            String::from_utf8_lossy(name)
        ))
    })?;
    let value = p.value_shared(i).unwrap_or_default();
    if hn == HOST && value.is_empty() {
        // An empty Host is valid HTTP (a target without an authority,
        // RFC 9112 3.2) and what nginx's `$host` gives when the request
        // has none and the server block no `server_name`: as if absent,
        // so SERVER_NAME can stand in. Not an authority, not a 400.
        return Ok(());
    }
    let hv = HeaderValue::from_maybe_shared(value.clone())
        .map_err(|_| bad(format!("header {hn} has a value with forbidden bytes")))?;
    if hn == HOST && !*has_host {
        // The Host that counts (the first) must be an authority.
        // Parsed from the shared bytes: from a `&str` it is a copy.
        if Authority::from_maybe_shared(value).is_err() {
            return Err(bad(format!("Host header {hv:?} is not a valid authority")));
        }
        *has_host = true;
    }
    // append, not insert: repeated params are repeated headers.
    headers.append(hn, hv);
    Ok(())
}

fn scheme_from(p: &Params, k: &Known) -> Scheme {
    match val(p, k.https) {
        Some(v) if !v.is_empty() && !v.eq_ignore_ascii_case(b"off") => return Scheme::HTTPS,
        _ => {}
    }
    match val(p, k.request_scheme) {
        Some(v) if v.eq_ignore_ascii_case(b"https") => Scheme::HTTPS,
        _ => Scheme::HTTP,
    }
}

/// Builds the request head from a complete PARAMS stream.
pub fn build(p: &Params) -> Result<Mapped, BadRequest> {
    build_known(p, &Known::find(p))
}

/// `build`, with `k` noted while `p` was parsed.
pub fn build_known(p: &Params, k: &Known) -> Result<Mapped, BadRequest> {
    let method = match val(p, k.request_method) {
        None | Some(b"") => return Err(bad("REQUEST_METHOD is missing")),
        Some(m) => Method::from_bytes(m).map_err(|_| {
            bad(format!(
                "REQUEST_METHOD {:?} is not a valid method",
                String::from_utf8_lossy(m)
            ))
        })?,
    };
    let uri = uri_from_params(p, k)?;
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .version(version_from(p, k));
    let headers = builder
        .headers_mut()
        .ok_or_else(|| bad("invalid request head"))?;

    // In the order received (ascending bits, then the scan beyond 64).
    let mut has_host = false;
    let mut bits = k.headers;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        add_header(p, i, headers, &mut has_host)?;
    }
    if k.headers_beyond {
        for i in 64..p.len() {
            if p.name(i).is_some_and(is_header_param) {
                add_header(p, i, headers, &mut has_host)?;
            }
        }
    }

    if !has_host {
        if let Some(name) = val_str(p, k.server_name).filter(|s| !s.is_empty()) {
            let host = match val_str(p, k.server_port).filter(|s| !s.is_empty()) {
                Some(port) if port != "80" && port != "443" => format!("{name}:{port}"),
                _ => name.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&host) {
                if host.parse::<Authority>().is_ok() {
                    headers.insert(HOST, v);
                }
            }
        }
    }

    if let Some(ct) = val(p, k.content_type).filter(|v| !v.is_empty()) {
        let v = HeaderValue::from_bytes(ct).map_err(|_| bad("CONTENT_TYPE has forbidden bytes"))?;
        headers.insert(CONTENT_TYPE, v);
    }

    let content_length = match val(p, k.content_length).filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => {
            let n = std::str::from_utf8(v)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    bad(format!(
                        "CONTENT_LENGTH {:?} is not a number",
                        String::from_utf8_lossy(v)
                    ))
                })?;
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
            Some(n)
        }
    };

    let peer = val_str(p, k.remote_addr)
        .filter(|s| !s.is_empty())
        .map(|a| {
            // Built by hand: `format!` costs more than the rest of this.
            let port = val_str(p, k.remote_port).filter(|s| !s.is_empty());
            let mut s = String::with_capacity(a.len() + 8);
            match port {
                Some(port) => {
                    let v6 = a.contains(':');
                    if v6 {
                        s.push('[');
                    }
                    s.push_str(a);
                    if v6 {
                        s.push(']');
                    }
                    s.push(':');
                    s.push_str(port);
                }
                None => s.push_str(a),
            }
            s
        });

    let request = builder
        .body(())
        .map_err(|e| bad(format!("invalid request: {e}")))?;
    Ok(Mapped {
        request,
        content_length,
        scheme: scheme_from(p, k),
        peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
    }

    #[test]
    fn every_name_build_reads_is_noted_at_its_first_occurrence_and_only_it() {
        let names = [
            "REQUEST_METHOD",
            "REQUEST_URI",
            "DOCUMENT_URI",
            "SCRIPT_NAME",
            "PATH_INFO",
            "QUERY_STRING",
            "SERVER_PROTOCOL",
            "SERVER_NAME",
            "SERVER_PORT",
            "CONTENT_TYPE",
            "CONTENT_LENGTH",
            "REMOTE_ADDR",
            "REMOTE_PORT",
            "HTTPS",
            "REQUEST_SCHEME",
        ];
        let mut k = Known::default();
        for (i, n) in names.iter().enumerate() {
            k.note(i, n.as_bytes());
            k.note(100 + i, n.as_bytes()); // a repeat: the first counts
        }
        let got = [
            k.request_method,
            k.request_uri,
            k.document_uri,
            k.script_name,
            k.path_info,
            k.query_string,
            k.server_protocol,
            k.server_name,
            k.server_port,
            k.content_type,
            k.content_length,
            k.remote_addr,
            k.remote_port,
            k.https,
            k.request_scheme,
        ];
        let want: Vec<Option<usize>> = (0..names.len()).map(Some).collect();
        assert_eq!(got.to_vec(), want);
        // Near misses (same length and first byte, case, a prefix) are
        // neither a known name nor a header.
        let mut k = Known::default();
        for (i, n) in [
            "REQUEST_URX",
            "SERVER_PORTS",
            "https",
            "SERVER_",
            "HTTPX",
            "SCRIPT_NAMF",
        ]
        .iter()
        .enumerate()
        {
            k.note(i, n.as_bytes());
        }
        assert!(k.request_uri.is_none() && k.server_port.is_none() && k.https.is_none());
        assert!(k.script_name.is_none() && k.headers == 0);
        k.note(3, b"HTTP_X_A");
        k.note(70, b"HTTP_X_B");
        k.note(4, b"HTTP_CONTENT_TYPE");
        assert_eq!((k.headers, k.headers_beyond), (1 << 3, true));
    }

    #[test]
    fn debian_fastcgi_params_request() {
        let p = params(&[
            ("QUERY_STRING", "a=1"),
            ("REQUEST_METHOD", "POST"),
            ("CONTENT_TYPE", "text/plain"),
            ("CONTENT_LENGTH", "5"),
            ("SCRIPT_NAME", "/x/y"),
            ("REQUEST_URI", "/x/y?a=1"),
            ("DOCUMENT_URI", "/x/y"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REQUEST_SCHEME", "https"),
            ("REMOTE_ADDR", "10.0.0.1"),
            ("REMOTE_PORT", "5555"),
            ("HTTP_HOST", "example.org"),
            ("HTTP_X_FORWARDED_FOR", "1.1.1.1"),
            ("HTTP_ACCEPT", "a"),
            ("HTTP_ACCEPT", "b"),
        ]);
        let m = build(&p).unwrap();
        let r = &m.request;
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "/x/y?a=1");
        assert_eq!(r.headers()["host"], "example.org");
        assert_eq!(r.headers()["x-forwarded-for"], "1.1.1.1");
        assert_eq!(r.headers().get_all("accept").iter().count(), 2);
        assert_eq!(r.headers()["content-length"], "5");
        assert_eq!(m.content_length, Some(5));
        assert_eq!(m.scheme, Scheme::HTTPS);
        assert_eq!(m.peer.as_deref(), Some("10.0.0.1:5555"));
    }

    #[test]
    fn peer_forms() {
        let peer = |pairs: &[(&str, &str)]| {
            let mut all = vec![("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/")];
            all.extend_from_slice(pairs);
            build(&params(&all)).unwrap().peer
        };
        assert_eq!(
            peer(&[("REMOTE_ADDR", "::1"), ("REMOTE_PORT", "443")]).as_deref(),
            Some("[::1]:443")
        );
        assert_eq!(
            peer(&[("REMOTE_ADDR", "10.1.2.3")]).as_deref(),
            Some("10.1.2.3")
        );
        assert_eq!(
            peer(&[("REMOTE_ADDR", "10.1.2.3"), ("REMOTE_PORT", "")]).as_deref(),
            Some("10.1.2.3")
        );
        assert_eq!(peer(&[("REMOTE_ADDR", ""), ("REMOTE_PORT", "1")]), None);
        // The first of repeated params counts.
        assert_eq!(
            peer(&[("REMOTE_ADDR", "1.1.1.1"), ("REMOTE_ADDR", "2.2.2.2")]).as_deref(),
            Some("1.1.1.1")
        );
    }

    #[test]
    fn script_name_path_info_fallback_and_empty_content_length() {
        let p = params(&[
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", "/app"),
            ("PATH_INFO", "/users/1"),
            ("QUERY_STRING", "x=y"),
            ("CONTENT_LENGTH", ""),
            ("SERVER_NAME", "h"),
            ("SERVER_PORT", "8080"),
            ("HTTPS", "on"),
        ]);
        let m = build(&p).unwrap();
        assert_eq!(m.request.uri(), "/app/users/1?x=y");
        assert_eq!(m.content_length, None);
        assert_eq!(m.request.headers()["host"], "h:8080");
        assert_eq!(m.scheme, Scheme::HTTPS);
    }

    #[test]
    fn raw_utf8_uri_is_escaped_not_refused() {
        let p = params(&[("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/caf\u{e9} x")]);
        assert_eq!(build(&p).unwrap().request.uri(), "/caf%C3%A9%20x");
    }

    #[test]
    fn bad_params_give_reasons() {
        let e = build(&params(&[("REQUEST_URI", "/")])).unwrap_err();
        assert!(e.0.contains("REQUEST_METHOD"));
        let e = build(&params(&[("REQUEST_METHOD", "G T")])).unwrap_err();
        assert!(e.0.contains("not a valid method"), "{e}");
        let e = build(&params(&[
            ("REQUEST_METHOD", "GET"),
            ("CONTENT_LENGTH", "-1"),
        ]))
        .unwrap_err();
        assert!(e.0.contains("CONTENT_LENGTH"));
        let e = build(&params(&[("REQUEST_METHOD", "GET"), ("HTTP_X", "a\x01b")])).unwrap_err();
        assert!(e.0.contains("forbidden"), "{e}");
        let e = build(&params(&[("REQUEST_METHOD", "GET"), ("HTTP_HOST", "a b")])).unwrap_err();
        assert!(e.0.contains("Host"), "{e}");
        // Whatever spelling makes the header `host`, it is checked.
        let e = build(&params(&[("REQUEST_METHOD", "GET"), ("HTTP_Host", "a b")])).unwrap_err();
        assert!(e.0.contains("not a valid authority"), "{e}");
    }

    #[test]
    fn the_first_host_is_the_one_checked_and_kept() {
        let m = build(&params(&[
            ("REQUEST_METHOD", "GET"),
            ("HTTP_HOST", "example.org:8080"),
            ("HTTP_HOST", "a b"),
        ]))
        .unwrap();
        assert_eq!(m.request.headers()[HOST], "example.org:8080");
        // No Host at all: SERVER_NAME stands in, and is not an error.
        let m = build(&params(&[
            ("REQUEST_METHOD", "GET"),
            ("SERVER_NAME", "example.org"),
            ("SERVER_PORT", "8443"),
        ]))
        .unwrap();
        assert_eq!(m.request.headers()[HOST], "example.org:8443");
    }

    #[test]
    fn an_empty_host_is_no_host_not_an_error() {
        // nginx's `HTTP_HOST $host` (Debian's fastcgi_params, the package's
        // snippet) for an HTTP/1.0 request without Host, in a server block
        // without server_name.
        let m = build(&params(&[("REQUEST_METHOD", "GET"), ("HTTP_HOST", "")])).unwrap();
        assert!(m.request.headers().get(HOST).is_none());
        let m = build(&params(&[
            ("REQUEST_METHOD", "GET"),
            ("HTTP_HOST", ""),
            ("SERVER_NAME", "example.org"),
            ("SERVER_PORT", "80"),
        ]))
        .unwrap();
        assert_eq!(m.request.headers()[HOST], "example.org");
        assert_eq!(m.request.headers().get_all(HOST).iter().count(), 1);
    }

    #[test]
    fn headers_keep_their_order_past_the_64th_param() {
        // Headers at indices 10, 63, 64 and 69: the first two come from the
        // bitmask noted while parsing, the others from the scan beyond it.
        let names: Vec<String> = (0..70)
            .map(|i| match i {
                0 => "REQUEST_METHOD".into(),
                10 | 63 | 64 | 69 => "HTTP_ACCEPT".into(),
                65 => "HTTP_CONTENT_LENGTH".into(),
                _ => format!("X_PARAM_{i}"),
            })
            .collect();
        let values: Vec<String> = (0..70)
            .map(|i| {
                if i == 0 {
                    "GET".into()
                } else {
                    format!("v{i}")
                }
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        for (n, v) in names.iter().zip(&values) {
            super::super::params::encode_pair(&mut buf, n.as_bytes(), v.as_bytes());
        }
        let mut k = Known::default();
        let p = Params::parse_with(buf.freeze(), |i, n| k.note(i, n)).unwrap();
        let m = build_known(&p, &k).unwrap();
        let all: Vec<_> = m.request.headers().get_all("accept").iter().collect();
        assert_eq!(all, ["v10", "v63", "v64", "v69"]);
        // HTTP_CONTENT_* is not a header (CONTENT_* is authoritative).
        assert!(m.request.headers().get(CONTENT_LENGTH).is_none());
        assert_eq!(m.request.headers().len(), 4);
        // The same as the two-pass `build`.
        assert_eq!(build(&p).unwrap().request.headers(), m.request.headers());
    }
}
