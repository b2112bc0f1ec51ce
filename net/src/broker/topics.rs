//! The broker's topics: created by admins, by first sends through the `TBW102` template, and for
//! consumer groups' retry queues; kept in `config/topics.json` (RocketMQ's format).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use event_listener::Event;

use crate::protocol::route::{
    AUTO_CREATE_TOPIC_KEY, DataVersion, PERM_INHERIT, PERM_READ, PERM_WRITE, TopicConfig,
    TopicConfigWrapper,
};
use crate::protocol::{decode_json, encode_json};

use super::persist;

/// Queues of a consumer group's retry topic (RocketMQ's `retryQueueNums`).
pub const RETRY_QUEUE_NUMS: i32 = 1;

/// Why the topic table could not be read or saved.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a topic table.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// The decoder's complaint.
        reason: String,
    },
}

/// What a create-or-update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upserted {
    /// It was new.
    Created(TopicConfig),
    /// It existed and changed.
    Updated(TopicConfig),
    /// It existed as asked.
    Unchanged(TopicConfig),
}

/// The topic table, shared by every shard thread. Reads take a read lock; changes (rare) are
/// written to disk before they are visible.
pub struct TopicTable {
    path: PathBuf,
    state: RwLock<TopicConfigWrapper>,
    /// Topics being deleted: sends to them wait until the deletion is over.
    deleting: Deleting,
}

/// Topics being deleted, and the event their senders wait on.
#[derive(Default)]
struct Deleting {
    /// How many (a send checks this alone while it is 0).
    count: AtomicUsize,
    topics: Mutex<HashSet<String>>,
    over: Event,
}

impl Deleting {
    fn contains(&self, topic: &str) -> bool {
        self.count.load(Ordering::Acquire) > 0
            && self
                .topics
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(topic)
    }
}

/// A topic deletion in progress: sends to the topic wait until it is dropped.
pub struct DeletionGuard<'a> {
    table: &'a TopicTable,
    topic: String,
}

