//! The store through its public API: shards on their threads, called from plain threads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_executor::block_on;
use quiver_engine::keyindex::key_hash;
use quiver_engine::store::Store;
use quiver_engine::store::types::{Message, ReadOutcome, StoreError, StoredMessage, TagFilter};
use quiver_engine::{FlushMode, LogConfig, StoreConfig};

fn config(shards: usize, flush: FlushMode) -> StoreConfig {
    StoreConfig {
        shards,
        pin_threads: false,
        cq_file_entries: 64,
        key_index_slots: 64,
        key_index_entries: 256,
        log: LogConfig {
            segment_bytes: 256 * 1024,
            max_record_bytes: 16 * 1024,
            write_buffer_bytes: 64 * 1024,
            read_cache_bytes: 0,
            flush,
            ..LogConfig::default()
        },
        ..StoreConfig::default()
    }
}

fn message(topic: &str, queue: u32, i: u64) -> Message {
    Message {
        born_timestamp_ms: i,
        tag_hash: i % 3,
        keys: Bytes::from(format!("k{i} {topic}-{queue}-{i}")),
        properties: Bytes::from_static(b"p"),
        body: Bytes::from(format!("{topic}/{queue}/{i}/").repeat(1 + (i % 40) as usize)),
        ..Message::default()
    }
}

fn read_all(store: &Store, topic: &str, queue: u32) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        match block_on(store.read(topic.as_bytes(), queue, offset, 100, 1 << 20, None)).unwrap() {
            ReadOutcome::Found {
                messages,
                next_offset,
                ..
            } => {
                out.extend(messages);
                offset = next_offset;
            }
            ReadOutcome::NoNewMessage { .. } => return out,
            ReadOutcome::OffsetMoved { min_offset, .. } => offset = min_offset,
            other => panic!("reading {topic}/{queue} at {offset}: {other:?}"),
        }
    }
}

fn assert_queue_holds(store: &Store, topic: &str, queue: u32, expected: &[u64]) {
    let messages = read_all(store, topic, queue);
    let got: Vec<u64> = messages.iter().map(|m| m.queue_offset).collect();
    let want: Vec<u64> = (0..expected.len() as u64).collect();
    assert_eq!(got, want, "offsets of {topic}/{queue}");
    for (m, &i) in messages.iter().zip(expected) {
        assert_eq!(
            m.record.body(),
            message(topic, queue, i).body,
            "{topic}/{queue} offset {}",
            m.queue_offset
        );
        assert_eq!(&m.record.topic()[..], topic.as_bytes());
        assert_eq!(m.record.header().queue_id.get(), queue);
        assert_eq!(m.record.header().queue_offset.get(), m.queue_offset);
    }
}

#[test]
fn appends_from_many_threads_get_contiguous_offsets_in_every_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(2, FlushMode::Sync)).unwrap();
    // 4 threads append to the same 6 queues at once, in batches of 1 to 4.
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for round in 0..40u64 {
                    let queue = ((t + round) % 6) as u32;
                    let batch: Vec<Message> = (0..1 + round % 4)
                        .map(|j| message("orders", queue, t * 1000 + round * 10 + j))
                        .collect();
                    let placed = block_on(store.append(b"orders", queue, batch.clone())).unwrap();
                    assert_eq!(placed.len(), batch.len());
                    for w in placed.windows(2) {
                        assert_eq!(
                            w[1].queue_offset,
                            w[0].queue_offset + 1,
                            "a batch is contiguous"
                        );
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut total = 0;
    for queue in 0..6 {
        let messages = read_all(&store, "orders", queue);
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(m.queue_offset, i as u64);
            assert_eq!(m.record.header().queue_offset.get(), i as u64);
        }
        total += messages.len();
    }
    assert_eq!(
        total,
        (0..40u64).map(|r| 1 + r % 4).sum::<u64>() as usize * 4
    );
    assert_eq!(store.queues().len(), 6);
    block_on(store.shutdown()).unwrap();
}

