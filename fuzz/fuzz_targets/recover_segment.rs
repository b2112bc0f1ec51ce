//! Arbitrary bytes as a segment image into the recovery scan.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_engine::fuzz_checks::segment_recovery(data));
