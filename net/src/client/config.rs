//! Settings every producer and consumer shares: where the name servers are and how this
//! client names itself to brokers.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long a request waits for its answer by default (RocketMQ's 3 s).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 3_000;

/// How often routes are fetched again and heartbeats sent (RocketMQ's 30 s).
pub const DEFAULT_REFRESH_INTERVAL_MS: u64 = 30_000;

/// Connection settings of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name servers, `host:port`; tried in turn.
    pub namesrv_addrs: Vec<String>,
    /// Distinguishes clients of one process: part of the client id brokers see. Default: the
    /// process id and a counter, so every producer and consumer is its own member.
    pub instance_name: String,
    /// The address reported in the client id. Default: the first non-loopback IPv4 address.
    pub client_ip: Option<IpAddr>,
    /// Timeout of each request.
    pub request_timeout: Duration,
    /// How often routes are fetched again and heartbeats sent.
    pub refresh_interval: Duration,
}

static INSTANCE_COUNTER: AtomicU32 = AtomicU32::new(0);

impl ClientConfig {
    /// Settings for the given name servers (`host:port`, separated by `;` or `,`).
    pub fn new(namesrv: &str) -> ClientConfig {
        ClientConfig {
            namesrv_addrs: crate::admin::parse_addr_list(namesrv),
            instance_name: format!(
                "{}#{}",
                std::process::id(),
                INSTANCE_COUNTER.fetch_add(1, Ordering::Relaxed)
            ),
            client_ip: None,
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            refresh_interval: Duration::from_millis(DEFAULT_REFRESH_INTERVAL_MS),
        }
    }

    /// The id brokers know this client by (`ip@instance`, as RocketMQ's `buildMQClientId`).
    pub fn client_id(&self) -> String {
        let ip = self
            .client_ip
            .unwrap_or_else(crate::listen::first_non_loopback_ipv4);
        format!("{ip}@{}", self.instance_name)
    }
}
