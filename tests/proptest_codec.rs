//! Property tests of the wire codec: encode ⇄ decode round trips of records
//! (any type, any id, any content length 0..=65535, any padding a sender may
//! choose) and of name-value pairs (any names and values, 1- and 4-byte
//! lengths, empty ones, split into PARAMS records at arbitrary boundaries).
//!
//! Needs `proptest = "1"` under `[dev-dependencies]`. 256 cases per
//! property keeps the whole file to a few seconds.

mod common;

use bytes::{Bytes, BytesMut};
use common::raw::record_padded_with as raw_record;
use myflask::fastcgi::params::{self, Params};
use myflask::fastcgi::record::{self, Record};
use proptest::collection::vec;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Failures shrink, but never for long: the inputs are large.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

/// Content lengths that hit the edges often: empty, tiny, around the
/// 8-byte padding unit, around the stream chunk, the maximum.
fn content_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0usize..=16,
        3 => 17usize..=2048,
        2 => 2049usize..=record::MAX_CONTENT_LEN,
        1 => (record::STREAM_CHUNK - 8)..=record::MAX_CONTENT_LEN,
        1 => Just(record::MAX_CONTENT_LEN),
    ]
}

/// `n` bytes: drawn one by one when short (so they shrink), from a seeded
/// generator when long (drawing 64 KiB byte by byte makes a case slow).
fn bytes_of(n: usize) -> BoxedStrategy<Vec<u8>> {
    if n <= 4096 {
        vec(any::<u8>(), n).boxed()
    } else {
        any::<u64>()
            .prop_map(move |seed| common::noise(n, seed))
            .boxed()
    }
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    content_len().prop_flat_map(bytes_of)
}

/// Lengths of a name or value: empty, 1-byte form (< 128), the 127/128
/// boundary, 4-byte form, and now and then longer than one record.
fn pair_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => Just(0usize),
        6 => 1usize..=127,
        2 => 126usize..=130,
        3 => 128usize..=4096,
        1 => 65000usize..=140_000,
    ]
}

fn blob() -> impl Strategy<Value = Vec<u8>> {
    pair_len().prop_flat_map(bytes_of)
}

fn pairs() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    vec((blob(), blob()), 0..12)
}

/// Sizes of consecutive PARAMS records: often tiny (every length byte and
/// pair straddles), sometimes anything up to the maximum.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    vec(
        prop_oneof![
            4 => 1usize..=9,
            3 => 1usize..=300,
            2 => 1usize..=record::MAX_CONTENT_LEN,
        ],
        1..40,
    )
}

fn encode_pairs(p: &[(Vec<u8>, Vec<u8>)]) -> BytesMut {
    let mut b = BytesMut::new();
    for (k, v) in p {
        params::encode_pair(&mut b, k, v);
    }
    b
}

/// Decodes every whole record in `buf`; panics on a decode error.
fn decode_all(buf: &mut BytesMut) -> Vec<Record> {
    let mut out = Vec::new();
    while let Some(r) = record::decode(buf).expect("decodes") {
        out.push(r);
    }
    out
}

