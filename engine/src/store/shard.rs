//! One shard: a commit log, the offset indexes of the queues it owns and their key index, all
//! driven by the one thread that runs it.
//!
//! Appends get their queue offsets and log positions in one synchronous step, so offsets follow
//! log order. Placed batches wait in a FIFO until the log says they are readable (durable in
//! sync mode, at once in async mode); the dispatch then adds them to the offset indexes and the
//! key index, in log order, and wakes long-polling readers. Indexes are written behind, and an
//! index checkpoint records the log position below which they are complete on disk: after a
//! crash they are truncated to it and rebuilt from the log, so they never point at a record the
//! log lost and never miss one it kept.
//!
//! Directory layout: `commitlog/`, `consumequeue/<topic>/<queue id>/<first offset>`,
//! `index/<first log position>`, `index.checkpoint`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use event_listener::Event;
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::types::{
    Appended, Message, MessagePos, QueueOffsets, ReadOutcome, StoreError, StoredMessage, TagFilter,
};
use crate::checkpoint::{SlotFile, SlotRecord};
use crate::commitlog::{CommitLog, TryAppendError};
use crate::config::StoreConfig;
use crate::consumequeue::{ConsumeQueue, CqEntry, Opened};
use crate::error::{OpenError, ReadError};
use crate::keyindex::{ActiveKeyIndex, Full, SealedKeyIndex, key_hash};
use crate::log_budget::LogBudget;
use crate::record::{HEADER_BYTES, KEY_SEPARATOR, Record};
use crate::segment::{parse_segment_name, segment_name, sync_dir};

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

/// Name of the index checkpoint file in a shard directory.
const INDEX_CHECKPOINT_FILE: &str = "index.checkpoint";

/// The index checkpoint: every record below `dispatched_pos` is in the offset indexes on disk.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
struct IndexCheckpoint {
    dispatched_pos: U64,
}

impl SlotRecord for IndexCheckpoint {
    const MAGIC: [u8; 4] = *b"QVIX";
    const VERSION: u32 = 1;
}

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
    queues: RefCell<HashMap<QueueId, Rc<QueueState>>>,
    pending: RefCell<VecDeque<PendingBatch>>,
    /// Notified when a batch is placed.
    placed: Event,
    /// Every record below this is in the indexes (in memory at least).
    dispatched: Cell<u64>,
    /// Queues with entries not yet written.
    dirty: RefCell<Vec<Rc<QueueState>>>,
    keys: RefCell<KeyIndexes>,
    index_checkpoint: RefCell<Option<SlotFile<IndexCheckpoint>>>,
    /// One index write at a time (the periodic writer, `close`, open).
    index_writing: futures_util::lock::Mutex<()>,
    closed: Cell<bool>,
}

/// What reopening a shard found.
#[derive(Debug, Clone)]
pub struct ShardRecovery {
    /// The log's recovery.
    pub log: crate::RecoveryReport,
    /// Where the indexes were complete on disk.
    pub index_checkpoint: u64,
    /// Records re-added to the offset indexes from the log.
    pub redispatched: u64,
    /// Queues whose offset index had a gap and was rebuilt from the log start.
    pub rebuilt_queues: usize,
}

fn io_open(op: &'static str) -> impl FnOnce(std::io::Error) -> OpenError {
    OpenError::io(op)
}

