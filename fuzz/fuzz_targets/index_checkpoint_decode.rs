//! Arbitrary bytes as a shard's index checkpoint (its queues' offset ranges).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_engine::fuzz_checks::index_checkpoint_decoder(data));
