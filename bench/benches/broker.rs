//! Criterion benches of the broker over loopback TCP, through the RocketMQ remoting protocol:
//! sends of 1 KiB messages (one per request, and in batches of 64) from concurrent callers
//! sharing one connection, as RocketMQ producers do, in async and sync flush mode; pulls of
//! 32-message batches. Next to them, in the same run, the baseline: raw loopback TCP
//! bandwidth, 64 KiB writes into a reader that discards.
//!
//! The broker runs in this process on its own shard threads; the callers run on a 1-thread
//! tokio runtime. `cargo bench -p quiver-bench --bench broker`; `BENCH_DIR` chooses the disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quiver_bench::bench_dir;
use quiver_engine::FlushMode;
use quiver_net::broker::{Broker, BrokerConfig};
use quiver_net::client::RemotingClient;
use quiver_net::namesrv::{NameServer, NamesrvConfig};
use quiver_net::remoting::RemotingCommand;
use quiver_net::remoting::codes::{request, response};
use tokio::io::AsyncWriteExt;

const BODY_BYTES: usize = 1024;
const CALLERS: u64 = 32;
const QUEUES: i32 = 8;
const BATCH_MESSAGES: u64 = 64;
const PULL_MESSAGES: i32 = 32;
const LOOPBACK_WRITE_BYTES: usize = 64 << 10;
const TOPIC: &str = "bench";

struct Cluster {
    _namesrv: NameServer,
    broker: Option<Broker>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.take() {
            let _ = broker.shutdown();
        }
    }
}

fn start(flush: FlushMode) -> Cluster {
    let namesrv = NameServer::start(NamesrvConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        ..NamesrvConfig::default()
    })
    .expect("name server");
    let mut config = BrokerConfig {
        data_dir: bench_dir(&format!("broker-{flush:?}").to_lowercase()),
        listen: "127.0.0.1:0".parse().expect("address"),
        vip_channel: false,
        namesrv_addrs: vec![namesrv.local_addr().to_string()],
        ..BrokerConfig::default()
    };
    config.store.log.flush = flush;
    config.store.log.segment_bytes = 64 << 20;
    config.store.disk_max_used_ratio = 0.9;
    let broker = Broker::start(config).expect("broker");
    Cluster {
        _namesrv: namesrv,
        broker: Some(broker),
    }
}

/// A send header (SendMessageRequestHeaderV2's short names) for a queue of the bench topic.
fn send_header(code: i32, queue_id: i64) -> RemotingCommand {
    RemotingCommand::request(code)
        .with_field("a", "bench-producer")
        .with_field("b", TOPIC)
        .with_field("c", "TBW102")
        .with_field("d", QUEUES)
        .with_field("e", queue_id)
        .with_field("f", 0)
        .with_field("g", 1_700_000_000_000i64)
        .with_field("h", 0)
        .with_field("i", "")
        .with_field("j", 0)
        .with_field("k", false)
}

fn send_one(queue_id: i64, body: &Bytes) -> RemotingCommand {
    send_header(request::SEND_MESSAGE_V2, queue_id).with_body(body.clone())
}

/// A SEND_BATCH_MESSAGE body: each message as MessageDecoder.encodeMessages writes it.
fn batch_body(body: &Bytes) -> Bytes {
    let mut out = BytesMut::new();
    for _ in 0..BATCH_MESSAGES {
        out.put_i32((22 + body.len()) as i32);
        out.put_i32(0);
        out.put_i32(0);
        out.put_i32(0);
        out.put_i32(body.len() as i32);
        out.put_slice(body);
        out.put_i16(0);
    }
    out.freeze()
}

fn send_batch(queue_id: i64, body: &Bytes) -> RemotingCommand {
    send_header(request::SEND_BATCH_MESSAGE, queue_id)
        .with_field("m", true)
        .with_body(body.clone())
}

fn pull(queue_id: i32, offset: i64) -> RemotingCommand {
    RemotingCommand::request(request::PULL_MESSAGE)
        .with_field("consumerGroup", "bench-consumer")
        .with_field("topic", TOPIC)
        .with_field("queueId", queue_id)
        .with_field("queueOffset", offset)
        .with_field("maxMsgNums", PULL_MESSAGES)
        // PullSysFlag.FLAG_SUBSCRIPTION: the subscription comes with the pull, no heartbeat.
        .with_field("sysFlag", 4)
        .with_field("commitOffset", 0)
        .with_field("suspendTimeoutMillis", 0)
        .with_field("subscription", "*")
        .with_field("subVersion", 0)
}

