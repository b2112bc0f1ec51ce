//! The store: shards on pinned threads, and an API callable from any thread or runtime.
//!
//! Each thread runs a compio runtime (one io_uring ring) and owns one or more shards; shard `k`
//! lives on thread `k mod threads`. A call is routed to the shard owning its queue and handed
//! to that thread over a bounded channel (one hand-off per call, a whole batch included);
//! the answer comes back through a oneshot. A full channel makes the caller wait (or, for the
//! `_or_busy` calls, fail with [`StoreError::Busy`]): memory never grows without bound.
//! Appends made on a shard thread ([`LocalShards::append`]) for another thread's shard are
//! gathered: every append made runnable by one wake-up (the frames of one socket read, say)
//! crosses in one hand-off, so a busy connection does not pay a channel operation and a wake-up
//! of the other thread per message.
//!
//! A queue belongs to the shard that first stored it, for good: shards record the queues they
//! own as their offset-index directories (and in their index checkpoints), and enter them in
//! the routing table as they open, create and delete them, in the same step as their own maps.
//! New queues are placed by hash. Changing the number of threads (`shards`) never loses a
//! queue: every shard directory found is opened, on thread `k mod threads`; with more threads
//! than directories, new shards are created and new queues spread over all of them.
//!
//! ```no_run
//! use quiver_engine::store::{Store, types::{Message, ReadOutcome}};
//! use quiver_engine::StoreConfig;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::open("./data/store", StoreConfig::default())?;
//! let message = Message { body: "hello".into(), keys: "order-42".into(), ..Message::default() };
//! let placed = store.append(b"orders", 0, vec![message]).await?;
//! assert_eq!(placed[0].queue_offset, 0);
//! if let ReadOutcome::Found { messages, .. } = store.read(b"orders", 0, 0, 32, 1 << 20, None).await? {
//!     assert_eq!(&messages[0].record.body()[..], b"hello");
//! }
//! store.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod index_checkpoint;
pub mod shard;
pub mod types;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_channel::oneshot;

use self::shard::{QueueId, Shard, ShardRecovery};
use self::types::{
    Appended, Message, MessagePos, QueueOffsets, ReadOutcome, StoreError, StoredMessage, TagFilter,
};
use crate::config::{OPEN_FILES_PER_SHARD_MIN, StoreConfig};
use crate::error::OpenError;
use crate::file_cache::FileCache;
use crate::record::Record;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Which shard owns each queue. Shards enter their own queues as they open and create them, in
/// the same step as their own maps, and mark them not live as they delete them (a queue keeps
/// its shard from one life to the next); a caller places a queue not yet created by hash.
pub(crate) type Routes = Arc<RwLock<HashMap<QueueId, Route>>>;

/// Where a queue lives, and whether it exists now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) shard: u16,
    /// The shard holds the queue (not merely placed there, nor deleted).
    pub(crate) live: bool,
}

/// A request for a shard thread.
enum Request {
    Append {
        shard: u16,
        topic: Bytes,
        queue_id: u32,
        messages: Vec<Message>,
        reply: Reply<Vec<Appended>>,
    },
    Read {
        shard: u16,
        queue: QueueId,
        offset: u64,
        max_count: usize,
        max_bytes: usize,
        filter: Option<TagFilter>,
        reply: Reply<ReadOutcome>,
    },
    Offsets {
        shard: u16,
        queue: QueueId,
        reply: Reply<Option<QueueOffsets>>,
    },
    OffsetForTimestamp {
        shard: u16,
        queue: QueueId,
        timestamp_ms: u64,
        reply: Reply<Option<u64>>,
    },
    WaitForMessage {
        shard: u16,
        queue: QueueId,
        offset: u64,
        timeout: Duration,
        reply: Reply<()>,
    },
    QueryKey {
        shard: u16,
        topic: Bytes,
        key: Bytes,
        limit: usize,
        from_ms: u64,
        to_ms: u64,
        reply: Reply<Vec<StoredMessage>>,
    },
    ReadAt {
        pos: MessagePos,
        reply: Reply<Record>,
    },
    Retention {
        shard: u16,
        now: SystemTime,
        reply: Reply<usize>,
    },
    DeleteTopic {
        shard: u16,
        topic: Bytes,
        reply: Reply<Vec<QueueId>>,
    },
    StartService {
        store: Store,
        service: ThreadService,
        thread: usize,
    },
    /// Requests gathered on one thread for this one, each served as if sent alone.
    Gathered(Vec<Request>),
    Shutdown {
        reply: Reply<()>,
    },
}

