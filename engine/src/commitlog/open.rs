//! Opening a log: lock the directory, check the segment files, and recover.
//!
//! Recovery scans forward from the checkpoint (every byte below it was durable and verified)
//! and verifies each record until the first that is not valid; the log ends there. Nothing
//! past that point is ever served: the tail position is set to it, and the next writer, whose
//! generation is durably raised before it appends, overwrites it. Stale records that survive
//! further on are rejected by position and generation at every later recovery.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::fs::File;
use event_listener::Event;

use super::write::{RECYCLE_SUFFIX, flush_timer, pump_task};
use super::{CommitLog, Inner, LogStats, Prep, State};
use crate::checkpoint::{CHECKPOINT_FILE, Checkpoint, SlotFile};
use crate::chunk::{Chunk, ChunkPool};
use crate::config::{FlushMode, IoMode, LogConfig};
use crate::error::{LogError, OpenError, TailKind};
use crate::scan::{ScanState, ScanStep, TailError, scan_window};
use crate::segment::{
    Pace, Segment, list_dir, open_segment, prepare_segment, read_exact_at, segment_name,
};

/// Bytes read per step of the recovery scan (plus room for one largest record).
const SCAN_WINDOW_BYTES: usize = 4 << 20;

/// Lock file held while a log is open.
const LOCK_FILE: &str = "LOCK";

/// What recovery found; logged at open and printed by `quiver store check`.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    /// Checkpoint read at open, if any slot was valid.
    pub checkpoint: Option<Checkpoint>,
    /// Where the scan started.
    pub scanned_from: u64,
    /// Where the log ends: the next append goes here.
    pub end: u64,
    /// First position still stored.
    pub start: u64,
    /// Valid records verified by the scan.
    pub records_scanned: u64,
    /// How the scan stopped.
    pub tail: TailKind,
    /// Why the bytes at `end` are not a record (none when the scan ended at a segment end).
    pub reason: Option<TailError>,
    /// Generation of the writer opened now.
    pub generation: u32,
    /// Segment files in the log, including those prepared ahead.
    pub segments: usize,
}

impl RecoveryReport {
    /// Bytes the scan verified.
    pub fn bytes_scanned(&self) -> u64 {
        self.end - self.scanned_from
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log holds [{}, {}) in {} segments; scanned {} records ({} bytes) from {}; generation {}",
            self.start,
            self.end,
            self.segments,
            self.records_scanned,
            self.bytes_scanned(),
            self.scanned_from,
            self.generation
        )?;
        match (&self.tail, &self.reason) {
            (TailKind::Clean, _) | (_, None) => write!(f, "; clean end"),
            (TailKind::Stale, Some(reason)) => write!(
                f,
                "; stale bytes from an earlier life ignored at {}: {reason}",
                self.end
            ),
            (TailKind::Torn, Some(reason)) => {
                write!(f, "; TRUNCATED torn tail at {}: {reason}", self.end)
            }
        }
    }
}

fn layout_error(dir: &Path, problem: String) -> OpenError {
    OpenError::Layout {
        dir: dir.display().to_string(),
        problem,
    }
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, OpenError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(OpenError::io("creating the lock file"))?;
    match rustix::fs::flock(
        file.as_fd(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    ) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(OpenError::Locked {
            dir: dir.display().to_string(),
        }),
        Err(e) => Err(OpenError::Io {
            op: "locking the log directory",
            source: e.into(),
        }),
    }
}

/// Outcome of scanning the segments.
struct Scanned {
    state: ScanState,
    stop: Option<TailError>,
}

async fn scan_segments(
    segments: &BTreeMap<u64, Segment>,
    from: u64,
    config: &LogConfig,
) -> Result<Scanned, OpenError> {
    let seg_bytes = config.segment_bytes;
    let max_record = config.max_record_bytes as usize;
    let mut state = ScanState::new(from);
    let mut buf = Vec::with_capacity(SCAN_WINDOW_BYTES + max_record);
    loop {
        let base = state.pos - state.pos % seg_bytes;
        let Some(segment) = segments.get(&base) else {
            // Reached the end of the last segment through its padding.
            return Ok(Scanned { state, stop: None });
        };
        let seg_end = base + seg_bytes;
        let window_len =
            (seg_end - state.pos).min((SCAN_WINDOW_BYTES + max_record) as u64) as usize;
        let compio::BufResult(result, filled) =
            read_exact_at(&segment.read, buf, window_len, state.pos - base).await;
        buf = filled;
        result.map_err(OpenError::io("reading a segment during recovery"))?;
        let window_pos = state.pos;
        debug_assert_eq!(buf.len(), window_len);
        match scan_window(
            &buf,
            window_pos,
            seg_end,
            max_record,
            &mut state,
            &mut |_, _| {},
        ) {
            ScanStep::SegmentEnd | ScanStep::NeedMore => {}
            ScanStep::End(stop) => {
                return Ok(Scanned {
                    state,
                    stop: Some(stop),
                });
            }
        }
    }
}