#[test]
fn reopening_keeps_queues_offsets_and_routing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(2, FlushMode::Async)).unwrap();
    for queue in 0..5 {
        for i in 0..30 {
            block_on(store.append(b"t", queue, vec![message("t", queue, i)])).unwrap();
        }
    }
    block_on(store.shutdown()).unwrap();
    let store = Store::open(dir.path(), config(2, FlushMode::Async)).unwrap();
    for queue in 0..5 {
        assert_queue_holds(&store, "t", queue, &(0..30).collect::<Vec<_>>());
        let placed = block_on(store.append(b"t", queue, vec![message("t", queue, 30)])).unwrap();
        assert_eq!(placed[0].queue_offset, 30);
    }
    block_on(store.shutdown()).unwrap();
}

#[test]
fn deleting_a_topic_removes_its_queues_for_good_and_spares_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(2, FlushMode::Sync)).unwrap();
    for queue in 0..4 {
        for i in 0..10 {
            block_on(store.append(b"doomed", queue, vec![message("doomed", queue, i)])).unwrap();
            block_on(store.append(b"kept", queue, vec![message("kept", queue, i)])).unwrap();
        }
    }
    assert_eq!(block_on(store.delete_topic(b"doomed")).unwrap(), 4);
    for queue in 0..4 {
        assert_eq!(block_on(store.offsets(b"doomed", queue)).unwrap(), None);
        assert!(matches!(
            block_on(store.read(b"doomed", queue, 0, 10, 1 << 20, None)).unwrap(),
            ReadOutcome::NoSuchQueue
        ));
        assert_queue_holds(&store, "kept", queue, &(0..10).collect::<Vec<_>>());
    }
    // Created again, it starts from offset 0; a reopen neither resurrects the old messages nor
    // loses the new one.
    let placed = block_on(store.append(b"doomed", 1, vec![message("doomed", 1, 100)])).unwrap();
    assert_eq!(placed[0].queue_offset, 0);
    block_on(store.shutdown()).unwrap();
    let store = Store::open(dir.path(), config(2, FlushMode::Sync)).unwrap();
    assert_queue_holds(&store, "doomed", 1, &[100]);
    assert_eq!(block_on(store.offsets(b"doomed", 0)).unwrap(), None);
    assert_queue_holds(&store, "kept", 3, &(0..10).collect::<Vec<_>>());
    assert_eq!(block_on(store.delete_topic(b"absent")).unwrap(), 0);
    block_on(store.shutdown()).unwrap();
}

#[test]
fn changing_the_number_of_shards_loses_no_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(3, FlushMode::Sync)).unwrap();
    for queue in 0..9 {
        block_on(store.append(
            b"t",
            queue,
            (0..5).map(|i| message("t", queue, i)).collect(),
        ))
        .unwrap();
    }
    block_on(store.shutdown()).unwrap();
    // Fewer threads: all three shard directories are still opened.
    let store = Store::open(dir.path(), config(1, FlushMode::Sync)).unwrap();
    assert_eq!(store.shard_count(), 3);
    for queue in 0..9 {
        assert_queue_holds(&store, "t", queue, &[0, 1, 2, 3, 4]);
    }
    block_on(store.shutdown()).unwrap();
    // More threads: new shards appear; old queues stay where they are.
    let store = Store::open(dir.path(), config(4, FlushMode::Sync)).unwrap();
    assert_eq!(store.shard_count(), 4);
    for queue in 0..9 {
        block_on(store.append(b"t", queue, vec![message("t", queue, 5)])).unwrap();
        assert_queue_holds(&store, "t", queue, &[0, 1, 2, 3, 4, 5]);
    }
    block_on(store.shutdown()).unwrap();
}

