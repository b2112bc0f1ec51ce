//! Brand-new queues under concurrent first appends, and offset indexes damaged while the store
//! was stopped: every acknowledged message must stay reachable by its queue offset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_executor::block_on;
use futures_util::future::join_all;
use quiver_engine::store::Store;
use quiver_engine::store::types::{Message, ReadOutcome};
use quiver_engine::{FlushMode, LogConfig, StoreConfig};

/// Offset-index files of 16 entries, so a queue rolls files within a few dozen messages.
const CQ_FILE_ENTRIES: u64 = 16;

fn config(shards: usize, flush: FlushMode) -> StoreConfig {
    StoreConfig {
        shards,
        pin_threads: false,
        cq_file_entries: CQ_FILE_ENTRIES,
        key_index_slots: 64,
        key_index_entries: 4096,
        log: LogConfig {
            segment_bytes: 1 << 20,
            max_record_bytes: 16 * 1024,
            write_buffer_bytes: 256 * 1024,
            read_cache_bytes: 0,
            flush,
            ..LogConfig::default()
        },
        ..StoreConfig::default()
    }
}

fn body(topic: &str, sender: usize, i: usize) -> Bytes {
    Bytes::from(format!("{topic}/{sender}/{i}"))
}

/// What the store acknowledged: (topic, queue, offset) → body.
type Acks = BTreeMap<(String, u32, u64), Bytes>;

/// Every message of a queue from its first offset, by offset.
fn read_queue(store: &Store, topic: &str, queue: u32) -> BTreeMap<u64, Bytes> {
    let mut out = BTreeMap::new();
    let mut offset = 0;
    loop {
        match block_on(store.read(topic.as_bytes(), queue, offset, 100, 1 << 20, None)).unwrap() {
            ReadOutcome::Found {
                messages,
                next_offset,
                ..
            } => {
                for m in messages {
                    out.insert(m.queue_offset, m.record.body());
                }
                offset = next_offset;
            }
            ReadOutcome::NoNewMessage { .. } | ReadOutcome::NoSuchQueue => return out,
            ReadOutcome::OffsetMoved { min_offset, .. } => offset = min_offset,
            other => panic!("reading {topic}/{queue} at {offset}: {other:?}"),
        }
    }
}

