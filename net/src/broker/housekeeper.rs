//! The broker's housekeeping thread: registration with every name server (at start, every
//! `register_interval_ms`, and at once after a topic change), the periodic write of consumer
//! offsets, and the expiry of silent clients. None of it is on the message path, so it runs
//! on its own small tokio runtime beside the shard threads, with the tokio remoting client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::client::{ClientError, RemotingClient};
use crate::protocol::encode_json;
use crate::protocol::route::RegisterBrokerBody;
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{request, response};

use super::Shared;
use super::clients::notify;

/// How long a name server has to answer a registration.
const REGISTER_TIMEOUT_MS: u64 = 3_000;

/// How often silent clients are looked for (RocketMQ scans every 10 s).
const CLIENT_SCAN_INTERVAL_MS: u64 = 10_000;

/// Work for the housekeeping thread.
pub(crate) enum Job {
    /// Register with every name server now; answer on `done` when every one has answered or
    /// timed out.
    Register { done: Option<flume::Sender<()>> },
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
        if self.jobs.send(Job::Register { done: Some(done) }).is_ok() {
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
            _ = register.tick() => Job::Register { done: None },
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
            Job::Register { done } => {
                namesrvs.register_all(&shared).await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Job::Stop { done } => {
                namesrvs.unregister_all(&shared).await;
                if let Err(e) = shared.offsets.persist() {
                    tracing::error!(error = %e, "writing consumer offsets at shutdown failed");
                }
                let _ = done.send(());
                return;
            }
        }
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

    async fn register_all(&mut self, shared: &Arc<Shared>) {
        let body = RegisterBrokerBody {
            filter_server_list: Vec::new(),
            topic_config_serialize_wrapper: shared.topics.snapshot(),
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
        for addr in config.namesrv_addrs.clone() {
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
