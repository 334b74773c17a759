#![no_main]
//! Fuzz target: see `myflask::fastcgi::fuzz::record_decoder` for the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    myflask::fastcgi::fuzz::record_decoder(data);
});
