//! The broker's housekeeping thread: registration with every name server (at start, every
//! `register_interval_ms`, and at once after a topic change), the periodic write of consumer
//! offsets, and the expiry of silent clients. None of it is on the message path, so it runs
//! on its own small tokio runtime beside the shard threads, with the tokio remoting client.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::client::{ClientError, RemotingClient};
use crate::protocol::encode_json;
use crate::protocol::route::{RegisterBrokerBody, TopicConfig, TopicConfigWrapper};
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{request, response};

use super::Shared;
use super::clients::notify;

/// How long a name server has to answer a registration.
const REGISTER_TIMEOUT_MS: u64 = 3_000;

/// Topics per registration request: a broker with more registers them in parts, as RocketMQ's
/// `splitRegistrationSize` (800), so no request grows with the number of topics.
pub(crate) const REGISTER_TOPICS_PER_REQUEST: usize = 800;

/// How often silent clients are looked for (RocketMQ scans every 10 s).
const CLIENT_SCAN_INTERVAL_MS: u64 = 10_000;

/// Work for the housekeeping thread.
pub(crate) enum Job {
    /// Register with every name server now: every topic (in parts), or only `topics` (new or
    /// changed ones); answer on `done` when every one has answered or timed out.
    Register {
        done: Option<flume::Sender<()>>,
        topics: Option<Vec<TopicConfig>>,
    },
    /// The periodic round: ask each name server whether it holds this broker's current topic
    /// table (`QUERY_DATA_VERSION`, which renews the registration when it does) and register
    /// every topic, in parts, only with those that do not.
    Renew,
    /// Unregister, write the offsets, and stop.
    Stop { done: std::sync::mpsc::Sender<()> },
}

