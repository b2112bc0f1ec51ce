//! Arbitrary bytes (the first says where to split the stream) into the remoting frame and
//! header decoders.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_net::fuzz_checks::frame_decoder(data));
