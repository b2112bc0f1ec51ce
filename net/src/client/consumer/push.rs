//! The push consumer: a member of a consumer group. It learns the group's members from the
//! brokers, takes its share of the queues (rebalancing at once when the brokers say the group
//! changed, and every `rebalance_interval`), long-polls each of its queues, hands the messages
//! to the application's handler, and commits the offset of what was handled.
//!
//! ```no_run
//! use quiver_net::client::{ClientConfig, MqError};
//! use quiver_net::client::consumer::{ConsumeResult, PushConsumer, PushConsumerConfig};
//!
//! # async fn demo() -> Result<(), MqError> {
//! let consumer = PushConsumer::new(PushConsumerConfig::new("billing", ClientConfig::new("127.0.0.1:9876")))?;
//! consumer.subscribe("orders", "paid || refunded")?;
//! consumer
//!     .start_concurrently(|messages, _context| async move {
//!         for message in &messages { println!("{}", String::from_utf8_lossy(&message.body)); }
//!         ConsumeResult::Success
//!     })
//!     .await?;
//! // ... later
//! consumer.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, Semaphore};

use super::allocate::{AllocateStrategy, Averagely};
use super::offset_store::OffsetStore;
use super::process_queue::ProcessQueue;
use super::{ConsumeFrom, MessageModel, PullRequest, PullStatus, pull_queue, queue_offset};
use crate::client::instance::{ConsumerHooks, Instance, lock, subscribe_queues};
use crate::client::{ClientConfig, MqError};
use crate::message::DecodedMessage;
use crate::protocol::bodies::{
    ConsumerIdList, LockBatchRequestBody, LockBatchResponseBody, MessageQueue,
};
use crate::protocol::heartbeat::{ConsumerData, SubscriptionData};
use crate::protocol::{decode_json, encode_json};
use crate::remoting::RemotingCommand;
use crate::remoting::codes::request;

/// How often an orderly member renews its queue locks (RocketMQ's 20 s).
const LOCK_RENEW_INTERVAL_MS: u64 = 20_000;

/// How soon a rebalance runs again when a queue it wanted was still locked by another member.
const LOCK_RETRY_MS: u64 = 500;

/// How long shutdown waits for handlers still running.
const SHUTDOWN_WAIT_MS: u64 = 10_000;

/// Push consumer settings; defaults as RocketMQ's `DefaultMQPushConsumer`.
#[derive(Clone)]
pub struct PushConsumerConfig {
    /// The consumer group.
    pub group: String,
    /// Name servers and client identity.
    pub client: ClientConfig,
    /// Clustering (share the queues) or broadcasting (every member reads everything).
    pub model: MessageModel,
    /// Where to start in a queue the group has no offset for.
    pub consume_from: ConsumeFrom,
    /// How a clustering group divides the queues.
    pub allocate: Arc<dyn AllocateStrategy>,
    /// Handler calls running at once (RocketMQ's `consumeThreadMin`, 20).
    pub consume_concurrency: usize,
    /// Most messages per handler call (RocketMQ's `consumeMessageBatchMaxSize`, 1).
    pub consume_batch_max: usize,
    /// Most messages per pull (RocketMQ's `pullBatchSize`, 32).
    pub pull_batch: i32,
    /// Pulling a queue pauses while this many of its messages are unhandled (1,000).
    pub pull_threshold_for_queue: usize,
    /// ... or while their bodies take this many bytes (100 MiB).
    pub pull_threshold_size_for_queue: usize,
    /// How often the group's queues are divided again without being told (20 s).
    pub rebalance_interval: Duration,
    /// How often offsets are committed (RocketMQ's `persistConsumerOffsetInterval`, 5 s).
    pub offset_persist_interval: Duration,
    /// How long the broker holds a pull that finds nothing (RocketMQ's 15 s).
    pub long_poll_suspend: Duration,
    /// Pause before a failed pull or a handler's `Retry` is tried again.
    pub retry_delay: Duration,
    /// Broadcasting: where each member keeps its offsets (`<dir>/<group>/offsets.json`).
    pub offsets_dir: PathBuf,
}

