//! `PULL_MESSAGE` (and `LITE_PULL_MESSAGE`): checks and codes as RocketMQ's
//! `PullMessageProcessor`, tag filtering in the engine, and long polling: a pull that finds
//! nothing new is held until a message arrives on its queue (answered at once) or the client's
//! suspend time passes, then answered with fresh offsets.

use std::time::Duration;

use bytes::Bytes;
use quiver_engine::store::types::ReadOutcome;

use super::service::{BrokerService, Processed, Refusal};
use super::wire::{encode_record, tag_filter};
use crate::protocol::heartbeat::SubscriptionData;
use crate::remoting::RemotingCommand;
use crate::remoting::codes::response;

/// `PullSysFlag`: commit the offset carried in the request.
const FLAG_COMMIT_OFFSET: i32 = 0x1;
/// `PullSysFlag`: the broker may hold the request.
const FLAG_SUSPEND: i32 = 0x2;
/// `PullSysFlag`: the request carries its subscription.
const FLAG_SUBSCRIPTION: i32 = 0x4;

/// Most messages one pull returns, whatever the client asks (the engine's read cap).
const PULL_MESSAGES_MAX: usize = quiver_engine::store::shard::READ_ENTRIES_MAX;

struct PullHeader {
    group: String,
    topic: String,
    queue_id: i32,
    offset: i64,
    max_messages: i32,
    sys_flag: i32,
    commit_offset: i64,
    suspend_ms: i64,
    subscription: Option<String>,
    sub_version: i64,
    expression_type: Option<String>,
    max_bytes: Option<i32>,
}

impl PullHeader {
    fn parse(req: &RemotingCommand) -> Result<PullHeader, Refusal> {
        Ok(PullHeader {
            group: req.required("consumerGroup")?.to_string(),
            topic: req.required("topic")?.to_string(),
            queue_id: req.required_parsed("queueId")?,
            offset: req.required_parsed("queueOffset")?,
            max_messages: req.required_parsed("maxMsgNums")?,
            sys_flag: req.required_parsed("sysFlag")?,
            commit_offset: req.optional_parsed("commitOffset")?.unwrap_or(0),
            suspend_ms: req.optional_parsed("suspendTimeoutMillis")?.unwrap_or(0),
            subscription: req.field("subscription").map(str::to_string),
            sub_version: req.optional_parsed("subVersion")?.unwrap_or(0),
            expression_type: req.field("expressionType").map(str::to_string),
            max_bytes: req.optional_parsed("maxMsgBytes")?,
        })
    }
}

/// How a read turned out, in the protocol's terms.
struct Pulled {
    code: i32,
    status: &'static str,
    next_offset: u64,
    min_offset: u64,
    max_offset: u64,
    body: Vec<Bytes>,
}

impl BrokerService {
    pub(crate) async fn pull(&self, req: &RemotingCommand) -> Processed {
        let header = PullHeader::parse(req)?;
        let shared = &self.shared;
        let Some(topic) = shared.topics.get(&header.topic) else {
            return Err(Refusal::new(
                response::TOPIC_NOT_EXIST,
                format!("topic[{}] not exist, apply first please!", header.topic),
            ));
        };
        if !topic.readable() {
            return Err(Refusal::new(
                response::NO_PERMISSION,
                format!("the topic[{}] pulling message is forbidden", header.topic),
            ));
        }
        if header.queue_id < 0 || header.queue_id >= topic.read_queue_nums {
            return Err(Refusal::new(
                response::SYSTEM_ERROR,
                format!(
                    "queueId[{}] is illegal, topic:[{}] topicConfig.readQueueNums:[{}] consumer:[{}]",
                    header.queue_id, header.topic, topic.read_queue_nums, header.group
                ),
            ));
        }
        let subscription = self.subscription_for(&header)?;
        if header.sys_flag & FLAG_COMMIT_OFFSET != 0 && header.commit_offset >= 0 {
            shared.offsets.commit(
                &header.group,
                &header.topic,
                header.queue_id,
                header.commit_offset,
            );
        }
        let mut pulled = self.read(&header, &subscription).await?;
        if pulled.code == response::PULL_NOT_FOUND && header.sys_flag & FLAG_SUSPEND != 0 {
            let hold = if shared.config.long_polling {
                Duration::from_millis(
                    (header.suspend_ms.max(0) as u64).min(shared.config.max_suspend_ms),
                )
            } else {
                Duration::from_millis(shared.config.short_polling_ms)
            };
            if !hold.is_zero() {
                self.shards
                    .wait_for_message(
                        header.topic.as_bytes(),
                        header.queue_id as u32,
                        header.offset.max(0) as u64,
                        hold,
                    )
                    .await?;
                pulled = self.read(&header, &subscription).await?;
            }
        }
        shared.offsets.pulled(
            &header.group,
            &header.topic,
            header.queue_id,
            pulled.next_offset as i64,
        );
        let mut answer = RemotingCommand::response_to(req, pulled.code)
            .with_remark(pulled.status)
            .with_field("suggestWhichBrokerId", 0)
            .with_field("nextBeginOffset", pulled.next_offset)
            .with_field("minOffset", pulled.min_offset)
            .with_field("maxOffset", pulled.max_offset);
        answer.body = pulled.body;
        Ok(answer)
    }

