//! One shard: a commit log, the offset indexes of the queues it owns and their key index, all
//! driven by the one thread that runs it.
//!
//! Appends get their queue offsets and log positions in one synchronous step, so offsets follow
//! log order. Placed batches wait in a FIFO until the log says they are readable (durable in
//! sync mode, at once in async mode); the dispatch then adds them to the offset indexes and the
//! key index, in log order, and wakes long-polling readers. Indexes are written behind, and an
//! index checkpoint records the log position below which they are complete on disk and what
//! each queue's index held there: after a crash they are truncated to it, checked against it
//! and rebuilt from the log (`recovery`), so they never point at a record the log lost and
//! never miss one it kept.
//!
//! A queue is created once however many callers race for it: the first caller makes its
//! directory durable while later ones wait for it (single-flight), and a topic's deletion and
//! its queues' creation never interleave.
//!
//! Directory layout: `commitlog/`, `consumequeue/<topic>/<queue id>/<first offset>`,
//! `index/<first log position>`, `index-checkpoint.0` and `.1`.

mod recovery;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use event_listener::Event;

use super::index_checkpoint::{CheckpointFiles, IndexCheckpoint, QueueRange};
use super::types::{
    Appended, Message, MessagePos, QueueOffsets, ReadOutcome, StoreError, StoredMessage, TagFilter,
};
use super::{Route, Routes};
use crate::commitlog::{CommitLog, TryAppendError};
use crate::config::StoreConfig;
use crate::consumequeue::{ConsumeQueue, CqEntry, Opened};
use crate::error::{OpenError, ReadError};
use crate::file_cache::FileCache;
use crate::keyindex::{ActiveKeyIndex, Full, SealedKeyIndex, key_hash};
use crate::log_budget::LogBudget;
use crate::record::{HEADER_BYTES, KEY_SEPARATOR, Record};
use crate::segment::{parse_segment_name, segment_name, sync_dir};

/// Most directory syncs of new queues at once, per shard.
const DIR_SYNCS_MAX: usize = 8;

/// How often unwritten offset-index entries are written out.
const INDEX_WRITE_INTERVAL_MS: u64 = 10;

/// How often the indexes are synced and the index checkpoint advanced.
const INDEX_CHECKPOINT_INTERVAL_MS: u64 = 1000;

/// While index writes keep failing, at most one warning this often.
const INDEX_FAILURE_LOG_MS: u64 = 10_000;

/// Most entries one read takes from an offset index.
pub const READ_ENTRIES_MAX: usize = 1024;

/// Most bytes of messages one read returns (beyond its first message).
pub const READ_BYTES_MAX: usize = 16 << 20;

/// Most messages one key query returns.
pub const QUERY_KEY_RESULTS_MAX: usize = 4096;

/// A queue: topic and queue id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    /// Topic name.
    pub topic: Bytes,
    /// Queue within the topic.
    pub queue_id: u32,
}

impl QueueId {
    /// The queue `queue_id` of `topic`.
    pub fn new(topic: &[u8], queue_id: u32) -> QueueId {
        QueueId {
            topic: Bytes::copy_from_slice(topic),
            queue_id,
        }
    }
}

/// The directory name of a topic: the name itself when it uses only RocketMQ's topic
/// characters, otherwise `~` and its bytes in hex.
pub(crate) fn topic_dir_name(topic: &[u8]) -> String {
    let plain = !topic.is_empty()
        && topic
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_%|".contains(&b));
    if plain {
        String::from_utf8_lossy(topic).into_owned()
    } else {
        let hex: String = topic.iter().map(|b| format!("{b:02x}")).collect();
        format!("~{hex}")
    }
}

/// The topic a directory name stands for.
pub(crate) fn topic_from_dir_name(name: &str) -> Option<Vec<u8>> {
    match name.strip_prefix('~') {
        Some(hex) if hex.len() % 2 == 0 && !hex.is_empty() => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect(),
        Some(_) => None,
        None => (topic_dir_name(name.as_bytes()) == name).then(|| name.as_bytes().to_vec()),
    }
}

/// A queue owned by this shard.
pub(crate) struct QueueState {
    pub(crate) id: QueueId,
    cq: RefCell<ConsumeQueue>,
    /// The offset the next placed message gets.
    assigned: Cell<u64>,
    /// Notified when messages of the queue become readable.
    pub(crate) arrived: Event,
    /// Set when its topic was deleted: nothing more is indexed for it.
    deleted: Cell<bool>,
}

/// A placed batch waiting to become readable.
struct PendingBatch {
    end: u64,
    queue: Rc<QueueState>,
    first_offset: u64,
    items: Vec<PendingItem>,
}

struct PendingItem {
    entry: CqEntry,
    store_timestamp_ms: u64,
    key_hashes: Vec<u32>,
}

/// The key indexes of a shard: the active one in memory, full ones being written, sealed files.
struct KeyIndexes {
    dir: PathBuf,
    /// Its number in the shard's file cache.
    owner: u64,
    slots: u32,
    entries: usize,
    active: ActiveKeyIndex,
    sealing: VecDeque<ActiveKeyIndex>,
    sealed: BTreeMap<u64, SealedKeyIndex>,
}

impl KeyIndexes {
    fn add(&mut self, hash: u32, pos: u64, timestamp_ms: u64) {
        if self.active.add(hash, pos, timestamp_ms) == Err(Full) {
            let mut full = std::mem::replace(
                &mut self.active,
                ActiveKeyIndex::new(self.slots, self.entries, pos),
            );
            full.set_end(pos);
            self.sealing.push_back(full);
            if self.active.add(hash, pos, timestamp_ms).is_err() {
                tracing::warn!("a new key index refused its first entry");
            }
        }
    }
}

/// One shard, on its thread.
#[derive(Clone)]
pub(crate) struct Shard {
    inner: Rc<ShardInner>,
}

