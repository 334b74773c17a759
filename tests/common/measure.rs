//! What tests measure and compare: the memory of a process, deterministic
//! bodies, and hashes that name a body in a failure message.

/// VmRSS of process `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    proc_kib(pid, "VmRSS")
}

/// Deterministic pseudo-random bytes (xorshift), for bodies whose every
/// byte matters.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The FNV-1a 64 offset basis: the hash of no bytes.
pub const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 of `b`, to name a body in a failure message (the app's
/// `/upload` answers with the same hash).
pub fn fnv(b: &[u8]) -> u64 {
    fnv_continue(FNV_BASIS, b)
}

/// FNV-1a 64 continued from state `h` over `b`, for data hashed in pieces.
pub fn fnv_continue(h: u64, b: &[u8]) -> u64 {
    b.iter()
        .fold(h, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3))
}

/// Asserts two bodies are equal, reporting length, hash and the first
/// difference instead of dumping megabytes.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes (fnv {:016x}), want {} bytes (fnv {:016x}); first difference at {first:?}",
            got.len(),
            fnv(got),
            want.len(),
            fnv(want)
        );
    }
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM, ...); 0 once the
/// process is gone.
pub fn proc_kib(pid: i32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