/// Work to run on every shard thread beside its shards, such as a network front that serves the
/// connections accepted on that thread: it calls the thread's own shards directly (no hand-off)
/// and the others through the store. Started once the store is open; [`LocalShards::stopping`]
/// completes when the store shuts down.
pub type ThreadService = Arc<
    dyn Fn(LocalShards) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + Sync,
>;

/// The shards of the current thread, and the store for the rest: what a [`ThreadService`] uses.
#[derive(Clone)]
pub struct LocalShards {
    shards: Rc<HashMap<u16, Shard>>,
    store: Store,
    thread: usize,
    stopping: Rc<(std::cell::Cell<bool>, event_listener::Event)>,
    outbox: Rc<Outbox>,
}

/// Requests for other threads gathered on this one, by destination thread, until the task
/// that sends them runs.
struct Outbox {
    pending: std::cell::RefCell<Vec<Vec<Request>>>,
}

impl Outbox {
    fn new(threads: usize) -> Outbox {
        Outbox {
            pending: std::cell::RefCell::new((0..threads).map(|_| Vec::new()).collect()),
        }
    }
}

impl LocalShards {
    /// The whole store (any thread's shards, through hand-offs).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Which shard thread this is (0-based).
    pub fn thread_index(&self) -> usize {
        self.thread
    }

    /// Completes when the store begins to shut down.
    pub async fn stopping(&self) {
        loop {
            let listener = self.stopping.1.listen();
            if self.stopping.0.get() {
                return;
            }
            listener.await;
        }
    }

    fn local(&self, queue: &QueueId, placed: bool) -> Option<(u16, &Shard)> {
        let shard = if placed {
            Some(self.store.shard_for(queue))
        } else {
            self.store.route(queue)
        }?;
        self.shards.get(&shard).map(|s| (shard, s))
    }

    /// [`Store::append`], without a hand-off when the queue's shard is on this thread, and
    /// gathered with the other appends of this wake-up when it is not.
    pub async fn append(
        &self,
        topic: &[u8],
        queue_id: u32,
        messages: Vec<Message>,
    ) -> Result<Vec<Appended>, StoreError> {
        let queue = QueueId::new(topic, queue_id);
        let shard = self.store.route_or_place(&queue);
        if let Some(local) = self.shards.get(&shard) {
            return local.append(topic, queue_id, &messages).await;
        }
        let (reply, answer) = oneshot::channel();
        self.gather(
            shard,
            Request::Append {
                shard,
                topic: queue.topic,
                queue_id,
                messages,
                reply,
            },
        );
        answer.await.map_err(|_| StoreError::Shutdown)?
    }

    /// Queues `request` for the thread of `shard`. The first request queued for a thread
    /// spawns the task that sends them all; it runs after the tasks already runnable, so
    /// everything they queue meanwhile crosses with it. Requests keep their order. A full
    /// channel makes that task wait, as it would the callers; if the thread is gone, the
    /// replies are dropped and the callers see [`StoreError::Shutdown`].
    fn gather(&self, shard: u16, request: Request) {
        let thread = usize::from(shard) % self.store.inner.workers.len();
        let first = {
            let mut pending = self.outbox.pending.borrow_mut();
            pending[thread].push(request);
            pending[thread].len() == 1
        };
        if first {
            let outbox = Rc::clone(&self.outbox);
            let tx = self.store.inner.workers[thread].tx.clone();
            compio::runtime::spawn(async move {
                let gathered = std::mem::take(&mut outbox.pending.borrow_mut()[thread]);
                debug_assert!(!gathered.is_empty());
                let request = match <[Request; 1]>::try_from(gathered) {
                    Ok([one]) => one,
                    Err(many) => Request::Gathered(many),
                };
                let _ = tx.send_async(request).await;
            })
            .detach();
        }
    }

