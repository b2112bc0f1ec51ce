//! `quiver store`: recover and verify a log directory; open a whole store as a broker start
//! would and say what its recovery did; append self-verifying records to test a disk's
//! durability.

use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use quiver_bench::probe;
use quiver_engine::store::Store;
use quiver_engine::store::types::Message;
use quiver_engine::{CommitLog, FlushMode, IoMode, LogConfig, NewRecord, ReadError, StoreConfig};

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Open a log as a broker start would (recovering it: a torn tail is truncated), print what
    /// recovery found, then read and verify every stored record.
    Check(CheckArgs),
    /// Open a whole store (every shard's log, then its indexes checked against the index
    /// checkpoint and rebuilt from the log where they lost entries) as a broker start would,
    /// print what each shard's recovery did and how long the open took, and close it. Like a
    /// start, it repairs what it finds and writes a new index checkpoint.
    Open(OpenArgs),
    /// Append self-verifying records until killed (or `--count`), printing each acknowledged
    /// one as `ack <run> <seq> <pos> <len>`. After a crash, `quiver store check --probe` and
    /// the crash test verify that every acknowledged record survived intact.
    Probe(ProbeArgs),
}

#[derive(Args)]
pub struct LogArgs {
    /// Log directory.
    #[arg(long)]
    dir: PathBuf,
    /// TOML file with the log configuration (`engine/src/config.rs` documents every field).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the flush mode of the config file.
    #[arg(long)]
    flush: Option<Flush>,
    /// Overrides the I/O mode of the config file.
    #[arg(long)]
    io: Option<Io>,
    /// Overrides the segment size.
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Overrides the write buffer size.
    #[arg(long)]
    write_buffer_bytes: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Flush {
    Sync,
    Async,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Io {
    Auto,
    Direct,
    Buffered,
}

impl LogArgs {
    fn config(&self) -> anyhow::Result<LogConfig> {
        let mut config = match &self.config {
            Some(path) => LogConfig::load(path)?,
            None => LogConfig::default(),
        };
        if let Some(flush) = self.flush {
            config.flush = match flush {
                Flush::Sync => FlushMode::Sync,
                Flush::Async => FlushMode::Async,
            };
        }
        if let Some(io) = self.io {
            config.io = match io {
                Io::Auto => IoMode::Auto,
                Io::Direct => IoMode::Direct,
                Io::Buffered => IoMode::Buffered,
            };
        }
        if let Some(bytes) = self.segment_bytes {
            config.segment_bytes = bytes;
            config.max_record_bytes = config.max_record_bytes.min(bytes / 2);
            config.write_buffer_bytes = config
                .write_buffer_bytes
                .max(config.max_record_bytes + 4096);
        }
        if let Some(bytes) = self.write_buffer_bytes {
            config.write_buffer_bytes = bytes;
        }
        config.validate()?;
        Ok(config)
    }
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Also check every record is an intact probe record (for logs written by `store probe`).
    #[arg(long)]
    probe_max_body: Option<usize>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct OpenArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Shard threads (the store keeps every shard directory it finds).
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Above this share of the disk in use, retention deletes the oldest segments.
    #[arg(long, default_value_t = 0.75)]
    disk_max_used_ratio: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Identifies this run in the records' bodies (use a new one after each restart).
    #[arg(long, default_value_t = 0)]
    run: u64,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 8)]
    appenders: u64,
    /// Largest probe body; bodies vary between 16 bytes and this.
    #[arg(long, default_value_t = 2000)]
    max_body: usize,
    /// Stop after this many records (default: run until killed).
    #[arg(long)]
    count: Option<u64>,
    /// Append through a whole store (shards, offset and key indexes) at `--dir`, spreading
    /// records over this many queues; each acknowledgement then ends with its queue and queue
    /// offset. 0 (the default) appends to a bare commit log.
    #[arg(long, default_value_t = 0)]
    queues: u32,
    /// Shards of the store (with `--queues`).
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// First queue id (with `--queues`): a run given a base no earlier run used starts on
    /// brand-new queues, all its appenders racing for each one's first append.
    #[arg(long, default_value_t = 0)]
    queue_base: u32,
    /// Above this share of the disk in use, retention deletes the oldest segments (with
    /// `--queues`).
    #[arg(long, default_value_t = 0.75)]
    disk_max_used_ratio: f64,
}

