//! Topics and routes: what brokers register with name servers and what clients ask them for.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Permission bit: clients may consume (`PermName.PERM_READ`).
pub const PERM_READ: i32 = 1 << 2;
/// Permission bit: clients may produce.
pub const PERM_WRITE: i32 = 1 << 1;
/// Permission bit: new topics may be created from this one (only the `TBW102` template has it).
pub const PERM_INHERIT: i32 = 1 << 0;

/// The template topic producers name when sending to a topic that does not exist yet
/// (`MixAll.AUTO_CREATE_TOPIC_KEY_TOPIC`).
pub const AUTO_CREATE_TOPIC_KEY: &str = "TBW102";

/// Prefix of a consumer group's retry topic.
pub const RETRY_GROUP_TOPIC_PREFIX: &str = "%RETRY%";

/// Prefix of a consumer group's dead-letter topic.
pub const DLQ_GROUP_TOPIC_PREFIX: &str = "%DLQ%";

/// Longest topic name a broker accepts (RocketMQ 5's `TopicValidator`).
pub const TOPIC_NAME_MAX_BYTES: usize = 127;

/// Whether a topic name is legal: 1–127 characters of `[%|a-zA-Z0-9_-]` (RocketMQ's
/// `TopicValidator.validateTopic`).
pub fn topic_name_error(topic: &str) -> Option<String> {
    if topic.is_empty() {
        return Some("the topic name is empty".into());
    }
    if topic.len() > TOPIC_NAME_MAX_BYTES {
        return Some(format!(
            "the topic name is longer than {TOPIC_NAME_MAX_BYTES} characters"
        ));
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-')))
    {
        return Some(format!(
            "the topic name {topic:?} contains {bad:?}; only [%|a-zA-Z0-9_-] are allowed"
        ));
    }
    None
}

/// A topic as a broker holds it (`TopicConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfig {
    /// Free-form attributes (RocketMQ 5).
    pub attributes: BTreeMap<String, String>,
    /// Whether it is an ordered topic.
    pub order: bool,
    /// [`PERM_READ`] | [`PERM_WRITE`] | [`PERM_INHERIT`].
    pub perm: i32,
    /// Queues consumers read.
    pub read_queue_nums: i32,
    /// `SINGLE_TAG` or `MULTI_TAG`.
    pub topic_filter_type: String,
    /// The topic's name.
    pub topic_name: String,
    /// `TopicSysFlag` bits.
    pub topic_sys_flag: i32,
    /// Queues producers write.
    pub write_queue_nums: i32,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            attributes: BTreeMap::new(),
            order: false,
            perm: PERM_READ | PERM_WRITE,
            read_queue_nums: 16,
            topic_filter_type: "SINGLE_TAG".into(),
            topic_name: String::new(),
            topic_sys_flag: 0,
            write_queue_nums: 16,
        }
    }
}

impl TopicConfig {
    /// A read-write topic with `queues` read and write queues.
    pub fn new(name: impl Into<String>, queues: i32, perm: i32) -> TopicConfig {
        TopicConfig {
            topic_name: name.into(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            perm,
            ..TopicConfig::default()
        }
    }

    /// The number of queues that exist: the larger of the read and write counts.
    pub fn queue_count(&self) -> i32 {
        self.read_queue_nums.max(self.write_queue_nums)
    }

    /// Whether clients may consume it.
    pub fn readable(&self) -> bool {
        self.perm & PERM_READ != 0
    }

    /// Whether clients may produce to it.
    pub fn writable(&self) -> bool {
        self.perm & PERM_WRITE != 0
    }
}

/// A version stamp of a broker's topic table; name servers only re-read topics when it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DataVersion {
    /// Bumped on every change.
    pub counter: i64,
    /// RocketMQ 5: bumped on role changes.
    pub state_version: i64,
    /// When it last changed, ms since the epoch.
    pub timestamp: i64,
}

/// A broker's topics with their version (`TopicConfigSerializeWrapper`; also RocketMQ's
/// `topics.json`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfigWrapper {
    /// The version.
    pub data_version: DataVersion,
    /// Topics by name.
    pub topic_config_table: BTreeMap<String, TopicConfig>,
}

/// The body of `REGISTER_BROKER`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegisterBrokerBody {
    /// Filter servers (unused; always empty).
    pub filter_server_list: Vec<String>,
    /// The broker's topics.
    pub topic_config_serialize_wrapper: TopicConfigWrapper,
}

/// One broker's share of a topic in a route.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueueData {
    /// The broker.
    pub broker_name: String,
    /// Permission bits.
    pub perm: i32,
    /// Queues consumers read.
    pub read_queue_nums: i32,
    /// `TopicSysFlag` (RocketMQ 5 name).
    pub topic_sys_flag: i32,
    /// The same value under RocketMQ 4's name; written so 4.x clients read it too.
    #[serde(skip_deserializing)]
    pub topic_syn_flag: i32,
    /// Queues producers write.
    pub write_queue_nums: i32,
}

