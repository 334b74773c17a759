//! The FastCGI 1.0 wire format: record headers, record types, and the
//! encoders for every record myflask writes.
//!
//! This file owns bytes-on-the-wire and nothing else. It does not know what a
//! request is; `connection.rs` gives records their meaning.
//!
//! Decoding is zero-copy: a record's content is split off the connection's
//! read buffer as a `Bytes`, so a 32 KiB STDIN record reaches the request body
//! without being copied. Encoding appends to a caller's `BytesMut` so that the
//! records of one response (head, body, END_REQUEST) leave in one write.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// The only protocol version that exists.
pub const VERSION_1: u8 = 1;
/// Length of a record header.
pub const HEADER_LEN: usize = 8;
/// Largest content a single record can carry (the length field is 16 bits).
pub const MAX_CONTENT_LEN: usize = 65535;
/// Content size myflask uses when it splits a long stream: the largest
/// multiple of 8 below 65535, so full records need no padding at all.
pub const STREAM_CHUNK: usize = 65528;

pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const DATA: u8 = 8;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;

/// `flags` bit of BEGIN_REQUEST: the web server keeps the connection open.
pub const KEEP_CONN: u8 = 1;

pub const ROLE_RESPONDER: u16 = 1;
pub const ROLE_AUTHORIZER: u16 = 2;
pub const ROLE_FILTER: u16 = 3;

/// END_REQUEST protocol status values.
pub const REQUEST_COMPLETE: u8 = 0;
pub const CANT_MPX_CONN: u8 = 1;
pub const OVERLOADED: u8 = 2;
pub const UNKNOWN_ROLE: u8 = 3;

/// A record header as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub kind: u8,
    pub request_id: u16,
    pub content_len: u16,
    pub padding_len: u8,
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            version: b[0],
            kind: b[1],
            request_id: u16::from_be_bytes([b[2], b[3]]),
            content_len: u16::from_be_bytes([b[4], b[5]]),
            padding_len: b[6],
        }
    }

    /// Total bytes this record occupies on the wire.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.content_len as usize + self.padding_len as usize
    }
}

/// One decoded record; `content` excludes padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: u8,
    pub request_id: u16,
    pub content: Bytes,
}

