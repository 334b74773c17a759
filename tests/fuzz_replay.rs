//! Replays the fuzz corpus (fuzz/corpus/<target>/*: real nginx traffic,
//! protocol edge cases, and what the fuzzers kept) through the same
//! harnesses the fuzz targets use, so a regression on any of it fails
//! `cargo test`. Bounded: the corpus is kept minimised.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for p in entries {
        let data = std::fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "corpus file {} broke an invariant", p.display());
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
    n
}

#[test]
fn record_decoder_corpus() {
    let n = replay("record_decoder", myflask::fastcgi::fuzz::record_decoder);
    eprintln!("replayed {n} record_decoder inputs");
}

#[test]
fn params_parser_corpus() {
    let n = replay("params_parser", myflask::fastcgi::fuzz::params_parser);
    eprintln!("replayed {n} params_parser inputs");
}

#[test]
fn connection_corpus() {
    let n = replay("connection", myflask::fastcgi::fuzz::connection);
    eprintln!("replayed {n} connection inputs");
}