impl QueueData {
    /// A broker's queues of a topic, with the sys flag under both of its names.
    pub fn new(broker_name: impl Into<String>, topic: &TopicConfig) -> QueueData {
        QueueData {
            broker_name: broker_name.into(),
            perm: topic.perm,
            read_queue_nums: topic.read_queue_nums,
            topic_sys_flag: topic.topic_sys_flag,
            topic_syn_flag: topic.topic_sys_flag,
            write_queue_nums: topic.write_queue_nums,
        }
    }
}

/// A broker and its addresses, by broker id (0 is the master).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BrokerData {
    /// Addresses by broker id, keys written quoted.
    pub broker_addrs: BTreeMap<i64, String>,
    /// Name shared by a master and its slaves.
    pub broker_name: String,
    /// Cluster.
    pub cluster: String,
    /// RocketMQ 5: whether a slave may act as master.
    pub enable_acting_master: bool,
}

/// What a client gets for `GET_ROUTEINFO_BY_TOPIC`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicRouteData {
    /// Brokers holding the topic.
    pub broker_datas: Vec<BrokerData>,
    /// Filter servers by broker address (always empty, but strict clients require the field).
    pub filter_server_table: BTreeMap<String, Vec<String>>,
    /// Ordered topic layout (`brokerA:4;brokerB:4`), if configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_topic_conf: Option<String>,
    /// Each broker's queues.
    pub queue_datas: Vec<QueueData>,
}

/// What `GET_BROKER_CLUSTER_INFO` returns.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterInfo {
    /// Brokers by name.
    pub broker_addr_table: BTreeMap<String, BrokerData>,
    /// Broker names by cluster.
    pub cluster_addr_table: BTreeMap<String, BTreeSet<String>>,
}

/// A list of topic names (`TopicList`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicList {
    /// The names.
    pub topic_list: BTreeSet<String>,
    /// The broker they come from, when one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_addr: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_carry_every_field_strict_clients_require_with_quoted_keys() {
        let route = TopicRouteData {
            broker_datas: vec![BrokerData {
                broker_addrs: BTreeMap::from([(0, "10.0.0.1:10911".to_string())]),
                broker_name: "broker-a".into(),
                cluster: "DefaultCluster".into(),
                enable_acting_master: false,
            }],
            queue_datas: vec![QueueData {
                broker_name: "broker-a".into(),
                perm: 6,
                read_queue_nums: 4,
                topic_sys_flag: 0,
                topic_syn_flag: 0,
                write_queue_nums: 4,
            }],
            ..TopicRouteData::default()
        };
        let json = String::from_utf8(crate::protocol::encode_json(&route)).unwrap();
        assert_eq!(
            json,
            r#"{"brokerDatas":[{"brokerAddrs":{"0":"10.0.0.1:10911"},"brokerName":"broker-a","cluster":"DefaultCluster","enableActingMaster":false}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"topicSynFlag":0,"writeQueueNums":4}]}"#
        );
        let back: TopicRouteData = serde_json::from_str(&json).unwrap();
        assert_eq!(back.broker_datas, route.broker_datas);
    }

    #[test]
    fn a_java_brokers_registration_body_decodes() {
        let body = br#"{"filterServerList":[],"topicConfigSerializeWrapper":{"dataVersion":{"counter":3,"stateVersion":0,"timestamp":1700000000000},"topicConfigTable":{"T1":{"attributes":{},"order":false,"perm":6,"readQueueNums":4,"topicFilterType":"SINGLE_TAG","topicName":"T1","topicSysFlag":0,"writeQueueNums":4,"someNewField":1}}}}"#;
        let decoded: RegisterBrokerBody =
            crate::protocol::decode_json("RegisterBrokerBody", body).unwrap();
        let wrapper = decoded.topic_config_serialize_wrapper;
        assert_eq!(wrapper.data_version.counter, 3);
        assert_eq!(wrapper.topic_config_table["T1"].write_queue_nums, 4);
        let err = crate::protocol::decode_json::<RegisterBrokerBody>("RegisterBrokerBody", b"{")
            .unwrap_err();
        assert!(err.to_string().contains("RegisterBrokerBody"), "{err}");
    }

    #[test]
    fn topic_names_are_checked_as_rocketmq_does() {
        assert_eq!(topic_name_error("Orders_2-%RETRY%|x"), None);
        assert!(topic_name_error("").is_some());
        assert!(topic_name_error("a b").unwrap().contains("' '"));
        assert!(topic_name_error(&"t".repeat(128)).is_some());
    }
}
