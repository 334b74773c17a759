//! FastCGI name-value pairs: the PARAMS stream and GET_VALUES bodies.
//!
//! The PARAMS stream is gathered whole (up to a cap) before it is parsed,
//! because the spec lets a pair straddle record boundaries ("the value of a
//! stream is independent of how many records it contains"), which
//! tokio-fastcgi and php-fpm get wrong. Parsing is then one pass over one
//! buffer; names and values are kept as ranges into it, so a request's
//! twenty-odd params cost two allocations, not forty.
//!
//! Repeated names are kept in order: nginx 1.22 (Debian 12) sends a repeated
//! HTTP header as repeated params of the same name.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;
use std::ops::Range;

/// Why a PARAMS stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamsError {
    /// The stream ended in the middle of a length or a pair.
    Truncated { offset: usize },
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamsError::Truncated { offset } => write!(
                f,
                "PARAMS stream ends inside a name-value pair (at byte {offset})"
            ),
        }
    }
}

impl std::error::Error for ParamsError {}

/// An ordered list of name-value pairs, as received.
#[derive(Clone, Default)]
pub struct Params {
    buf: Bytes,
    pairs: Vec<(Range<usize>, Range<usize>)>,
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

/// Reads one length (1 byte if < 128, else 4 bytes with the top bit set).
fn read_len(buf: &[u8], pos: &mut usize) -> Option<usize> {
    let first = *buf.get(*pos)?;
    if first & 0x80 == 0 {
        *pos += 1;
        return Some(first as usize);
    }
    let b = buf.get(*pos..*pos + 4)?;
    *pos += 4;
    Some((u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]])) as usize)
}

impl Params {
    /// Parses a complete name-value stream.
    pub fn parse(buf: Bytes) -> Result<Params, ParamsError> {
        Params::parse_with(buf, |_, _| {})
    }

    /// Parses a complete name-value stream, showing each name and its
    /// index to `seen` as it goes: a caller looking for some names finds
    /// them in this pass instead of walking the list again (see
    /// `request::Known`).
    pub fn parse_with(
        buf: Bytes,
        mut seen: impl FnMut(usize, &[u8]),
    ) -> Result<Params, ParamsError> {
        let mut pairs = Vec::with_capacity(32);
        let mut pos = 0;
        let b = &buf[..];
        while pos < b.len() {
            let start = pos;
            let name_len = read_len(b, &mut pos).ok_or(ParamsError::Truncated { offset: start })?;
            let value_len =
                read_len(b, &mut pos).ok_or(ParamsError::Truncated { offset: start })?;
            // Lengths come from the peer: check against what is actually
            // there before using them (a 4-byte length can claim 2 GiB).
            let name_end = pos
                .checked_add(name_len)
                .filter(|e| *e <= b.len())
                .ok_or(ParamsError::Truncated { offset: start })?;
            let value_end = name_end
                .checked_add(value_len)
                .filter(|e| *e <= b.len())
                .ok_or(ParamsError::Truncated { offset: start })?;
            seen(pairs.len(), &b[pos..name_end]);
            pairs.push((pos..name_end, name_end..value_end));
            pos = value_end;
        }
        Ok(Params { buf, pairs })
    }

    /// Builds a list from pairs (tests and clients).
    pub fn from_pairs<'a>(items: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Params {
        let mut buf = BytesMut::new();
        for (k, v) in items {
            encode_pair(&mut buf, k, v);
        }
        // Cannot fail: we just encoded it.
        Params::parse(buf.freeze()).unwrap_or_default()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The first value of `name`, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `name`, in the order received.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(k, _)| *k == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The first value of `name` as a `Bytes` sharing the params buffer
    /// (no copy: header values and the URI are built from these).
    pub fn get_shared(&self, name: &str) -> Option<Bytes> {
        self.pairs
            .iter()
            .find(|(k, _)| &self.buf[k.clone()] == name.as_bytes())
            .map(|(_, v)| self.buf.slice(v.clone()))
    }

    /// The name of the `i`-th pair (in `iter()` order).
    pub fn name(&self, i: usize) -> Option<&[u8]> {
        self.pairs.get(i).map(|(k, _)| &self.buf[k.clone()])
    }

    /// The value of the `i`-th pair (in `iter()` order).
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        self.pairs.get(i).map(|(_, v)| &self.buf[v.clone()])
    }

    /// The value of the `i`-th pair (in `iter()` order) as a `Bytes`
    /// sharing the params buffer.
    pub fn value_shared(&self, i: usize) -> Option<Bytes> {
        self.pairs.get(i).map(|(_, v)| self.buf.slice(v.clone()))
    }

    /// Every pair, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.pairs
            .iter()
            .map(|(k, v)| (&self.buf[k.clone()], &self.buf[v.clone()]))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Bytes the encoded stream took.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }
}

/// Appends one length in FastCGI's 1- or 4-byte form.
pub fn encode_len(buf: &mut BytesMut, len: usize) {
    if len < 128 {
        buf.put_u8(len as u8);
    } else {
        buf.put_u32((len as u32) | 0x8000_0000);
    }
}

/// Appends one name-value pair.
pub fn encode_pair(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    encode_len(buf, name.len());
    encode_len(buf, value.len());
    buf.put_slice(name);
    buf.put_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths() {
        let long_name = vec![b'N'; 200];
        let long_value = vec![b'v'; 70000];
        let mut buf = BytesMut::new();
        encode_pair(&mut buf, b"A", b"1");
        encode_pair(&mut buf, &long_name, &long_value);
        encode_pair(&mut buf, b"EMPTY", b"");
        let p = Params::parse(buf.freeze()).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p.get("A"), Some(&b"1"[..]));
        assert_eq!(
            p.get(std::str::from_utf8(&long_name).unwrap())
                .unwrap()
                .len(),
            70000
        );
        assert_eq!(p.get("EMPTY"), Some(&b""[..]));
    }

    #[test]
    fn four_byte_length_masks_the_top_bit() {
        // 128 encoded in the 4-byte form: 0x80 0x00 0x00 0x80.
        let mut raw = vec![0x80, 0, 0, 0x80, 1];
        raw.extend(std::iter::repeat_n(b'x', 128));
        raw.push(b'y');
        let p = Params::parse(Bytes::from(raw)).unwrap();
        assert_eq!(p.iter().next().unwrap().0.len(), 128);
    }

    #[test]
    fn repeated_names_are_kept_in_order() {
        let p = Params::from_pairs([
            (&b"HTTP_COOKIE"[..], &b"a=1"[..]),
            (b"HTTP_HOST", b"h"),
            (b"HTTP_COOKIE", b"b=2"),
        ]);
        let all: Vec<_> = p.get_all("HTTP_COOKIE").collect();
        assert_eq!(all, vec![&b"a=1"[..], &b"b=2"[..]]);
    }

    #[test]
    fn truncation_anywhere_is_an_error_not_a_panic() {
        let mut buf = BytesMut::new();
        encode_pair(&mut buf, b"REQUEST_METHOD", &[b'G'; 300]);
        let full = buf.freeze();
        for cut in 1..full.len() {
            assert!(Params::parse(full.slice(..cut)).is_err(), "cut {cut}");
        }
        assert!(Params::parse(full).is_ok());
    }

    #[test]
    fn absurd_length_does_not_allocate() {
        let raw = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x01, b'a']);
        assert!(Params::parse(raw).is_err());
    }
}
