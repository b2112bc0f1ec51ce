//! Consumer groups: progress (offsets and lag per queue) and offset resets.

use super::bodies::decode_consume_stats;
use super::topics::RouteBroker;
use super::{
    Admin, AdminError, BrokerRef, BrokerSelector, GroupProgress, OffsetReset, QueueProgress,
    QueueReset, ResetTarget, answer_field,
};
use crate::protocol::bodies::ConsumerIdList;
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{request, response};

impl Admin {
    /// A group's progress on every queue of its topics (or of one topic): the queue's end, the
    /// group's committed offset and the lag between them (`GET_CONSUME_STATS`, as
    /// `mqadmin consumerProgress`).
    pub async fn group_progress(
        &self,
        group: &str,
        topic: Option<&str>,
    ) -> Result<GroupProgress, AdminError> {
        const WHAT: &str = "the consumption statistics";
        let brokers: Vec<BrokerRef> = match topic {
            Some(topic) => self
                .route_brokers(topic)
                .await?
                .into_iter()
                .map(|r| r.broker)
                .collect(),
            None => self.brokers(&BrokerSelector::All).await?,
        };
        let mut queues = Vec::new();
        let mut consume_tps = 0.0;
        for broker in brokers {
            let mut ask = RemotingCommand::request(request::GET_CONSUME_STATS)
                .with_field("consumerGroup", group);
            if let Some(topic) = topic {
                ask = ask.with_field("topic", topic);
            }
            let answer = self.ask_broker_ok(&broker.addr, WHAT, ask).await?;
            let stats =
                decode_consume_stats(&answer.body_bytes()).map_err(|e| AdminError::BadAnswer {
                    server: broker.addr.clone(),
                    what: WHAT,
                    reason: e.reason,
                })?;
            consume_tps += stats.consume_tps;
            queues.extend(stats.offsets.into_iter().map(|(queue, o)| QueueProgress {
                topic: queue.topic,
                broker_name: queue.broker_name,
                queue_id: queue.queue_id,
                broker_offset: o.broker_offset,
                consumer_offset: o.consumer_offset,
                lag: (o.broker_offset - o.consumer_offset).max(0),
                last_timestamp: o.last_timestamp,
            }));
        }
        if queues.is_empty() {
            return Err(AdminError::NotFound(match topic {
                Some(topic) => format!("consumer group {group} has no queues of topic {topic}"),
                None => format!("consumer group {group} has committed no offset on any broker"),
            }));
        }
        queues.sort_by(|a, b| {
            (&a.topic, &a.broker_name, a.queue_id).cmp(&(&b.topic, &b.broker_name, b.queue_id))
        });
        Ok(GroupProgress {
            group: group.to_string(),
            topic: topic.map(str::to_string),
            consume_tps,
            total_lag: queues.iter().map(|q| q.lag).sum(),
            queues,
        })
    }

    /// Client ids of a group's live consumers on the brokers of a topic
    /// (`GET_CONSUMER_LIST_BY_GROUP`), sorted, without repeats.
    pub async fn online_consumers(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<String>, AdminError> {
        let mut clients = Vec::new();
        for RouteBroker { broker, .. } in self.route_brokers(topic).await? {
            let ask = RemotingCommand::request(request::GET_CONSUMER_LIST_BY_GROUP)
                .with_field("consumerGroup", group);
            let answer = self.ask_broker(&broker.addr, ask).await?;
            // Brokers answer an error when the group has no live member.
            if answer.code != response::SUCCESS {
                continue;
            }
            let list: ConsumerIdList = super::decode(&broker.addr, "the consumer list", &answer)?;
            clients.extend(list.consumer_id_list);
        }
        clients.sort();
        clients.dedup();
        Ok(clients)
    }

    /// Moves a group's committed offset on every queue of a topic: each queue's offset for
    /// `target` (`SEARCH_OFFSET_BY_TIMESTAMP`, `GET_MIN_OFFSET` or `GET_MAX_OFFSET`) is
    /// committed with `UPDATE_CONSUMER_OFFSET`.
    ///
    /// Running consumers keep their own position in memory and commit it again, undoing the
    /// reset, so the group's consumers must be stopped first and will start from the new
    /// offsets. Unless `force`, the reset is refused with [`AdminError::ConsumersOnline`] while
    /// any member is connected.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        target: ResetTarget,
        force: bool,
    ) -> Result<OffsetReset, AdminError> {
        if !force {
            let clients = self.online_consumers(group, topic).await?;
            if !clients.is_empty() {
                return Err(AdminError::ConsumersOnline {
                    group: group.to_string(),
                    clients,
                });
            }
        }
        let mut queues = Vec::new();
        for RouteBroker { broker, queues: q } in self.route_brokers(topic).await? {
            for queue_id in 0..q.read_queue_nums {
                let previous = self
                    .committed_offset(&broker.addr, group, topic, queue_id)
                    .await?;
                let new_offset = self
                    .offset_for(&broker.addr, topic, queue_id, target)
                    .await?;
                let commit = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
                    .with_field("consumerGroup", group)
                    .with_field("topic", topic)
                    .with_field("queueId", queue_id)
                    .with_field("commitOffset", new_offset);
                self.ask_broker_ok(&broker.addr, "the offset commit", commit)
                    .await?;
                queues.push(QueueReset {
                    broker_name: broker.broker_name.clone(),
                    queue_id,
                    previous_offset: previous,
                    new_offset,
                });
            }
        }
        Ok(OffsetReset {
            group: group.to_string(),
            topic: topic.to_string(),
            target,
            queues,
        })
    }

    /// A group's committed offset on a queue, if it has one.
    async fn committed_offset(
        &self,
        addr: &str,
        group: &str,
        topic: &str,
        queue_id: i32,
    ) -> Result<Option<i64>, AdminError> {
        let ask = RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
            .with_field("consumerGroup", group)
            .with_field("topic", topic)
            .with_field("queueId", queue_id)
            .with_field("setZeroIfNotFound", false);
        let answer = self.ask_broker(addr, ask).await?;
        if answer.code != response::SUCCESS {
            return Ok(None);
        }
        answer_field(addr, "the committed offset", &answer, "offset").map(Some)
    }

    /// The offset of a queue a reset target names.
    async fn offset_for(
        &self,
        addr: &str,
        topic: &str,
        queue_id: i32,
        target: ResetTarget,
    ) -> Result<i64, AdminError> {
        let (code, what) = match target {
            ResetTarget::Earliest => (request::GET_MIN_OFFSET, "the queue's lowest offset"),
            ResetTarget::Latest => (request::GET_MAX_OFFSET, "the queue's end offset"),
            ResetTarget::Timestamp(_) => (request::SEARCH_OFFSET_BY_TIMESTAMP, "the offset search"),
        };
        let mut ask = RemotingCommand::request(code)
            .with_field("topic", topic)
            .with_field("queueId", queue_id);
        if let ResetTarget::Timestamp(ms) = target {
            ask = ask.with_field("timestamp", ms);
        }
        let answer = self.ask_broker_ok(addr, what, ask).await?;
        answer_field(addr, what, &answer, "offset")
    }
}