#[test]
fn reads_cross_segment_boundaries_and_respect_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(1, FlushMode::Sync)).unwrap();
    // About 1 MiB into 256 KiB segments.
    let expected: Vec<u64> = (0..800).collect();
    for chunk in expected.chunks(50) {
        block_on(store.append(
            b"big",
            0,
            chunk.iter().map(|&i| message("big", 0, i)).collect(),
        ))
        .unwrap();
    }
    assert_queue_holds(&store, "big", 0, &expected);
    match block_on(store.read(b"big", 0, 10, 5, 1 << 20, None)).unwrap() {
        ReadOutcome::Found {
            messages,
            next_offset,
            ..
        } => {
            assert_eq!(messages.len(), 5);
            assert_eq!(next_offset, 15);
        }
        other => panic!("{other:?}"),
    }
    // A byte limit below one message still returns one.
    match block_on(store.read(b"big", 0, 10, 100, 1, None)).unwrap() {
        ReadOutcome::Found {
            messages,
            next_offset,
            ..
        } => assert_eq!((messages.len(), next_offset), (1, 11)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        block_on(store.read(b"big", 0, 800, 10, 1 << 20, None)).unwrap(),
        ReadOutcome::NoNewMessage {
            max_offset: 800,
            ..
        }
    ));
    assert!(matches!(
        block_on(store.read(b"big", 0, 900, 10, 1 << 20, None)).unwrap(),
        ReadOutcome::OffsetBeyondMax {
            max_offset: 800,
            ..
        }
    ));
    assert!(matches!(
        block_on(store.read(b"none", 0, 0, 10, 1 << 20, None)).unwrap(),
        ReadOutcome::NoSuchQueue
    ));
    block_on(store.shutdown()).unwrap();
}

#[test]
fn tag_filters_use_the_index_hash_and_confirm_on_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(1, FlushMode::Async)).unwrap();
    // Tag hash i % 3; the record's body ends in the message number, used as the "real tag".
    block_on(store.append(b"t", 0, (0..30).map(|i| message("t", 0, i)).collect())).unwrap();
    let filter = TagFilter {
        hashes: vec![1],
        confirm: Some(Arc::new(|record: &quiver_engine::Record| {
            record.header().born_timestamp_ms.get().is_multiple_of(2)
        })),
    };
    match block_on(store.read(b"t", 0, 0, 30, 1 << 20, Some(filter))).unwrap() {
        ReadOutcome::Found {
            messages,
            next_offset,
            ..
        } => {
            let got: Vec<u64> = messages.iter().map(|m| m.queue_offset).collect();
            // Hash 1: 1, 4, 7, ..., 28; confirmed only when even.
            assert_eq!(got, vec![4, 10, 16, 22, 28]);
            assert_eq!(
                next_offset, 30,
                "filtered messages are skipped, not re-read"
            );
        }
        other => panic!("{other:?}"),
    }
    block_on(store.shutdown()).unwrap();
}

#[test]
fn timestamp_search_finds_the_first_message_stored_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(1, FlushMode::Sync)).unwrap();
    assert_eq!(
        block_on(store.offset_for_timestamp(b"t", 0, 0)).unwrap(),
        None,
        "no such queue"
    );
    let mut stamps = Vec::new();
    for i in 0..40 {
        // Several messages share a millisecond; the gaps make distinct ones too.
        let placed =
            block_on(store.append(b"t", 0, vec![message("t", 0, i), message("t", 0, i)])).unwrap();
        stamps.extend(placed.iter().map(|p| p.store_timestamp_ms));
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "store timestamps never decrease"
    );
    let search = |ts| {
        block_on(store.offset_for_timestamp(b"t", 0, ts))
            .unwrap()
            .unwrap()
    };
    assert_eq!(search(0), 0, "before everything: the first offset");
    assert_eq!(
        search(u64::MAX),
        stamps.len() as u64,
        "after everything: the max offset"
    );
    for (offset, &ts) in stamps.iter().enumerate() {
        let first_with_ts = stamps.iter().position(|&s| s >= ts).unwrap() as u64;
        assert_eq!(search(ts), first_with_ts, "timestamp of offset {offset}");
        if offset > 0 && stamps[offset - 1] < ts {
            assert_eq!(
                search(ts - 1),
                stamps.iter().position(|&s| s >= ts - 1).unwrap() as u64
            );
        }
    }
    block_on(store.shutdown()).unwrap();
}

/// Two different keys whose index hashes collide for topic `t`.
fn colliding_keys() -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for i in 0u64.. {
        let key = format!("key-{i}");
        let hash = key_hash(b"t", key.as_bytes());
        if let Some(other) = seen.insert(hash, key.clone()) {
            return (other, key);
        }
    }
    unreachable!()
}

