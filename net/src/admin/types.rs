//! What admin operations return: plain typed results, serializable so a command line can print
//! them as JSON as well as tables. Field names are camelCase, as RocketMQ's own JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::message::{DecodedMessage, property};
use crate::protocol::route::{PERM_READ, PERM_WRITE};

/// Which brokers a topic operation goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerSelector {
    /// Every master broker the name servers know.
    All,
    /// Every master broker of one cluster.
    Cluster(String),
    /// One broker, by `host:port` (whether or not the name servers know it).
    Addr(String),
}

/// A topic to create or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Its name.
    pub name: String,
    /// Queues consumers read.
    pub read_queue_nums: i32,
    /// Queues producers write.
    pub write_queue_nums: i32,
    /// [`PERM_READ`] | [`PERM_WRITE`].
    pub perm: i32,
    /// Whether it is an ordered topic.
    pub order: bool,
}

impl TopicSpec {
    /// A readable and writable topic with `queues` read and write queues.
    pub fn new(name: impl Into<String>, queues: i32) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            perm: PERM_READ | PERM_WRITE,
            order: false,
        }
    }
}

/// A broker a request went to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerRef {
    /// Its cluster (empty when the name servers do not know the broker).
    pub cluster: String,
    /// Its name (its address when the name servers do not know it).
    pub broker_name: String,
    /// Its `host:port`.
    pub addr: String,
}

/// One broker of a cluster, as the name servers know it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterBroker {
    /// The cluster.
    pub cluster: String,
    /// The broker's name.
    pub broker_name: String,
    /// 0 for the master.
    pub broker_id: i64,
    /// Its `host:port`.
    pub addr: String,
}

/// The outcome of a topic creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicCreated {
    /// The topic.
    pub topic: String,
    /// Its read queues on each broker.
    pub read_queue_nums: i32,
    /// Its write queues on each broker.
    pub write_queue_nums: i32,
    /// Its permission bits.
    pub perm: i32,
    /// The brokers that created it.
    pub brokers: Vec<BrokerRef>,
}

/// The outcome of a topic deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicDeleted {
    /// The topic.
    pub topic: String,
    /// The brokers that deleted it (with its messages and every group's offsets of it).
    pub brokers: Vec<BrokerRef>,
    /// The name servers that dropped its route.
    pub name_servers: Vec<String>,
}

/// One queue of a topic: what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// The broker holding it.
    pub broker_name: String,
    /// The queue id.
    pub queue_id: i32,
    /// The lowest offset still stored.
    pub min_offset: i64,
    /// One past the last offset: messages ever written to the queue.
    pub max_offset: i64,
    /// Messages it holds now (`maxOffset - minOffset`).
    pub messages: i64,
    /// Store time of its newest message, ms since the epoch; 0 if it has none.
    pub last_update_timestamp: i64,
}

/// Every queue of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatus {
    /// The topic.
    pub topic: String,
    /// Its queues, by broker then queue id.
    pub queues: Vec<QueueStatus>,
    /// Messages held across all queues.
    pub total_messages: i64,
}

/// A consumer group's position in one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueProgress {
    /// The topic.
    pub topic: String,
    /// The broker holding the queue.
    pub broker_name: String,
    /// The queue id.
    pub queue_id: i32,
    /// One past the queue's last offset.
    pub broker_offset: i64,
    /// The group's committed offset: the next message it will consume.
    pub consumer_offset: i64,
    /// Messages not yet consumed (`brokerOffset - consumerOffset`, at least 0).
    pub lag: i64,
    /// Store time of the last consumed message, ms since the epoch; 0 if unknown.
    pub last_timestamp: i64,
}

/// A consumer group's progress over its queues.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupProgress {
    /// The group.
    pub group: String,
    /// The topic asked about, if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Messages consumed per second, as the brokers report it.
    pub consume_tps: f64,
    /// Sum of every queue's lag.
    pub total_lag: i64,
    /// Each queue, by topic, broker and queue id.
    pub queues: Vec<QueueProgress>,
}

/// Where to move a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ResetTarget {
    /// Each queue's lowest stored offset: consume everything again.
    Earliest,
    /// Each queue's end: skip everything stored.
    Latest,
    /// The first message stored at or after this time (ms since the epoch); the queue's end
    /// if none was.
    Timestamp(i64),
}

/// A group's offset moved on one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueReset {
    /// The broker holding the queue.
    pub broker_name: String,
    /// The queue id.
    pub queue_id: i32,
    /// The committed offset before, if there was one.
    pub previous_offset: Option<i64>,
    /// The committed offset now.
    pub new_offset: i64,
}

/// The outcome of an offset reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OffsetReset {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// Where the offsets were moved to.
    pub target: ResetTarget,
    /// Each queue, by broker and queue id.
    pub queues: Vec<QueueReset>,
}

/// A stored message, as an operator wants to see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    /// The topic.
    pub topic: String,
    /// The queue id.
    pub queue_id: i32,
    /// Its offset in the queue.
    pub queue_offset: i64,
    /// The offset message id (store host and position), what `message id` looks up.
    pub msg_id: String,
    /// The producer's unique id (`UNIQ_KEY`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uniq_key: Option<String>,
    /// The tag, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
    /// The keys.
    pub keys: Vec<String>,
    /// When the producer made it, ms since the epoch.
    pub born_timestamp: i64,
    /// When the broker stored it, ms since the epoch.
    pub store_timestamp: i64,
    /// The producer's address.
    pub born_host: String,
    /// The broker's address.
    pub store_host: String,
    /// Times it was consumed again.
    pub reconsume_times: i32,
    /// The user flag.
    pub flag: i32,
    /// `MessageSysFlag` bits.
    pub sys_flag: i32,
    /// Every property.
    pub properties: BTreeMap<String, String>,
    /// Body length in bytes.
    pub body_bytes: usize,
    /// Whether the producer compressed the body (shown as stored, not inflated).
    pub compressed: bool,
    /// The body, when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in hex, when it is not UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_hex: Option<String>,
}

/// `MessageSysFlag.COMPRESSED_FLAG`.
const COMPRESSED_FLAG: i32 = 0x1;

impl From<&DecodedMessage> for MessageView {
    fn from(m: &DecodedMessage) -> MessageView {
        let (body, body_hex) = match std::str::from_utf8(&m.body) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(crate::message::upper_hex(&m.body))),
        };
        MessageView {
            topic: m.topic.clone(),
            queue_id: m.queue_id,
            queue_offset: m.queue_offset,
            msg_id: m.offset_msg_id(),
            uniq_key: m.properties.get(property::UNIQ_KEY).map(str::to_string),
            tags: m.properties.get(property::TAGS).map(str::to_string),
            keys: m
                .properties
                .get(property::KEYS)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            born_timestamp: m.born_timestamp,
            store_timestamp: m.store_timestamp,
            born_host: m.born_host.to_string(),
            store_host: m.store_host.to_string(),
            reconsume_times: m.reconsume_times,
            flag: m.flag,
            sys_flag: m.sys_flag,
            properties: m.properties.0.iter().cloned().collect(),
            body_bytes: m.body.len(),
            compressed: m.sys_flag & COMPRESSED_FLAG != 0,
            body,
            body_hex,
        }
    }
}

/// A broker's runtime figures (`GET_BROKER_RUNTIME_INFO`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    /// The broker's cluster, if the name servers know it.
    pub cluster: String,
    /// The broker's name, if the name servers know it.
    pub broker_name: String,
    /// Its `host:port`.
    pub addr: String,
    /// Its figures, by RocketMQ's key names where RocketMQ has one.
    pub table: BTreeMap<String, String>,
}
