//! Numbers of RocketMQ's remoting protocol: request and response codes, flag bits, language
//! and serialization codes. Taken from apache/rocketmq `RequestCode.java`,
//! `ResponseCode.java`, `RemotingSysResponseCode.java`, `RemotingCommand.java`,
//! `LanguageCode.java` and `SerializeType.java`.

/// Request codes the broker and name server answer or send.
pub mod request {
    /// Send one message (long header field names).
    pub const SEND_MESSAGE: i32 = 10;
    /// Pull messages from a queue.
    pub const PULL_MESSAGE: i32 = 11;
    /// Query messages by key.
    pub const QUERY_MESSAGE: i32 = 12;
    /// Read a group's committed offset for a queue.
    pub const QUERY_CONSUMER_OFFSET: i32 = 14;
    /// Commit a group's offset for a queue.
    pub const UPDATE_CONSUMER_OFFSET: i32 = 15;
    /// Create or update a topic on a broker.
    pub const UPDATE_AND_CREATE_TOPIC: i32 = 17;
    /// Every topic's configuration on a broker.
    pub const GET_ALL_TOPIC_CONFIG: i32 = 21;
    /// Broker runtime figures (admin tools).
    pub const GET_BROKER_RUNTIME_INFO: i32 = 28;
    /// First offset stored at or after a time.
    pub const SEARCH_OFFSET_BY_TIMESTAMP: i32 = 29;
    /// One past a queue's last offset.
    pub const GET_MAX_OFFSET: i32 = 30;
    /// A queue's lowest offset.
    pub const GET_MIN_OFFSET: i32 = 31;
    /// Store time of a queue's oldest message.
    pub const GET_EARLIEST_MSG_STORETIME: i32 = 32;
    /// Read a message by its offset message id.
    pub const VIEW_MESSAGE_BY_ID: i32 = 33;
    /// Client liveness and its producer and consumer groups.
    pub const HEART_BEAT: i32 = 34;
    /// A client leaves its groups.
    pub const UNREGISTER_CLIENT: i32 = 35;
    /// A consumer gives a message back for retry.
    pub const CONSUMER_SEND_MSG_BACK: i32 = 36;
    /// Client ids of a consumer group's members.
    pub const GET_CONSUMER_LIST_BY_GROUP: i32 = 38;
    /// Broker to consumer: the group's membership changed (oneway).
    pub const NOTIFY_CONSUMER_IDS_CHANGED: i32 = 40;
    /// Lock queues for orderly consumption.
    pub const LOCK_BATCH_MQ: i32 = 41;
    /// Release queue locks.
    pub const UNLOCK_BATCH_MQ: i32 = 42;
    /// Every group's offsets on a broker.
    pub const GET_ALL_CONSUMER_OFFSET: i32 = 43;
    /// A broker registers its topics with a name server.
    pub const REGISTER_BROKER: i32 = 103;
    /// A broker leaves a name server.
    pub const UNREGISTER_BROKER: i32 = 104;
    /// A topic's route: its brokers and queues.
    pub const GET_ROUTEINFO_BY_TOPIC: i32 = 105;
    /// Clusters and their brokers.
    pub const GET_BROKER_CLUSTER_INFO: i32 = 106;
    /// Each queue of a topic on a broker: lowest and next offset, newest store time.
    pub const GET_TOPIC_STATS_INFO: i32 = 202;
    /// Every topic a name server knows.
    pub const GET_ALL_TOPIC_LIST_FROM_NAMESERVER: i32 = 206;
    /// A group's consumption progress per queue.
    pub const GET_CONSUME_STATS: i32 = 208;
    /// Delete a topic on a broker.
    pub const DELETE_TOPIC_IN_BROKER: i32 = 215;
    /// Delete a topic's route on a name server.
    pub const DELETE_TOPIC_IN_NAMESRV: i32 = 216;
    /// Send one message (short header field names `a`..`n`); what clients use by default.
    pub const SEND_MESSAGE_V2: i32 = 310;
    /// Send a batch of messages.
    pub const SEND_BATCH_MESSAGE: i32 = 320;
    /// Whether a name server's data about a broker changed (registration shortcut).
    pub const QUERY_DATA_VERSION: i32 = 322;
    /// Pull through the lite pull consumer.
    pub const LITE_PULL_MESSAGE: i32 = 361;
}