impl PushConsumerConfig {
    /// A clustering member of `group` with RocketMQ's defaults.
    pub fn new(group: impl Into<String>, client: ClientConfig) -> PushConsumerConfig {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        PushConsumerConfig {
            group: group.into(),
            client,
            model: MessageModel::Clustering,
            consume_from: ConsumeFrom::LastOffset,
            allocate: Arc::new(Averagely),
            consume_concurrency: 20,
            consume_batch_max: 1,
            pull_batch: 32,
            pull_threshold_for_queue: 1_000,
            pull_threshold_size_for_queue: 100 << 20,
            rebalance_interval: Duration::from_secs(20),
            offset_persist_interval: Duration::from_secs(5),
            long_poll_suspend: Duration::from_secs(15),
            retry_delay: Duration::from_secs(1),
            offsets_dir: home.join(".quiver_offsets"),
        }
    }
}

/// What the handler says about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeResult {
    /// Handled; its offset may be committed.
    Success,
    /// Not handled; hand the batch again after `retry_delay` (orderly: the queue waits).
    Retry,
}

/// What the handler is told besides the messages.
#[derive(Debug, Clone)]
pub struct ConsumeContext {
    /// The queue the messages come from.
    pub queue: MessageQueue,
}

type BoxFuture = Pin<Box<dyn Future<Output = ConsumeResult> + Send>>;
type Handler = Arc<dyn Fn(Vec<DecodedMessage>, ConsumeContext) -> BoxFuture + Send + Sync>;

#[derive(Clone)]
struct Listener {
    handler: Handler,
    orderly: bool,
}

/// A push consumer. Cheap to clone.
#[derive(Clone)]
pub struct PushConsumer {
    inner: Arc<Inner>,
}