impl Shard {
    /// Opens (recovering) the shard in `dir`.
    pub(crate) async fn open(
        id: u16,
        dir: &Path,
        config: Arc<StoreConfig>,
    ) -> Result<(Shard, ShardRecovery), OpenError> {
        let (log, log_report) = CommitLog::open(dir.join("commitlog"), config.log.clone()).await?;
        let (cp_file, cp) = SlotFile::<IndexCheckpoint>::open(&dir.join(INDEX_CHECKPOINT_FILE))
            .await
            .map_err(io_open("reading the index checkpoint"))?;
        let positions = log.positions();
        let (start, end) = (positions.start, positions.readable);
        let checkpoint = cp.map_or(0, |c| c.dispatched_pos.get());
        let keep_below = checkpoint.min(end);
        let mut redispatch_from = keep_below;
        let mut broken = Vec::new();

        let max_record = config.log.max_record_bytes as u32;
        let mut queues = HashMap::new();
        let cq_root = dir.join("consumequeue");
        std::fs::create_dir_all(&cq_root)
            .map_err(io_open("creating the offset index directory"))?;
        for (queue_id, path) in
            list_queue_dirs(&cq_root).map_err(io_open("listing offset indexes"))?
        {
            let (cq, opened) =
                ConsumeQueue::open(&path, config.cq_file_entries, max_record, keep_below)
                    .await
                    .map_err(io_open("opening an offset index"))?;
            match opened {
                Opened::Intact => {}
                Opened::ResumeFrom(pos) => redispatch_from = redispatch_from.min(pos),
                Opened::Broken => broken.push(queue_id.clone()),
            }
            queues.insert(queue_id.clone(), new_queue(queue_id, cq));
        }

        let key_dir = dir.join("index");
        std::fs::create_dir_all(&key_dir).map_err(io_open("creating the key index directory"))?;
        let (sealed, key_from) = open_sealed_key_indexes(&key_dir, start, end).await?;
        let keys = KeyIndexes {
            dir: key_dir,
            slots: config.key_index_slots,
            entries: config.key_index_entries as usize,
            active: ActiveKeyIndex::new(
                config.key_index_slots,
                config.key_index_entries as usize,
                key_from,
            ),
            sealing: VecDeque::new(),
            sealed,
        };

        let inner = Rc::new(ShardInner {
            id,
            dir: dir.to_path_buf(),
            config,
            log,
            queues: RefCell::new(queues),
            pending: RefCell::new(VecDeque::new()),
            placed: Event::new(),
            dispatched: Cell::new(end),
            dirty: RefCell::new(Vec::new()),
            keys: RefCell::new(keys),
            index_checkpoint: RefCell::new(Some(cp_file)),
            index_writing: futures_util::lock::Mutex::new(()),
            closed: Cell::new(false),
        });
        let shard = Shard { inner };
        let (redispatched, rebuilt_queues) = shard
            .rebuild_indexes(redispatch_from.max(start), key_from, start, broken)
            .await?;
        for queue in shard.inner.queues.borrow().values() {
            queue.assigned.set(queue.cq.borrow().max_offset());
        }
        shard
            .retire_indexes_below(start)
            .await
            .map_err(|e| OpenError::Io {
                op: "trimming offset indexes",
                source: std::io::Error::other(e.to_string()),
            })?;
        // Entries that cannot be written now (a full disk) stay in memory, readable, and the
        // index writer retries them; the index checkpoint stays behind until they are written,
        // so a crash meanwhile rebuilds them again. A shard must open on a full disk.
        if let Err(e) = shard.write_indexes(true).await {
            tracing::warn!(
                shard = id,
                error = %e,
                "opening a shard: rebuilt indexes not written; kept in memory, will retry"
            );
        }
        compio::runtime::spawn(dispatcher(Rc::clone(&shard.inner))).detach();
        compio::runtime::spawn(index_writer(Rc::clone(&shard.inner))).detach();
        compio::runtime::spawn(retention(Rc::clone(&shard.inner))).detach();
        let recovery = ShardRecovery {
            log: log_report,
            index_checkpoint: checkpoint,
            redispatched,
            rebuilt_queues,
        };
        tracing::info!(shard = id, ?recovery.index_checkpoint, redispatched, rebuilt_queues, "shard open");
        Ok((shard, recovery))
    }

