//! `nats-load`: the NATS JetStream side of `bench/scripts/peers.sh`. The same workload shape as
//! `quiver bench produce|consume` (1 KiB bodies, a count of messages, producer tasks sharing one
//! connection, each waiting for its acknowledgement), against a JetStream stream with file
//! storage, and JSON shaped like quiver bench's (`produce`/`consume` with `msgs_per_s`,
//! `mb_per_s`, `latency_us.p50…max`).
//!
//! `produce` (re)creates the stream, then `--tasks` tasks publish, each keeping up to
//! `--window` acknowledgements outstanding (1: wait for each ack, RocketMQ's synchronous send).
//! `consume` reads everything the stream holds through a pull consumer, `--pullers` tasks each
//! fetching batches of `--batch`; latency is the stream's store time to delivery.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use quiver_bench::engine::Percentiles;
use quiver_bench::load::SideReport;

/// Highest latency recorded, in microseconds (longer is clamped).
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Parser)]
#[command(about = "Load a NATS JetStream stream (file storage) like `quiver bench` loads a broker")]
struct Cli {
    /// The NATS server.
    #[arg(long, default_value = "127.0.0.1:4222")]
    server: String,
    /// The stream (its subject is `<stream>.msgs`).
    #[arg(long, default_value = "QUIVER_BENCH")]
    stream: String,
    /// Seconds after which a run stops even if not done.
    #[arg(long, default_value_t = 300.0)]
    limit_secs: f64,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Delete and recreate the stream (file storage), then publish `--count` messages.
    Produce {
        /// Messages to publish.
        #[arg(long, default_value_t = 200_000)]
        count: u64,
        /// Body bytes per message.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Publishing tasks (sharing one connection).
        #[arg(long, default_value_t = 32)]
        tasks: usize,
        /// Acknowledgements each task keeps outstanding (1: wait for each).
        #[arg(long, default_value_t = 1)]
        window: usize,
    },
    /// Read everything the stream holds through a new pull consumer.
    Consume {
        /// Messages per pull request.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Tasks pulling at once from the same consumer.
        #[arg(long, default_value_t = 1)]
        pullers: usize,
    },
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("latency histogram")
}

fn side(messages: u64, bytes: u64, seconds: f64, h: &Histogram<u64>, errors: u64) -> SideReport {
    let seconds = seconds.max(1e-9);
    SideReport {
        messages,
        bytes,
        seconds,
        msgs_per_s: messages as f64 / seconds,
        mb_per_s: bytes as f64 / seconds / 1e6,
        latency_us: Percentiles {
            p50: h.value_at_quantile(0.50) as f64,
            p90: h.value_at_quantile(0.90) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            p999: h.value_at_quantile(0.999) as f64,
            max: h.max() as f64,
        },
        errors,
    }
}