struct Inner {
    config: PushConsumerConfig,
    instance: Arc<Instance>,
    offsets: OffsetStore,
    subscriptions: Mutex<BTreeMap<String, SubscriptionData>>,
    listener: OnceLock<Listener>,
    queues: tokio::sync::Mutex<BTreeMap<MessageQueue, Arc<ProcessQueue>>>,
    /// The queues owned, readable without waiting for a rebalance in progress.
    owned: Mutex<BTreeSet<MessageQueue>>,
    rebalance_wake: Notify,
    permits: Arc<Semaphore>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl PushConsumer {
    /// A member of the configured group; subscribe, then start it.
    pub fn new(config: PushConsumerConfig) -> Result<PushConsumer, MqError> {
        if config.consume_concurrency == 0
            || config.consume_batch_max == 0
            || config.pull_batch <= 0
        {
            return Err(MqError::Usage(
                "consume_concurrency, consume_batch_max and pull_batch must be positive".into(),
            ));
        }
        let instance = Instance::start(config.client.clone())?;
        let offsets = match config.model {
            MessageModel::Clustering => OffsetStore::remote(&config.group, Arc::clone(&instance)),
            MessageModel::Broadcasting => OffsetStore::local(
                &config.group,
                Arc::clone(&instance),
                config.offsets_dir.join(&config.group).join("offsets.json"),
            )?,
        };
        let permits = Arc::new(Semaphore::new(config.consume_concurrency));
        let inner = Arc::new(Inner {
            config,
            instance,
            offsets,
            subscriptions: Mutex::default(),
            listener: OnceLock::new(),
            queues: tokio::sync::Mutex::default(),
            owned: Mutex::default(),
            rebalance_wake: Notify::new(),
            permits,
        });
        let hooks: Arc<dyn ConsumerHooks> = inner.clone();
        let hooks: Weak<dyn ConsumerHooks> = Arc::downgrade(&hooks);
        inner.instance.set_consumer(&inner.config.group, hooks);
        Ok(PushConsumer { inner })
    }

    /// The id brokers know this member by.
    pub fn client_id(&self) -> &str {
        &self.inner.instance.client_id
    }

    /// Subscribes to a topic's messages whose tag the expression takes (`*`, or tags joined by
    /// `||`). Before [`PushConsumer::start_concurrently`] or `start_orderly`.
    pub fn subscribe(&self, topic: &str, expression: &str) -> Result<(), MqError> {
        if self.inner.listener.get().is_some() {
            return Err(MqError::Usage(
                "subscribe before starting the consumer".into(),
            ));
        }
        if let Some(why) = crate::protocol::route::topic_name_error(topic) {
            return Err(MqError::Usage(why));
        }
        let subscription = SubscriptionData::from_expression(topic, expression, now_ms());
        lock(&self.inner.subscriptions).insert(topic.to_string(), subscription);
        Ok(())
    }

    /// Starts consuming; `handler` is called with batches from any of the member's queues, up
    /// to `consume_concurrency` at once.
    pub async fn start_concurrently<F, Fut>(&self, handler: F) -> Result<(), MqError>
    where
        F: Fn(Vec<DecodedMessage>, ConsumeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ConsumeResult> + Send + 'static,
    {
        self.start(handler, false).await
    }

    /// Starts consuming in order: each queue's messages are handled one batch at a time, in
    /// offset order, and (clustering) only while this member holds the broker's lock on the
    /// queue, so no two members ever handle one queue at once.
    pub async fn start_orderly<F, Fut>(&self, handler: F) -> Result<(), MqError>
    where
        F: Fn(Vec<DecodedMessage>, ConsumeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ConsumeResult> + Send + 'static,
    {
        self.start(handler, true).await
    }

    async fn start<F, Fut>(&self, handler: F, orderly: bool) -> Result<(), MqError>
    where
        F: Fn(Vec<DecodedMessage>, ConsumeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ConsumeResult> + Send + 'static,
    {
        let topics: Vec<String> = lock(&self.inner.subscriptions).keys().cloned().collect();
        if topics.is_empty() {
            return Err(MqError::Usage(
                "subscribe to a topic before starting".into(),
            ));
        }
        let handler: Handler =
            Arc::new(move |messages, context| Box::pin(handler(messages, context)));
        self.inner
            .listener
            .set(Listener { handler, orderly })
            .map_err(|_| MqError::Usage("the consumer is already started".into()))?;
        for topic in &topics {
            if let Err(e) = self.inner.instance.refresh_route(topic).await {
                tracing::warn!(%topic, error = %e, "no route yet; the consumer will retry");
            }
        }
        self.inner.instance.heartbeat_all().await;
        let inner = Arc::downgrade(&self.inner);
        self.inner
            .instance
            .spawn(tokio::spawn(rebalance_loop(inner.clone())));
        self.inner
            .instance
            .spawn(tokio::spawn(persist_loop(inner.clone())));
        if orderly && self.inner.config.model == MessageModel::Clustering {
            self.inner.instance.spawn(tokio::spawn(lock_loop(inner)));
        }
        Ok(())
    }

    /// The queues this member owns now.
    pub fn assigned_queues(&self) -> BTreeSet<MessageQueue> {
        lock(&self.inner.owned).clone()
    }

    /// Stops pulling, waits for running handlers, commits offsets, releases queue locks and
    /// tells the brokers it left (so the others rebalance at once).
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        let queues: Vec<(MessageQueue, Arc<ProcessQueue>)> = {
            let mut queues = inner.queues.lock().await;
            std::mem::take(&mut *queues).into_iter().collect()
        };
        lock(&inner.owned).clear();
        for (_, pq) in &queues {
            pq.drop_queue();
        }
        // Every permit back means no handler is running.
        let all = inner.config.consume_concurrency as u32;
        let _ = tokio::time::timeout(
            Duration::from_millis(SHUTDOWN_WAIT_MS),
            inner.permits.acquire_many(all),
        )
        .await;
        let mqs: Vec<MessageQueue> = queues.iter().map(|(q, _)| q.clone()).collect();
        if let Err(e) = inner.offsets.persist(&mqs).await {
            tracing::warn!(error = %e, "committing offsets at shutdown failed");
        }
        if inner.is_orderly_clustering() {
            inner.unlock(&mqs).await;
        }
        inner.instance.unregister_all().await;
        inner.instance.shutdown();
    }
}

impl ConsumerHooks for Inner {
    fn consumer_data(&self) -> ConsumerData {
        ConsumerData {
            group_name: self.config.group.clone(),
            consume_type: "CONSUME_PASSIVELY".into(),
            message_model: self.config.model.wire_name().into(),
            consume_from_where: self.config.consume_from.wire_name().into(),
            subscription_data_set: lock(&self.subscriptions).values().cloned().collect(),
            unit_mode: false,
        }
    }

    fn rebalance_soon(&self) {
        self.rebalance_wake.notify_one();
    }
}

async fn rebalance_loop(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let retry_soon = strong.rebalance().await;
        let wait = if retry_soon {
            Duration::from_millis(LOCK_RETRY_MS)
        } else {
            strong.config.rebalance_interval
        };
        let wake = async { strong.rebalance_wake.notified().await };
        let _ = tokio::time::timeout(wait, wake).await;
    }
}

async fn persist_loop(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(inner) => inner.config.offset_persist_interval,
        None => return,
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let owned: Vec<MessageQueue> = lock(&inner.owned).iter().cloned().collect();
        if let Err(e) = inner.offsets.persist(&owned).await {
            tracing::debug!(error = %e, "committing offsets failed");
        }
    }
}

async fn lock_loop(inner: Weak<Inner>) {
    let every = Duration::from_millis(LOCK_RENEW_INTERVAL_MS);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let queues: Vec<Arc<ProcessQueue>> = inner.queues.lock().await.values().cloned().collect();
        let mqs: Vec<MessageQueue> = queues.iter().map(|pq| pq.queue.clone()).collect();
        let granted = inner.lock(&mqs).await;
        for pq in queues {
            pq.set_locked(granted.contains(&pq.queue));
        }
    }
}

