//! `ParamsBuf`: one request's PARAMS stream while it arrives, kept as the
//! read buffer's own bytes when it comes in one record (as nginx sends it).

use bytes::{Bytes, BytesMut};

/// A PARAMS stream as it arrives. nginx sends the whole stream in one
/// record, whose content is kept as it is (a slice of the read buffer);
/// only a stream of several records is joined into a buffer of its own.
#[derive(Default)]
pub(super) enum ParamsBuf {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl ParamsBuf {
    #[inline]
    pub(super) fn len(&self) -> usize {
        match self {
            ParamsBuf::Empty => 0,
            ParamsBuf::One(b) => b.len(),
            ParamsBuf::Many(b) => b.len(),
        }
    }

    #[inline]
    pub(super) fn push(&mut self, more: Bytes) {
        *self = match std::mem::take(self) {
            ParamsBuf::Empty => ParamsBuf::One(more),
            ParamsBuf::One(first) => {
                let mut b = BytesMut::with_capacity(first.len() + more.len());
                b.extend_from_slice(&first);
                b.extend_from_slice(&more);
                ParamsBuf::Many(b)
            }
            ParamsBuf::Many(mut b) => {
                b.extend_from_slice(&more);
                ParamsBuf::Many(b)
            }
        }
    }

    /// The whole stream. With `own`, never a slice of the read buffer: a
    /// request that outlives this pass of the reader must not pin that
    /// buffer (its 16 KiB and more), which could then not be reused.
    #[inline]
    pub(super) fn finish(self, own: bool) -> Bytes {
        match self {
            ParamsBuf::Empty => Bytes::new(),
            ParamsBuf::One(b) if own => Bytes::copy_from_slice(&b),
            ParamsBuf::One(b) => b,
            ParamsBuf::Many(b) => b.freeze(),
        }
    }
}