pub fn run(cmd: StoreCommand) -> anyhow::Result<()> {
    let runtime = compio::runtime::Runtime::new().context("starting the io_uring runtime")?;
    match cmd {
        StoreCommand::Check(args) => runtime.block_on(check(args)),
        StoreCommand::Open(args) => runtime.block_on(open(args)),
        StoreCommand::Probe(args) => runtime.block_on(probe(args)),
    }
}

async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let config = args.log.config()?;
    let (log, report) = CommitLog::open(&args.log.dir, config)
        .await
        .with_context(|| format!("opening {}", args.log.dir.display()))?;
    if !args.json {
        println!("recovery: {report}");
    }
    let end = log.positions().readable;
    let mut pos = log.positions().start;
    let (mut records, mut bytes, mut probe_records) = (0u64, 0u64, 0u64);
    while pos < end {
        match log.read_record(pos).await {
            Ok(record) => {
                if let Some(max_body) = args.probe_max_body {
                    probe::verify(&record, max_body)
                        .map_err(|e| anyhow::anyhow!("record at {pos}: {e}"))?;
                    probe_records += 1;
                }
                records += 1;
                bytes += record.len() as u64;
                pos += record.len() as u64;
            }
            Err(ReadError::Padding { next, .. }) => pos = next,
            Err(e) => bail!("record at {pos} failed verification: {e}"),
        }
    }
    log.close().await?;
    if args.json {
        let summary = serde_json::json!({
            "start": report.start,
            "end": report.end,
            "scanned_from": report.scanned_from,
            "records_scanned": report.records_scanned,
            "tail": format!("{:?}", report.tail),
            "reason": report.reason.map(|r| r.to_string()),
            "generation": report.generation,
            "records": records,
            "bytes": bytes,
            "probe_records": probe_records,
        });
        println!("{summary}");
    } else {
        println!("verified {records} records ({bytes} bytes), all intact");
    }
    Ok(())
}

async fn open(args: OpenArgs) -> anyhow::Result<()> {
    let config = StoreConfig {
        shards: args.shards,
        pin_threads: false,
        disk_max_used_ratio: args.disk_max_used_ratio,
        log: args.log.config()?,
        ..StoreConfig::default()
    };
    let started = std::time::Instant::now();
    let store = Store::open(&args.log.dir, config)
        .with_context(|| format!("opening the store in {}", args.log.dir.display()))?;
    let open_secs = started.elapsed().as_secs_f64();
    let recoveries = store.recoveries().to_vec();
    let queues = store.queues().len();
    store.shutdown().await.context("closing the store")?;
    if args.json {
        let shards: Vec<_> = recoveries
            .iter()
            .map(|r| {
                serde_json::json!({
                    "shard": r.shard,
                    "log_start": r.log.start,
                    "log_end": r.log.end,
                    "log_records_scanned": r.log.records_scanned,
                    "index_checkpoint": r.index_checkpoint,
                    "redispatched": r.redispatched,
                    "rebuilt_queues": r.rebuilt_queues,
                    "rebuilt_all": r.rebuilt_all,
                })
            })
            .collect();
        let summary =
            serde_json::json!({ "open_secs": open_secs, "queues": queues, "shards": shards });
        println!("{summary}");
    } else {
        for r in &recoveries {
            println!(
                "shard {}: log {}..{} ({} records scanned), index checkpoint at {}, {} records re-indexed, {} queues rebuilt from the log start{}",
                r.shard,
                r.log.start,
                r.log.end,
                r.log.records_scanned,
                r.index_checkpoint,
                r.redispatched,
                r.rebuilt_queues,
                if r.rebuilt_all {
                    " (every index: no index checkpoint)"
                } else {
                    ""
                }
            );
        }
        println!("opened {queues} queues in {open_secs:.3} s");
    }
    Ok(())
}

