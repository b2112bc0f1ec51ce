//! `SEND_MESSAGE`, `SEND_MESSAGE_V2` and `SEND_BATCH_MESSAGE`: checks as RocketMQ's
//! `AbstractSendMessageProcessor.msgCheck`, topic auto-creation through the template, and one
//! append per request (a whole batch in one hand-off to the queue's shard). In sync flush mode
//! the append, and so the answer, completes only once the messages are durable.

use bytes::Bytes;
use quiver_engine::store::types::{Appended, Message};

use super::Shared;
use super::service::{BrokerService, Processed, Refusal};
use super::wire::unique_id;
use crate::message::{
    MAX_PROPERTIES_BYTES, Properties, StoredExtras, body_crc, decode_batch, offset_msg_id,
    property, tag_hash,
};
use crate::protocol::route::{
    AUTO_CREATE_TOPIC_KEY, RETRY_GROUP_TOPIC_PREFIX, TopicConfig, topic_name_error,
};
use crate::remoting::codes::{request, response};
use crate::remoting::{FieldError, RemotingCommand};
use crate::server::Connection;

/// `MessageSysFlag` transaction bits: a prepared (half) message.
const TRANSACTION_PREPARED_TYPE: i32 = 0x4;

/// The send header, under its long (V1) or short (V2) names.
struct SendHeader {
    producer_group: String,
    topic: String,
    default_topic: String,
    default_topic_queue_nums: i32,
    queue_id: i32,
    sys_flag: i32,
    born_timestamp: i64,
    flag: i32,
    properties: String,
    reconsume_times: i32,
}

/// A header field under its V1 name, else its V2 name.
fn field<'a>(req: &'a RemotingCommand, long: &'static str, short: &str) -> Option<&'a str> {
    req.field(long).or_else(|| req.field(short))
}

fn parse<T: std::str::FromStr>(
    req: &RemotingCommand,
    long: &'static str,
    short: &str,
) -> Result<Option<T>, FieldError> {
    match field(req, long, short) {
        None => Ok(None),
        Some(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| FieldError::Invalid {
                field: long,
                value: value.chars().take(64).collect(),
                expected: std::any::type_name::<T>(),
            }),
    }
}

fn required<T: std::str::FromStr>(
    req: &RemotingCommand,
    long: &'static str,
    short: &str,
) -> Result<T, FieldError> {
    parse(req, long, short)?.ok_or(FieldError::Missing(long))
}

impl SendHeader {
    fn parse(req: &RemotingCommand) -> Result<SendHeader, FieldError> {
        let text = |long: &'static str, short: &str| {
            field(req, long, short)
                .map(str::to_string)
                .ok_or(FieldError::Missing(long))
        };
        Ok(SendHeader {
            producer_group: text("producerGroup", "a")?,
            topic: text("topic", "b")?,
            default_topic: text("defaultTopic", "c")?,
            default_topic_queue_nums: required(req, "defaultTopicQueueNums", "d")?,
            queue_id: required(req, "queueId", "e")?,
            sys_flag: required(req, "sysFlag", "f")?,
            born_timestamp: required(req, "bornTimestamp", "g")?,
            flag: required(req, "flag", "h")?,
            properties: field(req, "properties", "i")
                .unwrap_or_default()
                .to_string(),
            reconsume_times: parse(req, "reconsumeTimes", "j")?.unwrap_or(0),
        })
    }
}

