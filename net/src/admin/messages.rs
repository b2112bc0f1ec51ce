//! Looking messages up: by offset message id, by key, by queue and offset.

use bytes::Bytes;

use super::topics::RouteBroker;
use super::{Admin, AdminError, MessageView, answer_field};
use crate::client::consumer::{PullRequest, pull_request};
use crate::message::{decode_messages, decode_offset_msg_id};
use crate::protocol::bodies::MessageQueue;
use crate::protocol::heartbeat::{SUBSCRIBE_ALL, SubscriptionData};
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{request, response};

/// The group pulls for lookups are made under (RocketMQ's `MixAll.TOOLS_CONSUMER_GROUP`); a
/// lookup commits nothing.
pub const TOOLS_CONSUMER_GROUP: &str = "TOOLS_CONSUMER";

/// Results a query by unique id asks each broker for (RocketMQ's `defaultQueryMaxNum`).
const UNIQUE_QUERY_MAX: i32 = 32;

fn decode_views(
    server: &str,
    what: &'static str,
    body: &Bytes,
) -> Result<Vec<MessageView>, AdminError> {
    decode_messages(body)
        .map(|found| found.iter().map(MessageView::from).collect())
        .map_err(|e| AdminError::BadAnswer {
            server: server.to_string(),
            what,
            reason: e.to_string(),
        })
}

impl Admin {
    /// A message by its offset message id (which names the broker and the store position:
    /// `VIEW_MESSAGE_BY_ID`), or, given its topic, by the producer's unique id (`UNIQ_KEY`,
    /// looked up with `QUERY_MESSAGE`).
    pub async fn message_by_id(
        &self,
        id: &str,
        topic: Option<&str>,
    ) -> Result<MessageView, AdminError> {
        let id = id.trim();
        if let Some(topic) = topic
            && let Some(found) = self
                .query_key(topic, id, UNIQUE_QUERY_MAX, 0, i64::MAX, true)
                .await?
                .into_iter()
                .find(|m| m.uniq_key.as_deref() == Some(id))
        {
            return Ok(found);
        }
        let Some((store_host, offset)) = decode_offset_msg_id(id) else {
            return Err(AdminError::NotFound(match topic {
                Some(topic) => format!(
                    "no message of topic {topic} has the unique id {id}, and {id} is not an offset message id"
                ),
                None => format!(
                    "{id} is not an offset message id (32 or 56 hex digits); for a producer's unique id (UNIQ_KEY) give the topic too"
                ),
            }));
        };
        let addr = store_host.to_string();
        let ask =
            RemotingCommand::request(request::VIEW_MESSAGE_BY_ID).with_field("offset", offset);
        let answer = match self.ask_broker(&addr, ask).await {
            Ok(answer) => answer,
            Err(AdminError::BrokerUnreachable(u)) if topic.is_none() => {
                return Err(AdminError::NotFound(format!(
                    "{id} names broker {addr}, which cannot be reached ({}); if {id} is a producer's unique id (UNIQ_KEY), give the topic too",
                    u.reason
                )));
            }
            Err(e) => return Err(e),
        };
        if answer.code != response::SUCCESS {
            return Err(AdminError::NotFound(format!(
                "broker {addr} has no message at position {offset} (from id {id}): {}",
                answer.remark.as_deref().unwrap_or("no reason given")
            )));
        }
        decode_views(&addr, "the message", &answer.body_bytes())?
            .into_iter()
            .next()
            .ok_or_else(|| {
                AdminError::NotFound(format!("broker {addr} returned no message for {id}"))
            })
    }

