//! Arbitrary bytes as a key-index file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_engine::fuzz_checks::key_index_decoder(data));
