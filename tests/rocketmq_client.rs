//! End to end with a RocketMQ client we did not write: `rocketmq-client-rust` 1.0.0, unchanged,
//! against a real `quiver standalone` process on loopback. Topic creation, every kind of send,
//! a push and a pull consumer sharing one group, orderly consumption per queue, tag filters,
//! offsets across a broker restart, lookups by key and by message id, and many concurrent
//! first sends to brand-new queues surviving a clean restart and SIGKILL.
//!
//! Waiting is on conditions (messages received, queues assigned), each with a generous
//! deadline so a broken broker fails the test instead of hanging it.

#![recursion_limit = "256"]

mod support;
// Shared with tests/client.rs, which also uses its `eventually`.
#[allow(dead_code)]
#[path = "support/received.rs"]
mod received;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use received::Received;
use rocketmq_client_rust::{
    ClientConfig, ClientResult, ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext,
    ConsumeConcurrentlyStatus, ConsumeOrderlyContext, ConsumeOrderlyStatus,
    DefaultLitePullConsumer, DefaultMQProducer, DefaultMQPushConsumer, MQPushConsumer,
    MessageListenerConcurrently, MessageListenerOrderly,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_observability::TelemetryRuntimeGuard;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};
use support::{Standalone, free_port, write_config};
use tokio::sync::Notify;

/// Longest any condition is waited for.
const DEADLINE: Duration = Duration::from_secs(90);

/// The client's runtime: it never makes its own (see the crate's README).
struct ClientHost {
    owner: RuntimeOwner,
    telemetry: TelemetryRuntimeGuard,
    runtime: Arc<ClientRuntime>,
}

impl ClientHost {
    fn new(scope: &str) -> ClientHost {
        let mut config = RuntimeConfig::for_parallelism(format!("rmq-{scope}"), 2)
            .with_max_blocking_threads(64)
            .expect("a valid blocking limit");
        config.worker_threads = 2;
        // The push consumer runs every listener call on the metadata-io lane; its default size
        // on 2 cores turns a few queues' worth of messages into rejected, retried work.
        config.blocking_lane_policies.metadata_io.max_concurrency = 32;
        config.blocking_lane_policies.metadata_io.max_queue_depth = 8192;
        let owner = RuntimeOwner::plan(config)
            .expect("a valid runtime plan")
            .build()
            .expect("the client runtime starts");
        let telemetry = TelemetryRuntimeGuard::noop();
        let runtime = ClientRuntime::try_new(
            owner.root_context().component("client"),
            ClientRuntimeConfig {
                shutdown_timeout: Duration::from_secs(10),
                ..ClientRuntimeConfig::default()
            },
            telemetry.handle(),
        )
        .expect("the client runtime is created");
        ClientHost {
            owner,
            telemetry,
            runtime,
        }
    }

    async fn shutdown(self) {
        let _ = self.runtime.shutdown().await;
        let _ = self.owner.shutdown_tasks().await;
        let _ = self.owner.shutdown_background();
        let _ = self.telemetry.shutdown();
    }
}

fn client_config(namesrv: &str, instance: &str) -> ClientConfig {
    ClientConfig::builder()
        .namesrv_addr(namesrv)
        .instance_name(instance)
        .mq_client_api_timeout(10_000)
        .poll_name_server_interval(10_000)
        .heartbeat_broker_interval(10_000)
        .persist_consumer_offset_interval(1_000)
        .build_unvalidated()
}

async fn producer(host: &ClientHost, namesrv: &str, group: &str) -> DefaultMQProducer {
    let mut producer = DefaultMQProducer::builder(host.runtime.clone())
        .client_config(client_config(namesrv, &format!("{group}-instance")))
        .name_server_addr(namesrv)
        .producer_group(group)
        .send_msg_timeout(10_000)
        .retry_times_when_send_failed(0)
        .build();
    producer.start().await.expect("the producer starts");
    producer
}

fn message(topic: &str, tag: &str, keys: &[&str], body: &str) -> Message {
    let mut builder = Message::builder()
        .topic(topic)
        .tags(tag)
        .body(body.to_string());
    for key in keys {
        builder = builder.key(*key);
    }
    builder.build().expect("a valid message")
}