/// Asserts that every acknowledged message reads back at its offset.
fn assert_all_readable(store: &Store, acks: &Acks) {
    let mut queues: BTreeMap<(String, u32), Vec<(u64, &Bytes)>> = BTreeMap::new();
    for ((topic, queue, offset), body) in acks {
        queues
            .entry((topic.clone(), *queue))
            .or_default()
            .push((*offset, body));
    }
    let mut lost = Vec::new();
    for ((topic, queue), expected) in &queues {
        let stored = read_queue(store, topic, *queue);
        for (offset, body) in expected {
            match stored.get(offset) {
                Some(got) if got == *body => {}
                Some(got) => panic!("{topic}/{queue} offset {offset}: {got:?}, not {body:?}"),
                None => lost.push(format!("{topic}/{queue}@{offset}")),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages not readable by offset, first: {:?}",
        lost.len(),
        acks.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Files under `dir` this process holds open although they were deleted.
fn deleted_but_open(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with(&dir) && target.ends_with("(deleted)"))
        .collect()
}

/// `senders` concurrent senders per topic, each sending `per_sender` messages one at a time to
/// the topic's `queues` queues in turn, starting at different queues: every queue's first
/// appends come from several senders at once. Returns what was acknowledged.
fn send_concurrently(
    store: &Store,
    topics: &[String],
    queues: u32,
    senders: usize,
    per_sender: usize,
) -> Acks {
    unique(block_on(send_concurrently_async(
        store, topics, queues, senders, per_sender,
    )))
}

/// The acknowledgements, each offset given once.
fn unique(sent: Vec<((String, u32, u64), Bytes)>) -> Acks {
    let mut acks = Acks::new();
    for (key, body) in sent {
        assert!(
            acks.insert(key.clone(), body).is_none(),
            "offset {key:?} given twice"
        );
    }
    acks
}

async fn send_concurrently_async(
    store: &Store,
    topics: &[String],
    queues: u32,
    senders: usize,
    per_sender: usize,
) -> Vec<((String, u32, u64), Bytes)> {
    let tasks = topics.iter().flat_map(|topic| {
        (0..senders).map(move |sender| {
            let store = store.clone();
            let topic = topic.clone();
            async move {
                let mut acks = Vec::with_capacity(per_sender);
                for i in 0..per_sender {
                    let queue = ((sender + i) % queues as usize) as u32;
                    let message = Message {
                        body: body(&topic, sender, i),
                        ..Message::default()
                    };
                    let placed = store
                        .append(topic.as_bytes(), queue, vec![message])
                        .await
                        .unwrap_or_else(|e| panic!("{topic}/{queue}: {e}"));
                    let at = (topic.clone(), queue, placed[0].queue_offset);
                    acks.push((at, body(&topic, sender, i)));
                }
                acks
            }
        })
    });
    join_all(tasks).await.into_iter().flatten().collect()
}

fn new_topics(round: usize, count: usize) -> Vec<String> {
    (0..count).map(|t| format!("new-{round}-{t}")).collect()
}

fn concurrent_first_appends_lose_nothing(shards: usize, flush: FlushMode) {
    let dir = tempfile::tempdir().unwrap();
    let mut acks = Acks::new();
    for round in 0..3 {
        let store = Store::open(dir.path(), config(shards, flush)).unwrap();
        // Everything acknowledged so far survived the restart.
        assert_all_readable(&store, &acks);
        // 40 new topics of 8 queues, 32 senders each.
        acks.extend(send_concurrently(&store, &new_topics(round, 40), 8, 32, 6));
        let held = deleted_but_open(dir.path());
        assert!(held.is_empty(), "deleted files still written: {held:?}");
        assert_all_readable(&store, &acks);
        block_on(store.shutdown()).unwrap();
    }
    let store = Store::open(dir.path(), config(shards, flush)).unwrap();
    assert_all_readable(&store, &acks);
    block_on(store.shutdown()).unwrap();
}

#[test]
fn concurrent_first_appends_to_new_queues_of_one_shard_lose_nothing() {
    concurrent_first_appends_lose_nothing(1, FlushMode::Sync);
}

#[test]
fn concurrent_first_appends_to_new_queues_across_shards_lose_nothing() {
    concurrent_first_appends_lose_nothing(2, FlushMode::Sync);
}

#[test]
fn concurrent_first_appends_in_async_mode_lose_nothing() {
    concurrent_first_appends_lose_nothing(2, FlushMode::Async);
}

/// The offset-index files of one queue, oldest first.
fn index_files(store_dir: &Path, topic: &str, queue: u32) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(store_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("shard-")
        })
        .map(|shard| {
            shard
                .join("consumequeue")
                .join(topic)
                .join(queue.to_string())
        })
        .filter(|p| p.exists())
        .flat_map(|q| std::fs::read_dir(q).unwrap().map(|e| e.unwrap().path()))
        .collect();
    found.sort();
    found
}

#[test]
fn offset_indexes_deleted_or_cut_while_stopped_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(2, FlushMode::Sync)).unwrap();
    let topics = new_topics(0, 6);
    // 12 messages a queue: several index files each.
    let acks = send_concurrently(&store, &topics, 2, 4, 6 * 2 * CQ_FILE_ENTRIES as usize / 4);
    block_on(store.shutdown()).unwrap();

    let first = |t: usize, q: u32| index_files(dir.path(), &topics[t], q);
    // The first file of a queue (its head), a middle one, the last one, one cut short, one
    // emptied, and a whole queue directory.
    std::fs::remove_file(&first(0, 0)[0]).unwrap();
    let files = first(1, 0);
    std::fs::remove_file(&files[files.len() / 2]).unwrap();
    std::fs::remove_file(first(2, 0).last().unwrap()).unwrap();
    let cut = first(3, 0)[0].clone();
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len / 2 - 3)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&first(4, 1)[0])
        .unwrap()
        .set_len(0)
        .unwrap();
    let queue_dir = first(5, 1)[0].parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(queue_dir).unwrap();

    let store = Store::open(dir.path(), config(2, FlushMode::Sync)).unwrap();
    assert_all_readable(&store, &acks);
    let rebuilt: usize = store.recoveries().iter().map(|r| r.rebuilt_queues).sum();
    assert!(rebuilt >= 4, "{:?}", store.recoveries());
    // Appends go on from where each queue was.
    for (t, topic) in topics.iter().enumerate() {
        for q in 0..2 {
            let count = acks
                .keys()
                .filter(|(tt, qq, _)| tt == topic && *qq == q)
                .count();
            let placed =
                block_on(store.append(topic.as_bytes(), q, vec![Message::default()])).unwrap();
            assert_eq!(placed[0].queue_offset, count as u64, "topic {t} queue {q}");
        }
    }
    block_on(store.shutdown()).unwrap();
}

