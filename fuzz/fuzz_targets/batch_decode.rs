//! Arbitrary bytes into the batch-message decoder (and the pulled-message decoder).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_net::fuzz_checks::batch_decoder(data));
