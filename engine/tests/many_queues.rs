//! Thousands of queues under a budget of a few dozen open index files: descriptors stay within
//! the budget whatever the number of queues, and every message is readable before and after a
//! restart. (One test in its own binary, so the descriptor count is this test's alone.)

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_executor::block_on;
use futures_util::future::join_all;
use quiver_engine::store::Store;
use quiver_engine::store::types::{Message, ReadOutcome};
use quiver_engine::{FlushMode, LogConfig, StoreConfig};

const TOPICS: usize = 500;
const QUEUES: u32 = 8;
const BUDGET: usize = 32;

fn config() -> StoreConfig {
    StoreConfig {
        shards: 2,
        pin_threads: false,
        open_files_max: BUDGET,
        // Files of 4 entries: the queues have several each.
        cq_file_entries: 4,
        key_index_slots: 64,
        key_index_entries: 2048,
        log: LogConfig {
            segment_bytes: 4 << 20,
            max_record_bytes: 16 * 1024,
            write_buffer_bytes: 1 << 20,
            read_cache_bytes: 0,
            flush: FlushMode::Async,
            ..LogConfig::default()
        },
        ..StoreConfig::default()
    }
}

/// Descriptors this process holds on offset-index and key-index files.
fn index_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target.contains("/consumequeue/") || target.contains("/index/")
        })
        .count()
}

fn topic(t: usize) -> String {
    format!("many-{t}")
}

/// Every message of every queue, by (topic, queue) then offset.
fn read_everything(store: &Store) -> BTreeMap<(String, u32), Vec<Bytes>> {
    let mut out = BTreeMap::new();
    for t in 0..TOPICS {
        for q in 0..QUEUES {
            let mut bodies = Vec::new();
            loop {
                let offset = bodies.len() as u64;
                match block_on(store.read(topic(t).as_bytes(), q, offset, 64, 1 << 20, None))
                    .unwrap()
                {
                    ReadOutcome::Found { messages, .. } => {
                        bodies.extend(messages.into_iter().map(|m| m.record.body()))
                    }
                    ReadOutcome::NoNewMessage { .. } => break,
                    other => panic!("{}/{q} at {offset}: {other:?}", topic(t)),
                }
            }
            out.insert((topic(t), q), bodies);
        }
    }
    out
}

#[test]
fn thousands_of_queues_stay_within_a_small_budget_of_open_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    // 4,000 queues, 10 messages each (three index files per queue), sent from many tasks.
    let sends = (0..TOPICS).map(|t| {
        let store = store.clone();
        async move {
            for i in 0..10u64 {
                for q in 0..QUEUES {
                    let body = Bytes::from(format!("{t}/{q}/{i}"));
                    let message = Message {
                        body,
                        keys: Bytes::from(format!("k{t}-{q}-{i}")),
                        ..Message::default()
                    };
                    store
                        .append(topic(t).as_bytes(), q, vec![message])
                        .await
                        .unwrap();
                }
            }
        }
    });
    block_on(join_all(sends));
    let expected: BTreeMap<(String, u32), Vec<Bytes>> = (0..TOPICS)
        .flat_map(|t| {
            (0..QUEUES).map(move |q| {
                let bodies = (0..10)
                    .map(|i| Bytes::from(format!("{t}/{q}/{i}")))
                    .collect();
                ((topic(t), q), bodies)
            })
        })
        .collect();
    assert_eq!(read_everything(&store), expected);
    assert!(index_fds() <= BUDGET, "{} index files open", index_fds());
    block_on(store.shutdown()).unwrap();
    assert_eq!(index_fds(), 0, "index files left open after shutdown");

    // Reopening reads every queue's index, a few at a time.
    let store = Store::open(dir.path(), config()).unwrap();
    assert!(
        index_fds() <= BUDGET,
        "{} index files open after reopening",
        index_fds()
    );
    assert_eq!(read_everything(&store), expected);
    let found = block_on(store.query_key(b"many-7", b"k7-3-9", 10, 0, u64::MAX)).unwrap();
    assert_eq!(found.len(), 1);
    assert!(index_fds() <= BUDGET, "{} index files open", index_fds());
    block_on(store.shutdown()).unwrap();
}
