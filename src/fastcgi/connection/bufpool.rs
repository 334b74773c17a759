//! Spare read buffers, a few per worker thread: a connection takes one for
//! its first read and gives it back when it closes or goes idle, so a
//! connection per request (nginx without upstream keepalive) does not
//! allocate and free a 16 KiB buffer each time, which glibc serves from
//! its slow path (above its per-thread cache's size) and coalesces on free.

use bytes::BytesMut;
use std::cell::RefCell;

/// Size of a read buffer.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// Spare buffers kept per thread at most: at most this many connections
/// closing at once on one thread find theirs again; more are freed.
const SPARES: usize = 8;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `READ_CHUNK` bytes.
pub(super) fn take() -> BytesMut {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
}

/// Keeps `buf` for another connection if nothing else shares its memory
/// (a request may still hold a record read into it) and there is room.
pub(super) fn give(mut buf: BytesMut) {
    buf.clear();
    if !buf.try_reclaim(READ_CHUNK) {
        return;
    }
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARES {
            s.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again() {
        let mut buf = take();
        buf.extend_from_slice(b"records");
        let at = buf.as_ptr();
        give(buf);
        assert_eq!(SPARE.with(|s| s.borrow().len()), 1, "kept");
        let again = take();
        assert_eq!(again.as_ptr(), at, "the same memory, not a new allocation");
        assert!(again.is_empty());
        assert!(again.capacity() >= READ_CHUNK);
    }

    #[test]
    fn a_buffer_a_record_still_shares_is_not_kept() {
        let mut buf = take();
        buf.extend_from_slice(&[7u8; 10_000]);
        let record = buf.split_to(10_000).freeze();
        give(buf);
        let other = take();
        assert!(other.capacity() >= READ_CHUNK, "{}", other.capacity());
        assert!(record.iter().all(|&b| b == 7));
        // Once the record is gone, its memory can be kept.
        drop(other);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        buf.extend_from_slice(&[1u8; 100]);
        let at = buf.as_ptr();
        let record = buf.split_to(100).freeze();
        drop(record);
        give(buf);
        let again = take();
        assert_eq!(again.as_ptr(), at, "reclaimed from its start");
        assert!(again.capacity() >= READ_CHUNK);
    }

    #[test]
    fn at_most_spares_buffers_are_kept() {
        let bufs: Vec<BytesMut> = (0..SPARES + 3).map(|_| take()).collect();
        bufs.into_iter().for_each(give);
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARES);
    }
}