#[test]
fn key_queries_confirm_hash_hits_and_return_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    // 256 entries per key-index file: the 600 messages below seal two files.
    let store = Store::open(dir.path(), config(2, FlushMode::Sync)).unwrap();
    let (a, b) = colliding_keys();
    assert_eq!(key_hash(b"t", a.as_bytes()), key_hash(b"t", b.as_bytes()));
    let mut with_a = Vec::new();
    for i in 0..600u64 {
        let key = match i % 3 {
            0 => a.clone(),
            1 => b.clone(),
            _ => format!("other-{i}"),
        };
        let m = Message {
            keys: Bytes::from(format!("{key} uniq-{i}")),
            body: Bytes::from(format!("body-{i}")),
            ..Message::default()
        };
        let placed = block_on(store.append(b"t", (i % 4) as u32, vec![m])).unwrap();
        if i % 3 == 0 {
            with_a.push((placed[0].store_timestamp_ms, format!("body-{i}")));
        }
        // The same key in another topic must not match.
        block_on(store.append(
            b"u",
            0,
            vec![Message {
                keys: Bytes::from(a.clone()),
                ..Message::default()
            }],
        ))
        .unwrap();
    }
    let found = block_on(store.query_key(b"t", a.as_bytes(), 1000, 0, u64::MAX)).unwrap();
    assert_eq!(
        found.len(),
        with_a.len(),
        "every message with key a, and only those"
    );
    let bodies: Vec<String> = found
        .iter()
        .map(|m| String::from_utf8(m.record.body().to_vec()).unwrap())
        .collect();
    let mut expected: Vec<String> = with_a.iter().rev().map(|(_, b)| b.clone()).collect();
    expected
        .sort_by_key(|b| std::cmp::Reverse(b.trim_start_matches("body-").parse::<u64>().unwrap()));
    let mut got_sorted = bodies.clone();
    got_sorted
        .sort_by_key(|b| std::cmp::Reverse(b.trim_start_matches("body-").parse::<u64>().unwrap()));
    assert_eq!(got_sorted, expected);
    assert!(
        found
            .windows(2)
            .all(|w| w[0].record.header().store_timestamp_ms.get()
                >= w[1].record.header().store_timestamp_ms.get()),
        "newest first"
    );
    // A limit, and a time range.
    assert_eq!(
        block_on(store.query_key(b"t", a.as_bytes(), 7, 0, u64::MAX))
            .unwrap()
            .len(),
        7
    );
    let (mid_ts, _) = with_a[with_a.len() / 2];
    let recent = block_on(store.query_key(b"t", a.as_bytes(), 1000, mid_ts, u64::MAX)).unwrap();
    assert!(
        recent
            .iter()
            .all(|m| m.record.header().store_timestamp_ms.get() >= mid_ts)
    );
    assert_eq!(
        recent.len(),
        with_a.iter().filter(|(ts, _)| *ts >= mid_ts).count()
    );
    // A unique key finds its one message, through sealed files too.
    let one = block_on(store.query_key(b"t", b"uniq-3", 10, 0, u64::MAX)).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(&one[0].record.body()[..], b"body-3");
    // And the message id (position) reads it back.
    assert_eq!(
        &block_on(store.read_at(one[0].pos)).unwrap().body()[..],
        b"body-3"
    );
    block_on(store.shutdown()).unwrap();
    // Queries after reopening: sealed files from disk, the active index rebuilt from the log.
    let store = Store::open(dir.path(), config(2, FlushMode::Sync)).unwrap();
    let again = block_on(store.query_key(b"t", a.as_bytes(), 1000, 0, u64::MAX)).unwrap();
    assert_eq!(again.len(), with_a.len());
    block_on(store.shutdown()).unwrap();
}