async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    if args.queues > 0 {
        return probe_store(args).await;
    }
    let config = args.log.config()?;
    let (log, report) = CommitLog::open(&args.log.dir, config)
        .await
        .with_context(|| format!("opening {}", args.log.dir.display()))?;
    eprintln!("recovery: {report}");
    let stdout = Rc::new(std::cell::RefCell::new(std::io::stdout().lock()));
    let next = Rc::new(std::cell::Cell::new(0u64));
    let limit = args.count.unwrap_or(u64::MAX);
    let mut tasks = Vec::new();
    for queue in 0..args.appenders {
        let (log, stdout, next) = (log.clone(), Rc::clone(&stdout), Rc::clone(&next));
        let (run, max_body) = (args.run, args.max_body);
        tasks.push(compio::runtime::spawn(async move {
            let mut queue_offset = 0;
            loop {
                let seq = next.get();
                if seq >= limit {
                    return Ok::<(), anyhow::Error>(());
                }
                next.set(seq + 1);
                let body = probe::body(run, seq, max_body);
                let keys = probe::keys(run, seq);
                let placed = log
                    .append(&NewRecord {
                        topic: probe::PROBE_TOPIC,
                        queue_id: queue as u32,
                        queue_offset,
                        keys: keys.as_bytes(),
                        body: &body,
                        ..NewRecord::default()
                    })
                    .await?;
                queue_offset += 1;
                // One line per acknowledgement, flushed at once: a line printed is a promise.
                let mut out = stdout.borrow_mut();
                writeln!(out, "ack {run} {seq} {} {}", placed.pos, placed.len)?;
                out.flush()?;
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| anyhow::anyhow!("appender task: {e}"))??;
    }
    log.close().await?;
    Ok(())
}

/// The probe through a whole store: records spread over `--queues` queues.
async fn probe_store(args: ProbeArgs) -> anyhow::Result<()> {
    let config = StoreConfig {
        shards: args.shards,
        pin_threads: false,
        disk_max_used_ratio: args.disk_max_used_ratio,
        log: args.log.config()?,
        ..StoreConfig::default()
    };
    let store = Store::open(&args.log.dir, config)
        .with_context(|| format!("opening the store in {}", args.log.dir.display()))?;
    let stdout = Rc::new(std::cell::RefCell::new(std::io::stdout().lock()));
    let next = Rc::new(std::cell::Cell::new(0u64));
    let limit = args.count.unwrap_or(u64::MAX);
    let mut tasks = Vec::new();
    for _ in 0..args.appenders {
        let (store, stdout, next) = (store.clone(), Rc::clone(&stdout), Rc::clone(&next));
        let (run, max_body, queues, base) = (args.run, args.max_body, args.queues, args.queue_base);
        tasks.push(compio::runtime::spawn(async move {
            loop {
                let seq = next.get();
                if seq >= limit {
                    return Ok::<(), anyhow::Error>(());
                }
                next.set(seq + 1);
                let queue = base.saturating_add((seq % u64::from(queues)) as u32);
                let message = Message {
                    keys: probe::keys(run, seq).into(),
                    body: probe::body(run, seq, max_body).into(),
                    ..Message::default()
                };
                let placed = store
                    .append(probe::PROBE_TOPIC, queue, vec![message])
                    .await?;
                let at = placed[0];
                let mut out = stdout.borrow_mut();
                writeln!(
                    out,
                    "ack {run} {seq} {} {} {queue} {}",
                    at.pos.as_u64(),
                    at.size,
                    at.queue_offset
                )?;
                out.flush()?;
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| anyhow::anyhow!("appender task: {e}"))??;
    }
    store.shutdown().await?;
    Ok(())
}
