//! Client and consumer-group commands: heartbeats, unregistration, member lists, committed
//! offsets, and queue locks for orderly consumers.

use std::time::Instant;

use super::clients::notify;
use super::service::{BrokerService, Processed, Refusal};
use crate::protocol::bodies::{ConsumerIdList, LockBatchRequestBody, LockBatchResponseBody};
use crate::protocol::heartbeat::HeartbeatData;
use crate::protocol::route::RETRY_GROUP_TOPIC_PREFIX;
use crate::protocol::{decode_json, encode_json};
use crate::remoting::RemotingCommand;
use crate::remoting::codes::response;
use crate::server::Connection;

impl BrokerService {
    pub(crate) fn heartbeat(&self, connection: &Connection, req: &RemotingCommand) -> Processed {
        let heartbeat: HeartbeatData = decode_json("HeartbeatData", &req.body_bytes())
            .map_err(|e| Refusal::new(response::SYSTEM_ERROR, e.to_string()))?;
        let mut created = Vec::new();
        for consumer in &heartbeat.consumer_data_set {
            if consumer.group_name.is_empty() {
                continue;
            }
            // Every group gets its retry topic, as RocketMQ's heartbeat handler does.
            let retry = format!("{RETRY_GROUP_TOPIC_PREFIX}{}", consumer.group_name);
            match self.shared.topics.ensure_retry_topic(&retry) {
                Ok((config, true)) => created.push(config),
                Ok((_, false)) => {}
                Err(e) => {
                    tracing::error!(topic = %retry, error = %e, "cannot create a retry topic")
                }
            }
        }
        for config in created {
            self.shared.register_topic_soon(config);
        }
        notify(self.shared.clients.heartbeat(
            connection,
            req.language,
            req.version,
            &heartbeat,
            Instant::now(),
        ));
        Ok(RemotingCommand::response_to(req, response::SUCCESS))
    }

    pub(crate) fn unregister_client(
        &self,
        connection: &Connection,
        req: &RemotingCommand,
    ) -> Processed {
        let _client_id = req.required("clientID")?;
        let producer = req.field("producerGroup").filter(|g| !g.is_empty());
        let consumer = req.field("consumerGroup").filter(|g| !g.is_empty());
        notify(
            self.shared
                .clients
                .unregister(connection, producer, consumer),
        );
        Ok(RemotingCommand::response_to(req, response::SUCCESS))
    }

    pub(crate) fn consumer_list(&self, req: &RemotingCommand) -> Processed {
        let group = req.required("consumerGroup")?;
        let ids = self.shared.clients.consumer_ids(group);
        if ids.is_empty() {
            return Err(Refusal::new(
                response::SYSTEM_ERROR,
                format!("no consumer for this group, {group}"),
            ));
        }
        Ok(
            RemotingCommand::response_to(req, response::SUCCESS).with_body(encode_json(
                &ConsumerIdList {
                    consumer_id_list: ids,
                },
            )),
        )
    }

    pub(crate) async fn query_consumer_offset(&self, req: &RemotingCommand) -> Processed {
        let group = req.required("consumerGroup")?;
        let topic = req.required("topic")?;
        let queue_id: i32 = req.required_parsed("queueId")?;
        if let Some(offset) = self.shared.offsets.committed(group, topic, queue_id)
            && offset >= 0
        {
            return Ok(
                RemotingCommand::response_to(req, response::SUCCESS).with_field("offset", offset)
            );
        }
        let zero_if_not_found: Option<bool> = req.optional_parsed("setZeroIfNotFound")?;
        if zero_if_not_found != Some(false) {
            // A queue that still holds its first message: a new group starts from it (RocketMQ
            // answers 0 while offset 0 is still in memory).
            let offsets = if queue_id >= 0 {
                self.shards
                    .offsets(topic.as_bytes(), queue_id as u32)
                    .await?
            } else {
                None
            };
            if offsets.is_none_or(|o| o.min == 0) {
                return Ok(
                    RemotingCommand::response_to(req, response::SUCCESS).with_field("offset", 0)
                );
            }
        }
        Err(Refusal::new(
            response::QUERY_NOT_FOUND,
            "Not found, maybe this group consumer boot first",
        ))
    }

    pub(crate) fn update_consumer_offset(&self, req: &RemotingCommand) -> Processed {
        let group = req.required("consumerGroup")?;
        let topic = req.required("topic")?;
        let queue_id: i32 = req.required_parsed("queueId")?;
        let offset: i64 = req.required_parsed("commitOffset")?;
        if offset < 0 {
            return Err(Refusal::new(
                response::SYSTEM_ERROR,
                format!("commitOffset {offset} is negative"),
            ));
        }
        self.shared.offsets.commit(group, topic, queue_id, offset);
        Ok(RemotingCommand::response_to(req, response::SUCCESS))
    }

    pub(crate) fn lock_batch(&self, req: &RemotingCommand) -> Processed {
        let body: LockBatchRequestBody = decode_json("LockBatchRequestBody", &req.body_bytes())
            .map_err(|e| Refusal::new(response::SYSTEM_ERROR, e.to_string()))?;
        let locked = self.shared.locks.lock_batch(
            &body.consumer_group,
            &body.client_id,
            &body.mq_set,
            Instant::now(),
        );
        Ok(
            RemotingCommand::response_to(req, response::SUCCESS).with_body(encode_json(
                &LockBatchResponseBody {
                    lock_ok_mq_set: locked,
                },
            )),
        )
    }

    pub(crate) fn unlock_batch(&self, req: &RemotingCommand) -> Processed {
        let body: LockBatchRequestBody =
            decode_json("UnlockBatchRequestBody", &req.body_bytes())
                .map_err(|e| Refusal::new(response::SYSTEM_ERROR, e.to_string()))?;
        self.shared
            .locks
            .unlock_batch(&body.consumer_group, &body.client_id, &body.mq_set);
        Ok(RemotingCommand::response_to(req, response::SUCCESS))
    }
}
