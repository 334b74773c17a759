#![no_main]
//! Fuzz target: see `myflask::fastcgi::fuzz::params_parser` for the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    myflask::fastcgi::fuzz::params_parser(data);
});
