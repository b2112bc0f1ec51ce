//! Admin commands: create, update and delete topics; dump topics and offsets; consumption
//! statistics of a group; a topic's queue statistics; the broker's runtime figures.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quiver_engine::FlushMode;
use quiver_engine::store::types::ReadOutcome;

use super::service::{BrokerService, Processed, Refusal};
use crate::admin::bodies::{KvTable, TopicOffset, encode_topic_stats};
use crate::protocol::bodies::{MessageQueue, OffsetWrapper, encode_consume_stats};
use crate::protocol::encode_json;
use crate::protocol::route::{
    AUTO_CREATE_TOPIC_KEY, PERM_INHERIT, PERM_READ, PERM_WRITE, TopicConfig, topic_name_error,
};
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{QUIVER_PROTOCOL_VERSION, response};

/// Most queues a topic may have.
pub const TOPIC_QUEUES_MAX: i32 = 1024;

/// The name of [`QUIVER_PROTOCOL_VERSION`] (`MQVersion.Version`), as admin tools show it.
const PROTOCOL_VERSION_DESC: &str = "V4_9_4";

fn epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An uptime as RocketMQ's `StoreStatsService` writes it.
fn runtime_text(up: Duration) -> String {
    let s = up.as_secs();
    format!(
        "[ {} days, {} hours, {} minutes, {} seconds ]",
        s / 86_400,
        s / 3_600 % 24,
        s / 60 % 60,
        s % 60
    )
}

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
            .upsert(config.clone())
            .map_err(|e| Refusal::new(response::SYSTEM_ERROR, e.to_string()))?;
        tracing::info!(%topic, ?upserted, "topic created or updated");
        self.shared.register_topic_now(config).await;
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
        // Sends to the topic wait until its queues and offsets are gone too: one that re-created
        // it meanwhile would have its acknowledged messages deleted with the old ones.
        let (existed, _deleting) = self
            .shared
            .topics
            .begin_delete(topic)
            .await
            .map_err(|e| Refusal::new(response::SYSTEM_ERROR, e.to_string()))?;
        self.shared.offsets.remove_topic(topic);
        let queues = self.shards.store().delete_topic(topic.as_bytes()).await?;
        // Commits of the old life that landed while its queues were deleted.
        self.shared.offsets.remove_topic(topic);
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

impl BrokerService {
    /// `GET_TOPIC_STATS_INFO`: for each queue of a topic, its lowest and next offset and when
    /// its newest message was stored (what `mqadmin topicStatus` shows).
    pub(crate) async fn topic_stats(&self, req: &RemotingCommand) -> Processed {
        let topic = req.required("topic")?;
        let Some(config) = self.shared.topics.get(topic) else {
            return Err(Refusal::new(
                response::TOPIC_NOT_EXIST,
                format!("topic[{topic}] not exist"),
            ));
        };
        let mut table = BTreeMap::new();
        for queue_id in 0..config.queue_count() {
            let q = queue_id as u32;
            let (min, max) = self
                .shards
                .offsets(topic.as_bytes(), q)
                .await?
                .map_or((0, 0), |o| (o.min, o.max));
            let mut last_update_timestamp = 0;
            if max > min
                && let ReadOutcome::Found { messages, .. } = self
                    .shards
                    .read(topic.as_bytes(), q, max - 1, 1, 1, None)
                    .await?
                && let Some(last) = messages.first()
            {
                last_update_timestamp = last.record.header().store_timestamp_ms.get() as i64;
            }
            table.insert(
                MessageQueue {
                    broker_name: self.shared.config.broker_name.clone(),
                    queue_id,
                    topic: topic.to_string(),
                },
                TopicOffset {
                    min_offset: min as i64,
                    max_offset: max as i64,
                    last_update_timestamp,
                },
            );
        }
        Ok(RemotingCommand::response_to(req, response::SUCCESS)
            .with_body(encode_topic_stats(&table)))
    }

    /// `GET_BROKER_RUNTIME_INFO`: what this broker knows of itself, as RocketMQ's `KVTable`.
    /// RocketMQ's key names where the figure is the same; Quiver's own names for what only it
    /// has. Rates RocketMQ reports (put and get TPS, daily totals) are left out: the broker
    /// does not count them.
    pub(crate) async fn runtime_info(&self, req: &RemotingCommand) -> Processed {
        let shared = &self.shared;
        let config = &shared.config;
        let mut table = BTreeMap::new();
        let mut put = |key: &str, value: String| {
            table.insert(key.to_string(), value);
        };
        put("brokerVersionDesc", PROTOCOL_VERSION_DESC.into());
        put("brokerVersion", QUIVER_PROTOCOL_VERSION.to_string());
        put("quiverVersion", env!("CARGO_PKG_VERSION").into());
        put("brokerName", config.broker_name.clone());
        put("clusterName", config.cluster_name.clone());
        put("brokerId", config.broker_id.to_string());
        put("brokerAddr", shared.broker_addr.clone());
        put("bootTimestamp", epoch_ms(self.booted).to_string());
        let up = SystemTime::now()
            .duration_since(self.booted)
            .unwrap_or_default();
        put("runtime", runtime_text(up));
        put(
            "flushDiskType",
            match config.store.log.flush {
                FlushMode::Sync => "SYNC_FLUSH",
                FlushMode::Async => "ASYNC_FLUSH",
            }
            .into(),
        );
        let store = self.shards.store();
        put("storeShards", store.shard_count().to_string());
        put(
            "topicCount",
            shared
                .topics
                .snapshot()
                .topic_config_table
                .len()
                .to_string(),
        );
        let groups: BTreeSet<String> = shared
            .offsets
            .snapshot()
            .offset_table
            .keys()
            .filter_map(|k| k.split_once('@').map(|(_, group)| group.to_string()))
            .collect();
        put("consumerOffsetGroups", groups.len().to_string());
        let queues = store.queues();
        put("queueCount", queues.len().to_string());
        let (mut held, mut written, mut earliest) = (0u64, 0u64, None::<u64>);
        for queue in &queues {
            let Some(offsets) = self.shards.offsets(&queue.topic, queue.queue_id).await? else {
                continue;
            };
            written += offsets.max;
            held += offsets.max.saturating_sub(offsets.min);
            if offsets.max > offsets.min
                && let ReadOutcome::Found { messages, .. } = self
                    .shards
                    .read(&queue.topic, queue.queue_id, offsets.min, 1, 1, None)
                    .await?
                && let Some(first) = messages.first()
            {
                let stored = first.record.header().store_timestamp_ms.get();
                earliest = Some(earliest.map_or(stored, |e: u64| e.min(stored)));
            }
        }
        put("storeMessagesHeld", held.to_string());
        put("storeMessagesWritten", written.to_string());
        if let Some(earliest) = earliest {
            put("earliestMessageTimeStamp", earliest.to_string());
        }
        Ok(RemotingCommand::response_to(req, response::SUCCESS)
            .with_body(encode_json(&KvTable { table })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_as_rocketmq_writes_it_and_the_version_name_matches() {
        assert_eq!(
            runtime_text(Duration::from_secs(2 * 86_400 + 3 * 3_600 + 4 * 60 + 5)),
            "[ 2 days, 3 hours, 4 minutes, 5 seconds ]"
        );
        // MQVersion.Version.V4_9_4.ordinal()
        assert_eq!(QUIVER_PROTOCOL_VERSION, 401);
        assert_eq!(PROTOCOL_VERSION_DESC, "V4_9_4");
    }
}