impl Inner {
    fn listener(&self) -> Option<Listener> {
        self.listener.get().cloned()
    }

    fn is_orderly_clustering(&self) -> bool {
        self.listener().is_some_and(|l| l.orderly) && self.config.model == MessageModel::Clustering
    }

    /// Divides the subscribed topics' queues again and starts or stops queues to match.
    /// Returns whether a wanted queue could not be locked yet (so it is soon tried again).
    async fn rebalance(self: &Arc<Self>) -> bool {
        let subscriptions: Vec<(String, SubscriptionData)> = lock(&self.subscriptions)
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect();
        let mut wanted: BTreeMap<MessageQueue, SubscriptionData> = BTreeMap::new();
        let mut settled_topics = BTreeSet::new();
        for (topic, subscription) in subscriptions {
            match self.my_share(&topic).await {
                Ok(share) => {
                    settled_topics.insert(topic);
                    wanted.extend(share.into_iter().map(|q| (q, subscription.clone())));
                }
                Err(e) => tracing::debug!(%topic, error = %e, "rebalance skipped the topic"),
            }
        }
        let mut queues = self.queues.lock().await;
        let mut lock_missing = false;
        // Stop the queues that are no longer ours.
        let leaving: Vec<MessageQueue> = queues
            .keys()
            .filter(|q| settled_topics.contains(&q.topic) && !wanted.contains_key(*q))
            .cloned()
            .collect();
        for queue in leaving {
            if let Some(pq) = queues.remove(&queue) {
                lock(&self.owned).remove(&queue);
                self.release(&pq).await;
            }
        }
        // Start the new ones.
        let arriving: Vec<(MessageQueue, SubscriptionData)> = wanted
            .into_iter()
            .filter(|(q, _)| !queues.contains_key(q))
            .collect();
        let orderly = self.is_orderly_clustering();
        let granted = if orderly && !arriving.is_empty() {
            let mqs: Vec<MessageQueue> = arriving.iter().map(|(q, _)| q.clone()).collect();
            self.lock(&mqs).await
        } else {
            BTreeSet::new()
        };
        for (queue, subscription) in arriving {
            if orderly && !granted.contains(&queue) {
                lock_missing = true;
                continue;
            }
            let start = match self.start_offset(&queue).await {
                Ok(offset) => offset,
                Err(e) => {
                    tracing::debug!(?queue, error = %e, "cannot find where to start; later");
                    if orderly {
                        self.unlock(std::slice::from_ref(&queue)).await;
                    }
                    continue;
                }
            };
            let pq = Arc::new(ProcessQueue::new(queue.clone()));
            if orderly || self.config.model == MessageModel::Broadcasting {
                pq.set_locked(true);
            }
            self.offsets.update(&queue, start, false);
            self.start_queue(&pq, start, subscription);
            lock(&self.owned).insert(queue.clone());
            queues.insert(queue, pq);
        }
        lock_missing
    }