/// Why a byte stream is not FastCGI. Every variant ends the connection it
/// came from, and only that connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The version byte was not 1: either another protocol is talking to us
    /// (an HTTP client on the FastCGI socket is the usual case) or the stream
    /// lost its framing.
    BadVersion {
        version: u8,
        first_bytes: [u8; HEADER_LEN],
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::BadVersion {
                version,
                first_bytes,
            } => {
                let hint = if first_bytes
                    .iter()
                    .all(|b| b.is_ascii_graphic() || *b == b' ')
                {
                    format!(
                        " (the bytes read as text: {:?}; is an HTTP client talking to the FastCGI socket?)",
                        String::from_utf8_lossy(first_bytes)
                    )
                } else {
                    String::new()
                };
                write!(
                    f,
                    "unsupported FastCGI version {version} in record header {first_bytes:02x?}{hint}"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Takes one whole record off the front of `buf`, if one is there.
///
/// Returns `Ok(None)` when more bytes are needed. Padding is consumed and
/// discarded whatever its length (the spec lets senders pad freely).
pub fn decode(buf: &mut BytesMut) -> Result<Option<Record>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(&buf[..HEADER_LEN]);
    let header = Header::parse(&raw);
    if header.version != VERSION_1 {
        return Err(DecodeError::BadVersion {
            version: header.version,
            first_bytes: raw,
        });
    }
    let total = header.record_len();
    if buf.len() < total {
        // Make room for the rest of this record in one go, so a large record
        // does not cost several reallocations as it trickles in.
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let content = buf.split_to(header.content_len as usize).freeze();
    buf.advance(header.padding_len as usize);
    Ok(Some(Record {
        kind: header.kind,
        request_id: header.request_id,
        content,
    }))
}

/// Padding that brings `len` to a multiple of 8 (computed on usize: the i16
/// negation trick overflows at 65535, see fastcgi-client 0.11.1).
pub fn padding_for(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// A record header for `content_len` bytes of content, padded to 8, and
/// the padding length (for headers written in place, after the content).
pub fn header_bytes(kind: u8, request_id: u16, content_len: usize) -> ([u8; HEADER_LEN], usize) {
    debug_assert!(content_len <= MAX_CONTENT_LEN);
    let pad = padding_for(content_len);
    let id = request_id.to_be_bytes();
    let len = (content_len as u16).to_be_bytes();
    (
        [VERSION_1, kind, id[0], id[1], len[0], len[1], pad as u8, 0],
        pad,
    )
}

/// Appends a record header for `content_len` bytes of content, padded to 8.
/// Returns the padding length the caller must write after the content.
pub fn put_header(buf: &mut BytesMut, kind: u8, request_id: u16, content_len: usize) -> usize {
    debug_assert!(content_len <= MAX_CONTENT_LEN);
    let pad = padding_for(content_len);
    buf.put_u8(VERSION_1);
    buf.put_u8(kind);
    buf.put_u16(request_id);
    buf.put_u16(content_len as u16);
    buf.put_u8(pad as u8);
    buf.put_u8(0);
    pad
}

const ZEROS: [u8; 8] = [0; 8];

/// Appends a whole record (header, content, padding). `content` must fit in
/// one record.
pub fn put_record(buf: &mut BytesMut, kind: u8, request_id: u16, content: &[u8]) {
    let pad = put_header(buf, kind, request_id, content.len());
    buf.put_slice(content);
    buf.put_slice(&ZEROS[..pad]);
}

/// Appends `data` as stream records of type `kind`, split at [`STREAM_CHUNK`].
/// Writes nothing for empty `data`: the empty record that closes a stream is
/// written by [`put_stream_end`] on purpose, never by accident.
pub fn put_stream(buf: &mut BytesMut, kind: u8, request_id: u16, mut data: &[u8]) {
    buf.reserve(data.len() + (data.len() / STREAM_CHUNK + 1) * (HEADER_LEN + 8));
    while !data.is_empty() {
        let n = data.len().min(STREAM_CHUNK);
        put_record(buf, kind, request_id, &data[..n]);
        data = &data[n..];
    }
}

/// Appends the empty record that ends a stream.
pub fn put_stream_end(buf: &mut BytesMut, kind: u8, request_id: u16) {
    put_header(buf, kind, request_id, 0);
}

/// Appends END_REQUEST.
pub fn put_end_request(buf: &mut BytesMut, request_id: u16, app_status: u32, protocol_status: u8) {
    put_header(buf, END_REQUEST, request_id, 8);
    buf.put_u32(app_status);
    buf.put_u8(protocol_status);
    buf.put_slice(&[0, 0, 0]);
}

/// Appends UNKNOWN_TYPE for a management record of type `kind`.
pub fn put_unknown_type(buf: &mut BytesMut, kind: u8) {
    put_header(buf, UNKNOWN_TYPE, 0, 8);
    buf.put_u8(kind);
    buf.put_slice(&[0; 7]);
}

/// Appends BEGIN_REQUEST (client side: tests, `myflask request`, the bench).
pub fn put_begin_request(buf: &mut BytesMut, request_id: u16, role: u16, flags: u8) {
    put_header(buf, BEGIN_REQUEST, request_id, 8);
    buf.put_u16(role);
    buf.put_u8(flags);
    buf.put_slice(&[0; 5]);
}

/// The body of a BEGIN_REQUEST record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginRequest {
    pub role: u16,
    pub flags: u8,
}

impl BeginRequest {
    /// Parses the 8-byte body. Fewer than 3 bytes cannot name a role.
    pub fn parse(content: &[u8]) -> Option<BeginRequest> {
        if content.len() < 3 {
            return None;
        }
        Some(BeginRequest {
            role: u16::from_be_bytes([content[0], content[1]]),
            flags: content[2],
        })
    }

    pub fn keep_conn(&self) -> bool {
        self.flags & KEEP_CONN != 0
    }
}

/// The body of an END_REQUEST record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRequest {
    pub app_status: u32,
    pub protocol_status: u8,
}

impl EndRequest {
    pub fn parse(content: &[u8]) -> Option<EndRequest> {
        if content.len() < 5 {
            return None;
        }
        Some(EndRequest {
            app_status: u32::from_be_bytes([content[0], content[1], content[2], content[3]]),
            protocol_status: content[4],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_padding() {
        let mut buf = BytesMut::new();
        put_record(&mut buf, STDOUT, 7, b"hello");
        assert_eq!(buf.len(), 8 + 5 + 3);
        let rec = decode(&mut buf).unwrap().unwrap();
        assert_eq!(rec.kind, STDOUT);
        assert_eq!(rec.request_id, 7);
        assert_eq!(&rec.content[..], b"hello");
        assert!(buf.is_empty());
    }

    #[test]
    fn decode_waits_for_whole_record() {
        let mut full = BytesMut::new();
        put_record(&mut full, PARAMS, 1, &[1u8; 100]);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(decode(&mut part).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn any_padding_is_skipped() {
        let mut buf = BytesMut::new();
        buf.put_slice(&[1, STDIN, 0, 1, 0, 2, 255, 0]);
        buf.put_slice(b"ab");
        buf.put_slice(&[9u8; 255]);
        put_record(&mut buf, STDIN, 1, b"");
        let a = decode(&mut buf).unwrap().unwrap();
        assert_eq!(&a.content[..], b"ab");
        let b = decode(&mut buf).unwrap().unwrap();
        assert!(b.content.is_empty());
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_version_is_an_error_that_names_http() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        let err = decode(&mut buf).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("version 71"), "{text}");
        assert!(text.contains("HTTP client"), "{text}");
    }

    #[test]
    fn streams_split_at_chunk_and_max_record_is_accepted() {
        let data = vec![7u8; STREAM_CHUNK * 2 + 10];
        let mut buf = BytesMut::new();
        put_stream(&mut buf, STDOUT, 1, &data);
        let mut got = Vec::new();
        let mut n = 0;
        while let Some(r) = decode(&mut buf).unwrap() {
            assert!(r.content.len() <= MAX_CONTENT_LEN);
            got.extend_from_slice(&r.content);
            n += 1;
        }
        assert_eq!(n, 3);
        assert_eq!(got, data);

        let mut big = BytesMut::new();
        put_record(&mut big, STDIN, 1, &vec![1u8; MAX_CONTENT_LEN]);
        assert_eq!(
            decode(&mut big).unwrap().unwrap().content.len(),
            MAX_CONTENT_LEN
        );
    }

    #[test]
    fn padding_math_has_no_overflow() {
        assert_eq!(padding_for(0), 0);
        assert_eq!(padding_for(1), 7);
        assert_eq!(padding_for(65535), 1);
        assert_eq!(padding_for(65528), 0);
    }
}
