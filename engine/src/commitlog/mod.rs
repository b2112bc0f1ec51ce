//! The CommitLog: an append-only log of records in fixed-size segment files, owned by one
//! shard thread and driven through that thread's io_uring ring (compio runtime).
//!
//! Data path of an append: the record is encoded straight into the tail [`Chunk`] (memory) and
//! gets its log position at once; the write pump turns unwritten bytes into writes (at most
//! [`WRITES_IN_FLIGHT_MAX`], each within one chunk), and records appended while writes are in
//! flight go into the next ones. In `sync` mode an `fdatasync` follows each completed write
//! and overlaps the next write; the append completes when a flush covers it (group commit). In
//! `async` mode the append completes at once and flushes run by interval or volume.
//!
//! Concurrency: everything here runs on one thread. Tasks share the state through `Rc` and a
//! `RefCell` that is never held across an `.await`.

mod open;
mod read;
mod scanner;
mod write;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use event_listener::Event;
use zerocopy::IntoBytes;

use crate::checkpoint::{Checkpoint, SlotFile};
use crate::chunk::{Chunk, ChunkPool};
use crate::config::{FlushMode, IoMode, LogConfig};
use crate::error::LogError;
use crate::log_budget::LogBudget;
use crate::record::{HEADER_BYTES, NewRecord, padding_header};
use crate::segment::Segment;

pub use open::RecoveryReport;
pub use scanner::LogScanner;

/// Writes kept in flight at once. Only whole pages are written while others are in flight,
/// so two writes never cover the same page at the same time.
pub const WRITES_IN_FLIGHT_MAX: usize = 4;

/// Async mode: while a write is in flight, the next one waits until at least this many bytes
/// are unwritten (or a flush is wanted). Under a stream of small appends this turns a write
/// per few records into one per this many bytes; the kernel's cost is per write (buffered
/// writes run on io_uring's worker threads), and the bytes are in memory for readers
/// meanwhile. Sync mode writes at once: its acknowledgements wait for the write.
pub const ASYNC_WRITE_COALESCE_BYTES: u64 = 128 << 10;

/// Flushes kept in flight at once. A flush covers every write completed before it was
/// issued, whatever order flushes complete in; concurrent flushes are merged by the kernel
/// and device, so overlapping them raises the rate of group commits.
pub const FLUSHES_IN_FLIGHT_MAX: usize = 2;

/// How often the checkpoint is rewritten, at most.
pub const CHECKPOINT_INTERVAL_MS: u64 = 1000;

/// Where an appended record was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Log position of the record's first byte.
    pub pos: u64,
    /// Length of the record.
    pub len: u32,
    /// Store timestamp written into the record.
    pub store_timestamp_ms: u64,
}

/// The log's positions, for monitoring and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    /// First byte still stored.
    pub start: u64,
    /// End of appended records.
    pub tail: u64,
    /// End of the contiguous bytes written to the files.
    pub written: u64,
    /// End of the bytes made durable by `fdatasync`.
    pub durable: u64,
    /// End of what readers may read.
    pub readable: u64,
}

/// Counters for benchmarks and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records appended.
    pub records: u64,
    /// Write operations completed.
    pub writes: u64,
    /// Bytes those writes covered (direct writes count whole pages).
    pub write_bytes: u64,
    /// `fdatasync` rounds completed.
    pub flushes: u64,
    /// Time writes spent in flight, summed (divide by `writes` for the mean latency).
    pub write_nanos: u64,
    /// Time flushes spent in flight, summed.
    pub flush_nanos: u64,
}

/// An append that could not be placed now.
#[derive(Debug, Clone)]
pub enum TryAppendError {
    /// The write buffer is full or a segment is not prepared yet; pass this to
    /// [`CommitLog::wait_for_room`] and try again.
    NoRoom(Blocked),
    /// The append can never succeed as it is, or the log has failed.
    Failed(LogError),
}

/// What a blocked append waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// The append would have ended here.
    end: u64,
    /// It needs the segment starting here, which is not prepared yet.
    segment: Option<u64>,
}

/// An append placed in the log, not yet acknowledged.
#[must_use = "an append is only stored once its ticket completes"]
pub struct AppendTicket {
    inner: Rc<Inner>,
    end: u64,
}

