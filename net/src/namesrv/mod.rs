//! The name server: a route registry brokers register with and clients ask for routes.
//!
//! Stateless by design: nothing is written to disk. Every broker registers with every name
//! server every 30 s, so a restarted name server is whole again after one round. A broker that
//! stops registering is dropped after `broker_expiry_ms`; one whose connection closes is dropped
//! at once.
//!
//! ```no_run
//! use quiver_net::namesrv::{NameServer, NamesrvConfig};
//!
//! let config = NamesrvConfig { listen: "127.0.0.1:9876".parse().unwrap(), ..NamesrvConfig::default() };
//! let server = NameServer::start(config).expect("port 9876 is free");
//! println!("name server on {}", server.local_addr());
//! server.shutdown();
//! ```

pub mod routes;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use self::routes::{Registration, RouteTable};
use crate::StartError;
use crate::protocol::route::{DataVersion, RegisterBrokerBody};
use crate::protocol::{decode_json, encode_json};
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{request, response};
use crate::remoting::frame::FrameCodec;
use crate::server::{Connection, ServeOptions, Service, serve};
use quiver_engine::ConfigError;

/// The name server's default port, as RocketMQ's.
pub const DEFAULT_NAMESRV_PORT: u16 = 9876;

/// Name server settings; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamesrvConfig {
    /// Address to listen on. Default `0.0.0.0:9876`.
    pub listen: SocketAddr,
    /// A broker that has not registered for this long is dropped. Default 120,000, as
    /// RocketMQ's `BROKER_CHANNEL_EXPIRED_TIME`.
    pub broker_expiry_ms: u64,
    /// How often expired brokers are looked for. Default 5,000, as RocketMQ 5's
    /// `scanNotActiveBrokerInterval`.
    pub scan_interval_ms: u64,
    /// Largest frame accepted, length prefix included. Default 16 MiB.
    pub max_frame_bytes: usize,
}

impl Default for NamesrvConfig {
    fn default() -> Self {
        NamesrvConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_NAMESRV_PORT)),
            broker_expiry_ms: 120_000,
            scan_interval_ms: 5_000,
            max_frame_bytes: crate::remoting::frame::DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

impl NamesrvConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.into(),
        };
        if self.broker_expiry_ms < 1_000 {
            return Err(invalid("broker_expiry_ms", "must be at least 1000"));
        }
        if self.scan_interval_ms == 0 || self.scan_interval_ms > self.broker_expiry_ms {
            return Err(invalid(
                "scan_interval_ms",
                "must be at least 1 and at most broker_expiry_ms",
            ));
        }
        crate::check_max_frame_bytes(self.max_frame_bytes)
    }
}