impl BrokerService {
    pub(crate) async fn send(&self, connection: &Connection, req: &RemotingCommand) -> Processed {
        let header = SendHeader::parse(req)?;
        let shared = &self.shared;
        // A send ordered after a deletion of its topic in progress: never into the old life.
        shared.topics.wait_while_deleting(&header.topic).await;
        let topic = check_topic(shared, &header)?;
        let queue_id = pick_queue(&topic, &header)?;
        let body = req.body_bytes();
        if body.len() > shared.config.max_message_bytes {
            return Err(Refusal::new(
                response::MESSAGE_ILLEGAL,
                format!(
                    "the message body size over max value, MAX: {}",
                    shared.config.max_message_bytes
                ),
            ));
        }
        let batch = req.code == request::SEND_BATCH_MESSAGE;
        let born_host = connection.peer();
        let mut uniq_keys = Vec::new();
        let messages = if batch {
            if header.topic.starts_with(RETRY_GROUP_TOPIC_PREFIX) {
                return Err(Refusal::new(
                    response::MESSAGE_ILLEGAL,
                    "batch request does not support retry group topic",
                ));
            }
            let items = decode_batch(&body, shared.config.max_message_bytes).map_err(|e| {
                Refusal::new(
                    response::MESSAGE_ILLEGAL,
                    format!("the batch body of {} bytes is malformed: {e}", body.len()),
                )
            })?;
            let mut messages = Vec::with_capacity(items.len());
            for item in items {
                let (message, uniq) = build_message(
                    shared,
                    &header,
                    born_host,
                    item.flag,
                    &item.properties,
                    item.body,
                )?;
                uniq_keys.push(uniq);
                messages.push(message);
            }
            messages
        } else {
            let (message, uniq) = build_message(
                shared,
                &header,
                born_host,
                header.flag,
                &header.properties,
                body,
            )?;
            uniq_keys.push(uniq);
            vec![message]
        };
        if messages.is_empty() {
            return Err(Refusal::new(
                response::MESSAGE_ILLEGAL,
                "the batch is empty",
            ));
        }
        let placed = self
            .shards
            .append(header.topic.as_bytes(), queue_id as u32, messages)
            .await?;
        Ok(answer(shared, req, queue_id, &placed, batch, &uniq_keys))
    }
}

/// The topic's config, created from the template on a first send when allowed.
fn check_topic(shared: &Shared, header: &SendHeader) -> Result<TopicConfig, Refusal> {
    if let Some(reason) = topic_name_error(&header.topic) {
        return Err(Refusal::new(response::SYSTEM_ERROR, reason));
    }
    if header.topic == AUTO_CREATE_TOPIC_KEY {
        return Err(Refusal::new(
            response::NO_PERMISSION,
            format!("Sending message to topic[{}] is forbidden.", header.topic),
        ));
    }
    let refused_io =
        |e: super::topics::TopicsError| Refusal::new(response::SYSTEM_ERROR, e.to_string());
    let config = match shared.topics.get(&header.topic) {
        Some(config) => config,
        None => {
            let created = shared
                .topics
                .create_for_send(
                    &header.topic,
                    &header.default_topic,
                    header.default_topic_queue_nums,
                    0,
                )
                .map_err(refused_io)?;
            match created {
                Some((config, new)) => {
                    if new {
                        tracing::info!(topic = %header.topic, queues = config.write_queue_nums, producer_group = %header.producer_group, "topic created by a send");
                        shared.register_topic_soon(config.clone());
                    }
                    config
                }
                None if header.topic.starts_with(RETRY_GROUP_TOPIC_PREFIX) => {
                    let (config, new) = shared
                        .topics
                        .ensure_retry_topic(&header.topic)
                        .map_err(refused_io)?;
                    if new {
                        shared.register_topic_soon(config.clone());
                    }
                    config
                }
                None => {
                    return Err(Refusal::new(
                        response::TOPIC_NOT_EXIST,
                        format!("topic[{}] not exist, apply first please!", header.topic),
                    ));
                }
            }
        }
    };
    if !config.writable() {
        return Err(Refusal::new(
            response::NO_PERMISSION,
            format!("the topic[{}] sending message is forbidden", header.topic),
        ));
    }
    Ok(config)
}

