//! The producer: sends to a topic's queues round-robin, retrying on another broker when one
//! fails; ordered sends pick the queue by a selector; batches go in one request.
//!
//! ```no_run
//! use quiver_net::client::{ClientConfig, MqError};
//! use quiver_net::client::message::Message;
//! use quiver_net::client::producer::{Producer, ProducerConfig};
//!
//! # async fn demo() -> Result<(), MqError> {
//! let producer = Producer::start(ProducerConfig::new("orders-producer", ClientConfig::new("127.0.0.1:9876"))).await?;
//! let sent = producer.send(Message::new("orders", "order 17 paid").with_keys(["order-17"])).await?;
//! println!("stored as {} at {:?} offset {}", sent.msg_id, sent.queue, sent.queue_offset);
//! // Every message of one order goes to the same queue, so it is consumed in order.
//! producer.send_ordered(Message::new("orders", "order 17 shipped"), "order-17").await?;
//! producer.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

use crate::client::instance::{Instance, lock, publish_queues, refused};
use crate::client::message::{Message, SendResult, SendStatus, encode_batch, new_msg_id};
use crate::client::{ClientConfig, MqError};
use crate::message::{java_string_hash, property};
use crate::protocol::bodies::MessageQueue;
use crate::protocol::route::AUTO_CREATE_TOPIC_KEY;
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{request, response};

/// Queues a topic gets when a send creates it (RocketMQ's `defaultTopicQueueNums`).
pub const DEFAULT_TOPIC_QUEUE_NUMS: i32 = 4;

/// Largest body sent (RocketMQ's `maxMessageSize`, 4 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// The producer group (used by brokers for transactions and reported in heartbeats).
    pub group: String,
    /// Name servers and client identity.
    pub client: ClientConfig,
    /// How long one send waits for the broker.
    pub send_timeout: Duration,
    /// Further tries after a failed send (RocketMQ's `retryTimesWhenSendFailed`, 2), each on
    /// another broker when there is one.
    pub retries: u32,
    /// Largest body accepted.
    pub max_message_bytes: usize,
    /// Queues of a topic created by a send.
    pub default_topic_queue_nums: i32,
}

impl ProducerConfig {
    /// Defaults as RocketMQ's `DefaultMQProducer`.
    pub fn new(group: impl Into<String>, client: ClientConfig) -> ProducerConfig {
        ProducerConfig {
            group: group.into(),
            send_timeout: Duration::from_millis(crate::client::config::DEFAULT_REQUEST_TIMEOUT_MS),
            client,
            retries: 2,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            default_topic_queue_nums: DEFAULT_TOPIC_QUEUE_NUMS,
        }
    }
}

/// The queues a topic's sends go to: from its own route, or from the auto-creation
/// template's while the topic does not exist yet.
#[derive(Debug, Clone)]
struct PublishInfo {
    queues: Vec<MessageQueue>,
}

/// A producer. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    config: ProducerConfig,
    instance: Arc<Instance>,
    next_queue: AtomicUsize,
    publish: std::sync::Mutex<HashMap<String, PublishInfo>>,
}

/// How a send is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Wait,
    Oneway,
}

impl Producer {
    /// Starts a producer (nothing is contacted until the first send).
    pub async fn start(config: ProducerConfig) -> Result<Producer, MqError> {
        let mut client = config.client.clone();
        client.request_timeout = config.send_timeout;
        let instance = Instance::start(client)?;
        instance.set_producer_group(&config.group);
        Ok(Producer {
            inner: Arc::new(Inner {
                config,
                instance,
                next_queue: AtomicUsize::new(0),
                publish: std::sync::Mutex::default(),
            }),
        })
    }

    /// The id brokers know this producer by.
    pub fn client_id(&self) -> &str {
        &self.inner.instance.client_id
    }

    /// Sends and waits until the broker has stored the message (durably, in sync flush mode).
    /// On failure it tries again (`retries` times), on another broker when there is one.
    pub async fn send(&self, message: Message) -> Result<SendResult, MqError> {
        let result = self.inner.send_any(message, Mode::Wait).await?;
        result.ok_or(MqError::Shutdown)
    }