fn body_of(m: &MessageExt) -> String {
    String::from_utf8_lossy(m.body().as_deref().unwrap_or_default()).into_owned()
}

struct Collect(Arc<Received>);

impl MessageListenerConcurrently for Collect {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> ClientResult<ConsumeConcurrentlyStatus> {
        self.0.add(msgs.iter().map(|m| body_of(m)));
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

fn push_consumer(
    host: &ClientHost,
    namesrv: &str,
    group: &str,
    instance: &str,
) -> DefaultMQPushConsumer {
    DefaultMQPushConsumer::builder(host.runtime.clone())
        .client_config(client_config(namesrv, instance))
        .name_server_addr(namesrv)
        .consumer_group(group)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .consume_thread_min(1)
        .consume_thread_max(1)
        .build()
}

/// Polls until `condition` holds; for state only the client knows (its queue assignment).
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start_quiver(dir: &std::path::Path, flush: &str) -> (Standalone, std::path::PathBuf) {
    let config = write_config(dir, free_port(), free_port(), flush, "");
    let data = dir.join("data");
    (Standalone::start(&config, &data), config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_send_reaches_a_push_and_a_pull_consumer_of_one_group_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (quiver, _) = start_quiver(dir.path(), "sync");
    let namesrv = quiver.namesrv.to_string();
    let host = ClientHost::new("all");
    let topic = "e2e-all";
    let group = "e2e-all-group";

    let mut producer = producer(&host, &namesrv, "e2e-all-producer").await;
    producer
        .create_topic("TBW102", topic, 4, HashMap::new())
        .await
        .expect("the topic is created");

    let pushed = Arc::new(Received::default());
    let mut push = push_consumer(&host, &namesrv, group, "push-member");
    push.subscribe(topic, "*").await.unwrap();
    push.register_message_listener_concurrently(Collect(Arc::clone(&pushed)));
    push.start().await.expect("the push consumer starts");

    let pull = DefaultLitePullConsumer::builder(host.runtime.clone())
        .name_server_addr(&namesrv)
        .instance_name("pull-member")
        .consumer_group(group)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .auto_commit(true)
        .poll_timeout_millis(1_000)
        .build()
        .expect("the pull consumer is built");
    pull.subscribe_with_expression(topic, "*").await.unwrap();
    pull.start().await.expect("the pull consumer starts");

    // The group has split the topic's four queues between its two members.
    eventually("the queues to be split between the members", || async {
        let pulled: BTreeSet<i32> = pull
            .assignment()
            .await
            .map(|a| {
                a.iter()
                    .filter(|q| q.topic() == topic)
                    .map(|q| q.queue_id())
                    .collect()
            })
            .unwrap_or_default();
        let pushing: BTreeSet<i32> = push
            .consumer_running_info()
            .await
            .map(|info| {
                info.mq_table
                    .keys()
                    .filter(|q| q.topic() == topic)
                    .map(|q| q.queue_id())
                    .collect()
            })
            .unwrap_or_default();
        pulled.len() == 2 && pushing.len() == 2 && pulled.is_disjoint(&pushing)
    })
    .await;

    let pulled = Arc::new(Received::default());
    let polling = {
        let pulled = Arc::clone(&pulled);
        let pull = pull.clone();
        tokio::spawn(async move {
            loop {
                let messages = pull.poll_with_timeout(500).await;
                pulled.add(messages.iter().map(body_of));
            }
        })
    };

    let mut expected = BTreeSet::new();
    for i in 0..20 {
        let body = format!("sync-{i}");
        let sent = producer
            .send(message(topic, "t", &[], &body))
            .await
            .unwrap();
        assert!(sent.is_some(), "a sync send returns its result");
        expected.insert(body);
    }
    let callbacks = Arc::new(AtomicUsize::new(0));
    let called = Arc::new(Notify::new());
    for i in 0..20 {
        let body = format!("async-{i}");
        let (callbacks, called) = (Arc::clone(&callbacks), Arc::clone(&called));
        producer
            .send_with_callback(message(topic, "t", &[], &body), move |result, error| {
                assert!(
                    error.is_none() && result.is_some(),
                    "async send failed: {error:?}"
                );
                callbacks.fetch_add(1, Ordering::SeqCst);
                called.notify_one();
            })
            .await
            .unwrap();
        expected.insert(body);
    }
    for i in 0..20 {
        let body = format!("oneway-{i}");
        producer
            .send_oneway(message(topic, "t", &[], &body))
            .await
            .unwrap();
        expected.insert(body);
    }
    for b in 0..2 {
        let batch: Vec<Message> = (0..10)
            .map(|i| {
                let body = format!("batch-{b}-{i}");
                expected.insert(body.clone());
                message(topic, "t", &[], &body)
            })
            .collect();
        producer.send_batch(batch).await.expect("the batch is sent");
    }
    tokio::time::timeout(DEADLINE, async {
        while callbacks.load(Ordering::SeqCst) < 20 {
            called.notified().await;
        }
    })
    .await
    .expect("every async send called back");

    // Every message reaches the group once: through one member or the other, never both.
    let total = || {
        let mut total = pushed.snapshot();
        for (body, n) in pulled.snapshot() {
            *total.entry(body).or_default() += n;
        }
        total
    };
    let waiting = async {
        loop {
            let (on_push, on_pull) = (pushed.changed.notified(), pulled.changed.notified());
            if expected.iter().all(|b| total().contains_key(b)) {
                return;
            }
            tokio::select! {
                _ = on_push => {}
                _ = on_pull => {}
            }
        }
    };
    if tokio::time::timeout(DEADLINE, waiting).await.is_err() {
        panic!(
            "not every message arrived: pushed {:?} pulled {:?}",
            pushed.snapshot(),
            pulled.snapshot()
        );
    }
    let all = total();
    assert_eq!(
        all.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the messages sent"
    );
    let twice: Vec<_> = all.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert!(
        !pushed.snapshot().is_empty() && !pulled.snapshot().is_empty(),
        "both members consumed"
    );

    polling.abort();
    push.shutdown().await;
    pull.shutdown().await;
    producer.shutdown().await;
    host.shutdown().await;
    quiver.stop();
}

/// (order id, step) pairs per queue id, in the order they were consumed.
type StepsByQueue = HashMap<i32, Vec<(u32, u32)>>;

/// Records, per queue, the order ids and steps in the order they were consumed.
struct InOrder(Arc<Mutex<StepsByQueue>>, Arc<Received>);

impl MessageListenerOrderly for InOrder {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        context: &mut ConsumeOrderlyContext,
    ) -> ClientResult<ConsumeOrderlyStatus> {
        context.set_auto_commit(true);
        let mut seen = self.0.lock().unwrap();
        for m in msgs {
            let body = body_of(m);
            let mut parts = body
                .split('-')
                .skip(1)
                .map(|p| p.parse::<u32>().unwrap_or(u32::MAX));
            let (order, step) = (
                parts.next().unwrap_or(u32::MAX),
                parts.next().unwrap_or(u32::MAX),
            );
            seen.entry(m.queue_id()).or_default().push((order, step));
        }
        drop(seen);
        self.1.add(msgs.iter().map(|m| body_of(m)));
        Ok(ConsumeOrderlyStatus::Success)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_sends_through_a_queue_selector_are_consumed_in_order_per_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (quiver, _) = start_quiver(dir.path(), "async");
    let namesrv = quiver.namesrv.to_string();
    let host = ClientHost::new("orderly");
    let topic = "e2e-orderly";
    let mut producer = producer(&host, &namesrv, "e2e-orderly-producer").await;
    const ORDERS: u32 = 8;
    const STEPS: u32 = 12;
    for step in 0..STEPS {
        for order in 0..ORDERS {
            let msg = message(topic, "o", &[], &format!("order-{order}-{step}"));
            producer
                .send_with_selector(
                    msg,
                    |queues: &[MessageQueue], _m: &Message, order: &u32| {
                        Some(queues[*order as usize % queues.len()].clone())
                    },
                    order,
                )
                .await
                .expect("an ordered send");
        }
    }
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let received = Arc::new(Received::default());
    let mut consumer = push_consumer(&host, &namesrv, "e2e-orderly-group", "orderly-member");
    consumer.subscribe(topic, "*").await.unwrap();
    consumer.register_message_listener_orderly(InOrder(Arc::clone(&seen), Arc::clone(&received)));
    consumer.start().await.expect("the orderly consumer starts");
    received
        .wait_until("every ordered message", |got| {
            got.len() == (ORDERS * STEPS) as usize
        })
        .await;
    let seen = seen.lock().unwrap().clone();
    let mut per_order: HashMap<u32, Vec<u32>> = HashMap::new();
    for (queue, consumed) in &seen {
        for &(order, step) in consumed {
            assert_eq!(
                order as usize % 4,
                *queue as usize,
                "order {order} was routed to queue {queue}"
            );
            per_order.entry(order).or_default().push(step);
        }
    }
    for order in 0..ORDERS {
        assert_eq!(
            per_order.get(&order),
            Some(&(0..STEPS).collect::<Vec<_>>()),
            "steps of order {order} out of order"
        );
    }
    consumer.shutdown().await;
    producer.shutdown().await;
    host.shutdown().await;
    quiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_subscription_receives_its_tags_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (quiver, _) = start_quiver(dir.path(), "async");
    let namesrv = quiver.namesrv.to_string();
    let host = ClientHost::new("tags");
    let topic = "e2e-tags";
    let mut producer = producer(&host, &namesrv, "e2e-tags-producer").await;
    producer
        .create_topic("TBW102", topic, 2, HashMap::new())
        .await
        .expect("the topic is created");
    let queues = producer.fetch_publish_message_queues(topic).await.unwrap();
    let queue = queues[0].clone();
    // All in one queue, so "the last one arrived" means everything before it was pulled.
    for i in 0..30 {
        let tag = ["TagA", "TagB", "TagC"][i % 3];
        producer
            .send_to_queue(
                message(topic, tag, &[], &format!("{tag}-{i}")),
                queue.clone(),
            )
            .await
            .unwrap();
    }
    producer
        .send_to_queue(message(topic, "TagC", &[], "TagC-last"), queue.clone())
        .await
        .unwrap();
    let received = Arc::new(Received::default());
    let mut consumer = push_consumer(&host, &namesrv, "e2e-tags-group", "tags-member");
    // With spaces: this client hashes untrimmed tags; the broker must match on the names.
    consumer.subscribe(topic, "TagA || TagC").await.unwrap();
    consumer.register_message_listener_concurrently(Collect(Arc::clone(&received)));
    consumer.start().await.unwrap();
    received
        .wait_until("the last TagC message", |got| got.contains_key("TagC-last"))
        .await;
    let got = received.snapshot();
    assert!(
        got.keys().all(|b| !b.starts_with("TagB")),
        "TagB delivered: {got:?}"
    );
    assert_eq!(got.len(), 21, "ten TagA, ten TagC and the last: {got:?}");
    consumer.shutdown().await;
    producer.shutdown().await;
    host.shutdown().await;
    quiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (quiver, config) = start_quiver(dir.path(), "async");
    let namesrv = quiver.namesrv.to_string();
    let host = ClientHost::new("offsets");
    let topic = "e2e-offsets";
    let group = "e2e-offsets-group";
    let mut producer = producer(&host, &namesrv, "e2e-offsets-producer").await;
    for i in 0..20 {
        producer
            .send(message(topic, "t", &[], &format!("before-{i}")))
            .await
            .unwrap();
    }
    let first = Arc::new(Received::default());
    let mut consumer = push_consumer(&host, &namesrv, group, "offsets-member-1");
    consumer.subscribe(topic, "*").await.unwrap();
    consumer.register_message_listener_concurrently(Collect(Arc::clone(&first)));
    consumer.start().await.unwrap();
    first
        .wait_until("the first 20", |got| got.len() == 20)
        .await;
    // Shutting down commits the consumed offsets to the broker.
    consumer.shutdown().await;
    producer.shutdown().await;
    quiver.stop();

    let quiver = Standalone::start(&config, &dir.path().join("data"));
    let mut producer = self::producer(&host, &namesrv, "e2e-offsets-producer-2").await;
    for i in 0..5 {
        producer
            .send(message(topic, "t", &[], &format!("after-{i}")))
            .await
            .unwrap();
    }
    let second = Arc::new(Received::default());
    let mut consumer = push_consumer(&host, &namesrv, group, "offsets-member-2");
    consumer.subscribe(topic, "*").await.unwrap();
    consumer.register_message_listener_concurrently(Collect(Arc::clone(&second)));
    consumer.start().await.unwrap();
    second
        .wait_until("the 5 sent after the restart", |got| got.len() >= 5)
        .await;
    let got = second.snapshot();
    assert!(
        got.keys().all(|b| b.starts_with("after-")),
        "consumed again after the restart: {got:?}"
    );
    consumer.shutdown().await;
    producer.shutdown().await;
    host.shutdown().await;
    quiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_found_by_key_and_by_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let (quiver, _) = start_quiver(dir.path(), "async");
    let namesrv = quiver.namesrv.to_string();
    let host = ClientHost::new("query");
    let topic = "e2e-query";
    let mut producer = producer(&host, &namesrv, "e2e-query-producer").await;
    let mut sent = Vec::new();
    for i in 0..6 {
        let result = producer
            .send(message(
                topic,
                "q",
                &[&format!("order-{}", i % 3)],
                &format!("query-{i}"),
            ))
            .await
            .unwrap()
            .expect("a sync send result");
        sent.push(result);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let found = producer
        .query_message(topic, "order-1", 32, 0, now + 60_000)
        .await
        .expect("a query by key");
    let mut bodies: Vec<String> = found.message_list().iter().map(body_of).collect();
    bodies.sort();
    assert_eq!(bodies, ["query-1", "query-4"]);

    for (i, result) in sent.iter().enumerate() {
        let id = result
            .offset_msg_id
            .clone()
            .expect("an offset message id")
            .to_string();
        let viewed = producer
            .view_message(topic, &id)
            .await
            .expect("a view by id");
        assert_eq!(body_of(&viewed), format!("query-{i}"));
        assert_eq!(viewed.queue_offset(), result.queue_offset as i64);
    }
    producer.shutdown().await;
    host.shutdown().await;
    quiver.stop();
}

/// Quiver's own client on one side of the wire, `rocketmq-client-rust` on the other: what
/// Quiver's producer sends, its push consumer receives with tags and keys intact; what its
/// producer sends, Quiver's push consumer receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_client_and_rocketmq_client_read_each_other() {
    use quiver_net::client::consumer::{ConsumeResult, PushConsumer, PushConsumerConfig};
    use quiver_net::client::producer::{Producer, ProducerConfig};

    let dir = tempfile::tempdir().unwrap();
    let (quiver, _) = start_quiver(dir.path(), "async");
    let namesrv = quiver.namesrv.to_string();
    let host = ClientHost::new("interop");

    // Quiver producer -> rocketmq-client-rust push consumer.
    let ours = Producer::start(ProducerConfig::new(
        "interop-quiver-producer",
        quiver_net::client::ClientConfig::new(&namesrv),
    ))
    .await
    .unwrap();
    let topic_a = "interop-from-quiver";
    let mut sent_a = BTreeSet::new();
    for i in 0..20 {
        let text = format!("q2r-{i}");
        ours.send(
            quiver_net::client::message::Message::new(topic_a, text.clone())
                .with_tags(if i % 2 == 0 { "even" } else { "odd" })
                .with_keys([format!("key-{i}")]),
        )
        .await
        .unwrap();
        sent_a.insert(text);
    }
    let theirs_got = Arc::new(Received::default());
    let tags_seen: Arc<Mutex<BTreeMap<String, (String, String)>>> = Arc::default();
    struct WithTags(
        Arc<Received>,
        Arc<Mutex<BTreeMap<String, (String, String)>>>,
    );
    impl MessageListenerConcurrently for WithTags {
        fn consume_message(
            &self,
            msgs: &[&MessageExt],
            _context: &ConsumeConcurrentlyContext,
        ) -> ClientResult<ConsumeConcurrentlyStatus> {
            for m in msgs {
                let tags = m.tags().map(|t| t.to_string()).unwrap_or_default();
                let keys = m.keys().map(|k| k.join(" ")).unwrap_or_default();
                self.1.lock().unwrap().insert(body_of(m), (tags, keys));
            }
            self.0.add(msgs.iter().map(|m| body_of(m)));
            Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
        }
    }
    let mut consumer = push_consumer(&host, &namesrv, "interop-rmq-group", "interop-rmq");
    consumer.subscribe(topic_a, "*").await.unwrap();
    consumer.register_message_listener_concurrently(WithTags(
        Arc::clone(&theirs_got),
        Arc::clone(&tags_seen),
    ));
    consumer.start().await.unwrap();
    theirs_got
        .wait_until("rocketmq-client-rust to get Quiver's messages", |got| {
            sent_a.iter().all(|s| got.contains_key(s))
        })
        .await;
    let seen = tags_seen.lock().unwrap().clone();
    assert_eq!(seen["q2r-4"], ("even".to_string(), "key-4".to_string()));
    assert_eq!(seen["q2r-7"], ("odd".to_string(), "key-7".to_string()));
    consumer.shutdown().await;

    // rocketmq-client-rust producer -> Quiver push consumer.
    let topic_b = "interop-from-rocketmq";
    let mut theirs = producer(&host, &namesrv, "interop-rmq-producer").await;
    theirs
        .send(message(topic_b, "t", &[], "r2q-first"))
        .await
        .unwrap();
    let mut config = PushConsumerConfig::new(
        "interop-quiver-group",
        quiver_net::client::ClientConfig::new(&namesrv),
    );
    config.long_poll_suspend = Duration::from_secs(2);
    let ours_consumer = PushConsumer::new(config).unwrap();
    ours_consumer.subscribe(topic_b, "t").unwrap();
    let ours_got = Arc::new(Received::default());
    let sink = Arc::clone(&ours_got);
    ours_consumer
        .start_concurrently(move |messages, _| {
            let sink = Arc::clone(&sink);
            async move {
                sink.add(
                    messages
                        .iter()
                        .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
                );
                ConsumeResult::Success
            }
        })
        .await
        .unwrap();
    let mut sent_b: BTreeSet<String> = ["r2q-first".to_string()].into();
    for i in 0..20 {
        let tag = if i % 4 == 0 { "other" } else { "t" };
        theirs
            .send(message(topic_b, tag, &[], &format!("r2q-{i}")))
            .await
            .unwrap();
        if tag == "t" {
            sent_b.insert(format!("r2q-{i}"));
        }
    }
    ours_got
        .wait_until(
            "Quiver's consumer to get rocketmq-client-rust's messages",
            |got| sent_b.iter().all(|s| got.contains_key(s)),
        )
        .await;
    let got = ours_got.snapshot();
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        sent_b,
        "tag filter"
    );
    ours_consumer.shutdown().await;
    theirs.shutdown().await;
    ours.shutdown().await;
    host.shutdown().await;
    quiver.stop();
}

/// (topic, queue, offset) → body of every send answered SEND_OK.
type SentOk = BTreeMap<(String, i32, i64), String>;

/// `senders` concurrent senders on each of `topics`, each sending `per_sender` messages (a
/// failed send is tried again) until `stop` is set; returns what was answered SEND_OK.
async fn send_from_many(
    producer: &DefaultMQProducer,
    topics: &[String],
    senders: usize,
    per_sender: usize,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> SentOk {
    let mut tasks = Vec::new();
    for topic in topics {
        for sender in 0..senders {
            let (producer, topic) = (producer.clone(), topic.clone());
            let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
            tasks.push(tokio::spawn(async move {
                let mut ok = Vec::new();
                let mut i = 0;
                while i < per_sender && !stop.load(Ordering::Relaxed) {
                    let body = format!("{topic}/{sender}/{i}");
                    let result = match producer.send(message(&topic, "t", &[], &body)).await {
                        Ok(Some(result)) => result,
                        // The client's own admission limit (320 senders on one producer), a
                        // connection to a restarted broker not yet made again: try again.
                        _ => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    i += 1;
                    if result.send_status != rocketmq_model::result::SendStatus::SendOk {
                        continue;
                    }
                    let queue = result.message_queue.as_ref().map_or(-1, |q| q.queue_id());
                    ok.push(((topic.clone(), queue, result.queue_offset as i64), body));
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                ok
            }));
        }
    }
    let mut sent = SentOk::new();
    for task in tasks {
        for (at, body) in task.await.expect("a sender task") {
            assert!(
                sent.insert(at.clone(), body).is_none(),
                "{at:?} answered twice"
            );
        }
    }
    sent
}

/// Every message `sent` names is in the broker at its offset with its body.
async fn assert_all_there(broker: std::net::SocketAddr, sent: &SentOk) {
    let client = quiver_net::client::RemotingClient::connect(broker)
        .await
        .expect("connecting to the broker");
    let mut stored: HashMap<(String, i32), Vec<quiver_net::message::DecodedMessage>> =
        HashMap::new();
    let mut missing = Vec::new();
    for ((topic, queue, offset), body) in sent {
        let key = (topic.clone(), *queue);
        if !stored.contains_key(&key) {
            let messages = support::read_queue(&client, topic, *queue).await;
            stored.insert(key.clone(), messages);
        }
        match stored[&key].get(*offset as usize) {
            Some(m) if m.body[..] == *body.as_bytes() => {}
            other => missing.push(format!(
                "{topic}/{queue}@{offset}: {:?}",
                other.map(|m| String::from_utf8_lossy(&m.body).into_owned())
            )),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} messages answered SEND_OK are not at their offset, e.g. {:?}",
        missing.len(),
        sent.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_first_sends_to_new_queues_survive_a_restart_and_sigkill() {
    const TOPICS: usize = 40;
    const QUEUES: i32 = 8;
    const SENDERS: usize = 32;
    const KILLS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Round 0 in async flush mode (a clean stop loses nothing in either), the others in sync.
    let (namesrv_port, broker_port) = (free_port(), free_port());
    let async_config = write_config(dir.path(), namesrv_port, broker_port, "async", "");
    let mut quiver = Standalone::start(&async_config, &data);
    let namesrv = quiver.namesrv.to_string();
    let host = ClientHost::new("first-sends");
    let mut producer = producer(&host, &namesrv, "first-sends-producer").await;
    let topics = |round: usize| -> Vec<String> {
        (0..TOPICS).map(|t| format!("first-{round}-{t}")).collect()
    };
    for topic in (0..=KILLS).flat_map(topics) {
        producer
            .create_topic("TBW102", &topic, QUEUES, HashMap::new())
            .await
            .expect("the topic is created");
    }

    // Round 0: 32 senders per new topic, 320 new queues, then a clean restart.
    let mut sent = send_from_many(
        &producer,
        &topics(0),
        SENDERS,
        4,
        Arc::default(),
        Arc::default(),
    )
    .await;
    assert_eq!(
        sent.len(),
        TOPICS * SENDERS * 4,
        "every send answered SEND_OK"
    );
    let queues: BTreeSet<(String, i32)> = sent.keys().map(|(t, q, _)| (t.clone(), *q)).collect();
    assert_eq!(
        queues.len(),
        TOPICS * QUEUES as usize,
        "every queue was sent to"
    );
    assert_eq!(quiver.deleted_files_held(), Vec::<String>::new());
    quiver.stop();
    let sync_config = write_config(dir.path(), namesrv_port, broker_port, "sync", "");

    // Then, in sync mode, 320 other new queues a round, SIGKILLed while they are sent to.
    for round in 1..=KILLS {
        quiver = Standalone::start(&sync_config, &data);
        assert_all_there(quiver.broker, &sent).await;
        // A producer of its own: one that saw the last broker die backs off for a while.
        let group = format!("first-sends-producer-{round}");
        let mut round_producer = DefaultMQProducer::builder(host.runtime.clone())
            .client_config(client_config(&namesrv, &format!("{group}-instance")))
            .name_server_addr(&namesrv)
            .producer_group(&group)
            .send_msg_timeout(3_000)
            .retry_times_when_send_failed(0)
            .build();
        round_producer.start().await.expect("the producer starts");
        let (acked, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let sending = {
            let (producer, topics) = (round_producer.clone(), topics(round));
            let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
            tokio::spawn(async move {
                send_from_many(&producer, &topics, SENDERS, 20, acked, stop).await
            })
        };
        eventually("a thousand answers before the kill", || async {
            acked.load(Ordering::Relaxed) >= 1000
        })
        .await;
        assert_eq!(quiver.deleted_files_held(), Vec::<String>::new());
        stop.store(true, Ordering::Relaxed);
        quiver.kill();
        sent.extend(sending.await.expect("the senders"));
        round_producer.shutdown().await;
    }
    let quiver = Standalone::start(&sync_config, &data);
    assert_all_there(quiver.broker, &sent).await;
    producer.shutdown().await;
    host.shutdown().await;
    quiver.stop();
}