    /// Re-adds records from the log: to the offset indexes from `cq_from` (records a queue's
    /// index already has are skipped), to the active key index from `key_from`. A queue whose
    /// offsets do not follow on (its index lost entries the checkpoint vouched for), or already
    /// `broken`, is rebuilt from the log start. Returns (records re-added, queues rebuilt).
    async fn rebuild_indexes(
        &self,
        cq_from: u64,
        key_from: u64,
        log_start: u64,
        mut broken: Vec<QueueId>,
    ) -> Result<(u64, usize), OpenError> {
        let corrupt = |e: ReadError| OpenError::Io {
            op: "rebuilding indexes from the log",
            source: std::io::Error::other(e.to_string()),
        };
        let mut scanner = self.inner.log.scan(cq_from.min(key_from));
        let mut redispatched = 0;
        while let Some(record) = scanner.next().await.map_err(corrupt)? {
            let pos = record.log_pos();
            if pos >= cq_from {
                let queue = self.queue_for_rebuild(&record).await?;
                let offset = record.header().queue_offset.get();
                let has = queue.cq.borrow().max_offset();
                let already_there = !queue.cq.borrow().is_empty() && offset < has;
                if !already_there && !broken.contains(&queue.id) {
                    if self.push_entry(&queue, &record).is_err() {
                        broken.push(queue.id.clone());
                    } else {
                        redispatched += 1;
                    }
                }
            }
            if pos >= key_from {
                self.index_keys(&record);
            }
        }
        for id in &broken {
            tracing::warn!(shard = self.inner.id, topic = ?id.topic, queue = id.queue_id, "offset index has a gap; rebuilding it from the log start");
            self.reset_queue(id).await?;
        }
        if !broken.is_empty() {
            let mut scanner = self.inner.log.scan(log_start);
            while let Some(record) = scanner.next().await.map_err(corrupt)? {
                let id = QueueId {
                    topic: record.topic(),
                    queue_id: record.header().queue_id.get(),
                };
                if broken.contains(&id) {
                    let mut queue = self.queue_for_rebuild(&record).await?;
                    let offset = record.header().queue_offset.get();
                    if !queue.cq.borrow().is_empty() && offset < queue.cq.borrow().max_offset() {
                        // Offsets start again: the topic was deleted and created anew, and
                        // only its last life counts.
                        self.reset_queue(&id).await?;
                        queue = self.queue_for_rebuild(&record).await?;
                    }
                    // Offsets below the log start are gone: the index starts at the first kept.
                    if let Err(expected) = self.push_entry(&queue, &record) {
                        return Err(OpenError::Layout {
                            dir: self.inner.dir.display().to_string(),
                            problem: format!(
                                "queue offsets in the log do not follow on: expected {expected}, found {} at {}",
                                record.header().queue_offset.get(),
                                record.log_pos()
                            ),
                        });
                    }
                }
            }
        }
        Ok((redispatched, broken.len()))
    }

