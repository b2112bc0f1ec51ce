//! Bodies of the consumer and admin commands.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::route::DataVersion;

/// A queue of a topic on a broker (`MessageQueue`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageQueue {
    /// The broker.
    pub broker_name: String,
    /// The queue id.
    pub queue_id: i32,
    /// The topic.
    pub topic: String,
}

/// The body of `LOCK_BATCH_MQ` and `UNLOCK_BATCH_MQ`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LockBatchRequestBody {
    /// The client asking.
    pub client_id: String,
    /// Its consumer group.
    pub consumer_group: String,
    /// The queues.
    pub mq_set: BTreeSet<MessageQueue>,
    /// RocketMQ 5: lock on this broker only (no replica quorum).
    pub only_this_broker: bool,
}

/// The answer to `LOCK_BATCH_MQ`: the queues the client now holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LockBatchResponseBody {
    /// The queues locked for the client.
    #[serde(rename = "lockOKMQSet", default)]
    pub lock_ok_mq_set: BTreeSet<MessageQueue>,
}

/// The answer to `GET_CONSUMER_LIST_BY_GROUP`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerIdList {
    /// Client ids of the group's live members.
    pub consumer_id_list: Vec<String>,
}

/// Committed consumer offsets (`ConsumerOffsetSerializeWrapper`; also the broker's offsets file).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerOffsetWrapper {
    /// Version of the table.
    pub data_version: DataVersion,
    /// Offsets by `topic@group`, then by queue id (keys written quoted).
    pub offset_table: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// One queue's consumption in `GET_CONSUME_STATS` (`OffsetWrapper`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OffsetWrapper {
    /// The queue's max offset.
    pub broker_offset: i64,
    /// The group's committed offset.
    pub consumer_offset: i64,
    /// Store time of the last consumed message, ms; 0 if none.
    pub last_timestamp: i64,
    /// Where the group has pulled up to.
    pub pull_offset: i64,
}

/// Encodes `ConsumeStats` as fastjson writes it, which Java admin tools parse: the map keys are
/// `MessageQueue` objects written inline (`{{"brokerName":…}:{…}}`). Not JSON, but what the
/// RocketMQ dashboard and `mqadmin` expect.
pub fn encode_consume_stats(offsets: &BTreeMap<MessageQueue, OffsetWrapper>, tps: f64) -> Vec<u8> {
    let mut out = String::from("{\"consumeTps\":");
    // fastjson writes doubles with a decimal point.
    if tps.is_finite() {
        out.push_str(&format!("{tps:?}"));
    } else {
        out.push_str("0.0");
    }
    out.push_str(",\"offsetTable\":{");
    for (i, (queue, wrapper)) in offsets.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&String::from_utf8_lossy(&super::encode_json(queue)));
        out.push(':');
        out.push_str(&String::from_utf8_lossy(&super::encode_json(wrapper)));
    }
    out.push_str("}}");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_bodies_use_the_java_names() {
        let body = br#"{"clientId":"c1","consumerGroup":"g","onlyThisBroker":false,"mqSet":[{"brokerName":"b","queueId":1,"topic":"T"}]}"#;
        let request: LockBatchRequestBody = crate::protocol::decode_json("lock", body).unwrap();
        assert_eq!(request.mq_set.len(), 1);
        let answer = LockBatchResponseBody {
            lock_ok_mq_set: request.mq_set,
        };
        assert_eq!(
            String::from_utf8(crate::protocol::encode_json(&answer)).unwrap(),
            r#"{"lockOKMQSet":[{"brokerName":"b","queueId":1,"topic":"T"}]}"#
        );
    }

    #[test]
    fn consume_stats_are_written_in_fastjsons_inline_key_form() {
        let queue = MessageQueue {
            broker_name: "broker-a".into(),
            queue_id: 0,
            topic: "T1".into(),
        };
        let wrapper = OffsetWrapper {
            broker_offset: 10,
            consumer_offset: 8,
            last_timestamp: 1_700_000_000_000,
            pull_offset: 9,
        };
        let body = encode_consume_stats(&BTreeMap::from([(queue, wrapper)]), 0.0);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"consumeTps":0.0,"offsetTable":{{"brokerName":"broker-a","queueId":0,"topic":"T1"}:{"brokerOffset":10,"consumerOffset":8,"lastTimestamp":1700000000000,"pullOffset":9}}}"#
        );
    }

    #[test]
    fn offset_tables_round_trip_with_quoted_queue_ids() {
        let mut table = ConsumerOffsetWrapper::default();
        table
            .offset_table
            .entry("T1@cg1".into())
            .or_default()
            .insert(3, 12);
        let json = crate::protocol::encode_json(&table);
        assert!(
            String::from_utf8_lossy(&json).contains(r#"{"T1@cg1":{"3":12}}"#),
            "{}",
            String::from_utf8_lossy(&json)
        );
        let back: ConsumerOffsetWrapper = crate::protocol::decode_json("offsets", &json).unwrap();
        assert_eq!(back, table);
    }
}
