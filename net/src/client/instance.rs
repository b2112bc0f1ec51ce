//! What every producer and consumer needs underneath (RocketMQ's `MQClientInstance`): routes
//! from the name servers, one connection per broker, periodic route refresh and heartbeats, and
//! the brokers' own requests (a group's membership changed) routed to the consumer concerned.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::task::JoinHandle;

use crate::client::{ClientConfig, MqError, RemotingClient};
use crate::protocol::bodies::MessageQueue;
use crate::protocol::heartbeat::{ConsumerData, HeartbeatData, ProducerData};
use crate::protocol::route::{PERM_READ, PERM_WRITE, TopicRouteData};
use crate::protocol::{decode_json, encode_json};
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{request, response};

/// The broker id of a master in a route's address table.
const MASTER_ID: i64 = 0;

/// What the instance needs from a consumer it serves.
pub(crate) trait ConsumerHooks: Send + Sync {
    /// Its part of the heartbeat.
    fn consumer_data(&self) -> ConsumerData;
    /// Rebalance now: the group's membership changed.
    fn rebalance_soon(&self);
}

/// Locks a std mutex, whatever a panicking holder left.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shared by one producer or consumer and its background tasks.
pub(crate) struct Instance {
    pub(crate) config: ClientConfig,
    pub(crate) client_id: String,
    pub(crate) client_ip: IpAddr,
    routes: Mutex<HashMap<String, TopicRouteData>>,
    connections: Mutex<HashMap<String, RemotingClient>>,
    connecting: tokio::sync::Mutex<()>,
    next_namesrv: AtomicUsize,
    producer_group: Mutex<Option<String>>,
    consumer: Mutex<Option<(String, Weak<dyn ConsumerHooks>)>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shut_down: AtomicBool,
}

