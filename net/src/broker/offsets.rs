//! Consumer offsets: what each group has committed on each queue, kept in memory, written to
//! `config/consumerOffset.json` (RocketMQ's format) every few seconds and at shutdown.
//!
//! As in RocketMQ, a commit is durable once the next write has run: a crash loses at most the
//! last `offset_flush_interval_ms` of commits, and consumers then see those messages again
//! (at-least-once), never skip any.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use crate::protocol::bodies::ConsumerOffsetWrapper;
use crate::protocol::{decode_json, encode_json};

use super::persist;
use super::topics::TopicsError;

#[derive(Default)]
struct State {
    /// `topic@group` → queue → committed offset.
    committed: BTreeMap<String, BTreeMap<i32, i64>>,
    /// `topic@group` → queue → where pulls have reached (for consumption stats).
    pulled: HashMap<String, BTreeMap<i32, i64>>,
    dirty: bool,
    counter: i64,
}

/// The committed offsets of every group, shared by every shard thread.
pub struct ConsumerOffsets {
    path: PathBuf,
    state: Mutex<State>,
}

fn key(topic: &str, group: &str) -> String {
    format!("{topic}@{group}")
}

impl ConsumerOffsets {
    /// Loads `path`, or starts empty.
    pub fn open(path: PathBuf) -> Result<ConsumerOffsets, TopicsError> {
        let shown = path.display().to_string();
        let loaded: ConsumerOffsetWrapper = match persist::read_if_exists(&path) {
            Ok(Some(bytes)) => {
                decode_json("consumer offsets", &bytes).map_err(|e| TopicsError::Corrupt {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?
            }
            Ok(None) => ConsumerOffsetWrapper::default(),
            Err(source) => {
                return Err(TopicsError::Io {
                    op: "reading",
                    path: shown,
                    source,
                });
            }
        };
        Ok(ConsumerOffsets {
            path,
            state: Mutex::new(State {
                committed: loaded.offset_table,
                counter: loaded.data_version.counter,
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a group's committed offset on a queue.
    pub fn commit(&self, group: &str, topic: &str, queue_id: i32, offset: i64) {
        let mut state = self.lock();
        let queues = state.committed.entry(key(topic, group)).or_default();
        if queues.insert(queue_id, offset) != Some(offset) {
            state.dirty = true;
        }
    }

    /// A group's committed offset on a queue.
    pub fn committed(&self, group: &str, topic: &str, queue_id: i32) -> Option<i64> {
        self.lock()
            .committed
            .get(&key(topic, group))
            .and_then(|q| q.get(&queue_id))
            .copied()
    }

    /// Notes where a group's pulls of a queue have reached.
    pub fn pulled(&self, group: &str, topic: &str, queue_id: i32, next_offset: i64) {
        self.lock()
            .pulled
            .entry(key(topic, group))
            .or_default()
            .insert(queue_id, next_offset);
    }

    /// Where a group's pulls of a queue have reached.
    pub fn pulled_to(&self, group: &str, topic: &str, queue_id: i32) -> Option<i64> {
        self.lock()
            .pulled
            .get(&key(topic, group))
            .and_then(|q| q.get(&queue_id))
            .copied()
    }

    /// Topics a group has committed offsets for.
    pub fn topics_of_group(&self, group: &str) -> Vec<String> {
        let suffix = format!("@{group}");
        self.lock()
            .committed
            .keys()
            .filter_map(|k| k.strip_suffix(&suffix).map(str::to_string))
            .collect()
    }

    /// Forgets every group's offsets of a topic.
    pub fn remove_topic(&self, topic: &str) {
        let prefix = format!("{topic}@");
        let mut state = self.lock();
        let before = state.committed.len();
        state.committed.retain(|k, _| !k.starts_with(&prefix));
        state.pulled.retain(|k, _| !k.starts_with(&prefix));
        if state.committed.len() != before {
            state.dirty = true;
        }
    }

    /// The whole table, as `GET_ALL_CONSUMER_OFFSET` returns it.
    pub fn snapshot(&self) -> ConsumerOffsetWrapper {
        let state = self.lock();
        let mut wrapper = ConsumerOffsetWrapper {
            offset_table: state.committed.clone(),
            ..ConsumerOffsetWrapper::default()
        };
        wrapper.data_version.counter = state.counter;
        wrapper
    }

    /// Writes the table if anything changed since the last write.
    pub fn persist(&self) -> Result<(), TopicsError> {
        let bytes = {
            let mut state = self.lock();
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            state.counter += 1;
            let mut wrapper = ConsumerOffsetWrapper {
                offset_table: state.committed.clone(),
                ..ConsumerOffsetWrapper::default()
            };
            wrapper.data_version.counter = state.counter;
            encode_json(&wrapper)
        };
        persist::write_atomically(&self.path, &bytes).map_err(|source| {
            // Try again next time.
            self.lock().dirty = true;
            TopicsError::Io {
                op: "writing",
                path: self.path.display().to_string(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_survive_a_persist_and_reopen_and_topics_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consumerOffset.json");
        let offsets = ConsumerOffsets::open(path.clone()).unwrap();
        offsets.commit("g", "T", 0, 5);
        offsets.commit("g", "T", 1, 7);
        offsets.commit("g", "U", 0, 1);
        offsets.commit("h", "T", 0, 2);
        offsets.pulled("g", "T", 0, 9);
        assert_eq!(offsets.pulled_to("g", "T", 0), Some(9));
        offsets.persist().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""T@g":{"0":5,"1":7}"#), "{text}");

        let offsets = ConsumerOffsets::open(path.clone()).unwrap();
        assert_eq!(offsets.committed("g", "T", 1), Some(7));
        assert_eq!(offsets.committed("g", "T", 2), None);
        let mut topics = offsets.topics_of_group("g");
        topics.sort();
        assert_eq!(topics, ["T", "U"]);
        offsets.remove_topic("T");
        offsets.persist().unwrap();
        let offsets = ConsumerOffsets::open(path).unwrap();
        assert_eq!(offsets.committed("h", "T", 0), None);
        assert_eq!(offsets.committed("g", "U", 0), Some(1));
    }
}