/// `count` requests made by CALLERS concurrent tasks on `client`; returns the elapsed time.
async fn drive(
    client: &RemotingClient,
    count: u64,
    make: Arc<dyn Fn(u64) -> RemotingCommand + Send + Sync>,
) -> Duration {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (client, next, make) = (client.clone(), Arc::clone(&next), Arc::clone(&make));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let answer = client
                        .invoke(make(i), Duration::from_secs(30))
                        .await
                        .expect("answer");
                    assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller");
    }
    start.elapsed()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn loopback(c: &mut Criterion) {
    let mut group = c.benchmark_group("loopback_tcp");
    group.throughput(Throughput::Bytes(LOOPBACK_WRITE_BYTES as u64));
    group.sample_size(10);
    let rt = runtime();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // The reader discards with blocking reads on its own thread, as a peer process would.
    let sink = std::thread::spawn(move || {
        let Ok((mut reader, _)) = listener.accept() else {
            return;
        };
        let mut buf = vec![0u8; 1 << 20];
        while std::io::Read::read(&mut reader, &mut buf).is_ok_and(|n| n > 0) {}
    });
    let mut writer = rt
        .block_on(tokio::net::TcpStream::connect(addr))
        .expect("connect");
    let chunk = vec![7u8; LOOPBACK_WRITE_BYTES];
    group.bench_function("write_64KiB", |b| {
        b.iter_custom(|writes| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..writes {
                    writer.write_all(&chunk).await.expect("write");
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    drop(writer);
    let _ = sink.join();
}

fn sends(c: &mut Criterion) {
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    let batch = batch_body(&body);
    for flush in [FlushMode::Async, FlushMode::Sync] {
        let name = format!("{flush:?}").to_lowercase();
        let cluster = start(flush);
        let rt = runtime();
        let addr = cluster.broker.as_ref().expect("broker").local_addr();
        let client = rt.block_on(RemotingClient::connect(addr)).expect("connect");
        let mut group = c.benchmark_group(format!("broker_send_1KiB/{name}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(3));
        group.measurement_time(Duration::from_secs(8));
        group.throughput(Throughput::Bytes(BODY_BYTES as u64));
        let one = body.clone();
        group.bench_function(BenchmarkId::new("single", CALLERS), |b| {
            let one = one.clone();
            let make: Arc<dyn Fn(u64) -> RemotingCommand + Send + Sync> =
                Arc::new(move |i| send_one((i % QUEUES as u64) as i64, &one));
            b.iter_custom(|n| rt.block_on(drive(&client, n, Arc::clone(&make))))
        });
        group.throughput(Throughput::Bytes(BODY_BYTES as u64 * BATCH_MESSAGES));
        group.bench_function(BenchmarkId::new("batch64", CALLERS), |b| {
            let batch = batch.clone();
            let make: Arc<dyn Fn(u64) -> RemotingCommand + Send + Sync> =
                Arc::new(move |i| send_batch((i % QUEUES as u64) as i64, &batch));
            b.iter_custom(|n| rt.block_on(drive(&client, n, Arc::clone(&make))))
        });
        group.finish();
        if flush == FlushMode::Async {
            pulls(c, &rt, &client);
        }
    }
}

/// Pulls 32-message batches from the queues the send benches filled, walking each queue.
fn pulls(c: &mut Criterion, rt: &tokio::runtime::Runtime, client: &RemotingClient) {
    let max_offsets: Vec<i64> = (0..QUEUES)
        .map(|q| {
            let answer = rt
                .block_on(
                    client.invoke(
                        RemotingCommand::request(request::GET_MAX_OFFSET)
                            .with_field("topic", TOPIC)
                            .with_field("queueId", q),
                        Duration::from_secs(5),
                    ),
                )
                .expect("max offset");
            answer
                .field("offset")
                .and_then(|o| o.parse().ok())
                .expect("offset field")
        })
        .collect();
    let shortest = max_offsets.iter().copied().min().unwrap_or(0);
    let slots = (shortest / i64::from(PULL_MESSAGES)).max(1) as u64;
    let mut group = c.benchmark_group("broker_pull_1KiB");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(BODY_BYTES as u64 * PULL_MESSAGES as u64));
    group.bench_function(BenchmarkId::new("batch32", CALLERS), |b| {
        let make: Arc<dyn Fn(u64) -> RemotingCommand + Send + Sync> = Arc::new(move |i| {
            let queue = (i % QUEUES as u64) as i32;
            let slot = (i / QUEUES as u64) % slots;
            pull(queue, slot as i64 * i64::from(PULL_MESSAGES))
        });
        b.iter_custom(|n| rt.block_on(drive(client, n, Arc::clone(&make))))
    });
    group.finish();
}

criterion_group!(benches, loopback, sends);
criterion_main!(benches);
