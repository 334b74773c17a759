//! `http::Response` -> CGI response head: the response half of the mapping.
//!
//! FastCGI responders speak CGI, not HTTP: a `Status:` header instead of a
//! status line, and no hop-by-hop headers. nginx's FastCGI module does not
//! de-chunk, so a `Transfer-Encoding` header here would corrupt the response;
//! `Connection`, `Keep-Alive`, `Upgrade` and friends describe a connection
//! that does not exist on this side of nginx. They are all dropped.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderName};
use http::response::Parts;

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRAILER
        || name == header::PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// About how many bytes `encode_head` writes (never less, in practice):
/// enough to size a buffer once.
pub fn head_len_estimate(parts: &Parts) -> usize {
    let headers: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    // A status line, a content-length line, the blank line.
    64 + headers
}

/// Appends `n` in decimal (formatted on the stack: `to_string` cost an
/// allocation a response).
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// Appends the CGI head (status unless 200, headers, blank line) to `out`.
///
/// `exact_len` is the body's exact size when known: it becomes a
/// `Content-Length` if the service set none, which lets nginx keep the
/// client connection alive without chunking.
pub fn encode_head(out: &mut BytesMut, parts: &Parts, exact_len: Option<u64>) {
    // CGI's default status is 200, or 302 with a Location (RFC 3875
    // 6.3.3; nginx, Apache and Caddy all apply it), so a plain 200 goes
    // without a `Status:` line, as php-fpm sends it: nginx then skips a
    // header line's parse and lookup on most responses.
    let start = out.len();
    let ok = parts.status == http::StatusCode::OK;
    if !ok {
        put_status(out, parts.status);
    }
    let mut location = false;
    for (name, value) in parts.headers.iter() {
        if is_hop_by_hop(name) {
            continue;
        }
        location |= name == header::LOCATION;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    let bodiless = parts.status.is_informational()
        || parts.status == http::StatusCode::NO_CONTENT
        || parts.status == http::StatusCode::NOT_MODIFIED;
    if !bodiless && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(n) = exact_len {
            out.put_slice(b"content-length: ");
            put_decimal(out, n);
            out.put_slice(b"\r\n");
        }
    }
    // A 200 states its status after all when a Location would make it a
    // 302, or when it has no other line (a head needs one). Rare: the
    // lines written are moved to make room for it at the front.
    if ok && (location || out.len() == start) {
        let lines = out.split_off(start);
        put_status(out, parts.status);
        out.extend_from_slice(&lines);
    }
    out.put_slice(b"\r\n");
}

fn put_status(out: &mut BytesMut, status: http::StatusCode) {
    out.put_slice(b"Status: ");
    out.put_slice(status.as_str().as_bytes());
    if let Some(reason) = status.canonical_reason() {
        out.put_u8(b' ');
        out.put_slice(reason.as_bytes());
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_and_no_hop_by_hop() {
        let resp = http::Response::builder()
            .status(404)
            .header("content-type", "text/plain")
            .header("transfer-encoding", "chunked")
            .header("connection", "close")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .body(())
            .unwrap();
        let (parts, _) = resp.into_parts();
        let mut out = BytesMut::new();
        encode_head(&mut out, &parts, Some(3));
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("Status: 404 Not Found\r\n"), "{text}");
        assert!(!text.to_lowercase().contains("transfer-encoding"));
        assert!(!text.to_lowercase().contains("connection"));
        assert_eq!(text.matches("set-cookie").count(), 2);
        assert!(text.contains("content-length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_plain_200_has_no_status_line_a_redirect_or_other_status_has_one() {
        let head = |b: http::response::Builder| {
            let (parts, ()) = b.body(()).unwrap().into_parts();
            let mut out = BytesMut::new();
            encode_head(&mut out, &parts, Some(0));
            String::from_utf8(out.to_vec()).unwrap()
        };
        let ok = head(http::Response::builder().header("content-type", "text/plain"));
        assert_eq!(ok, "content-type: text/plain\r\ncontent-length: 0\r\n\r\n");
        // Without a Status, a Location would make it a 302.
        let moved = head(http::Response::builder().header("location", "/x"));
        assert!(moved.starts_with("Status: 200 OK\r\n"), "{moved}");
        // A head needs a line: a bare 200 of unknown length keeps Status.
        let (parts, ()) = http::Response::new(()).into_parts();
        let mut bare = BytesMut::new();
        encode_head(&mut bare, &parts, None);
        assert_eq!(&bare[..], b"Status: 200 OK\r\n\r\n");
        let created = head(http::Response::builder().status(201));
        assert!(created.starts_with("Status: 201 Created\r\n"), "{created}");
        // What the server's own FastCGI client reads back.
        let (status, _, _) = crate::fastcgi::client::parse_cgi(ok.as_bytes()).unwrap();
        assert_eq!(status, 200);
    }

    #[test]
    fn decimal_lengths() {
        for n in [0, 7, 10, 14, 65_535, 1 << 20, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
    }

    #[test]
    fn no_length_for_204() {
        let (parts, _) = http::Response::builder()
            .status(204)
            .body(())
            .unwrap()
            .into_parts();
        let mut out = BytesMut::new();
        encode_head(&mut out, &parts, Some(0));
        assert_eq!(&out[..], b"Status: 204 No Content\r\n\r\n");
    }
}