impl Drop for DeletionGuard<'_> {
    fn drop(&mut self) {
        let deleting = &self.table.deleting;
        let removed = deleting
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.topic);
        if removed {
            deleting.count.fetch_sub(1, Ordering::AcqRel);
        }
        deleting.over.notify(usize::MAX);
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl TopicTable {
    /// Loads `path` (or starts empty) and sets up the system topics: `TBW102` when topics are
    /// auto-created (removed otherwise, so clients find no template), and topics named after
    /// the cluster and the broker, as RocketMQ has for admin tools.
    pub fn open(
        path: PathBuf,
        auto_create: bool,
        default_queue_nums: i32,
        cluster_name: &str,
        broker_name: &str,
    ) -> Result<TopicTable, TopicsError> {
        let shown = path.display().to_string();
        let (mut state, existed): (TopicConfigWrapper, bool) = match persist::read_if_exists(&path)
        {
            Ok(Some(bytes)) => (
                decode_json("topics", &bytes).map_err(|e| TopicsError::Corrupt {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?,
                true,
            ),
            Ok(None) => (TopicConfigWrapper::default(), false),
            Err(source) => {
                return Err(TopicsError::Io {
                    op: "reading",
                    path: shown,
                    source,
                });
            }
        };
        let loaded = state.topic_config_table.clone();
        if auto_create {
            state.topic_config_table.insert(
                AUTO_CREATE_TOPIC_KEY.into(),
                TopicConfig::new(
                    AUTO_CREATE_TOPIC_KEY,
                    default_queue_nums,
                    PERM_INHERIT | PERM_READ | PERM_WRITE,
                ),
            );
        } else {
            state.topic_config_table.remove(AUTO_CREATE_TOPIC_KEY);
        }
        for name in [cluster_name, broker_name] {
            state
                .topic_config_table
                .entry(name.to_string())
                .or_insert_with(|| {
                    TopicConfig::new(name, 1, PERM_INHERIT | PERM_READ | PERM_WRITE)
                });
        }
        state.data_version = DataVersion {
            counter: state.data_version.counter + 1,
            state_version: 0,
            timestamp: now_ms(),
        };
        // Saved only when opening changed it: a broker whose disk is full must still start
        // and serve reads (the version bump needs no saving; its timestamp is new anyway).
        let changed = !existed || state.topic_config_table != loaded;
        let table = TopicTable {
            path,
            state: RwLock::new(state),
            deleting: Deleting::default(),
        };
        if changed {
            table.save(&table.read())?;
        }
        Ok(table)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TopicConfigWrapper> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, state: &TopicConfigWrapper) -> Result<(), TopicsError> {
        persist::write_atomically(&self.path, &encode_json(state)).map_err(|source| {
            TopicsError::Io {
                op: "writing",
                path: self.path.display().to_string(),
                source,
            }
        })
    }

    /// A topic's config.
    pub fn get(&self, topic: &str) -> Option<TopicConfig> {
        self.read().topic_config_table.get(topic).cloned()
    }

    /// Every topic, with the table's version: what registrations carry.
    pub fn snapshot(&self) -> TopicConfigWrapper {
        self.read().clone()
    }

    /// Applies `change` to the table, saves it if it changed, and bumps the version.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, TopicConfig>) -> (T, bool),
    ) -> Result<T, TopicsError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut next = state.clone();
        let (result, changed) = change(&mut next.topic_config_table);
        if changed {
            next.data_version = DataVersion {
                counter: next.data_version.counter + 1,
                state_version: 0,
                timestamp: now_ms(),
            };
            self.save(&next)?;
            *state = next;
        }
        Ok(result)
    }

    /// Creates or replaces a topic.
    pub fn upsert(&self, config: TopicConfig) -> Result<Upserted, TopicsError> {
        self.change(|table| match table.get(&config.topic_name) {
            Some(old) if *old == config => (Upserted::Unchanged(config), false),
            Some(_) => {
                table.insert(config.topic_name.clone(), config.clone());
                (Upserted::Updated(config), true)
            }
            None => {
                table.insert(config.topic_name.clone(), config.clone());
                (Upserted::Created(config), true)
            }
        })
    }

    /// The topic a first send creates (`createTopicInSendMessageMethod`): from `template`, if it
    /// exists and may be inherited, with `min(queues asked, template's)` queues and the
    /// template's permissions less inheritance. `None` if the template does not allow it.
    pub fn create_for_send(
        &self,
        topic: &str,
        template: &str,
        queue_nums: i32,
        topic_sys_flag: i32,
    ) -> Result<Option<(TopicConfig, bool)>, TopicsError> {
        self.change(|table| {
            if let Some(existing) = table.get(topic) {
                return (Some((existing.clone(), false)), false);
            }
            let Some(template) = table.get(template) else {
                return (None, false);
            };
            if template.perm & PERM_INHERIT == 0 {
                return (None, false);
            }
            let queues = queue_nums.clamp(1, template.write_queue_nums.max(1));
            let config = TopicConfig {
                topic_name: topic.to_string(),
                read_queue_nums: queues,
                write_queue_nums: queues,
                perm: template.perm & !PERM_INHERIT,
                topic_filter_type: template.topic_filter_type.clone(),
                topic_sys_flag,
                ..TopicConfig::default()
            };
            table.insert(topic.to_string(), config.clone());
            (Some((config, true)), true)
        })
    }

    /// A consumer group's retry topic, created if missing; true if it was created.
    pub fn ensure_retry_topic(&self, topic: &str) -> Result<(TopicConfig, bool), TopicsError> {
        self.change(|table| match table.get(topic) {
            Some(existing) => ((existing.clone(), false), false),
            None => {
                let config = TopicConfig::new(topic, RETRY_QUEUE_NUMS, PERM_READ | PERM_WRITE);
                table.insert(topic.to_string(), config.clone());
                ((config, true), true)
            }
        })
    }

    /// Removes a topic; true if it existed.
    pub fn delete(&self, topic: &str) -> Result<bool, TopicsError> {
        self.change(|table| {
            let removed = table.remove(topic).is_some();
            (removed, removed)
        })
    }

    /// Starts deleting a topic: until the guard is dropped (its queues and offsets gone too),
    /// [`Self::wait_while_deleting`] holds sends to it back, so that none re-creates it and has
    /// its messages deleted with the old ones. Waits for a deletion of the same topic already
    /// in progress. Returns whether the topic existed, and the guard.
    pub async fn begin_delete(
        &self,
        topic: &str,
    ) -> Result<(bool, DeletionGuard<'_>), TopicsError> {
        loop {
            let listener = self.deleting.over.listen();
            {
                let mut topics = self
                    .deleting
                    .topics
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if topics.insert(topic.to_string()) {
                    self.deleting.count.fetch_add(1, Ordering::AcqRel);
                    break;
                }
            }
            listener.await;
        }
        let guard = DeletionGuard {
            table: self,
            topic: topic.to_string(),
        };
        let existed = self.delete(topic)?;
        Ok((existed, guard))
    }

    /// Completes once `topic` is not being deleted (at once, almost always).
    pub async fn wait_while_deleting(&self, topic: &str) {
        while self.deleting.contains(topic) {
            let listener = self.deleting.over.listen();
            if !self.deleting.contains(topic) {
                break;
            }
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path, auto: bool) -> TopicTable {
        TopicTable::open(
            dir.join("topics.json"),
            auto,
            8,
            "DefaultCluster",
            "broker-a",
        )
        .unwrap()
    }

    #[test]
    fn sends_wait_while_their_topic_is_deleted_and_deletions_of_it_queue_up() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let table = open(dir.path(), true);
        table.create_for_send("orders", "TBW102", 4, 0).unwrap();
        let (existed, guard) = futures_executor::block_on(table.begin_delete("orders")).unwrap();
        assert!(existed);
        assert!(table.get("orders").is_none());
        let mut send = Box::pin(table.wait_while_deleting("orders"));
        assert!(send.as_mut().now_or_never().is_none(), "held back");
        assert!(
            table.wait_while_deleting("other").now_or_never().is_some(),
            "another topic is not held"
        );
        let mut second = Box::pin(table.begin_delete("orders"));
        assert!(
            second.as_mut().now_or_never().is_none(),
            "one deletion at a time"
        );
        drop(guard);
        assert!(send.as_mut().now_or_never().is_some(), "released");
        let (existed, guard) = futures_executor::block_on(second).unwrap();
        assert!(!existed);
        drop(guard);
        assert!(table.wait_while_deleting("orders").now_or_never().is_some());
    }

    #[test]
    fn reopening_writes_the_file_only_when_opening_changes_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.json");
        drop(open(dir.path(), true));
        let first = std::fs::read(&path).unwrap();
        // The same settings again: nothing to write (a full disk must not stop a restart).
        drop(open(dir.path(), true));
        assert_eq!(std::fs::read(&path).unwrap(), first);
        // Auto-creation turned off removes the template: written.
        let table = open(dir.path(), false);
        assert!(table.get("TBW102").is_none());
        drop(table);
        assert_ne!(std::fs::read(&path).unwrap(), first);
        assert!(open(dir.path(), false).get("TBW102").is_none());
    }

    #[test]
    fn sends_create_topics_from_the_template_and_changes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let table = open(dir.path(), true);
        assert_eq!(table.get("TBW102").unwrap().perm, 7);
        let (created, new) = table
            .create_for_send("orders", "TBW102", 4, 0)
            .unwrap()
            .unwrap();
        assert!(new);
        assert_eq!((created.write_queue_nums, created.perm), (4, 6));
        // Asking for more than the template has gets the template's.
        let (wide, _) = table
            .create_for_send("wide", "TBW102", 64, 0)
            .unwrap()
            .unwrap();
        assert_eq!(wide.write_queue_nums, 8);
        // A non-template cannot be inherited from.
        assert_eq!(table.create_for_send("x", "orders", 4, 0).unwrap(), None);
        let version = table.snapshot().data_version.counter;
        assert!(matches!(
            table.upsert(TopicConfig::new("orders", 4, 6)).unwrap(),
            Upserted::Unchanged(_)
        ));
        assert_eq!(table.snapshot().data_version.counter, version);
        assert!(matches!(
            table.upsert(TopicConfig::new("orders", 6, 6)).unwrap(),
            Upserted::Updated(_)
        ));
        assert!(table.snapshot().data_version.counter > version);
        assert!(table.delete("wide").unwrap());
        assert!(!table.delete("wide").unwrap());
        drop(table);

        let table = open(dir.path(), true);
        assert_eq!(table.get("orders").unwrap().write_queue_nums, 6);
        assert!(table.get("wide").is_none());
        assert!(table.get("DefaultCluster").is_some());
    }

    #[test]
    fn without_auto_creation_there_is_no_template() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), true));
        let table = open(dir.path(), false);
        assert!(table.get("TBW102").is_none());
        assert_eq!(table.create_for_send("t", "TBW102", 4, 0).unwrap(), None);
        let (retry, created) = table.ensure_retry_topic("%RETRY%g").unwrap();
        assert!(created);
        assert_eq!((retry.write_queue_nums, retry.perm), (1, 6));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("topics.json"), b"{oops").unwrap();
        let err = TopicTable::open(dir.path().join("topics.json"), true, 8, "c", "b")
            .err()
            .unwrap();
        assert!(err.to_string().contains("topics.json"), "{err}");
    }
}
