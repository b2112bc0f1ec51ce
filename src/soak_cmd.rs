//! `quiver soak`: the fault-injecting soak test, by hand for as long as wanted (`--duration`);
//! `tests/soak.rs` runs a short one in CI. `quiver soak-consumer` is the consumer process the
//! soak starts and kills; it is not meant to be run by hand.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use quiver_bench::soak::{self, Flush, SoakConfig, SoakReport};

#[derive(Clone, Copy, ValueEnum)]
enum FlushArg {
    Sync,
    Async,
}

#[derive(Args)]
pub struct SoakArgs {
    /// How long producers send and faults are injected, in seconds.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// The broker's flush mode: `sync` must lose nothing acknowledged; `async` may lose at
    /// most the documented bound per crash.
    #[arg(long, value_enum, default_value = "sync")]
    flush: FlushArg,
    /// Working directory (broker data, logs, consumer records); default: a new temporary one,
    /// removed after a passing run.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Producer tasks, each waiting for every answer.
    #[arg(long, default_value_t = 8)]
    producers: u32,
    /// Messages per second over all producers (0: unlimited).
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Consumer processes in the group.
    #[arg(long, default_value_t = 3)]
    consumers: u32,
    /// Queues of the topic.
    #[arg(long, default_value_t = 8)]
    queues: i32,
    /// Concurrent consumers instead of orderly ones (per-queue order is then not checked).
    #[arg(long)]
    concurrently: bool,
    /// Shortest pause between two faults, in seconds.
    #[arg(long, default_value_t = 5.0)]
    fault_min_secs: f64,
    /// Longest pause between two faults, in seconds.
    #[arg(long, default_value_t = 20.0)]
    fault_max_secs: f64,
    /// Seconds between two new topics, each sent to by many senders at once as soon as it is
    /// made (one is also made after every broker restart); 0: none.
    #[arg(long, default_value_t = 2.0)]
    new_topic_secs: f64,
    /// New topics made at once each time.
    #[arg(long, default_value_t = 8)]
    new_topics_at_once: u32,
    /// Concurrent senders on each new topic.
    #[arg(long, default_value_t = 32)]
    new_topic_senders: u32,
    /// Messages each sender on a new topic sends.
    #[arg(long, default_value_t = 4)]
    new_topic_messages: u32,
    /// Seconds the consumers get to catch up after the producers stop.
    #[arg(long, default_value_t = 180)]
    drain_secs: u64,
    /// Seed of the fault schedule (0: from the clock); the report prints the one used.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SoakConsumerArgs {
    #[arg(long)]
    namesrv: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    concurrently: bool,
}

pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    let quiver = std::env::current_exe().context("finding the quiver binary")?;
    let temp = match &args.dir {
        Some(_) => None,
        None => Some(tempfile_dir()?),
    };
    let dir = args
        .dir
        .clone()
        .or_else(|| temp.clone())
        .context("no working directory")?;
    let config = SoakConfig {
        quiver,
        dir: dir.clone(),
        duration: Duration::from_secs(args.duration),
        flush: match args.flush {
            FlushArg::Sync => Flush::Sync,
            FlushArg::Async => Flush::Async,
        },
        producers: args.producers,
        rate: args.rate,
        consumers: args.consumers,
        queues: args.queues,
        orderly: !args.concurrently,
        fault_interval: (
            Duration::from_secs_f64(args.fault_min_secs.max(0.0)),
            Duration::from_secs_f64(args.fault_max_secs.max(args.fault_min_secs).max(0.0)),
        ),
        new_topic_interval: Duration::from_secs_f64(args.new_topic_secs.max(0.0)),
        new_topics_at_once: args.new_topics_at_once,
        new_topic_senders: args.new_topic_senders,
        new_topic_messages: args.new_topic_messages,
        drain_timeout: Duration::from_secs(args.drain_secs),
        seed: args.seed,
        progress: !args.json,
    };
    let report = soak::run(config).context("running the soak")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    if !report.passed {
        anyhow::bail!(
            "the soak failed; processes' logs and the consumers' records are in {}",
            dir.display()
        );
    }
    if let Some(temp) = temp {
        let _ = std::fs::remove_dir_all(temp);
    }
    Ok(())
}

pub fn run_consumer(args: SoakConsumerArgs) -> anyhow::Result<()> {
    soak::consumer::run(soak::consumer::ConsumerSettings {
        namesrv: args.namesrv,
        group: args.group,
        topic: args.topic,
        out: args.out,
        orderly: !args.concurrently,
    })
    .context("running the soak consumer")
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "quiver-soak-{}-{}",
        std::process::id(),
        soak::now_ms()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn print_report(r: &SoakReport) {
    let v = &r.verdict;
    println!(
        "soak, {:?} flush, {:.0} s, seed {}",
        r.flush, r.duration_secs, r.seed
    );
    println!(
        "  faults injected: {} broker kills, {} consumer kills, {} name server restarts",
        r.broker_kills, r.consumer_kills, r.namesrv_restarts
    );
    println!(
        "  new topics:             {} (sent to by many senders at once, read back by offset)",
        r.new_topics
    );
    println!("  messages sent:          {}", v.sent);
    println!(
        "  acknowledged:           {} ({} on the new topics)",
        v.acknowledged, v.acknowledged_on_new_topics
    );
    println!("  consumed:               {}", v.consumed);
    println!(
        "  lost:                   {} (lost from the store {}, never delivered {}, skipped at a reused offset {})",
        v.lost, v.lost_from_store, v.never_delivered, v.skipped_at_reused_offset
    );
    println!(
        "  duplicated deliveries:  {} (redelivered {}, stored twice {})",
        v.duplicated, v.redelivered, v.stored_twice
    );
    if r.flush == Flush::Async {
        println!(
            "  lost per crash:         {:?}, at most {} bytes (bound {} bytes)",
            v.crash_losses, v.max_crash_loss_bytes, r.crash_loss_bound_bytes
        );
        println!("  delivered, then lost:   {}", v.delivered_then_lost);
    }
    println!("  drained:                {}", r.drained);
    if v.failures.is_empty() && r.drained {
        println!("  PASSED");
    } else {
        for failure in &v.failures {
            println!("  FAILED: {failure}");
        }
    }
}
