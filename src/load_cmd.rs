//! `quiver bench produce|consume|e2e`: the load generator. Against any RocketMQ-protocol
//! broker (`--namesrv`), or against a `quiver standalone` it starts itself (`--broker
//! sync|async`, data under `--dir`), whose anonymous memory it then reports.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use quiver_bench::load::{self, LoadReport, SideReport, Workload};

#[derive(Args, Clone)]
pub struct LoadArgs {
    /// Name servers of the broker to load (`host:port;…`). Without it, `--broker` starts one.
    #[arg(long, env = "QUIVER_NAMESRV")]
    namesrv: Option<String>,
    /// Start a `quiver standalone` with this flush mode (`sync` or `async`) and load it.
    #[arg(long, default_value = "async")]
    broker: String,
    /// Data directory of the started broker (emptied first).
    #[arg(long, default_value = "./data/bench-broker")]
    dir: PathBuf,
    /// The topic (default: a fresh one per run).
    #[arg(long)]
    topic: Option<String>,
    /// Queues of the topic when the run creates it.
    #[arg(long, default_value_t = 8)]
    queues: i32,
    /// Topics the sends are spread over (`<topic>-0` … `<topic>-<n-1>`, created first), for
    /// many-queue runs; `consume` and `e2e` read the first.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Body bytes per message.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per send request (1: single sends).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Producer tasks, each waiting for its answers.
    #[arg(long, default_value_t = 32)]
    producers: usize,
    /// Sends each producer task keeps in flight.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Producer clients (connections) the tasks are spread over.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Consumer clients (each pulls a share of the queues).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Messages per second across all producers (0: unlimited).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Messages to send instead (the duration is then a limit).
    #[arg(long)]
    count: Option<u64>,
    /// `consume`: read what `--topic` already holds instead of filling it first.
    #[arg(long)]
    no_fill: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// A broker process this run started.
struct Spawned {
    child: Child,
    namesrv: String,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn spawn_broker(flush: &str, dir: &Path) -> anyhow::Result<Spawned> {
    if flush != "sync" && flush != "async" {
        bail!("--broker must be sync or async, not {flush:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[namesrv]\nlisten = \"127.0.0.1:0\"\n[broker]\nlisten = \"127.0.0.1:0\"\nvip_channel = false\nbroker_ip = \"127.0.0.1\"\n\
             [broker.store]\ndisk_max_used_ratio = 0.9\n[broker.store.log]\nflush = \"{flush}\"\nsegment_bytes = 268435456\n"
        ),
    )?;
    let exe = std::env::current_exe().context("finding the quiver binary")?;
    let mut child = Command::new(exe)
        .arg("standalone")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting quiver standalone")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut namesrv = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(addr) = line.strip_prefix("namesrv listening on ") {
            namesrv = Some(addr.to_string());
        } else if line == "ready" {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let namesrv = namesrv.context("the broker printed no name server address")?;
    Ok(Spawned { child, namesrv })
}

/// Descriptors a process holds, from /proc (Linux).
fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Anonymous resident memory of a process, from /proc (Linux), in MiB.
fn anon_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Which sides to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Produce,
    Consume,
    E2e,
}

pub fn run(kind: Kind, args: LoadArgs) -> anyhow::Result<()> {
    let spawned = match &args.namesrv {
        Some(_) => None,
        None => Some(spawn_broker(&args.broker, &args.dir)?),
    };
    let namesrv = args
        .namesrv
        .clone()
        .or_else(|| spawned.as_ref().map(|s| s.namesrv.clone()))
        .context("no name server")?;
    let workload = Workload {
        namesrv,
        topic: args.topic.clone().unwrap_or_else(|| {
            format!(
                "bench-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            )
        }),
        topics: args.topics,
        queues: args.queues,
        message_bytes: args.size,
        batch: args.batch,
        producers: args.producers,
        window: args.window,
        clients: args.clients,
        consumers: args.consumers,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration_secs),
        count: args.count,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        match kind {
            Kind::Produce => {
                load::prepare_topic(&workload).await?;
                anyhow::Ok(LoadReport {
                    produce: Some(load::produce(&workload).await?),
                    consume: None,
                })
            }
            Kind::Consume => {
                // Fill the topic first (unmeasured) unless told it is full, then read it back.
                let (start, expected) = if args.no_fill {
                    let start = load::queue_positions(&workload, false).await?;
                    let end = load::queue_positions(&workload, true).await?;
                    let held: i64 = end.iter().map(|(_, o)| o).sum::<i64>()
                        - start.iter().map(|(_, o)| o).sum::<i64>();
                    (start, held.max(0) as u64)
                } else {
                    load::prepare_topic(&workload).await?;
                    let start = load::queue_positions(&workload, true).await?;
                    (start, load::produce(&workload).await?.messages)
                };
                let deadline = Instant::now() + Duration::from_secs(120);
                let expected = Arc::new(AtomicU64::new(expected));
                anyhow::Ok(LoadReport {
                    produce: None,
                    consume: Some(load::consume(&workload, start, expected, deadline).await?),
                })
            }
            Kind::E2e => anyhow::Ok(load::e2e(&workload).await?),
        }
    })?;
    let rss = spawned.as_ref().and_then(|s| anon_rss_mib(s.child.id()));
    let fds = spawned.as_ref().and_then(|s| open_fds(s.child.id()));
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "topic": workload.topic, "size": args.size, "batch": args.batch,
                "producers": args.producers, "window": args.window, "broker_flush": spawned.as_ref().map(|_| args.broker.clone()),
                "topics": args.topics, "broker_anon_rss_mib": rss, "broker_open_fds": fds,
                "produce": report.produce, "consume": report.consume,
            })
        );
    } else {
        print_side("produce (send→ack)", report.produce.as_ref());
        print_side("consume (store→delivery)", report.consume.as_ref());
        if let Some(rss) = rss {
            println!("broker anonymous RSS after the run: {rss:.0} MiB");
        }
        if let Some(fds) = fds {
            println!("broker open descriptors after the run: {fds}");
        }
    }
    drop(runtime);
    drop(spawned);
    Ok(())
}

fn print_side(name: &str, side: Option<&SideReport>) {
    let Some(s) = side else {
        return;
    };
    println!(
        "{name:<26} {:>10} msgs {:>10.0} msg/s {:>8.1} MB/s  p50 {:>6} µs  p90 {:>6} µs  p99 {:>7} µs  p99.9 {:>7} µs  max {:>8} µs  errors {}",
        s.messages,
        s.msgs_per_s,
        s.mb_per_s,
        s.latency_us.p50,
        s.latency_us.p90,
        s.latency_us.p99,
        s.latency_us.p999,
        s.latency_us.max,
        s.errors
    );
}