#[test]
fn long_polls_racing_the_first_appends_of_new_queues_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(2, FlushMode::Sync)).unwrap();
    let topics = new_topics(0, 20);
    // Every queue's first callers include a long poll waiting for offset 0.
    let polls = topics.iter().flat_map(|topic| {
        (0..4u32).map(|queue| {
            let store = store.clone();
            let topic = topic.clone();
            async move {
                store
                    .wait_for_message(topic.as_bytes(), queue, 0, Duration::from_secs(20))
                    .await
                    .unwrap();
                (topic, queue)
            }
        })
    });
    let polls = join_all(polls);
    let sends = send_concurrently_async(&store, &topics, 4, 16, 4);
    let (woken, sent) = block_on(futures_util::future::join(polls, sends));
    let acks = unique(sent);
    assert_eq!(woken.len(), 80, "every poll returned");
    for (topic, queue) in woken {
        let offsets = block_on(store.offsets(topic.as_bytes(), queue)).unwrap();
        assert!(
            offsets.is_some_and(|o| o.max > 0),
            "{topic}/{queue} woke with nothing: {offsets:?}"
        );
    }
    assert!(deleted_but_open(dir.path()).is_empty());
    block_on(store.shutdown()).unwrap();
    let store = Store::open(dir.path(), config(2, FlushMode::Sync)).unwrap();
    assert_all_readable(&store, &acks);
    block_on(store.shutdown()).unwrap();
}

#[test]
fn deleting_topics_while_their_queues_are_first_created_resurrects_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(2, FlushMode::Async)).unwrap();
    let topics = new_topics(0, 8);
    // Senders create the queues while each topic is deleted three times over.
    let deletes = topics.iter().map(|topic| {
        let store = store.clone();
        let topic = topic.clone();
        async move {
            for _ in 0..3 {
                store.delete_topic(topic.as_bytes()).await.unwrap();
            }
        }
    });
    let sends = send_concurrently_async(&store, &topics, 4, 8, 8);
    block_on(futures_util::future::join(join_all(deletes), sends));
    assert!(deleted_but_open(dir.path()).is_empty());
    // The last life of each topic: deleted once more with nothing in flight, then refilled.
    for topic in &topics {
        block_on(store.delete_topic(topic.as_bytes())).unwrap();
    }
    let acks = send_concurrently(&store, &topics, 4, 8, 4);
    block_on(store.shutdown()).unwrap();
    let store = Store::open(dir.path(), config(2, FlushMode::Async)).unwrap();
    assert_all_readable(&store, &acks);
    for topic in &topics {
        for queue in 0..4 {
            let held = read_queue(&store, topic, queue);
            let acked = acks
                .keys()
                .filter(|(t, q, _)| t == topic && *q == queue)
                .count();
            assert_eq!(
                held.len(),
                acked,
                "{topic}/{queue}: only the last life is there"
            );
        }
    }
    block_on(store.shutdown()).unwrap();
}
