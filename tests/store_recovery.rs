//! After damage to the indexes (or their checkpoint), reopening the store rebuilds them so that
//! they match the commit logs exactly: every record of a queue at its offset, nothing else.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_executor::block_on;
use quiver_bench::probe::{index_from_logs, index_of_store};
use quiver_engine::store::Store;
use quiver_engine::store::types::Message;
use quiver_engine::{FlushMode, LogConfig, StoreConfig};

fn config() -> StoreConfig {
    StoreConfig {
        shards: 2,
        pin_threads: false,
        cq_file_entries: 32,
        key_index_slots: 16,
        key_index_entries: 64,
        log: LogConfig {
            segment_bytes: 128 * 1024,
            max_record_bytes: 8 * 1024,
            write_buffer_bytes: 32 * 1024,
            flush: FlushMode::Sync,
            ..LogConfig::default()
        },
        ..StoreConfig::default()
    }
}

fn fill(root: &Path) {
    let store = Store::open(root, config()).unwrap();
    for i in 0..600u64 {
        let queue = (i % 5) as u32;
        let m = Message {
            keys: Bytes::from(format!("key-{i}")),
            body: Bytes::from(vec![i as u8; 50 + (i % 300) as usize]),
            ..Message::default()
        };
        block_on(store.append(b"t", queue, vec![m])).unwrap();
    }
    block_on(store.shutdown()).unwrap();
}

/// Reopens, checks the indexes against the logs and that key queries work, and closes.
fn assert_rebuilt(root: &Path) {
    let expected = index_from_logs(root, &config().log).unwrap();
    let store = Store::open(root, config()).unwrap();
    assert_eq!(
        index_of_store(&store).unwrap(),
        expected,
        "indexes differ from the logs"
    );
    for i in [0u64, 299, 599] {
        let found =
            block_on(store.query_key(b"t", format!("key-{i}").as_bytes(), 5, 0, u64::MAX)).unwrap();
        assert_eq!(found.len(), 1, "key-{i}");
    }
    // Appends continue at the right offsets.
    let placed = block_on(store.append(b"t", 0, vec![Message::default()])).unwrap();
    assert_eq!(
        placed[0].queue_offset,
        expected[&(b"t".to_vec(), 0)].len() as u64
    );
    block_on(store.shutdown()).unwrap();
}

fn files_named(root: &Path, pick: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut all = Vec::new();
    walk(root, &mut all);
    all.into_iter().filter(|p| pick(p)).collect()
}

#[test]
fn a_lost_index_checkpoint_rebuilds_everything_from_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    for f in files_named(dir.path(), |p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("index-checkpoint."))
    }) {
        std::fs::remove_file(f).unwrap();
    }
    assert_rebuilt(dir.path());
}

#[test]
fn torn_offset_index_files_are_truncated_and_refilled() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    // Tear the last file of every queue mid-entry, and put garbage after it.
    for queue_dir in files_named(dir.path(), |p| p.to_string_lossy().contains("consumequeue"))
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect::<std::collections::BTreeSet<_>>()
    {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&queue_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let last = files.last().unwrap();
        let mut bytes = std::fs::read(last).unwrap();
        let keep = bytes.len() / 2 + 3;
        bytes.truncate(keep);
        bytes.extend_from_slice(&[0xAB; 50]);
        std::fs::write(last, bytes).unwrap();
    }
    // And claim the indexes were complete up to the end of the logs.
    assert_rebuilt(dir.path());
}

#[test]
fn a_gap_below_the_checkpoint_rebuilds_that_queue_from_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    // Delete a whole middle file of one queue: entries the checkpoint vouches for are gone.
    let cq_files = files_named(dir.path(), |p| {
        p.to_string_lossy().contains("consumequeue/t/2/")
    });
    let mut cq_files = cq_files;
    cq_files.sort();
    assert!(cq_files.len() >= 3, "{cq_files:?}");
    std::fs::remove_file(&cq_files[1]).unwrap();
    let mut bytes = std::fs::read(&cq_files[0]).unwrap();
    bytes.truncate(bytes.len() - 20);
    std::fs::write(&cq_files[0], bytes).unwrap();
    assert_rebuilt(dir.path());
}

#[test]
fn lost_key_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let sealed = files_named(dir.path(), |p| {
        p.parent().is_some_and(|d| d.ends_with("index"))
    });
    assert!(
        sealed.len() >= 2,
        "600 keys in files of 64 should have sealed some: {sealed:?}"
    );
    // Damage the newest sealed file of each shard: it and everything after is rebuilt.
    for f in &sealed {
        let mut bytes = std::fs::read(f).unwrap();
        bytes[5] ^= 0xFF;
        std::fs::write(f, bytes).unwrap();
    }
    assert_rebuilt(dir.path());
}

#[test]
fn a_broken_index_of_a_recreated_topic_is_rebuilt_from_its_last_life_only() {
    let dir = tempfile::tempdir().unwrap();
    let body = |life: u8, i: u64| Bytes::from(vec![life; 40 + i as usize]);
    let store = Store::open(dir.path(), config()).unwrap();
    for i in 0..100u64 {
        let m = Message {
            body: body(1, i),
            ..Message::default()
        };
        block_on(store.append(b"t", 2, vec![m])).unwrap();
    }
    block_on(store.delete_topic(b"t")).unwrap();
    for i in 0..100u64 {
        let m = Message {
            body: body(2, i),
            ..Message::default()
        };
        block_on(store.append(b"t", 2, vec![m])).unwrap();
    }
    block_on(store.shutdown()).unwrap();

    let mut cq_files = files_named(dir.path(), |p| {
        p.to_string_lossy().contains("consumequeue/t/2/")
    });
    cq_files.sort();
    assert!(cq_files.len() >= 3, "{cq_files:?}");
    std::fs::remove_file(&cq_files[1]).unwrap();

    let store = Store::open(dir.path(), config()).unwrap();
    let mut offset = 0;
    let mut bodies = Vec::new();
    while let quiver_engine::store::types::ReadOutcome::Found {
        messages,
        next_offset,
        ..
    } = block_on(store.read(b"t", 2, offset, 64, 1 << 20, None)).unwrap()
    {
        bodies.extend(messages.into_iter().map(|m| m.record.body()));
        offset = next_offset;
    }
    let expected: Vec<Bytes> = (0..100).map(|i| body(2, i)).collect();
    assert_eq!(bodies, expected);
    block_on(store.shutdown()).unwrap();
}