    /// [`Store::read`], without a hand-off when the queue's shard is on this thread.
    pub async fn read(
        &self,
        topic: &[u8],
        queue_id: u32,
        offset: u64,
        max_count: usize,
        max_bytes: usize,
        filter: Option<TagFilter>,
    ) -> Result<ReadOutcome, StoreError> {
        match self.local(&QueueId::new(topic, queue_id), false) {
            Some((_, shard)) => {
                shard
                    .read(
                        topic,
                        queue_id,
                        offset,
                        max_count,
                        max_bytes,
                        filter.as_ref(),
                    )
                    .await
            }
            None => {
                self.store
                    .read(topic, queue_id, offset, max_count, max_bytes, filter)
                    .await
            }
        }
    }

    /// [`Store::offsets`], without a hand-off when the queue's shard is on this thread.
    pub async fn offsets(
        &self,
        topic: &[u8],
        queue_id: u32,
    ) -> Result<Option<QueueOffsets>, StoreError> {
        match self.local(&QueueId::new(topic, queue_id), false) {
            Some((_, shard)) => Ok(shard.offsets(topic, queue_id)),
            None => self.store.offsets(topic, queue_id).await,
        }
    }

    /// [`Store::offset_for_timestamp`], without a hand-off when the queue's shard is here.
    pub async fn offset_for_timestamp(
        &self,
        topic: &[u8],
        queue_id: u32,
        timestamp_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        match self.local(&QueueId::new(topic, queue_id), false) {
            Some((_, shard)) => {
                shard
                    .offset_for_timestamp(topic, queue_id, timestamp_ms)
                    .await
            }
            None => {
                self.store
                    .offset_for_timestamp(topic, queue_id, timestamp_ms)
                    .await
            }
        }
    }

    /// [`Store::wait_for_message`], without a hand-off when the queue's shard is here.
    pub async fn wait_for_message(
        &self,
        topic: &[u8],
        queue_id: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        match self.local(&QueueId::new(topic, queue_id), true) {
            Some((_, shard)) => {
                shard
                    .wait_for_message(topic, queue_id, offset, timeout)
                    .await;
                Ok(())
            }
            None => {
                self.store
                    .wait_for_message(topic, queue_id, offset, timeout)
                    .await
            }
        }
    }

    /// [`Store::read_at`], without a hand-off when the position's shard is here.
    pub async fn read_at(&self, pos: MessagePos) -> Result<Record, StoreError> {
        match self.shards.get(&pos.shard()) {
            Some(shard) => shard.read_at(pos.log_pos()).await,
            None => self.store.read_at(pos).await,
        }
    }
}

/// Gives the memory that opening freed (the lists and maps recovery builds, in proportion to
/// the number of queues) back to the system: glibc keeps freed memory in its arenas otherwise,
/// and a start with many queues would keep megabytes it no longer uses.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A shard thread: where to send, and the thread.
struct Worker {
    tx: flume::Sender<Request>,
    join: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The message store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    workers: Vec<Worker>,
    shard_count: u16,
    routes: Routes,
    recoveries: Vec<ShardRecovery>,
}

fn shard_dir(root: &Path, shard: u16) -> PathBuf {
    root.join(format!("shard-{shard:03}"))
}

