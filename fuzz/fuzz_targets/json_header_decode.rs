//! Arbitrary bytes into the JSON header decoder, checked against serde_json.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_net::fuzz_checks::json_header_decoder(data));
