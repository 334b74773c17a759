#![no_main]
//! Fuzz target: see `myflask::fastcgi::fuzz::connection` for the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    myflask::fastcgi::fuzz::connection(data);
});
