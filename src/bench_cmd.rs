//! `quiver bench engine`: append throughput and latency of the CommitLog on this machine, next
//! to `fio`'s raw sequential write bandwidth on the same disk measured in the same run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use quiver_bench::engine::{AppendLoad, AppendReport, run_append};
use quiver_bench::fio::{self, FioBaseline};
use quiver_engine::{FlushMode, IoMode, LogConfig};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Append load on one in-process CommitLog for each combination of flush mode, I/O mode
    /// and number of concurrent appenders; prints records/s, MB/s, latency and the ratio to
    /// the disk's raw bandwidth.
    Engine(EngineArgs),
    /// Load a broker with sends; report msg/s, MB/s and send-to-ack latency.
    Produce(crate::load_cmd::LoadArgs),
    /// Fill a topic, then read it back as fast as the consumers can; report msg/s and MB/s.
    Consume(crate::load_cmd::LoadArgs),
    /// Produce and consume at once; report both sides and store-to-delivery latency.
    E2e(crate::load_cmd::LoadArgs),
    /// Create topics one after another through the admin API and report the mean time of a
    /// creation at each step of the topic count.
    Topics(TopicsArgs),
}

#[derive(Args)]
pub struct TopicsArgs {
    /// Name servers (`host:port;…`).
    #[arg(long, env = "QUIVER_NAMESRV", default_value = "127.0.0.1:9876")]
    namesrv: String,
    /// Topics to create.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Report every this many.
    #[arg(long, default_value_t = 1_000)]
    every: usize,
    /// Queues of each.
    #[arg(long, default_value_t = 8)]
    queues: i32,
    /// Name prefix (`<prefix>-<n>`).
    #[arg(long, default_value = "bench-topic")]
    prefix: String,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

fn topics(args: TopicsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        quiver_bench::topics::create_topics(
            &args.namesrv,
            &args.prefix,
            args.count,
            args.queues,
            args.every,
            |step| {
                if args.json {
                    println!("{}", serde_json::to_string(step).unwrap_or_default());
                } else {
                    println!(
                        "{:>8} topics: {:.2} ms a creation",
                        step.topics, step.mean_ms
                    );
                }
            },
        )
        .await
    })?;
    Ok(())
}

#[derive(Args)]
pub struct EngineArgs {
    /// Directory on the disk to measure (created; emptied of benchmark files afterwards).
    #[arg(long, default_value = "./data/bench")]
    dir: PathBuf,
    /// Flush modes to run.
    #[arg(long, value_delimiter = ',', default_values = ["sync", "async"])]
    flush: Vec<String>,
    /// I/O modes to run.
    #[arg(long, value_delimiter = ',', default_values = ["direct", "buffered"])]
    io: Vec<String>,
    /// Concurrent appenders.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 256])]
    appenders: Vec<usize>,
    /// Records per append call.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize])]
    batch: Vec<usize>,
    /// Record size on disk, header included.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Seconds of warm-up per configuration (segments get recycled, buffers warm).
    #[arg(long, default_value_t = 3.0)]
    warmup_secs: f64,
    /// Seconds measured per configuration.
    #[arg(long, default_value_t = 5.0)]
    measure_secs: f64,
    /// Segment size in MiB (segments behind the tail are retired and recycled; small enough
    /// that the warm-up reaches recycling, so runs measure the steady state).
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Write buffer of the log in MiB (`write_buffer_bytes`).
    #[arg(long, default_value_t = 16)]
    write_buffer_mib: u64,
    /// Read cache of the log in MiB (`read_cache_bytes`).
    #[arg(long, default_value_t = 32)]
    read_cache_mib: u64,
    /// Size of the fio baseline file in MiB (0 skips fio).
    #[arg(long, default_value_t = 4096)]
    fio_mib: u64,
    /// Runs every configuration this many times, alternating between them, and reports the
    /// run with the median throughput of each (the machine is shared and noisy).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Engine(args) => engine(args),
        BenchCommand::Produce(args) => crate::load_cmd::run(crate::load_cmd::Kind::Produce, args),
        BenchCommand::Consume(args) => crate::load_cmd::run(crate::load_cmd::Kind::Consume, args),
        BenchCommand::E2e(args) => crate::load_cmd::run(crate::load_cmd::Kind::E2e, args),
        BenchCommand::Topics(args) => topics(args),
    }
}

fn parse_flush(s: &str) -> anyhow::Result<FlushMode> {
    match s {
        "sync" => Ok(FlushMode::Sync),
        "async" => Ok(FlushMode::Async),
        other => anyhow::bail!("unknown flush mode {other:?} (sync, async)"),
    }
}

fn parse_io(s: &str) -> anyhow::Result<IoMode> {
    match s {
        "direct" => Ok(IoMode::Direct),
        "buffered" => Ok(IoMode::Buffered),
        "auto" => Ok(IoMode::Auto),
        other => anyhow::bail!("unknown I/O mode {other:?} (direct, buffered, auto)"),
    }
}

