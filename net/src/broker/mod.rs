//! The broker: RocketMQ's broker protocol served from the storage engine.
//!
//! The front runs on the store's shard threads: every thread has its own listener on the
//! broker port (`SO_REUSEPORT`, so the kernel spreads connections across threads) and serves
//! its connections on its own compio runtime. A request for a queue owned by a shard of the
//! same thread is a direct call; for another thread's shard it is one hand-off over that
//! thread's channel (a whole batch in one hand-off). State every thread needs (topics, consumer
//! offsets, clients, queue locks) is shared behind short-held locks. Registration with name
//! servers, offset writes and client expiry run on a small housekeeping thread.
//!
//! ```no_run
//! use quiver_net::broker::{Broker, BrokerConfig};
//!
//! let config = BrokerConfig { data_dir: "./data".into(), ..BrokerConfig::default() };
//! let broker = Broker::start(config).expect("broker started");
//! println!("broker on {}", broker.local_addr());
//! broker.shutdown().expect("clean shutdown");
//! ```

mod admin;
pub mod clients;
pub mod config;
mod consumer;
mod housekeeper;
pub mod locks;
pub mod offsets;
pub mod persist;
mod pull;
mod query;
mod send;
mod service;
pub mod topic_journal;
pub mod topics;
mod wire;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver_engine::store::Store;
use quiver_engine::store::types::StoreError;
use tokio::sync::mpsc;

use self::clients::ClientRegistry;
pub use self::config::BrokerConfig;
use self::housekeeper::{Housekeeper, Job};
use self::locks::QueueLocks;
use self::offsets::ConsumerOffsets;
use self::service::BrokerService;
use self::topics::TopicTable;
use crate::StartError;
use crate::protocol::route::TopicConfig;
use crate::remoting::frame::FrameCodec;
use crate::server::{ServeOptions, serve};

/// What every shard thread's front shares.
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    /// `ip:port` clients are told.
    pub(crate) broker_addr: String,
    /// The same, as the store host in message ids.
    pub(crate) store_host: SocketAddr,
    pub(crate) topics: TopicTable,
    pub(crate) offsets: ConsumerOffsets,
    pub(crate) clients: ClientRegistry,
    pub(crate) locks: QueueLocks,
    jobs: mpsc::UnboundedSender<Job>,
}

impl Shared {
    /// Asks for a registration with the name servers without waiting for it.
    pub(crate) fn register_soon(&self) {
        let _ = self.jobs.send(Job::Register {
            done: None,
            topics: None,
        });
    }

    /// Registers `topic` (new or changed) with the name servers soon: that topic alone, so a
    /// change costs the same however many topics there are.
    pub(crate) fn register_topic_soon(&self, topic: TopicConfig) {
        let _ = self.jobs.send(Job::Register {
            done: None,
            topics: Some(vec![topic]),
        });
    }

    /// Registers `topic` with the name servers and completes when each has answered or timed
    /// out.
    pub(crate) async fn register_topic_now(&self, topic: TopicConfig) {
        let (done, finished) = flume::bounded(1);
        let job = Job::Register {
            done: Some(done),
            topics: Some(vec![topic]),
        };
        if self.jobs.send(job).is_ok() {
            let _ = finished.recv_async().await;
        }
    }
}

/// A running broker.
pub struct Broker {
    addr: SocketAddr,
    shared: Arc<Shared>,
    housekeeper: Housekeeper,
    store: Option<Store>,
    /// Descriptors kept from connections for the store (dropped after it).
    _reservation: crate::server::Reservation,
}

type Listeners = Vec<Option<(std::net::TcpListener, Option<std::net::TcpListener>)>>;

/// Descriptors a shard holds besides index files: log segments (the current and those
/// prepared), checkpoints, the lock, its io_uring runtime and listeners.
const STORE_FDS_PER_SHARD: usize = 24;

