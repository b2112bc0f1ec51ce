//! The write pump: turns appended bytes into writes and flushes, keeps segments prepared
//! ahead of the tail, and trims the cache. Everything is started from [`Inner::pump`], which
//! runs after every event (append, write done, flush done, timer) and decides what to issue.
//!
//! Ordering rules that keep the bytes on disk a prefix of the log:
//! - writes cover disjoint pages while in flight: a write that rewrites a partial page waits
//!   for the write that last covered it, and while any write is in flight only whole pages go;
//! - a flush is issued only for bytes whose writes completed, so it covers them. The next write
//!   may run during that flush: it only rewrites a partial page with a superset of its bytes.

use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use compio::fs::File;
use compio::io::AsyncWriteAtExt;

use super::{
    ASYNC_WRITE_COALESCE_BYTES, CHECKPOINT_INTERVAL_MS, FLUSHES_IN_FLIGHT_MAX, InFlightWrite,
    Inner, State, WRITES_IN_FLIGHT_MAX,
};
use crate::checkpoint::{Checkpoint, SlotFile};
use crate::chunk::WriteBuf;
use crate::config::{FlushMode, PAGE_BYTES};
use crate::error::LogError;
use crate::segment::{self, Pace, open_segment, prepare_segment, segment_name};

/// After a failed segment preparation, background retries wait this long.
const PREP_RETRY_MS: u64 = 1000;

/// With no append for this long, segments are pre-written at full speed.
const PREP_IDLE_MS: u64 = 50;

/// How long paced pre-writing waits before checking again whether the tail moved.
const PREP_PAUSE_MS: u64 = 2;

/// Suffix of a retired segment kept for reuse.
pub(crate) const RECYCLE_SUFFIX: &str = ".recycle";

fn align_down(pos: u64) -> u64 {
    pos - pos % PAGE_BYTES as u64
}

fn align_up(pos: u64) -> u64 {
    align_down(pos + PAGE_BYTES as u64 - 1)
}

/// A write decided under the state borrow and issued after it is released.
struct PlannedWrite {
    file: File,
    buf: WriteBuf,
    offset: u64,
    bytes: u64,
    end: u64,
}

/// A flush decided under the state borrow.
struct PlannedFlush {
    files: Vec<File>,
    target: u64,
    boundary: u64,
}

impl Inner {
    /// Has the pump task run soon. The task is queued behind whatever is already runnable, so
    /// appenders woken together all place their records before the next write is planned:
    /// group commit falls out of the executor's FIFO order, with no timer.
    pub(super) fn request_pump(&self) {
        if !self.pump_requested.replace(true)
            && let Some(waker) = self.pump_waker.borrow_mut().take()
        {
            waker.wake();
        }
    }

    /// Issues whatever writes, flush and segment preparation the state calls for.
    pub(super) fn pump(self: &Rc<Self>) {
        let mut writes = Vec::new();
        let mut flush = None;
        {
            let mut st = self.st.borrow_mut();
            if st.failed.is_some() {
                return;
            }
            while st.writes.len() < WRITES_IN_FLIGHT_MAX && st.submitted < st.tail {
                if self.should_coalesce(&st) {
                    break;
                }
                match self.plan_write(&mut st) {
                    Some(write) => writes.push(write),
                    None => break,
                }
            }
            if st.flushes_in_flight < FLUSHES_IN_FLIGHT_MAX && st.written > st.flush_issued_upto {
                let due = match self.config.flush {
                    FlushMode::Sync => true,
                    FlushMode::Async => {
                        st.flush_wanted_upto > st.flush_issued_upto
                            || st.written - st.flush_issued_upto >= self.config.flush_bytes
                    }
                };
                if due {
                    st.flushes_in_flight += 1;
                    st.flush_issued_upto = st.written;
                    flush = Some(PlannedFlush {
                        files: self.files_between(&st, st.durable, st.written),
                        target: st.written,
                        boundary: st.written_boundary,
                    });
                }
            }
        }
        for write in writes {
            compio::runtime::spawn(write_task(Rc::clone(self), write)).detach();
        }
        if let Some(flush) = flush {
            compio::runtime::spawn(flush_task(Rc::clone(self), flush)).detach();
        }
        self.ensure_prepared(false);
    }