    /// This member's share of the topic's queues.
    async fn my_share(self: &Arc<Self>, topic: &str) -> Result<Vec<MessageQueue>, MqError> {
        let route = match self.instance.refresh_route(topic).await {
            Ok(route) => route,
            Err(MqError::NoRoute(t)) => return Err(MqError::NoRoute(t)),
            Err(e) => self.instance.route(topic).await.map_err(|_| e)?,
        };
        let all = subscribe_queues(topic, &route);
        if self.config.model == MessageModel::Broadcasting {
            return Ok(all);
        }
        let addr = route
            .broker_datas
            .iter()
            .find_map(|b| b.broker_addrs.get(&0).cloned())
            .ok_or_else(|| MqError::NoRoute(topic.to_string()))?;
        let ask = RemotingCommand::request(request::GET_CONSUMER_LIST_BY_GROUP)
            .with_field("consumerGroup", &self.config.group);
        let answer = self
            .instance
            .invoke_ok(&addr, "the group's member list", ask)
            .await?;
        let list: ConsumerIdList =
            decode_json("consumer id list", &answer.body_bytes()).map_err(|e| {
                MqError::Malformed {
                    addr: addr.clone(),
                    reason: e.to_string(),
                }
            })?;
        let mut members = list.consumer_id_list;
        if members.is_empty() {
            return Err(MqError::Usage(
                "the broker knows no member of the group yet".into(),
            ));
        }
        members.sort();
        members.dedup();
        Ok(self
            .config
            .allocate
            .allocate(&self.instance.client_id, &all, &members))
    }

    /// Where to start in a newly owned queue: the committed offset, or per `consume_from`.
    async fn start_offset(self: &Arc<Self>, queue: &MessageQueue) -> Result<i64, MqError> {
        if let Some(offset) = self.offsets.read(queue).await?
            && offset >= 0
        {
            return Ok(offset);
        }
        match self.config.consume_from {
            ConsumeFrom::LastOffset => {
                queue_offset(&self.instance, queue, request::GET_MAX_OFFSET, None).await
            }
            ConsumeFrom::FirstOffset => {
                queue_offset(&self.instance, queue, request::GET_MIN_OFFSET, None).await
            }
            ConsumeFrom::Timestamp(at) => {
                queue_offset(
                    &self.instance,
                    queue,
                    request::SEARCH_OFFSET_BY_TIMESTAMP,
                    Some(at),
                )
                .await
            }
        }
    }

    /// Stops a queue: no more pulls, running handlers finished (orderly), offset committed,
    /// broker lock released — in that order, so the next owner starts where this one ended.
    async fn release(self: &Arc<Self>, pq: &Arc<ProcessQueue>) {
        pq.drop_queue();
        let orderly = self.is_orderly_clustering();
        let _batch_done = if orderly {
            Some(pq.consuming.lock().await)
        } else {
            None
        };
        let queue = std::slice::from_ref(&pq.queue);
        if let Err(e) = self.offsets.persist(queue).await {
            tracing::debug!(queue = ?pq.queue, error = %e, "commit on release failed");
        }
        self.offsets.remove(&pq.queue);
        if orderly {
            self.unlock(queue).await;
        }
    }