pub(super) async fn open(
    dir: &Path,
    config: LogConfig,
) -> Result<(CommitLog, RecoveryReport), OpenError> {
    config.validate()?;
    std::fs::create_dir_all(dir).map_err(OpenError::io("creating the log directory"))?;
    let lock = lock_dir(dir)?;
    let io = config.effective_io();
    let seg_bytes = config.segment_bytes;

    let listing = list_dir(dir).map_err(OpenError::io("listing the log directory"))?;
    for leftover in &listing.leftovers {
        std::fs::remove_file(leftover).map_err(OpenError::io("removing an unfinished segment"))?;
    }
    let recyclable = collect_recyclable(dir, seg_bytes)?;
    for (i, (&base, &size)) in listing.segments.iter().zip(&listing.sizes).enumerate() {
        let name = segment_name(base);
        if size != seg_bytes {
            return Err(layout_error(
                dir,
                format!("segment {name} is {size} bytes but segment_bytes is {seg_bytes}"),
            ));
        }
        if base % seg_bytes != 0 {
            return Err(layout_error(
                dir,
                format!("segment {name} does not start at a multiple of segment_bytes"),
            ));
        }
        if i > 0 && listing.segments[i - 1] + seg_bytes != base {
            return Err(layout_error(
                dir,
                format!("segment before {name} is missing"),
            ));
        }
    }

    let (mut checkpoint_file, checkpoint) =
        SlotFile::<Checkpoint>::open(&dir.join(CHECKPOINT_FILE))
            .await
            .map_err(OpenError::io("reading the checkpoint"))?;

    let mut segments = BTreeMap::new();
    for &base in &listing.segments {
        let segment = open_segment(dir, base, io).await.map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) && io == IoMode::Direct {
                OpenError::DirectIoUnsupported {
                    dir: dir.display().to_string(),
                }
            } else {
                OpenError::Io {
                    op: "opening a segment",
                    source: e,
                }
            }
        })?;
        segments.insert(base, segment);
    }
    let start = listing.segments.first().copied().unwrap_or(0);
    let end_of_files = listing.segments.last().map_or(0, |&b| b + seg_bytes);
    let scanned_from = match checkpoint {
        Some(cp) if cp.durable_pos.get() > end_of_files => {
            return Err(OpenError::CheckpointAhead {
                durable: cp.durable_pos.get(),
                end: end_of_files,
            });
        }
        Some(cp) if cp.durable_pos.get() >= start => cp.durable_pos.get(),
        _ => start,
    };
    let scanned = scan_segments(&segments, scanned_from, &config).await?;
    let end = scanned.state.pos;

    // What the scan verified becomes the new durable base: make it so before saying it.
    if end > scanned_from {
        let first = scanned_from - scanned_from % seg_bytes;
        let last = (end - 1) - (end - 1) % seg_bytes;
        for segment in segments.range(first..=last).map(|(_, s)| s) {
            segment
                .write
                .sync_data()
                .await
                .map_err(OpenError::io("flushing recovered segments"))?;
        }
    }
    let previous = checkpoint.unwrap_or_default();
    let generation = previous
        .generation
        .get()
        .max(scanned.state.max_generation)
        .checked_add(1)
        .ok_or_else(|| layout_error(dir, "writer generation exhausted".into()))?;
    let last_store_timestamp_ms = previous
        .last_store_timestamp_ms
        .get()
        .max(scanned.state.max_store_timestamp_ms);
    checkpoint_file
        .store(&Checkpoint::new(generation, end, last_store_timestamp_ms))
        .await
        .map_err(OpenError::io("writing the checkpoint"))?;

    let chunk_bytes = config.chunk_bytes();
    let pool = ChunkPool::new(chunk_bytes);
    let tail_chunk = load_tail_chunk(&segments, &pool, end, seg_bytes, chunk_bytes).await?;

    let tail = match &scanned.stop {
        Some(stop) => TailKind::of(stop),
        None => TailKind::Clean,
    };
    let report = RecoveryReport {
        checkpoint,
        scanned_from,
        end,
        start,
        records_scanned: scanned.state.records,
        tail,
        reason: scanned.stop,
        generation,
        segments: segments.len(),
    };
    match report.tail {
        TailKind::Torn => tracing::warn!(dir = %dir.display(), %report, "recovered the commit log"),
        _ => tracing::info!(dir = %dir.display(), %report, "recovered the commit log"),
    }

    let inner = Rc::new(Inner {
        dir: dir.to_path_buf(),
        io,
        chunk_bytes,
        pool,
        room: Event::new(),
        durable: Event::new(),
        pump_requested: std::cell::Cell::new(false),
        pump_waker: RefCell::new(None),
        lock: RefCell::new(Some(lock)),
        st: RefCell::new(State {
            start,
            tail: end,
            submitted: end,
            written: end,
            written_boundary: end,
            durable: end,
            durable_boundary: end,
            writes: VecDeque::new(),
            flushes_in_flight: 0,
            flush_issued_upto: end,
            flush_wanted_upto: end,
            chunks: tail_chunk.into_iter().collect(),
            segments,
            recyclable,
            generation,
            last_store_timestamp_ms,
            checkpoint: Some(checkpoint_file),
            checkpoint_at: Instant::now(),
            failed: None,
            closed: false,
            prep: Prep {
                running: false,
                attempts: 0,
                want: 0,
                error: None,
                failed_at: None,
                warnings: super::prep_warnings(),
                tail_seen: std::cell::Cell::new((end, Instant::now())),
            },
            stats: LogStats::default(),
        }),
        config,
    });

    // The tail's own segment must exist before anything is appended.
    let tail_base = end - end % seg_bytes;
    if !inner.st.borrow().segments.contains_key(&tail_base) {
        let recycled = inner.st.borrow_mut().recyclable.pop();
        let path = dir.join(segment_name(tail_base));
        prepare_segment(dir, tail_base, seg_bytes, recycled, &|_| Pace::Fast)
            .await
            .map_err(|e| LogError::preparing(&path, e))?;
        let segment = open_segment(dir, tail_base, io)
            .await
            .map_err(OpenError::io("opening a new segment"))?;
        inner.st.borrow_mut().segments.insert(tail_base, segment);
    }
    if inner.config.flush == FlushMode::Async {
        let interval = Duration::from_millis(inner.config.flush_interval_ms);
        compio::runtime::spawn(flush_timer(Rc::downgrade(&inner), interval)).detach();
    }
    compio::runtime::spawn(pump_task(Rc::downgrade(&inner))).detach();
    inner.ensure_prepared(false);
    Ok((CommitLog { inner }, report))
}

