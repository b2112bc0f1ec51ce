//! Queue locks for orderly consumers: each (group, queue) is held by at most one client, so one
//! member consumes a queue in order. A lock lapses unless renewed within the TTL (a client that
//! died frees its queues), as RocketMQ's `RebalanceLockManager`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::bodies::MessageQueue;

struct Holder {
    client_id: String,
    renewed: Instant,
}

/// The lock table, shared by every shard thread.
pub struct QueueLocks {
    ttl: Duration,
    locks: Mutex<HashMap<(String, MessageQueue), Holder>>,
}

impl QueueLocks {
    /// Locks lapse after `ttl` without renewal.
    pub fn new(ttl: Duration) -> QueueLocks {
        QueueLocks {
            ttl,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Locks (or renews) what it can of `queues` for `client_id`; returns what it holds now.
    pub fn lock_batch(
        &self,
        group: &str,
        client_id: &str,
        queues: &BTreeSet<MessageQueue>,
        now: Instant,
    ) -> BTreeSet<MessageQueue> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = BTreeSet::new();
        for queue in queues {
            let key = (group.to_string(), queue.clone());
            let free = locks.get(&key).is_none_or(|h| {
                h.client_id == client_id || now.saturating_duration_since(h.renewed) > self.ttl
            });
            if free {
                locks.insert(
                    key,
                    Holder {
                        client_id: client_id.to_string(),
                        renewed: now,
                    },
                );
                held.insert(queue.clone());
            }
        }
        held
    }

    /// Releases the queues `client_id` holds among `queues`.
    pub fn unlock_batch(&self, group: &str, client_id: &str, queues: &BTreeSet<MessageQueue>) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        for queue in queues {
            let key = (group.to_string(), queue.clone());
            if locks.get(&key).is_some_and(|h| h.client_id == client_id) {
                locks.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(ids: &[i32]) -> BTreeSet<MessageQueue> {
        ids.iter()
            .map(|&q| MessageQueue {
                broker_name: "b".into(),
                queue_id: q,
                topic: "T".into(),
            })
            .collect()
    }

    #[test]
    fn one_holder_per_queue_until_released_or_lapsed() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(
            locks.lock_batch("g", "a", &queues(&[0, 1]), t0),
            queues(&[0, 1])
        );
        assert_eq!(
            locks.lock_batch("g", "b", &queues(&[1, 2]), t0),
            queues(&[2])
        );
        // Another group is independent.
        assert_eq!(locks.lock_batch("h", "b", &queues(&[1]), t0), queues(&[1]));
        locks.unlock_batch("g", "b", &queues(&[0]));
        assert_eq!(locks.lock_batch("g", "a", &queues(&[0]), t0), queues(&[0]));
        locks.unlock_batch("g", "a", &queues(&[1]));
        assert_eq!(locks.lock_batch("g", "b", &queues(&[1]), t0), queues(&[1]));
        // a stops renewing: after the TTL b may take its queue.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            locks.lock_batch("g", "b", &queues(&[0]), later),
            queues(&[0])
        );
    }
}
