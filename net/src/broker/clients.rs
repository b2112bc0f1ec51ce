//! Who is connected: consumer groups with their members and subscriptions, and producer groups,
//! learned from heartbeats. A group's members are told (`NOTIFY_CONSUMER_IDS_CHANGED`) whenever
//! one joins or leaves, so they rebalance at once instead of at their next 20 s timer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::heartbeat::{ConsumerData, HeartbeatData, SubscriptionData};
use crate::remoting::RemotingCommand;
use crate::remoting::codes::request;
use crate::server::Connection;

/// One member connection of a group.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its connection, to notify it.
    pub connection: Connection,
    /// The client instance id it sent.
    pub client_id: String,
    /// Its language.
    pub language: u8,
    /// Its protocol version.
    pub version: i32,
    last_heartbeat: Instant,
}

/// A consumer group as its members describe it.
#[derive(Debug, Clone, Default)]
pub struct ConsumerGroup {
    /// `CONSUME_PASSIVELY` (push) or `CONSUME_ACTIVELY` (pull).
    pub consume_type: String,
    /// `CLUSTERING` or `BROADCASTING`.
    pub message_model: String,
    /// Where a member starts on a queue the group has no offset for.
    pub consume_from_where: String,
    /// Subscriptions by topic.
    pub subscriptions: HashMap<String, SubscriptionData>,
    /// Members by connection id.
    pub members: BTreeMap<u64, Member>,
}

#[derive(Default)]
struct Groups {
    consumers: HashMap<String, ConsumerGroup>,
    producers: HashMap<String, BTreeMap<u64, Member>>,
}

/// Groups whose members must be told of a change, with the connections to tell.
pub type Notifications = Vec<(String, Vec<Connection>)>;

/// Client registry, shared by every shard thread.
#[derive(Default)]
pub struct ClientRegistry {
    groups: Mutex<Groups>,
}

