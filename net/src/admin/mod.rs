//! A typed admin client for operators and tools: looks topics, groups and brokers up through
//! the name servers and then talks to the brokers, as RocketMQ's `mqadmin` does, over the same
//! remoting protocol (so it works against Apache RocketMQ as well as Quiver).
//!
//! `quiver admin` is built on it. Results are plain structs that serialize to JSON; failures
//! are [`AdminError`]s that name the server and what went wrong.
//!
//! ```no_run
//! use quiver_net::admin::{Admin, TopicSpec, BrokerSelector};
//!
//! # async fn demo() -> Result<(), quiver_net::admin::AdminError> {
//! let admin = Admin::new(["127.0.0.1:9876"])?;
//! admin.create_topic(&TopicSpec::new("orders", 8), &BrokerSelector::All).await?;
//! let status = admin.topic_status("orders").await?;
//! println!("{} messages", status.total_messages);
//! # Ok(()) }
//! ```

pub mod bodies;
mod error;
mod groups;
mod messages;
mod topics;
mod types;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

pub use self::error::{AdminError, Unreachable};
pub use self::types::{
    BrokerRef, BrokerSelector, BrokerStatus, ClusterBroker, GroupProgress, MessageView,
    OffsetReset, QueueProgress, QueueReset, QueueStatus, ResetTarget, TopicCreated, TopicDeleted,
    TopicSpec, TopicStatus,
};
use crate::client::{ClientError, RemotingClient};
use crate::protocol::decode_json;
use crate::protocol::route::{BrokerData, ClusterInfo, TopicList};
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{request, response};

/// How long a connection or an answer may take unless [`Admin::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// The broker id of a master.
const MASTER_ID: i64 = 0;

/// An admin client: name-server addresses, tried in turn, and a connection per server, opened
/// on first use and kept.
pub struct Admin {
    namesrv: Vec<String>,
    timeout: Duration,
    clients: Mutex<HashMap<String, RemotingClient>>,
}

/// Splits a list of `host:port` addresses separated by `;` or `,` (RocketMQ's
/// `namesrvAddr` form).
pub fn parse_addr_list(list: &str) -> Vec<String> {
    list.split([';', ','])
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether `addr` has the `host:port` shape (the host is resolved when used).
fn check_addr(addr: &str) -> Result<(), AdminError> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(AdminError::BadAddress {
            addr: addr.to_string(),
        })
    }
}

/// An I/O error's text as an operator reads it: `connection refused` rather than
/// `Connection refused (os error 111)`.
fn tidy(reason: &str) -> String {
    let trimmed = match reason.find(" (os error") {
        Some(at) => &reason[..at],
        None => reason,
    };
    let mut chars = trimmed.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Io { reason, .. } => tidy(reason),
        other => other.to_string(),
    }
}

/// The master address of a broker, if it has one.
fn master_addr(broker: &BrokerData) -> Option<&String> {
    broker.broker_addrs.get(&MASTER_ID)
}

