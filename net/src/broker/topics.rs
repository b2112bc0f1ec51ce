//! The broker's topics: created by admins, by first sends through the `TBW102` template, and for
//! consumer groups' retry queues; kept in `config/topics.json` (RocketMQ's format), with every
//! change since it was last written whole appended to `config/topics.journal`
//! ([`super::topic_journal`]), so a change costs the same however many topics there are.

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
use super::topic_journal::{Change, Journal};

/// The journal is folded into `topics.json` once it holds more than this, or more than the
/// table itself.
const JOURNAL_FOLD_BYTES_MIN: u64 = 1 << 20;

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
    /// Changes since `topics.json` was written whole; taken with the state's write lock held.
    journal: Mutex<Folded>,
    /// Topics being deleted: sends to them wait until the deletion is over.
    deleting: Deleting,
}

/// The journal, and the size of the table it is folded into.
struct Folded {
    journal: Journal,
    table_bytes: u64,
    /// Folded past the larger of this and the table's size.
    fold_min_bytes: u64,
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
        let journal_path = path.with_extension("journal");
        let (journal, changes) =
            Journal::open(&journal_path).map_err(|source| TopicsError::Io {
                op: "reading",
                path: journal_path.display().to_string(),
                source,
            })?;
        for change in changes {
            apply(&mut state.topic_config_table, change);
        }
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
        let table_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        let table = TopicTable {
            path,
            state: RwLock::new(state),
            journal: Mutex::new(Folded {
                journal,
                table_bytes,
                fold_min_bytes: JOURNAL_FOLD_BYTES_MIN,
            }),
            deleting: Deleting::default(),
        };
        if changed {
            let mut folded = table.journal.lock().unwrap_or_else(|p| p.into_inner());
            table.fold(&table.read(), &mut folded)?;
        }
        Ok(table)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TopicConfigWrapper> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A topic's config.
    pub fn get(&self, topic: &str) -> Option<TopicConfig> {
        self.read().topic_config_table.get(topic).cloned()
    }

    /// The table's version.
    pub fn data_version(&self) -> DataVersion {
        self.read().data_version
    }

    /// Every topic, with the table's version: what registrations carry.
    pub fn snapshot(&self) -> TopicConfigWrapper {
        self.read().clone()
    }

    /// Writes the table whole and empties the journal (which is replayed again, harmlessly, if
    /// a crash comes between the two).
    fn fold(&self, state: &TopicConfigWrapper, folded: &mut Folded) -> Result<(), TopicsError> {
        let bytes = encode_json(state);
        persist::write_atomically(&self.path, &bytes).map_err(|source| TopicsError::Io {
            op: "writing",
            path: self.path.display().to_string(),
            source,
        })?;
        folded.table_bytes = bytes.len() as u64;
        folded.journal.clear().map_err(|source| TopicsError::Io {
            op: "emptying",
            path: folded.journal.path().display().to_string(),
            source,
        })
    }

    /// Decides a change from the table as it is, makes it durable in the journal, then applies
    /// it and bumps the version: all under the write lock, so changes are ordered on disk as in
    /// memory, and one that cannot be written is not made.
    fn change<T>(
        &self,
        decide: impl FnOnce(&BTreeMap<String, TopicConfig>) -> (T, Option<Change>),
    ) -> Result<T, TopicsError> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let (result, change) = decide(&state.topic_config_table);
        let Some(change) = change else {
            return Ok(result);
        };
        let mut folded = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        folded
            .journal
            .append(&change)
            .map_err(|source| TopicsError::Io {
                op: "writing",
                path: folded.journal.path().display().to_string(),
                source,
            })?;
        apply(&mut state.topic_config_table, change);
        state.data_version = DataVersion {
            counter: state.data_version.counter + 1,
            state_version: 0,
            timestamp: now_ms(),
        };
        // Folded once it outgrows the table: a change costs a line, amortized.
        if folded.journal.bytes() > folded.table_bytes.max(folded.fold_min_bytes)
            && let Err(e) = self.fold(&state, &mut folded)
        {
            tracing::warn!(error = %e, "folding the topic journal failed; kept, will retry");
        }
        Ok(result)
    }

    /// Creates or replaces a topic.
    pub fn upsert(&self, config: TopicConfig) -> Result<Upserted, TopicsError> {
        self.change(|table| match table.get(&config.topic_name) {
            Some(old) if *old == config => (Upserted::Unchanged(config), None),
            Some(_) => (Upserted::Updated(config.clone()), Some(Change::Put(config))),
            None => (Upserted::Created(config.clone()), Some(Change::Put(config))),
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
                return (Some((existing.clone(), false)), None);
            }
            let Some(template) = table.get(template) else {
                return (None, None);
            };
            if template.perm & PERM_INHERIT == 0 {
                return (None, None);
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
            (Some((config.clone(), true)), Some(Change::Put(config)))
        })
    }

    /// A consumer group's retry topic, created if missing; true if it was created.
    pub fn ensure_retry_topic(&self, topic: &str) -> Result<(TopicConfig, bool), TopicsError> {
        self.change(|table| match table.get(topic) {
            Some(existing) => ((existing.clone(), false), None),
            None => {
                let config = TopicConfig::new(topic, RETRY_QUEUE_NUMS, PERM_READ | PERM_WRITE);
                ((config.clone(), true), Some(Change::Put(config)))
            }
        })
    }

    /// Removes a topic; true if it existed.
    pub fn delete(&self, topic: &str) -> Result<bool, TopicsError> {
        self.change(|table| {
            let exists = table.contains_key(topic);
            (exists, exists.then(|| Change::Delete(topic.to_string())))
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

/// Applies one change to the table.
fn apply(table: &mut BTreeMap<String, TopicConfig>, change: Change) {
    match change {
        Change::Put(config) => {
            table.insert(config.topic_name.clone(), config);
        }
        Change::Delete(topic) => {
            table.remove(&topic);
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
    fn a_change_appends_one_journal_line_and_the_journal_folds_once_it_outgrows_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.json");
        let journal = dir.path().join("topics.journal");
        let table = open(dir.path(), true);
        let whole = std::fs::read(&path).unwrap();
        table.create_for_send("t0", "TBW102", 4, 0).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "the table is not rewritten"
        );
        let one_line = std::fs::metadata(&journal).unwrap().len();
        assert!(one_line > 0);
        drop(table);
        let table = open(dir.path(), true);
        assert!(table.get("t0").is_some(), "replayed from the journal");
        // Past the table's size (at least 4 KiB here), the journal is folded into it.
        table.journal.lock().unwrap().fold_min_bytes = 4096;
        for i in 1..60 {
            table
                .create_for_send(&format!("t{i}"), "TBW102", 4, 0)
                .unwrap();
        }
        table.delete("t5").unwrap();
        let journal_now = std::fs::metadata(&journal).unwrap().len();
        assert!(journal_now < 4096 + one_line, "folded: {journal_now} bytes");
        assert_ne!(
            std::fs::read(&path).unwrap(),
            whole,
            "the table was written whole"
        );
        drop(table);
        let table = open(dir.path(), true);
        assert!(table.get("t59").is_some() && table.get("t0").is_some());
        assert!(table.get("t5").is_none());
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
