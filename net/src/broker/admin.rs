//! Admin commands: create, update and delete topics; dump topics and offsets; consumption
//! statistics of a group.

use std::collections::BTreeMap;

use quiver_engine::store::types::ReadOutcome;

use super::service::{BrokerService, Processed, Refusal};
use crate::protocol::bodies::{MessageQueue, OffsetWrapper, encode_consume_stats};
use crate::protocol::encode_json;
use crate::protocol::route::{
    AUTO_CREATE_TOPIC_KEY, PERM_INHERIT, PERM_READ, PERM_WRITE, TopicConfig, topic_name_error,
};
use crate::remoting::RemotingCommand;
use crate::remoting::codes::response;

/// Most queues a topic may have.
pub const TOPIC_QUEUES_MAX: i32 = 1024;

impl BrokerService {
    /// `UPDATE_AND_CREATE_TOPIC`: answered once the name servers have the new route, so a
    /// client may use the topic at once.
    pub(crate) async fn create_topic(&self, req: &RemotingCommand) -> Processed {
        let topic = req.required("topic")?;
        if let Some(reason) = topic_name_error(topic) {
            return Err(Refusal::new(response::SYSTEM_ERROR, reason));
        }
        if topic == AUTO_CREATE_TOPIC_KEY {
            return Err(Refusal::new(
                response::SYSTEM_ERROR,
                format!("The topic[{topic}] is conflict with system topic."),
            ));
        }
        let read_queue_nums: i32 = req.required_parsed("readQueueNums")?;
        let write_queue_nums: i32 = req.required_parsed("writeQueueNums")?;
        for (field, value) in [
            ("readQueueNums", read_queue_nums),
            ("writeQueueNums", write_queue_nums),
        ] {
            if !(1..=TOPIC_QUEUES_MAX).contains(&value) {
                return Err(Refusal::new(
                    response::SYSTEM_ERROR,
                    format!("{field} {value} is not between 1 and {TOPIC_QUEUES_MAX}"),
                ));
            }
        }
        let perm: i32 = req.required_parsed("perm")?;
        if perm & !(PERM_READ | PERM_WRITE | PERM_INHERIT) != 0 {
            return Err(Refusal::new(
                response::SYSTEM_ERROR,
                format!("perm {perm} has unknown bits"),
            ));
        }
        let filter_type = req.field("topicFilterType").unwrap_or("SINGLE_TAG");
        if filter_type != "SINGLE_TAG" && filter_type != "MULTI_TAG" {
            return Err(Refusal::new(
                response::SYSTEM_ERROR,
                format!("topicFilterType {filter_type:?} is neither SINGLE_TAG nor MULTI_TAG"),
            ));
        }
        let config = TopicConfig {
            topic_name: topic.to_string(),
            read_queue_nums,
            write_queue_nums,
            perm,
            topic_filter_type: filter_type.to_string(),
            topic_sys_flag: req.optional_parsed("topicSysFlag")?.unwrap_or(0),
            order: req.optional_parsed("order")?.unwrap_or(false),
            ..TopicConfig::default()
        };
        let upserted = self
            .shared
            .topics
            .upsert(config)
            .map_err(|e| Refusal::new(response::SYSTEM_ERROR, e.to_string()))?;
        tracing::info!(%topic, ?upserted, "topic created or updated");
        self.shared.register_now().await;
        Ok(RemotingCommand::response_to(req, response::SUCCESS))
    }

    /// `DELETE_TOPIC_IN_BROKER`: the topic, its queues and every group's offsets of it.
    pub(crate) async fn delete_topic(&self, req: &RemotingCommand) -> Processed {
        let topic = req.required("topic")?;
        if topic == AUTO_CREATE_TOPIC_KEY {
            return Err(Refusal::new(
                response::SYSTEM_ERROR,
                format!("The topic[{topic}] is conflict with system topic."),
            ));
        }
        let existed = self
            .shared
            .topics
            .delete(topic)
            .map_err(|e| Refusal::new(response::SYSTEM_ERROR, e.to_string()))?;
        self.shared.offsets.remove_topic(topic);
        let queues = self.shards.store().delete_topic(topic.as_bytes()).await?;
        tracing::info!(%topic, existed, queues, "topic deleted");
        self.shared.register_soon();
        Ok(RemotingCommand::response_to(req, response::SUCCESS))
    }

    pub(crate) fn all_topic_config(&self, req: &RemotingCommand) -> Processed {
        Ok(RemotingCommand::response_to(req, response::SUCCESS)
            .with_body(encode_json(&self.shared.topics.snapshot())))
    }

    pub(crate) fn all_consumer_offsets(&self, req: &RemotingCommand) -> Processed {
        let snapshot = self.shared.offsets.snapshot();
        if snapshot.offset_table.is_empty() {
            return Err(Refusal::new(
                response::SYSTEM_ERROR,
                "No consumer offset in this broker",
            ));
        }
        Ok(RemotingCommand::response_to(req, response::SUCCESS).with_body(encode_json(&snapshot)))
    }

    /// `GET_CONSUME_STATS`: for each queue of the group's topics, the queue's end, the group's
    /// committed and pulled offsets, and when its last consumed message was stored.
    pub(crate) async fn consume_stats(&self, req: &RemotingCommand) -> Processed {
        let group = req.required("consumerGroup")?;
        let topics = match req.field("topic").filter(|t| !t.trim().is_empty()) {
            Some(topic) => vec![topic.to_string()],
            None => self.shared.offsets.topics_of_group(group),
        };
        let mut table = BTreeMap::new();
        for topic in topics {
            let Some(config) = self.shared.topics.get(&topic) else {
                continue;
            };
            for queue_id in 0..config.read_queue_nums {
                let q = queue_id as u32;
                let offsets = self.shards.offsets(topic.as_bytes(), q).await?;
                let broker_offset = offsets.map_or(0, |o| o.max) as i64;
                let consumer_offset = self
                    .shared
                    .offsets
                    .committed(group, &topic, queue_id)
                    .unwrap_or(0)
                    .max(0);
                let pull_offset = self
                    .shared
                    .offsets
                    .pulled_to(group, &topic, queue_id)
                    .unwrap_or(0)
                    .max(consumer_offset);
                let mut last_timestamp = 0;
                if consumer_offset > 0
                    && let ReadOutcome::Found { messages, .. } = self
                        .shards
                        .read(topic.as_bytes(), q, consumer_offset as u64 - 1, 1, 1, None)
                        .await?
                    && let Some(last) = messages.first()
                {
                    last_timestamp = last.record.header().store_timestamp_ms.get() as i64;
                }
                table.insert(
                    MessageQueue {
                        broker_name: self.shared.config.broker_name.clone(),
                        queue_id,
                        topic: topic.clone(),
                    },
                    OffsetWrapper {
                        broker_offset,
                        consumer_offset,
                        last_timestamp,
                        pull_offset,
                    },
                );
            }
        }
        Ok(RemotingCommand::response_to(req, response::SUCCESS)
            .with_body(encode_consume_stats(&table, 0.0)))
    }
}