    /// Async mode: whether the unwritten bytes should wait for more to join them (see
    /// [`ASYNC_WRITE_COALESCE_BYTES`]). Never when nothing is in flight (its completion is
    /// what would release them), when a flush is wanted, or when appenders wait for room.
    fn should_coalesce(&self, st: &State) -> bool {
        self.config.flush == FlushMode::Async
            && !st.writes.is_empty()
            && st.flush_wanted_upto <= st.flush_issued_upto
            && !st.closed
            && st.tail - st.submitted
                < ASYNC_WRITE_COALESCE_BYTES.min(self.config.write_buffer_bytes / 2)
    }

    /// The next write, if one may go now.
    fn plan_write(&self, st: &mut State) -> Option<PlannedWrite> {
        let start = st.submitted;
        let chunk_bytes = self.chunk_bytes as u64;
        let chunk_base = start - start % chunk_bytes;
        let mut end = st.tail.min(chunk_base + chunk_bytes);
        // Whole pages in every mode: O_DIRECT needs them, and a buffered write that ends
        // inside a page the cache does not hold makes the kernel read that page from disk
        // first (the segment was pre-written), a synchronous read on an io_uring worker for
        // every write. The unfilled end of the last page is written as zeros and rewritten,
        // with the bytes that follow, by the next write.
        let io_start = align_down(start);
        let mut others_in_flight = false;
        for write in st.writes.iter().filter(|w| !w.done) {
            if write.io_end > io_start {
                // The partial page is still being written by an earlier write.
                return None;
            }
            others_in_flight = true;
        }
        if others_in_flight {
            end = align_down(end);
            if end <= start {
                return None;
            }
        }
        let io_end = align_up(end);
        debug_assert!(start < end && end <= st.tail);
        let seg_base = self.segment_base(start);
        let file = match st.segments.get(&seg_base) {
            Some(segment) => segment.write.clone(),
            None => unreachable!("bytes were placed in segment {seg_base}, which does not exist"),
        };
        let front_base = st.chunks.front().map_or(u64::MAX, |c| c.base());
        let chunk = match chunk_base
            .checked_sub(front_base)
            .and_then(|d| st.chunks.get_mut((d / chunk_bytes) as usize))
        {
            Some(chunk) => chunk,
            None => unreachable!("unwritten bytes at {start} are not in memory"),
        };
        debug_assert_eq!(chunk.base(), chunk_base);
        let buf = chunk.write_buf(io_start, io_end);
        let at_boundary = end == st.tail;
        st.submitted = end;
        st.writes.push_back(InFlightWrite {
            end,
            io_end,
            at_boundary,
            done: false,
        });
        Some(PlannedWrite {
            file,
            buf,
            offset: io_start - seg_base,
            bytes: io_end - io_start,
            end,
        })
    }

    /// Write descriptors of the segments holding bytes `[from, to)`.
    fn files_between(&self, st: &State, from: u64, to: u64) -> Vec<File> {
        if from >= to {
            return Vec::new();
        }
        st.segments
            .range(self.segment_base(from)..=self.segment_base(to - 1))
            .map(|(_, segment)| segment.write.clone())
            .collect()
    }

    fn write_done(self: &Rc<Self>, end: u64, bytes: u64, started: Instant) {
        {
            let mut st = self.st.borrow_mut();
            st.stats.writes += 1;
            st.stats.write_bytes += bytes;
            st.stats.write_nanos += started.elapsed().as_nanos() as u64;
            match st.writes.iter_mut().find(|w| w.end == end) {
                Some(write) => write.done = true,
                None => unreachable!("completed write ending at {end} was not in flight"),
            }
            while let Some(write) = st.writes.pop_front_if(|w| w.done) {
                st.written = write.end;
                if write.at_boundary {
                    st.written_boundary = write.end;
                }
            }
            debug_assert!(
                st.durable <= st.written && st.written <= st.submitted && st.submitted <= st.tail
            );
            self.evict(&mut st);
        }
        self.room.notify(usize::MAX);
        self.pump();
    }