/// Handle to the housekeeping thread.
pub(crate) struct Housekeeper {
    jobs: mpsc::UnboundedSender<Job>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Housekeeper {
    /// Starts the thread; the periodic registration starts one interval later (the first one
    /// is asked for by [`Housekeeper::register_and_wait`]).
    pub(crate) fn start(
        shared: std::sync::Weak<Shared>,
        jobs: mpsc::UnboundedSender<Job>,
        rx: mpsc::UnboundedReceiver<Job>,
    ) -> std::io::Result<Housekeeper> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("quiver-housekeeper".into())
            .spawn(move || runtime.block_on(run(shared, rx)))?;
        Ok(Housekeeper {
            jobs,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Registers with every name server and returns when each has answered or timed out.
    pub(crate) fn register_and_wait(&self) {
        let (done, finished) = flume::bounded(1);
        let job = Job::Register {
            done: Some(done),
            topics: None,
        };
        if self.jobs.send(job).is_ok() {
            let _ = finished.recv_timeout(Duration::from_millis(2 * REGISTER_TIMEOUT_MS));
        }
    }

    /// Unregisters, writes the offsets, and joins the thread.
    pub(crate) fn stop(&self) {
        let (done, finished) = std::sync::mpsc::channel();
        if self.jobs.send(Job::Stop { done }).is_ok() {
            let _ = finished.recv_timeout(Duration::from_secs(10));
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the housekeeping thread panicked");
        }
    }
}

async fn run(shared: std::sync::Weak<Shared>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let Some(first) = shared.upgrade() else {
        return;
    };
    let config = first.config.clone();
    drop(first);
    let mut namesrvs = NameServers::default();
    let register_every = Duration::from_millis(config.register_interval_ms);
    let mut register =
        tokio::time::interval_at(tokio::time::Instant::now() + register_every, register_every);
    let mut offsets = tokio::time::interval(Duration::from_millis(config.offset_flush_interval_ms));
    let mut clients = tokio::time::interval(Duration::from_millis(CLIENT_SCAN_INTERVAL_MS));
    for timer in [&mut register, &mut offsets, &mut clients] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        let job = tokio::select! {
            _ = register.tick() => Job::Renew,
            _ = offsets.tick() => {
                if let Some(shared) = shared.upgrade()
                    && let Err(e) = shared.offsets.persist()
                {
                    tracing::error!(error = %e, "writing consumer offsets failed");
                }
                continue;
            }
            _ = clients.tick() => {
                if let Some(shared) = shared.upgrade() {
                    let expiry = Duration::from_millis(shared.config.client_expiry_ms);
                    notify(shared.clients.expire(Instant::now(), expiry));
                }
                continue;
            }
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match job {
            Job::Register { done, topics } => {
                // Registrations queued meanwhile go in the same round: many topics created at
                // once make one request, not one each.
                let mut dones: Vec<_> = done.into_iter().collect();
                let mut topics = topics;
                let mut stop_next = None;
                while let Ok(job) = jobs.try_recv() {
                    match job {
                        Job::Register { done, topics: more } => {
                            dones.extend(done);
                            topics = match (topics, more) {
                                (Some(mut some), Some(more)) => {
                                    some.extend(more);
                                    Some(some)
                                }
                                _ => None,
                            };
                        }
                        Job::Renew => {}
                        Job::Stop { done } => {
                            stop_next = Some(done);
                            break;
                        }
                    }
                }
                namesrvs.register(&shared, topics).await;
                for done in dones {
                    let _ = done.send(());
                }
                if let Some(done) = stop_next {
                    stop(&mut namesrvs, &shared).await;
                    let _ = done.send(());
                    return;
                }
            }
            Job::Renew => namesrvs.renew(&shared).await,
            Job::Stop { done } => {
                stop(&mut namesrvs, &shared).await;
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Unregisters and writes the offsets.
async fn stop(namesrvs: &mut NameServers, shared: &Arc<Shared>) {
    namesrvs.unregister_all(shared).await;
    if let Err(e) = shared.offsets.persist() {
        tracing::error!(error = %e, "writing consumer offsets at shutdown failed");
    }
}

/// Connections to the name servers, reopened when they break.
#[derive(Default)]
struct NameServers {
    clients: HashMap<String, RemotingClient>,
}

impl NameServers {
    async fn client(&mut self, addr: &str) -> Result<RemotingClient, String> {
        if let Some(client) = self.clients.get(addr)
            && !client.is_closed()
        {
            return Ok(client.clone());
        }
        let resolved: SocketAddr = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| format!("{addr} resolves to nothing"))?;
        let client = RemotingClient::connect(resolved)
            .await
            .map_err(|e| e.to_string())?;
        self.clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Asks every name server whether it holds the current topic table (which renews the
    /// registration of one that does) and registers every topic with the others.
    async fn renew(&mut self, shared: &Arc<Shared>) {
        let version = shared.topics.data_version();
        let config = &shared.config;
        let ask = RemotingCommand::request(request::QUERY_DATA_VERSION)
            .with_field("brokerAddr", &shared.broker_addr)
            .with_field("brokerId", config.broker_id)
            .with_field("brokerName", &config.broker_name)
            .with_field("clusterName", &config.cluster_name)
            .with_body(encode_json(&version));
        let mut stale = Vec::new();
        for addr in config.namesrv_addrs.clone() {
            let current = match self.client(&addr).await {
                Ok(client) => client
                    .invoke(ask.clone(), Duration::from_millis(REGISTER_TIMEOUT_MS))
                    .await
                    .is_ok_and(|a| {
                        a.code == response::SUCCESS && a.field("changed") == Some("false")
                    }),
                Err(_) => false,
            };
            if !current {
                stale.push(addr);
            }
        }
        if !stale.is_empty() {
            self.register_with(shared, None, &stale).await;
        }
    }

    /// Registers every topic (`None`, in parts of [`REGISTER_TOPICS_PER_REQUEST`]) or the ones
    /// given, with the table's current version, with every name server.
    async fn register(&mut self, shared: &Arc<Shared>, topics: Option<Vec<TopicConfig>>) {
        let all = shared.config.namesrv_addrs.clone();
        self.register_with(shared, topics, &all).await;
    }

    /// [`Self::register`] with the name servers `addrs`.
    async fn register_with(
        &mut self,
        shared: &Arc<Shared>,
        topics: Option<Vec<TopicConfig>>,
        addrs: &[String],
    ) {
        let (data_version, parts): (_, Vec<BTreeMap<String, TopicConfig>>) = match topics {
            // Only the version is read: a change costs the same however many topics there are.
            Some(topics) => (
                shared.topics.data_version(),
                vec![
                    topics
                        .into_iter()
                        .map(|t| (t.topic_name.clone(), t))
                        .collect(),
                ],
            ),
            None => {
                let snapshot = shared.topics.snapshot();
                let mut parts = Vec::new();
                let mut all = snapshot.topic_config_table.into_iter();
                loop {
                    let part: BTreeMap<_, _> =
                        all.by_ref().take(REGISTER_TOPICS_PER_REQUEST).collect();
                    let last = part.len() < REGISTER_TOPICS_PER_REQUEST;
                    // At least one request, even for a broker with no topic.
                    if !part.is_empty() || parts.is_empty() {
                        parts.push(part);
                    }
                    if last {
                        break;
                    }
                }
                (snapshot.data_version, parts)
            }
        };
        for part in parts {
            let wrapper = TopicConfigWrapper {
                data_version,
                topic_config_table: part,
            };
            self.register_part(shared, wrapper, addrs).await;
        }
    }

    async fn register_part(
        &mut self,
        shared: &Arc<Shared>,
        topics: TopicConfigWrapper,
        addrs: &[String],
    ) {
        let body = RegisterBrokerBody {
            filter_server_list: Vec::new(),
            topic_config_serialize_wrapper: topics,
        };
        let body = bytes::Bytes::from(encode_json(&body));
        let crc = crate::message::body_crc(&body);
        let config = &shared.config;
        let ha_addr = SocketAddr::new(
            shared.store_host.ip(),
            shared.store_host.port().saturating_add(1),
        );
        let request = RemotingCommand::request(request::REGISTER_BROKER)
            .with_field("brokerAddr", &shared.broker_addr)
            .with_field("brokerId", config.broker_id)
            .with_field("brokerName", &config.broker_name)
            .with_field("clusterName", &config.cluster_name)
            .with_field("compressed", false)
            .with_field("enableActingMaster", false)
            .with_field("haServerAddr", ha_addr)
            .with_field("bodyCrc32", crc)
            .with_body(body);
        let mut calls = Vec::new();
        for addr in addrs.iter().cloned() {
            match self.client(&addr).await {
                Ok(client) => {
                    let request = request.clone();
                    calls.push(async move {
                        let answer = client
                            .invoke(request, Duration::from_millis(REGISTER_TIMEOUT_MS))
                            .await;
                        (addr, answer)
                    });
                }
                Err(e) => {
                    tracing::warn!(namesrv = %addr, error = %e, "cannot reach the name server to register")
                }
            }
        }
        for (addr, answer) in futures_util::future::join_all(calls).await {
            log_answer("register with", &addr, answer);
        }
    }

    async fn unregister_all(&mut self, shared: &Arc<Shared>) {
        let config = &shared.config;
        let request = RemotingCommand::request(request::UNREGISTER_BROKER)
            .with_field("brokerAddr", &shared.broker_addr)
            .with_field("brokerId", config.broker_id)
            .with_field("brokerName", &config.broker_name)
            .with_field("clusterName", &config.cluster_name);
        let mut calls = Vec::new();
        for addr in config.namesrv_addrs.clone() {
            if let Ok(client) = self.client(&addr).await {
                let request = request.clone();
                calls.push(async move {
                    let answer = client
                        .invoke(request, Duration::from_millis(REGISTER_TIMEOUT_MS))
                        .await;
                    (addr, answer)
                });
            }
        }
        for (addr, answer) in futures_util::future::join_all(calls).await {
            log_answer("unregister from", &addr, answer);
        }
    }
}

fn log_answer(what: &str, addr: &str, answer: Result<RemotingCommand, ClientError>) {
    match answer {
        Ok(answer) if answer.code == response::SUCCESS => {
            tracing::debug!(namesrv = %addr, "{what} the name server: done");
        }
        Ok(answer) => {
            tracing::warn!(namesrv = %addr, code = answer.code, remark = ?answer.remark, "{what} the name server: refused")
        }
        Err(e) => tracing::warn!(namesrv = %addr, error = %e, "{what} the name server: failed"),
    }
}
