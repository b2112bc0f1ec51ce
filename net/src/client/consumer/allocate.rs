//! How a clustering group divides a topic's queues among its members. Every member computes
//! the same answer from the same sorted lists, so no coordinator is needed; the strategies are
//! RocketMQ's, with the same results, so Quiver and Java consumers can share a group.

use md5::{Digest, Md5};

use crate::protocol::bodies::MessageQueue;

/// A way to divide queues among a group's members. `queues` and `members` arrive sorted and
/// are the same at every member; the result is `me`'s share.
pub trait AllocateStrategy: Send + Sync {
    /// The strategy's name, as RocketMQ reports it.
    fn name(&self) -> &str;
    /// `me`'s queues.
    fn allocate(&self, me: &str, queues: &[MessageQueue], members: &[String]) -> Vec<MessageQueue>;
}

/// Contiguous runs of queues, the first members taking one more when they do not divide
/// evenly (RocketMQ's default, `AllocateMessageQueueAveragely`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Averagely;

impl AllocateStrategy for Averagely {
    fn name(&self) -> &str {
        "AVG"
    }

    fn allocate(&self, me: &str, queues: &[MessageQueue], members: &[String]) -> Vec<MessageQueue> {
        let Some(index) = members.iter().position(|m| m == me) else {
            return Vec::new();
        };
        if queues.is_empty() {
            return Vec::new();
        }
        let (n, m) = (queues.len(), members.len());
        let rest = n % m;
        let size = if n <= m {
            1
        } else if rest > 0 && index < rest {
            n / m + 1
        } else {
            n / m
        };
        let start = if rest > 0 && index < rest {
            index * size
        } else {
            index * size + rest
        };
        let range = size.min(n.saturating_sub(start));
        (0..range)
            .map(|i| queues[(start + i) % n].clone())
            .collect()
    }
}

/// Every `members.len()`-th queue from the member's own index (RocketMQ's
/// `AllocateMessageQueueAveragelyByCircle`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AveragelyByCircle;

impl AllocateStrategy for AveragelyByCircle {
    fn name(&self) -> &str {
        "AVG_BY_CIRCLE"
    }

    fn allocate(&self, me: &str, queues: &[MessageQueue], members: &[String]) -> Vec<MessageQueue> {
        let Some(index) = members.iter().position(|m| m == me) else {
            return Vec::new();
        };
        queues
            .iter()
            .skip(index)
            .step_by(members.len())
            .cloned()
            .collect()
    }
}

/// A hash ring of members with virtual nodes: when a member comes or goes, only the queues
/// next to it on the ring move (RocketMQ's `AllocateMessageQueueConsistentHash`, MD5 ring).
#[derive(Debug, Clone, Copy)]
pub struct ConsistentHash {
    /// Points per member on the ring (RocketMQ's default is 10).
    pub virtual_nodes: usize,
}

impl Default for ConsistentHash {
    fn default() -> Self {
        ConsistentHash { virtual_nodes: 10 }
    }
}

/// RocketMQ's `ConsistentHashRouter.MD5Hash`: the first four bytes of the MD5, big-endian.
fn md5_hash(key: &str) -> u32 {
    let digest = Md5::digest(key.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

impl AllocateStrategy for ConsistentHash {
    fn name(&self) -> &str {
        "CONSISTENT_HASH"
    }

    fn allocate(&self, me: &str, queues: &[MessageQueue], members: &[String]) -> Vec<MessageQueue> {
        if !members.iter().any(|m| m == me) {
            return Vec::new();
        }
        let mut ring: Vec<(u32, &str)> = members
            .iter()
            .flat_map(|m| {
                (0..self.virtual_nodes.max(1))
                    .map(move |i| (md5_hash(&format!("{m}-{i}")), m.as_str()))
            })
            .collect();
        ring.sort();
        queues
            .iter()
            .filter(|q| {
                let key = format!(
                    "MessageQueue [topic={}, brokerName={}, queueId={}]",
                    q.topic, q.broker_name, q.queue_id
                );
                let hash = md5_hash(&key);
                let at = ring.partition_point(|(h, _)| *h < hash);
                let owner = ring.get(at).or(ring.first()).map(|(_, m)| *m);
                owner == Some(me)
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(n: i32) -> Vec<MessageQueue> {
        (0..n)
            .map(|queue_id| MessageQueue {
                topic: "t".into(),
                broker_name: "b".into(),
                queue_id,
            })
            .collect()
    }

    fn ids(shares: &[Vec<MessageQueue>]) -> Vec<Vec<i32>> {
        shares
            .iter()
            .map(|s| s.iter().map(|q| q.queue_id).collect())
            .collect()
    }

    fn shares(strategy: &dyn AllocateStrategy, n: i32, m: usize) -> Vec<Vec<MessageQueue>> {
        let members: Vec<String> = (0..m).map(|i| format!("c{i}")).collect();
        let all = queues(n);
        members
            .iter()
            .map(|me| strategy.allocate(me, &all, &members))
            .collect()
    }

    #[test]
    fn averagely_gives_contiguous_runs_the_first_members_one_more() {
        assert_eq!(
            ids(&shares(&Averagely, 8, 3)),
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]]
        );
        assert_eq!(
            ids(&shares(&Averagely, 2, 3)),
            vec![vec![0], vec![1], vec![]]
        );
    }

    #[test]
    fn by_circle_deals_queues_in_turn() {
        assert_eq!(
            ids(&shares(&AveragelyByCircle, 8, 3)),
            vec![vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]]
        );
    }

    #[test]
    fn every_strategy_gives_each_queue_exactly_one_owner() {
        let strategies: [&dyn AllocateStrategy; 3] =
            [&Averagely, &AveragelyByCircle, &ConsistentHash::default()];
        for strategy in strategies {
            for n in 0..20 {
                for m in 1..6 {
                    let mut owned: Vec<i32> =
                        ids(&shares(strategy, n, m)).into_iter().flatten().collect();
                    owned.sort();
                    assert_eq!(
                        owned,
                        (0..n).collect::<Vec<_>>(),
                        "{} {n}/{m}",
                        strategy.name()
                    );
                }
            }
        }
    }

    #[test]
    fn a_stranger_gets_nothing_and_consistent_hash_moves_little() {
        let all = queues(32);
        let members: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
        assert!(Averagely.allocate("x", &all, &members).is_empty());
        let ring = ConsistentHash::default();
        let before = ring.allocate("c0", &all, &members);
        let after = ring.allocate("c0", &all, &members[..3]);
        // c0 keeps all it had when c3 leaves.
        assert!(before.iter().all(|q| after.contains(q)));
        assert_eq!(md5_hash("abc"), 0x9001_5098);
    }
}