proptest! {
    #![proptest_config(config())]

    /// put_record then decode gives back type, id and content, uses exactly
    /// the bytes written, and pads to a multiple of 8.
    #[test]
    fn record_roundtrip(kind in any::<u8>(), id in any::<u16>(), content in content()) {
        let mut buf = BytesMut::new();
        record::put_record(&mut buf, kind, id, &content);
        prop_assert_eq!(
            buf.len(),
            record::HEADER_LEN + content.len() + record::padding_for(content.len())
        );
        prop_assert_eq!(buf.len() % 8, 0);
        let rec = record::decode(&mut buf).expect("decodes").expect("whole");
        prop_assert_eq!(rec.kind, kind);
        prop_assert_eq!(rec.request_id, id);
        prop_assert_eq!(&rec.content[..], &content[..]);
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    }

    /// Any padding (0..=255 bytes of any value) is accepted and skipped; the
    /// record after it decodes intact; and every strict prefix of a record
    /// is "need more" without consuming anything.
    #[test]
    fn record_any_padding(
        kind in any::<u8>(),
        id in any::<u16>(),
        content in content(),
        pad in any::<u8>(),
        pad_byte in any::<u8>(),
        next in vec(any::<u8>(), 0..64),
        cut in any::<prop::sample::Index>(),
    ) {
        let first = raw_record(kind, id, &content, pad, pad_byte);
        let mut buf = BytesMut::from(&first[..]);
        record::put_record(&mut buf, record::STDIN, 7, &next);
        let recs = decode_all(&mut buf);
        prop_assert!(buf.is_empty());
        prop_assert_eq!(recs.len(), 2);
        prop_assert_eq!(recs[0].kind, kind);
        prop_assert_eq!(recs[0].request_id, id);
        prop_assert_eq!(&recs[0].content[..], &content[..]);
        prop_assert_eq!(recs[1].kind, record::STDIN);
        prop_assert_eq!(recs[1].request_id, 7);
        prop_assert_eq!(&recs[1].content[..], &next[..]);

        let n = cut.index(first.len());
        let mut part = BytesMut::from(&first[..n]);
        prop_assert_eq!(record::decode(&mut part).expect("a prefix is no error"), None);
        prop_assert_eq!(part.len(), n, "an incomplete record consumed bytes");
    }

    /// A byte stream of padded records fed in arbitrary pieces (as reads
    /// return them) decodes to the same records as fed whole.
    #[test]
    fn records_decode_the_same_however_the_bytes_arrive(
        recs in vec((any::<u8>(), any::<u16>(), vec(any::<u8>(), 0..3000), any::<u8>()), 1..8),
        pieces in cuts(),
    ) {
        let mut wire = Vec::new();
        for (kind, id, c, pad) in &recs {
            wire.extend(raw_record(*kind, *id, c, *pad, 0xAA));
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = pieces[i % pieces.len()].min(rest.len());
            i += 1;
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            got.extend(decode_all(&mut buf));
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got.len(), recs.len());
        for (g, (kind, id, c, _)) in got.iter().zip(&recs) {
            prop_assert_eq!(g.kind, *kind);
            prop_assert_eq!(g.request_id, *id);
            prop_assert_eq!(&g.content[..], &c[..]);
        }
    }

    /// put_stream + put_stream_end: records of at most 65535 bytes whose
    /// contents concatenate to the data, then exactly one empty record.
    #[test]
    fn stream_roundtrip(
        kind in any::<u8>(),
        id in any::<u16>(),
        len in prop_oneof![0usize..=100, 100usize..=200_000],
        seed in any::<u8>(),
    ) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        let mut buf = BytesMut::new();
        record::put_stream(&mut buf, kind, id, &data);
        record::put_stream_end(&mut buf, kind, id);
        let recs = decode_all(&mut buf);
        prop_assert!(buf.is_empty());
        let (last, body) = recs.split_last().expect("at least the end record");
        prop_assert!(last.content.is_empty());
        let mut got = Vec::new();
        for r in body {
            prop_assert_eq!(r.kind, kind);
            prop_assert_eq!(r.request_id, id);
            prop_assert!(!r.content.is_empty(), "an empty record inside the stream");
            prop_assert!(r.content.len() <= record::MAX_CONTENT_LEN);
            got.extend_from_slice(&r.content);
        }
        prop_assert_eq!(got, data);
    }

    /// Name-value pairs encoded, split into PARAMS records at arbitrary
    /// boundaries (pairs and 4-byte lengths straddle records), each record
    /// with arbitrary padding, decoded and gathered: they parse back equal,
    /// in order, repeated names included.
    #[test]
    fn params_roundtrip_across_records(
        p in pairs(),
        pieces in cuts(),
        pads in vec(any::<u8>(), 1..16),
        id in 1u16..,
    ) {
        let stream = encode_pairs(&p);
        let want_len: usize = p
            .iter()
            .map(|(k, v)| {
                let l = |n: usize| if n < 128 { 1 } else { 4 };
                l(k.len()) + l(v.len()) + k.len() + v.len()
            })
            .sum();
        prop_assert_eq!(stream.len(), want_len);

        let mut wire = Vec::new();
        let mut rest = &stream[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = pieces[i % pieces.len()].min(rest.len());
            wire.extend(raw_record(record::PARAMS, id, &rest[..n], pads[i % pads.len()], 0x55));
            rest = &rest[n..];
            i += 1;
        }
        wire.extend(raw_record(record::PARAMS, id, b"", pads[0], 0x55));

        let mut buf = BytesMut::from(&wire[..]);
        let recs = decode_all(&mut buf);
        prop_assert!(buf.is_empty());
        let (end, body) = recs.split_last().expect("end record");
        prop_assert!(end.content.is_empty());
        let mut gathered = BytesMut::new();
        for r in body {
            prop_assert_eq!(r.kind, record::PARAMS);
            prop_assert_eq!(r.request_id, id);
            gathered.extend_from_slice(&r.content);
        }
        let parsed = Params::parse(gathered.freeze()).expect("parses");
        prop_assert_eq!(parsed.len(), p.len());
        prop_assert_eq!(parsed.encoded_len(), want_len);
        for ((k, v), (wk, wv)) in parsed.iter().zip(&p) {
            prop_assert_eq!(k, &wk[..]);
            prop_assert_eq!(v, &wv[..]);
        }
        // from_pairs builds the same list.
        let built = Params::from_pairs(p.iter().map(|(k, v)| (&k[..], &v[..])));
        prop_assert!(built.iter().eq(parsed.iter()));
    }

    /// Every prefix of a params stream parses iff it ends on a pair
    /// boundary, and then to exactly the pairs before it; a cut inside a
    /// pair or a length is an error, never a panic or a short pair.
    #[test]
    fn params_prefixes(
        p in vec((vec(any::<u8>(), 0..300), vec(any::<u8>(), 0..300)), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let stream = encode_pairs(&p).freeze();
        let mut bounds = vec![0usize];
        for (k, v) in &p {
            let mut one = BytesMut::new();
            params::encode_pair(&mut one, k, v);
            bounds.push(bounds.last().unwrap() + one.len());
        }
        let n = cut.index(stream.len() + 1);
        let r = Params::parse(Bytes::copy_from_slice(&stream[..n]));
        match bounds.iter().position(|b| *b == n) {
            Some(k) => {
                let got = r.expect("a prefix on a pair boundary parses");
                prop_assert_eq!(got.len(), k);
                for ((gk, gv), (wk, wv)) in got.iter().zip(&p) {
                    prop_assert_eq!(gk, &wk[..]);
                    prop_assert_eq!(gv, &wv[..]);
                }
            }
            None => prop_assert!(r.is_err(), "a cut at {} of {} parsed", n, stream.len()),
        }
    }

    /// A length is 1 byte below 128 and 4 bytes (top bit set) from 128 on,
    /// up to the 31-bit maximum, and reads back as itself.
    #[test]
    fn length_encoding(len in prop_oneof![0usize..=300, 0usize..=0x7fff_ffff]) {
        let mut b = BytesMut::new();
        params::encode_len(&mut b, len);
        if len < 128 {
            prop_assert_eq!(&b[..], &[len as u8][..]);
        } else {
            prop_assert_eq!(b.len(), 4);
            prop_assert!(b[0] & 0x80 != 0);
            let back = u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]) as usize;
            prop_assert_eq!(back, len);
        }
        // As the name length of a pair with an empty value, it parses back
        // (for lengths small enough to materialise).
        if len <= 70_000 {
            let name = vec![b'n'; len];
            let mut s = BytesMut::new();
            params::encode_pair(&mut s, &name, b"");
            let parsed = Params::parse(s.freeze()).expect("parses");
            let (k, v) = parsed.iter().next().expect("one pair");
            prop_assert_eq!(k.len(), len);
            prop_assert!(v.is_empty());
        }
    }
}