/// Shard directories already present under `root`.
fn existing_shards(root: &Path) -> std::io::Result<usize> {
    let mut highest = None;
    for entry in std::fs::read_dir(root)? {
        let name = entry?.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shard-"))
            .and_then(|n| n.parse::<u16>().ok())
        {
            highest = highest.max(Some(id));
        }
    }
    Ok(highest.map_or(0, |h| usize::from(h) + 1))
}

/// The shard a new queue goes to: a stable hash of topic and queue id.
fn place_new_queue(topic: &[u8], queue_id: u32, shards: u16) -> u16 {
    let hash = crc32c::crc32c_append(crc32c::crc32c(topic), &queue_id.to_le_bytes());
    (hash % u32::from(shards)) as u16
}

impl Store {
    /// Opens the store in `dir` (creating it), starting the shard threads and recovering every
    /// shard. Blocks until all are ready.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store, OpenError> {
        config.validate()?;
        config.check_open_file_limit()?;
        let budget = config.open_files_budget();
        let root = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(OpenError::io("creating the store directory"))?;
        let threads = config.thread_count();
        let shard_count = existing_shards(&root)
            .map_err(OpenError::io("listing the store directory"))?
            .max(threads);
        let shard_count = u16::try_from(shard_count).map_err(|_| OpenError::Layout {
            dir: root.display().to_string(),
            problem: "more than 65535 shards".into(),
        })?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let config = Arc::new(config);
        let routes = Routes::default();
        let mut workers = Vec::with_capacity(threads);
        let mut ready = Vec::with_capacity(threads);
        for thread in 0..threads {
            let shards: Vec<u16> = (0..shard_count)
                .filter(|s| usize::from(*s) % threads == thread)
                .collect();
            let (tx, rx) = flume::bounded(config.request_queue_depth);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (root, config, routes) = (root.clone(), Arc::clone(&config), Arc::clone(&routes));
            // This thread's part of the index-file budget, by its share of the shards.
            let files_budget = (budget * shards.len() / usize::from(shard_count).max(1))
                .max(OPEN_FILES_PER_SHARD_MIN * shards.len().max(1));
            let core = (config.pin_threads).then_some(thread % cores);
            let join = std::thread::Builder::new()
                .name(format!("quiver-shard-{thread}"))
                .spawn(move || {
                    let plan = ThreadPlan {
                        core,
                        shard_ids: shards,
                        root,
                        config,
                        routes,
                        files_budget,
                    };
                    run_thread(plan, rx, ready_tx)
                })
                .map_err(OpenError::io("starting a shard thread"))?;
            workers.push(Worker {
                tx,
                join: Mutex::new(Some(join)),
            });
            ready.push(ready_rx);
        }
        let mut recoveries = Vec::new();
        let mut failure = None;
        for ready_rx in ready {
            match ready_rx.recv() {
                Ok(Ok(opened)) => recoveries.extend(opened),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => {
                    failure = failure.or(Some(OpenError::Io {
                        op: "starting a shard thread",
                        source: std::io::Error::other("a shard thread died while opening"),
                    }))
                }
            }
        }
        let store = Store {
            inner: Arc::new(StoreInner {
                workers,
                shard_count,
                routes,
                recoveries,
            }),
        };
        if let Some(e) = failure {
            store.stop_threads();
            return Err(e);
        }
        release_freed_memory();
        Ok(store)
    }

    /// Number of shards (at least the number of threads).
    pub fn shard_count(&self) -> u16 {
        self.inner.shard_count
    }

    /// What recovery found in each shard at open.
    pub fn recoveries(&self) -> &[ShardRecovery] {
        &self.inner.recoveries
    }

    /// Every queue the store holds.
    pub fn queues(&self) -> Vec<QueueId> {
        let routes = self.inner.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut queues: Vec<QueueId> = routes
            .iter()
            .filter(|(_, route)| route.live)
            .map(|(id, _)| id.clone())
            .collect();
        queues.sort();
        queues
    }

    fn route(&self, queue: &QueueId) -> Option<u16> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .map(|route| route.shard)
    }

    /// The shard a queue is on or would be placed on, placing nothing (a long poll on a queue
    /// not created yet waits there for it).
    fn shard_for(&self, queue: &QueueId) -> u16 {
        self.route(queue).unwrap_or_else(|| {
            place_new_queue(&queue.topic, queue.queue_id, self.inner.shard_count)
        })
    }

    /// The shard of a queue, placing it if new.
    fn route_or_place(&self, queue: &QueueId) -> u16 {
        if let Some(shard) = self.route(queue) {
            return shard;
        }
        let mut routes = self.inner.routes.write().unwrap_or_else(|p| p.into_inner());
        let route = routes.entry(queue.clone()).or_insert_with(|| Route {
            shard: place_new_queue(&queue.topic, queue.queue_id, self.inner.shard_count),
            live: false,
        });
        route.shard
    }

    fn worker(&self, shard: u16) -> &Worker {
        &self.inner.workers[usize::from(shard) % self.inner.workers.len()]
    }

    async fn call<T>(
        &self,
        shard: u16,
        request: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.worker(shard)
            .tx
            .send_async(request(reply))
            .await
            .map_err(|_| StoreError::Shutdown)?;
        answer.await.map_err(|_| StoreError::Shutdown)?
    }

    /// Appends messages to one queue (one hand-off to its shard); completes when they are stored
    /// as the flush mode defines. Waits while the shard's request queue is full.
    pub async fn append(
        &self,
        topic: &[u8],
        queue_id: u32,
        messages: Vec<Message>,
    ) -> Result<Vec<Appended>, StoreError> {
        let queue = QueueId::new(topic, queue_id);
        let shard = self.route_or_place(&queue);
        self.call(shard, |reply| Request::Append {
            shard,
            topic: queue.topic,
            queue_id,
            messages,
            reply,
        })
        .await
    }

    /// Like [`Self::append`], but fails with [`StoreError::Busy`] at once if the shard's request
    /// queue is full, so a network front can answer "system busy" instead of waiting.
    pub async fn append_or_busy(
        &self,
        topic: &[u8],
        queue_id: u32,
        messages: Vec<Message>,
    ) -> Result<Vec<Appended>, StoreError> {
        let queue = QueueId::new(topic, queue_id);
        let shard = self.route_or_place(&queue);
        let (reply, answer) = oneshot::channel();
        let request = Request::Append {
            shard,
            topic: queue.topic,
            queue_id,
            messages,
            reply,
        };
        match self.worker(shard).tx.try_send(request) {
            Ok(()) => answer.await.map_err(|_| StoreError::Shutdown)?,
            Err(flume::TrySendError::Full(_)) => Err(StoreError::Busy),
            Err(flume::TrySendError::Disconnected(_)) => Err(StoreError::Shutdown),
        }
    }

    /// Reads up to `max_count` messages (at most [`shard::READ_ENTRIES_MAX`]) and about
    /// `max_bytes` (at most [`shard::READ_BYTES_MAX`], at least one message) from queue offset
    /// `offset`, optionally filtered by tag.
    pub async fn read(
        &self,
        topic: &[u8],
        queue_id: u32,
        offset: u64,
        max_count: usize,
        max_bytes: usize,
        filter: Option<TagFilter>,
    ) -> Result<ReadOutcome, StoreError> {
        let queue = QueueId::new(topic, queue_id);
        let Some(shard) = self.route(&queue) else {
            return Ok(ReadOutcome::NoSuchQueue);
        };
        self.call(shard, |reply| Request::Read {
            shard,
            queue,
            offset,
            max_count,
            max_bytes,
            filter,
            reply,
        })
        .await
    }

    /// The queue's offset range, or `None` if there is no such queue.
    pub async fn offsets(
        &self,
        topic: &[u8],
        queue_id: u32,
    ) -> Result<Option<QueueOffsets>, StoreError> {
        let queue = QueueId::new(topic, queue_id);
        let Some(shard) = self.route(&queue) else {
            return Ok(None);
        };
        self.call(shard, |reply| Request::Offsets {
            shard,
            queue,
            reply,
        })
        .await
    }

    /// The first offset of the queue stored at or after `timestamp_ms` (the max offset if none),
    /// or `None` if there is no such queue.
    pub async fn offset_for_timestamp(
        &self,
        topic: &[u8],
        queue_id: u32,
        timestamp_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let queue = QueueId::new(topic, queue_id);
        let Some(shard) = self.route(&queue) else {
            return Ok(None);
        };
        self.call(shard, |reply| Request::OffsetForTimestamp {
            shard,
            queue,
            timestamp_ms,
            reply,
        })
        .await
    }

    /// Waits until the queue has a message at `offset` or `timeout` passes: long polling.
    pub async fn wait_for_message(
        &self,
        topic: &[u8],
        queue_id: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let queue = QueueId::new(topic, queue_id);
        let shard = self.shard_for(&queue);
        self.call(shard, |reply| Request::WaitForMessage {
            shard,
            queue,
            offset,
            timeout,
            reply,
        })
        .await
    }

    /// Messages of `topic` carrying `key` (exactly), stored within `[from_ms, to_ms]`, newest
    /// first, at most `limit` (and [`shard::QUERY_KEY_RESULTS_MAX`]), from every shard.
    pub async fn query_key(
        &self,
        topic: &[u8],
        key: &[u8],
        limit: usize,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut found = Vec::new();
        for shard in 0..self.inner.shard_count {
            let (topic, key) = (Bytes::copy_from_slice(topic), Bytes::copy_from_slice(key));
            let hits = self
                .call(shard, |reply| Request::QueryKey {
                    shard,
                    topic,
                    key,
                    limit,
                    from_ms,
                    to_ms,
                    reply,
                })
                .await?;
            found.extend(hits);
        }
        found.sort_by_key(|m| {
            std::cmp::Reverse((m.record.header().store_timestamp_ms.get(), m.pos))
        });
        found.truncate(limit.min(shard::QUERY_KEY_RESULTS_MAX));
        Ok(found)
    }

    /// The message at `pos` (what a message id names).
    pub async fn read_at(&self, pos: MessagePos) -> Result<Record, StoreError> {
        if pos.shard() >= self.inner.shard_count {
            return Err(StoreError::BadRequest(format!("no shard {}", pos.shard())));
        }
        self.call(pos.shard(), |reply| Request::ReadAt { pos, reply })
            .await
    }

    /// Applies retention in every shard now, as of `now`; returns how many segments left.
    pub async fn apply_retention(&self, now: SystemTime) -> Result<usize, StoreError> {
        let mut total = 0;
        for shard in 0..self.inner.shard_count {
            total += self
                .call(shard, |reply| Request::Retention { shard, now, reply })
                .await?;
        }
        Ok(total)
    }

    /// Deletes every queue of `topic` in every shard; returns how many. A queue of the same
    /// name created afterwards starts again at offset 0. The messages stay in the log until
    /// retention deletes their segments.
    pub async fn delete_topic(&self, topic: &[u8]) -> Result<usize, StoreError> {
        let mut total = 0;
        for shard in 0..self.inner.shard_count {
            let topic = Bytes::copy_from_slice(topic);
            let deleted = self
                .call(shard, |reply| Request::DeleteTopic {
                    shard,
                    topic,
                    reply,
                })
                .await?;
            total += deleted.len();
        }
        Ok(total)
    }

    /// Opens the store like [`Store::open`] and then starts `service` on every shard thread.
    pub fn open_with_service(
        dir: impl AsRef<Path>,
        config: StoreConfig,
        service: ThreadService,
    ) -> Result<Store, OpenError> {
        let store = Store::open(dir, config)?;
        for (thread, worker) in store.inner.workers.iter().enumerate() {
            let request = Request::StartService {
                store: store.clone(),
                service: Arc::clone(&service),
                thread,
            };
            if worker.tx.send(request).is_err() {
                store.stop_threads();
                return Err(OpenError::Io {
                    op: "starting a thread service",
                    source: std::io::Error::other("a shard thread stopped"),
                });
            }
        }
        Ok(store)
    }

    /// Flushes and closes every shard and stops the threads.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let mut result = Ok(());
        for worker in &self.inner.workers {
            let (reply, answer) = oneshot::channel();
            if worker
                .tx
                .send_async(Request::Shutdown { reply })
                .await
                .is_ok()
            {
                let closed = answer
                    .await
                    .map_err(|_| StoreError::Shutdown)
                    .and_then(|r| r);
                if result.is_ok() {
                    result = closed;
                }
            }
        }
        self.stop_threads();
        result
    }

    fn stop_threads(&self) {
        for worker in &self.inner.workers {
            let _ = worker.tx.try_send(Request::Shutdown {
                reply: oneshot::channel().0,
            });
            let join = worker.join.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(join) = join
                && join.join().is_err()
            {
                tracing::error!("a shard thread panicked");
            }
        }
    }
}

