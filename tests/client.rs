//! Quiver's own client against a real `quiver standalone` process: every kind of send read
//! back by the pull consumer; a clustering group whose members join and leave while a producer
//! keeps sending (nothing acknowledged is lost, duplicates are counted, every queue ends with
//! one owner); the same in orderly mode (per-key order holds, no queue is handled by two
//! members at once); and a broadcasting group where every member gets everything.

#[path = "support/received.rs"]
mod received;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver_net::client::ClientConfig;
use quiver_net::client::consumer::{
    ConsumeResult, MessageModel, PullConsumer, PullStatus, PushConsumer, PushConsumerConfig,
};
use quiver_net::client::message::{Message, SendStatus};
use quiver_net::client::producer::{Producer, ProducerConfig};
use quiver_net::protocol::bodies::MessageQueue;
use received::{DEADLINE, Received, eventually};
use support::{Standalone, free_port, write_config};

fn start_quiver(dir: &std::path::Path) -> Standalone {
    let config = write_config(dir, free_port(), free_port(), "async", "");
    Standalone::start(&config, &dir.join("data"))
}

async fn producer(quiver: &Standalone, queues: i32) -> Producer {
    let mut config = ProducerConfig::new(
        "test-producer",
        ClientConfig::new(&quiver.namesrv.to_string()),
    );
    config.default_topic_queue_nums = queues;
    Producer::start(config).await.unwrap()
}

fn body(m: &quiver_net::message::DecodedMessage) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_send_is_read_back_by_the_pull_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let quiver = start_quiver(dir.path());
    let topic = "client-sends";
    let producer = producer(&quiver, 4).await;
    let mut sent = BTreeSet::new();

    for i in 0..5 {
        let result = producer
            .send(Message::new(topic, format!("sync-{i}")))
            .await
            .unwrap();
        assert_eq!(result.status, SendStatus::SendOk);
        assert_eq!(result.msg_id.len(), 32, "{result:?}");
        assert!(result.queue_offset >= 0);
        sent.insert(format!("sync-{i}"));
    }
    let handles: Vec<_> = (0..5)
        .map(|i| producer.send_async(Message::new(topic, format!("async-{i}"))))
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        handle.await.unwrap().unwrap();
        sent.insert(format!("async-{i}"));
    }
    for i in 0..5 {
        producer
            .send_oneway(Message::new(topic, format!("oneway-{i}")))
            .await
            .unwrap();
        sent.insert(format!("oneway-{i}"));
    }
    let batch: Vec<Message> = (0..5)
        .map(|i| Message::new(topic, format!("batch-{i}")))
        .collect();
    let result = producer.send_batch(batch).await.unwrap();
    assert_eq!(result.msg_id.split(',').count(), 5);
    sent.extend((0..5).map(|i| format!("batch-{i}")));
    let mut ordered = Vec::new();
    for i in 0..5 {
        let result = producer
            .send_ordered(Message::new(topic, format!("ordered-{i}")), "order-7")
            .await
            .unwrap();
        ordered.push((result.queue.clone(), result.queue_offset));
        sent.insert(format!("ordered-{i}"));
    }
    assert!(
        ordered
            .windows(2)
            .all(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1),
        "{ordered:?}"
    );
    producer
        .send(
            Message::new(topic, "tagged")
                .with_tags("T")
                .with_keys(["k1"]),
        )
        .await
        .unwrap();
    sent.insert("tagged".into());

    let consumer = PullConsumer::start(
        "client-pull",
        ClientConfig::new(&quiver.namesrv.to_string()),
    )
    .unwrap();
    let queues = consumer.queues(topic).await.unwrap();
    assert_eq!(queues.len(), 4);
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let mut next: HashMap<MessageQueue, i64> = queues.iter().map(|q| (q.clone(), 0)).collect();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while got.len() < sent.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {got:?} of {sent:?}"
        );
        for queue in &queues {
            let offset = next[queue];
            let pulled = consumer
                .pull_blocking(queue, offset, 32, "*", Duration::from_millis(100))
                .await
                .unwrap();
            for m in &pulled.messages {
                *got.entry(body(m)).or_default() += 1;
            }
            next.insert(queue.clone(), pulled.next_begin_offset);
        }
    }
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), sent);
    assert!(got.values().all(|&n| n == 1), "{got:?}");

    // Tag filtering, offset commits and offset lookups.
    let mut tagged = Vec::new();
    for queue in &queues {
        let pulled = consumer.pull(queue, 0, 64, "T || U").await.unwrap();
        tagged.extend(pulled.messages.iter().map(body));
        assert_eq!(consumer.max_offset(queue).await.unwrap(), next[queue]);
        assert_eq!(consumer.min_offset(queue).await.unwrap(), 0);
    }
    assert_eq!(tagged, vec!["tagged".to_string()]);
    let queue = &queues[1];
    assert_eq!(
        consumer.committed_offset(queue).await.unwrap().unwrap_or(0),
        0
    );
    consumer.commit_offset(queue, next[queue]).await.unwrap();
    assert_eq!(
        consumer.committed_offset(queue).await.unwrap(),
        Some(next[queue])
    );
    let past_end = consumer.pull(queue, next[queue], 8, "*").await.unwrap();
    assert_eq!(past_end.status, PullStatus::NoNewMessages);

    consumer.shutdown();
    producer.shutdown().await;
    quiver.stop();
}

