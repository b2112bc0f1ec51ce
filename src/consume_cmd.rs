//! `quiver consume`: read a topic from the command line — print each message, or just count
//! them — starting where the group left off, at the beginning, at the end, or at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use quiver_net::client::ClientConfig;
use quiver_net::client::consumer::{PullConsumer, PullStatus};
use quiver_net::message::DecodedMessage;
use quiver_net::protocol::bodies::MessageQueue;
use serde::Serialize;

/// Messages asked for per pull.
const PULL_BATCH: i32 = 32;

/// How long the broker holds a pull that finds nothing.
const LONG_POLL: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct ConsumeArgs {
    /// The topic.
    topic: String,
    /// Name servers, `host:port` separated by `;`.
    #[arg(long, env = "QUIVER_NAMESRV", default_value = "127.0.0.1:9876")]
    namesrv: String,
    /// The consumer group: without `--from`, reading starts at its committed offsets, and
    /// what is read is committed as it goes.
    #[arg(long, default_value = "quiver-cli-consumer")]
    group: String,
    /// Where to start: `earliest`, `latest`, `committed` (the group's offsets, the default),
    /// or a time (RFC 3339 or epoch milliseconds).
    #[arg(long, default_value = "committed")]
    from: String,
    /// Tag expression: `*` or tags joined by `||`.
    #[arg(long, default_value = "*")]
    tags: String,
    /// Stop after this many messages (default: run until Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
    /// Stop once every queue has been read to its end and nothing came for this many
    /// milliseconds.
    #[arg(long)]
    idle_exit_ms: Option<u64>,
    /// Count only; print a summary at the end.
    #[arg(long)]
    quiet: bool,
    /// One JSON object per message.
    #[arg(long)]
    json: bool,
}

/// What is printed of a message.
#[derive(Serialize)]
struct Printed<'a> {
    queue_id: i32,
    queue_offset: i64,
    msg_id: String,
    offset_msg_id: String,
    store_timestamp: i64,
    tags: Option<&'a str>,
    keys: Vec<&'a str>,
    properties: BTreeMap<&'a str, &'a str>,
    body: String,
}

fn print(message: &DecodedMessage, json: bool) {
    let body = String::from_utf8_lossy(&message.body).into_owned();
    if json {
        let printed = Printed {
            queue_id: message.queue_id,
            queue_offset: message.queue_offset,
            msg_id: message.msg_id(),
            offset_msg_id: message.offset_msg_id(),
            store_timestamp: message.store_timestamp,
            tags: message.tags(),
            keys: message.keys(),
            properties: message
                .properties
                .0
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            body,
        };
        if let Ok(line) = serde_json::to_string(&printed) {
            println!("{line}");
        }
    } else {
        println!(
            "queue {} offset {} id {} tags {} | {body}",
            message.queue_id,
            message.queue_offset,
            message.msg_id(),
            message.tags().unwrap_or("-"),
        );
    }
}

pub fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let start_at = match args.from.as_str() {
        "committed" | "earliest" | "latest" => None,
        time => Some(crate::admin_cmd::time::parse_time(time).map_err(anyhow::Error::msg)?),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(consume(args, start_at))
}

async fn consume(args: ConsumeArgs, start_at: Option<i64>) -> anyhow::Result<()> {
    let consumer = Arc::new(
        PullConsumer::start(&args.group, ClientConfig::new(&args.namesrv))
            .context("starting the consumer")?,
    );
    let queues = consumer
        .queues(&args.topic)
        .await
        .with_context(|| format!("reading the route of {}: does the topic exist?", args.topic))?;
    if queues.is_empty() {
        bail!("topic {} has no readable queues", args.topic);
    }
    let commit = args.from == "committed";
    let progress = if args.quiet {
        let bar = match args.count {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos} messages {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let total = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let args = Arc::new(args);
    let begun = Instant::now();
    let mut tasks = Vec::new();
    for queue in queues {
        let offset = match (args.from.as_str(), start_at) {
            (_, Some(time)) => consumer.offset_at(&queue, time).await?,
            ("earliest", _) => consumer.min_offset(&queue).await?,
            ("latest", _) => consumer.max_offset(&queue).await?,
            _ => consumer.committed_offset(&queue).await?.unwrap_or(0),
        };
        let (consumer, args, total, progress, done_tx, done_rx) = (
            Arc::clone(&consumer),
            Arc::clone(&args),
            Arc::clone(&total),
            progress.clone(),
            done_tx.clone(),
            done_rx.clone(),
        );
        tasks.push(tokio::spawn(read_queue(
            consumer, queue, offset, commit, args, total, progress, done_tx, done_rx,
        )));
    }
    drop(done_tx);
    let interrupted = tokio::signal::ctrl_c();
    let all_done = async {
        for task in tasks {
            match task.await {
                Ok(result) => result?,
                Err(e) => bail!("a reading task failed: {e}"),
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        result = all_done => result?,
        _ = interrupted => {}
        _ = done_rx.wait_for(|done| *done) => {}
    }
    progress.finish_and_clear();
    let count = total.load(Ordering::Relaxed);
    let elapsed = begun.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "consumed {count} messages in {elapsed:.2} s ({:.0} msg/s)",
        count as f64 / elapsed
    );
    consumer.shutdown();
    Ok(())
}

/// Reads one queue until told to stop, the count is reached, or it stays idle.
#[allow(clippy::too_many_arguments)]
async fn read_queue(
    consumer: Arc<PullConsumer>,
    queue: MessageQueue,
    mut offset: i64,
    commit: bool,
    args: Arc<ConsumeArgs>,
    total: Arc<AtomicU64>,
    progress: ProgressBar,
    done: tokio::sync::watch::Sender<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut idle_since = Instant::now();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let wait = args
            .idle_exit_ms
            .map_or(LONG_POLL, |ms| Duration::from_millis(ms).min(LONG_POLL));
        let pulled = consumer
            .pull_blocking(&queue, offset, PULL_BATCH, &args.tags, wait)
            .await
            .with_context(|| format!("pulling queue {} of {}", queue.queue_id, queue.topic))?;
        if pulled.status == PullStatus::Found && !pulled.messages.is_empty() {
            idle_since = Instant::now();
        }
        for message in &pulled.messages {
            let n = total.fetch_add(1, Ordering::Relaxed) + 1;
            if args.count.is_some_and(|c| n > c) {
                let _ = done.send(true);
                return Ok(());
            }
            if !args.quiet {
                progress.suspend(|| print(message, args.json));
            }
            progress.inc(1);
            if args.count == Some(n) {
                offset = message.queue_offset + 1;
                if commit {
                    consumer.commit_offset(&queue, offset).await?;
                }
                let _ = done.send(true);
                return Ok(());
            }
        }
        offset = pulled.next_begin_offset;
        if commit && !pulled.messages.is_empty() {
            consumer.commit_offset(&queue, offset).await?;
        }
        if let Some(ms) = args.idle_exit_ms
            && pulled.messages.is_empty()
            && idle_since.elapsed() >= Duration::from_millis(ms)
        {
            return Ok(());
        }
    }
}