fn engine(args: EngineArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let baseline = if args.fio_mib == 0 {
        None
    } else {
        match fio::measure(&args.dir, args.fio_mib) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("fio baseline skipped: {e}");
                None
            }
        }
    };
    if let Some(b) = &baseline {
        if args.json {
            println!("{}", serde_json::json!({ "fio": b }));
        } else {
            println!(
                "fio, {} MiB, 64 KiB writes x8 in flight, same disk: O_DIRECT new file {:.0} MB/s, \
                 O_DIRECT pre-written {:.0} MB/s, buffered+fsync {:.0} MB/s",
                args.fio_mib, b.direct_new_file_mb_s, b.direct_prewritten_mb_s, b.buffered_mb_s
            );
        }
    }
    if !args.json {
        println!(
            "{:<6} {:<9} {:>5} {:>5} {:>11} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9} {:>8} {:>8}",
            "flush",
            "io",
            "appnd",
            "batch",
            "records/s",
            "MB/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "KiB/write",
            "write µs",
            "flushes/s",
            "flush µs",
            "vs fio"
        );
    }
    let mut configs = Vec::new();
    for flush in &args.flush {
        for io in &args.io {
            for &appenders in &args.appenders {
                for &batch in &args.batch {
                    configs.push((parse_flush(flush)?, parse_io(io)?, appenders, batch));
                }
            }
        }
    }
    let mut runs: Vec<Vec<AppendReport>> = vec![Vec::new(); configs.len()];
    for round in 0..args.repeat.max(1) {
        for (i, &(flush, io, appenders, batch)) in configs.iter().enumerate() {
            let report = one_run(&args, flush, io, appenders, batch)?;
            if args.repeat > 1 && !args.json {
                eprintln!(
                    "round {} {flush:?} {io:?} {appenders}x{batch}: {:.0} MB/s",
                    round + 1,
                    report.mb_per_s()
                );
            }
            runs[i].push(report);
        }
    }
    for (&(flush, io, appenders, batch), mut reports) in configs.iter().zip(runs) {
        reports.sort_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()));
        let median = &reports[reports.len() / 2];
        print_row(
            &args,
            flush,
            io,
            appenders,
            batch,
            median,
            baseline.as_ref(),
        );
    }
    Ok(())
}

fn one_run(
    args: &EngineArgs,
    flush: FlushMode,
    io: IoMode,
    appenders: usize,
    batch: usize,
) -> anyhow::Result<AppendReport> {
    let dir = args
        .dir
        .join(format!("log-{flush:?}-{io:?}-{appenders}-{batch}").to_lowercase());
    let _ = std::fs::remove_dir_all(&dir);
    let load = AppendLoad {
        dir: dir.clone(),
        config: LogConfig {
            flush,
            io,
            segment_bytes: args.segment_mib << 20,
            write_buffer_bytes: args.write_buffer_mib << 20,
            read_cache_bytes: args.read_cache_mib << 20,
            ..LogConfig::default()
        },
        appenders,
        record_bytes: args.record_bytes,
        batch,
        warmup: Duration::from_secs_f64(args.warmup_secs),
        measure: Duration::from_secs_f64(args.measure_secs),
        keep_segments: 2,
    };
    let report = run_append(&load).with_context(|| format!("benchmark in {}", dir.display()));
    let _ = std::fs::remove_dir_all(&dir);
    report
}

fn print_row(
    args: &EngineArgs,
    flush: FlushMode,
    io: IoMode,
    appenders: usize,
    batch: usize,
    r: &AppendReport,
    baseline: Option<&FioBaseline>,
) {
    let ratio = baseline.map(|b| r.mb_per_s() / b.direct_prewritten_mb_s);
    if args.json {
        let line = serde_json::json!({
            "flush": format!("{flush:?}").to_lowercase(),
            "io": format!("{io:?}").to_lowercase(),
            "appenders": appenders,
            "batch": batch,
            "record_bytes": args.record_bytes,
            "records_per_s": r.records_per_s(),
            "mb_per_s": r.mb_per_s(),
            "ratio_to_fio_direct_prewritten": ratio,
            "report": r,
        });
        println!("{line}");
        return;
    }
    let kib_per_write = if r.writes == 0 {
        0.0
    } else {
        r.write_bytes as f64 / r.writes as f64 / 1024.0
    };
    println!(
        "{:<6} {:<9} {:>5} {:>5} {:>11.0} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>9.1} {:>8.0} {:>9.0} {:>8.0} {:>8}",
        format!("{flush:?}").to_lowercase(),
        format!("{io:?}").to_lowercase(),
        appenders,
        batch,
        r.records_per_s(),
        r.mb_per_s(),
        r.latency_us.p50,
        r.latency_us.p99,
        r.latency_us.p999,
        kib_per_write,
        r.write_us,
        r.flushes as f64 / r.seconds,
        r.flush_us,
        ratio.map_or("-".into(), |x| format!("{:.0}%", x * 100.0)),
    );
}