fn record(h: &mut Histogram<u64>, since: Instant) {
    let us = since.elapsed().as_micros() as u64;
    h.record(us.clamp(1, MAX_LATENCY_US)).ok();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = async_nats::connect(&cli.server)
        .await
        .with_context(|| format!("connecting to {}", cli.server))?;
    let js = jetstream::new(client.clone());
    let subject = format!("{}.msgs", cli.stream);
    let limit = Duration::from_secs_f64(cli.limit_secs);
    let line = match cli.command {
        Mode::Produce {
            count,
            size,
            tasks,
            window,
        } => {
            if tasks == 0 || window == 0 {
                bail!("--tasks and --window must be positive");
            }
            // A fresh stream per run, so runs do not see each other's messages.
            let _ = js.delete_stream(&cli.stream).await;
            js.create_stream(stream::Config {
                name: cli.stream.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("creating the stream")?;
            let report = produce(&js, &subject, count, size, tasks, window, limit).await?;
            if !cli.json {
                print_side("produce (publish→ack)", &report);
            }
            serde_json::json!({
                "system": "nats-jetstream", "stream": cli.stream, "size": size, "tasks": tasks,
                "window": window, "produce": report, "consume": null,
            })
        }
        Mode::Consume { batch, pullers } => {
            if batch == 0 || pullers == 0 {
                bail!("--batch and --pullers must be positive");
            }
            let report = consume(&js, &cli.stream, batch, pullers, limit).await?;
            if !cli.json {
                print_side("consume (store→delivery)", &report);
            }
            serde_json::json!({
                "system": "nats-jetstream", "stream": cli.stream, "batch": batch,
                "pullers": pullers, "produce": null, "consume": report,
            })
        }
    };
    if cli.json {
        println!("{line}");
    }
    client.flush().await.ok();
    Ok(())
}

async fn produce(
    js: &jetstream::Context,
    subject: &str,
    count: u64,
    size: usize,
    tasks: usize,
    window: usize,
    limit: Duration,
) -> anyhow::Result<SideReport> {
    let body = Bytes::from(vec![b'b'; size.max(1)]);
    let claimed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + limit;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (js, subject, body) = (js.clone(), subject.to_string(), body.clone());
        let (claimed, errors) = (Arc::clone(&claimed), Arc::clone(&errors));
        handles.push(tokio::spawn(async move {
            let mut h = histogram()?;
            let mut pending = VecDeque::with_capacity(window);
            loop {
                // Fill the window, then wait for the oldest acknowledgement.
                while pending.len() < window && Instant::now() < deadline {
                    if claimed.fetch_add(1, Ordering::Relaxed) >= count {
                        break;
                    }
                    let began = Instant::now();
                    match js.publish(subject.clone(), body.clone()).await {
                        Ok(ack) => pending.push_back((began, ack)),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            claimed.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
                let Some((began, ack)) = pending.pop_front() else {
                    break;
                };
                match ack.await {
                    Ok(_) => record(&mut h, began),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(h)
        }));
    }
    let mut merged = histogram()?;
    for handle in handles {
        let h = handle.await.context("a publishing task panicked")??;
        merged.add(&h).context("merging histograms")?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let done = merged.len();
    Ok(side(
        done,
        done * size as u64,
        seconds,
        &merged,
        errors.load(Ordering::Relaxed),
    ))
}

async fn consume(
    js: &jetstream::Context,
    stream_name: &str,
    batch: usize,
    pullers: usize,
    limit: Duration,
) -> anyhow::Result<SideReport> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .context("finding the stream")?;
    let expected = stream.info().await.context("stream info")?.state.messages;
    let name = format!(
        "bench-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.clone()),
            // No acknowledgements: the consumer's position moves as it delivers, as a RocketMQ
            // pull consumer's offset moves with its pulls.
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .context("creating the pull consumer")?;
    let received = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let last_us = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(expected == 0));
    let start = Instant::now();
    let deadline = start + limit;
    let mut handles = Vec::new();
    for _ in 0..pullers {
        let consumer = consumer.clone();
        let (received, bytes, last_us, done) = (
            Arc::clone(&received),
            Arc::clone(&bytes),
            Arc::clone(&last_us),
            Arc::clone(&done),
        );
        handles.push(tokio::spawn(async move {
            let mut h = histogram()?;
            let mut errors = 0u64;
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut messages = match consumer
                    .batch()
                    .max_messages(batch)
                    .expires(Duration::from_secs(1))
                    .messages()
                    .await
                {
                    Ok(m) => m,
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                while let Some(message) = messages.next().await {
                    let message = match message {
                        Ok(m) => m,
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    };
                    if let Ok(info) = message.info() {
                        let stored_ns = info.published.unix_timestamp_nanos();
                        let now_ns = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_nanos() as i128);
                        let lag_us = ((now_ns - stored_ns).max(0) / 1000) as u64;
                        h.record(lag_us.clamp(1, MAX_LATENCY_US)).ok();
                    }
                    bytes.fetch_add(message.payload.len() as u64, Ordering::Relaxed);
                    let total = received.fetch_add(1, Ordering::Relaxed) + 1;
                    last_us.fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if total >= expected {
                        done.store(true, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok((h, errors))
        }));
    }
    let mut merged = histogram()?;
    let mut errors = 0;
    for handle in handles {
        let (h, e) = handle.await.context("a pulling task panicked")??;
        merged.add(&h).context("merging histograms")?;
        errors += e;
    }
    stream.delete_consumer(&name).await.ok();
    Ok(side(
        received.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        last_us.load(Ordering::Relaxed) as f64 / 1e6,
        &merged,
        errors,
    ))
}

fn print_side(name: &str, s: &SideReport) {
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
