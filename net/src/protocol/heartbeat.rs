//! `HEART_BEAT` bodies: who a client is, which producer and consumer groups it runs, and what
//! each consumer subscribes to.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Subscription expression matching every tag.
pub const SUBSCRIBE_ALL: &str = "*";

/// Expression type of tag subscriptions.
pub const EXPRESSION_TYPE_TAG: &str = "TAG";

/// A client's heartbeat (`HeartbeatData`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeartbeatData {
    /// The client instance (`ip@pid` or similar), stable across its connections.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// Consumer groups it runs.
    pub consumer_data_set: Vec<ConsumerData>,
    /// RocketMQ 5 heartbeat v2 fingerprint; 0 for full heartbeats.
    pub heartbeat_fingerprint: i32,
    /// Producer groups it runs.
    pub producer_data_set: Vec<ProducerData>,
    /// RocketMQ 5: subscriptions left out because unchanged.
    pub without_sub: bool,
}

/// One producer group of a client.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProducerData {
    /// The group.
    pub group_name: String,
}

/// One consumer group of a client.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerData {
    /// `CONSUME_FROM_LAST_OFFSET`, `CONSUME_FROM_FIRST_OFFSET`, `CONSUME_FROM_TIMESTAMP`…
    pub consume_from_where: String,
    /// `CONSUME_PASSIVELY` (push), `CONSUME_ACTIVELY` (pull), `CONSUME_POP`.
    pub consume_type: String,
    /// The group.
    pub group_name: String,
    /// `CLUSTERING` or `BROADCASTING`.
    pub message_model: String,
    /// What it subscribes to.
    pub subscription_data_set: Vec<SubscriptionData>,
    /// Unit mode (unused).
    pub unit_mode: bool,
}

/// A subscription to one topic.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionData {
    /// Class filter mode (unused).
    pub class_filter_mode: bool,
    /// Java `hashCode` of each tag.
    pub code_set: BTreeSet<i32>,
    /// `TAG` or `SQL92`.
    pub expression_type: String,
    /// The expression: `*`, or tags joined by `||`.
    pub sub_string: String,
    /// Version (a timestamp); pulls naming a newer one than the broker has are refused.
    pub sub_version: i64,
    /// The tags.
    pub tags_set: BTreeSet<String>,
    /// The topic.
    pub topic: String,
}

impl SubscriptionData {
    /// The subscription a tag expression describes (`FilterAPI.build`): `*` or empty is all
    /// tags, otherwise tags separated by `||`, trimmed.
    pub fn from_expression(topic: &str, expression: &str, sub_version: i64) -> SubscriptionData {
        let expression = expression.trim();
        let mut data = SubscriptionData {
            topic: topic.to_string(),
            sub_string: if expression.is_empty() {
                SUBSCRIBE_ALL.to_string()
            } else {
                expression.to_string()
            },
            expression_type: EXPRESSION_TYPE_TAG.to_string(),
            sub_version,
            ..SubscriptionData::default()
        };
        if data.sub_string != SUBSCRIBE_ALL {
            for tag in data.sub_string.split("||").map(str::trim) {
                if !tag.is_empty() {
                    data.code_set.insert(crate::message::java_string_hash(tag));
                    data.tags_set.insert(tag.to_string());
                }
            }
        }
        data
    }

    /// Whether it takes every message.
    pub fn matches_all(&self) -> bool {
        self.tags_set.is_empty() || self.sub_string.trim() == SUBSCRIBE_ALL
    }

    /// Whether the expression type is one this broker filters by (tags); SQL92 is not yet.
    pub fn is_tag_type(&self) -> bool {
        self.expression_type.is_empty() || self.expression_type.eq_ignore_ascii_case("TAG")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_java_heartbeat_decodes() {
        let body = br#"{"clientID":"10.0.0.5@12345","consumerDataSet":[{"consumeFromWhere":"CONSUME_FROM_LAST_OFFSET","consumeType":"CONSUME_PASSIVELY","groupName":"cg1","messageModel":"CLUSTERING","subscriptionDataSet":[{"classFilterMode":false,"codeSet":[2598919],"expressionType":"TAG","subString":"TagA","subVersion":1700000000000,"tagsSet":["TagA"],"topic":"T1"}],"unitMode":false}],"producerDataSet":[{"groupName":"pg1"},{"groupName":"CLIENT_INNER_PRODUCER"}],"heartbeatFingerprint":0,"withoutSub":false}"#;
        let hb: HeartbeatData = crate::protocol::decode_json("HeartbeatData", body).unwrap();
        assert_eq!(hb.client_id, "10.0.0.5@12345");
        assert_eq!(hb.producer_data_set.len(), 2);
        let sub = &hb.consumer_data_set[0].subscription_data_set[0];
        assert_eq!(sub.tags_set.iter().next().unwrap(), "TagA");
        assert!(!sub.matches_all());
    }

    #[test]
    fn expressions_build_like_filter_api() {
        let all = SubscriptionData::from_expression("T", " * ", 1);
        assert!(all.matches_all());
        let some = SubscriptionData::from_expression("T", "TagA || TagB||", 1);
        assert_eq!(
            some.tags_set.iter().cloned().collect::<Vec<_>>(),
            ["TagA", "TagB"]
        );
        assert!(
            some.code_set
                .contains(&crate::message::java_string_hash("TagB"))
        );
        assert!(SubscriptionData::from_expression("T", "", 1).matches_all());
    }
}