    fn start_queue(
        self: &Arc<Self>,
        pq: &Arc<ProcessQueue>,
        start: i64,
        subscription: SubscriptionData,
    ) {
        let Some(listener) = self.listener() else {
            return;
        };
        let weak = Arc::downgrade(self);
        self.instance.spawn(tokio::spawn(pull_loop(
            weak.clone(),
            Arc::clone(pq),
            start,
            subscription,
            listener.clone(),
        )));
        if listener.orderly {
            self.instance.spawn(tokio::spawn(orderly_loop(
                weak,
                Arc::clone(pq),
                listener.handler,
            )));
        }
    }

    /// Asks each broker to lock these queues for this member; returns those granted.
    async fn lock(self: &Arc<Self>, queues: &[MessageQueue]) -> BTreeSet<MessageQueue> {
        let mut granted = BTreeSet::new();
        for (addr, ask) in self.lock_requests(request::LOCK_BATCH_MQ, queues) {
            match self.instance.invoke_ok(&addr, "queue locks", ask).await {
                Ok(answer) => {
                    match decode_json::<LockBatchResponseBody>("lock answer", &answer.body_bytes())
                    {
                        Ok(locked) => granted.extend(locked.lock_ok_mq_set),
                        Err(e) => tracing::debug!(broker = %addr, error = %e, "bad lock answer"),
                    }
                }
                Err(e) => tracing::debug!(broker = %addr, error = %e, "locking queues failed"),
            }
        }
        granted
    }

    async fn unlock(self: &Arc<Self>, queues: &[MessageQueue]) {
        for (addr, ask) in self.lock_requests(request::UNLOCK_BATCH_MQ, queues) {
            if let Err(e) = self.instance.invoke_ok(&addr, "queue unlocks", ask).await {
                tracing::debug!(broker = %addr, error = %e, "unlocking queues failed");
            }
        }
    }

    /// One `LOCK_BATCH_MQ` or `UNLOCK_BATCH_MQ` per broker holding some of the queues.
    fn lock_requests(&self, code: i32, queues: &[MessageQueue]) -> Vec<(String, RemotingCommand)> {
        self.by_broker(queues)
            .into_iter()
            .map(|(addr, mq_set)| {
                let body = LockBatchRequestBody {
                    client_id: self.instance.client_id.clone(),
                    consumer_group: self.config.group.clone(),
                    mq_set,
                    only_this_broker: false,
                };
                (
                    addr,
                    RemotingCommand::request(code).with_body(encode_json(&body)),
                )
            })
            .collect()
    }

    fn by_broker(&self, queues: &[MessageQueue]) -> BTreeMap<String, BTreeSet<MessageQueue>> {
        let mut out: BTreeMap<String, BTreeSet<MessageQueue>> = BTreeMap::new();
        for queue in queues {
            if let Some(addr) = self.instance.master_addr(&queue.broker_name) {
                out.entry(addr).or_default().insert(queue.clone());
            }
        }
        out
    }

    /// Records progress when the queue holds nothing unhandled (a pull that found nothing
    /// still moves the offset past filtered-out messages).
    fn advance_if_idle(&self, pq: &ProcessQueue, next: i64) {
        if pq.load().0 == 0 {
            self.offsets.update(&pq.queue, next, true);
        }
    }
}

