//! Topics: create, route, status, delete.

use super::bodies::decode_topic_stats;
use super::{
    Admin, AdminError, BrokerRef, BrokerSelector, QueueStatus, TopicCreated, TopicDeleted,
    TopicSpec, TopicStatus, master_addr, success,
};
use crate::protocol::route::{
    AUTO_CREATE_TOPIC_KEY, PERM_INHERIT, PERM_READ, PERM_WRITE, QueueData, TopicRouteData,
    topic_name_error,
};
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{request, response};

/// A broker of a topic's route with its share of the topic's queues.
pub(super) struct RouteBroker {
    pub(super) broker: BrokerRef,
    pub(super) queues: QueueData,
}

impl Admin {
    /// A topic's route: its brokers and their queues (`GET_ROUTEINFO_BY_TOPIC`).
    pub async fn topic_route(&self, topic: &str) -> Result<TopicRouteData, AdminError> {
        const WHAT: &str = "the topic route";
        let (server, answer) = self
            .ask_namesrv(
                RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC)
                    .with_field("topic", topic),
            )
            .await?;
        if answer.code == response::TOPIC_NOT_EXIST {
            return Err(AdminError::NoRoute {
                topic: topic.to_string(),
            });
        }
        let answer = success(&server, WHAT, answer)?;
        super::decode(&server, WHAT, &answer)
    }

    /// The master brokers of a topic's route with their queues, sorted by broker name.
    pub(super) async fn route_brokers(&self, topic: &str) -> Result<Vec<RouteBroker>, AdminError> {
        let route = self.topic_route(topic).await?;
        let mut out: Vec<RouteBroker> = route
            .queue_datas
            .iter()
            .filter_map(|queues| {
                let broker = route
                    .broker_datas
                    .iter()
                    .find(|b| b.broker_name == queues.broker_name)?;
                Some(RouteBroker {
                    broker: BrokerRef {
                        cluster: broker.cluster.clone(),
                        broker_name: broker.broker_name.clone(),
                        addr: master_addr(broker)?.clone(),
                    },
                    queues: queues.clone(),
                })
            })
            .collect();
        if out.is_empty() {
            return Err(AdminError::NoBroker(format!(
                "no master broker serves topic {topic} (its route names no live master)"
            )));
        }
        out.sort_by(|a, b| a.broker.cmp(&b.broker));
        Ok(out)
    }

    /// Creates or updates a topic on the selected master brokers (`UPDATE_AND_CREATE_TOPIC`);
    /// each broker registers the change with the name servers before it answers.
    pub async fn create_topic(
        &self,
        spec: &TopicSpec,
        selector: &BrokerSelector,
    ) -> Result<TopicCreated, AdminError> {
        check_spec(spec)?;
        let brokers = self.brokers(selector).await?;
        for broker in &brokers {
            let ask = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
                .with_field("topic", &spec.name)
                .with_field("defaultTopic", AUTO_CREATE_TOPIC_KEY)
                .with_field("readQueueNums", spec.read_queue_nums)
                .with_field("writeQueueNums", spec.write_queue_nums)
                .with_field("perm", spec.perm)
                .with_field("topicFilterType", "SINGLE_TAG")
                .with_field("topicSysFlag", 0)
                .with_field("order", spec.order);
            self.ask_broker_ok(&broker.addr, "the topic creation", ask)
                .await?;
        }
        Ok(TopicCreated {
            topic: spec.name.clone(),
            read_queue_nums: spec.read_queue_nums,
            write_queue_nums: spec.write_queue_nums,
            perm: spec.perm,
            brokers,
        })
    }

    /// Every queue of a topic on every master broker of its route: lowest and next offset and
    /// when its newest message was stored (`GET_TOPIC_STATS_INFO`, as `mqadmin topicStatus`).
    pub async fn topic_status(&self, topic: &str) -> Result<TopicStatus, AdminError> {
        const WHAT: &str = "the topic statistics";
        let mut queues = Vec::new();
        for RouteBroker { broker, .. } in self.route_brokers(topic).await? {
            let ask =
                RemotingCommand::request(request::GET_TOPIC_STATS_INFO).with_field("topic", topic);
            let answer = self.ask_broker_ok(&broker.addr, WHAT, ask).await?;
            let table =
                decode_topic_stats(&answer.body_bytes()).map_err(|e| AdminError::BadAnswer {
                    server: broker.addr.clone(),
                    what: WHAT,
                    reason: e.reason,
                })?;
            queues.extend(table.into_iter().map(|(queue, offsets)| QueueStatus {
                broker_name: queue.broker_name,
                queue_id: queue.queue_id,
                min_offset: offsets.min_offset,
                max_offset: offsets.max_offset,
                messages: (offsets.max_offset - offsets.min_offset).max(0),
                last_update_timestamp: offsets.last_update_timestamp,
            }));
        }
        queues.sort_by(|a, b| (&a.broker_name, a.queue_id).cmp(&(&b.broker_name, b.queue_id)));
        Ok(TopicStatus {
            topic: topic.to_string(),
            total_messages: queues.iter().map(|q| q.messages).sum(),
            queues,
        })
    }

    /// Deletes a topic: on every master broker of its route (optionally only those of one
    /// cluster) with its messages and every group's offsets of it (`DELETE_TOPIC_IN_BROKER`),
    /// then its route on every name server (`DELETE_TOPIC_IN_NAMESRV`).
    pub async fn delete_topic(
        &self,
        topic: &str,
        cluster: Option<&str>,
    ) -> Result<TopicDeleted, AdminError> {
        if topic == AUTO_CREATE_TOPIC_KEY {
            return Err(AdminError::Invalid(format!(
                "{AUTO_CREATE_TOPIC_KEY} is the template of new topics and cannot be deleted"
            )));
        }
        let mut brokers: Vec<BrokerRef> = self
            .route_brokers(topic)
            .await?
            .into_iter()
            .map(|r| r.broker)
            .filter(|b| cluster.is_none_or(|c| b.cluster == c))
            .collect();
        if brokers.is_empty() {
            return Err(AdminError::NoBroker(format!(
                "no broker of cluster {} holds topic {topic}",
                cluster.unwrap_or_default()
            )));
        }
        brokers.dedup();
        for broker in &brokers {
            let ask = RemotingCommand::request(request::DELETE_TOPIC_IN_BROKER)
                .with_field("topic", topic);
            self.ask_broker_ok(&broker.addr, "the topic deletion", ask)
                .await?;
        }
        let mut name_servers = Vec::new();
        for addr in &self.namesrv {
            let mut ask = RemotingCommand::request(request::DELETE_TOPIC_IN_NAMESRV)
                .with_field("topic", topic);
            if let Some(cluster) = cluster {
                ask = ask.with_field("clusterName", cluster);
            }
            let answer = self.ask(addr, ask).await.map_err(|reason| {
                AdminError::NameServerUnreachable(vec![super::Unreachable {
                    addr: addr.clone(),
                    reason,
                }])
            })?;
            success(addr, "the route deletion", answer)?;
            name_servers.push(addr.clone());
        }
        Ok(TopicDeleted {
            topic: topic.to_string(),
            brokers,
            name_servers,
        })
    }
}