impl Broker {
    /// Opens the store (recovering it), binds the port on every shard thread, and registers
    /// with the name servers.
    pub fn start(config: BrokerConfig) -> Result<Broker, StartError> {
        config.validate()?;
        let config_dir = config.data_dir.join("config");
        let io = |op: &str| {
            let op = op.to_string();
            move |source| StartError::Io { op, source }
        };
        std::fs::create_dir_all(&config_dir).map_err(io("creating the data directory"))?;
        let topics = TopicTable::open(
            config_dir.join("topics.json"),
            config.auto_create_topic,
            config.default_topic_queue_nums,
            &config.cluster_name,
            &config.broker_name,
        )
        .map_err(|e| StartError::Io {
            op: "loading topics".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let offsets =
            ConsumerOffsets::open(config_dir.join("consumerOffset.json")).map_err(|e| {
                StartError::Io {
                    op: "loading consumer offsets".into(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;

        let threads = config.store.thread_count();
        // Kept from connections: the index-file budget, and per shard its log segments,
        // checkpoints and runtime.
        let reservation = crate::server::reserve_descriptors(
            config.store.open_files_budget() + STORE_FDS_PER_SHARD * threads,
        );
        let (listeners, addr) = bind_listeners(&config, threads)?;
        let store_host = SocketAddr::new(config.advertised_ip(), addr.port());
        let (jobs, jobs_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            broker_addr: store_host.to_string(),
            store_host,
            topics,
            offsets,
            clients: ClientRegistry::default(),
            locks: QueueLocks::new(Duration::from_millis(config.lock_ttl_ms)),
            jobs: jobs.clone(),
            config: config.clone(),
        });

        let listeners = Arc::new(Mutex::new(listeners));
        let service_shared = Arc::clone(&shared);
        let options = ServeOptions {
            idle_timeout: Duration::from_millis(config.connection_idle_timeout_ms),
            ..ServeOptions::new(FrameCodec::new(config.max_frame_bytes))
        }
        .with_output_max_bytes(config.connection_max_output_bytes);
        let service: quiver_engine::store::ThreadService = Arc::new(move |shards| {
            let shared = Arc::clone(&service_shared);
            let taken = listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(shards.thread_index())
                .and_then(Option::take);
            Box::pin(async move {
                let Some((main, vip)) = taken else {
                    tracing::error!(
                        thread = shards.thread_index(),
                        "no listener for this thread"
                    );
                    return;
                };
                let service = Rc::new(BrokerService::new(shared, shards.clone()));
                if let Some(vip) = vip {
                    match compio::net::TcpListener::from_std(vip) {
                        Ok(vip) => {
                            let (service, shards) = (Rc::clone(&service), shards.clone());
                            compio::runtime::spawn(async move {
                                serve(vip, service, options, shards.stopping()).await;
                            })
                            .detach();
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot serve the VIP port"),
                    }
                }
                match compio::net::TcpListener::from_std(main) {
                    Ok(main) => serve(main, service, options, shards.stopping()).await,
                    Err(e) => tracing::error!(error = %e, "cannot serve the broker port"),
                }
            })
        });
        let store =
            Store::open_with_service(config.data_dir.join("store"), config.store.clone(), service)?;
        let housekeeper = Housekeeper::start(Arc::downgrade(&shared), jobs, jobs_rx)
            .map_err(io("starting the housekeeping thread"))?;
        // Clients may ask the name servers for routes as soon as `start` returns, so the first
        // registration is awaited (an unreachable name server only costs its timeout).
        housekeeper.register_and_wait();
        tracing::info!(%addr, advertised = %shared.broker_addr, "broker listening");
        Ok(Broker {
            addr,
            shared,
            housekeeper,
            store: Some(store),
            _reservation: reservation,
        })
    }

    /// The address it listens on (with the port resolved if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `ip:port` it registers and clients connect to.
    pub fn advertised_addr(&self) -> &str {
        &self.shared.broker_addr
    }

    /// The store under it.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Unregisters from the name servers, writes consumer offsets, stops serving, and closes
    /// the store (flushing it).
    pub fn shutdown(mut self) -> Result<(), StoreError> {
        self.housekeeper.stop();
        match self.store.take() {
            Some(store) => futures_executor::block_on(store.shutdown()),
            None => Ok(()),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            self.housekeeper.stop();
            if let Err(e) = futures_executor::block_on(store.shutdown()) {
                tracing::error!(error = %e, "closing the store failed");
            }
        }
    }
}

/// One listener per shard thread on the broker port (and on the VIP port, if asked and free).
fn bind_listeners(
    config: &BrokerConfig,
    threads: usize,
) -> Result<(Listeners, SocketAddr), StartError> {
    let bind = |addr: SocketAddr| {
        crate::listen::bind(addr, true).map_err(|source| StartError::Io {
            op: format!("listening on {addr}"),
            source,
        })
    };
    let first = bind(config.listen)?;
    let addr = first.local_addr().map_err(|source| StartError::Io {
        op: "reading the listening address".into(),
        source,
    })?;
    let mut mains = vec![first];
    for _ in 1..threads {
        mains.push(bind(addr)?);
    }
    let mut vips: Vec<Option<std::net::TcpListener>> = (0..threads).map(|_| None).collect();
    if config.vip_channel && addr.port() > 2 {
        let vip_addr = SocketAddr::new(addr.ip(), addr.port() - 2);
        let bound: Result<Vec<_>, _> = (0..threads)
            .map(|_| crate::listen::bind(vip_addr, true))
            .collect();
        match bound {
            Ok(bound) => vips = bound.into_iter().map(Some).collect(),
            Err(e) => {
                tracing::warn!(%vip_addr, error = %e, "cannot listen on the VIP port; clients using it will fail")
            }
        }
    }
    Ok((
        mains
            .into_iter()
            .zip(vips)
            .map(|(main, vip)| Some((main, vip)))
            .collect(),
        addr,
    ))
}