/// A producer sending numbered messages until told to stop; returns what was acknowledged.
fn keep_sending(
    producer: Producer,
    topic: &'static str,
    keys: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut sequence = vec![0usize; keys.max(1)];
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let key = i % keys.max(1);
            let text = format!("k{key}-{}", sequence[key]);
            let sent = if keys > 0 {
                producer
                    .send_ordered(Message::new(topic, text.clone()), &format!("k{key}"))
                    .await
            } else {
                producer.send(Message::new(topic, text.clone())).await
            };
            match sent {
                Ok(_) => {
                    acked.push(text);
                    sequence[key] += 1;
                }
                Err(e) => panic!("send failed: {e}"),
            }
            i += 1;
        }
        acked
    })
}

fn member(
    quiver: &Standalone,
    group: &str,
    model: MessageModel,
    offsets: &std::path::Path,
) -> PushConsumer {
    let mut config = PushConsumerConfig::new(group, ClientConfig::new(&quiver.namesrv.to_string()));
    config.model = model;
    config.offsets_dir = offsets.to_path_buf();
    config.long_poll_suspend = Duration::from_secs(2);
    PushConsumer::new(config).unwrap()
}

/// Whether the members' queues are disjoint and together are exactly `all`.
fn one_owner_each(members: &[&PushConsumer], all: &BTreeSet<MessageQueue>) -> bool {
    let mut union = BTreeSet::new();
    for member in members {
        for queue in member.assigned_queues() {
            if !union.insert(queue) {
                return false;
            }
        }
    }
    &union == all && members.iter().all(|m| !m.assigned_queues().is_empty())
}