/// Refuses a topic the broker would refuse, before asking any.
fn check_spec(spec: &TopicSpec) -> Result<(), AdminError> {
    if let Some(reason) = topic_name_error(&spec.name) {
        return Err(AdminError::Invalid(reason));
    }
    if spec.name == AUTO_CREATE_TOPIC_KEY {
        return Err(AdminError::Invalid(format!(
            "{AUTO_CREATE_TOPIC_KEY} is the template of new topics; choose another name"
        )));
    }
    for (what, n) in [
        ("read queues", spec.read_queue_nums),
        ("write queues", spec.write_queue_nums),
    ] {
        // The upper bound is the broker's to set (Quiver's is 1024); it names it if exceeded.
        if n < 1 {
            return Err(AdminError::Invalid(format!(
                "{n} {what}: a topic needs at least 1 on each broker"
            )));
        }
    }
    if spec.perm & !(PERM_READ | PERM_WRITE | PERM_INHERIT) != 0 {
        return Err(AdminError::Invalid(format!(
            "permission {} has unknown bits (read is {PERM_READ}, write {PERM_WRITE})",
            spec.perm
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_the_broker_would_refuse_are_refused_here() {
        assert!(check_spec(&TopicSpec::new("orders", 8)).is_ok());
        assert!(check_spec(&TopicSpec::new("bad name", 8)).is_err());
        assert!(check_spec(&TopicSpec::new(AUTO_CREATE_TOPIC_KEY, 8)).is_err());
        assert!(check_spec(&TopicSpec::new("t", 0)).is_err());
        let mut spec = TopicSpec::new("t", 1);
        spec.perm = 64;
        assert!(check_spec(&spec).is_err());
    }
}