/// Pulls one queue for as long as this member owns it, pausing while too much is unhandled.
async fn pull_loop(
    inner: Weak<Inner>,
    pq: Arc<ProcessQueue>,
    mut offset: i64,
    subscription: SubscriptionData,
    listener: Listener,
) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if pq.is_dropped() {
            return;
        }
        let (count, bytes) = pq.load();
        if count >= strong.config.pull_threshold_for_queue
            || bytes >= strong.config.pull_threshold_size_for_queue
        {
            // Flow control: wait for the handlers to make room.
            let room = pq.room.notified();
            drop(strong);
            let _ = tokio::time::timeout(Duration::from_secs(1), room).await;
            continue;
        }
        if listener.orderly && !pq.is_locked() {
            let locked = pq.room.notified();
            drop(strong);
            let _ = tokio::time::timeout(Duration::from_secs(1), locked).await;
            continue;
        }
        let result = pull_queue(
            &strong.instance,
            PullRequest {
                group: &strong.config.group,
                queue: &pq.queue,
                offset,
                max_messages: strong.config.pull_batch,
                subscription: &subscription,
                suspend: Some(strong.config.long_poll_suspend),
                commit_offset: None,
            },
        )
        .await;
        if pq.is_dropped() {
            return;
        }
        match result {
            Ok(found) => {
                match found.status {
                    PullStatus::Found if !found.messages.is_empty() => {
                        pq.put(&found.messages);
                        if !listener.orderly {
                            dispatch(&strong, &pq, found.messages, &listener.handler);
                        }
                    }
                    PullStatus::OffsetIllegal => {
                        tracing::warn!(queue = ?pq.queue, offset, next = found.next_begin_offset, "offset outside the queue; moving");
                        strong
                            .offsets
                            .update(&pq.queue, found.next_begin_offset, false);
                    }
                    _ => strong.advance_if_idle(&pq, found.next_begin_offset),
                }
                offset = found.next_begin_offset;
            }
            Err(e) => {
                tracing::debug!(queue = ?pq.queue, error = %e, "pull failed; retrying");
                let delay = strong.config.retry_delay;
                drop(strong);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Hands pulled messages to the handler in batches, each on its own task, at most
/// `consume_concurrency` at once.
fn dispatch(
    inner: &Arc<Inner>,
    pq: &Arc<ProcessQueue>,
    messages: Vec<DecodedMessage>,
    handler: &Handler,
) {
    for batch in messages.chunks(inner.config.consume_batch_max) {
        let (batch, pq, handler) = (batch.to_vec(), Arc::clone(pq), Arc::clone(handler));
        let weak = Arc::downgrade(inner);
        let permits = Arc::clone(&inner.permits);
        let retry_delay = inner.config.retry_delay;
        // Not kept by the instance: a handler call ends on its own, and shutdown waits for
        // the running ones through the permits.
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                if pq.is_dropped() {
                    return;
                }
                let context = ConsumeContext {
                    queue: pq.queue.clone(),
                };
                let result = handler(batch.clone(), context).await;
                drop(permit);
                if result == ConsumeResult::Success {
                    let offsets: Vec<i64> = batch.iter().map(|m| m.queue_offset).collect();
                    let next = pq.remove(&offsets);
                    // A queue dropped meanwhile belongs to another member now: its offset is
                    // no longer this member's to move.
                    if let (Some(next), false, Some(inner)) =
                        (next, pq.is_dropped(), weak.upgrade())
                    {
                        inner.offsets.update(&pq.queue, next, true);
                    }
                    return;
                }
                tokio::time::sleep(retry_delay).await;
            }
        });
    }
}

/// Orderly: handles one queue's messages one batch at a time, in offset order, only while the
/// queue's broker lock is held.
async fn orderly_loop(inner: Weak<Inner>, pq: Arc<ProcessQueue>, handler: Handler) {
    loop {
        if pq.is_dropped() {
            return;
        }
        if !pq.has_waiting() || !pq.is_locked() {
            let arrived = pq.arrived.notified();
            if pq.has_waiting() && pq.is_locked() {
                continue;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), arrived).await;
            continue;
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let guard = pq.consuming.lock().await;
        if pq.is_dropped() {
            return;
        }
        let batch = pq.take(strong.config.consume_batch_max);
        if batch.is_empty() {
            continue;
        }
        let Ok(permit) = Arc::clone(&strong.permits).acquire_owned().await else {
            pq.return_taken();
            return;
        };
        let context = ConsumeContext {
            queue: pq.queue.clone(),
        };
        let result = handler(batch, context).await;
        drop(permit);
        match result {
            ConsumeResult::Success => {
                if let Some(next) = pq.commit_taken() {
                    strong.offsets.update(&pq.queue, next, true);
                }
                drop(guard);
            }
            ConsumeResult::Retry => {
                pq.return_taken();
                drop(guard);
                let delay = strong.config.retry_delay;
                drop(strong);
                tokio::time::sleep(delay).await;
            }
        }
    }
}
