//! Criterion benches of the store through its public API, as the broker uses it: append
//! throughput of 1 KiB messages with 1, 2 and N (cores) shards, index lookups, reads of
//! 32-message batches, key queries, and encoding the index checkpoint of many queues. Callers are 64 tasks on one compio thread, crossing to
//! the shard threads over the request channels.
//!
//! `cargo bench -p quiver-bench --bench store`; `BENCH_DIR` chooses the disk.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quiver_bench::bench_dir;
use quiver_engine::store::Store;
use quiver_engine::store::types::{Message, ReadOutcome};
use quiver_engine::{FlushMode, LogConfig, StoreConfig};

const BODY_BYTES: usize = 1024;
const CALLERS: usize = 64;
const QUEUES: u32 = 8;

fn config(shards: usize, flush: FlushMode) -> StoreConfig {
    StoreConfig {
        shards,
        log: LogConfig {
            flush,
            segment_bytes: 64 << 20,
            ..LogConfig::default()
        },
        // Keep the disk bounded while benches run for a while.
        disk_max_used_ratio: 0.9,
        ..StoreConfig::default()
    }
}

fn message(i: u64) -> Message {
    Message {
        keys: Bytes::from(format!("key-{i}")),
        body: Bytes::from(vec![(i % 251) as u8; BODY_BYTES]),
        ..Message::default()
    }
}

fn append(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut shard_counts = vec![1, 2, cores];
    shard_counts.dedup();
    let mut group = c.benchmark_group("store_append_1KiB");
    group.throughput(Throughput::Bytes(BODY_BYTES as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(3));
    group.measurement_time(Duration::from_secs(8));
    for flush in [FlushMode::Async, FlushMode::Sync] {
        for &shards in &shard_counts {
            let name = format!("{flush:?}").to_lowercase();
            let dir = bench_dir(&format!("store-append-{name}-{shards}"));
            let store = Store::open(&dir, config(shards, flush)).expect("open");
            let runtime = compio::runtime::Runtime::new().expect("runtime");
            let next = Rc::new(Cell::new(0u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/shards"), shards),
                &shards,
                |b, _| {
                    b.iter_custom(|messages| {
                        runtime.block_on(async {
                            let end = next.get() + messages;
                            let start = Instant::now();
                            let tasks: Vec<_> = (0..CALLERS)
                                .map(|_| {
                                    let (store, next) = (store.clone(), Rc::clone(&next));
                                    compio::runtime::spawn(async move {
                                        loop {
                                            let i = next.get();
                                            if i >= end {
                                                break;
                                            }
                                            next.set(i + 1);
                                            store
                                                .append(
                                                    b"bench",
                                                    (i % u64::from(QUEUES)) as u32,
                                                    vec![message(i)],
                                                )
                                                .await
                                                .expect("append");
                                        }
                                    })
                                })
                                .collect();
                            for task in tasks {
                                task.await.expect("task");
                            }
                            start.elapsed()
                        })
                    });
                },
            );
            runtime.block_on(store.shutdown()).expect("shutdown");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    group.finish();
}

fn lookups(c: &mut Criterion) {
    const MESSAGES: u64 = 200_000;
    let dir = bench_dir("store-read");
    let store = Store::open(&dir, config(1, FlushMode::Async)).expect("open");
    let runtime = compio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(64) {
            store
                .append(b"bench", 0, chunk.iter().map(|&i| message(i)).collect())
                .await
                .expect("append");
        }
    });
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = move |below: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % below
    };
    let mut group = c.benchmark_group("store_lookup");
    group.sample_size(20);
    group.bench_function("read_1_at_random_offset", |b| {
        b.iter(|| {
            runtime.block_on(async {
                match store
                    .read(b"bench", 0, random(MESSAGES), 1, 1 << 20, None)
                    .await
                    .expect("read")
                {
                    ReadOutcome::Found { messages, .. } => assert_eq!(messages.len(), 1),
                    other => panic!("{other:?}"),
                }
            })
        });
    });
    group.throughput(Throughput::Elements(32));
    group.bench_function("read_32_batch_at_random_offset", |b| {
        b.iter(|| {
            runtime.block_on(async {
                match store
                    .read(b"bench", 0, random(MESSAGES - 32), 32, 1 << 20, None)
                    .await
                    .expect("read")
                {
                    ReadOutcome::Found { messages, .. } => assert_eq!(messages.len(), 32),
                    other => panic!("{other:?}"),
                }
            })
        });
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("key_query_unique_key", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let key = format!("key-{}", random(MESSAGES));
                let found = store
                    .query_key(b"bench", key.as_bytes(), 10, 0, u64::MAX)
                    .await
                    .expect("query");
                assert_eq!(found.len(), 1);
            })
        });
    });
    group.finish();
    runtime.block_on(store.shutdown()).expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a shard's index checkpoint costs to encode (once a second while anything changes) as
/// its queues grow: 20-byte topic names, 8 queues each.
fn index_checkpoint(c: &mut Criterion) {
    use quiver_engine::store::index_checkpoint::{IndexCheckpoint, QueueRange, encode};
    use quiver_engine::store::shard::QueueId;
    let mut group = c.benchmark_group("index_checkpoint_encode");
    for queues in [64u32, 4_000, 40_000] {
        let checkpoint = IndexCheckpoint {
            dispatched_pos: 1 << 40,
            queues: (0..queues)
                .map(|i| {
                    let id = QueueId::new(format!("topic-{:014}", i / 8).as_bytes(), i % 8);
                    (
                        id,
                        QueueRange {
                            min: 0,
                            max: u64::from(i) * 1000,
                        },
                    )
                })
                .collect(),
            deleted: Default::default(),
        };
        let bytes = encode(1, &checkpoint).len();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(queues), &checkpoint, |b, cp| {
            b.iter(|| encode(1, cp))
        });
    }
    group.finish();
}

criterion_group!(benches, append, lookups, index_checkpoint);
criterion_main!(benches);