impl Admin {
    /// A client of these name servers (`host:port` each), tried in the order given.
    pub fn new<I, S>(namesrv: I) -> Result<Admin, AdminError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let namesrv: Vec<String> = namesrv.into_iter().map(Into::into).collect();
        if namesrv.is_empty() {
            return Err(AdminError::NoNameServer);
        }
        for addr in &namesrv {
            check_addr(addr)?;
        }
        Ok(Admin {
            namesrv,
            timeout: DEFAULT_TIMEOUT,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Sets how long a connection or an answer may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Admin {
        self.timeout = timeout;
        self
    }

    /// The name servers, in the order they are tried.
    pub fn namesrv_addrs(&self) -> &[String] {
        &self.namesrv
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, HashMap<String, RemotingClient>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection to `addr`, opened if there is none (trying each address the host resolves
    /// to); the error is the reason, for the caller to attribute.
    async fn client(&self, addr: &str) -> Result<RemotingClient, String> {
        if let Some(client) = self.cached().get(addr).filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let resolved: Vec<SocketAddr> =
            match tokio::time::timeout(self.timeout, tokio::net::lookup_host(addr)).await {
                Ok(Ok(found)) => found.collect(),
                Ok(Err(e)) => {
                    return Err(format!("cannot resolve the host: {}", tidy(&e.to_string())));
                }
                Err(_) => return Err(format!("cannot resolve the host within {:?}", self.timeout)),
            };
        let mut last = format!("{addr} resolves to no address");
        for socket in resolved {
            match tokio::time::timeout(self.timeout, RemotingClient::connect(socket)).await {
                Ok(Ok(client)) => {
                    self.cached().insert(addr.to_string(), client.clone());
                    return Ok(client);
                }
                Ok(Err(e)) => last = describe(&e),
                Err(_) => last = format!("no connection within {:?}", self.timeout),
            }
        }
        Err(last)
    }

    /// Sends `request` to `addr` and waits for the answer; a failed connection is forgotten so
    /// the next call opens a new one.
    async fn ask(&self, addr: &str, request: RemotingCommand) -> Result<RemotingCommand, String> {
        let client = self.client(addr).await?;
        match client.invoke(request, self.timeout).await {
            Ok(answer) => Ok(answer),
            Err(e) => {
                self.cached().remove(addr);
                Err(match e {
                    ClientError::Timeout { .. } => format!("no answer within {:?}", self.timeout),
                    other => describe(&other),
                })
            }
        }
    }

    /// Asks the name servers in turn until one answers; returns which one did and its answer.
    async fn ask_namesrv(
        &self,
        request: RemotingCommand,
    ) -> Result<(String, RemotingCommand), AdminError> {
        let mut failures = Vec::new();
        for addr in &self.namesrv {
            match self.ask(addr, request.clone()).await {
                Ok(answer) => return Ok((addr.clone(), answer)),
                Err(reason) => failures.push(Unreachable {
                    addr: addr.clone(),
                    reason,
                }),
            }
        }
        Err(AdminError::NameServerUnreachable(failures))
    }

    /// Asks one broker.
    async fn ask_broker(
        &self,
        addr: &str,
        request: RemotingCommand,
    ) -> Result<RemotingCommand, AdminError> {
        self.ask(addr, request).await.map_err(|reason| {
            AdminError::BrokerUnreachable(Unreachable {
                addr: addr.to_string(),
                reason,
            })
        })
    }

    /// Asks one broker and insists on success.
    async fn ask_broker_ok(
        &self,
        addr: &str,
        what: &'static str,
        request: RemotingCommand,
    ) -> Result<RemotingCommand, AdminError> {
        let answer = self.ask_broker(addr, request).await?;
        success(addr, what, answer)
    }

    /// Clusters and their brokers, as the first name server that answers knows them.
    pub async fn cluster_info(&self) -> Result<ClusterInfo, AdminError> {
        const WHAT: &str = "the cluster list";
        let (server, answer) = self
            .ask_namesrv(RemotingCommand::request(request::GET_BROKER_CLUSTER_INFO))
            .await?;
        let answer = success(&server, WHAT, answer)?;
        decode(&server, WHAT, &answer)
    }

    /// Every broker of every cluster, sorted by cluster, name and id.
    pub async fn cluster_list(&self) -> Result<Vec<ClusterBroker>, AdminError> {
        let info = self.cluster_info().await?;
        let mut brokers: Vec<ClusterBroker> = info
            .broker_addr_table
            .values()
            .flat_map(|b| {
                b.broker_addrs.iter().map(|(id, addr)| ClusterBroker {
                    cluster: b.cluster.clone(),
                    broker_name: b.broker_name.clone(),
                    broker_id: *id,
                    addr: addr.clone(),
                })
            })
            .collect();
        brokers.sort();
        Ok(brokers)
    }

    /// The master brokers a selector names, sorted. An address the name servers do not know is
    /// still used, with the address as its name.
    pub async fn brokers(&self, selector: &BrokerSelector) -> Result<Vec<BrokerRef>, AdminError> {
        if let BrokerSelector::Addr(addr) = selector {
            check_addr(addr)?;
        }
        let info = self.cluster_info().await?;
        let masters = info.broker_addr_table.values().filter_map(|b| {
            master_addr(b).map(|addr| BrokerRef {
                cluster: b.cluster.clone(),
                broker_name: b.broker_name.clone(),
                addr: addr.clone(),
            })
        });
        let mut chosen: Vec<BrokerRef> = match selector {
            BrokerSelector::All => masters.collect(),
            BrokerSelector::Cluster(cluster) => masters.filter(|b| &b.cluster == cluster).collect(),
            BrokerSelector::Addr(addr) => {
                let known = info
                    .broker_addr_table
                    .values()
                    .find(|b| b.broker_addrs.values().any(|a| a == addr));
                vec![BrokerRef {
                    cluster: known.map(|b| b.cluster.clone()).unwrap_or_default(),
                    broker_name: known.map_or_else(|| addr.clone(), |b| b.broker_name.clone()),
                    addr: addr.clone(),
                }]
            }
        };
        if chosen.is_empty() {
            return Err(AdminError::NoBroker(match selector {
                BrokerSelector::Cluster(cluster) => {
                    let known: Vec<&String> = info.cluster_addr_table.keys().collect();
                    format!("no master broker in cluster {cluster} (known clusters: {known:?})")
                }
                _ => "the name servers know no master broker".to_string(),
            }));
        }
        chosen.sort();
        Ok(chosen)
    }

    /// Every topic the first name server that answers knows, sorted.
    pub async fn topic_list(&self) -> Result<Vec<String>, AdminError> {
        const WHAT: &str = "the topic list";
        let (server, answer) = self
            .ask_namesrv(RemotingCommand::request(
                request::GET_ALL_TOPIC_LIST_FROM_NAMESERVER,
            ))
            .await?;
        let answer = success(&server, WHAT, answer)?;
        let list: TopicList = decode(&server, WHAT, &answer)?;
        Ok(list.topic_list.into_iter().collect())
    }

    /// Runtime figures of the brokers a selector names (`GET_BROKER_RUNTIME_INFO`).
    pub async fn broker_status(
        &self,
        selector: &BrokerSelector,
    ) -> Result<Vec<BrokerStatus>, AdminError> {
        const WHAT: &str = "its runtime figures";
        let mut out = Vec::new();
        for broker in self.brokers(selector).await? {
            let answer = self
                .ask_broker_ok(
                    &broker.addr,
                    WHAT,
                    RemotingCommand::request(request::GET_BROKER_RUNTIME_INFO),
                )
                .await?;
            let table: bodies::KvTable = decode(&broker.addr, WHAT, &answer)?;
            out.push(BrokerStatus {
                cluster: broker.cluster,
                broker_name: broker.broker_name,
                addr: broker.addr,
                table: table.table,
            });
        }
        Ok(out)
    }
}

/// The answer if it is a success, else the server's refusal.
fn success(
    server: &str,
    what: &'static str,
    answer: RemotingCommand,
) -> Result<RemotingCommand, AdminError> {
    if answer.code == response::SUCCESS {
        Ok(answer)
    } else {
        Err(refused(server, what, &answer))
    }
}

fn refused(server: &str, what: &'static str, answer: &RemotingCommand) -> AdminError {
    AdminError::Refused {
        server: server.to_string(),
        what,
        code: answer.code,
        remark: answer
            .remark
            .clone()
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "no reason given".into()),
    }
}

/// Decodes an answer's JSON body.
fn decode<T: serde::de::DeserializeOwned>(
    server: &str,
    what: &'static str,
    answer: &RemotingCommand,
) -> Result<T, AdminError> {
    decode_json(what, &answer.body_bytes()).map_err(|e| AdminError::BadAnswer {
        server: server.to_string(),
        what,
        reason: e.reason,
    })
}

/// A header field of an answer parsed as `T`.
fn answer_field<T: std::str::FromStr>(
    server: &str,
    what: &'static str,
    answer: &RemotingCommand,
    field: &'static str,
) -> Result<T, AdminError> {
    answer
        .required_parsed(field)
        .map_err(|e| AdminError::BadAnswer {
            server: server.to_string(),
            what,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_and_lists_split() {
        assert_eq!(parse_addr_list(" a:1; b:2 ,c:3;;"), ["a:1", "b:2", "c:3"]);
        assert!(Admin::new(Vec::<String>::new()).is_err());
        assert!(matches!(
            Admin::new(["localhost"]),
            Err(AdminError::BadAddress { .. })
        ));
        assert!(Admin::new(["localhost:0"]).is_err());
        assert!(Admin::new(["[::1]:9876", "host:1"]).is_ok());
    }

    #[test]
    fn io_errors_read_as_plain_words() {
        assert_eq!(
            tidy("Connection refused (os error 111)"),
            "connection refused"
        );
        assert_eq!(tidy(""), "");
    }

    #[tokio::test]
    async fn an_unreachable_name_server_is_named_with_its_cause() {
        // A port nothing listens on: bind, learn it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let admin = Admin::new([addr.clone()]).unwrap();
        let err = admin.topic_list().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot reach name server {addr}: connection refused")
        );
    }
}
