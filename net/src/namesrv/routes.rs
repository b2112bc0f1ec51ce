//! The name server's route table: which brokers are alive, which clusters they form, and which
//! brokers hold which topics. Pure state, no I/O; the service around it applies requests and
//! the clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::protocol::route::{
    BrokerData, ClusterInfo, DataVersion, QueueData, TopicConfigWrapper, TopicList, TopicRouteData,
};

/// The broker id of a master (`MixAll.MASTER_ID`).
pub const MASTER_ID: i64 = 0;

/// A broker's registration, as `REGISTER_BROKER` carries it.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Cluster.
    pub cluster: String,
    /// Broker name (shared by master and slaves).
    pub broker_name: String,
    /// Address clients connect to.
    pub broker_addr: String,
    /// 0 for the master.
    pub broker_id: i64,
    /// Address slaves replicate from.
    pub ha_server_addr: String,
    /// How long without a registration before the broker is dropped.
    pub timeout: Duration,
    /// Its topics.
    pub topics: TopicConfigWrapper,
    /// The connection it came on: when that closes, the broker is dropped at once.
    pub connection: Option<u64>,
}

/// What a registering broker is told: for a slave, its master's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterAnswer {
    /// The master's client address, if a slave and its master is alive.
    pub master_addr: Option<String>,
    /// The master's replication address, likewise.
    pub ha_server_addr: Option<String>,
}

#[derive(Debug, Clone)]
struct LiveBroker {
    broker_name: String,
    broker_id: i64,
    last_update: Instant,
    timeout: Duration,
    data_version: DataVersion,
    ha_server_addr: String,
    connection: Option<u64>,
}

/// The route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Topic → broker name → its queues.
    topics: BTreeMap<String, BTreeMap<String, QueueData>>,
    /// Broker name → its addresses.
    brokers: BTreeMap<String, BrokerData>,
    /// Cluster → broker names.
    clusters: BTreeMap<String, BTreeSet<String>>,
    /// Broker address → liveness.
    live: HashMap<String, LiveBroker>,
}

impl RouteTable {
    /// Records a registration (first, or a periodic one).
    pub fn register(&mut self, reg: Registration, now: Instant) -> RegisterAnswer {
        self.clusters
            .entry(reg.cluster.clone())
            .or_default()
            .insert(reg.broker_name.clone());
        let broker = self
            .brokers
            .entry(reg.broker_name.clone())
            .or_insert_with(|| BrokerData {
                broker_name: reg.broker_name.clone(),
                cluster: reg.cluster.clone(),
                ..BrokerData::default()
            });
        broker.cluster = reg.cluster.clone();
        // A slave promoted to master keeps its address under a new id: drop the old id.
        broker
            .broker_addrs
            .retain(|id, addr| *addr != reg.broker_addr || *id == reg.broker_id);
        let first = broker
            .broker_addrs
            .insert(reg.broker_id, reg.broker_addr.clone())
            .is_none();
        let version = reg.topics.data_version;
        let changed = self
            .live
            .get(&reg.broker_addr)
            .is_none_or(|live| live.data_version != version);
        // A topic is taken when the broker's table changed, or when this broker is not yet
        // known to hold it (as RocketMQ 5's name server does): a broker with many topics
        // registers them in parts of one version, and a new topic alone.
        if reg.broker_id == MASTER_ID {
            for (name, topic) in &reg.topics.topic_config_table {
                let held = self.topics.entry(name.clone()).or_default();
                if first || changed || !held.contains_key(&reg.broker_name) {
                    held.insert(
                        reg.broker_name.clone(),
                        QueueData::new(&reg.broker_name, topic),
                    );
                }
            }
        }
        self.live.insert(
            reg.broker_addr.clone(),
            LiveBroker {
                broker_name: reg.broker_name.clone(),
                broker_id: reg.broker_id,
                last_update: now,
                timeout: reg.timeout,
                data_version: version,
                ha_server_addr: reg.ha_server_addr.clone(),
                connection: reg.connection,
            },
        );
        let mut answer = RegisterAnswer::default();
        if reg.broker_id != MASTER_ID
            && let Some(master) = self
                .brokers
                .get(&reg.broker_name)
                .and_then(|b| b.broker_addrs.get(&MASTER_ID))
            && let Some(live) = self.live.get(master)
        {
            answer.master_addr = Some(master.clone());
            answer.ha_server_addr = Some(live.ha_server_addr.clone());
        }
        answer
    }

    /// `QUERY_DATA_VERSION`: whether the broker at `broker_addr` holds another topic table
    /// than the one of `version` registered here (or is not known), and the version registered;
    /// when it holds the same, its registration is renewed (as RocketMQ's name server does), so
    /// a broker whose topics did not change need not send them all again.
    pub fn query_data_version(
        &mut self,
        broker_addr: &str,
        version: &DataVersion,
        now: Instant,
    ) -> (bool, Option<DataVersion>) {
        match self.live.get_mut(broker_addr) {
            Some(live) if live.data_version == *version => {
                live.last_update = now;
                (false, Some(live.data_version))
            }
            Some(live) => (true, Some(live.data_version)),
            None => (true, None),
        }
    }

