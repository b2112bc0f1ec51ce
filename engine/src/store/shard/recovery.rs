//! Opening a shard: the log recovers first; then every offset index is checked against the
//! index checkpoint and brought level with the log, as RocketMQ's recovery re-dispatches the
//! CommitLog into the ConsumeQueue.
//!
//! The checkpoint names a log position and, for each queue, the offset range its index held
//! below that position. An index is truncated to the position and compared with its range: one
//! that starts later (its first file lost), holds fewer entries (a file cut short or never
//! written) or is missing altogether is rebuilt from the log, so a record the log holds is
//! always reachable by its offset. Then one scan of the log from the checkpoint re-adds what
//! came after it. Without a checkpoint (a store from before it named queues, or both copies
//! lost), every index is rebuilt from the log start. `RELIABILITY.md` gives what each costs.

use std::collections::{HashMap, HashSet};

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::*;
use crate::checkpoint::SlotRecord;
use crate::store::index_checkpoint::{CheckpointFiles, IndexCheckpoint, QueueRange};

/// The index checkpoint of stores written before it named its queues; read once, in place of
/// the new one, and removed once the new one is stored.
pub(super) const LEGACY_INDEX_CHECKPOINT_FILE: &str = "index.checkpoint";

/// What the legacy index checkpoint held: the position alone.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
struct LegacyIndexCheckpoint {
    dispatched_pos: U64,
}

impl SlotRecord for LegacyIndexCheckpoint {
    const MAGIC: [u8; 4] = *b"QVIX";
    const VERSION: u32 = 1;
}

/// The position a legacy index checkpoint in `dir` vouches for, if there is a valid one.
fn legacy_checkpoint(dir: &Path) -> Result<Option<u64>, OpenError> {
    let path = dir.join(LEGACY_INDEX_CHECKPOINT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_open("reading the legacy index checkpoint")(e)),
    };
    Ok(crate::checkpoint::newest::<LegacyIndexCheckpoint>(&bytes)
        .map(|(_, record)| record.dispatched_pos.get()))
}

/// Where the indexes on disk are known complete, and how much of them can be checked.
enum Vouched {
    /// The index checkpoint: its position, and every queue's range.
    Checkpoint(IndexCheckpoint),
    /// A store from before the checkpoint named its queues: the position alone.
    Legacy(u64),
    /// Nothing: every index is rebuilt from the log.
    Nothing,
}

/// How an opened offset index compares with the range the checkpoint says it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Against {
    /// It holds exactly the range.
    Fine,
    /// It lost entries after its last one: re-read the log from there.
    ResumeFrom(u64),
    /// It lost its first entries, or all of them, or holds entries it should not: rebuild it
    /// from the log start.
    Rebuild,
    /// It has no entries and should have none: its offsets start here.
    PositionAt(u64),
}

/// An error opening an index file; out of descriptors, it says what to do about it.
fn open_files_error(e: std::io::Error, op: &'static str) -> OpenError {
    if crate::file_cache::out_of_descriptors(&e) {
        return OpenError::Io {
            op,
            source: std::io::Error::other(crate::config::report_descriptor_shortage(op)),
        };
    }
    OpenError::Io { op, source: e }
}

/// Where a queue whose index is found empty goes on: past its range, or (when the log lost
/// records the checkpoint had seen indexed, whose offsets are then used again) from its start.
/// Offsets below the range were retired for good.
fn restore_offset(range: QueueRange, log_lost_vouched: bool) -> u64 {
    if log_lost_vouched {
        range.min
    } else {
        range.max
    }
}

fn compare(cq: &ConsumeQueue, range: QueueRange) -> Against {
    if cq.is_empty() {
        return if range.min == range.max {
            Against::PositionAt(range.max)
        } else {
            Against::Rebuild
        };
    }
    if cq.min_offset() > range.min || cq.max_offset() > range.max {
        return Against::Rebuild;
    }
    if cq.max_offset() < range.max {
        return cq
            .last_entry_end()
            .map_or(Against::Rebuild, Against::ResumeFrom);
    }
    Against::Fine
}

