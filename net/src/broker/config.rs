//! Broker settings: one typed struct, every field defaulted, loadable from TOML with the store's
//! settings under `[store]` (and `[store.log]`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use quiver_engine::{ConfigError, StoreConfig};
use serde::{Deserialize, Serialize};

/// The broker's default port, as RocketMQ's `listenPort`.
pub const DEFAULT_BROKER_PORT: u16 = 10911;

/// Broker settings. Every field has a default; a TOML file need only name what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Where the store (`store/`) and the broker's own files (`config/`: topics, consumer
    /// offsets) live. Default `./data`.
    pub data_dir: PathBuf,
    /// Address to listen on. Default `0.0.0.0:10911`.
    pub listen: SocketAddr,
    /// Also listen on the port two below `listen` (10909 by default), RocketMQ's "VIP channel",
    /// which older clients use for sends and admin calls. Default true. A failure to bind it
    /// is logged, not fatal.
    pub vip_channel: bool,
    /// The address clients are told to connect to, and the store host inside message ids.
    /// Default: the first non-loopback IPv4 address of this host (127.0.0.1 if none), as
    /// RocketMQ's `brokerIP1`.
    pub broker_ip: Option<IpAddr>,
    /// The broker's name, shared by a master and its slaves. Default `broker-a`.
    pub broker_name: String,
    /// The cluster it belongs to. Default `DefaultCluster`.
    pub cluster_name: String,
    /// 0 for a master (the only role so far). Default 0.
    pub broker_id: i64,
    /// Name servers to register with, `host:port`. Default `["127.0.0.1:9876"]`.
    pub namesrv_addrs: Vec<String>,
    /// How often to re-register with every name server. Default 30,000, as RocketMQ's
    /// `registerNameServerPeriod`; at least 1,000.
    pub register_interval_ms: u64,
    /// Create a topic on its first send, from the `TBW102` template. Default true, as
    /// RocketMQ's `autoCreateTopicEnable`.
    pub auto_create_topic: bool,
    /// Queues of a topic created by a send (the producer may ask for fewer) and of
    /// `TBW102`. Default 8, as RocketMQ's `defaultTopicQueueNums`.
    pub default_topic_queue_nums: i32,
    /// Largest message body accepted. Default 4 MiB, as RocketMQ's `maxMessageSize`.
    pub max_message_bytes: usize,
    /// Largest frame accepted, length prefix included. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Most bytes of messages one pull returns (at least one message). Default 1 MiB.
    pub max_pull_bytes: usize,
    /// Hold pulls that find nothing until a message arrives or the client's suspend time
    /// passes. Default true, as RocketMQ's `longPollingEnable`.
    pub long_polling: bool,
    /// Without long polling, how long a pull that finds nothing is held. Default 1,000, as
    /// RocketMQ's `shortPollingTimeMills`.
    pub short_polling_ms: u64,
    /// Longest hold of a pull, whatever the client asks. Default 60,000.
    pub max_suspend_ms: u64,
    /// A client connection silent this long is dropped from its groups. Default 120,000, as
    /// RocketMQ's channel expiry.
    pub client_expiry_ms: u64,
    /// A connection that delivers no complete request for this long, with no request of it
    /// running (a held pull is not idleness) and no response waiting to be sent, is closed: a
    /// client that trickles a frame, or sends nothing, cannot hold a descriptor forever.
    /// Default 120,000, as RocketMQ's `serverChannelMaxIdleTimeSeconds`; at least 1,000.
    /// Clients send heartbeats every 30 s.
    pub connection_idle_timeout_ms: u64,
    /// Most bytes of responses waiting to be sent on one connection. Past a quarter of it the
    /// broker stops reading that connection's requests until its client reads; past all of it
    /// (requests already running can get there) the connection is closed and what waits is
    /// dropped (the client reconnects and pulls again). Bounds the memory a client that does
    /// not read can hold. Default 64 MiB; at least 1 MiB. A consumer pulling many queues over
    /// a slow link at `max_pull_bytes` each may need more.
    pub connection_max_output_bytes: usize,
    /// An orderly consumer's queue lock lapses if not renewed for this long. Default 60,000,
    /// as RocketMQ's `rebalance.lockMaxLiveTime`.
    pub lock_ttl_ms: u64,
    /// How often committed consumer offsets are written to disk. Default 5,000, as
    /// RocketMQ's `flushConsumerOffsetInterval`. They are also written at shutdown.
    pub offset_flush_interval_ms: u64,
    /// Results of a query by unique key. Default 32, as RocketMQ's `defaultQueryMaxNum`.
    pub default_query_max_num: usize,
    /// Region reported to producers (`MSG_REGION`). Default `DefaultRegion`.
    pub region_id: String,
    /// Whether producers should trace (`TRACE_ON`). Default true.
    pub trace_on: bool,
    /// The store.
    pub store: StoreConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_BROKER_PORT)),
            vip_channel: true,
            broker_ip: None,
            broker_name: "broker-a".into(),
            cluster_name: "DefaultCluster".into(),
            broker_id: 0,
            namesrv_addrs: vec!["127.0.0.1:9876".into()],
            register_interval_ms: 30_000,
            auto_create_topic: true,
            default_topic_queue_nums: 8,
            max_message_bytes: 4 << 20,
            max_frame_bytes: crate::remoting::frame::DEFAULT_MAX_FRAME_BYTES,
            max_pull_bytes: 1 << 20,
            long_polling: true,
            short_polling_ms: 1_000,
            max_suspend_ms: 60_000,
            client_expiry_ms: 120_000,
            connection_idle_timeout_ms: crate::server::DEFAULT_IDLE_TIMEOUT_MS,
            connection_max_output_bytes: crate::server::DEFAULT_OUTPUT_MAX_BYTES,
            lock_ttl_ms: 60_000,
            offset_flush_interval_ms: 5_000,
            default_query_max_num: 32,
            region_id: "DefaultRegion".into(),
            trace_on: true,
            store: StoreConfig::default(),
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl BrokerConfig {
    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<BrokerConfig, ConfigError> {
        let config: BrokerConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        BrokerConfig::from_toml(&text)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store.validate()?;
        if self.broker_name.is_empty() || self.broker_name.contains(['@', ';', ' ']) {
            return Err(invalid(
                "broker_name",
                "must be non-empty without '@', ';' or spaces",
            ));
        }
        if self.cluster_name.is_empty() {
            return Err(invalid("cluster_name", "must be non-empty"));
        }
        if self.broker_id != 0 {
            return Err(invalid(
                "broker_id",
                "must be 0: only masters are supported so far",
            ));
        }
        if let Some(bad) = self.namesrv_addrs.iter().find(|a| {
            a.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        }) {
            return Err(invalid(
                "namesrv_addrs",
                format!("{bad:?} is not host:port"),
            ));
        }
        if self.register_interval_ms < 1_000 {
            return Err(invalid("register_interval_ms", "must be at least 1000"));
        }
        if !(1..=1024).contains(&self.default_topic_queue_nums) {
            return Err(invalid(
                "default_topic_queue_nums",
                "must be between 1 and 1024",
            ));
        }
        crate::check_max_frame_bytes(self.max_frame_bytes)?;
        if self.max_message_bytes == 0 || self.max_message_bytes + (64 << 10) > self.max_frame_bytes
        {
            return Err(invalid(
                "max_message_bytes",
                "must be at least 1 and leave 64 KiB of max_frame_bytes for headers",
            ));
        }
        if self.max_message_bytes as u64 + (64 << 10) > self.store.log.max_record_bytes {
            return Err(invalid(
                "max_message_bytes",
                "must leave 64 KiB below store.log.max_record_bytes for topic and properties",
            ));
        }
        if self.max_pull_bytes == 0 || self.max_pull_bytes > 64 << 20 {
            return Err(invalid("max_pull_bytes", "must be between 1 and 64 MiB"));
        }
        for (field, value) in [
            ("short_polling_ms", self.short_polling_ms),
            ("max_suspend_ms", self.max_suspend_ms),
            ("client_expiry_ms", self.client_expiry_ms),
            ("lock_ttl_ms", self.lock_ttl_ms),
            ("offset_flush_interval_ms", self.offset_flush_interval_ms),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if self.connection_idle_timeout_ms < 1_000 {
            return Err(invalid(
                "connection_idle_timeout_ms",
                "must be at least 1000",
            ));
        }
        if self.connection_max_output_bytes < 1 << 20 {
            return Err(invalid(
                "connection_max_output_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        if self.default_query_max_num == 0 {
            return Err(invalid("default_query_max_num", "must be at least 1"));
        }
        Ok(())
    }

    /// The IP clients are told: the configured one, else this host's first non-loopback IPv4.
    pub fn advertised_ip(&self) -> IpAddr {
        if let Some(ip) = self.broker_ip {
            return ip;
        }
        if !self.listen.ip().is_unspecified() {
            return self.listen.ip();
        }
        crate::listen::first_non_loopback_ipv4()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_toml_overrides_name_their_field_when_wrong() {
        BrokerConfig::default().validate().unwrap();
        let config = BrokerConfig::from_toml(
            "listen = \"127.0.0.1:20911\"\nnamesrv_addrs = [\"127.0.0.1:19876\"]\n[store]\nshards = 1\n[store.log]\nflush = \"sync\"\n",
        )
        .unwrap();
        assert_eq!(config.listen.port(), 20911);
        assert_eq!(config.store.log.flush, quiver_engine::FlushMode::Sync);
        assert_eq!(
            config.advertised_ip(),
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        );
        let err = BrokerConfig::from_toml("namesrv_addrs = [\"nohost\"]").unwrap_err();
        assert!(err.to_string().contains("namesrv_addrs"), "{err}");
        let err = BrokerConfig::from_toml("max_message_bytes = 100000000").unwrap_err();
        assert!(err.to_string().contains("max_message_bytes"), "{err}");
        let err = BrokerConfig::from_toml("connection_idle_timeout_ms = 10").unwrap_err();
        assert!(
            err.to_string().contains("connection_idle_timeout_ms"),
            "{err}"
        );
        let err = BrokerConfig::from_toml("connection_max_output_bytes = 1000").unwrap_err();
        assert!(
            err.to_string().contains("connection_max_output_bytes"),
            "{err}"
        );
        let err = BrokerConfig::from_toml("no_such_field = 1").unwrap_err();
        assert!(err.to_string().contains("no_such_field"), "{err}");
    }
}
