//! Arbitrary bytes as the broker's topic journal (`config/topics.journal`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quiver_net::fuzz_checks::topic_journal_decoder(data));
