//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the checks the fuzz targets run.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails {target}", path.display());
        inputs += 1;
    }
    assert!(inputs >= 10, "corpus of {target} has only {inputs} inputs");
}

#[test]
fn record_decode_corpus() {
    replay("record_decode", quiver_engine::fuzz_checks::record_decoder);
}

#[test]
fn recover_segment_corpus() {
    replay(
        "recover_segment",
        quiver_engine::fuzz_checks::segment_recovery,
    );
}

#[test]
fn offset_index_decode_corpus() {
    replay(
        "offset_index_decode",
        quiver_engine::fuzz_checks::offset_index_decoder,
    );
}

#[test]
fn key_index_decode_corpus() {
    replay(
        "key_index_decode",
        quiver_engine::fuzz_checks::key_index_decoder,
    );
}

#[test]
fn index_checkpoint_decode_corpus() {
    replay(
        "index_checkpoint_decode",
        quiver_engine::fuzz_checks::index_checkpoint_decoder,
    );
}