type Opened = Vec<ShardRecovery>;

/// What a shard thread runs: its core, its shards, and what they share with the store.
struct ThreadPlan {
    core: Option<usize>,
    shard_ids: Vec<u16>,
    root: PathBuf,
    config: Arc<StoreConfig>,
    routes: Routes,
    /// Its part of the store's index-file budget.
    files_budget: usize,
}

fn run_thread(
    plan: ThreadPlan,
    rx: flume::Receiver<Request>,
    ready: std::sync::mpsc::Sender<Result<Opened, OpenError>>,
) {
    let ThreadPlan {
        core,
        shard_ids,
        root,
        config,
        routes,
        files_budget,
    } = plan;
    let mut builder = compio::runtime::RuntimeBuilder::new();
    if let Some(core) = core {
        builder.thread_affinity(HashSet::from([core]));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(OpenError::Io {
                op: "starting an io_uring runtime",
                source: e,
            }));
            return;
        }
    };
    runtime.block_on(async move {
        let mut shards = HashMap::new();
        let mut opened = Vec::new();
        // The thread's shards share one cache: its part of the store's index-file budget.
        let files = Rc::new(FileCache::new(files_budget));
        for id in shard_ids {
            let routes = Arc::clone(&routes);
            let files = Rc::clone(&files);
            let shard_dir = shard_dir(&root, id);
            match Shard::open(id, &shard_dir, Arc::clone(&config), routes, files).await {
                Ok((shard, recovery)) => {
                    opened.push(recovery);
                    shards.insert(id, shard);
                }
                Err(e) => {
                    for (_, shard) in shards.drain() {
                        let _ = shard.close().await;
                    }
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
        if ready.send(Ok(opened)).is_err() {
            return;
        }
        let shards = Rc::new(shards);
        let stopping = Rc::new((std::cell::Cell::new(false), event_listener::Event::new()));
        let shutdown_reply = loop {
            match rx.recv_async().await {
                Ok(Request::Shutdown { reply }) => break Some(reply),
                Ok(Request::StartService {
                    store,
                    service,
                    thread,
                }) => {
                    let local = LocalShards {
                        shards: Rc::clone(&shards),
                        outbox: Rc::new(Outbox::new(store.inner.workers.len())),
                        store,
                        thread,
                        stopping: Rc::clone(&stopping),
                    };
                    compio::runtime::spawn(service(local)).detach();
                }
                Ok(Request::Gathered(requests)) => {
                    for request in requests {
                        compio::runtime::spawn(serve(Rc::clone(&shards), request)).detach();
                    }
                }
                Ok(request) => {
                    compio::runtime::spawn(serve(Rc::clone(&shards), request)).detach();
                }
                // Every Store handle is gone: close cleanly all the same.
                Err(_) => break None,
            }
        };
        stopping.0.set(true);
        stopping.1.notify(usize::MAX);
        let mut result = Ok(());
        for shard in shards.values() {
            if let Err(e) = shard.clone().close().await {
                tracing::error!(error = %e, "closing a shard failed");
                result = Err(e);
            }
        }
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(result);
        }
    });
}

async fn serve(shards: Rc<HashMap<u16, Shard>>, request: Request) {
    let missing =
        |shard: u16| StoreError::BadRequest(format!("shard {shard} is not on this thread"));
    match request {
        Request::Append {
            shard,
            topic,
            queue_id,
            messages,
            reply,
        } => {
            let result = match shards.get(&shard) {
                Some(s) => s.append(&topic, queue_id, &messages).await,
                None => Err(missing(shard)),
            };
            let _ = reply.send(result);
        }
        Request::Read {
            shard,
            queue,
            offset,
            max_count,
            max_bytes,
            filter,
            reply,
        } => {
            let result = match shards.get(&shard) {
                Some(s) => {
                    s.read(
                        &queue.topic,
                        queue.queue_id,
                        offset,
                        max_count,
                        max_bytes,
                        filter.as_ref(),
                    )
                    .await
                }
                None => Err(missing(shard)),
            };
            let _ = reply.send(result);
        }
        Request::Offsets {
            shard,
            queue,
            reply,
        } => {
            let result = shards
                .get(&shard)
                .ok_or_else(|| missing(shard))
                .map(|s| s.offsets(&queue.topic, queue.queue_id));
            let _ = reply.send(result);
        }
        Request::OffsetForTimestamp {
            shard,
            queue,
            timestamp_ms,
            reply,
        } => {
            let result = match shards.get(&shard) {
                Some(s) => {
                    s.offset_for_timestamp(&queue.topic, queue.queue_id, timestamp_ms)
                        .await
                }
                None => Err(missing(shard)),
            };
            let _ = reply.send(result);
        }
        Request::WaitForMessage {
            shard,
            queue,
            offset,
            timeout,
            reply,
        } => {
            let result = match shards.get(&shard) {
                Some(s) => {
                    s.wait_for_message(&queue.topic, queue.queue_id, offset, timeout)
                        .await;
                    Ok(())
                }
                None => Err(missing(shard)),
            };
            let _ = reply.send(result);
        }
        Request::QueryKey {
            shard,
            topic,
            key,
            limit,
            from_ms,
            to_ms,
            reply,
        } => {
            let result = match shards.get(&shard) {
                Some(s) => s.query_key(&topic, &key, limit, from_ms, to_ms).await,
                None => Err(missing(shard)),
            };
            let _ = reply.send(result);
        }
        Request::ReadAt { pos, reply } => {
            let result = match shards.get(&pos.shard()) {
                Some(s) => s.read_at(pos.log_pos()).await,
                None => Err(missing(pos.shard())),
            };
            let _ = reply.send(result);
        }
        Request::Retention { shard, now, reply } => {
            let result = match shards.get(&shard) {
                Some(s) => s.apply_retention(now).await,
                None => Err(missing(shard)),
            };
            let _ = reply.send(result);
        }
        Request::DeleteTopic {
            shard,
            topic,
            reply,
        } => {
            let result = match shards.get(&shard) {
                Some(s) => s.delete_topic(&topic).await,
                None => Err(missing(shard)),
            };
            let _ = reply.send(result);
        }
        Request::Shutdown { reply } => {
            let _ = reply.send(Err(StoreError::BadRequest(
                "shutdown is handled by the thread loop".into(),
            )));
        }
        Request::StartService { .. } => {
            tracing::error!("a thread service reached the request handler");
        }
        Request::Gathered(_) => {
            tracing::error!("gathered requests reached the request handler unopened");
        }
    }
}