impl ClientRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a heartbeat; returns the groups whose membership or subscriptions changed.
    pub fn heartbeat(
        &self,
        connection: &Connection,
        language: u8,
        version: i32,
        heartbeat: &HeartbeatData,
        now: Instant,
    ) -> Notifications {
        let member = Member {
            connection: connection.clone(),
            client_id: heartbeat.client_id.clone(),
            language,
            version,
            last_heartbeat: now,
        };
        let mut groups = self.lock();
        let mut changed = Vec::new();
        for data in &heartbeat.consumer_data_set {
            if register_consumer(&mut groups, data, &member, heartbeat.without_sub) {
                changed.push(data.group_name.clone());
            }
        }
        for data in &heartbeat.producer_data_set {
            groups
                .producers
                .entry(data.group_name.clone())
                .or_default()
                .insert(connection.id(), member.clone());
        }
        notifications(&groups, changed)
    }

    /// Removes a connection from the groups it names (`UNREGISTER_CLIENT`).
    pub fn unregister(
        &self,
        connection: &Connection,
        producer_group: Option<&str>,
        consumer_group: Option<&str>,
    ) -> Notifications {
        let mut groups = self.lock();
        if let Some(group) = producer_group
            && let Some(members) = groups.producers.get_mut(group)
        {
            members.remove(&connection.id());
            if members.is_empty() {
                groups.producers.remove(group);
            }
        }
        let mut changed = Vec::new();
        if let Some(group) = consumer_group
            && remove_member(&mut groups, group, connection.id())
        {
            changed.push(group.to_string());
        }
        notifications(&groups, changed)
    }

    /// Removes a closed connection from every group.
    pub fn connection_closed(&self, connection: u64) -> Notifications {
        let mut groups = self.lock();
        groups.producers.retain(|_, members| {
            members.remove(&connection);
            !members.is_empty()
        });
        let names: Vec<String> = groups.consumers.keys().cloned().collect();
        let changed = names
            .into_iter()
            .filter(|g| remove_member(&mut groups, g, connection))
            .collect();
        notifications(&groups, changed)
    }

    /// Removes members silent for longer than `expiry`.
    pub fn expire(&self, now: Instant, expiry: Duration) -> Notifications {
        let mut groups = self.lock();
        let stale = |m: &Member| now.saturating_duration_since(m.last_heartbeat) > expiry;
        groups.producers.retain(|_, members| {
            members.retain(|_, m| !stale(m));
            !members.is_empty()
        });
        let mut changed = Vec::new();
        let names: Vec<String> = groups.consumers.keys().cloned().collect();
        for name in names {
            let expired: Vec<u64> = groups.consumers[&name]
                .members
                .iter()
                .filter(|(_, m)| stale(m))
                .map(|(id, _)| *id)
                .collect();
            for id in &expired {
                tracing::info!(group = %name, connection = id, "consumer expired: no heartbeat");
                remove_member(&mut groups, &name, *id);
            }
            if !expired.is_empty() {
                changed.push(name);
            }
        }
        notifications(&groups, changed)
    }

    /// A group, if any member is registered.
    pub fn consumer_group(&self, group: &str) -> Option<ConsumerGroup> {
        self.lock().consumers.get(group).cloned()
    }

    /// A group's subscription to a topic.
    pub fn subscription(&self, group: &str, topic: &str) -> Option<SubscriptionData> {
        self.lock()
            .consumers
            .get(group)
            .and_then(|g| g.subscriptions.get(topic))
            .cloned()
    }

    /// Client ids of a group's members, each once.
    pub fn consumer_ids(&self, group: &str) -> Vec<String> {
        let groups = self.lock();
        let mut ids: Vec<String> = groups
            .consumers
            .get(group)
            .map(|g| g.members.values().map(|m| m.client_id.clone()).collect())
            .unwrap_or_default();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Adds or refreshes a member; true if the group's members or subscriptions changed (as
/// RocketMQ's `ConsumerManager.registerConsumer`: a newer version of a subscription replaces
/// the old one silently, an added or removed topic is a change).
fn register_consumer(
    groups: &mut Groups,
    data: &ConsumerData,
    member: &Member,
    without_sub: bool,
) -> bool {
    let group = groups.consumers.entry(data.group_name.clone()).or_default();
    group.consume_type = data.consume_type.clone();
    group.message_model = data.message_model.clone();
    group.consume_from_where = data.consume_from_where.clone();
    let joined = group
        .members
        .insert(member.connection.id(), member.clone())
        .is_none();
    if without_sub {
        return joined;
    }
    let mut changed = false;
    for sub in &data.subscription_data_set {
        match group.subscriptions.get(&sub.topic) {
            None => {
                group.subscriptions.insert(sub.topic.clone(), sub.clone());
                changed = true;
            }
            Some(old) if sub.sub_version > old.sub_version => {
                group.subscriptions.insert(sub.topic.clone(), sub.clone());
            }
            Some(_) => {}
        }
    }
    let before = group.subscriptions.len();
    group
        .subscriptions
        .retain(|topic, _| data.subscription_data_set.iter().any(|s| &s.topic == topic));
    changed |= group.subscriptions.len() != before;
    joined || changed
}

/// Removes a member; true if it was one. An emptied group is forgotten.
fn remove_member(groups: &mut Groups, group: &str, connection: u64) -> bool {
    let Some(members) = groups.consumers.get_mut(group) else {
        return false;
    };
    let removed = members.members.remove(&connection).is_some();
    if members.members.is_empty() {
        groups.consumers.remove(group);
    }
    removed
}

fn notifications(groups: &Groups, changed: Vec<String>) -> Notifications {
    changed
        .into_iter()
        .filter_map(|name| {
            let group = groups.consumers.get(&name)?;
            let connections = group
                .members
                .values()
                .map(|m| m.connection.clone())
                .collect();
            Some((name, connections))
        })
        .collect()
}

/// Tells each member of each changed group to rebalance (oneway, as RocketMQ's `Broker2Client`).
pub fn notify(notifications: Notifications) {
    for (group, connections) in notifications {
        for connection in connections {
            let request = RemotingCommand::request(request::NOTIFY_CONSUMER_IDS_CHANGED)
                .with_field("consumerGroup", &group);
            if !connection.send_oneway(request) {
                tracing::debug!(%group, peer = %connection.peer(), "could not notify a consumer");
            }
        }
    }
}