/// The queue to write: as asked, or a random writable one when the producer left it to the
/// broker (a negative id).
fn pick_queue(topic: &TopicConfig, header: &SendHeader) -> Result<i32, Refusal> {
    let queues = topic.queue_count();
    if header.queue_id >= queues {
        return Err(Refusal::new(
            response::SYSTEM_ERROR,
            format!(
                "request queueId[{}] is illegal, topic:{} queues:{} Producer:{}",
                header.queue_id, header.topic, queues, header.producer_group
            ),
        ));
    }
    if header.queue_id >= 0 {
        return Ok(header.queue_id);
    }
    let writable = topic.write_queue_nums.max(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Ok((nanos % writable as u32) as i32)
}

/// One message for the engine: its properties completed as the broker does (a unique key if
/// the producer gave none, the cluster), its keys and unique key indexed, its tag hashed.
fn build_message(
    shared: &Shared,
    header: &SendHeader,
    born_host: std::net::SocketAddr,
    flag: i32,
    properties: &str,
    body: Bytes,
) -> Result<(Message, Option<String>), Refusal> {
    let mut props = Properties::parse(properties);
    if props
        .get(property::TRAN_MSG)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || header.sys_flag & TRANSACTION_PREPARED_TYPE != 0
    {
        return Err(Refusal::new(
            response::NO_PERMISSION,
            format!(
                "the broker[{}] sending transaction message is forbidden: transactional messages are not supported yet",
                shared.config.broker_name
            ),
        ));
    }
    if props
        .get(property::DELAY)
        .and_then(|d| d.trim().parse::<i64>().ok())
        .is_some_and(|level| level > 0)
    {
        return Err(Refusal::new(
            response::MESSAGE_ILLEGAL,
            "delayed messages are not supported yet",
        ));
    }
    props.remove(property::POP_CK);
    if props.get(property::UNIQ_KEY).is_none() {
        props.set(property::UNIQ_KEY, unique_id(shared.store_host));
    }
    props.set(property::CLUSTER, shared.config.cluster_name.clone());
    let encoded = props.encode();
    if encoded.len() > MAX_PROPERTIES_BYTES {
        return Err(Refusal::new(
            response::MESSAGE_ILLEGAL,
            format!(
                "the message properties length {} exceeds {MAX_PROPERTIES_BYTES}",
                encoded.len()
            ),
        ));
    }
    let uniq = props.get(property::UNIQ_KEY).map(str::to_string);
    let mut keys = props
        .get(property::KEYS)
        .unwrap_or_default()
        .trim()
        .to_string();
    if let Some(uniq) = &uniq {
        if !keys.is_empty() {
            keys.push(' ');
        }
        keys.push_str(uniq);
    }
    let extras = StoredExtras {
        sys_flag: header.sys_flag,
        born_host,
        reconsume_times: header.reconsume_times,
        prepared_transaction_offset: 0,
        body_crc: body_crc(&body),
    };
    let message = Message {
        born_timestamp_ms: header.born_timestamp.max(0) as u64,
        tag_hash: tag_hash(props.get(property::TAGS)),
        flags: flag as u32,
        keys: Bytes::from(keys),
        properties: extras.encode_with(&encoded),
        body,
    };
    Ok((message, uniq))
}

/// `SendMessageResponseHeader`, plus the region and trace switch producers read.
fn answer(
    shared: &Shared,
    req: &RemotingCommand,
    queue_id: i32,
    placed: &[Appended],
    batch: bool,
    uniq_keys: &[Option<String>],
) -> RemotingCommand {
    let msg_id = placed
        .iter()
        .map(|p| offset_msg_id(shared.store_host, p.pos.as_u64()))
        .collect::<Vec<_>>()
        .join(",");
    let first_offset = placed.first().map_or(0, |p| p.queue_offset);
    let mut answer = RemotingCommand::response_to(req, response::SUCCESS)
        .with_field("msgId", msg_id)
        .with_field("queueId", queue_id)
        .with_field("queueOffset", first_offset);
    if !batch && let Some(Some(uniq)) = uniq_keys.first() {
        answer = answer.with_field("transactionId", uniq);
    }
    answer
        .with_field("MSG_REGION", &shared.config.region_id)
        .with_field("TRACE_ON", shared.config.trace_on)
}
