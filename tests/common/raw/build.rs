//! Bytes of requests as a client sends them, built record by record:
//! BEGIN_REQUEST, name-value pairs, the params nginx sends, streams and
//! records with explicit padding.

use bytes::BytesMut;
use myflask::fastcgi::params::encode_pair;
use myflask::fastcgi::record;

/// BEGIN_REQUEST (responder) for `id`.
pub fn begin(id: u16, keep: bool) -> BytesMut {
    let mut b = BytesMut::new();
    let flags = if keep { record::KEEP_CONN } else { 0 };
    record::put_begin_request(&mut b, id, record::ROLE_RESPONDER, flags);
    b
}

/// A name-value stream.
pub fn pairs(p: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for (k, v) in p {
        encode_pair(&mut b, k, v);
    }
    b.to_vec()
}

/// The params nginx sends for `method uri` (plus `extra`, in order);
/// `CONTENT_LENGTH` is sent as given, empty when `None`. A standard name
/// that also appears in `extra` is left to `extra`.
pub fn std_params(
    method: &str,
    uri: &str,
    content_length: Option<usize>,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let cl = content_length.map(|n| n.to_string()).unwrap_or_default();
    let mut v: Vec<(&str, &str)> = vec![
        ("QUERY_STRING", query),
        ("REQUEST_METHOD", method),
        ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", &cl),
        ("SCRIPT_NAME", path),
        ("REQUEST_URI", uri),
        ("DOCUMENT_URI", path),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("HTTP_HOST", "localhost"),
    ];
    // A standard param the caller gives itself is sent once, its way.
    v.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    v.extend_from_slice(extra);
    let p: Vec<(&[u8], &[u8])> = v
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    pairs(&p)
}

/// `data` as records of `kind` (split at the codec's chunk size) plus
/// the empty record that ends the stream.
pub fn stream(kind: u8, id: u16, data: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    record::put_stream(&mut b, kind, id, data);
    record::put_stream_end(&mut b, kind, id);
    b
}

/// One record with explicit padding (filled with 0xAA, which a server
/// must ignore).
pub fn record_padded(kind: u8, id: u16, content: &[u8], pad: u8) -> Vec<u8> {
    record_padded_with(kind, id, content, pad, 0xAA)
}

/// A record as any sender may write it: version 1 header, any padding
/// length, padding bytes of any value.
pub fn record_padded_with(kind: u8, id: u16, content: &[u8], pad: u8, pad_byte: u8) -> Vec<u8> {
    assert!(content.len() <= record::MAX_CONTENT_LEN);
    let mut v = Vec::with_capacity(record::HEADER_LEN + content.len() + pad as usize);
    v.push(record::VERSION_1);
    v.push(kind);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&(content.len() as u16).to_be_bytes());
    v.push(pad);
    v.push(0); // reserved
    v.extend_from_slice(content);
    v.extend(std::iter::repeat_n(pad_byte, pad as usize));
    v
}

/// A whole request: BEGIN, PARAMS (standard ones plus `extra`), empty
/// PARAMS, STDIN, empty STDIN. CONTENT_LENGTH is the body's length, or
/// empty for an empty body.
pub fn request(
    id: u16,
    keep: bool,
    method: &str,
    uri: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> BytesMut {
    let cl = (!body.is_empty()).then_some(body.len());
    let mut b = head(id, keep, method, uri, extra, cl);
    b.extend_from_slice(&stream(record::STDIN, id, body));
    b
}

/// The start of a request whose body the test sends itself: BEGIN, PARAMS
/// (standard ones plus `extra`, `CONTENT_LENGTH` as given) and the empty
/// PARAMS record.
pub fn head(
    id: u16,
    keep: bool,
    method: &str,
    uri: &str,
    extra: &[(&str, &str)],
    content_length: Option<usize>,
) -> BytesMut {
    let mut b = begin(id, keep);
    b.extend_from_slice(&stream(
        record::PARAMS,
        id,
        &std_params(method, uri, content_length, extra),
    ));
    b
}
