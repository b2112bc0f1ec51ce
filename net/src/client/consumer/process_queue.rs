//! The messages of one assigned queue between pull and handled (RocketMQ's `ProcessQueue`):
//! what the pull loop's flow control counts, and what decides the offset to commit — the
//! smallest offset not yet handled.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::client::instance::lock;
use crate::message::DecodedMessage;
use crate::protocol::bodies::MessageQueue;

/// How long a broker lock is trusted without renewal (RocketMQ's
/// `REBALANCE_LOCK_MAX_LIVE_TIME`); the broker keeps it longer, so it lapses here first.
pub(crate) const LOCK_TRUST_MS: u64 = 30_000;

#[derive(Default)]
struct State {
    /// Pulled, not yet handled.
    waiting: BTreeMap<i64, DecodedMessage>,
    /// Taken by the orderly consumer, being handled.
    taken: BTreeMap<i64, DecodedMessage>,
    bytes: usize,
    /// Highest offset ever put.
    max_put: Option<i64>,
}

/// One assigned queue's messages in flight.
pub(crate) struct ProcessQueue {
    pub(crate) queue: MessageQueue,
    state: Mutex<State>,
    dropped: AtomicBool,
    /// Room freed or the queue dropped: wakes the pull loop.
    pub(crate) room: Notify,
    /// Messages arrived or the queue dropped: wakes the orderly consumer.
    pub(crate) arrived: Notify,
    /// Held while an orderly batch is handled, so a drop waits for it.
    pub(crate) consuming: tokio::sync::Mutex<()>,
    locked_at: Mutex<Option<Instant>>,
}

impl ProcessQueue {
    pub(crate) fn new(queue: MessageQueue) -> ProcessQueue {
        ProcessQueue {
            queue,
            state: Mutex::default(),
            dropped: AtomicBool::new(false),
            room: Notify::new(),
            arrived: Notify::new(),
            consuming: tokio::sync::Mutex::new(()),
            locked_at: Mutex::new(None),
        }
    }

    pub(crate) fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// Marks it dropped and wakes everything waiting on it.
    pub(crate) fn drop_queue(&self) {
        self.dropped.store(true, Ordering::Release);
        self.room.notify_one();
        self.arrived.notify_one();
    }

    /// Messages waiting or being handled, and their bytes.
    pub(crate) fn load(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.waiting.len() + state.taken.len(), state.bytes)
    }

    pub(crate) fn put(&self, messages: &[DecodedMessage]) {
        let mut state = lock(&self.state);
        for message in messages {
            if state
                .waiting
                .insert(message.queue_offset, message.clone())
                .is_none()
            {
                state.bytes += message.body.len();
            }
            state.max_put = state.max_put.max(Some(message.queue_offset));
        }
        drop(state);
        self.arrived.notify_one();
    }

    /// Marks handled messages done; returns the offset to commit: the smallest still in
    /// flight, or one past the highest put when none is.
    pub(crate) fn remove(&self, offsets: &[i64]) -> Option<i64> {
        let mut state = lock(&self.state);
        for offset in offsets {
            if let Some(message) = state.waiting.remove(offset) {
                state.bytes -= message.body.len();
            }
        }
        let next = commit_point(&state);
        drop(state);
        self.room.notify_one();
        next
    }

    /// Orderly: takes the next `n` messages in offset order.
    pub(crate) fn take(&self, n: usize) -> Vec<DecodedMessage> {
        let mut state = lock(&self.state);
        debug_assert!(state.taken.is_empty(), "an orderly batch is already out");
        let mut batch = Vec::with_capacity(n);
        while batch.len() < n {
            let Some((offset, message)) = state.waiting.pop_first() else {
                break;
            };
            state.taken.insert(offset, message.clone());
            batch.push(message);
        }
        batch
    }

    /// Orderly: the taken batch is handled; returns the offset to commit.
    pub(crate) fn commit_taken(&self) -> Option<i64> {
        let mut state = lock(&self.state);
        let taken = std::mem::take(&mut state.taken);
        for message in taken.values() {
            state.bytes -= message.body.len();
        }
        let next = commit_point(&state);
        drop(state);
        self.room.notify_one();
        next
    }

    /// Orderly: the taken batch must be handled again, first.
    pub(crate) fn return_taken(&self) {
        let mut state = lock(&self.state);
        let taken = std::mem::take(&mut state.taken);
        state.waiting.extend(taken);
    }

    pub(crate) fn has_waiting(&self) -> bool {
        !lock(&self.state).waiting.is_empty()
    }

    /// Records a granted (or renewed) broker lock.
    pub(crate) fn set_locked(&self, locked: bool) {
        *lock(&self.locked_at) = locked.then(Instant::now);
        if locked {
            self.room.notify_one();
            self.arrived.notify_one();
        }
    }

    /// Whether this member holds the broker's lock on the queue, recently renewed.
    pub(crate) fn is_locked(&self) -> bool {
        lock(&self.locked_at).is_some_and(|at| at.elapsed() < Duration::from_millis(LOCK_TRUST_MS))
    }
}

fn commit_point(state: &State) -> Option<i64> {
    let first_in_flight = [state.waiting.keys().next(), state.taken.keys().next()]
        .into_iter()
        .flatten()
        .min()
        .copied();
    first_in_flight.or(state.max_put.map(|m| m + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(offset: i64) -> DecodedMessage {
        let host = "127.0.0.1:1".parse().unwrap();
        DecodedMessage {
            queue_id: 0,
            flag: 0,
            queue_offset: offset,
            physical_offset: 0,
            sys_flag: 0,
            born_timestamp: 0,
            born_host: host,
            store_timestamp: 0,
            store_host: host,
            reconsume_times: 0,
            body: Bytes::from_static(b"12345"),
            topic: "t".into(),
            properties: Default::default(),
        }
    }

    #[test]
    fn the_commit_point_is_the_first_message_not_handled() {
        let pq = ProcessQueue::new(MessageQueue::default());
        pq.put(&[message(5), message(6), message(7)]);
        assert_eq!(pq.load(), (3, 15));
        assert_eq!(pq.remove(&[6]), Some(5));
        assert_eq!(pq.remove(&[5]), Some(7));
        assert_eq!(pq.remove(&[7]), Some(8));
        assert_eq!(pq.load(), (0, 0));
    }

    #[test]
    fn orderly_batches_come_in_order_and_can_be_returned() {
        let pq = ProcessQueue::new(MessageQueue::default());
        pq.put(&[message(2), message(0), message(1)]);
        let batch: Vec<i64> = pq.take(2).iter().map(|m| m.queue_offset).collect();
        assert_eq!(batch, vec![0, 1]);
        pq.return_taken();
        let again: Vec<i64> = pq.take(2).iter().map(|m| m.queue_offset).collect();
        assert_eq!(again, vec![0, 1]);
        assert_eq!(pq.commit_taken(), Some(2));
        assert_eq!(pq.take(5).len(), 1);
        assert_eq!(pq.commit_taken(), Some(3));
    }
}
