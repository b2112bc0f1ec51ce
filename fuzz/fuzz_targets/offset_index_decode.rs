//! Arbitrary bytes as an offset-index (ConsumeQueue) file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_engine::fuzz_checks::offset_index_decoder(data));