async fn grows_by(received: &Received, n: usize) {
    let now = received.snapshot().len();
    received
        .wait_until(&format!("{n} more messages"), |got| got.len() >= now + n)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_lose_nothing_and_end_with_one_owner_per_queue() {
    let dir = tempfile::tempdir().unwrap();
    let quiver = start_quiver(dir.path());
    let topic = "client-rebalance";
    let group = "client-rebalance-group";
    let producer = producer(&quiver, 8).await;
    producer.send(Message::new(topic, "first")).await.unwrap();
    let all: BTreeSet<MessageQueue> = producer
        .publish_queues(topic)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(all.len(), 8);

    let received = Arc::new(Received::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(producer.clone(), topic, 0, Arc::clone(&stop));

    let mut members = Vec::new();
    // Milliseconds from each join or leave until every queue had one owner again.
    let mut settle_ms = Vec::new();
    for _ in 0..3 {
        let consumer = member(&quiver, group, MessageModel::Clustering, dir.path());
        consumer.subscribe(topic, "*").unwrap();
        let sink = Arc::clone(&received);
        consumer
            .start_concurrently(move |messages, _| {
                let sink = Arc::clone(&sink);
                async move {
                    sink.add(messages.iter().map(body));
                    ConsumeResult::Success
                }
            })
            .await
            .unwrap();
        members.push(consumer);
        let joined: Vec<&PushConsumer> = members.iter().collect();
        let began = std::time::Instant::now();
        eventually(
            &format!("{} members sharing the queues", joined.len()),
            || one_owner_each(&joined, &all),
        )
        .await;
        settle_ms.push(began.elapsed().as_millis());
        grows_by(&received, 50).await;
    }
    // Members leave, one after the other, while sending goes on.
    for _ in 0..2 {
        let leaving = members.remove(0);
        let began = std::time::Instant::now();
        leaving.shutdown().await;
        let left: Vec<&PushConsumer> = members.iter().collect();
        eventually("the rest taking the queues over", || {
            one_owner_each(&left, &all)
        })
        .await;
        settle_ms.push(began.elapsed().as_millis());
        grows_by(&received, 50).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = sender.await.unwrap();
    acked.push("first".into());
    received
        .wait_until("every acknowledged message", |got| {
            acked.iter().all(|a| got.contains_key(a))
        })
        .await;
    let got = received.snapshot();
    let sent: BTreeSet<&String> = acked.iter().collect();
    assert!(
        got.keys().all(|b| sent.contains(b)),
        "delivered but never sent"
    );
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    println!(
        "rebalance: {} acknowledged, {} delivered, {duplicates} duplicates; settled in {settle_ms:?} ms",
        acked.len(),
        got.values().sum::<usize>()
    );
    assert_eq!(
        members[0].assigned_queues(),
        all,
        "the last member owns every queue"
    );
    members[0].shutdown().await;
    producer.shutdown().await;
    quiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_members_keep_per_key_order_across_rebalances() {
    let dir = tempfile::tempdir().unwrap();
    let quiver = start_quiver(dir.path());
    let topic = "client-orderly";
    let group = "client-orderly-group";
    const KEYS: usize = 16;
    let producer = producer(&quiver, 8).await;
    producer
        .send_ordered(Message::new(topic, "warm-0"), "warm")
        .await
        .unwrap();
    let all: BTreeSet<MessageQueue> = producer
        .publish_queues(topic)
        .await
        .unwrap()
        .into_iter()
        .collect();

    let received = Arc::new(Received::default());
    // Per key, the sequence numbers in the order they were handled, across all members.
    let handled: Arc<Mutex<BTreeMap<String, Vec<usize>>>> = Arc::default();
    // Queues being handled right now, and how often two members overlapped on one.
    let busy: Arc<Mutex<BTreeSet<i32>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(producer.clone(), topic, KEYS, Arc::clone(&stop));

    let mut members = Vec::new();
    for _ in 0..3 {
        let consumer = member(&quiver, group, MessageModel::Clustering, dir.path());
        consumer.subscribe(topic, "*").unwrap();
        let (sink, handled, busy, overlaps) = (
            Arc::clone(&received),
            Arc::clone(&handled),
            Arc::clone(&busy),
            Arc::clone(&overlaps),
        );
        consumer
            .start_orderly(move |messages, context| {
                let (sink, handled, busy, overlaps) = (
                    Arc::clone(&sink),
                    Arc::clone(&handled),
                    Arc::clone(&busy),
                    Arc::clone(&overlaps),
                );
                async move {
                    let queue = context.queue.queue_id;
                    if !busy.lock().unwrap().insert(queue) {
                        overlaps.fetch_add(1, Ordering::Relaxed);
                    }
                    // Give an overlapping member the chance to show itself.
                    tokio::task::yield_now().await;
                    for m in &messages {
                        let text = body(m);
                        if let Some((key, seq)) = text.split_once('-') {
                            let seq = seq.parse().unwrap_or(usize::MAX);
                            handled
                                .lock()
                                .unwrap()
                                .entry(key.to_string())
                                .or_default()
                                .push(seq);
                        }
                    }
                    busy.lock().unwrap().remove(&queue);
                    sink.add(messages.iter().map(body));
                    ConsumeResult::Success
                }
            })
            .await
            .unwrap();
        members.push(consumer);
        let joined: Vec<&PushConsumer> = members.iter().collect();
        eventually("orderly members sharing the queues", || {
            one_owner_each(&joined, &all)
        })
        .await;
        grows_by(&received, 50).await;
    }
    for _ in 0..2 {
        let leaving = members.remove(0);
        leaving.shutdown().await;
        let left: Vec<&PushConsumer> = members.iter().collect();
        eventually("the rest taking the queues over", || {
            one_owner_each(&left, &all)
        })
        .await;
        grows_by(&received, 50).await;
    }
    stop.store(true, Ordering::Relaxed);
    let acked = sender.await.unwrap();
    received
        .wait_until("every acknowledged message", |got| {
            acked.iter().all(|a| got.contains_key(a))
        })
        .await;
    assert_eq!(
        overlaps.load(Ordering::Relaxed),
        0,
        "two members handled one queue at once"
    );
    let handled = handled.lock().unwrap().clone();
    let mut duplicates = 0;
    for (key, sequence) in &handled {
        if key == "warm" {
            continue;
        }
        // Replays after a rebalance may repeat what was handled; first deliveries must come
        // in the order sent, with no gap.
        let mut expected = 0;
        for &seq in sequence {
            if seq < expected {
                duplicates += 1;
                continue;
            }
            assert_eq!(seq, expected, "key {key} out of order: {sequence:?}");
            expected += 1;
        }
    }
    println!(
        "orderly: {} acknowledged, {duplicates} duplicates",
        acked.len()
    );
    members[0].shutdown().await;
    producer.shutdown().await;
    quiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broadcasting_member_receives_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let quiver = start_quiver(dir.path());
    let topic = "client-broadcast";
    let producer = producer(&quiver, 4).await;
    producer.send(Message::new(topic, "b-first")).await.unwrap();
    let mut members = Vec::new();
    let mut inboxes = Vec::new();
    for i in 0..3 {
        let offsets = dir.path().join(format!("offsets-{i}"));
        let consumer = member(
            &quiver,
            "client-broadcast-group",
            MessageModel::Broadcasting,
            &offsets,
        );
        consumer.subscribe(topic, "*").unwrap();
        let inbox = Arc::new(Received::default());
        let sink = Arc::clone(&inbox);
        consumer
            .start_concurrently(move |messages, _| {
                let sink = Arc::clone(&sink);
                async move {
                    sink.add(messages.iter().map(body));
                    ConsumeResult::Success
                }
            })
            .await
            .unwrap();
        members.push(consumer);
        inboxes.push(inbox);
    }
    // New broadcasting members start at the end of each queue (CONSUME_FROM_LAST_OFFSET):
    // send once every member holds all the queues.
    for member in &members {
        eventually("a broadcasting member holding every queue", || {
            member.assigned_queues().len() == 4
        })
        .await;
    }
    let mut sent = BTreeSet::new();
    for i in 0..30 {
        producer
            .send(Message::new(topic, format!("b-{i}")))
            .await
            .unwrap();
        sent.insert(format!("b-{i}"));
    }
    for (i, inbox) in inboxes.iter().enumerate() {
        inbox
            .wait_until(&format!("member {i} to get everything"), |got| {
                sent.iter().all(|s| got.contains_key(s))
            })
            .await;
        let got = inbox.snapshot();
        assert!(got.values().all(|&n| n == 1), "{got:?}");
        assert!(
            !got.contains_key("b-first"),
            "sent before the member started"
        );
    }
    for member in &members {
        assert_eq!(member.assigned_queues().len(), 4);
        member.shutdown().await;
    }
    // Each member's progress is in its own file.
    for i in 0..3 {
        let file = dir
            .path()
            .join(format!("offsets-{i}/client-broadcast-group/offsets.json"));
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .contains("client-broadcast")
        );
    }
    producer.shutdown().await;
    quiver.stop();
}
