//! Lookups: queue offsets (max, min, by timestamp, earliest store time), a message by its id,
//! and messages by key.

use std::time::{SystemTime, UNIX_EPOCH};

use quiver_engine::store::types::{MessagePos, ReadOutcome};

use super::service::{BrokerService, Processed, Refusal};
use super::wire::encode_record;
use crate::remoting::RemotingCommand;
use crate::remoting::codes::response;

/// The extension field a client adds when it queries by unique key (`MixAll.UNIQUE_MSG_QUERY_FLAG`).
const UNIQUE_KEY_QUERY_FIELD: &str = "_UNIQUE_KEY_QUERY";

impl BrokerService {
    fn topic_and_queue<'a>(&self, req: &'a RemotingCommand) -> Result<(&'a str, u32), Refusal> {
        let topic = req.required("topic")?;
        let queue_id: i32 = req.required_parsed("queueId")?;
        let queue_id = u32::try_from(queue_id).map_err(|_| {
            Refusal::new(
                response::SYSTEM_ERROR,
                format!("queueId {queue_id} is negative"),
            )
        })?;
        Ok((topic, queue_id))
    }

    pub(crate) async fn max_offset(&self, req: &RemotingCommand) -> Processed {
        let (topic, queue_id) = self.topic_and_queue(req)?;
        let offsets = self.shards.offsets(topic.as_bytes(), queue_id).await?;
        Ok(RemotingCommand::response_to(req, response::SUCCESS)
            .with_field("offset", offsets.map_or(0, |o| o.max)))
    }

    pub(crate) async fn min_offset(&self, req: &RemotingCommand) -> Processed {
        let (topic, queue_id) = self.topic_and_queue(req)?;
        let offsets = self.shards.offsets(topic.as_bytes(), queue_id).await?;
        Ok(RemotingCommand::response_to(req, response::SUCCESS)
            .with_field("offset", offsets.map_or(0, |o| o.min)))
    }

    /// The first offset stored at or after the timestamp (`LOWER`, the default), or the last
    /// stored at or before it (`UPPER`).
    pub(crate) async fn search_offset(&self, req: &RemotingCommand) -> Processed {
        let (topic, queue_id) = self.topic_and_queue(req)?;
        let timestamp: i64 = req.required_parsed("timestamp")?;
        let timestamp = timestamp.max(0) as u64;
        let upper = req
            .field("boundaryType")
            .is_some_and(|b| b.trim().eq_ignore_ascii_case("UPPER"));
        let topic = topic.as_bytes();
        let offset = if upper {
            let after = self
                .shards
                .offset_for_timestamp(topic, queue_id, timestamp.saturating_add(1))
                .await?;
            let min = self
                .shards
                .offsets(topic, queue_id)
                .await?
                .map_or(0, |o| o.min);
            after.map_or(0, |a| a.saturating_sub(1).max(min))
        } else {
            self.shards
                .offset_for_timestamp(topic, queue_id, timestamp)
                .await?
                .unwrap_or(0)
        };
        Ok(RemotingCommand::response_to(req, response::SUCCESS).with_field("offset", offset))
    }

    pub(crate) async fn earliest_store_time(&self, req: &RemotingCommand) -> Processed {
        let (topic, queue_id) = self.topic_and_queue(req)?;
        let topic = topic.as_bytes();
        let mut timestamp = -1i64;
        if let Some(offsets) = self.shards.offsets(topic, queue_id).await?
            && offsets.max > offsets.min
            && let ReadOutcome::Found { messages, .. } = self
                .shards
                .read(topic, queue_id, offsets.min, 1, 1, None)
                .await?
            && let Some(first) = messages.first()
        {
            timestamp = first.record.header().store_timestamp_ms.get() as i64;
        }
        Ok(RemotingCommand::response_to(req, response::SUCCESS).with_field("timestamp", timestamp))
    }

    /// `VIEW_MESSAGE_BY_ID`: the offset is the store position inside the message id.
    pub(crate) async fn view_message(&self, req: &RemotingCommand) -> Processed {
        let offset: i64 = req.required_parsed("offset")?;
        let not_found = || {
            Refusal::new(
                response::SYSTEM_ERROR,
                format!("can not find message by the offset, {offset}"),
            )
        };
        let pos = MessagePos::from_u64(offset as u64);
        let record = self.shards.read_at(pos).await.map_err(|_| not_found())?;
        let mut body = Vec::with_capacity(3);
        encode_record(
            &record,
            pos,
            record.header().queue_offset.get(),
            self.shared.store_host,
            &mut body,
        )
        .map_err(|_| not_found())?;
        let mut answer = RemotingCommand::response_to(req, response::SUCCESS);
        answer.body = body;
        Ok(answer)
    }

    /// `QUERY_MESSAGE`: messages of a topic with a key (or unique key) stored in a time range,
    /// newest first.
    pub(crate) async fn query_message(&self, req: &RemotingCommand) -> Processed {
        let topic = req.required("topic")?;
        let key = req.required("key")?;
        let mut max_num: i32 = req.required_parsed("maxNum")?;
        let begin: i64 = req.required_parsed("beginTimestamp")?;
        let end: i64 = req.required_parsed("endTimestamp")?;
        if req
            .field(UNIQUE_KEY_QUERY_FIELD)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            max_num = self.shared.config.default_query_max_num as i32;
        }
        let found = self
            .shards
            .store()
            .query_key(
                topic.as_bytes(),
                key.as_bytes(),
                max_num.max(1) as usize,
                begin.max(0) as u64,
                end.max(0) as u64,
            )
            .await?;
        if found.is_empty() {
            return Err(Refusal::new(
                response::QUERY_NOT_FOUND,
                "can not find message, maybe time range not correct",
            ));
        }
        let mut body = Vec::with_capacity(found.len() * 3);
        let mut last_timestamp = 0i64;
        let mut last_pos = 0i64;
        for message in &found {
            encode_record(
                &message.record,
                message.pos,
                message.queue_offset,
                self.shared.store_host,
                &mut body,
            )
            .map_err(|e| Refusal::new(response::SYSTEM_ERROR, e.to_string()))?;
            last_timestamp =
                last_timestamp.max(message.record.header().store_timestamp_ms.get() as i64);
            last_pos = last_pos.max(message.pos.as_u64() as i64);
        }
        if last_timestamp == 0 {
            last_timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
        }
        let mut answer = RemotingCommand::response_to(req, response::SUCCESS)
            .with_field("indexLastUpdateTimestamp", last_timestamp)
            .with_field("indexLastUpdatePhyoffset", last_pos);
        answer.body = body;
        Ok(answer)
    }
}