    /// Messages of a topic carrying `key` (in their keys, or as their unique id), stored
    /// between `begin_ms` and `end_ms`, from every master broker of the topic (`QUERY_MESSAGE`);
    /// newest first, at most `max`.
    pub async fn messages_by_key(
        &self,
        topic: &str,
        key: &str,
        max: i32,
        begin_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<MessageView>, AdminError> {
        if max < 1 {
            return Err(AdminError::Invalid(format!(
                "at most {max} messages: ask for at least 1"
            )));
        }
        let found = self
            .query_key(topic, key, max, begin_ms, end_ms, false)
            .await?;
        if found.is_empty() {
            return Err(AdminError::NotFound(format!(
                "no message of topic {topic} has the key {key}"
            )));
        }
        Ok(found)
    }

    async fn query_key(
        &self,
        topic: &str,
        key: &str,
        max: i32,
        begin_ms: i64,
        end_ms: i64,
        unique: bool,
    ) -> Result<Vec<MessageView>, AdminError> {
        const WHAT: &str = "the key query";
        let mut found = Vec::new();
        for RouteBroker { broker, .. } in self.route_brokers(topic).await? {
            let mut ask = RemotingCommand::request(request::QUERY_MESSAGE)
                .with_field("topic", topic)
                .with_field("key", key)
                .with_field("maxNum", max)
                .with_field("beginTimestamp", begin_ms)
                .with_field("endTimestamp", end_ms);
            if unique {
                ask = ask.with_field("_UNIQUE_KEY_QUERY", true);
            }
            let answer = self.ask_broker(&broker.addr, ask).await?;
            if answer.code == response::QUERY_NOT_FOUND {
                continue;
            }
            let answer = super::success(&broker.addr, WHAT, answer)?;
            found.extend(decode_views(&broker.addr, WHAT, &answer.body_bytes())?);
        }
        // Key indexes are hashed: keep only true matches, as RocketMQ's client does.
        found.retain(|m| {
            m.topic == topic
                && (m.keys.iter().any(|k| k == key) || m.uniq_key.as_deref() == Some(key))
        });
        found.sort_by(|a, b| (b.store_timestamp, &b.msg_id).cmp(&(a.store_timestamp, &a.msg_id)));
        found.dedup_by(|a, b| a.msg_id == b.msg_id);
        found.truncate(usize::try_from(max).unwrap_or(0));
        Ok(found)
    }

    /// The message at `offset` of a queue (`PULL_MESSAGE` of one message, committing nothing).
    /// `broker` names the broker when the topic has queues on several.
    pub async fn message_at(
        &self,
        topic: &str,
        queue_id: i32,
        offset: i64,
        broker: Option<&str>,
    ) -> Result<MessageView, AdminError> {
        const WHAT: &str = "the pull";
        let brokers = self.route_brokers(topic).await?;
        let names: Vec<&str> = brokers
            .iter()
            .map(|r| r.broker.broker_name.as_str())
            .collect();
        let chosen = match broker {
            Some(name) => brokers
                .iter()
                .find(|r| r.broker.broker_name == name || r.broker.addr == name)
                .ok_or_else(|| {
                    AdminError::NoBroker(format!(
                        "topic {topic} has no queues on broker {name} (its brokers: {})",
                        names.join(", ")
                    ))
                })?,
            None => match brokers.as_slice() {
                [one] => one,
                _ => {
                    return Err(AdminError::Invalid(format!(
                        "topic {topic} has queues on several brokers ({}): name one",
                        names.join(", ")
                    )));
                }
            },
        };
        let queues = chosen.queues.read_queue_nums;
        if !(0..queues).contains(&queue_id) {
            return Err(AdminError::Invalid(format!(
                "topic {topic} has queues 0 to {} on broker {}; there is no queue {queue_id}",
                queues - 1,
                chosen.broker.broker_name
            )));
        }
        if offset < 0 {
            return Err(AdminError::Invalid(format!("offset {offset} is negative")));
        }
        let addr = &chosen.broker.addr;
        let queue = MessageQueue {
            topic: topic.to_string(),
            broker_name: chosen.broker.broker_name.clone(),
            queue_id,
        };
        let every_tag = SubscriptionData::from_expression(topic, SUBSCRIBE_ALL, 0);
        let ask = pull_request(&PullRequest {
            group: TOOLS_CONSUMER_GROUP,
            queue: &queue,
            offset,
            max_messages: 1,
            subscription: &every_tag,
            suspend: None,
            commit_offset: None,
        });
        let answer = self.ask_broker(addr, ask).await?;
        let missing = |answer: &RemotingCommand| -> Result<AdminError, AdminError> {
            let min: i64 = answer_field(addr, WHAT, answer, "minOffset")?;
            let max: i64 = answer_field(addr, WHAT, answer, "maxOffset")?;
            Ok(AdminError::NotFound(if max > min {
                format!(
                    "queue {queue_id} of topic {topic} on {} holds offsets {min} to {}; {offset} is not among them",
                    chosen.broker.broker_name,
                    max - 1
                )
            } else {
                format!(
                    "queue {queue_id} of topic {topic} on {} holds no message",
                    chosen.broker.broker_name
                )
            }))
        };
        match answer.code {
            response::SUCCESS => {}
            response::PULL_NOT_FOUND
            | response::PULL_OFFSET_MOVED
            | response::PULL_RETRY_IMMEDIATELY => return Err(missing(&answer)?),
            _ => return Err(super::refused(addr, WHAT, &answer)),
        }
        decode_views(addr, WHAT, &answer.body_bytes())?
            .into_iter()
            .find(|m| m.queue_offset == offset)
            .map_or_else(|| Err(missing(&answer)?), Ok)
    }
}
