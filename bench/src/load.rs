//! The load generator behind `quiver bench produce|consume|e2e`: drives any broker that
//! speaks RocketMQ's remoting protocol, found through its name server, with Quiver's client,
//! and reports throughput and latency percentiles.
//!
//! Producers are tasks each sending and waiting for the answer (`window` 1), or keeping up to
//! `window` sends in flight. Consumers pull the topic's queues with long polling from where
//! the run starts. Latency is send-to-acknowledgement for producers and store-to-delivery
//! (the broker's store timestamp to the consumer's receipt, millisecond resolution) for e2e.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use quiver_net::client::ClientConfig;
use quiver_net::client::consumer::{PullConsumer, PullStatus};
use quiver_net::client::message::Message;
use quiver_net::client::producer::{Producer, ProducerConfig};
use quiver_net::protocol::bodies::MessageQueue;
use serde::Serialize;

use crate::engine::Percentiles;

/// Highest latency recorded, in microseconds (longer is clamped).
const MAX_LATENCY_US: u64 = 60_000_000;

/// Messages per pull.
const PULL_BATCH: i32 = 32;

/// What to run.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Name servers (`host:port;…`).
    pub namesrv: String,
    /// The topic (with `topics` above 1, the prefix of `<topic>-<n>`).
    pub topic: String,
    /// Topics the sends are spread over, round robin.
    pub topics: usize,
    /// Queues of the topic if the run creates it.
    pub queues: i32,
    /// Body bytes per message.
    pub message_bytes: usize,
    /// Messages per send request (1: single sends; more: batches).
    pub batch: usize,
    /// Producer tasks.
    pub producers: usize,
    /// Sends each producer keeps in flight (1: wait for each answer).
    pub window: usize,
    /// Producer clients (each its own connections); tasks are spread over them.
    pub clients: usize,
    /// Consumer tasks (each pulls a share of the queues).
    pub consumers: usize,
    /// Messages per second across all producers (0: unlimited).
    pub rate: u64,
    /// How long to run.
    pub duration: Duration,
    /// Or how many messages to send (then `duration` is a limit).
    pub count: Option<u64>,
}

/// Throughput and latency of one side of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    /// Messages.
    pub messages: u64,
    /// Body bytes.
    pub bytes: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Messages per second.
    pub msgs_per_s: f64,
    /// Megabytes (10^6) of bodies per second.
    pub mb_per_s: f64,
    /// Latency percentiles, µs.
    pub latency_us: Percentiles,
    /// Requests that failed.
    pub errors: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The producers' side, if any ran.
    pub produce: Option<SideReport>,
    /// The consumers' side, if any ran.
    pub consume: Option<SideReport>,
}

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The client failed.
    #[error("{0}")]
    Client(#[from] quiver_net::client::MqError),
    /// The histogram could not be built.
    #[error("histogram: {0}")]
    Histogram(String),
    /// Something about the workload is not possible.
    #[error("{0}")]
    Invalid(String),
}

fn histogram() -> Result<Histogram<u64>, LoadError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| LoadError::Histogram(e.to_string()))
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: h.value_at_quantile(0.50) as f64,
        p90: h.value_at_quantile(0.90) as f64,
        p99: h.value_at_quantile(0.99) as f64,
        p999: h.value_at_quantile(0.999) as f64,
        max: h.max() as f64,
    }
}