impl AppendTicket {
    /// Completes when the append is stored as the flush mode defines it: durable in `sync`
    /// mode, in the log's memory in `async` mode.
    pub async fn stored(self) -> Result<(), LogError> {
        match self.inner.config.flush {
            FlushMode::Sync => self.inner.wait_durable(self.end).await,
            FlushMode::Async => {
                self.inner.yield_if_backlogged().await;
                Ok(())
            }
        }
    }

    /// Log position just past the appended record(s).
    pub fn end(&self) -> u64 {
        self.end
    }
}

/// The append-only log of one shard. Not `Send`: it lives on the thread that opened it.
#[derive(Clone)]
pub struct CommitLog {
    inner: Rc<Inner>,
}

pub(crate) struct Inner {
    dir: PathBuf,
    config: LogConfig,
    io: IoMode,
    chunk_bytes: usize,
    pool: Arc<ChunkPool>,
    st: RefCell<State>,
    /// Notified when room frees up, a segment is prepared, or the log fails.
    room: Event,
    /// Notified when the durable position advances or the log fails.
    durable: Event,
    /// Appends ask for the pump through this, so that every append made runnable by the same
    /// event lands in the same write (see [`write::pump_task`]).
    pump_requested: std::cell::Cell<bool>,
    pump_waker: RefCell<Option<std::task::Waker>>,
    /// The directory's exclusive lock, released by `close`.
    lock: RefCell<Option<std::fs::File>>,
}

/// A write handed to the kernel.
struct InFlightWrite {
    /// Log position just past the data it carries.
    end: u64,
    /// Log position just past the last byte it writes (end rounded up to a page when direct).
    io_end: u64,
    /// `end` is a record boundary.
    at_boundary: bool,
    done: bool,
}

struct Prep {
    running: bool,
    attempts: u64,
    /// Highest segment base an append waits for; preparation goes at least this far.
    want: u64,
    /// When the last attempt failed; background retries wait a while after it.
    failed_at: Option<Instant>,
    /// The tail when last seen moving, and when: pre-writing runs at full speed once the log
    /// has been idle a while (watched here rather than timestamping every append).
    tail_seen: std::cell::Cell<(u64, Instant)>,
    /// The last failed attempt and its error.
    error: Option<(u64, LogError)>,
    /// Warnings of failed preparations: on a full disk every append that needs the segment
    /// retries (and fails), so the log gets one line a while, not one each.
    warnings: LogBudget,
}

/// While segment preparation keeps failing, at most one warning this often.
const PREP_FAILURE_LOG_MS: u64 = 10_000;

/// The budget of [`Prep::warnings`].
fn prep_warnings() -> LogBudget {
    LogBudget::new(1, std::time::Duration::from_millis(PREP_FAILURE_LOG_MS))
}

struct State {
    start: u64,
    tail: u64,
    submitted: u64,
    written: u64,
    /// Largest record boundary at or below `written`.
    written_boundary: u64,
    durable: u64,
    durable_boundary: u64,
    writes: VecDeque<InFlightWrite>,
    /// Flushes issued and not completed.
    flushes_in_flight: usize,
    /// `written` when the last flush was issued: a new flush is only worth issuing beyond it.
    flush_issued_upto: u64,
    /// A flush was asked for (timer, explicit `flush`) of everything up to here. Flushes are
    /// issued, as writes complete, until one covers it.
    flush_wanted_upto: u64,
    /// Chunks covering `[chunks[0].base, tail)`, contiguous.
    chunks: VecDeque<Chunk>,
    segments: BTreeMap<u64, Segment>,
    /// Retired segment files waiting to be reused.
    recyclable: Vec<PathBuf>,
    generation: u32,
    last_store_timestamp_ms: u64,
    checkpoint: Option<SlotFile<Checkpoint>>,
    checkpoint_at: Instant,
    failed: Option<LogError>,
    closed: bool,

    prep: Prep,
    stats: LogStats,
}

impl CommitLog {
    /// Opens the log in `dir` (creating it if empty), recovering to the last valid record.
    /// Must be called on the compio runtime that will drive the log.
    pub async fn open(
        dir: impl AsRef<Path>,
        config: LogConfig,
    ) -> Result<(CommitLog, RecoveryReport), crate::OpenError> {
        open::open(dir.as_ref(), config).await
    }