    /// Replaces a queue's offset index with an empty one (during recovery).
    async fn reset_queue(&self, id: &QueueId) -> Result<(), OpenError> {
        let path = self.queue_dir(id);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io_open("removing a broken offset index"))?;
        }
        let (cq, _) = ConsumeQueue::open(
            &path,
            self.inner.config.cq_file_entries,
            self.inner.config.log.max_record_bytes as u32,
            0,
        )
        .await
        .map_err(io_open("recreating an offset index"))?;
        self.inner.dirty.borrow_mut().retain(|q| q.id != *id);
        self.inner
            .queues
            .borrow_mut()
            .insert(id.clone(), new_queue(id.clone(), cq));
        Ok(())
    }

    async fn queue_for_rebuild(&self, record: &Record) -> Result<Rc<QueueState>, OpenError> {
        self.queue_or_create(&record.topic(), record.header().queue_id.get())
            .await
            .map_err(|e| OpenError::Io {
                op: "creating an offset index",
                source: std::io::Error::other(e.to_string()),
            })
    }

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

    /// The queue, created (its directory made durable first: that records this shard owns it)
    /// if new.
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
        let path = self.queue_dir(&id);
        let created = !path.exists();
        std::fs::create_dir_all(&path).map_err(StoreError::io("creating an offset index"))?;
        if created {
            for dir in path.ancestors().skip(1).take(2) {
                sync_dir(dir)
                    .await
                    .map_err(StoreError::io("syncing the offset index directory"))?;
            }
        }
        let (cq, _) = ConsumeQueue::open(
            &path,
            self.inner.config.cq_file_entries,
            self.inner.config.log.max_record_bytes as u32,
            u64::MAX,
        )
        .await
        .map_err(StoreError::io("opening an offset index"))?;
        // Another append may have created it while this one waited.
        let mut queues = self.inner.queues.borrow_mut();
        Ok(Rc::clone(
            queues
                .entry(id.clone())
                .or_insert_with(|| new_queue(id, cq)),
        ))
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
        let queue = self.queue_or_create(topic, queue_id).await?;
        let log = &self.inner.log;
        let mut placed = Vec::with_capacity(messages.len());
        let (ticket, first) = loop {
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
        let upto = self.inner.dispatched.get();
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
                let sealed = SealedKeyIndex::seal_encoded(bytes, &path)
                    .await
                    .map_err(StoreError::io("sealing a key index"))?;
                self.inner.keys.borrow_mut().sealed.insert(begin, sealed);
            }
            self.inner.keys.borrow_mut().sealing.pop_front();
        }
        if checkpoint {
            let files: Vec<_> = self
                .inner
                .queues
                .borrow()
                .values()
                .flat_map(|q| q.cq.borrow_mut().take_unsynced())
                .collect();
            for file in files {
                file.sync_data()
                    .await
                    .map_err(StoreError::io("syncing an offset index"))?;
            }
            let taken = self.inner.index_checkpoint.borrow_mut().take();
            if let Some(mut file) = taken {
                let result = file
                    .store(&IndexCheckpoint {
                        dispatched_pos: U64::new(upto),
                    })
                    .await;
                *self.inner.index_checkpoint.borrow_mut() = Some(file);
                result.map_err(StoreError::io("writing the index checkpoint"))?;
            }
        }
        Ok(())
    }

    fn queue(&self, topic: &[u8], queue_id: u32) -> Option<Rc<QueueState>> {
        let id = QueueId::new(topic, queue_id);
        self.inner.queues.borrow().get(&id).cloned()
    }

    /// The queues this shard owns.
    pub(crate) fn queue_ids(&self) -> Vec<QueueId> {
        self.inner.queues.borrow().keys().cloned().collect()
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
    pub(crate) async fn wait_for_message(
        &self,
        topic: &[u8],
        queue_id: u32,
        offset: u64,
        timeout: Duration,
    ) {
        // A queue not written yet is created, so a poll on it is woken by its first message.
        let Ok(queue) = self.queue_or_create(topic, queue_id).await else {
            return;
        };
        let deadline = Instant::now() + timeout;
        loop {
            let listener = queue.arrived.listen();
            if queue.cq.borrow().max_offset() > offset || queue.deleted.get() {
                return;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            if compio::time::timeout(left, listener).await.is_err() {
                return;
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
        let entries = ConsumeQueue::entries(&queue.cq, offset, count)
            .await
            .map_err(StoreError::io("reading an offset index"))?;
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

    /// Moves every queue's minimum offset past records below `log_start` and deletes index files
    /// that only point there.
    async fn retire_indexes_below(&self, log_start: u64) -> Result<(), StoreError> {
        let queues: Vec<_> = self.inner.queues.borrow().values().cloned().collect();
        for queue in queues {
            ConsumeQueue::retire_below(&queue.cq, log_start)
                .await
                .map_err(StoreError::io("trimming an offset index"))?;
        }
        let doomed: Vec<PathBuf> = {
            let mut keys = self.inner.keys.borrow_mut();
            let gone: Vec<u64> = keys
                .sealed
                .iter()
                .filter(|(_, s)| s.header.end_pos.get() <= log_start)
                .map(|(&b, _)| b)
                .collect();
            for b in &gone {
                keys.sealed.remove(b);
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
    /// queue offset. The index checkpoint is advanced first, so recovery does not bring back
    /// what was dispatched before the deletion. (Records placed but not yet dispatched when the
    /// topic is deleted are skipped now, but a crash before the next checkpoint re-indexes
    /// them into a queue of the same name.)
    pub(crate) async fn delete_topic(&self, topic: &[u8]) -> Result<Vec<QueueId>, StoreError> {
        self.dispatch_readable();
        self.write_indexes(true).await?;
        let doomed: Vec<Rc<QueueState>> = {
            let mut queues = self.inner.queues.borrow_mut();
            let ids: Vec<QueueId> = queues
                .keys()
                .filter(|id| &id.topic[..] == topic)
                .cloned()
                .collect();
            ids.iter().filter_map(|id| queues.remove(id)).collect()
        };
        let mut deleted = Vec::with_capacity(doomed.len());
        for queue in doomed {
            queue.deleted.set(true);
            queue.arrived.notify(usize::MAX);
            let path = self.queue_dir(&queue.id);
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("deleting an offset index")(e)),
            }
            deleted.push(queue.id.clone());
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
        Ok(deleted)
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

/// Offset-index directories under `root`: `<topic>/<queue id>`.
fn list_queue_dirs(root: &Path) -> std::io::Result<Vec<(QueueId, PathBuf)>> {
    let mut found = Vec::new();
    for topic_entry in std::fs::read_dir(root)? {
        let topic_entry = topic_entry?;
        let name = topic_entry.file_name();
        let Some(topic) = name.to_str().and_then(topic_from_dir_name) else {
            tracing::warn!(dir = ?topic_entry.path(), "ignoring a directory that names no topic");
            continue;
        };
        for queue_entry in std::fs::read_dir(topic_entry.path())? {
            let queue_entry = queue_entry?;
            let Some(queue_id) = queue_entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            found.push((
                QueueId {
                    topic: Bytes::from(topic.clone()),
                    queue_id,
                },
                queue_entry.path(),
            ));
        }
    }
    Ok(found)
}

/// Opens the sealed key indexes still useful: those wholly within `[log_start, log_end]`. Files
/// past the recovered end (or damaged) are deleted with everything after them; the active
/// index is rebuilt from where the kept ones end, which is returned.
async fn open_sealed_key_indexes(
    dir: &Path,
    log_start: u64,
    log_end: u64,
) -> Result<(BTreeMap<u64, SealedKeyIndex>, u64), OpenError> {
    let mut bases: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_open("listing key indexes"))? {
        let entry = entry.map_err(io_open("listing key indexes"))?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_segment_name) {
            Some(base) => bases.push(base),
            // Leftovers of a seal interrupted by a crash.
            None => std::fs::remove_file(entry.path())
                .map_err(io_open("removing a key index leftover"))?,
        }
    }
    bases.sort_unstable();
    let mut sealed = BTreeMap::new();
    let mut rebuild_from = log_start;
    let mut broken = false;
    for base in bases {
        let path = dir.join(segment_name(base));
        if !broken {
            match SealedKeyIndex::open(&path).await {
                Ok(index) if index.header.end_pos.get() <= log_start => {
                    std::fs::remove_file(&path).map_err(io_open("removing a retired key index"))?;
                    continue;
                }
                Ok(index)
                    if index.header.end_pos.get() <= log_end
                        && index.header.begin_pos.get() == base =>
                {
                    rebuild_from = rebuild_from.max(index.header.end_pos.get());
                    sealed.insert(base, index);
                    continue;
                }
                _ => {
                    broken = true;
                    rebuild_from = rebuild_from.min(base).max(log_start);
                }
            }
        }
        std::fs::remove_file(&path).map_err(io_open("removing a key index past the log end"))?;
    }
    Ok((sealed, rebuild_from))
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
    async fn a_failed_index_write_keeps_every_queue_it_did_not_write_for_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let (shard, _) = Shard::open(0, dir.path(), small_config()).await.unwrap();
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
        let (_, recovery) = Shard::open(0, dir.path(), small_config()).await.unwrap();
        assert_eq!(recovery.redispatched, 0, "{recovery:?}");
        assert_eq!(recovery.rebuilt_queues, 0, "{recovery:?}");
    }

    #[compio::test]
    async fn a_close_whose_indexes_cannot_be_written_closes_the_log_and_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let (shard, _) = Shard::open(0, dir.path(), small_config()).await.unwrap();
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
        let (shard, recovery) = Shard::open(0, dir.path(), small_config()).await.unwrap();
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