    /// Drops the oldest fully written chunks beyond the read cache budget.
    fn evict(&self, st: &mut State) {
        let chunk_bytes = self.chunk_bytes as u64;
        let clean_end = st.written - st.written % chunk_bytes;
        while let Some(front) = st.chunks.front() {
            let clean_bytes = clean_end.saturating_sub(front.base());
            if front.end() > st.written || clean_bytes <= self.config.read_cache_bytes {
                break;
            }
            st.chunks.pop_front();
        }
    }

    fn flush_done(self: &Rc<Self>, target: u64, boundary: u64, started: Instant) {
        let checkpoint = {
            let mut st = self.st.borrow_mut();
            st.stats.flush_nanos += started.elapsed().as_nanos() as u64;
            // An earlier-issued flush may complete after a later one: keep the furthest.
            st.durable = st.durable.max(target);
            st.durable_boundary = st.durable_boundary.max(boundary);
            st.flushes_in_flight -= 1;
            st.stats.flushes += 1;
            let due = st.checkpoint_at.elapsed() >= Duration::from_millis(CHECKPOINT_INTERVAL_MS);
            match st.checkpoint.take() {
                Some(file) if due && !st.closed => {
                    st.checkpoint_at = Instant::now();
                    Some((file, self.checkpoint_of(&st)))
                }
                other => {
                    st.checkpoint = other;
                    None
                }
            }
        };
        self.durable.notify(usize::MAX);
        if let Some((file, cp)) = checkpoint {
            compio::runtime::spawn(checkpoint_task(Rc::clone(self), file, cp)).detach();
        }
        self.pump();
    }

    /// What the checkpoint should say now.
    pub(super) fn checkpoint_of(&self, st: &State) -> Checkpoint {
        Checkpoint::new(
            st.generation,
            st.durable_boundary,
            st.last_store_timestamp_ms,
        )
    }

    /// Whether preparation may start: background retries after a failure wait
    /// `PREP_RETRY_MS`; an append waiting for the segment (`demanded`) retries at once, since a
    /// full disk fails fast in `fallocate` and space may have been freed.
    fn prep_allowed(&self, st: &State, demanded: bool) -> bool {
        !st.closed
            && st.failed.is_none()
            && (demanded
                || st
                    .prep
                    .failed_at
                    .is_none_or(|at| at.elapsed() >= Duration::from_millis(PREP_RETRY_MS)))
    }

    /// How fast to pre-write segment `base`, `done` bytes in: stay half a segment ahead of
    /// where the tail will need it, one write at a time, so the log's flushes never queue
    /// behind a burst of zeroes; full speed when nothing is appended or an append waits for
    /// this very segment.
    fn prep_pace(&self, base: u64, done: u64) -> Pace {
        let st = self.st.borrow();
        if st.closed {
            return Pace::Stop;
        }
        let (seen_tail, seen_at) = st.prep.tail_seen.get();
        let idle = if seen_tail == st.tail {
            seen_at.elapsed() >= Duration::from_millis(PREP_IDLE_MS)
        } else {
            st.prep.tail_seen.set((st.tail, Instant::now()));
            false
        };
        if st.prep.want >= base || idle {
            return Pace::Fast;
        }
        let seg = self.config.segment_bytes;
        let lead_limit = st.tail + u64::from(self.config.segments_ahead) * seg + seg / 2;
        if base + done <= lead_limit {
            Pace::Slow
        } else {
            Pace::Pause(Duration::from_millis(PREP_PAUSE_MS))
        }
    }