    /// Appends one record and waits until it is stored (see [`AppendTicket::stored`]).
    ///
    /// ```no_run
    /// # async fn demo(log: quiver_engine::CommitLog) -> Result<(), quiver_engine::LogError> {
    /// use quiver_engine::NewRecord;
    /// let placed = log
    ///     .append(&NewRecord { topic: b"orders", body: b"hello", ..NewRecord::default() })
    ///     .await?;
    /// let record = log.read_record(placed.pos).await.expect("just stored");
    /// assert_eq!(&record.body()[..], b"hello");
    /// # Ok(()) }
    /// ```
    pub async fn append(&self, record: &NewRecord<'_>) -> Result<Appended, LogError> {
        let mut placed = self.append_batch(std::slice::from_ref(record)).await?;
        Ok(placed.remove(0))
    }

    /// Appends records contiguously, in order, and waits until all are stored.
    pub async fn append_batch(&self, records: &[NewRecord<'_>]) -> Result<Vec<Appended>, LogError> {
        let mut placed = Vec::with_capacity(records.len());
        let ticket = loop {
            match self.try_append_batch(records, &mut placed) {
                Ok(ticket) => break ticket,
                Err(TryAppendError::NoRoom(blocked)) => self.wait_for_room(blocked).await?,
                Err(TryAppendError::Failed(e)) => return Err(e),
            }
        };
        ticket.stored().await?;
        Ok(placed)
    }

    /// Places records at the tail now, or says why not, without waiting. Positions are pushed
    /// to `placed`. Whatever the caller assigns between deciding to append and this call (queue
    /// offsets) follows log order, because nothing else runs in between.
    pub fn try_append_batch(
        &self,
        records: &[NewRecord<'_>],
        placed: &mut Vec<Appended>,
    ) -> Result<AppendTicket, TryAppendError> {
        let end = self.inner.place(records, placed)?;
        self.inner.request_pump();
        Ok(AppendTicket {
            inner: Rc::clone(&self.inner),
            end,
        })
    }

    /// Waits until what blocked an append is resolved: enough bytes were written, or the
    /// segment it needs was prepared. Errors if the log failed or the segment cannot be
    /// prepared (disk full).
    pub async fn wait_for_room(&self, blocked: Blocked) -> Result<(), LogError> {
        self.inner.wait_for_room(blocked).await
    }

    /// Makes everything appended so far durable.
    pub async fn flush(&self) -> Result<(), LogError> {
        let target = {
            let mut st = self.inner.st.borrow_mut();
            st.flush_wanted_upto = st.flush_wanted_upto.max(st.tail);
            st.tail
        };
        self.inner.pump();
        self.inner.wait_durable(target).await
    }

    /// Waits until every byte below `pos` is durable (without asking for a flush: in async mode
    /// the interval or volume triggers it).
    pub async fn wait_durable(&self, pos: u64) -> Result<(), LogError> {
        self.inner.wait_durable(pos).await
    }

    /// Stops taking appends, flushes everything, stops background work, records a final
    /// checkpoint and releases the directory. Every handle of the log is closed by this.
    pub async fn close(self) -> Result<(), LogError> {
        let inner = &self.inner;
        inner.st.borrow_mut().closed = true;
        inner.room.notify(usize::MAX);
        if let Some(waker) = inner.pump_waker.borrow_mut().take() {
            waker.wake();
        }
        self.flush().await?;
        // Segment preparation stops at its next step; a checkpoint write in flight completes.
        let (mut file, cp) = loop {
            let listener = inner.room.listen();
            {
                let mut st = inner.st.borrow_mut();
                if !st.prep.running
                    && let Some(file) = st.checkpoint.take()
                {
                    break (file, inner.checkpoint_of(&st));
                }
            }
            listener.await;
        };
        file.store(&cp)
            .await
            .map_err(|e| LogError::io("writing the checkpoint", e))?;
        inner.lock.borrow_mut().take();
        Ok(())
    }

    /// Retires whole segments ending at or before `pos` (never one a write is still in flight
    /// to): they leave the log and are kept for reuse as future segments, or deleted.
    /// Reads below the new start get [`crate::ReadError::BeforeStart`]. Returns how many.
    pub async fn retire_segments_before(&self, pos: u64) -> Result<usize, LogError> {
        self.inner.retire_before(pos, true).await
    }

    /// Like [`Self::retire_segments_before`], but deletes the files instead of keeping them
    /// for reuse: what freeing disk space needs.
    pub async fn delete_segments_before(&self, pos: u64) -> Result<usize, LogError> {
        self.inner.retire_before(pos, false).await
    }

    /// The position before which every segment was last written before `cutoff` (by file
    /// modification time, as RocketMQ expires CommitLog files): what time-based retention may
    /// retire. Only complete segments count.
    pub async fn expired_before(&self, cutoff: std::time::SystemTime) -> u64 {
        let (bases, tail_base) = {
            let st = self.inner.st.borrow();
            let tail_base = self.inner.segment_base(st.tail);
            (
                st.segments
                    .range(..tail_base)
                    .map(|(&b, _)| b)
                    .collect::<Vec<u64>>(),
                tail_base,
            )
        };
        for base in bases {
            let path = self.inner.dir.join(crate::segment::segment_name(base));
            let modified = compio::fs::metadata(&path).await.and_then(|m| m.modified());
            match modified {
                Ok(at) if at < cutoff => continue,
                _ => return base,
            }
        }
        tail_base
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Current positions.
    pub fn positions(&self) -> Positions {
        let st = self.inner.st.borrow();
        Positions {
            start: st.start,
            tail: st.tail,
            written: st.written,
            durable: st.durable,
            readable: self.inner.readable_end(&st),
        }
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        self.inner.st.borrow().stats
    }

    /// The configuration in force.
    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// Bases of the segment files, oldest first, including those prepared ahead.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.inner.st.borrow().segments.keys().copied().collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Inner {
    fn segment_base(&self, pos: u64) -> u64 {
        pos - pos % self.config.segment_bytes
    }

    fn readable_end(&self, st: &State) -> u64 {
        match self.config.flush {
            FlushMode::Sync => st.durable,
            FlushMode::Async => st.tail,
        }
    }

    /// Where a record of `len` bytes goes when the log ends at `tail`: there, or at the start
    /// of the next segment when it would leave no room for a padding header before the end of
    /// this one (the rest of this one is then padding).
    fn record_pos(&self, tail: u64, len: usize) -> u64 {
        let seg_end = self.segment_base(tail) + self.config.segment_bytes;
        if tail + (len + HEADER_BYTES) as u64 > seg_end {
            seg_end
        } else {
            tail
        }
    }

    /// Plans where each record goes without changing anything; returns the end position, or
    /// what the batch waits for.
    fn plan(&self, st: &State, lens: &[usize]) -> Result<u64, TryAppendError> {
        let mut tail = st.tail;
        for &len in lens {
            tail = self.record_pos(tail, len);
            let base = self.segment_base(tail);
            if !st.segments.contains_key(&base) {
                return Err(TryAppendError::NoRoom(Blocked {
                    end: tail + len as u64,
                    segment: Some(base),
                }));
            }
            tail += len as u64;
        }
        if !self.has_room(st, tail) {
            return Err(TryAppendError::NoRoom(Blocked {
                end: tail,
                segment: None,
            }));
        }
        Ok(tail)
    }

    /// Whether data up to `end` fits the write buffer. An empty buffer takes anything, so a
    /// record preceded by a long padding cannot wait forever.
    fn has_room(&self, st: &State, end: u64) -> bool {
        st.tail == st.written || end - st.written <= self.config.write_buffer_bytes
    }

    fn place(
        &self,
        records: &[NewRecord<'_>],
        placed: &mut Vec<Appended>,
    ) -> Result<u64, TryAppendError> {
        let max = self.config.max_record_bytes as usize;
        let mut lens = Vec::with_capacity(records.len());
        let mut total = 0u64;
        for record in records {
            let len = record
                .encoded_len(max)
                .map_err(|e| TryAppendError::Failed(e.into()))?;
            total += len as u64;
            lens.push(len);
        }
        if total > self.config.write_buffer_bytes {
            return Err(TryAppendError::Failed(LogError::BatchTooLarge {
                bytes: total,
                limit: self.config.write_buffer_bytes,
            }));
        }
        let mut st = self.st.borrow_mut();
        if let Some(e) = &st.failed {
            return Err(TryAppendError::Failed(LogError::Failed(Arc::new(
                e.clone(),
            ))));
        }
        if st.closed {
            return Err(TryAppendError::Failed(LogError::Closed));
        }
        let end = self.plan(&st, &lens)?;
        let now = now_ms().max(st.last_store_timestamp_ms);
        st.last_store_timestamp_ms = now;
        let generation = st.generation;
        for (record, &len) in records.iter().zip(&lens) {
            let pos = self.record_pos(st.tail, len);
            if pos != st.tail {
                let pad = (pos - st.tail) as usize;
                let header = padding_header(pad, st.tail, generation);
                self.put(&mut st, header.as_bytes());
                self.put_zeros(&mut st, pad - HEADER_BYTES);
            }
            debug_assert_eq!(st.tail, pos);
            let header = record.header(len, pos, generation, now);
            self.put(&mut st, header.as_bytes());
            for part in record.variable_parts() {
                self.put(&mut st, part);
            }
            debug_assert_eq!(st.tail, pos + len as u64);
            placed.push(Appended {
                pos,
                len: len as u32,
                store_timestamp_ms: now,
            });
        }
        st.stats.records += records.len() as u64;
        assert_eq!(st.tail, end, "placement diverged from its plan");
        Ok(end)
    }

    /// The chunk that receives the next byte at the tail, created if needed.
    fn tail_chunk<'a>(&self, st: &'a mut State) -> &'a mut Chunk {
        let needs_new = st.chunks.back().is_none_or(|c| c.room() == 0);
        if needs_new {
            let base = st.chunks.back().map_or(st.tail, Chunk::end);
            debug_assert_eq!(base, st.tail);
            st.chunks.push_back(Chunk::new(&self.pool, base));
        }
        match st.chunks.back_mut() {
            Some(chunk) => chunk,
            None => unreachable!("a chunk was just ensured"),
        }
    }

    fn put(&self, st: &mut State, mut data: &[u8]) {
        while !data.is_empty() {
            let chunk = self.tail_chunk(st);
            let n = data.len().min(chunk.room());
            chunk.append(&data[..n]);
            st.tail += n as u64;
            data = &data[n..];
        }
    }

    fn put_zeros(&self, st: &mut State, mut n: usize) {
        while n > 0 {
            let chunk = self.tail_chunk(st);
            let k = n.min(chunk.room());
            chunk.append_zeros(k);
            st.tail += k as u64;
            n -= k;
        }
    }

    async fn wait_for_room(self: &Rc<Self>, blocked: Blocked) -> Result<(), LogError> {
        if let Some(base) = blocked.segment {
            let mut st = self.st.borrow_mut();
            st.prep.want = st.prep.want.max(base);
        }
        let attempt = self.ensure_prepared(blocked.segment.is_some());
        loop {
            let listener = self.room.listen();
            {
                let st = self.st.borrow();
                if let Some(e) = &st.failed {
                    return Err(LogError::Failed(Arc::new(e.clone())));
                }
                if st.closed {
                    return Err(LogError::Closed);
                }
                match blocked.segment {
                    Some(base) => {
                        if st.segments.contains_key(&base) {
                            return Ok(());
                        }
                        if let Some((failed_attempt, e)) = &st.prep.error
                            && *failed_attempt >= attempt
                        {
                            return Err(e.clone());
                        }
                    }
                    None if self.has_room(&st, blocked.end) => return Ok(()),
                    None => {}
                }
            }
            listener.await;
        }
    }

    async fn wait_durable(&self, end: u64) -> Result<(), LogError> {
        loop {
            let listener = self.durable.listen();
            {
                let st = self.st.borrow();
                if st.durable >= end {
                    return Ok(());
                }
                if let Some(e) = &st.failed {
                    return Err(LogError::Failed(Arc::new(e.clone())));
                }
            }
            listener.await;
        }
    }

    /// Async mode appends never wait for I/O; when a chunk's worth of data is waiting to be
    /// handed to the kernel, the appender yields once so the write tasks can run.
    async fn yield_if_backlogged(&self) {
        let backlog = {
            let st = self.st.borrow();
            st.tail - st.submitted >= self.chunk_bytes as u64
        };
        if backlog {
            YieldNow(false).await;
        }
    }

    fn fail(&self, error: LogError) {
        {
            let mut st = self.st.borrow_mut();
            if st.failed.is_none() {
                tracing::error!(dir = %self.dir.display(), %error, "commit log failed; appends refused until reopened");
                st.failed = Some(error);
            }
        }
        self.room.notify(usize::MAX);
        self.durable.notify(usize::MAX);
    }
}

/// Returns `Pending` once, waking itself, so other tasks on the thread run.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}