    /// The subscription to filter by: the request's own, or the one the group's heartbeats
    /// registered (what push consumers rely on).
    fn subscription_for(&self, header: &PullHeader) -> Result<SubscriptionData, Refusal> {
        let subscription = if header.sys_flag & FLAG_SUBSCRIPTION != 0 {
            SubscriptionData::from_expression(
                &header.topic,
                header.subscription.as_deref().unwrap_or("*"),
                header.sub_version,
            )
        } else {
            if self.shared.clients.consumer_group(&header.group).is_none() {
                return Err(Refusal::new(
                    response::SUBSCRIPTION_NOT_EXIST,
                    format!(
                        "the consumer's group info not exist, group: {}",
                        header.group
                    ),
                ));
            }
            let Some(registered) = self
                .shared
                .clients
                .subscription(&header.group, &header.topic)
            else {
                return Err(Refusal::new(
                    response::SUBSCRIPTION_NOT_EXIST,
                    format!(
                        "the consumer's subscription not exist, group: {} topic: {}",
                        header.group, header.topic
                    ),
                ));
            };
            if registered.sub_version < header.sub_version {
                return Err(Refusal::new(
                    response::SUBSCRIPTION_NOT_LATEST,
                    "the consumer's subscription not latest",
                ));
            }
            registered
        };
        let expression_type = header
            .expression_type
            .as_deref()
            .unwrap_or(&subscription.expression_type);
        if !(expression_type.is_empty() || expression_type.eq_ignore_ascii_case("TAG"))
            || !subscription.is_tag_type()
        {
            return Err(Refusal::new(
                response::SYSTEM_ERROR,
                "The broker does not support consumer to filter message by SQL92",
            ));
        }
        Ok(subscription)
    }

    async fn read(
        &self,
        header: &PullHeader,
        subscription: &SubscriptionData,
    ) -> Result<Pulled, Refusal> {
        let max_count = (header.max_messages.max(1) as usize).min(PULL_MESSAGES_MAX);
        let max_bytes = header
            .max_bytes
            .filter(|b| *b > 0)
            .map_or(self.shared.config.max_pull_bytes, |b| {
                (b as usize).min(self.shared.config.max_pull_bytes)
            });
        let offset = header.offset.max(0) as u64;
        let outcome = self
            .shards
            .read(
                header.topic.as_bytes(),
                header.queue_id as u32,
                offset,
                max_count,
                max_bytes,
                tag_filter(subscription),
            )
            .await?;
        let pulled = match outcome {
            ReadOutcome::Found {
                messages,
                next_offset,
                min_offset,
                max_offset,
            } => {
                if messages.is_empty() {
                    Pulled {
                        code: response::PULL_RETRY_IMMEDIATELY,
                        status: "NO_MATCHED_MESSAGE",
                        next_offset,
                        min_offset,
                        max_offset,
                        body: Vec::new(),
                    }
                } else {
                    let mut body = Vec::with_capacity(messages.len() * 3);
                    for message in &messages {
                        if let Err(e) = encode_record(
                            &message.record,
                            message.pos,
                            message.queue_offset,
                            self.shared.store_host,
                            &mut body,
                        ) {
                            return Err(Refusal::new(
                                response::SYSTEM_ERROR,
                                format!("a stored message cannot be encoded: {e}"),
                            ));
                        }
                    }
                    Pulled {
                        code: response::SUCCESS,
                        status: "FOUND",
                        next_offset,
                        min_offset,
                        max_offset,
                        body,
                    }
                }
            }
            ReadOutcome::NoNewMessage {
                min_offset,
                max_offset,
            } => Pulled {
                code: response::PULL_NOT_FOUND,
                status: if max_offset == 0 {
                    "NO_MESSAGE_IN_QUEUE"
                } else {
                    "OFFSET_OVERFLOW_ONE"
                },
                next_offset: offset,
                min_offset,
                max_offset,
                body: Vec::new(),
            },
            ReadOutcome::OffsetMoved {
                min_offset,
                max_offset,
            } => Pulled {
                code: response::PULL_OFFSET_MOVED,
                status: "OFFSET_TOO_SMALL",
                next_offset: min_offset,
                min_offset,
                max_offset,
                body: Vec::new(),
            },
            ReadOutcome::OffsetBeyondMax {
                min_offset,
                max_offset,
            } => Pulled {
                code: response::PULL_OFFSET_MOVED,
                status: "OFFSET_OVERFLOW_BADLY",
                next_offset: max_offset,
                min_offset,
                max_offset,
                body: Vec::new(),
            },
            ReadOutcome::NoSuchQueue => Pulled {
                // Never written: an empty queue.
                code: if offset == 0 {
                    response::PULL_NOT_FOUND
                } else {
                    response::PULL_OFFSET_MOVED
                },
                status: "NO_MESSAGE_IN_QUEUE",
                next_offset: 0,
                min_offset: 0,
                max_offset: 0,
                body: Vec::new(),
            },
        };
        Ok(pulled)
    }
}