    /// Base of the next segment to prepare, if the tail needs more ahead of it.
    pub(super) fn next_prep_base(&self, st: &State) -> Option<u64> {
        let seg = self.config.segment_bytes;
        let tail_base = self.segment_base(st.tail);
        let goal = (tail_base + u64::from(self.config.segments_ahead) * seg).max(st.prep.want);
        let next = st
            .segments
            .last_key_value()
            .map_or(tail_base, |(base, _)| base + seg);
        (next <= goal).then_some(next)
    }

    /// Starts preparing segments if needed and allowed; returns the current attempt number.
    pub(super) fn ensure_prepared(self: &Rc<Self>, demanded: bool) -> u64 {
        let mut st = self.st.borrow_mut();
        if st.prep.running
            || !self.prep_allowed(&st, demanded)
            || self.next_prep_base(&st).is_none()
        {
            return st.prep.attempts;
        }
        st.prep.running = true;
        st.prep.attempts += 1;
        let attempt = st.prep.attempts;
        drop(st);
        compio::runtime::spawn(prep_task(Rc::clone(self), attempt)).detach();
        attempt
    }

    fn prep_finished(&self, attempt: u64, error: Option<LogError>) {
        {
            let mut st = self.st.borrow_mut();
            st.prep.running = false;
            match error {
                Some(e) => {
                    let now = Instant::now();
                    match st.prep.warnings.take(now) {
                        Some(not_logged_before) => {
                            tracing::warn!(dir = %self.dir.display(), error = %e, not_logged_before, "segment preparation failed");
                        }
                        None => {
                            tracing::debug!(dir = %self.dir.display(), error = %e, "segment preparation failed again");
                        }
                    }
                    st.prep.error = Some((attempt, e));
                    st.prep.failed_at = Some(now);
                }
                None => {
                    if st.prep.warnings.reset() {
                        tracing::info!(dir = %self.dir.display(), "segment preparation succeeded again");
                    }
                    st.prep.error = None;
                    st.prep.failed_at = None;
                }
            }
        }
        self.room.notify(usize::MAX);
    }

    /// See [`super::CommitLog::retire_segments_before`].
    pub(super) async fn retire_before(
        self: &Rc<Self>,
        pos: u64,
        recycle: bool,
    ) -> Result<usize, LogError> {
        let seg = self.config.segment_bytes;
        let (retired, mut recycle_slots) = {
            let mut st = self.st.borrow_mut();
            // Only whole segments with no write in flight: a recycled file is overwritten soon.
            let limit = pos.min(self.segment_base(st.written));
            let retired: Vec<u64> = st
                .segments
                .range(..limit)
                .map(|(&b, _)| b)
                .filter(|&b| b + seg <= limit)
                .collect();
            for base in &retired {
                st.segments.remove(base);
            }
            if let Some(&first) = st.segments.keys().next() {
                st.start = st.start.max(first);
            }
            let start = st.start;
            while st.chunks.front().is_some_and(|c| c.end() <= start) {
                st.chunks.pop_front();
            }
            // Keep enough retired files to prepare the segments ahead; delete the rest.
            let keep = if recycle {
                self.config.segments_ahead as usize + 1
            } else {
                0
            };
            (retired, keep.saturating_sub(st.recyclable.len()))
        };
        for &base in &retired {
            let from = self.dir.join(segment_name(base));
            if recycle_slots > 0 {
                let to = self
                    .dir
                    .join(format!("{}{RECYCLE_SUFFIX}", segment_name(base)));
                compio::fs::rename(&from, &to)
                    .await
                    .map_err(|e| LogError::io("retiring a segment", e))?;
                self.st.borrow_mut().recyclable.push(to);
                recycle_slots -= 1;
            } else {
                compio::fs::remove_file(&from)
                    .await
                    .map_err(|e| LogError::io("retiring a segment", e))?;
            }
        }
        if !retired.is_empty() {
            segment::sync_dir(&self.dir)
                .await
                .map_err(|e| LogError::io("syncing the log directory", e))?;
        }
        Ok(retired.len())
    }
}

