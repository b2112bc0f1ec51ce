//! `quiver produce`: send messages from the command line — given as arguments, as the lines of
//! a file or of stdin, or made up (`--count`, `--size`, `--rate`) to load a broker — and report
//! what was sent.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use quiver_net::client::ClientConfig;
use quiver_net::client::message::Message;
use quiver_net::client::producer::{Producer, ProducerConfig};

/// How each message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendMode {
    /// Wait for the broker's answer to each message.
    Sync,
    /// Don't wait for answers (fastest; failures go unseen).
    Oneway,
}

#[derive(Args)]
pub struct ProduceArgs {
    /// The topic (created on first send if the broker auto-creates topics).
    topic: String,
    /// Message bodies; with none, `--file`, `--count` or stdin lines are sent.
    messages: Vec<String>,
    /// Name servers, `host:port` separated by `;`.
    #[arg(long, env = "QUIVER_NAMESRV", default_value = "127.0.0.1:9876")]
    namesrv: String,
    /// Send each line of this file (`-` for stdin).
    #[arg(long, conflicts_with = "count")]
    file: Option<PathBuf>,
    /// Send this many made-up messages of `--size` bytes.
    #[arg(long)]
    count: Option<u64>,
    /// Body size of made-up messages, in bytes.
    #[arg(long, default_value_t = 1024, requires = "count")]
    size: usize,
    /// At most this many messages per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Messages sent at once (tasks sending in parallel).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Messages per request (a batch of one topic and queue).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// The tag to set on every message.
    #[arg(long)]
    tags: Option<String>,
    /// Keys to set on every message (space-separated in RocketMQ).
    #[arg(long)]
    keys: Vec<String>,
    /// Send every message with this key to the same queue (in order).
    #[arg(long)]
    order_key: Option<String>,
    /// Whether to wait for each answer.
    #[arg(long, value_enum, default_value_t = SendMode::Sync)]
    mode: SendMode,
    /// The producer group.
    #[arg(long, default_value = "quiver-cli-producer")]
    group: String,
    /// Print each send's result as a JSON line instead of a summary only.
    #[arg(long)]
    json: bool,
}

/// Where bodies come from.
enum Source {
    Given(Vec<String>),
    Lines(Box<dyn BufRead + Send>),
    MadeUp { count: u64, body: Bytes },
}

impl Source {
    fn next(&mut self, index: u64) -> anyhow::Result<Option<Bytes>> {
        Ok(match self {
            Source::Given(list) => list.get(index as usize).map(|s| Bytes::from(s.clone())),
            Source::Lines(reader) => {
                let mut line = String::new();
                if reader.read_line(&mut line).context("reading input")? == 0 {
                    None
                } else {
                    Some(Bytes::from(line.trim_end_matches(['\n', '\r']).to_string()))
                }
            }
            Source::MadeUp { count, body } => (index < *count).then(|| body.clone()),
        })
    }
}

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.batch == 0 {
        bail!("--concurrency and --batch must be at least 1");
    }
    let source = if !args.messages.is_empty() {
        Source::Given(args.messages.clone())
    } else if let Some(count) = args.count {
        Source::MadeUp {
            count,
            body: Bytes::from(vec![b'q'; args.size.max(1)]),
        }
    } else {
        match &args.file {
            Some(path) if path.as_os_str() != "-" => {
                Source::Lines(Box::new(std::io::BufReader::new(
                    std::fs::File::open(path)
                        .with_context(|| format!("opening {}", path.display()))?,
                )))
            }
            _ => Source::Lines(Box::new(std::io::BufReader::new(std::io::stdin()))),
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(produce(args, source))
}

async fn produce(args: ProduceArgs, source: Source) -> anyhow::Result<()> {
    let producer = Producer::start(ProducerConfig::new(
        &args.group,
        ClientConfig::new(&args.namesrv),
    ))
    .await
    .context("starting the producer")?;
    let progress = match args.count {
        Some(count) if !args.json => {
            let bar = ProgressBar::new(count);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        }
        _ => ProgressBar::hidden(),
    };
    let source = Arc::new(tokio::sync::Mutex::new((source, 0u64)));
    let (sent, failed, bytes) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let args = Arc::new(args);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (producer, source, args) = (producer.clone(), Arc::clone(&source), Arc::clone(&args));
        let (sent, failed, bytes, progress) = (
            Arc::clone(&sent),
            Arc::clone(&failed),
            Arc::clone(&bytes),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                // Take the next batch of bodies, pacing to --rate.
                let batch = {
                    let mut guard = source.lock().await;
                    let (source, index) = &mut *guard;
                    let mut batch = Vec::with_capacity(args.batch);
                    while batch.len() < args.batch {
                        match source.next(*index)? {
                            Some(body) => {
                                batch.push(body);
                                *index += 1;
                            }
                            None => break,
                        }
                    }
                    if args.rate > 0 {
                        let due = start + Duration::from_secs_f64(*index as f64 / args.rate as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    batch
                };
                if batch.is_empty() {
                    return anyhow::Ok(());
                }
                let size: u64 = batch.iter().map(|b| b.len() as u64).sum();
                let count = batch.len() as u64;
                let messages: Vec<Message> = batch
                    .into_iter()
                    .map(|body| {
                        let mut message = Message::new(args.topic.clone(), body);
                        if let Some(tags) = &args.tags {
                            message = message.with_tags(tags.clone());
                        }
                        if !args.keys.is_empty() {
                            message = message.with_keys(&args.keys);
                        }
                        message
                    })
                    .collect();
                let outcome = send(&producer, &args, messages).await;
                match outcome {
                    Ok(line) => {
                        sent.fetch_add(count, Ordering::Relaxed);
                        bytes.fetch_add(size, Ordering::Relaxed);
                        if args.json
                            && let Some(line) = line
                        {
                            println!("{line}");
                        }
                    }
                    Err(e) => {
                        failed.fetch_add(count, Ordering::Relaxed);
                        progress.suspend(|| eprintln!("send failed: {e:#}"));
                    }
                }
                progress.inc(count);
            }
        }));
    }
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("a sending task failed: {e}"));
            }
        }
    }
    progress.finish_and_clear();
    producer.shutdown().await;
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let (sent, failed, bytes) = (
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
    );
    eprintln!(
        "sent {sent} messages ({failed} failed) in {elapsed:.2} s: {:.0} msg/s, {:.2} MB/s",
        sent as f64 / elapsed,
        bytes as f64 / elapsed / 1e6
    );
    if let Some(e) = first_error {
        return Err(e);
    }
    if failed > 0 {
        bail!("{failed} messages were not sent");
    }
    Ok(())
}

/// Sends one batch (or one message); returns its result as a JSON line.
async fn send(
    producer: &Producer,
    args: &ProduceArgs,
    mut messages: Vec<Message>,
) -> anyhow::Result<Option<String>> {
    if messages.len() > 1 {
        let result = producer.send_batch(messages).await?;
        return Ok(Some(serde_json::to_string(&result)?));
    }
    let Some(message) = messages.pop() else {
        return Ok(None);
    };
    if args.mode == SendMode::Oneway {
        producer.send_oneway(message).await?;
        return Ok(None);
    }
    let result = match &args.order_key {
        Some(key) => producer.send_ordered(message, key).await?,
        None => producer.send(message).await?,
    };
    Ok(Some(serde_json::to_string(&result)?))
}
