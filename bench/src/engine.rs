//! In-process append load against one CommitLog: N concurrent appenders on the log's own
//! compio thread, as the shard will run them. Used by `quiver bench engine` and by the
//! criterion benches.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quiver_engine::record::HEADER_BYTES;
use quiver_engine::{CommitLog, LogConfig, LogError, LogStats, NewRecord, OpenError};

/// Topic of benchmark records.
const TOPIC: &[u8] = b"bench";

/// One append workload.
#[derive(Debug, Clone)]
pub struct AppendLoad {
    /// Log directory (a fresh one per run is best).
    pub dir: PathBuf,
    /// Log configuration (flush mode, I/O mode, segment size).
    pub config: LogConfig,
    /// Concurrent appending tasks.
    pub appenders: usize,
    /// Size of each record on disk, header included.
    pub record_bytes: usize,
    /// Records per append call (1 = single appends).
    pub batch: usize,
    /// Time spent appending before measuring, so the log reaches a steady state (segments
    /// recycled, buffers warm).
    pub warmup: Duration,
    /// Time spent measuring.
    pub measure: Duration,
    /// Segments kept behind the tail; older ones are retired and recycled, as retention would.
    pub keep_segments: u64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50: us(0.5),
            p90: us(0.9),
            p99: us(0.99),
            p999: us(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }
}

/// What a measured run did.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct AppendReport {
    /// Records appended while measuring.
    pub records: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Wall time, from the first append to everything durable.
    pub seconds: f64,
    /// Latency of each append call until acknowledged.
    pub latency_us: Percentiles,
    /// Write operations issued while measuring.
    pub writes: u64,
    /// Bytes those writes covered.
    pub write_bytes: u64,
    /// `fdatasync` rounds while measuring.
    pub flushes: u64,
    /// Mean time a write was in flight, µs.
    pub write_us: f64,
    /// Mean time a flush was in flight, µs.
    pub flush_us: f64,
}

impl AppendReport {
    /// Throughput in MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }

    /// Records per second.
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The log could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// An append failed.
    #[error(transparent)]
    Append(#[from] LogError),
    /// The runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Runs `load` on a new compio runtime in this thread.
pub fn run_append(load: &AppendLoad) -> Result<AppendReport, LoadError> {
    let runtime = compio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (log, _) = CommitLog::open(&load.dir, load.config.clone()).await?;
        if !load.warmup.is_zero() {
            run_phase(&log, load, load.warmup, u64::MAX).await?;
        }
        let report = run_phase(&log, load, load.measure, u64::MAX).await?;
        log.close().await?;
        Ok(report)
    })
}

/// Appends with `load.appenders` tasks on an open log for `duration` or until `max_records`
/// were appended, then flushes.
pub async fn run_phase(
    log: &CommitLog,
    load: &AppendLoad,
    duration: Duration,
    max_records: u64,
) -> Result<AppendReport, LoadError> {
    let body_len = load.record_bytes.saturating_sub(HEADER_BYTES + TOPIC.len());
    let body: Rc<[u8]> = (0..body_len).map(|i| i as u8).collect::<Vec<_>>().into();
    let claimed = Rc::new(Cell::new(0u64));
    let retiring = Rc::new(Cell::new(false));
    let histogram = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| std::io::Error::other(e.to_string()))?,
    ));
    let before = log.stats();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(load.appenders);
    for _ in 0..load.appenders {
        let log = log.clone();
        let body = Rc::clone(&body);
        let claimed = Rc::clone(&claimed);
        let retiring = Rc::clone(&retiring);
        let histogram = Rc::clone(&histogram);
        let (batch, keep) = (load.batch, load.keep_segments);
        tasks.push(compio::runtime::spawn(async move {
            let mut local = Histogram::<u64>::new_from(&histogram.borrow());
            loop {
                let first = claimed.get();
                if first >= max_records || Instant::now() >= deadline {
                    break;
                }
                let n = (batch as u64).min(max_records - first);
                claimed.set(first + n);
                let batch: Vec<NewRecord<'_>> = (first..first + n)
                    .map(|i| NewRecord {
                        topic: TOPIC,
                        queue_id: (i % 8) as u32,
                        queue_offset: i,
                        body: &body,
                        ..NewRecord::default()
                    })
                    .collect();
                let t = Instant::now();
                log.append_batch(&batch).await?;
                let _ = local.record(t.elapsed().as_nanos() as u64);
                retire_behind(&log, keep, &retiring).await?;
            }
            histogram
                .borrow_mut()
                .add(&local)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok::<(), LoadError>(())
        }));
    }
    for task in tasks {
        match task.await {
            Ok(result) => result?,
            Err(e) => {
                e.resume_unwind();
                return Err(LoadError::Runtime(std::io::Error::other(
                    "an appender task was cancelled",
                )));
            }
        }
    }
    log.flush().await?;
    let seconds = started.elapsed().as_secs_f64();
    let after = log.stats();
    let delta = |f: fn(&LogStats) -> u64| f(&after) - f(&before);
    let latency_us = Percentiles::of(&histogram.borrow());
    let records = claimed.get();
    Ok(AppendReport {
        records,
        bytes: records * load.record_bytes as u64,
        seconds,
        latency_us,
        writes: delta(|s| s.writes),
        write_bytes: delta(|s| s.write_bytes),
        flushes: delta(|s| s.flushes),
        write_us: delta(|s| s.write_nanos) as f64 / delta(|s| s.writes).max(1) as f64 / 1000.0,
        flush_us: delta(|s| s.flush_nanos) as f64 / delta(|s| s.flushes).max(1) as f64 / 1000.0,
    })
}

/// Retires segments more than `keep` behind the tail, once at a time across appenders.
async fn retire_behind(log: &CommitLog, keep: u64, retiring: &Cell<bool>) -> Result<(), LogError> {
    let seg = log.config().segment_bytes;
    let positions = log.positions();
    let tail_base = positions.tail - positions.tail % seg;
    let keep_from = tail_base.saturating_sub(keep * seg);
    if keep_from > positions.start && !retiring.get() {
        retiring.set(true);
        let result = log.retire_segments_before(keep_from).await;
        retiring.set(false);
        result?;
    }
    Ok(())
}
