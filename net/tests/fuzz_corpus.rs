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
fn frame_decode_corpus() {
    replay("frame_decode", quiver_net::fuzz_checks::frame_decoder);
}

#[test]
fn batch_decode_corpus() {
    replay("batch_decode", quiver_net::fuzz_checks::batch_decoder);
}

#[test]
fn json_header_decode_corpus() {
    replay(
        "json_header_decode",
        quiver_net::fuzz_checks::json_header_decoder,
    );
}

#[test]
fn topic_journal_decode_corpus() {
    replay(
        "topic_journal_decode",
        quiver_net::fuzz_checks::topic_journal_decoder,
    );
}