impl Shard {
    /// Opens (recovering) the shard in `dir`. Its queues are entered in `routes`; its index
    /// files are opened through `files` (its thread's share of the descriptor budget).
    pub(crate) async fn open(
        id: u16,
        dir: &Path,
        config: Arc<StoreConfig>,
        routes: Routes,
        files: Rc<FileCache>,
    ) -> Result<(Shard, ShardRecovery), OpenError> {
        let (log, log_report) = CommitLog::open(dir.join("commitlog"), config.log.clone()).await?;
        let (cp_files, checkpoint) = CheckpointFiles::open(dir)
            .await
            .map_err(io_open("reading the index checkpoint"))?;
        let positions = log.positions();
        let (start, end) = (positions.start, positions.readable);
        let found = match checkpoint {
            Some(checkpoint) => Vouched::Checkpoint(checkpoint),
            None => legacy_checkpoint(dir)?.map_or(Vouched::Nothing, Vouched::Legacy),
        };
        let rebuild_all = matches!(found, Vouched::Nothing);
        // A legacy position vouches for every index directory, without ranges to check.
        let legacy = matches!(found, Vouched::Legacy(_));
        let checkpoint = match found {
            Vouched::Checkpoint(checkpoint) => checkpoint,
            Vouched::Legacy(pos) => IndexCheckpoint {
                dispatched_pos: pos,
                ..IndexCheckpoint::default()
            },
            Vouched::Nothing => IndexCheckpoint::default(),
        };
        let vouched = checkpoint.dispatched_pos.min(end);
        // Async mode: the log lost records the checkpoint had seen indexed, so the ranges it
        // names may end past what the log still holds.
        let log_lost_vouched = checkpoint.dispatched_pos > end;
        let mut redispatch_from = vouched;
        let mut broken: HashSet<QueueId> = HashSet::new();
        // Queues whose records may all be gone from the log, and where their offsets go on.
        let mut restore: HashMap<QueueId, u64> = HashMap::new();
        // Directories the checkpoint does not name.
        let mut unnamed: Vec<QueueId> = Vec::new();

        let max_record = config.log.max_record_bytes as u32;
        let mut queues = HashMap::new();
        let cq_root = dir.join("consumequeue");
        std::fs::create_dir_all(&cq_root)
            .map_err(io_open("creating the offset index directory"))?;
        for (queue_id, path) in
            list_queue_dirs(&cq_root).map_err(io_open("listing offset indexes"))?
        {
            let range = checkpoint.queues.get(&queue_id).copied();
            // A directory the checkpoint does not name was made after it, so nothing below it
            // is its own; or its topic was deleted before it, and nothing is.
            let keep_below = match (rebuild_all, range) {
                (true, _) => end,
                (false, Some(_)) => vouched,
                (false, None) if legacy => vouched,
                (false, None) => 0,
            };
            // Offsets below its range's max are on disk, synced, below the position: unless the
            // log lost some of them, the files are cut there without being read.
            let vouched_max = range.filter(|_| !log_lost_vouched).map(|r| r.max);
            let (mut cq, opened) = ConsumeQueue::open(
                &path,
                config.cq_file_entries,
                max_record,
                keep_below,
                vouched_max,
                &files,
            )
            .await
            .map_err(|e| open_files_error(e, "opening an offset index"))?;
            match opened {
                Opened::Intact => {}
                Opened::ResumeFrom(pos) => redispatch_from = redispatch_from.min(pos),
                Opened::Broken => {
                    broken.insert(queue_id.clone());
                }
            }
            if rebuild_all {
                broken.insert(queue_id.clone());
                if !cq.is_empty() {
                    restore.insert(queue_id.clone(), cq.max_offset());
                }
            } else if let Some(range) = range {
                restore.insert(queue_id.clone(), restore_offset(range, log_lost_vouched));
                match compare(&cq, range) {
                    Against::Fine => {}
                    Against::ResumeFrom(pos) => redispatch_from = redispatch_from.min(pos),
                    Against::PositionAt(offset) => cq.position_at(offset),
                    Against::Rebuild => {
                        tracing::warn!(shard = id, topic = ?queue_id.topic, queue = queue_id.queue_id,
                            held = ?(cq.min_offset(), cq.max_offset()), vouched = ?(range.min, range.max),
                            "offset index lost entries the index checkpoint vouched for; rebuilding it from the log");
                        broken.insert(queue_id.clone());
                    }
                }
            } else if !legacy {
                unnamed.push(queue_id.clone());
            }
            queues.insert(queue_id.clone(), new_queue(queue_id, cq));
        }
        // Queues the checkpoint names whose directory is gone.
        for (queue_id, range) in &checkpoint.queues {
            if !queues.contains_key(queue_id) {
                tracing::warn!(shard = id, topic = ?queue_id.topic, queue = queue_id.queue_id,
                    "offset index directory missing; rebuilding it from the log");
                broken.insert(queue_id.clone());
                restore.insert(queue_id.clone(), restore_offset(*range, log_lost_vouched));
            }
        }

        let key_dir = dir.join("index");
        std::fs::create_dir_all(&key_dir).map_err(io_open("creating the key index directory"))?;
        let key_owner = files.owner();
        let (sealed, key_from) =
            open_sealed_key_indexes(&key_dir, start, end, key_owner, &files).await?;
        let keys = KeyIndexes {
            dir: key_dir,
            owner: key_owner,
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
            routes,
            files,
            dir_syncs: Permits::new(DIR_SYNCS_MAX),
            queues: RefCell::new(queues),
            creating: RefCell::new(HashMap::new()),
            queue_entered: Event::new(),
            deleting: RefCell::new(HashSet::new()),
            deletions: Event::new(),
            // A deletion is recorded only once the log holds everything below its position;
            // one past the log's end would hide a new life's records from a rebuild.
            deleted_topics: RefCell::new(
                checkpoint
                    .deleted
                    .iter()
                    .map(|(topic, &before)| (topic.clone(), before.min(end)))
                    .collect(),
            ),
            pending: RefCell::new(VecDeque::new()),
            placed: Event::new(),
            dispatched: Cell::new(end),
            dirty: RefCell::new(Vec::new()),
            keys: RefCell::new(keys),
            index_checkpoint: RefCell::new(Some(cp_files)),
            checkpointed: Cell::new(None),
            layout_changed: Cell::new(true),
            retired_files: RefCell::new(Vec::new()),
            legacy_removed: Cell::new(false),
            index_writing: futures_util::lock::Mutex::new(()),
            closed: Cell::new(false),
        });
        let shard = Shard { inner };
        let cq_from = if rebuild_all {
            end
        } else {
            redispatch_from.max(start)
        };
        let rebuild = Rebuild {
            cq_from,
            key_from,
            log_start: start,
            all: rebuild_all,
        };
        let (redispatched, rebuilt_queues) = shard.rebuild_indexes(rebuild, broken).await?;
        shard.settle_after_rebuild(unnamed, restore).await?;
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
        {
            let mut routes = shard
                .inner
                .routes
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for queue_id in shard.inner.queues.borrow().keys() {
                routes.insert(
                    queue_id.clone(),
                    Route {
                        shard: id,
                        live: true,
                    },
                );
            }
        }
        compio::runtime::spawn(dispatcher(Rc::clone(&shard.inner))).detach();
        compio::runtime::spawn(index_writer(Rc::clone(&shard.inner))).detach();
        compio::runtime::spawn(retention(Rc::clone(&shard.inner))).detach();
        let recovery = ShardRecovery {
            shard: id,
            log: log_report,
            index_checkpoint: checkpoint.dispatched_pos,
            redispatched,
            rebuilt_queues,
            rebuilt_all: rebuild_all,
        };
        tracing::info!(shard = id, ?recovery.index_checkpoint, redispatched, rebuilt_queues, rebuild_all, "shard open");
        Ok((shard, recovery))
    }

    /// After the rebuild: a directory the checkpoint did not name that is still empty goes
    /// (a deleted topic's, or a queue made after the checkpoint that never held a message); a
    /// queue the checkpoint named that has no entries left (all its records gone from the
    /// log) gets its offsets back.
    async fn settle_after_rebuild(
        &self,
        unnamed: Vec<QueueId>,
        restore: HashMap<QueueId, u64>,
    ) -> Result<(), OpenError> {
        for queue_id in unnamed {
            let empty = self
                .queue(&queue_id.topic, queue_id.queue_id)
                .is_some_and(|q| q.cq.borrow().is_empty());
            if empty {
                if let Some(queue) = self.inner.queues.borrow_mut().remove(&queue_id) {
                    queue.cq.borrow().close_files();
                }
                std::fs::remove_dir_all(self.queue_dir(&queue_id))
                    .map_err(io_open("removing an offset index of no queue"))?;
            }
        }
        for (queue_id, offset) in restore {
            let queue = self
                .queue_for_rebuild(&queue_id.topic, queue_id.queue_id)
                .await?;
            let mut cq = queue.cq.borrow_mut();
            if cq.is_empty() {
                cq.position_at(offset);
            }
        }
        Ok(())
    }

    /// Re-adds records from the log: to the offset indexes from `cq_from` (records a queue's
    /// index already has are skipped), to the active key index from `key_from`. A queue whose
    /// offsets do not follow on, or that lost its first entries, or already `broken` (or every
    /// queue, with `all`), is rebuilt from the log start. Records of a deleted topic's old life
    /// are skipped. Returns (records re-added, queues rebuilt).
    async fn rebuild_indexes(
        &self,
        plan: Rebuild,
        mut broken: HashSet<QueueId>,
    ) -> Result<(u64, usize), OpenError> {
        let corrupt = |e: ReadError| OpenError::Io {
            op: "rebuilding indexes from the log",
            source: std::io::Error::other(e.to_string()),
        };
        let mut scanner = self.inner.log.scan(plan.cq_from.min(plan.key_from));
        let mut redispatched = 0;
        while let Some(record) = scanner.next().await.map_err(corrupt)? {
            let pos = record.log_pos();
            if pos >= plan.cq_from && !self.of_deleted_life(&record) {
                let queue = self.queue_of_record(&record).await?;
                let offset = record.header().queue_offset.get();
                if !broken.contains(&queue.id) {
                    let (empty, min, max) = {
                        let cq = queue.cq.borrow();
                        (cq.is_empty(), cq.min_offset(), cq.max_offset())
                    };
                    if !empty && offset < min {
                        tracing::warn!(shard = self.inner.id, topic = ?queue.id.topic, queue = queue.id.queue_id,
                            "offset index starts after a record the log holds; rebuilding it from the log start");
                        broken.insert(queue.id.clone());
                    } else if !empty && offset < max {
                        // Already there.
                    } else if self.push_entry(&queue, &record).is_err() {
                        tracing::warn!(shard = self.inner.id, topic = ?queue.id.topic, queue = queue.id.queue_id,
                            "offset index has a gap; rebuilding it from the log start");
                        broken.insert(queue.id.clone());
                    } else {
                        redispatched += 1;
                    }
                }
            }
            if pos >= plan.key_from {
                self.index_keys(&record);
            }
        }
        if !broken.is_empty() || plan.all {
            self.rebuild_from_log_start(plan, &broken).await?;
        }
        Ok((redispatched, broken.len()))
    }

    /// Rebuilds the `broken` queues' indexes (every queue's, with `plan.all`) from the log start.
    async fn rebuild_from_log_start(
        &self,
        plan: Rebuild,
        broken: &HashSet<QueueId>,
    ) -> Result<(), OpenError> {
        let corrupt = |e: ReadError| OpenError::Io {
            op: "rebuilding indexes from the log",
            source: std::io::Error::other(e.to_string()),
        };
        for id in broken {
            self.reset_queue(id).await?;
        }
        let mut scanner = self.inner.log.scan(plan.log_start);
        while let Some(record) = scanner.next().await.map_err(corrupt)? {
            let id = QueueId {
                topic: record.topic(),
                queue_id: record.header().queue_id.get(),
            };
            if !(plan.all || broken.contains(&id)) || self.of_deleted_life(&record) {
                continue;
            }
            let mut queue = self.queue_of_record(&record).await?;
            let offset = record.header().queue_offset.get();
            if !queue.cq.borrow().is_empty() && offset < queue.cq.borrow().max_offset() {
                // Offsets start again: the topic was deleted and created anew (before the
                // checkpoint recorded deletions), and only its last life counts.
                self.reset_queue(&id).await?;
                queue = self.queue_of_record(&record).await?;
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
        Ok(())
    }

    /// Whether `record` belongs to a life of its topic that was deleted.
    fn of_deleted_life(&self, record: &Record) -> bool {
        self.inner
            .deleted_topics
            .borrow()
            .get(&record.topic()[..])
            .is_some_and(|&before| record.log_pos() < before)
    }

    /// Replaces a queue's offset index with an empty one (during recovery).
    async fn reset_queue(&self, id: &QueueId) -> Result<(), OpenError> {
        if let Some(queue) = self.queue(&id.topic, id.queue_id) {
            queue.cq.borrow().close_files();
        }
        let path = self.queue_dir(id);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io_open("removing a broken offset index"))?;
        }
        self.inner.dirty.borrow_mut().retain(|q| q.id != *id);
        self.inner.queues.borrow_mut().remove(id);
        self.queue_for_rebuild(&id.topic, id.queue_id).await?;
        Ok(())
    }

    async fn queue_of_record(&self, record: &Record) -> Result<Rc<QueueState>, OpenError> {
        self.queue_for_rebuild(&record.topic(), record.header().queue_id.get())
            .await
    }

    async fn queue_for_rebuild(
        &self,
        topic: &[u8],
        queue_id: u32,
    ) -> Result<Rc<QueueState>, OpenError> {
        self.queue_or_create(topic, queue_id)
            .await
            .map_err(|e| OpenError::Io {
                op: "creating an offset index",
                source: std::io::Error::other(e.to_string()),
            })
    }
}