/// Response codes.
pub mod response {
    /// Done.
    pub const SUCCESS: i32 = 0;
    /// Failed inside the server.
    pub const SYSTEM_ERROR: i32 = 1;
    /// Overloaded: try again later.
    pub const SYSTEM_BUSY: i32 = 2;
    /// The request code is not served.
    pub const REQUEST_CODE_NOT_SUPPORTED: i32 = 3;
    /// Durable write timed out.
    pub const FLUSH_DISK_TIMEOUT: i32 = 10;
    /// Stored on the master, but no slave is available.
    pub const SLAVE_NOT_AVAILABLE: i32 = 11;
    /// Stored on the master, but the slave did not confirm in time.
    pub const FLUSH_SLAVE_TIMEOUT: i32 = 12;
    /// The message is unacceptable (size, topic, properties).
    pub const MESSAGE_ILLEGAL: i32 = 13;
    /// The service cannot take the request now (disk full, shutting down).
    pub const SERVICE_NOT_AVAILABLE: i32 = 14;
    /// Not allowed (permissions).
    pub const NO_PERMISSION: i32 = 16;
    /// No such topic.
    pub const TOPIC_NOT_EXIST: i32 = 17;
    /// Pull: nothing new.
    pub const PULL_NOT_FOUND: i32 = 19;
    /// Pull: nothing matched the filter; pull again from `nextBeginOffset`.
    pub const PULL_RETRY_IMMEDIATELY: i32 = 20;
    /// Pull: the offset is gone or beyond the queue.
    pub const PULL_OFFSET_MOVED: i32 = 21;
    /// Query: nothing found.
    pub const QUERY_NOT_FOUND: i32 = 22;
    /// The subscription expression cannot be parsed.
    pub const SUBSCRIPTION_PARSE_FAILED: i32 = 23;
    /// The group has no subscription to the topic on this broker.
    pub const SUBSCRIPTION_NOT_EXIST: i32 = 24;
    /// The client's subscription is newer than the broker's.
    pub const SUBSCRIPTION_NOT_LATEST: i32 = 25;
    /// The consumer group is not online.
    pub const CONSUMER_NOT_ONLINE: i32 = 206;
}

/// Bit of the flag field set on responses.
pub const FLAG_RESPONSE: i32 = 0x1;

/// Bit of the flag field set on oneway requests: the peer must not reply.
pub const FLAG_ONEWAY: i32 = 0x2;

/// Header serialization, from the high byte of a frame's second int.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerializeType {
    /// UTF-8 JSON (`SerializeType.JSON`, 0): what Java clients send by default.
    Json = 0,
    /// RocketMQ's compact binary header (`SerializeType.ROCKETMQ`, 1).
    RocketMq = 1,
}

impl SerializeType {
    /// The type of a code, if known.
    pub fn from_code(code: u8) -> Option<SerializeType> {
        match code {
            0 => Some(SerializeType::Json),
            1 => Some(SerializeType::RocketMq),
            _ => None,
        }
    }
}

/// Client languages: JSON headers carry the name, binary headers the number.
pub const LANGUAGES: [(&str, u8); 14] = [
    ("JAVA", 0),
    ("CPP", 1),
    ("DOTNET", 2),
    ("PYTHON", 3),
    ("DELPHI", 4),
    ("ERLANG", 5),
    ("RUBY", 6),
    ("OTHER", 7),
    ("HTTP", 8),
    ("GO", 9),
    ("PHP", 10),
    ("OMS", 11),
    ("RUST", 12),
    ("NODE_JS", 13),
];

/// `OTHER`: what Quiver writes, since every client version can parse it (an unknown name makes
/// older Java peers drop the connection).
pub const LANGUAGE_OTHER: u8 = 7;

/// The number of a language name; unknown names read as `OTHER`.
pub fn language_code(name: &str) -> u8 {
    LANGUAGES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(LANGUAGE_OTHER, |(_, c)| *c)
}

/// The name of a language number; unknown numbers read as `OTHER`.
pub fn language_name(code: u8) -> &'static str {
    LANGUAGES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("OTHER", |(n, _)| n)
}

/// The protocol version Quiver reports: `MQVersion.V4_9_4` (401), new enough that clients trust
/// tag filtering and standard route JSON, old enough that 5.x clients do not expect newer
/// features (heartbeat v2, pop).
pub const QUIVER_PROTOCOL_VERSION: i32 = 401;