struct ShardInner {
    id: u16,
    dir: PathBuf,
    config: Arc<StoreConfig>,
    log: CommitLog,
    /// The store's queue → shard table: this shard enters its queues as it creates them and
    /// removes them as it deletes them, in the same step as its own map.
    routes: Routes,
    queues: RefCell<HashMap<QueueId, Rc<QueueState>>>,
    /// Its open index files, within its share of the descriptor budget.
    files: Rc<FileCache>,
    /// Directory syncs of queues being created, at most [`DIR_SYNCS_MAX`] at once (each holds
    /// a descriptor; hundreds of queues created at once must not run the process out).
    dir_syncs: Permits,
    /// Queues being created: later callers wait for the first.
    creating: RefCell<HashMap<QueueId, Rc<Creation>>>,
    /// Notified when a queue is entered (long polls on a queue not created yet wait on it).
    queue_entered: Event,
    /// Topics being deleted: their queues are not created until the deletion is over.
    deleting: RefCell<HashSet<Bytes>>,
    /// Notified when a deletion is over.
    deletions: Event,
    /// Deleted topics, and the log position below which their records are the deleted life's.
    deleted_topics: RefCell<HashMap<Bytes, u64>>,
    pending: RefCell<VecDeque<PendingBatch>>,
    /// Notified when a batch is placed.
    placed: Event,
    /// Every record below this is in the indexes (in memory at least).
    dispatched: Cell<u64>,
    /// Queues with entries not yet written.
    dirty: RefCell<Vec<Rc<QueueState>>>,
    keys: RefCell<KeyIndexes>,
    index_checkpoint: RefCell<Option<CheckpointFiles>>,
    /// The position the last stored index checkpoint is for.
    checkpointed: Cell<Option<u64>>,
    /// Queues were created, deleted, positioned or trimmed since the last checkpoint.
    layout_changed: Cell<bool>,
    /// Offset-index files given up by retention, deleted once a checkpoint no longer needs them.
    retired_files: RefCell<Vec<PathBuf>>,
    /// The checkpoint file of older stores is gone (removed after the first checkpoint).
    legacy_removed: Cell<bool>,
    /// One index write at a time (the periodic writer, `close`, open).
    index_writing: futures_util::lock::Mutex<()>,
    closed: Cell<bool>,
}

/// A queue being created by its first caller.
struct Creation {
    done: Event,
    finished: Cell<bool>,
    failed: RefCell<Option<StoreError>>,
}

impl Creation {
    fn new() -> Creation {
        Creation {
            done: Event::new(),
            finished: Cell::new(false),
            failed: RefCell::new(None),
        }
    }

    fn finish(&self, failed: Option<StoreError>) {
        *self.failed.borrow_mut() = failed;
        self.finished.set(true);
        self.done.notify(usize::MAX);
    }

    async fn wait(&self) {
        let listener = self.done.listen();
        if !self.finished.get() {
            listener.await;
        }
    }
}

/// The first caller's hold on a queue being created: whatever becomes of the caller (done,
/// failed, disowned by a deletion, or dropped half-way), the slot leaves the map if it is
/// still this one and every waiter is woken.
struct CreationSlot<'a> {
    shard: &'a Shard,
    id: &'a QueueId,
    creation: &'a Rc<Creation>,
    failed: Option<StoreError>,
}

impl CreationSlot<'_> {
    /// Whether the slot is still this creation's (a deletion disowns it).
    fn owned(&self) -> bool {
        self.shard
            .inner
            .creating
            .borrow()
            .get(self.id)
            .is_some_and(|c| Rc::ptr_eq(c, self.creation))
    }
}

impl Drop for CreationSlot<'_> {
    fn drop(&mut self) {
        if self.owned() {
            self.shard.inner.creating.borrow_mut().remove(self.id);
        }
        self.creation.finish(self.failed.take());
    }
}

/// A topic deletion in progress: dropped (done, failed or cancelled), the mark goes and the
/// creations waiting for it go on.
struct DeletionMark<'a> {
    shard: &'a Shard,
    topic: Bytes,
}

impl Drop for DeletionMark<'_> {
    fn drop(&mut self) {
        self.shard.inner.deleting.borrow_mut().remove(&self.topic);
        self.shard.inner.deletions.notify(usize::MAX);
    }
}

/// A count of permits on one thread: at most so many holders at once, the others wait.
struct Permits {
    free: Cell<usize>,
    returned: Event,
}

/// A permit held; returned when dropped.
struct Permit<'a>(&'a Permits);

impl Permits {
    fn new(count: usize) -> Permits {
        Permits {
            free: Cell::new(count),
            returned: Event::new(),
        }
    }

    async fn acquire(&self) -> Permit<'_> {
        loop {
            if self.free.get() > 0 {
                self.free.set(self.free.get() - 1);
                return Permit(self);
            }
            let listener = self.returned.listen();
            if self.free.get() == 0 {
                listener.await;
            }
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.free.set(self.0.free.get() + 1);
        self.0.returned.notify(1);
    }
}

/// An index checkpoint to store, and the retired index files it lets go.
struct Snapshot {
    checkpoint: IndexCheckpoint,
    retired: Vec<PathBuf>,
}

/// What reopening a shard found.
#[derive(Debug, Clone)]
pub struct ShardRecovery {
    /// Which shard.
    pub shard: u16,
    /// The log's recovery.
    pub log: crate::RecoveryReport,
    /// Where the index checkpoint said the indexes were complete on disk (0: none found).
    pub index_checkpoint: u64,
    /// Records re-added to the offset indexes from the log.
    pub redispatched: u64,
    /// Queues whose offset index had lost entries and was rebuilt from the log start.
    pub rebuilt_queues: usize,
    /// No index checkpoint was found: every offset index was rebuilt from the log start.
    pub rebuilt_all: bool,
}

fn io_open(op: &'static str) -> impl FnOnce(std::io::Error) -> OpenError {
    OpenError::io(op)
}

impl Shard {
    /// Adds a record's entry to its queue's index (marking the queue dirty).
    fn push_entry(&self, queue: &Rc<QueueState>, record: &Record) -> Result<(), u64> {
        let h = record.header();
        let entry = CqEntry::new(record.log_pos(), record.len() as u32, h.tag_hash.get());
        let was_clean = queue.cq.borrow().unwritten_len() == 0;
        queue.cq.borrow_mut().push(h.queue_offset.get(), entry)?;
        if was_clean {
            self.inner.dirty.borrow_mut().push(Rc::clone(queue));
        }
        Ok(())
    }

    fn index_keys(&self, record: &Record) {
        let keys = record.keys();
        if keys.is_empty() {
            return;
        }
        let topic = record.topic();
        let ts = record.header().store_timestamp_ms.get();
        let mut index = self.inner.keys.borrow_mut();
        for key in keys
            .split(|&b| b == KEY_SEPARATOR)
            .filter(|k| !k.is_empty())
        {
            index.add(key_hash(&topic, key), record.log_pos(), ts);
        }
    }

    fn queue_dir(&self, id: &QueueId) -> PathBuf {
        self.inner
            .dir
            .join("consumequeue")
            .join(topic_dir_name(&id.topic))
            .join(id.queue_id.to_string())
    }

