//! Arbitrary bytes (the first 8 are the claimed log position) into the record decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_engine::fuzz_checks::record_decoder(data));
