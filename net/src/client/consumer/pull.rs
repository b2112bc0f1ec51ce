//! The pull consumer: the application names the queue and the offset, and keeps (or commits)
//! its own progress. For batch jobs, replays and tools.
//!
//! ```no_run
//! use quiver_net::client::{ClientConfig, MqError};
//! use quiver_net::client::consumer::{PullConsumer, PullStatus};
//!
//! # async fn demo() -> Result<(), MqError> {
//! let consumer = PullConsumer::start("audit", ClientConfig::new("127.0.0.1:9876"))?;
//! for queue in consumer.queues("orders").await? {
//!     let mut offset = consumer.committed_offset(&queue).await?.unwrap_or(0);
//!     loop {
//!         let got = consumer.pull(&queue, offset, 32, "*").await?;
//!         if got.status != PullStatus::Found { break; }
//!         for message in &got.messages { println!("{}", String::from_utf8_lossy(&message.body)); }
//!         offset = got.next_begin_offset;
//!     }
//!     consumer.commit_offset(&queue, offset).await?;
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::offset_store::OffsetStore;
use super::{PullRequest, pull_queue, queue_offset};
use crate::client::instance::{Instance, subscribe_queues};
use crate::client::{ClientConfig, MqError};
use crate::message::DecodedMessage;
use crate::protocol::bodies::MessageQueue;
use crate::protocol::heartbeat::SubscriptionData;
use crate::remoting::codes::request;

/// What a pull found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PullStatus {
    /// Messages (after tag filtering, possibly none of them).
    Found,
    /// Nothing at or after the offset yet.
    NoNewMessages,
    /// Messages, but none matching the subscription.
    NoMatchedMessages,
    /// The offset is outside the queue; `next_begin_offset` says where to go.
    OffsetIllegal,
}

/// The answer to a pull.
#[derive(Debug, Clone)]
pub struct PullResult {
    /// What was found.
    pub status: PullStatus,
    /// Where the next pull starts.
    pub next_begin_offset: i64,
    /// The queue's smallest offset.
    pub min_offset: i64,
    /// The queue's next offset (one past its last message).
    pub max_offset: i64,
    /// The messages.
    pub messages: Vec<DecodedMessage>,
}

/// A consumer that reads queues at explicit offsets.
pub struct PullConsumer {
    group: String,
    instance: Arc<Instance>,
    offsets: OffsetStore,
}

impl PullConsumer {
    /// A pull consumer of `group` (the group its committed offsets belong to).
    pub fn start(group: &str, client: ClientConfig) -> Result<PullConsumer, MqError> {
        let instance = Instance::start(client)?;
        Ok(PullConsumer {
            group: group.to_string(),
            offsets: OffsetStore::remote(group, Arc::clone(&instance)),
            instance,
        })
    }

    /// The topic's readable queues, sorted.
    pub async fn queues(&self, topic: &str) -> Result<Vec<MessageQueue>, MqError> {
        let route = self.instance.refresh_route(topic).await?;
        Ok(subscribe_queues(topic, &route))
    }

    async fn ensure_route(&self, queue: &MessageQueue) -> Result<(), MqError> {
        if self.instance.master_addr(&queue.broker_name).is_none() {
            self.instance.refresh_route(&queue.topic).await?;
        }
        Ok(())
    }

    /// Up to `max_messages` messages from `offset` on, those whose tag `expression` takes
    /// (`*`, or tags joined by `||`). Answers at once, even when there is nothing.
    pub async fn pull(
        &self,
        queue: &MessageQueue,
        offset: i64,
        max_messages: i32,
        expression: &str,
    ) -> Result<PullResult, MqError> {
        self.pull_inner(queue, offset, max_messages, expression, None)
            .await
    }

    /// As [`PullConsumer::pull`], but when there is nothing yet the broker holds the pull
    /// until a message arrives or `wait` passes.
    pub async fn pull_blocking(
        &self,
        queue: &MessageQueue,
        offset: i64,
        max_messages: i32,
        expression: &str,
        wait: Duration,
    ) -> Result<PullResult, MqError> {
        self.pull_inner(queue, offset, max_messages, expression, Some(wait))
            .await
    }

    async fn pull_inner(
        &self,
        queue: &MessageQueue,
        offset: i64,
        max_messages: i32,
        expression: &str,
        suspend: Option<Duration>,
    ) -> Result<PullResult, MqError> {
        self.ensure_route(queue).await?;
        let subscription = SubscriptionData::from_expression(&queue.topic, expression, 0);
        pull_queue(
            &self.instance,
            PullRequest {
                group: &self.group,
                queue,
                offset,
                max_messages,
                subscription: &subscription,
                suspend,
                commit_offset: None,
            },
        )
        .await
    }

    /// The group's committed offset in the queue; `None` if it never committed one.
    pub async fn committed_offset(&self, queue: &MessageQueue) -> Result<Option<i64>, MqError> {
        self.ensure_route(queue).await?;
        self.offsets.read(queue).await
    }

    /// Commits the group's offset in the queue (the next message it will want).
    pub async fn commit_offset(&self, queue: &MessageQueue, offset: i64) -> Result<(), MqError> {
        self.ensure_route(queue).await?;
        self.offsets.update(queue, offset, false);
        self.offsets.persist(std::slice::from_ref(queue)).await
    }

    /// The queue's smallest offset still stored.
    pub async fn min_offset(&self, queue: &MessageQueue) -> Result<i64, MqError> {
        self.ensure_route(queue).await?;
        queue_offset(&self.instance, queue, request::GET_MIN_OFFSET, None).await
    }

    /// The queue's next offset (one past its last message).
    pub async fn max_offset(&self, queue: &MessageQueue) -> Result<i64, MqError> {
        self.ensure_route(queue).await?;
        queue_offset(&self.instance, queue, request::GET_MAX_OFFSET, None).await
    }

    /// The offset of the first message stored at or after `timestamp_ms`.
    pub async fn offset_at(&self, queue: &MessageQueue, timestamp_ms: i64) -> Result<i64, MqError> {
        self.ensure_route(queue).await?;
        queue_offset(
            &self.instance,
            queue,
            request::SEARCH_OFFSET_BY_TIMESTAMP,
            Some(timestamp_ms),
        )
        .await
    }

    /// Stops its background work.
    pub fn shutdown(&self) {
        self.instance.shutdown();
    }
}