fn side(messages: u64, bytes: u64, seconds: f64, h: &Histogram<u64>, errors: u64) -> SideReport {
    let seconds = seconds.max(1e-9);
    SideReport {
        messages,
        bytes,
        seconds,
        msgs_per_s: messages as f64 / seconds,
        mb_per_s: bytes as f64 / seconds / 1e6,
        latency_us: percentiles(h),
        errors,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Workload {
    /// The name of its `n`th topic.
    pub fn topic_name(&self, n: usize) -> String {
        if self.topics <= 1 {
            self.topic.clone()
        } else {
            format!("{}-{n}", self.topic)
        }
    }
}

/// Topics created at once by [`prepare_topic`].
const CREATE_CONCURRENCY: usize = 64;

/// Creates the topics with `queues` queues (by sending to each) and returns the first one's
/// queues.
pub async fn prepare_topic(workload: &Workload) -> Result<Vec<MessageQueue>, LoadError> {
    let mut config =
        ProducerConfig::new("quiver-bench-setup", ClientConfig::new(&workload.namesrv));
    config.default_topic_queue_nums = workload.queues;
    let producer = Producer::start(config).await?;
    // A send creates the topic (from the auto-creation template) if it does not exist.
    let names: Vec<String> = (0..workload.topics.max(1))
        .map(|n| workload.topic_name(n))
        .collect();
    for chunk in names.chunks(CREATE_CONCURRENCY) {
        let sends = chunk
            .iter()
            .map(|name| producer.send(Message::new(name.clone(), "quiver bench: topic created")));
        for sent in futures_util::future::join_all(sends).await {
            sent?;
        }
    }
    producer.shutdown().await;
    let consumer = PullConsumer::start("quiver-bench-setup", ClientConfig::new(&workload.namesrv))?;
    // After the first send the route exists; wait for the name server to have it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.queues(&workload.topic_name(0)).await {
            Ok(queues) if !queues.is_empty() => {
                consumer.shutdown();
                return Ok(queues);
            }
            _ if Instant::now() > deadline => {
                consumer.shutdown();
                return Err(LoadError::Invalid(format!(
                    "topic {} never got a route",
                    workload.topic
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Sends the workload's messages; returns the producers' report.
pub async fn produce(workload: &Workload) -> Result<SideReport, LoadError> {
    if workload.producers == 0
        || workload.window == 0
        || workload.batch == 0
        || workload.clients == 0
    {
        return Err(LoadError::Invalid(
            "producers, window, batch and clients must be positive".into(),
        ));
    }
    let mut clients = Vec::new();
    for i in 0..workload.clients {
        let mut config = ProducerConfig::new(
            format!("quiver-bench-{i}"),
            ClientConfig::new(&workload.namesrv),
        );
        config.default_topic_queue_nums = workload.queues;
        clients.push(Producer::start(config).await?);
    }
    // Learn the routes before the clock starts.
    for client in &clients {
        for n in 0..workload.topics.max(1) {
            client.publish_queues(&workload.topic_name(n)).await?;
        }
    }
    let body = bytes::Bytes::from(vec![b'b'; workload.message_bytes.max(1)]);
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + workload.duration;
    let mut tasks = Vec::new();
    let senders = workload.producers * workload.window;
    for i in 0..senders {
        let producer = clients[i % clients.len()].clone();
        let (sent, errors, stop, body) = (
            Arc::clone(&sent),
            Arc::clone(&errors),
            Arc::clone(&stop),
            body.clone(),
        );
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram()?;
            let batch = workload.batch as u64;
            loop {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let n = sent.fetch_add(batch, Ordering::Relaxed);
                if workload.count.is_some_and(|c| n >= c) {
                    break;
                }
                if workload.rate > 0 {
                    let due = start + Duration::from_secs_f64(n as f64 / workload.rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let began = Instant::now();
                let topics = workload.topics.max(1);
                let round = (n / batch) as usize;
                let topic = workload.topic_name(round % topics);
                let result = if batch == 1 && topics > 1 {
                    // Each topic's sends go round its queues (the client's own round robin is
                    // shared by every topic, and would leave some queues of each unused).
                    let turn = round / topics;
                    producer
                        .send_with_selector(Message::new(topic, body.clone()), move |_, _| turn)
                        .await
                        .map(|_| ())
                } else if batch == 1 {
                    producer
                        .send(Message::new(topic, body.clone()))
                        .await
                        .map(|_| ())
                } else {
                    let messages = (0..batch)
                        .map(|_| Message::new(topic.clone(), body.clone()))
                        .collect();
                    producer.send_batch(messages).await.map(|_| ())
                };
                match result {
                    Ok(()) => {
                        let us = began.elapsed().as_micros() as u64;
                        h.record(us.clamp(1, MAX_LATENCY_US)).ok();
                    }
                    Err(_) => {
                        errors.fetch_add(batch, Ordering::Relaxed);
                        sent.fetch_sub(batch, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, LoadError>(h)
        }));
    }
    let mut merged = histogram()?;
    for task in tasks {
        match task.await {
            Ok(Ok(h)) => merged
                .add(&h)
                .map_err(|e| LoadError::Histogram(e.to_string()))?,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(LoadError::Invalid(format!("a producer task failed: {e}"))),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    for client in &clients {
        client.shutdown().await;
    }
    let done = merged.len() * workload.batch as u64;
    Ok(side(
        done,
        done * workload.message_bytes as u64,
        seconds,
        &merged,
        errors.load(Ordering::Relaxed),
    ))
}

/// Reads `queues` from the given offsets until `expected` messages (or the deadline).
pub async fn consume(
    workload: &Workload,
    queues: Vec<(MessageQueue, i64)>,
    expected: Arc<AtomicU64>,
    deadline: Instant,
) -> Result<SideReport, LoadError> {
    let consumers = workload.consumers.max(1);
    let received = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    // Microseconds from the start to the last message received.
    let last_us = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..consumers {
        let mine: Vec<(MessageQueue, i64)> = queues
            .iter()
            .enumerate()
            .filter(|(i, _)| i % consumers == c)
            .map(|(_, q)| q.clone())
            .collect();
        let consumer = Arc::new(PullConsumer::start(
            "quiver-bench-consumer",
            ClientConfig::new(&workload.namesrv),
        )?);
        for (queue, mut offset) in mine {
            let (consumer, received, bytes, stop, expected, last_us) = (
                Arc::clone(&consumer),
                Arc::clone(&received),
                Arc::clone(&bytes),
                Arc::clone(&stop),
                Arc::clone(&expected),
                Arc::clone(&last_us),
            );
            tasks.push(tokio::spawn(async move {
                let mut h = histogram()?;
                let mut errors = 0u64;
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && received.load(Ordering::Relaxed) < expected.load(Ordering::Relaxed)
                {
                    let wait = deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(1));
                    match consumer
                        .pull_blocking(&queue, offset, PULL_BATCH, "*", wait)
                        .await
                    {
                        Ok(pulled) => {
                            if pulled.status == PullStatus::Found {
                                let now = now_ms();
                                for m in &pulled.messages {
                                    let lag_us = (now - m.store_timestamp).max(0) as u64 * 1000;
                                    h.record(lag_us.clamp(1, MAX_LATENCY_US)).ok();
                                    bytes.fetch_add(m.body.len() as u64, Ordering::Relaxed);
                                }
                                let total = received
                                    .fetch_add(pulled.messages.len() as u64, Ordering::Relaxed)
                                    + pulled.messages.len() as u64;
                                if !pulled.messages.is_empty() {
                                    last_us.fetch_max(
                                        start.elapsed().as_micros() as u64,
                                        Ordering::Relaxed,
                                    );
                                }
                                if total >= expected.load(Ordering::Relaxed) {
                                    stop.store(true, Ordering::Relaxed);
                                }
                            }
                            offset = pulled.next_begin_offset;
                        }
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                Ok::<_, LoadError>((h, errors))
            }));
        }
    }
    let mut merged = histogram()?;
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok(Ok((h, e))) => {
                merged
                    .add(&h)
                    .map_err(|e| LoadError::Histogram(e.to_string()))?;
                errors += e;
            }
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(LoadError::Invalid(format!("a consumer task failed: {e}"))),
        }
    }
    let seconds = last_us.load(Ordering::Relaxed) as f64 / 1e6;
    Ok(side(
        received.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        seconds,
        &merged,
        errors,
    ))
}

/// The queues of the topic with their current end offsets (where an e2e run starts) or
/// start offsets (where a consume run starts).
pub async fn queue_positions(
    workload: &Workload,
    from_end: bool,
) -> Result<Vec<(MessageQueue, i64)>, LoadError> {
    let consumer = PullConsumer::start(
        "quiver-bench-consumer",
        ClientConfig::new(&workload.namesrv),
    )?;
    let mut out = Vec::new();
    for queue in consumer.queues(&workload.topic_name(0)).await? {
        let offset = if from_end {
            consumer.max_offset(&queue).await?
        } else {
            consumer.min_offset(&queue).await?
        };
        out.push((queue, offset));
    }
    consumer.shutdown();
    Ok(out)
}

/// Produces and consumes at once: consumers start at the current end of every queue and read
/// what the producers send.
pub async fn e2e(workload: &Workload) -> Result<LoadReport, LoadError> {
    prepare_topic(workload).await?;
    let positions = queue_positions(workload, true).await?;
    let deadline = Instant::now() + workload.duration + Duration::from_secs(10);
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let consuming = {
        let (workload, expected) = (workload.clone(), Arc::clone(&expected));
        tokio::spawn(async move { consume(&workload, positions, expected, deadline).await })
    };
    let produced = produce(workload).await?;
    expected.store(produced.messages, Ordering::Relaxed);
    // Stop the consumers once they have what was sent (or at the deadline).
    let consumed = tokio::time::timeout(Duration::from_secs(12) + workload.duration, consuming)
        .await
        .map_err(|_| LoadError::Invalid("consumers did not finish".into()))?
        .map_err(|e| LoadError::Invalid(e.to_string()))??;
    Ok(LoadReport {
        produce: Some(produced),
        consume: Some(consumed),
    })
}
