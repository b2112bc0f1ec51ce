//! A full disk, for real: a store on an 8 MiB tmpfs (mounted for the test; needs root, as CI
//! runs). Appends fail with a clear error once no segment can be prepared; everything stored
//! before stays readable and intact; freeing space lets appends succeed again at once; and a
//! restart keeps every acknowledged message.

mod support;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_executor::block_on;
use quiver_bench::probe::{index_from_logs, index_of_store};
use quiver_engine::store::Store;
use quiver_engine::store::types::{Message, ReadOutcome, StoreError};
use quiver_engine::{FlushMode, LogConfig, LogError, StoreConfig};
use support::Tmpfs;

fn config() -> StoreConfig {
    StoreConfig {
        shards: 1,
        pin_threads: false,
        cq_file_entries: 256,
        // Disk-pressure deletion off, checked often: the store may not make room by deleting
        // what it acknowledged, whatever the test's timing.
        disk_max_used_ratio: 1.0,
        retention_check_interval_ms: 200,
        log: LogConfig {
            segment_bytes: 1 << 20,
            max_record_bytes: 16 * 1024,
            write_buffer_bytes: 64 * 1024,
            flush: FlushMode::Sync,
            ..LogConfig::default()
        },
        ..StoreConfig::default()
    }
}

fn message(i: u64) -> Message {
    Message {
        keys: Bytes::from(format!("m{i}")),
        body: Bytes::from(vec![(i % 251) as u8; 2048]),
        ..Message::default()
    }
}

fn assert_all_stored(store: &Store, acked: &[u64]) {
    let mut offset = 0;
    let mut seen = Vec::new();
    loop {
        match block_on(store.read(b"full", 0, offset, 100, 1 << 20, None)).unwrap() {
            ReadOutcome::Found {
                messages,
                next_offset,
                ..
            } => {
                for m in messages {
                    assert_eq!(
                        m.record.body(),
                        message(m.queue_offset).body,
                        "offset {}",
                        m.queue_offset
                    );
                    seen.push(m.queue_offset);
                }
                offset = next_offset;
            }
            ReadOutcome::NoNewMessage { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        seen, acked,
        "every acknowledged message, in order, and nothing else"
    );
}

fn fill_until_full(store: &Store, acked: &mut Vec<u64>) -> StoreError {
    loop {
        let i = acked.len() as u64;
        match block_on(store.append(b"full", 0, vec![message(i)])) {
            Ok(placed) => {
                assert_eq!(placed[0].queue_offset, i);
                acked.push(i);
            }
            Err(e) => return e,
        }
        assert!(acked.len() < 100_000, "the disk never filled");
    }
}

fn filler(fs: &Path, bytes: usize) -> PathBuf {
    let path = fs.join("filler");
    std::fs::write(&path, vec![1u8; bytes]).unwrap();
    path
}

#[test]
fn a_full_disk_fails_appends_clearly_and_loses_nothing() {
    let fs = Tmpfs::mount("8m");
    let space = filler(&fs.path, 3 << 20);
    let dir = fs.path.join("store");
    let store = Store::open(&dir, config()).unwrap();
    let mut acked = Vec::new();

    let error = fill_until_full(&store, &mut acked);
    assert!(
        acked.len() > 500,
        "only {} messages before the disk filled",
        acked.len()
    );
    assert!(
        matches!(error, StoreError::Log(LogError::DiskFull { .. })),
        "expected a disk-full error, got {error}"
    );
    assert!(error.to_string().contains("disk full"), "{error}");
    // Still full: the next append fails the same way, and nothing was placed meanwhile.
    let again = block_on(store.append(b"full", 0, vec![message(acked.len() as u64)])).unwrap_err();
    assert!(
        matches!(again, StoreError::Log(LogError::DiskFull { .. })),
        "{again}"
    );
    assert_all_stored(&store, &acked);

    // Free space: the next append succeeds without waiting for any timer.
    std::fs::remove_file(space).unwrap();
    let i = acked.len() as u64;
    let placed =
        block_on(store.append(b"full", 0, vec![message(i)])).expect("append after space was freed");
    assert_eq!(placed[0].queue_offset, i);
    acked.push(i);
    assert_all_stored(&store, &acked);
    block_on(store.shutdown()).unwrap();

    // Restart on the same filesystem: everything acknowledged is there, indexes match the log.
    let expected = index_from_logs(&dir, &config().log).unwrap();
    let store = Store::open(&dir, config()).unwrap();
    assert_eq!(index_of_store(&store).unwrap(), expected);
    assert_all_stored(&store, &acked);
    block_on(store.shutdown()).unwrap();
}