fn age_segments(dir: &Path, older_than: Duration) {
    for entry in walk(dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        if name.len() == 20 && entry.parent().is_some_and(|p| p.ends_with("commitlog")) {
            let file = std::fs::File::options().write(true).open(&entry).unwrap();
            file.set_modified(SystemTime::now() - older_than).unwrap();
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn retention_moves_minimum_offsets_while_readers_keep_reading() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(1, FlushMode::Sync)).unwrap();
    // About 1.5 MB: six segments of 256 KiB.
    let expected: Vec<u64> = (0..6000).collect();
    for chunk in expected.chunks(100) {
        block_on(store.append(b"r", 0, chunk.iter().map(|&i| message("r", 0, i)).collect()))
            .unwrap();
    }
    // Readers run through the queue again and again while retention deletes old segments.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, stop) = (store.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut checked = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut offset = 0;
                    loop {
                        match block_on(store.read(b"r", 0, offset, 50, 1 << 20, None)).unwrap() {
                            ReadOutcome::Found {
                                messages,
                                next_offset,
                                ..
                            } => {
                                for m in messages {
                                    // Never the wrong record: either this message or nothing.
                                    assert_eq!(
                                        m.record.body(),
                                        message("r", 0, m.queue_offset).body
                                    );
                                    checked += 1;
                                }
                                offset = next_offset;
                            }
                            ReadOutcome::OffsetMoved { min_offset, .. } => {
                                assert!(min_offset > offset);
                                offset = min_offset;
                            }
                            ReadOutcome::NoNewMessage { .. } => break,
                            other => panic!("{other:?}"),
                        }
                    }
                }
                checked
            })
        })
        .collect();
    age_segments(dir.path(), Duration::from_secs(100 * 3600));
    let gone = block_on(store.apply_retention(SystemTime::now())).unwrap();
    assert!(gone >= 3, "segments older than 72 h should go, {gone} went");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let offsets = block_on(store.offsets(b"r", 0)).unwrap().unwrap();
    assert!(offsets.min > 0, "the minimum offset moved");
    assert_eq!(offsets.max, 6000);
    match block_on(store.read(b"r", 0, 0, 10, 1 << 20, None)).unwrap() {
        ReadOutcome::OffsetMoved { min_offset, .. } => assert_eq!(min_offset, offsets.min),
        other => panic!("a deleted offset must say it moved: {other:?}"),
    }
    let rest = read_all(&store, "r", 0);
    assert_eq!(rest.first().unwrap().queue_offset, offsets.min);
    assert_eq!(rest.len() as u64, 6000 - offsets.min);
    // Key queries skip what is gone.
    assert!(
        block_on(store.query_key(b"r", b"k0", 10, 0, u64::MAX))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        block_on(store.query_key(b"r", b"k5999", 10, 0, u64::MAX))
            .unwrap()
            .len(),
        1
    );
    block_on(store.shutdown()).unwrap();
    // The moved minimum holds after reopening.
    let store = Store::open(dir.path(), config(1, FlushMode::Sync)).unwrap();
    assert_eq!(block_on(store.offsets(b"r", 0)).unwrap().unwrap(), offsets);
    block_on(store.shutdown()).unwrap();
}

#[test]
fn a_full_disk_deletes_the_oldest_segments_whatever_their_age() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            // Any disk counts as full.
            disk_max_used_ratio: 1e-9,
            ..config(1, FlushMode::Async)
        },
    )
    .unwrap();
    for chunk in (0..4000u64).collect::<Vec<_>>().chunks(100) {
        block_on(store.append(b"d", 0, chunk.iter().map(|&i| message("d", 0, i)).collect()))
            .unwrap();
    }
    let gone = block_on(store.apply_retention(SystemTime::now())).unwrap();
    assert!(gone >= 2, "{gone}");
    let offsets = block_on(store.offsets(b"d", 0)).unwrap().unwrap();
    assert!(offsets.min > 0);
    let rest = read_all(&store, "d", 0);
    assert_eq!(rest.len() as u64, 4000 - offsets.min);
    block_on(store.shutdown()).unwrap();
}

#[test]
fn a_full_request_queue_answers_busy_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            request_queue_depth: 1,
            ..config(1, FlushMode::Sync)
        },
    )
    .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let (mut accepted, mut busy) = (Vec::new(), 0);
                for i in 0..50u64 {
                    match block_on(store.append_or_busy(
                        b"b",
                        0,
                        vec![message("b", 0, t * 100 + i)],
                    )) {
                        Ok(placed) => accepted.push((placed[0].queue_offset, t * 100 + i)),
                        Err(StoreError::Busy) => busy += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (accepted, busy)
            })
        })
        .collect();
    let mut accepted = BTreeMap::new();
    let mut busy = 0;
    for t in threads {
        let (a, b) = t.join().unwrap();
        accepted.extend(a);
        busy += b;
    }
    assert!(
        busy > 0,
        "eight threads against a queue of one should meet a busy shard"
    );
    let stored = read_all(&store, "b", 0);
    assert_eq!(
        stored.len(),
        accepted.len(),
        "every accepted append is stored, nothing else"
    );
    for m in stored {
        let i = accepted[&m.queue_offset];
        assert_eq!(m.record.body(), message("b", 0, i).body);
    }
    block_on(store.shutdown()).unwrap();
}