/// Where a rebuild reads the log from.
#[derive(Debug, Clone, Copy)]
struct Rebuild {
    /// Offset indexes are brought level from here.
    cq_from: u64,
    /// The active key index is rebuilt from here.
    key_from: u64,
    /// The log's first record: where broken indexes are rebuilt from.
    log_start: u64,
    /// Rebuild every offset index from the log start.
    all: bool,
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
    owner: u64,
    files: &Rc<FileCache>,
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
            match SealedKeyIndex::open(&path, (owner, base), files).await {
                Ok(index) if index.header.end_pos.get() <= log_start => {
                    index.close();
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
                Ok(index) => {
                    index.close();
                    broken = true;
                    rebuild_from = rebuild_from.min(base).max(log_start);
                }
                Err(e) if crate::file_cache::out_of_descriptors(&e) => {
                    return Err(open_files_error(e, "opening a key index"));
                }
                Err(_) => {
                    files.forget((owner, base));
                    broken = true;
                    rebuild_from = rebuild_from.min(base).max(log_start);
                }
            }
        }
        std::fs::remove_file(&path).map_err(io_open("removing a key index past the log end"))?;
    }
    Ok((sealed, rebuild_from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::Message;

    fn config() -> Arc<StoreConfig> {
        Arc::new(StoreConfig {
            cq_file_entries: 4,
            key_index_slots: 64,
            key_index_entries: 256,
            log: crate::config::LogConfig {
                segment_bytes: 256 * 1024,
                max_record_bytes: 16 * 1024,
                write_buffer_bytes: 64 * 1024,
                ..crate::config::LogConfig::default()
            },
            ..StoreConfig::default()
        })
    }

    fn files() -> Rc<FileCache> {
        Rc::new(FileCache::new(16))
    }

    fn bodies(n: std::ops::Range<u64>) -> Vec<Message> {
        n.map(|i| Message {
            body: Bytes::from(format!("m{i}")),
            ..Message::default()
        })
        .collect()
    }

    #[compio::test]
    async fn a_store_with_the_legacy_checkpoint_opens_without_bringing_deleted_topics_back() {
        let dir = tempfile::tempdir().unwrap();
        let (shard, _) = Shard::open(0, dir.path(), config(), Routes::default(), files())
            .await
            .unwrap();
        shard.append(b"kept", 0, &bodies(0..6)).await.unwrap();
        shard.append(b"gone", 0, &bodies(0..6)).await.unwrap();
        shard.delete_topic(b"gone").await.unwrap();
        shard.append(b"kept", 0, &bodies(6..9)).await.unwrap();
        let end = shard.inner.log.positions().tail;
        shard.close().await.unwrap();
        // As an older version left it: only the position, in the two-slot file.
        for name in crate::store::index_checkpoint::FILE_NAMES {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
        let legacy = dir.path().join(LEGACY_INDEX_CHECKPOINT_FILE);
        let (mut file, _) = crate::checkpoint::SlotFile::<LegacyIndexCheckpoint>::open(&legacy)
            .await
            .unwrap();
        file.store(&LegacyIndexCheckpoint {
            dispatched_pos: U64::new(end),
        })
        .await
        .unwrap();
        drop(file);
        let (shard, recovery) = Shard::open(0, dir.path(), config(), Routes::default(), files())
            .await
            .unwrap();
        assert!(!recovery.rebuilt_all, "{recovery:?}");
        assert_eq!(recovery.index_checkpoint, end);
        assert!(
            shard.offsets(b"gone", 0).is_none(),
            "a deleted topic came back"
        );
        assert_eq!(shard.offsets(b"kept", 0).map(|o| o.max), Some(9));
        shard.close().await.unwrap();
        assert!(
            !legacy.exists(),
            "the legacy checkpoint is removed once replaced"
        );
        let (shard, recovery) = Shard::open(0, dir.path(), config(), Routes::default(), files())
            .await
            .unwrap();
        assert_eq!((recovery.redispatched, recovery.rebuilt_queues), (0, 0));
        assert!(shard.offsets(b"gone", 0).is_none());
        shard.close().await.unwrap();
    }

    #[compio::test]
    async fn a_deleted_topic_stays_deleted_through_reopening_and_its_next_life_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (shard, _) = Shard::open(0, dir.path(), config(), Routes::default(), files())
            .await
            .unwrap();
        shard.append(b"t", 0, &bodies(0..10)).await.unwrap();
        shard.delete_topic(b"t").await.unwrap();
        shard.append(b"t", 0, &bodies(100..103)).await.unwrap();
        shard.close().await.unwrap();
        // Every index of the new life lost: rebuilt from the log start, the old life skipped.
        std::fs::remove_dir_all(dir.path().join("consumequeue").join("t")).unwrap();
        let (shard, recovery) = Shard::open(0, dir.path(), config(), Routes::default(), files())
            .await
            .unwrap();
        assert_eq!(recovery.rebuilt_queues, 1, "{recovery:?}");
        let ReadOutcome::Found { messages, .. } =
            shard.read(b"t", 0, 0, 100, 1 << 20, None).await.unwrap()
        else {
            panic!("the new life is gone")
        };
        let got: Vec<Bytes> = messages.iter().map(|m| m.record.body()).collect();
        let want: Vec<Bytes> = bodies(100..103).into_iter().map(|m| m.body).collect();
        assert_eq!(got, want);
        shard.close().await.unwrap();
    }

    fn queue_with(entries: std::ops::Range<u64>) -> ConsumeQueue {
        let cache = Rc::new(FileCache::new(4));
        let mut cq = ConsumeQueue::new_empty(Path::new("/nonexistent"), 16, &cache);
        for offset in entries {
            cq.push(offset, CqEntry::new(1000 * offset, 100, 0))
                .unwrap();
        }
        cq
    }

    #[test]
    fn an_index_is_judged_against_the_range_the_checkpoint_vouched_for() {
        let range = |min, max| QueueRange { min, max };
        assert_eq!(compare(&queue_with(0..10), range(0, 10)), Against::Fine);
        assert_eq!(compare(&queue_with(0..10), range(3, 10)), Against::Fine);
        assert_eq!(
            compare(&queue_with(0..7), range(0, 10)),
            Against::ResumeFrom(6100),
            "a lost tail: re-read the log after the last entry"
        );
        assert_eq!(compare(&queue_with(4..10), range(0, 10)), Against::Rebuild);
        assert_eq!(compare(&queue_with(0..11), range(0, 10)), Against::Rebuild);
        assert_eq!(compare(&queue_with(0..0), range(0, 10)), Against::Rebuild);
        assert_eq!(
            compare(&queue_with(0..0), range(25, 25)),
            Against::PositionAt(25),
            "every record gone from the log: the offsets are kept"
        );
    }
}
