//! Consumers: [`PullConsumer`] reads queues at offsets the application chooses;
//! [`PushConsumer`] runs a group member that is given its share of the queues, pulls them with
//! long polling, calls the application's handler and commits what was handled.

pub mod allocate;
mod offset_store;
mod process_queue;
mod pull;
mod push;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use pull::{PullConsumer, PullResult, PullStatus};
pub use push::{ConsumeContext, ConsumeResult, PushConsumer, PushConsumerConfig};

use crate::client::MqError;
use crate::client::instance::{Instance, refused};
use crate::message::{DecodedMessage, decode_messages};
use crate::protocol::bodies::MessageQueue;
use crate::protocol::heartbeat::SubscriptionData;
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{request, response};

/// How a group shares messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MessageModel {
    /// Each message goes to one member: the queues are divided among the members.
    Clustering,
    /// Each message goes to every member.
    Broadcasting,
}

impl MessageModel {
    fn wire_name(self) -> &'static str {
        match self {
            MessageModel::Clustering => "CLUSTERING",
            MessageModel::Broadcasting => "BROADCASTING",
        }
    }
}

/// Where a group starts in a queue it has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConsumeFrom {
    /// New messages only (RocketMQ's default).
    LastOffset,
    /// Everything the broker still has.
    FirstOffset,
    /// Messages stored at or after this time (ms since the epoch).
    Timestamp(i64),
}

impl ConsumeFrom {
    fn wire_name(self) -> &'static str {
        match self {
            ConsumeFrom::LastOffset => "CONSUME_FROM_LAST_OFFSET",
            ConsumeFrom::FirstOffset => "CONSUME_FROM_FIRST_OFFSET",
            ConsumeFrom::Timestamp(_) => "CONSUME_FROM_TIMESTAMP",
        }
    }
}

/// `PullSysFlag` bits.
const FLAG_COMMIT_OFFSET: i32 = 1;
const FLAG_SUSPEND: i32 = 1 << 1;
const FLAG_SUBSCRIPTION: i32 = 1 << 2;

/// Extra time a long-polling pull waits beyond the broker's hold, for the answer to travel.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(5);

/// One pull of a queue.
pub(crate) struct PullRequest<'a> {
    pub group: &'a str,
    pub queue: &'a MessageQueue,
    pub offset: i64,
    pub max_messages: i32,
    pub subscription: &'a SubscriptionData,
    /// Hold the pull at the broker this long if nothing is there yet.
    pub suspend: Option<Duration>,
    /// Commit this offset with the pull.
    pub commit_offset: Option<i64>,
}

/// The `PULL_MESSAGE` request for a pull (the subscription always travels with it, so the
/// broker needs no heartbeat of the group); shared with the admin client's lookups.
pub(crate) fn pull_request(pull: &PullRequest<'_>) -> RemotingCommand {
    let mut sys_flag = FLAG_SUBSCRIPTION;
    if pull.suspend.is_some() {
        sys_flag |= FLAG_SUSPEND;
    }
    if pull.commit_offset.is_some() {
        sys_flag |= FLAG_COMMIT_OFFSET;
    }
    RemotingCommand::request(request::PULL_MESSAGE)
        .with_field("consumerGroup", pull.group)
        .with_field("topic", &pull.queue.topic)
        .with_field("queueId", pull.queue.queue_id)
        .with_field("queueOffset", pull.offset)
        .with_field("maxMsgNums", pull.max_messages)
        .with_field("sysFlag", sys_flag)
        .with_field("commitOffset", pull.commit_offset.unwrap_or(0))
        .with_field(
            "suspendTimeoutMillis",
            pull.suspend.unwrap_or_default().as_millis() as u64,
        )
        .with_field("subscription", &pull.subscription.sub_string)
        .with_field("subVersion", pull.subscription.sub_version)
        .with_field("expressionType", "TAG")
}

/// Pulls messages from a queue; the answer's messages are filtered by tag here as well, since
/// the broker filters by tag hash.
pub(crate) async fn pull_queue(
    instance: &Arc<Instance>,
    pull: PullRequest<'_>,
) -> Result<PullResult, MqError> {
    let addr = instance
        .master_addr(&pull.queue.broker_name)
        .ok_or_else(|| MqError::NoRoute(pull.queue.topic.clone()))?;
    let suspend = pull.suspend.unwrap_or_default();
    let ask = pull_request(&pull);
    let client = instance.connection(&addr).await?;
    let timeout = instance.config.request_timeout + suspend + LONG_POLL_MARGIN;
    let answer = client.invoke(ask, timeout).await?;
    let status = match answer.code {
        response::SUCCESS => PullStatus::Found,
        response::PULL_NOT_FOUND => PullStatus::NoNewMessages,
        response::PULL_RETRY_IMMEDIATELY => PullStatus::NoMatchedMessages,
        response::PULL_OFFSET_MOVED => PullStatus::OffsetIllegal,
        _ => return Err(refused("a pull", &addr, &answer)),
    };
    let field = |name: &'static str| {
        answer
            .optional_parsed::<i64>(name)
            .map_err(|e| MqError::Malformed {
                addr: addr.clone(),
                reason: e.to_string(),
            })
            .map(|v| v.unwrap_or(0))
    };
    let mut messages = Vec::new();
    if status == PullStatus::Found {
        messages = decode_messages(&answer.body_bytes()).map_err(|e| MqError::Malformed {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        if !pull.subscription.matches_all() {
            messages.retain(|m: &DecodedMessage| {
                m.tags()
                    .is_some_and(|t| pull.subscription.tags_set.contains(t))
            });
        }
    }
    Ok(PullResult {
        status,
        next_begin_offset: field("nextBeginOffset")?,
        min_offset: field("minOffset")?,
        max_offset: field("maxOffset")?,
        messages,
    })
}

/// A queue's smallest or next offset (`GET_MIN_OFFSET` / `GET_MAX_OFFSET`), or the offset of
/// the first message stored at or after a time (`SEARCH_OFFSET_BY_TIMESTAMP`).
pub(crate) async fn queue_offset(
    instance: &Arc<Instance>,
    queue: &MessageQueue,
    code: i32,
    timestamp: Option<i64>,
) -> Result<i64, MqError> {
    let addr = instance
        .master_addr(&queue.broker_name)
        .ok_or_else(|| MqError::NoRoute(queue.topic.clone()))?;
    let mut ask = RemotingCommand::request(code)
        .with_field("topic", &queue.topic)
        .with_field("queueId", queue.queue_id);
    if let Some(timestamp) = timestamp {
        ask = ask.with_field("timestamp", timestamp);
    }
    let answer = instance.invoke_ok(&addr, "an offset lookup", ask).await?;
    answer
        .optional_parsed::<i64>("offset")
        .ok()
        .flatten()
        .ok_or_else(|| MqError::Malformed {
            addr,
            reason: "no offset in the answer".into(),
        })
}