    /// The queue, created if new. Creation is single-flight: the first caller makes the
    /// queue's directory durable (that records this shard owns it) and enters the queue; every
    /// caller that arrives meanwhile waits for it and gets the same queue. A queue of a topic
    /// being deleted is created only once the deletion is over.
    pub(crate) async fn queue_or_create(
        &self,
        topic: &[u8],
        queue_id: u32,
    ) -> Result<Rc<QueueState>, StoreError> {
        let id = QueueId::new(topic, queue_id);
        if let Some(queue) = self.inner.queues.borrow().get(&id) {
            return Ok(Rc::clone(queue));
        }
        if topic.is_empty() || topic.len() > crate::record::MAX_TOPIC_BYTES {
            return Err(StoreError::BadRequest(format!(
                "topic of {} bytes",
                topic.len()
            )));
        }
        loop {
            if let Some(queue) = self.inner.queues.borrow().get(&id) {
                return Ok(Rc::clone(queue));
            }
            if self.inner.deleting.borrow().contains(&id.topic) {
                let listener = self.inner.deletions.listen();
                if self.inner.deleting.borrow().contains(&id.topic) {
                    listener.await;
                }
                continue;
            }
            let in_flight = self.inner.creating.borrow().get(&id).cloned();
            if let Some(creation) = in_flight {
                creation.wait().await;
                if let Some(e) = creation.failed.borrow().clone() {
                    return Err(e);
                }
                continue;
            }
            let creation = Rc::new(Creation::new());
            self.inner
                .creating
                .borrow_mut()
                .insert(id.clone(), Rc::clone(&creation));
            // Dropped unfinished (the caller cancelled): the slot goes and waiters try again.
            let mut slot = CreationSlot {
                shard: self,
                id: &id,
                creation: &creation,
                failed: None,
            };
            let made = self.make_queue_index(&id).await;
            // A deletion of the topic meanwhile disowns the creation: start again after it.
            if !slot.owned() {
                continue;
            }
            return match made {
                Ok(cq) => {
                    let queue = new_queue(id.clone(), cq);
                    self.enter_queue(Rc::clone(&queue));
                    Ok(queue)
                }
                Err(e) => {
                    slot.failed = Some(e.clone());
                    Err(e)
                }
            };
        }
    }

    /// Makes a new queue's index directory durable and returns its (empty) index. A directory
    /// already there belongs to no queue of this shard (a failed creation, a deletion that
    /// failed half-way): whatever it holds is not this queue's, and it is removed first, in the
    /// same step as it is found.
    async fn make_queue_index(&self, id: &QueueId) -> Result<ConsumeQueue, StoreError> {
        let path = self.queue_dir(id);
        if path.exists() {
            tracing::warn!(shard = self.inner.id, dir = ?path, "removing an offset index directory no queue owns");
            std::fs::remove_dir_all(&path)
                .map_err(StoreError::io("removing a leftover offset index"))?;
        }
        std::fs::create_dir_all(&path).map_err(StoreError::io("creating an offset index"))?;
        let _permit = self.inner.dir_syncs.acquire().await;
        for dir in path.ancestors().skip(1).take(2) {
            sync_dir(dir)
                .await
                .map_err(StoreError::io("syncing the offset index directory"))?;
        }
        Ok(ConsumeQueue::new_empty(
            &path,
            self.inner.config.cq_file_entries,
            &self.inner.files,
        ))
    }