impl Instance {
    /// Starts the instance and its periodic route refresh and heartbeat.
    pub(crate) fn start(config: ClientConfig) -> Result<Arc<Instance>, MqError> {
        if config.namesrv_addrs.is_empty() {
            return Err(MqError::NameServer("no name server address given".into()));
        }
        let client_ip = config
            .client_ip
            .unwrap_or_else(crate::listen::first_non_loopback_ipv4);
        let instance = Arc::new(Instance {
            client_id: config.client_id(),
            client_ip,
            config,
            routes: Mutex::default(),
            connections: Mutex::default(),
            connecting: tokio::sync::Mutex::new(()),
            next_namesrv: AtomicUsize::new(0),
            producer_group: Mutex::new(None),
            consumer: Mutex::new(None),
            tasks: Mutex::default(),
            shut_down: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&instance);
        let every = instance.config.refresh_interval;
        let refresher = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let Some(instance) = weak.upgrade() else {
                    return;
                };
                instance.refresh_all_routes().await;
                instance.heartbeat_all().await;
            }
        });
        instance.spawn(refresher);
        Ok(instance)
    }

    /// Keeps a task to stop at shutdown (forgetting those already finished, so a long-lived
    /// client that keeps starting tasks does not keep their handles).
    pub(crate) fn spawn(&self, task: JoinHandle<()>) {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Relaxed)
    }

    /// The address put in born hosts and message ids.
    pub(crate) fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.client_ip, 0)
    }

    pub(crate) fn set_producer_group(&self, group: &str) {
        *lock(&self.producer_group) = Some(group.to_string());
    }

    pub(crate) fn set_consumer(&self, group: &str, hooks: Weak<dyn ConsumerHooks>) {
        *lock(&self.consumer) = Some((group.to_string(), hooks));
    }

    /// The connection to `addr`, opened (again) if needed.
    pub(crate) async fn connection(
        self: &Arc<Self>,
        addr: &str,
    ) -> Result<RemotingClient, MqError> {
        if let Some(client) = self.open_connection(addr) {
            return Ok(client);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(client) = self.open_connection(addr) {
            return Ok(client);
        }
        if self.is_shut_down() {
            return Err(MqError::Shutdown);
        }
        let resolved = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| MqError::Address {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| MqError::Address {
                addr: addr.to_string(),
                reason: "resolves to nothing".into(),
            })?;
        let client = RemotingClient::connect(resolved).await?;
        if let Some(requests) = client.server_requests() {
            let weak = Arc::downgrade(self);
            let answerer = client.clone();
            self.spawn(tokio::spawn(serve_broker_requests(
                weak, answerer, requests,
            )));
        }
        lock(&self.connections).insert(addr.to_string(), client.clone());
        Ok(client)
    }

    fn open_connection(&self, addr: &str) -> Option<RemotingClient> {
        lock(&self.connections)
            .get(addr)
            .filter(|c| !c.is_closed())
            .cloned()
    }

    /// Sends a request to a broker (or any server) and returns its answer, whatever the code.
    pub(crate) async fn invoke(
        self: &Arc<Self>,
        addr: &str,
        request: RemotingCommand,
    ) -> Result<RemotingCommand, MqError> {
        let client = self.connection(addr).await?;
        Ok(client.invoke(request, self.config.request_timeout).await?)
    }

    /// Sends a request and insists on SUCCESS.
    pub(crate) async fn invoke_ok(
        self: &Arc<Self>,
        addr: &str,
        what: &'static str,
        request: RemotingCommand,
    ) -> Result<RemotingCommand, MqError> {
        let answer = self.invoke(addr, request).await?;
        if answer.code != response::SUCCESS {
            return Err(refused(what, addr, &answer));
        }
        Ok(answer)
    }

    /// Asks the name servers in turn until one answers.
    async fn ask_namesrv(
        self: &Arc<Self>,
        request: RemotingCommand,
    ) -> Result<(String, RemotingCommand), MqError> {
        let addrs = &self.config.namesrv_addrs;
        let first = self.next_namesrv.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..addrs.len() {
            let index = (first + i) % addrs.len();
            let addr = &addrs[index];
            match self.invoke(addr, request.clone()).await {
                Ok(answer) => {
                    self.next_namesrv.store(index, Ordering::Relaxed);
                    return Ok((addr.clone(), answer));
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(MqError::NameServer(last))
    }

    /// The topic's route, fetched if not known.
    pub(crate) async fn route(self: &Arc<Self>, topic: &str) -> Result<TopicRouteData, MqError> {
        if let Some(route) = lock(&self.routes).get(topic) {
            return Ok(route.clone());
        }
        self.refresh_route(topic).await
    }

    /// Fetches the topic's route from the name servers.
    pub(crate) async fn refresh_route(
        self: &Arc<Self>,
        topic: &str,
    ) -> Result<TopicRouteData, MqError> {
        let ask =
            RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with_field("topic", topic);
        let (addr, answer) = self.ask_namesrv(ask).await?;
        match answer.code {
            response::SUCCESS => {}
            response::TOPIC_NOT_EXIST => {
                lock(&self.routes).remove(topic);
                return Err(MqError::NoRoute(topic.to_string()));
            }
            _ => return Err(refused("a route lookup", &addr, &answer)),
        }
        let route: TopicRouteData =
            decode_json("route", &answer.body_bytes()).map_err(|e| MqError::Malformed {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        lock(&self.routes).insert(topic.to_string(), route.clone());
        Ok(route)
    }

    async fn refresh_all_routes(self: &Arc<Self>) {
        let topics: Vec<String> = lock(&self.routes).keys().cloned().collect();
        for topic in topics {
            if let Err(e) = self.refresh_route(&topic).await {
                tracing::debug!(%topic, error = %e, "route refresh failed");
            }
        }
    }

    /// The master address of a broker, from any known route.
    pub(crate) fn master_addr(&self, broker_name: &str) -> Option<String> {
        lock(&self.routes).values().find_map(|route| {
            route
                .broker_datas
                .iter()
                .find(|b| b.broker_name == broker_name)
                .and_then(|b| b.broker_addrs.get(&MASTER_ID).cloned())
        })
    }

    /// Every master broker address of every known route.
    fn all_master_addrs(&self) -> BTreeSet<String> {
        lock(&self.routes)
            .values()
            .flat_map(|route| route.broker_datas.iter())
            .filter_map(|b| b.broker_addrs.get(&MASTER_ID).cloned())
            .collect()
    }

    /// Sends this client's heartbeat to every master broker it knows.
    pub(crate) async fn heartbeat_all(self: &Arc<Self>) {
        let mut heartbeat = HeartbeatData {
            client_id: self.client_id.clone(),
            ..HeartbeatData::default()
        };
        if let Some(group) = lock(&self.producer_group).clone() {
            heartbeat
                .producer_data_set
                .push(ProducerData { group_name: group });
        }
        let hooks = lock(&self.consumer).as_ref().and_then(|(_, h)| h.upgrade());
        if let Some(hooks) = hooks {
            heartbeat.consumer_data_set.push(hooks.consumer_data());
        }
        if heartbeat.producer_data_set.is_empty() && heartbeat.consumer_data_set.is_empty() {
            return;
        }
        let body = encode_json(&heartbeat);
        for addr in self.all_master_addrs() {
            let beat = RemotingCommand::request(request::HEART_BEAT).with_body(body.clone());
            if let Err(e) = self.invoke_ok(&addr, "a heartbeat", beat).await {
                tracing::debug!(broker = %addr, error = %e, "heartbeat failed");
            }
        }
    }

    /// Tells every broker this client's groups are gone, so the others rebalance at once.
    pub(crate) async fn unregister_all(self: &Arc<Self>) {
        let producer = lock(&self.producer_group).clone();
        let consumer = lock(&self.consumer).as_ref().map(|(g, _)| g.clone());
        for addr in self.all_master_addrs() {
            let mut bye = RemotingCommand::request(request::UNREGISTER_CLIENT)
                .with_field("clientID", &self.client_id);
            if let Some(group) = &producer {
                bye = bye.with_field("producerGroup", group);
            }
            if let Some(group) = &consumer {
                bye = bye.with_field("consumerGroup", group);
            }
            if let Err(e) = self.invoke_ok(&addr, "unregistering", bye).await {
                tracing::debug!(broker = %addr, error = %e, "unregister failed");
            }
        }
    }

    /// Stops the background tasks and closes the connections.
    pub(crate) fn shutdown(&self) {
        self.shut_down.store(true, Ordering::Relaxed);
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        lock(&self.connections).clear();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

/// A route's queues producers may write, masters only, in route order.
pub(crate) fn publish_queues(topic: &str, route: &TopicRouteData) -> Vec<MessageQueue> {
    queues_of(topic, route, PERM_WRITE, |q| q.write_queue_nums)
}

/// A route's queues consumers read, masters only, sorted.
pub(crate) fn subscribe_queues(topic: &str, route: &TopicRouteData) -> Vec<MessageQueue> {
    let mut queues = queues_of(topic, route, PERM_READ, |q| q.read_queue_nums);
    queues.sort();
    queues
}

fn queues_of(
    topic: &str,
    route: &TopicRouteData,
    perm: i32,
    count: impl Fn(&crate::protocol::route::QueueData) -> i32,
) -> Vec<MessageQueue> {
    let mut datas = route.queue_datas.clone();
    datas.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
    let has_master = |name: &str| {
        route
            .broker_datas
            .iter()
            .any(|b| b.broker_name == name && b.broker_addrs.contains_key(&MASTER_ID))
    };
    datas
        .iter()
        .filter(|q| q.perm & perm != 0 && has_master(&q.broker_name))
        .flat_map(|q| {
            (0..count(q).max(0)).map(move |queue_id| MessageQueue {
                topic: topic.to_string(),
                broker_name: q.broker_name.clone(),
                queue_id,
            })
        })
        .collect()
}

/// The error for a non-success answer.
pub(crate) fn refused(what: &'static str, addr: &str, answer: &RemotingCommand) -> MqError {
    MqError::Refused {
        what,
        addr: addr.to_string(),
        code: answer.code,
        remark: answer.remark.clone().unwrap_or_default(),
    }
}

/// Answers what brokers ask of this client: membership changes wake the consumer's rebalance;
/// anything else it cannot do is answered as not supported.
async fn serve_broker_requests(
    instance: Weak<Instance>,
    connection: RemotingClient,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<RemotingCommand>,
) {
    while let Some(command) = requests.recv().await {
        let Some(instance) = instance.upgrade() else {
            return;
        };
        if command.code == request::NOTIFY_CONSUMER_IDS_CHANGED {
            let group = command.field("consumerGroup").unwrap_or_default();
            let hooks = lock(&instance.consumer)
                .as_ref()
                .filter(|(g, _)| g == group)
                .and_then(|(_, h)| h.upgrade());
            if let Some(hooks) = hooks {
                hooks.rebalance_soon();
            }
        }
        if !command.is_oneway() && command.code != request::NOTIFY_CONSUMER_IDS_CHANGED {
            let answer =
                RemotingCommand::response_to(&command, response::REQUEST_CODE_NOT_SUPPORTED)
                    .with_remark(format!(
                        "request code {} is not supported by this client",
                        command.code
                    ));
            let _ = connection.respond(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::route::{BrokerData, QueueData};

    #[test]
    fn queues_come_from_masters_with_the_permission() {
        let route = TopicRouteData {
            broker_datas: vec![
                BrokerData {
                    broker_name: "b".into(),
                    broker_addrs: [(0, "b:1".to_string())].into(),
                    ..BrokerData::default()
                },
                BrokerData {
                    broker_name: "a".into(),
                    broker_addrs: [(0, "a:1".to_string())].into(),
                    ..BrokerData::default()
                },
                BrokerData {
                    broker_name: "slave-only".into(),
                    broker_addrs: [(1, "s:1".to_string())].into(),
                    ..BrokerData::default()
                },
            ],
            queue_datas: vec![
                QueueData {
                    broker_name: "b".into(),
                    perm: PERM_READ | PERM_WRITE,
                    read_queue_nums: 2,
                    write_queue_nums: 1,
                    ..QueueData::default()
                },
                QueueData {
                    broker_name: "a".into(),
                    perm: PERM_READ,
                    read_queue_nums: 1,
                    write_queue_nums: 1,
                    ..QueueData::default()
                },
                QueueData {
                    broker_name: "slave-only".into(),
                    perm: PERM_READ | PERM_WRITE,
                    read_queue_nums: 4,
                    write_queue_nums: 4,
                    ..QueueData::default()
                },
            ],
            ..TopicRouteData::default()
        };
        let write: Vec<_> = publish_queues("t", &route)
            .into_iter()
            .map(|q| (q.broker_name, q.queue_id))
            .collect();
        assert_eq!(write, vec![("b".to_string(), 0)]);
        let read: Vec<_> = subscribe_queues("t", &route)
            .into_iter()
            .map(|q| (q.broker_name, q.queue_id))
            .collect();
        assert_eq!(
            read,
            vec![
                ("a".to_string(), 0),
                ("b".to_string(), 0),
                ("b".to_string(), 1)
            ]
        );
    }
}