#[test]
fn thread_services_run_on_every_thread_reach_every_shard_and_see_the_stop() {
    use quiver_engine::store::{LocalShards, ThreadService};
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let service: ThreadService = Arc::new(move |local: LocalShards| {
        let tx = tx.clone();
        Box::pin(async move {
            let thread = local.thread_index() as u64;
            // Four queues: some on this thread's shard, some on the other's.
            for queue in 0..4 {
                local
                    .append(b"svc", queue, vec![message("svc", queue, thread)])
                    .await
                    .unwrap();
            }
            tx.send(thread).unwrap();
            local.stopping().await;
            tx.send(100 + thread).unwrap();
        })
    });
    let store = Store::open_with_service(dir.path(), config(2, FlushMode::Sync), service).unwrap();
    let mut started = vec![rx.recv().unwrap(), rx.recv().unwrap()];
    started.sort();
    assert_eq!(started, vec![0, 1]);
    for queue in 0..4 {
        let messages = read_all(&store, "svc", queue);
        let mut from: Vec<u64> = messages
            .iter()
            .map(|m| m.record.header().born_timestamp_ms.get())
            .collect();
        from.sort();
        assert_eq!(
            from,
            vec![0, 1],
            "queue {queue} has one message from each thread"
        );
    }
    block_on(store.shutdown()).unwrap();
    let mut stopped = vec![rx.recv().unwrap(), rx.recv().unwrap()];
    stopped.sort();
    assert_eq!(stopped, vec![100, 101]);
}

#[test]
fn appends_gathered_for_another_thread_are_placed_in_issue_order_and_each_answered() {
    use quiver_engine::store::{LocalShards, ThreadService};
    const APPENDS: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let service: ThreadService = Arc::new(move |local: LocalShards| {
        let tx = tx.clone();
        Box::pin(async move {
            let thread = local.thread_index() as u64;
            // The queues exist first (a queue's first append also sets it up, and is not
            // placed before appends issued after it finish that).
            for queue in 0..4 {
                let n = thread * 1_000_000 + 999_999 - u64::from(queue);
                local
                    .append(b"g", queue, vec![message("g", queue, n)])
                    .await
                    .unwrap();
            }
            // Issued together: polled in order, so each queues its hand-off in order, and the
            // ones for the other thread cross in gathered batches.
            let appends = (0..APPENDS).map(|i| {
                let local = local.clone();
                let queue = (i % 4) as u32;
                let n = thread * 1_000_000 + i;
                async move {
                    (
                        queue,
                        n,
                        local
                            .append(b"g", queue, vec![message("g", queue, n)])
                            .await,
                    )
                }
            });
            let answers = futures_util::future::join_all(appends).await;
            tx.send(answers).unwrap();
        })
    });
    let store = Store::open_with_service(dir.path(), config(2, FlushMode::Async), service).unwrap();
    let mut answered = BTreeMap::new();
    for _ in 0..2 {
        for (queue, n, answer) in rx.recv().unwrap() {
            let appended = answer.unwrap();
            assert_eq!(appended.len(), 1);
            answered.insert((queue, appended[0].queue_offset), n);
        }
    }
    assert_eq!(answered.len(), 2 * APPENDS as usize);
    for queue in 0..4 {
        let mut stored = read_all(&store, "g", queue);
        // The two set-up appends.
        stored.retain(|m| m.record.header().born_timestamp_ms.get() % 1_000_000 < APPENDS);
        let mut last_from = [None::<u64>; 2];
        for m in &stored {
            let n = m.record.header().born_timestamp_ms.get();
            // Each answer names the offset its own message is at.
            assert_eq!(answered.get(&(queue, m.queue_offset)), Some(&n));
            let thread = (n / 1_000_000) as usize;
            assert!(
                last_from[thread].is_none_or(|last| last < n),
                "queue {queue}: {n} placed after {last_from:?}"
            );
            last_from[thread] = Some(n);
        }
        assert_eq!(stored.len(), (2 * APPENDS / 4) as usize);
    }
    block_on(store.shutdown()).unwrap();
}