    /// Enters a queue in this shard's map and the store's routes, in one step.
    fn enter_queue(&self, queue: Rc<QueueState>) {
        let route = Route {
            shard: self.inner.id,
            live: true,
        };
        self.inner
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.id.clone(), route);
        self.inner.queue_entered.notify(usize::MAX);
        let previous = self
            .inner
            .queues
            .borrow_mut()
            .insert(queue.id.clone(), queue);
        assert!(
            previous.is_none(),
            "queue {:?} entered twice",
            previous.map(|q| q.id.clone())
        );
        self.inner.layout_changed.set(true);
    }

    /// Appends messages to one queue; completes when they are stored as the flush mode defines.
    pub(crate) async fn append(
        &self,
        topic: &[u8],
        queue_id: u32,
        messages: &[Message],
    ) -> Result<Vec<Appended>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut queue = self.queue_or_create(topic, queue_id).await?;
        let log = &self.inner.log;
        let mut placed = Vec::with_capacity(messages.len());
        let (ticket, first) = loop {
            // Deleted while this append waited for room: it goes to the topic's next life.
            if queue.deleted.get() {
                queue = self.queue_or_create(topic, queue_id).await?;
                continue;
            }
            let first = queue.assigned.get();
            let records: Vec<_> = messages
                .iter()
                .enumerate()
                .map(|(i, m)| m.record(topic, queue_id, first + i as u64))
                .collect();
            placed.clear();
            match log.try_append_batch(&records, &mut placed) {
                Ok(ticket) => break (ticket, first),
                Err(TryAppendError::NoRoom(blocked)) => log.wait_for_room(blocked).await?,
                Err(TryAppendError::Failed(e)) => return Err(e.into()),
            }
        };
        queue.assigned.set(first + messages.len() as u64);
        let items = messages
            .iter()
            .zip(&placed)
            .map(|(m, at)| PendingItem {
                entry: CqEntry::new(at.pos, at.len, m.tag_hash),
                store_timestamp_ms: at.store_timestamp_ms,
                key_hashes: m
                    .keys
                    .split(|&b| b == KEY_SEPARATOR)
                    .filter(|k| !k.is_empty())
                    .map(|k| key_hash(topic, k))
                    .collect(),
            })
            .collect();
        self.inner.pending.borrow_mut().push_back(PendingBatch {
            end: ticket.end(),
            queue: Rc::clone(&queue),
            first_offset: first,
            items,
        });
        self.inner.placed.notify(1);
        self.dispatch_readable();
        ticket.stored().await?;
        self.dispatch_readable();
        Ok(placed
            .iter()
            .enumerate()
            .map(|(i, at)| Appended {
                queue_offset: first + i as u64,
                pos: MessagePos::new(self.inner.id, at.pos),
                size: at.len,
                store_timestamp_ms: at.store_timestamp_ms,
            })
            .collect())
    }

    /// Moves placed batches the log now lets readers see into the indexes, in log order.
    fn dispatch_readable(&self) {
        let readable = self.inner.log.positions().readable;
        loop {
            let batch = {
                let mut pending = self.inner.pending.borrow_mut();
                match pending.front() {
                    Some(front) if front.end <= readable => pending.pop_front(),
                    _ => None,
                }
            };
            let Some(batch) = batch else { break };
            if batch.queue.deleted.get() {
                // Its topic was deleted after these were placed: they stay in the log only.
                self.inner.dispatched.set(batch.end);
                continue;
            }
            let was_clean = batch.queue.cq.borrow().unwritten_len() == 0;
            {
                let mut cq = batch.queue.cq.borrow_mut();
                let mut keys = self.inner.keys.borrow_mut();
                for (i, item) in batch.items.iter().enumerate() {
                    // Offsets were assigned in log order and batches leave in log order.
                    let pushed = cq.push(batch.first_offset + i as u64, item.entry);
                    assert!(pushed.is_ok(), "dispatch out of queue order: {pushed:?}");
                    for &hash in &item.key_hashes {
                        keys.add(hash, item.entry.log_pos.get(), item.store_timestamp_ms);
                    }
                }
            }
            if was_clean {
                self.inner.dirty.borrow_mut().push(Rc::clone(&batch.queue));
            }
            self.inner.dispatched.set(batch.end);
            batch.queue.arrived.notify(usize::MAX);
        }
    }

    /// Writes index entries held in memory, seals full key indexes, and (if `checkpoint`)
    /// syncs them and advances the index checkpoint.
    pub(crate) async fn write_indexes(&self, checkpoint: bool) -> Result<(), StoreError> {
        let _writing = self.inner.index_writing.lock().await;
        let snapshot = if checkpoint {
            self.checkpoint_snapshot()
        } else {
            None
        };
        match (self.write_entries().await, snapshot) {
            (Ok(()), Some(snapshot)) => self.store_checkpoint(snapshot).await,
            (Err(e), Some(snapshot)) => {
                self.give_back(snapshot);
                Err(e)
            }
            (result, None) => result,
        }
    }

    /// Writes the offset-index entries held in memory and seals full key indexes.
    async fn write_entries(&self) -> Result<(), StoreError> {
        let mut dirty = std::mem::take(&mut *self.inner.dirty.borrow_mut());
        dirty.retain(|q| !q.deleted.get());
        for (i, queue) in dirty.iter().enumerate() {
            if let Err(e) = ConsumeQueue::write_pending(&queue.cq).await {
                // Keep it and the queues not tried yet dirty (a queue is marked dirty only by
                // its first unwritten entry): the entries stay in memory and readable, and are
                // retried.
                self.inner
                    .dirty
                    .borrow_mut()
                    .extend(dirty[i..].iter().cloned());
                return Err(StoreError::io("writing an offset index")(e));
            }
        }
        loop {
            let next = {
                let keys = self.inner.keys.borrow();
                keys.sealing
                    .front()
                    .map(|full| (full.begin_pos(), (!full.is_empty()).then(|| full.encode())))
            };
            let Some((begin, bytes)) = next else { break };
            if let Some(bytes) = bytes {
                let path = self.inner.keys.borrow().dir.join(segment_name(begin));
                let owner = self.inner.keys.borrow().owner;
                let key = (owner, begin);
                let sealed = SealedKeyIndex::seal_encoded(bytes, &path, key, &self.inner.files)
                    .await
                    .map_err(StoreError::io("sealing a key index"))?;
                self.inner.keys.borrow_mut().sealed.insert(begin, sealed);
            }
            self.inner.keys.borrow_mut().sealing.pop_front();
        }
        Ok(())
    }

    /// What the next index checkpoint says, taken in one step with the position it is for
    /// (every entry below it is in memory, in order): `None` if nothing changed since the last.
    fn checkpoint_snapshot(&self) -> Option<Snapshot> {
        let upto = self.inner.dispatched.get();
        let changed = self.inner.layout_changed.replace(false);
        if !changed && self.inner.checkpointed.get() == Some(upto) {
            return None;
        }
        let queues = self
            .inner
            .queues
            .borrow()
            .iter()
            .map(|(id, queue)| {
                let cq = queue.cq.borrow();
                let range = QueueRange {
                    min: cq.min_offset(),
                    max: cq.max_offset(),
                };
                (id.clone(), range)
            })
            .collect();
        // A deleted life is forgotten once retention has taken every record it could have.
        let start = self.inner.log.positions().start;
        let deleted = {
            let mut deleted = self.inner.deleted_topics.borrow_mut();
            deleted.retain(|_, before| *before > start);
            deleted.clone()
        };
        Some(Snapshot {
            checkpoint: IndexCheckpoint {
                dispatched_pos: upto,
                queues,
                deleted,
            },
            retired: std::mem::take(&mut *self.inner.retired_files.borrow_mut()),
        })
    }

    /// A snapshot that was not stored: what it took is owed to the next one.
    fn give_back(&self, snapshot: Snapshot) {
        self.inner.layout_changed.set(true);
        self.inner
            .retired_files
            .borrow_mut()
            .extend(snapshot.retired);
    }

    /// Syncs the written entries, stores the checkpoint, then deletes the index files it no
    /// longer needs.
    async fn store_checkpoint(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let (files, dirs): (Vec<_>, Vec<_>) = self
            .inner
            .queues
            .borrow()
            .values()
            .map(|q| {
                let (firsts, dir) = q.cq.borrow_mut().take_unsynced();
                ((Rc::clone(q), firsts), dir)
            })
            .unzip();
        let synced = async {
            for (queue, firsts) in files {
                for first in firsts {
                    ConsumeQueue::sync_file(&queue.cq, first)
                        .await
                        .map_err(StoreError::io("syncing an offset index"))?;
                }
            }
            // New files' directory entries, so that a power loss does not lose them.
            for dir in dirs.into_iter().flatten() {
                sync_dir(&dir)
                    .await
                    .map_err(StoreError::io("syncing an offset index directory"))?;
            }
            Ok::<(), StoreError>(())
        };
        if let Err(e) = synced.await {
            self.give_back(snapshot);
            return Err(e);
        }
        let taken = self.inner.index_checkpoint.borrow_mut().take();
        let Some(mut files) = taken else {
            self.give_back(snapshot);
            return Err(StoreError::io("writing the index checkpoint")(
                std::io::Error::other("the index checkpoint is already being written"),
            ));
        };
        let stored = files.store(&snapshot.checkpoint).await;
        *self.inner.index_checkpoint.borrow_mut() = Some(files);
        if let Err(e) = stored {
            self.give_back(snapshot);
            return Err(StoreError::io("writing the index checkpoint")(e));
        }
        self.inner
            .checkpointed
            .set(Some(snapshot.checkpoint.dispatched_pos));
        let legacy = (!self.inner.legacy_removed.replace(true))
            .then(|| self.inner.dir.join(recovery::LEGACY_INDEX_CHECKPOINT_FILE));
        for path in snapshot.retired.into_iter().chain(legacy) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(?path, error = %e, "deleting a retired offset-index file failed; will retry");
                    self.inner.retired_files.borrow_mut().push(path);
                }
            }
        }
        Ok(())
    }

    fn queue(&self, topic: &[u8], queue_id: u32) -> Option<Rc<QueueState>> {
        let id = QueueId::new(topic, queue_id);
        self.inner.queues.borrow().get(&id).cloned()
    }

    /// The queue's offset range, if it exists.
    pub(crate) fn offsets(&self, topic: &[u8], queue_id: u32) -> Option<QueueOffsets> {
        let queue = self.queue(topic, queue_id)?;
        let cq = queue.cq.borrow();
        Some(QueueOffsets {
            min: cq.min_offset(),
            max: cq.max_offset(),
        })
    }

    /// Waits until the queue's max offset exceeds `offset` or `timeout` passes (long polling).
    ///
    /// True if it was woken (a message, or its topic deleted), false if the time passed.
    pub(crate) async fn wait_for_message(
        &self,
        topic: &[u8],
        queue_id: u32,
        offset: u64,
        timeout: Duration,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        // A queue not created yet is waited for (a poll creates nothing), then its message.
        let queue = loop {
            let listener = self.inner.queue_entered.listen();
            if let Some(queue) = self.queue(topic, queue_id) {
                break queue;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            if compio::time::timeout(left, listener).await.is_err() {
                return false;
            }
        };
        loop {
            let listener = queue.arrived.listen();
            if queue.cq.borrow().max_offset() > offset || queue.deleted.get() {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            if compio::time::timeout(left, listener).await.is_err() {
                return false;
            }
        }
    }

    /// Reads up to `max_count` messages (and about `max_bytes`, at least one) from `offset`.
    pub(crate) async fn read(
        &self,
        topic: &[u8],
        queue_id: u32,
        offset: u64,
        max_count: usize,
        max_bytes: usize,
        filter: Option<&TagFilter>,
    ) -> Result<ReadOutcome, StoreError> {
        let Some(queue) = self.queue(topic, queue_id) else {
            return Ok(ReadOutcome::NoSuchQueue);
        };
        let (min_offset, max_offset) = {
            let cq = queue.cq.borrow();
            (cq.min_offset(), cq.max_offset())
        };
        if offset < min_offset {
            return Ok(ReadOutcome::OffsetMoved {
                min_offset,
                max_offset,
            });
        }
        if offset == max_offset {
            return Ok(ReadOutcome::NoNewMessage {
                min_offset,
                max_offset,
            });
        }
        if offset > max_offset {
            return Ok(ReadOutcome::OffsetBeyondMax {
                min_offset,
                max_offset,
            });
        }
        let count = max_count.clamp(1, READ_ENTRIES_MAX);
        let max_bytes = max_bytes.min(READ_BYTES_MAX);
        let entries = match ConsumeQueue::entries(&queue.cq, offset, count).await {
            Ok(entries) => entries,
            // Retention gave the file up while this read waited to open it.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && offset < queue.cq.borrow().min_offset() =>
            {
                let cq = queue.cq.borrow();
                return Ok(ReadOutcome::OffsetMoved {
                    min_offset: cq.min_offset(),
                    max_offset: cq.max_offset(),
                });
            }
            Err(e) => return Err(StoreError::io("reading an offset index")(e)),
        };
        let mut wanted = Vec::with_capacity(entries.len());
        let mut next_offset = offset;
        let mut bytes = 0usize;
        for (i, entry) in entries.iter().enumerate() {
            let at = offset + i as u64;
            if let Some(filter) = filter
                && !filter.hashes.contains(&entry.tag_hash.get())
            {
                next_offset = at + 1;
                continue;
            }
            let size = entry.size.get() as usize;
            if !wanted.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            wanted.push((at, *entry));
            next_offset = at + 1;
        }
        let records = match self.read_records(&wanted).await {
            Ok(records) => records,
            Err(StoreError::Read(ReadError::BeforeStart { .. })) => {
                // Retention got there first.
                let cq = queue.cq.borrow();
                return Ok(ReadOutcome::OffsetMoved {
                    min_offset: cq.min_offset().max(offset + 1),
                    max_offset: cq.max_offset(),
                });
            }
            Err(e) => return Err(e),
        };
        let mut messages = Vec::with_capacity(records.len());
        for ((at, entry), record) in wanted.iter().zip(records) {
            if let Some(confirm) = filter.and_then(|f| f.confirm.as_ref())
                && !confirm(&record)
            {
                continue;
            }
            messages.push(StoredMessage {
                queue_offset: *at,
                pos: MessagePos::new(self.inner.id, entry.log_pos.get()),
                record,
            });
        }
        Ok(ReadOutcome::Found {
            messages,
            next_offset,
            min_offset,
            max_offset,
        })
    }

    /// Reads the records of `entries`, one read per run of records adjacent in the log.
    async fn read_records(&self, entries: &[(u64, CqEntry)]) -> Result<Vec<Record>, StoreError> {
        let seg = self.inner.config.log.segment_bytes;
        let mut out = Vec::with_capacity(entries.len());
        let mut i = 0;
        while i < entries.len() {
            let start = entries[i].1.log_pos.get();
            let mut end = entries[i].1.end();
            let mut j = i + 1;
            while j < entries.len()
                && entries[j].1.log_pos.get() == end
                && (end - 1) / seg == (entries[j].1.end() - 1) / seg
            {
                end = entries[j].1.end();
                j += 1;
            }
            let run = self.inner.log.read(start, (end - start) as usize).await?;
            for (_, entry) in &entries[i..j] {
                let from = (entry.log_pos.get() - start) as usize;
                let bytes = run.slice(from..from + entry.size.get() as usize);
                let record = Record::parse(bytes, entry.log_pos.get()).map_err(|error| {
                    ReadError::Corrupt {
                        pos: entry.log_pos.get(),
                        error,
                    }
                })?;
                out.push(record);
            }
            i = j;
        }
        Ok(out)
    }

    /// The first offset whose message was stored at or after `timestamp_ms` (the max offset if
    /// none), by binary search over the offset index and the records' store timestamps.
    pub(crate) async fn offset_for_timestamp(
        &self,
        topic: &[u8],
        queue_id: u32,
        timestamp_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let Some(queue) = self.queue(topic, queue_id) else {
            return Ok(None);
        };
        let (mut lo, mut hi) = {
            let cq = queue.cq.borrow();
            (cq.min_offset(), cq.max_offset())
        };
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let entries = ConsumeQueue::entries(&queue.cq, mid, 1)
                .await
                .map_err(StoreError::io("reading an offset index"))?;
            let Some(entry) = entries.first() else { break };
            let stored_at = match self.inner.log.read(entry.log_pos.get(), HEADER_BYTES).await {
                Ok(head) => crate::record::RecordHeader::parse(
                    &head,
                    entry.log_pos.get(),
                    entry.size.get() as usize,
                )
                .map(|h| h.store_timestamp_ms.get())
                .map_err(|error| ReadError::Corrupt {
                    pos: entry.log_pos.get(),
                    error,
                })?,
                // Retired meanwhile: everything below is older still.
                Err(ReadError::BeforeStart { .. }) => 0,
                Err(e) => return Err(e.into()),
            };
            if stored_at < timestamp_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(Some(lo))
    }

    /// Messages of `topic` carrying `key`, stored within `[from_ms, to_ms]`, newest first, at most
    /// `limit`. Hash hits are confirmed on the record (topic and exact key).
    pub(crate) async fn query_key(
        &self,
        topic: &[u8],
        key: &[u8],
        limit: usize,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let hash = key_hash(topic, key);
        let limit = limit.min(QUERY_KEY_RESULTS_MAX);
        let mut candidates: Vec<(u64, u64)> = Vec::new();
        let sealed_newest_first: Vec<(u64, u64, u64)>;
        {
            let keys = self.inner.keys.borrow();
            candidates.extend(keys.active.view().lookup(hash));
            for full in keys.sealing.iter().rev() {
                candidates.extend(full.view().lookup(hash));
            }
            sealed_newest_first = keys
                .sealed
                .iter()
                .rev()
                .map(|(&b, s)| {
                    (
                        b,
                        s.header.begin_timestamp_ms.get(),
                        s.header.end_timestamp_ms.get(),
                    )
                })
                .collect();
        }
        let mut found = Vec::new();
        self.confirm_candidates(&candidates, topic, key, limit, from_ms, to_ms, &mut found)
            .await?;
        for (begin, first_ts, last_ts) in sealed_newest_first {
            if found.len() >= limit {
                break;
            }
            if last_ts < from_ms || first_ts > to_ms {
                continue;
            }
            // A clone shares the file, so the lookup does not hold the borrow across its reads.
            let Some(sealed) = self.inner.keys.borrow().sealed.get(&begin).cloned() else {
                continue;
            };
            let hits = sealed
                .lookup(hash, usize::MAX)
                .await
                .map_err(StoreError::io("reading a key index"))?;
            self.confirm_candidates(&hits, topic, key, limit, from_ms, to_ms, &mut found)
                .await?;
        }
        Ok(found)
    }

    #[allow(clippy::too_many_arguments)]
    async fn confirm_candidates(
        &self,
        candidates: &[(u64, u64)],
        topic: &[u8],
        key: &[u8],
        limit: usize,
        from_ms: u64,
        to_ms: u64,
        found: &mut Vec<StoredMessage>,
    ) -> Result<(), StoreError> {
        for &(pos, ts) in candidates {
            if found.len() >= limit {
                break;
            }
            if ts < from_ms || ts > to_ms {
                continue;
            }
            let record = match self.inner.log.read_record(pos).await {
                Ok(record) => record,
                Err(ReadError::BeforeStart { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let matches = record.topic() == topic
                && record
                    .keys()
                    .split(|&b| b == KEY_SEPARATOR)
                    .any(|k| k == key);
            if matches {
                found.push(StoredMessage {
                    queue_offset: record.header().queue_offset.get(),
                    pos: MessagePos::new(self.inner.id, pos),
                    record,
                });
            }
        }
        Ok(())
    }

    /// The message at a log position (a message id).
    pub(crate) async fn read_at(&self, pos: u64) -> Result<Record, StoreError> {
        Ok(self.inner.log.read_record(pos).await?)
    }

    /// Applies retention as of `now`: segments last written before `now - retention_hours` are
    /// retired (recycled), and while the disk is fuller than `disk_max_used_ratio` the oldest
    /// complete segments are deleted. Indexes follow the log's new start. Returns how many
    /// segments left the log.
    pub(crate) async fn apply_retention(&self, now: SystemTime) -> Result<usize, StoreError> {
        let log = &self.inner.log;
        let keep = Duration::from_secs_f64(self.inner.config.retention_hours * 3600.0);
        let mut gone = 0;
        if let Some(cutoff) = now.checked_sub(keep) {
            let expired = log.expired_before(cutoff).await;
            gone += log.retire_segments_before(expired).await?;
        }
        let seg = self.inner.config.log.segment_bytes;
        while disk_used_ratio(&self.inner.dir)
            .is_some_and(|used| used > self.inner.config.disk_max_used_ratio)
        {
            let start = log.positions().start;
            let deleted = log
                .delete_segments_before(start - start % seg + seg)
                .await?;
            if deleted == 0 {
                break;
            }
            tracing::warn!(
                shard = self.inner.id,
                "disk above disk_max_used_ratio: deleted the oldest segment"
            );
            gone += deleted;
        }
        if gone > 0 {
            self.retire_indexes_below(log.positions().start).await?;
        }
        Ok(gone)
    }

    /// Moves every queue's minimum offset past records below `log_start`; index files that only
    /// point there are deleted once the next index checkpoint holds the new minimums, and key
    /// index files at once (the checkpoint does not vouch for them).
    async fn retire_indexes_below(&self, log_start: u64) -> Result<(), StoreError> {
        let queues: Vec<_> = self.inner.queues.borrow().values().cloned().collect();
        for queue in queues {
            let given_up = ConsumeQueue::retire_below(&queue.cq, log_start)
                .await
                .map_err(StoreError::io("trimming an offset index"))?;
            // Deleted meanwhile: its files went with it, and the names may be a new life's.
            if !queue.deleted.get() {
                self.inner.retired_files.borrow_mut().extend(given_up);
            }
        }
        self.inner.layout_changed.set(true);
        let doomed: Vec<PathBuf> = {
            let mut keys = self.inner.keys.borrow_mut();
            let gone: Vec<u64> = keys
                .sealed
                .iter()
                .filter(|(_, s)| s.header.end_pos.get() <= log_start)
                .map(|(&b, _)| b)
                .collect();
            for b in &gone {
                if let Some(sealed) = keys.sealed.remove(b) {
                    sealed.close();
                }
            }
            gone.iter()
                .map(|&b| keys.dir.join(segment_name(b)))
                .collect()
        };
        for path in doomed {
            compio::fs::remove_file(&path)
                .await
                .map_err(StoreError::io("deleting a key index"))?;
        }
        Ok(())
    }

    /// Deletes the offset indexes of every queue of `topic`; returns the queues deleted. Their
    /// records stay in the log until retention removes them, but are no longer readable by
    /// queue offset, and recovery never indexes them again: the index checkpoint records the
    /// deletion (and the log position below which the topic's records are the deleted life's)
    /// before any file goes. One deletion of a topic runs at a time, and its queues are not
    /// created again until it is over.
    pub(crate) async fn delete_topic(&self, topic: &[u8]) -> Result<Vec<QueueId>, StoreError> {
        let topic = Bytes::copy_from_slice(topic);
        loop {
            let listener = self.inner.deletions.listen();
            if !self.inner.deleting.borrow().contains(&topic) {
                break;
            }
            listener.await;
        }
        self.inner.deleting.borrow_mut().insert(topic.clone());
        let mark = DeletionMark { shard: self, topic };
        self.delete_marked_topic(&mark.topic).await
    }

    async fn delete_marked_topic(&self, topic: &Bytes) -> Result<Vec<QueueId>, StoreError> {
        self.dispatch_readable();
        // In one step: the queues leave this shard's map and the routes, creations of its
        // queues in flight are disowned, and the records placed so far become the deleted
        // life's.
        let doomed: Vec<Rc<QueueState>> = {
            let mut queues = self.inner.queues.borrow_mut();
            let ids: Vec<QueueId> = queues
                .keys()
                .filter(|id| id.topic == *topic)
                .cloned()
                .collect();
            ids.iter().filter_map(|id| queues.remove(id)).collect()
        };
        {
            // The routes stay (a queue keeps its shard from one life to the next, so requests
            // already routed here and new ones meet), no longer live.
            let mut routes = self.inner.routes.write().unwrap_or_else(|p| p.into_inner());
            for queue in &doomed {
                if let Some(route) = routes.get_mut(&queue.id) {
                    route.live = false;
                }
            }
        }
        self.inner
            .creating
            .borrow_mut()
            .retain(|id, _| id.topic != *topic);
        for queue in &doomed {
            queue.deleted.set(true);
            queue.arrived.notify(usize::MAX);
        }
        // Every record of the deleted life is placed below this; made durable before the
        // deletion is recorded, so that no crash can cut the log below it and let records of a
        // new life fall under it.
        let placed_end = self.inner.log.positions().tail;
        self.inner
            .deleted_topics
            .borrow_mut()
            .insert(topic.clone(), placed_end);
        self.inner.layout_changed.set(true);
        self.inner.log.flush().await?;
        // Durable before any file goes: a crash from here on never brings them back.
        self.write_indexes(true).await?;
        for queue in &doomed {
            queue.cq.borrow().close_files();
            match std::fs::remove_dir_all(self.queue_dir(&queue.id)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("deleting an offset index")(e)),
            }
        }
        let topic_dir = self
            .inner
            .dir
            .join("consumequeue")
            .join(topic_dir_name(topic));
        if topic_dir.exists() {
            std::fs::remove_dir_all(&topic_dir)
                .map_err(StoreError::io("deleting a topic's offset indexes"))?;
        }
        sync_dir(&self.inner.dir.join("consumequeue"))
            .await
            .map_err(StoreError::io("syncing the offset index directory"))?;
        Ok(doomed.iter().map(|q| q.id.clone()).collect())
    }

    /// Flushes the log, writes and syncs every index and records the index checkpoint, then
    /// closes the log (its final checkpoint, the directory lock released), whatever happened
    /// before.
    ///
    /// Indexes that cannot be written (a full disk) do not make the close fail: the warning
    /// names them, and the index checkpoint stays where the indexes on disk are complete, so
    /// the next open truncates them there and rebuilds the rest from the log, which holds
    /// every acknowledged record. The store is consistent and nothing needs repair, so a stop
    /// on a full disk is a clean one. A log that cannot be flushed or closed is an error:
    /// acknowledged records might not be durable.
    pub(crate) async fn close(self) -> Result<(), StoreError> {
        self.inner.closed.set(true);
        self.inner.placed.notify(usize::MAX);
        let flushed = self.inner.log.flush().await;
        self.dispatch_readable();
        if let Err(e) = self.write_indexes(true).await {
            tracing::warn!(
                shard = self.inner.id,
                error = %e,
                "closing a shard: indexes not written; the next open rebuilds them from the log"
            );
        }
        let closed = self.inner.log.clone().close().await;
        flushed?;
        closed?;
        Ok(())
    }
}

fn new_queue(id: QueueId, cq: ConsumeQueue) -> Rc<QueueState> {
    Rc::new(QueueState {
        id,
        assigned: Cell::new(cq.max_offset()),
        cq: RefCell::new(cq),
        arrived: Event::new(),
        deleted: Cell::new(false),
    })
}

/// Share of the filesystem holding `dir` in use, if it can be told.
fn disk_used_ratio(dir: &Path) -> Option<f64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    if stat.f_blocks == 0 {
        return None;
    }
    Some((stat.f_blocks - stat.f_bavail.min(stat.f_blocks)) as f64 / stat.f_blocks as f64)
}

/// Sync mode: moves batches into the indexes as flushes make them readable, even when the
/// appender that placed them has gone away.
async fn dispatcher(inner: Rc<ShardInner>) {
    let shard = Shard { inner };
    loop {
        if shard.inner.closed.get() {
            return;
        }
        let next = shard.inner.pending.borrow().front().map(|b| b.end);
        match next {
            Some(end) => {
                if shard.inner.log.wait_durable(end).await.is_err() {
                    return;
                }
                shard.dispatch_readable();
            }
            None => {
                let listener = shard.inner.placed.listen();
                if shard.inner.pending.borrow().is_empty() && !shard.inner.closed.get() {
                    listener.await;
                }
            }
        }
    }
}

/// Writes index entries every few milliseconds and checkpoints the indexes every second.
async fn index_writer(inner: Rc<ShardInner>) {
    let shard = Shard { inner };
    let mut last_checkpoint = Instant::now();
    // A run of failures (a full disk fails every attempt, 100 a second): the log gets the
    // first, one a while with the count of the others, and the recovery.
    let warnings = LogBudget::new(1, Duration::from_millis(INDEX_FAILURE_LOG_MS));
    loop {
        compio::time::sleep(Duration::from_millis(INDEX_WRITE_INTERVAL_MS)).await;
        if shard.inner.closed.get() {
            return;
        }
        let checkpoint =
            last_checkpoint.elapsed() >= Duration::from_millis(INDEX_CHECKPOINT_INTERVAL_MS);
        match shard.write_indexes(checkpoint).await {
            Ok(()) => {
                if checkpoint {
                    last_checkpoint = Instant::now();
                }
                if warnings.reset() {
                    tracing::info!(shard = shard.inner.id, "writing indexes succeeded again");
                }
            }
            // Entries stay in memory and readable; the write is retried next time.
            Err(e) => {
                if let Some(not_logged_before) = warnings.take(Instant::now()) {
                    tracing::warn!(shard = shard.inner.id, error = %e, not_logged_before, "writing indexes failed; will retry");
                }
            }
        }
    }
}

/// Applies retention every `retention_check_interval_ms`.
async fn retention(inner: Rc<ShardInner>) {
    let shard = Shard { inner };
    let interval = Duration::from_millis(shard.inner.config.retention_check_interval_ms);
    loop {
        compio::time::sleep(interval).await;
        if shard.inner.closed.get() {
            return;
        }
        if let Err(e) = shard.apply_retention(SystemTime::now()).await {
            tracing::warn!(shard = shard.inner.id, error = %e, "retention failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_directory_names_round_trip() {
        for topic in [
            &b"orders"[..],
            b"a-b_c%d|e",
            b"with space",
            b"..",
            b"caf\xc3\xa9",
            b"~x",
        ] {
            let name = topic_dir_name(topic);
            assert!(!name.contains('/') && name != "." && name != "..", "{name}");
            assert_eq!(topic_from_dir_name(&name).as_deref(), Some(topic), "{name}");
        }
        assert_eq!(topic_from_dir_name("~zz"), None);
        assert_eq!(topic_from_dir_name("a b"), None);
    }

    /// Offset-index files of two entries each, so a few appends need a new file.
    fn small_config() -> Arc<StoreConfig> {
        Arc::new(StoreConfig {
            cq_file_entries: 2,
            key_index_slots: 64,
            key_index_entries: 256,
            log: crate::config::LogConfig {
                segment_bytes: 256 * 1024,
                max_record_bytes: 16 * 1024,
                write_buffer_bytes: 64 * 1024,
                flush: crate::config::FlushMode::Async,
                ..crate::config::LogConfig::default()
            },
            ..StoreConfig::default()
        })
    }

    fn message(i: u64) -> Message {
        Message {
            body: Bytes::from(format!("message {i}")),
            ..Message::default()
        }
    }

    /// A queue's offset index that can write into its open files but create no new one (as on
    /// a full disk): its directory moved aside and a plain file put in its place. Undone by
    /// [`NewIndexFilesRefused::unblock`].
    struct NewIndexFilesRefused {
        dir: PathBuf,
        aside: PathBuf,
    }

    impl NewIndexFilesRefused {
        fn new(shard: &Shard, topic: &[u8]) -> NewIndexFilesRefused {
            let dir = shard.queue_dir(&QueueId::new(topic, 0));
            let aside = dir.with_extension("aside");
            std::fs::rename(&dir, &aside).unwrap();
            std::fs::write(&dir, b"").unwrap();
            NewIndexFilesRefused { dir, aside }
        }

        fn unblock(self) {
            std::fs::remove_file(&self.dir).unwrap();
            std::fs::rename(&self.aside, &self.dir).unwrap();
        }
    }

    fn unwritten(shard: &Shard, topic: &[u8]) -> usize {
        let queue = shard.queue(topic, 0).unwrap();
        queue.cq.borrow().unwritten_len()
    }

    #[compio::test]
    async fn a_long_poll_creates_no_queue_and_is_woken_by_its_first_message() {
        let dir = tempfile::tempdir().unwrap();
        let (shard, _) = Shard::open(
            0,
            dir.path(),
            small_config(),
            Routes::default(),
            Rc::new(FileCache::new(16)),
        )
        .await
        .unwrap();
        assert!(
            !shard
                .wait_for_message(b"absent", 0, 0, Duration::from_millis(20))
                .await
        );
        assert!(
            shard.offsets(b"absent", 0).is_none(),
            "a poll created the queue"
        );
        assert!(!shard.queue_dir(&QueueId::new(b"absent", 0)).exists());
        let poll = shard.wait_for_message(b"t", 0, 0, Duration::from_secs(60));
        let append = async {
            shard.append(b"t", 0, &[message(0)]).await.unwrap();
        };
        let (woken, ()) = futures_util::future::join(poll, append).await;
        assert!(
            woken,
            "the poll timed out instead of seeing the first message"
        );
    }

    #[compio::test]
    async fn a_creation_dropped_half_way_leaves_no_slot_behind() {
        use futures_util::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let (shard, _) = Shard::open(
            0,
            dir.path(),
            small_config(),
            Routes::default(),
            Rc::new(FileCache::new(16)),
        )
        .await
        .unwrap();
        {
            let mut first = Box::pin(shard.queue_or_create(b"t", 0));
            assert!(
                first.as_mut().now_or_never().is_none(),
                "creation awaits the directory sync"
            );
        }
        let again = compio::time::timeout(Duration::from_secs(10), shard.queue_or_create(b"t", 0));
        assert!(
            again.await.is_ok(),
            "a later caller waited on the dropped creation"
        );
        shard.append(b"t", 0, &[message(0)]).await.unwrap();
        assert_eq!(shard.offsets(b"t", 0).map(|o| o.max), Some(1));
    }

    #[compio::test]
    async fn a_failed_index_write_keeps_every_queue_it_did_not_write_for_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let (shard, _) = Shard::open(
            0,
            dir.path(),
            small_config(),
            Routes::default(),
            Rc::new(FileCache::new(16)),
        )
        .await
        .unwrap();
        shard.append(b"a", 0, &[message(0)]).await.unwrap();
        shard.append(b"b", 0, &[message(1)]).await.unwrap();
        shard.write_indexes(true).await.unwrap();
        let blocked = NewIndexFilesRefused::new(&shard, b"a");
        // Queue a first: its offset 2 needs a new file, which fails before b is tried.
        shard
            .append(b"a", 0, &[message(2), message(3)])
            .await
            .unwrap();
        shard.append(b"b", 0, &[message(4)]).await.unwrap();
        assert!(shard.write_indexes(false).await.is_err());
        assert_eq!(unwritten(&shard, b"b"), 1);
        blocked.unblock();
        shard.write_indexes(true).await.unwrap();
        assert_eq!(unwritten(&shard, b"a"), 0, "queue a written on the retry");
        assert_eq!(unwritten(&shard, b"b"), 0, "queue b written on the retry");
        shard.close().await.unwrap();
        let (_, recovery) = Shard::open(
            0,
            dir.path(),
            small_config(),
            Routes::default(),
            Rc::new(FileCache::new(16)),
        )
        .await
        .unwrap();
        assert_eq!(recovery.redispatched, 0, "{recovery:?}");
        assert_eq!(recovery.rebuilt_queues, 0, "{recovery:?}");
    }

    #[compio::test]
    async fn a_close_whose_indexes_cannot_be_written_closes_the_log_and_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let (shard, _) = Shard::open(
            0,
            dir.path(),
            small_config(),
            Routes::default(),
            Rc::new(FileCache::new(16)),
        )
        .await
        .unwrap();
        shard.append(b"a", 0, &[message(0)]).await.unwrap();
        shard.write_indexes(true).await.unwrap();
        let blocked = NewIndexFilesRefused::new(&shard, b"a");
        shard
            .append(b"a", 0, &[message(1), message(2)])
            .await
            .unwrap();
        shard
            .close()
            .await
            .expect("indexes are rebuilt from the log: not a failed close");
        blocked.unblock();
        // The log was closed: its lock released and its final checkpoint at its end.
        let (shard, recovery) = Shard::open(
            0,
            dir.path(),
            small_config(),
            Routes::default(),
            Rc::new(FileCache::new(16)),
        )
        .await
        .unwrap();
        assert_eq!(recovery.log.records_scanned, 0, "{recovery:?}");
        assert_eq!(recovery.redispatched, 2, "{recovery:?}");
        let ReadOutcome::Found { messages, .. } =
            shard.read(b"a", 0, 0, 10, 1 << 20, None).await.unwrap()
        else {
            panic!("queue a has no messages")
        };
        let bodies: Vec<_> = messages.iter().map(|m| m.record.body()).collect();
        let expected: Vec<_> = (0..3).map(|i| message(i).body).collect();
        assert_eq!(bodies, expected);
    }
}