    /// Sends in the background; the handle yields what [`Producer::send`] would. For many sends
    /// in flight without one task each.
    pub fn send_async(&self, message: Message) -> JoinHandle<Result<SendResult, MqError>> {
        let producer = self.clone();
        tokio::spawn(async move { producer.send(message).await })
    }

    /// Sends without waiting for the broker: fastest, and nothing says whether it was stored.
    pub async fn send_oneway(&self, message: Message) -> Result<(), MqError> {
        self.inner.send_any(message, Mode::Oneway).await.map(|_| ())
    }

    /// Sends messages of one topic in one request, to one queue; they are stored together and
    /// get consecutive offsets.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<SendResult, MqError> {
        self.inner.send_batch(messages).await
    }

    /// Sends to the queue `selector` picks from the topic's queues (an index, taken modulo
    /// their number). Not retried elsewhere: another queue would break the order it serves.
    pub async fn send_with_selector<F>(
        &self,
        message: Message,
        selector: F,
    ) -> Result<SendResult, MqError>
    where
        F: FnOnce(&[MessageQueue], &Message) -> usize,
    {
        let mut message = message;
        self.inner.prepare(&mut message)?;
        let info = self.inner.publish_info(&message.topic).await?;
        let index = selector(&info.queues, &message) % info.queues.len().max(1);
        let queue = info
            .queues
            .get(index)
            .cloned()
            .ok_or_else(|| MqError::NoRoute(message.topic.clone()))?;
        self.inner
            .send_to(message, &queue, Mode::Wait)
            .await?
            .ok_or(MqError::Shutdown)
    }

    /// Sends so that every message with the same `key` lands in the same queue, and is
    /// therefore consumed in the order sent (while the topic's queue count stays the same).
    pub async fn send_ordered(&self, message: Message, key: &str) -> Result<SendResult, MqError> {
        let hash = java_string_hash(key).unsigned_abs() as usize;
        self.send_with_selector(message, |queues, _| hash % queues.len().max(1))
            .await
    }

    /// Sends to a given queue.
    pub async fn send_to_queue(
        &self,
        mut message: Message,
        queue: &MessageQueue,
    ) -> Result<SendResult, MqError> {
        self.inner.prepare(&mut message)?;
        // Learns the route, and with it the broker's address.
        self.inner.publish_info(&message.topic).await?;
        self.inner
            .send_to(message, queue, Mode::Wait)
            .await?
            .ok_or(MqError::Shutdown)
    }

    /// The queues sends to `topic` go to.
    pub async fn publish_queues(&self, topic: &str) -> Result<Vec<MessageQueue>, MqError> {
        Ok(self.inner.publish_info(topic).await?.queues)
    }

    /// Tells the brokers this producer is gone and stops its background work.
    pub async fn shutdown(&self) {
        self.inner.instance.unregister_all().await;
        self.inner.instance.shutdown();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Inner {
    /// The topic's write queues: from its route, or, when it has none yet, from the
    /// auto-creation template's route (the broker then creates the topic on the first send).
    async fn publish_info(&self, topic: &str) -> Result<PublishInfo, MqError> {
        if let Some(info) = lock(&self.publish).get(topic) {
            return Ok(info.clone());
        }
        self.refresh_publish_info(topic).await
    }

    async fn refresh_publish_info(&self, topic: &str) -> Result<PublishInfo, MqError> {
        let info = match self.instance.refresh_route(topic).await {
            Ok(route) => PublishInfo {
                queues: publish_queues(topic, &route),
            },
            Err(MqError::NoRoute(_)) => {
                let template = self
                    .instance
                    .refresh_route(AUTO_CREATE_TOPIC_KEY)
                    .await
                    .map_err(|_| MqError::NoRoute(topic.to_string()))?;
                let mut queues = publish_queues(topic, &template);
                // As many queues per broker as a created topic gets.
                queues.retain(|q| q.queue_id < self.config.default_topic_queue_nums);
                PublishInfo { queues }
            }
            Err(e) => return Err(e),
        };
        if info.queues.is_empty() {
            return Err(MqError::NoRoute(topic.to_string()));
        }
        lock(&self.publish).insert(topic.to_string(), info.clone());
        Ok(info)
    }

    fn forget_publish_info(&self, topic: &str) {
        lock(&self.publish).remove(topic);
    }

    /// Round-robin over the queues, skipping the broker that just failed when another exists.
    fn pick(&self, queues: &[MessageQueue], avoid: Option<&str>) -> Option<MessageQueue> {
        let start = self.next_queue.fetch_add(1, Ordering::Relaxed);
        (0..queues.len())
            .map(|i| &queues[(start + i) % queues.len()])
            .find(|q| Some(q.broker_name.as_str()) != avoid)
            .or_else(|| queues.get(start % queues.len().max(1)))
            .cloned()
    }

    /// Checks what a broker would refuse and gives the message its unique id (once: a retry
    /// keeps it). Every send path calls it before the first try.
    fn prepare(&self, message: &mut Message) -> Result<(), MqError> {
        message
            .validate(self.config.max_message_bytes)
            .map_err(MqError::InvalidMessage)?;
        if message.properties.get(property::UNIQ_KEY).is_none() {
            message
                .properties
                .set(property::UNIQ_KEY, new_msg_id(self.instance.client_addr()));
        }
        Ok(())
    }

    async fn send_any(
        &self,
        mut message: Message,
        mode: Mode,
    ) -> Result<Option<SendResult>, MqError> {
        self.prepare(&mut message)?;
        let tries = 1 + self.config.retries;
        let mut avoid: Option<String> = None;
        let mut last = None;
        for _ in 0..tries {
            let info = match self.publish_info(&message.topic).await {
                Ok(info) => info,
                Err(e) if e.is_retryable() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(queue) = self.pick(&info.queues, avoid.as_deref()) else {
                return Err(MqError::NoRoute(message.topic.clone()));
            };
            match self.send_to(message.clone(), &queue, mode).await {
                Ok(result) => return Ok(result),
                Err(e) if e.is_retryable() => {
                    tracing::debug!(queue = ?queue, error = %e, "send failed; trying again");
                    avoid = Some(queue.broker_name.clone());
                    self.forget_publish_info(&message.topic);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(MqError::Exhausted {
            tries,
            last: Box::new(last.unwrap_or(MqError::NoRoute(message.topic.clone()))),
        })
    }

    async fn send_batch(&self, mut messages: Vec<Message>) -> Result<SendResult, MqError> {
        let Some(topic) = messages.first().map(|m| m.topic.clone()) else {
            return Err(MqError::InvalidMessage(
                "a batch needs at least one message".into(),
            ));
        };
        for message in &mut messages {
            if message.topic != topic {
                return Err(MqError::InvalidMessage(
                    "every message of a batch must have the same topic".into(),
                ));
            }
            self.prepare(message)?;
        }
        let ids: Vec<String> = messages
            .iter()
            .filter_map(|m| m.properties.get(property::UNIQ_KEY).map(str::to_string))
            .collect();
        let body = encode_batch(&messages).map_err(MqError::InvalidMessage)?;
        let total: usize = body.len();
        if total > self.config.max_message_bytes {
            return Err(MqError::InvalidMessage(format!(
                "the batch is {total} bytes, over the limit of {}",
                self.config.max_message_bytes
            )));
        }
        let tries = 1 + self.config.retries;
        let mut avoid: Option<String> = None;
        let mut last = None;
        for _ in 0..tries {
            let info = self.publish_info(&topic).await?;
            let Some(queue) = self.pick(&info.queues, avoid.as_deref()) else {
                return Err(MqError::NoRoute(topic.clone()));
            };
            let request = self
                .header(request::SEND_BATCH_MESSAGE, &topic, &queue, 0, "")
                .with_field("m", true)
                .with_body(body.clone());
            match self.exchange(request, &queue, Mode::Wait).await {
                Ok(Some(mut result)) => {
                    result.msg_id = ids.join(",");
                    return Ok(result);
                }
                Ok(None) => return Err(MqError::Shutdown),
                Err(e) if e.is_retryable() => {
                    avoid = Some(queue.broker_name.clone());
                    self.forget_publish_info(&topic);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(MqError::Exhausted {
            tries,
            last: Box::new(last.unwrap_or(MqError::NoRoute(topic))),
        })
    }

    fn header(
        &self,
        code: i32,
        topic: &str,
        queue: &MessageQueue,
        flag: i32,
        properties: &str,
    ) -> RemotingCommand {
        // SendMessageRequestHeaderV2's short names.
        RemotingCommand::request(code)
            .with_field("a", &self.config.group)
            .with_field("b", topic)
            .with_field("c", AUTO_CREATE_TOPIC_KEY)
            .with_field("d", self.config.default_topic_queue_nums)
            .with_field("e", queue.queue_id)
            .with_field("f", 0)
            .with_field("g", now_ms())
            .with_field("h", flag)
            .with_field("i", properties)
            .with_field("j", 0)
            .with_field("k", false)
    }

    /// Sends a message [`Inner::prepare`] has checked and given its id.
    async fn send_to(
        &self,
        message: Message,
        queue: &MessageQueue,
        mode: Mode,
    ) -> Result<Option<SendResult>, MqError> {
        debug_assert!(message.properties.get(property::UNIQ_KEY).is_some());
        let msg_id = message
            .properties
            .get(property::UNIQ_KEY)
            .unwrap_or_default()
            .to_string();
        let request = self
            .header(
                request::SEND_MESSAGE_V2,
                &message.topic,
                queue,
                message.flag,
                &message.properties.encode(),
            )
            .with_body(message.body.clone());
        let result = self.exchange(request, queue, mode).await?;
        Ok(result.map(|mut r| {
            r.msg_id = msg_id;
            r
        }))
    }

    async fn exchange(
        &self,
        request: RemotingCommand,
        queue: &MessageQueue,
        mode: Mode,
    ) -> Result<Option<SendResult>, MqError> {
        if self.instance.is_shut_down() {
            return Err(MqError::Shutdown);
        }
        let addr = self
            .instance
            .master_addr(&queue.broker_name)
            .ok_or_else(|| MqError::NoRoute(queue.topic.clone()))?;
        if mode == Mode::Oneway {
            let client = self.instance.connection(&addr).await?;
            client.invoke_oneway(request)?;
            return Ok(None);
        }
        let answer = self.instance.invoke(&addr, request).await?;
        let status = match answer.code {
            response::SUCCESS => SendStatus::SendOk,
            response::FLUSH_DISK_TIMEOUT => SendStatus::FlushDiskTimeout,
            response::FLUSH_SLAVE_TIMEOUT => SendStatus::FlushSlaveTimeout,
            response::SLAVE_NOT_AVAILABLE => SendStatus::SlaveNotAvailable,
            _ => return Err(refused("a send", &addr, &answer)),
        };
        let queue_offset = answer.optional_parsed::<i64>("queueOffset").ok().flatten();
        let queue_id = answer.optional_parsed::<i32>("queueId").ok().flatten();
        Ok(Some(SendResult {
            status,
            msg_id: String::new(),
            offset_msg_id: answer
                .field("msgId")
                .map(|ids| ids.split(',').next().unwrap_or_default().to_string())
                .unwrap_or_default(),
            queue: MessageQueue {
                queue_id: queue_id.unwrap_or(queue.queue_id),
                ..queue.clone()
            },
            queue_offset: queue_offset.unwrap_or(-1),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_send_path_checks_the_message_first_even_with_its_own_id() {
        // No name server listens here: a message refused before sending never gets that far.
        let client = ClientConfig::new("127.0.0.1:1");
        let producer = Producer::start(ProducerConfig::new("p", client))
            .await
            .unwrap();
        let empty = || Message::new("t", "").with_property(property::UNIQ_KEY, "mine");
        let queue = MessageQueue::default();
        let refused = |r: Result<SendResult, MqError>| matches!(r, Err(MqError::InvalidMessage(_)));
        assert!(refused(producer.send(empty()).await));
        assert!(refused(producer.send_ordered(empty(), "k").await));
        assert!(refused(producer.send_to_queue(empty(), &queue).await));
        assert!(refused(producer.send_batch(vec![empty()]).await));
        producer.inner.instance.shutdown();
    }
}