/// Retired segments left from the last run; wrong-sized ones are deleted.
fn collect_recyclable(dir: &Path, seg_bytes: u64) -> Result<Vec<PathBuf>, OpenError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(OpenError::io("listing the log directory"))? {
        let entry = entry.map_err(OpenError::io("listing the log directory"))?;
        if !entry
            .file_name()
            .to_string_lossy()
            .ends_with(RECYCLE_SUFFIX)
        {
            continue;
        }
        let size = entry
            .metadata()
            .map_err(OpenError::io("listing the log directory"))?
            .len();
        if size == seg_bytes {
            found.push(entry.path());
        } else {
            std::fs::remove_file(entry.path())
                .map_err(OpenError::io("removing a retired segment"))?;
        }
    }
    Ok(found)
}

/// The chunk holding the tail, with the bytes before the tail in it loaded from disk, so the
/// next direct write can rewrite the partial page and fresh reads hit memory.
async fn load_tail_chunk(
    segments: &BTreeMap<u64, Segment>,
    pool: &std::sync::Arc<ChunkPool>,
    end: u64,
    seg_bytes: u64,
    chunk_bytes: usize,
) -> Result<Option<Chunk>, OpenError> {
    let chunk_base = end - end % chunk_bytes as u64;
    let mut chunk = Chunk::new(pool, chunk_base);
    if end > chunk_base {
        let segment_base = chunk_base - chunk_base % seg_bytes;
        let Some(segment) = segments.get(&segment_base) else {
            return Ok(None);
        };
        let file: &File = &segment.read;
        let len = (end - chunk_base) as usize;
        let compio::BufResult(result, bytes) =
            read_exact_at(file, Vec::new(), len, chunk_base - segment_base).await;
        result.map_err(OpenError::io("reading the tail of the log"))?;
        chunk.append(&bytes);
    }
    Ok(Some(chunk))
}