async fn write_task(inner: Rc<Inner>, write: PlannedWrite) {
    let PlannedWrite {
        file,
        buf,
        offset,
        bytes,
        end,
    } = write;
    let started = Instant::now();
    let mut handle = &file;
    let compio::BufResult(result, _) = handle.write_all_at(buf, offset).await;
    match result {
        Ok(()) => inner.write_done(end, bytes, started),
        Err(e) => inner.fail(LogError::io("writing a segment", e)),
    }
}

async fn flush_task(inner: Rc<Inner>, flush: PlannedFlush) {
    let started = Instant::now();
    for file in &flush.files {
        if let Err(e) = file.sync_data().await {
            inner.fail(LogError::io("flushing a segment (fdatasync)", e));
            return;
        }
    }
    inner.flush_done(flush.target, flush.boundary, started);
}

async fn checkpoint_task(inner: Rc<Inner>, mut file: SlotFile<Checkpoint>, cp: Checkpoint) {
    match file.store(&cp).await {
        Ok(()) => inner.st.borrow_mut().checkpoint = Some(file),
        Err(e) => inner.fail(LogError::io("writing the checkpoint", e)),
    }
    // `close` waits for the checkpoint file to come back.
    inner.room.notify(usize::MAX);
}

async fn prep_task(inner: Rc<Inner>, attempt: u64) {
    loop {
        let (base, recycled) = {
            let mut st = inner.st.borrow_mut();
            match inner.next_prep_base(&st) {
                Some(base) if !st.closed => (base, st.recyclable.pop()),
                _ => {
                    drop(st);
                    inner.prep_finished(attempt, None);
                    return;
                }
            }
        };
        let path = inner.dir.join(segment_name(base));
        let pace = |done: u64| inner.prep_pace(base, done);
        let prepared = prepare_segment(
            &inner.dir,
            base,
            inner.config.segment_bytes,
            recycled.clone(),
            &pace,
        )
        .await;
        let opened = match prepared {
            Ok(()) => open_segment(&inner.dir, base, inner.io).await,
            Err(e) => {
                if let Some(old) = recycled.filter(|p| p.exists()) {
                    inner.st.borrow_mut().recyclable.push(old);
                }
                Err(e)
            }
        };
        match opened {
            Ok(segment) => {
                inner.st.borrow_mut().segments.insert(base, segment);
                inner.room.notify(usize::MAX);
                inner.pump();
            }
            Err(e) => {
                let closing = inner.st.borrow().closed;
                let error = (!closing).then(|| LogError::preparing(&path, e));
                inner.prep_finished(attempt, error);
                return;
            }
        }
    }
}

/// Runs [`Inner::pump`] whenever an append asked for it. Holds the log weakly; closing the log
/// wakes it to finish.
pub(super) async fn pump_task(log: Weak<Inner>) {
    loop {
        let requested = std::future::poll_fn(|cx| {
            let Some(inner) = log.upgrade() else {
                return std::task::Poll::Ready(false);
            };
            if inner.st.borrow().closed {
                return std::task::Poll::Ready(false);
            }
            if inner.pump_requested.replace(false) {
                return std::task::Poll::Ready(true);
            }
            *inner.pump_waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await;
        match log.upgrade() {
            Some(inner) if requested => inner.pump(),
            _ => return,
        }
    }
}

/// Async mode: asks for a flush every interval while data is unflushed. Holds the log weakly,
/// so dropping the log ends it.
pub(super) async fn flush_timer(log: Weak<Inner>, interval: Duration) {
    loop {
        compio::time::sleep(interval).await;
        let Some(inner) = log.upgrade() else { return };
        {
            let mut st = inner.st.borrow_mut();
            if st.closed {
                return;
            }
            st.flush_wanted_upto = st.flush_wanted_upto.max(st.tail);
        }
        inner.pump();
    }
}