    /// Removes a broker that says it is leaving.
    pub fn unregister(&mut self, broker_name: &str, broker_addr: &str, broker_id: i64) {
        let matches = self
            .live
            .get(broker_addr)
            .is_none_or(|l| l.broker_name == broker_name && l.broker_id == broker_id);
        if matches {
            self.remove_addr(broker_name, broker_addr);
        }
    }

    /// Drops brokers whose registrations stopped; returns their addresses.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<(String, String)> = self
            .live
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_update) > l.timeout)
            .map(|(addr, l)| (l.broker_name.clone(), addr.clone()))
            .collect();
        for (name, addr) in &expired {
            self.remove_addr(name, addr);
        }
        expired.into_iter().map(|(_, addr)| addr).collect()
    }

    /// Drops brokers registered over a connection that closed; returns their addresses.
    pub fn connection_closed(&mut self, connection: u64) -> Vec<String> {
        let gone: Vec<(String, String)> = self
            .live
            .iter()
            .filter(|(_, l)| l.connection == Some(connection))
            .map(|(addr, l)| (l.broker_name.clone(), addr.clone()))
            .collect();
        for (name, addr) in &gone {
            self.remove_addr(name, addr);
        }
        gone.into_iter().map(|(_, addr)| addr).collect()
    }

    fn remove_addr(&mut self, broker_name: &str, broker_addr: &str) {
        self.live.remove(broker_addr);
        let Some(broker) = self.brokers.get_mut(broker_name) else {
            return;
        };
        broker.broker_addrs.retain(|_, addr| addr != broker_addr);
        if !broker.broker_addrs.is_empty() {
            return;
        }
        let cluster = broker.cluster.clone();
        self.brokers.remove(broker_name);
        if let Some(names) = self.clusters.get_mut(&cluster) {
            names.remove(broker_name);
            if names.is_empty() {
                self.clusters.remove(&cluster);
            }
        }
        self.topics.retain(|_, queues| {
            queues.remove(broker_name);
            !queues.is_empty()
        });
    }

    /// The route of a topic: its queues and the brokers holding them; `None` unless both exist.
    pub fn route(&self, topic: &str) -> Option<TopicRouteData> {
        let queues = self.topics.get(topic)?;
        let queue_datas: Vec<QueueData> = queues.values().cloned().collect();
        let broker_datas: Vec<BrokerData> = queues
            .keys()
            .filter_map(|name| self.brokers.get(name).cloned())
            .collect();
        if queue_datas.is_empty() || broker_datas.is_empty() {
            return None;
        }
        Some(TopicRouteData {
            broker_datas,
            queue_datas,
            ..TopicRouteData::default()
        })
    }

    /// Every broker and cluster.
    pub fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo {
            broker_addr_table: self.brokers.clone(),
            cluster_addr_table: self.clusters.clone(),
        }
    }

    /// Every topic some broker holds.
    pub fn topics(&self) -> TopicList {
        TopicList {
            topic_list: self.topics.keys().cloned().collect(),
            broker_addr: None,
        }
    }

    /// Forgets a topic, on every broker or on those of one cluster.
    pub fn delete_topic(&mut self, topic: &str, cluster: Option<&str>) {
        match cluster.and_then(|c| self.clusters.get(c)) {
            Some(names) => {
                if let Some(queues) = self.topics.get_mut(topic) {
                    queues.retain(|name, _| !names.contains(name));
                    if queues.is_empty() {
                        self.topics.remove(topic);
                    }
                }
            }
            None if cluster.is_some() => {}
            None => {
                self.topics.remove(topic);
            }
        }
    }

    /// Addresses of live brokers.
    pub fn live_brokers(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self.live.keys().cloned().collect();
        addrs.sort();
        addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::route::TopicConfig;

    fn registration(
        name: &str,
        addr: &str,
        id: i64,
        topics: &[(&str, i32)],
        counter: i64,
    ) -> Registration {
        let mut wrapper = TopicConfigWrapper::default();
        wrapper.data_version.counter = counter;
        for (topic, queues) in topics {
            wrapper
                .topic_config_table
                .insert(topic.to_string(), TopicConfig::new(*topic, *queues, 6));
        }
        Registration {
            cluster: "DefaultCluster".into(),
            broker_name: name.into(),
            broker_addr: addr.into(),
            broker_id: id,
            ha_server_addr: format!("{addr}-ha"),
            timeout: Duration::from_secs(120),
            topics: wrapper,
            connection: Some(7),
        }
    }

    #[test]
    fn a_broker_registering_in_parts_of_one_version_gets_every_part_routed() {
        let mut table = RouteTable::default();
        let t0 = Instant::now();
        table.register(registration("a", "1.1.1.1:10911", 0, &[("P1", 4)], 5), t0);
        // The second part carries the same version: its topics are still new here.
        table.register(registration("a", "1.1.1.1:10911", 0, &[("P2", 4)], 5), t0);
        assert!(table.route("P1").is_some() && table.route("P2").is_some());
        // A part with a known topic and the same version changes nothing of it.
        table.register(registration("a", "1.1.1.1:10911", 0, &[("P1", 8)], 5), t0);
        assert_eq!(
            table.route("P1").unwrap().queue_datas[0].write_queue_nums,
            4
        );
        // A new version (a topic changed, registered alone) is taken.
        table.register(registration("a", "1.1.1.1:10911", 0, &[("P1", 8)], 6), t0);
        assert_eq!(
            table.route("P1").unwrap().queue_datas[0].write_queue_nums,
            8
        );
        assert!(
            table.route("P2").is_some(),
            "a registration of one topic keeps the others"
        );
    }

    #[test]
    fn a_data_version_query_renews_a_broker_holding_the_same_table() {
        let mut table = RouteTable::default();
        let t0 = Instant::now();
        table.register(registration("a", "1.1.1.1:10911", 0, &[("T", 4)], 3), t0);
        let same = DataVersion {
            counter: 3,
            ..DataVersion::default()
        };
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            table.query_data_version("1.1.1.1:10911", &same, later),
            (false, Some(same))
        );
        // Renewed: not expired 121 s after the registration, 100 s after the query.
        assert!(table.expire(t0 + Duration::from_secs(121)).is_empty());
        let newer = DataVersion { counter: 4, ..same };
        assert!(table.query_data_version("1.1.1.1:10911", &newer, later).0);
        assert_eq!(
            table.query_data_version("9.9.9.9:10911", &same, later),
            (true, None)
        );
    }

    #[test]
    fn registered_topics_are_routed_and_expire_with_their_broker() {
        let mut table = RouteTable::default();
        let t0 = Instant::now();
        table.register(registration("a", "1.1.1.1:10911", 0, &[("T", 4)], 1), t0);
        table.register(
            registration("b", "2.2.2.2:10911", 0, &[("T", 2), ("U", 1)], 1),
            t0,
        );
        let route = table.route("T").unwrap();
        assert_eq!(route.queue_datas.len(), 2);
        assert_eq!(route.broker_datas[0].broker_addrs[&0], "1.1.1.1:10911");
        assert_eq!(table.topics().topic_list.len(), 2);
        assert!(table.route("V").is_none());

        // b keeps registering, a stops.
        let later = t0 + Duration::from_secs(100);
        table.register(
            registration("b", "2.2.2.2:10911", 0, &[("T", 2), ("U", 1)], 1),
            later,
        );
        assert_eq!(
            table.expire(t0 + Duration::from_secs(121)),
            ["1.1.1.1:10911"]
        );
        let route = table.route("T").unwrap();
        assert_eq!(route.queue_datas.len(), 1);
        assert_eq!(route.queue_datas[0].broker_name, "b");
        assert_eq!(
            table.cluster_info().cluster_addr_table["DefaultCluster"].len(),
            1
        );
    }

    #[test]
    fn topic_changes_apply_only_when_the_data_version_changes() {
        let mut table = RouteTable::default();
        let now = Instant::now();
        table.register(registration("a", "1:1", 0, &[("T", 4)], 1), now);
        // Same version, different content: ignored, as RocketMQ does.
        table.register(registration("a", "1:1", 0, &[("T", 8)], 1), now);
        assert_eq!(table.route("T").unwrap().queue_datas[0].write_queue_nums, 4);
        table.register(registration("a", "1:1", 0, &[("T", 8)], 2), now);
        assert_eq!(table.route("T").unwrap().queue_datas[0].write_queue_nums, 8);
    }

    #[test]
    fn slaves_learn_their_master_and_closing_connections_drop_brokers() {
        let mut table = RouteTable::default();
        let now = Instant::now();
        table.register(registration("a", "1:1", 0, &[("T", 4)], 1), now);
        let mut slave = registration("a", "1:2", 1, &[("T", 4)], 1);
        slave.connection = Some(8);
        let answer = table.register(slave, now);
        assert_eq!(answer.master_addr.as_deref(), Some("1:1"));
        assert_eq!(answer.ha_server_addr.as_deref(), Some("1:1-ha"));
        assert_eq!(table.connection_closed(7), ["1:1"]);
        // The slave keeps the broker name alive.
        assert_eq!(
            table.route("T").unwrap().broker_datas[0].broker_addrs.len(),
            1
        );
        table.unregister("a", "1:2", 1);
        assert!(table.route("T").is_none());
        assert!(table.cluster_info().broker_addr_table.is_empty());
    }

    #[test]
    fn topics_are_deleted_everywhere_or_per_cluster() {
        let mut table = RouteTable::default();
        let now = Instant::now();
        table.register(registration("a", "1:1", 0, &[("T", 4), ("U", 4)], 1), now);
        table.delete_topic("T", Some("OtherCluster"));
        assert!(table.route("T").is_some());
        table.delete_topic("T", Some("DefaultCluster"));
        assert!(table.route("T").is_none());
        table.delete_topic("U", None);
        assert!(table.topics().topic_list.is_empty());
    }
}