/// A running name server.
pub struct NameServer {
    addr: SocketAddr,
    table: Arc<Mutex<RouteTable>>,
    stop: flume::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NameServer {
    /// Binds and starts serving on its own thread.
    pub fn start(config: NamesrvConfig) -> Result<NameServer, StartError> {
        config.validate()?;
        let listener =
            crate::listen::bind(config.listen, false).map_err(|source| StartError::Io {
                op: format!("listening on {}", config.listen),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Io {
            op: "reading the listening address".into(),
            source,
        })?;
        let table = Arc::new(Mutex::new(RouteTable::default()));
        let (stop, stopped) = flume::bounded::<()>(1);
        let service = NameServerService {
            table: Arc::clone(&table),
            broker_expiry: Duration::from_millis(config.broker_expiry_ms),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("quiver-namesrv".into())
            .spawn(move || run(listener, service, config, stopped, ready_tx))
            .map_err(|source| StartError::Io {
                op: "starting the name server thread".into(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                let _ = thread.join();
                return Err(StartError::Io {
                    op: "starting the name server runtime".into(),
                    source,
                });
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StartError::Io {
                    op: "starting the name server runtime".into(),
                    source: std::io::Error::other("the name server thread stopped"),
                });
            }
        }
        tracing::info!(%addr, "name server listening");
        Ok(NameServer {
            addr,
            table,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port resolved if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Addresses of the brokers it currently knows alive.
    pub fn live_brokers(&self) -> Vec<String> {
        lock(&self.table).live_brokers()
    }

    /// Stops accepting and waits for the thread to end.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the name server thread panicked");
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn lock(table: &Mutex<RouteTable>) -> std::sync::MutexGuard<'_, RouteTable> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(
    listener: std::net::TcpListener,
    service: NameServerService,
    config: NamesrvConfig,
    stopped: flume::Receiver<()>,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let runtime = match compio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match compio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let table = Arc::clone(&service.table);
        let scan = Duration::from_millis(config.scan_interval_ms);
        compio::runtime::spawn(async move {
            loop {
                compio::time::sleep(scan).await;
                for addr in lock(&table).expire(Instant::now()) {
                    tracing::warn!(broker = %addr, "broker expired: no registration within the expiry time");
                }
            }
        })
        .detach();
        let options = ServeOptions::new(FrameCodec::new(config.max_frame_bytes));
        serve(listener, Rc::new(service), options, async move {
            let _ = stopped.recv_async().await;
        })
        .await;
    });
}

struct NameServerService {
    table: Arc<Mutex<RouteTable>>,
    broker_expiry: Duration,
}

impl Service for NameServerService {
    async fn handle(
        self: Rc<Self>,
        connection: Connection,
        request: RemotingCommand,
    ) -> Option<RemotingCommand> {
        let answer = match request.code {
            request::REGISTER_BROKER => self.register_broker(&connection, &request),
            request::UNREGISTER_BROKER => self.unregister_broker(&request),
            request::QUERY_DATA_VERSION => self.query_data_version(&request),
            request::GET_ROUTEINFO_BY_TOPIC => self.route(&request),
            request::GET_BROKER_CLUSTER_INFO => {
                Ok(RemotingCommand::response_to(&request, response::SUCCESS)
                    .with_body(encode_json(&lock(&self.table).cluster_info())))
            }
            request::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => {
                Ok(RemotingCommand::response_to(&request, response::SUCCESS)
                    .with_body(encode_json(&lock(&self.table).topics())))
            }
            request::DELETE_TOPIC_IN_NAMESRV => self.delete_topic(&request),
            code => Ok(crate::not_supported(&request, code)),
        };
        Some(answer.unwrap_or_else(|remark| {
            RemotingCommand::response_to(&request, response::SYSTEM_ERROR).with_remark(remark)
        }))
    }

    fn closed(&self, connection: &Connection) {
        for addr in lock(&self.table).connection_closed(connection.id()) {
            tracing::info!(broker = %addr, "broker connection closed; its routes are dropped");
        }
    }
}

impl NameServerService {
    /// `QUERY_DATA_VERSION`: `changed` says whether the broker must register its topics again;
    /// the body is the version registered here.
    fn query_data_version(&self, request: &RemotingCommand) -> Result<RemotingCommand, String> {
        let broker_addr = request.required("brokerAddr").map_err(|e| e.to_string())?;
        let version: DataVersion =
            decode_json("DataVersion", &request.body_bytes()).map_err(|e| e.to_string())?;
        let (changed, held) =
            lock(&self.table).query_data_version(broker_addr, &version, Instant::now());
        let mut answer =
            RemotingCommand::response_to(request, response::SUCCESS).with_field("changed", changed);
        if let Some(held) = held {
            answer = answer.with_body(encode_json(&held));
        }
        Ok(answer)
    }

    fn register_broker(
        &self,
        connection: &Connection,
        request: &RemotingCommand,
    ) -> Result<RemotingCommand, String> {
        let field = |e: crate::remoting::FieldError| e.to_string();
        let broker_name = request.required("brokerName").map_err(field)?;
        let broker_addr = request.required("brokerAddr").map_err(field)?;
        let cluster = request.required("clusterName").map_err(field)?;
        let broker_id: i64 = request.required_parsed("brokerId").map_err(field)?;
        let ha_server_addr = request.field("haServerAddr").unwrap_or_default();
        let timeout = request
            .optional_parsed::<u64>("heartbeatTimeoutMillis")
            .map_err(field)?
            .map_or(self.broker_expiry, Duration::from_millis);
        if request
            .optional_parsed::<bool>("compressed")
            .map_err(field)?
            == Some(true)
        {
            return Err("compressed broker registrations are not supported".into());
        }
        let body = request.body_bytes();
        let crc: i32 = request
            .optional_parsed("bodyCrc32")
            .map_err(field)?
            .unwrap_or(0);
        if crc != 0 && crc != crate::message::body_crc(&body) {
            return Err("crc32 not match".into());
        }
        let registered: RegisterBrokerBody = if body.is_empty() {
            RegisterBrokerBody::default()
        } else {
            decode_json("RegisterBrokerBody", &body).map_err(|e| e.to_string())?
        };
        let registration = Registration {
            cluster: cluster.to_string(),
            broker_name: broker_name.to_string(),
            broker_addr: broker_addr.to_string(),
            broker_id,
            ha_server_addr: ha_server_addr.to_string(),
            timeout,
            topics: registered.topic_config_serialize_wrapper,
            connection: Some(connection.id()),
        };
        tracing::debug!(
            broker = broker_addr,
            topics = registration.topics.topic_config_table.len(),
            "broker registered"
        );
        let answer = lock(&self.table).register(registration, Instant::now());
        let mut response = RemotingCommand::response_to(request, response::SUCCESS);
        if let Some(master) = answer.master_addr {
            response = response.with_field("masterAddr", master);
        }
        if let Some(ha) = answer.ha_server_addr {
            response = response.with_field("haServerAddr", ha);
        }
        Ok(response)
    }

    fn unregister_broker(&self, request: &RemotingCommand) -> Result<RemotingCommand, String> {
        let field = |e: crate::remoting::FieldError| e.to_string();
        let broker_name = request.required("brokerName").map_err(field)?;
        let broker_addr = request.required("brokerAddr").map_err(field)?;
        let broker_id: i64 = request.required_parsed("brokerId").map_err(field)?;
        lock(&self.table).unregister(broker_name, broker_addr, broker_id);
        tracing::info!(broker = broker_addr, "broker unregistered");
        Ok(RemotingCommand::response_to(request, response::SUCCESS))
    }

    fn route(&self, request: &RemotingCommand) -> Result<RemotingCommand, String> {
        let topic = request.required("topic").map_err(|e| e.to_string())?;
        Ok(match lock(&self.table).route(topic) {
            Some(route) => RemotingCommand::response_to(request, response::SUCCESS)
                .with_body(encode_json(&route)),
            None => RemotingCommand::response_to(request, response::TOPIC_NOT_EXIST).with_remark(
                format!("No topic route info in name server for the topic: {topic}"),
            ),
        })
    }

    fn delete_topic(&self, request: &RemotingCommand) -> Result<RemotingCommand, String> {
        let topic = request.required("topic").map_err(|e| e.to_string())?;
        let cluster = request.field("clusterName").filter(|c| !c.is_empty());
        lock(&self.table).delete_topic(topic, cluster);
        Ok(RemotingCommand::response_to(request, response::SUCCESS))
    }
}
