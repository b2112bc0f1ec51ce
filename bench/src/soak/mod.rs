//! The fault-injecting soak behind `quiver soak`: producers send continuously, a group of
//! consumer processes consumes, and meanwhile the broker is killed with SIGKILL and restarted,
//! consumers are killed and replaced, and the name server is killed and restarted, at random
//! intervals. Every few seconds, and right after each broker restart, a new topic is created
//! and many senders send to its brand-new queues at once (what lost messages when queue
//! creation raced). At the end the store is read back by offset, every new topic too, the
//! consumers drain, and [`verify`] judges
//! what every party recorded: nothing acknowledged lost (sync flush) or at most the documented
//! bound per crash (async flush), nothing delivered that was not sent, bodies intact, store
//! order kept, duplicates only around faults.
//!
//! Everything runs as real processes of the `quiver` binary on loopback; only the producers
//! and the final read-back run inside the soak's own process.

pub mod body;
pub mod consumer;
pub mod procs;
pub mod verify;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quiver_net::admin::{Admin, BrokerSelector, TopicSpec};
use quiver_net::client::consumer::{PullConsumer, PullStatus};
use quiver_net::client::message::{Message, SendStatus};
use quiver_net::client::producer::{Producer, ProducerConfig};
use quiver_net::client::{ClientConfig, MqError};
use serde::Serialize;

use self::procs::{Proc, Spec};
use self::verify::{Ack, Delivery, Fault, FaultKind, Rules, SendRecord, StoreKey, Stored, Verdict};

/// The soak's topic.
pub const TOPIC: &str = "soak";

/// The soak's consumer group.
pub const GROUP: &str = "soak-consumers";

/// Queues of each topic made new during the run.
pub const NEW_TOPIC_QUEUES: i32 = 8;

/// Most concurrent senders on a new topic (their ids must stay short).
pub const NEW_TOPIC_SENDERS_MAX: u32 = 999;

/// The name of the `n`th topic made new during the run (from 1).
pub fn new_topic_name(n: u32) -> String {
    format!("soak-new-{n}")
}

/// Pause before a failed send is tried again.
const SEND_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How long after a fault redeliveries are expected: the broker notices a dead consumer at
/// once, but a killed orderly consumer's queue locks lapse only after the broker's
/// `lock_ttl_ms` (10 s here), a periodic rebalance comes every 20 s, and the backlog since
/// the last offset commit (5 s) takes a moment to redeliver.
pub const REDELIVERY_WINDOW_MS: i64 = 45_000;

/// Bytes of a stored record besides its body, at least: the engine's record header and the
/// topic name. A lost message counts at least this against the async crash bound.
pub const RECORD_OVERHEAD_BYTES: u64 = (quiver_engine::record::HEADER_BYTES + TOPIC.len()) as u64;

/// Largest record the soak writes, bytes: its largest body plus a generous allowance for the
/// header, topic, keys and properties. The async crash bound allows one record per shard
/// beyond the write buffer (a write can end inside a record).
pub const MAX_SOAK_RECORD_BYTES: u64 = body::MAX_BODY_BYTES as u64 + 1024;

/// The broker's write buffer in the soak (its default, 16 MiB).
pub const WRITE_BUFFER_BYTES: u64 = 16 << 20;

/// Shard threads of the soak's broker (the bound is per shard).
pub const SHARDS: usize = 2;

/// Messages per pull when the store is read back.
const READ_BACK_BATCH: i32 = 32;

/// What went wrong running the soak (not a verdict: those are in [`SoakReport`]).
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    /// A process, file or setting could not be set up.
    #[error("{0}")]
    Setup(String),
    /// File or process I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The client library.
    #[error(transparent)]
    Client(#[from] MqError),
}

/// Flush mode of the broker under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flush {
    /// Acknowledged once durable: nothing acknowledged may be lost.
    Sync,
    /// Acknowledged once in memory: a crash may lose a bounded suffix.
    Async,
}

impl Flush {
    fn as_str(self) -> &'static str {
        match self {
            Flush::Sync => "sync",
            Flush::Async => "async",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The `quiver` binary (the soak starts it as name server, broker and consumers).
    pub quiver: PathBuf,
    /// Working directory: the broker's data, the processes' logs, the consumers' records.
    pub dir: PathBuf,
    /// How long producers send and faults are injected.
    pub duration: Duration,
    /// The broker's flush mode.
    pub flush: Flush,
    /// Producer tasks, each sending and waiting for the answer.
    pub producers: u32,
    /// Messages per second over all producers (0: as fast as they can).
    pub rate: u32,
    /// Consumer processes in the group.
    pub consumers: u32,
    /// Queues of the topic.
    pub queues: i32,
    /// Orderly consumers (per-queue order is then checked) or concurrent ones.
    pub orderly: bool,
    /// Shortest and longest pause between two faults.
    pub fault_interval: (Duration, Duration),
    /// How often a new topic is made and sent to by many senders at once (and after every
    /// broker restart); zero: never.
    pub new_topic_interval: Duration,
    /// New topics made at once each time.
    pub new_topics_at_once: u32,
    /// Concurrent senders on each new topic (at most [`NEW_TOPIC_SENDERS_MAX`]).
    pub new_topic_senders: u32,
    /// Messages each of them sends.
    pub new_topic_messages: u32,
    /// How long the consumers get to catch up after the producers stop.
    pub drain_timeout: Duration,
    /// Seed of the fault schedule (0: from the clock).
    pub seed: u64,
    /// Print a line per fault on standard error.
    pub progress: bool,
}

/// What a run did and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The broker's flush mode.
    pub flush: Flush,
    /// Seconds of sending and faults.
    pub duration_secs: f64,
    /// Seed of the fault schedule.
    pub seed: u64,
    /// SIGKILLs of the broker.
    pub broker_kills: u32,
    /// SIGKILLs of consumers.
    pub consumer_kills: u32,
    /// SIGKILLs and restarts of the name server.
    pub namesrv_restarts: u32,
    /// Topics made new during the run, each read back by offset.
    pub new_topics: u32,
    /// Whether the consumers caught up with everything stored before the drain timeout.
    pub drained: bool,
    /// Async: what one crash may lose, bytes.
    pub crash_loss_bound_bytes: u64,
    /// The figures and every rule broken.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// No rule broken.
    pub passed: bool,
    /// Every fault, in order.
    pub faults: Vec<Fault>,
}

/// Milliseconds since the epoch: what every party's records are stamped with.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A small deterministic generator for the fault schedule (xorshift64*).
struct Schedule(u64);

impl Schedule {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn between(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
    }
}

/// The processes under test.
struct Cluster {
    namesrv_spec: Spec,
    namesrv: Proc,
    broker_spec: Spec,
    broker: Proc,
    /// Per consumer slot: the running process and its session number.
    consumers: Vec<(Proc, u32)>,
    /// Every consumer session's delivery file, by session number.
    sessions: Vec<PathBuf>,
    config: SoakConfig,
    namesrv_addr: String,
    faults: Vec<Fault>,
}

impl Cluster {
    fn start(config: &SoakConfig) -> Result<Cluster, SoakError> {
        std::fs::create_dir_all(&config.dir)?;
        let namesrv_port = procs::free_port()?;
        let broker_port = procs::free_port()?;
        let namesrv_addr = format!("127.0.0.1:{namesrv_port}");
        let namesrv_spec = Spec {
            name: "name server".into(),
            program: config.quiver.clone(),
            args: vec!["namesrv".into(), "--listen".into(), namesrv_addr.clone()],
            log: config.dir.join("namesrv.log"),
        };
        let broker_config = procs::write_broker_config(
            &config.dir,
            broker_port,
            &namesrv_addr,
            config.flush.as_str(),
            SHARDS,
            WRITE_BUFFER_BYTES,
        )?;
        let broker_spec = Spec {
            name: "broker".into(),
            program: config.quiver.clone(),
            args: vec![
                "broker".into(),
                "--config".into(),
                broker_config.display().to_string(),
                "--data-dir".into(),
                config.dir.join("data").display().to_string(),
            ],
            log: config.dir.join("broker.log"),
        };
        let namesrv = namesrv_spec.start()?;
        let broker = broker_spec.start()?;
        Ok(Cluster {
            namesrv_spec,
            namesrv,
            broker_spec,
            broker,
            consumers: Vec::new(),
            sessions: Vec::new(),
            config: config.clone(),
            namesrv_addr,
            faults: Vec::new(),
        })
    }

    fn consumer_spec(&self, session: u32) -> (Spec, PathBuf) {
        let out = self.config.dir.join(format!("deliveries-{session}.log"));
        let mut args = vec![
            "soak-consumer".into(),
            "--namesrv".into(),
            self.namesrv_addr.clone(),
            "--group".into(),
            GROUP.into(),
            "--topic".into(),
            TOPIC.into(),
            "--out".into(),
            out.display().to_string(),
        ];
        if !self.config.orderly {
            args.push("--concurrently".into());
        }
        let spec = Spec {
            name: format!("consumer session {session}"),
            program: self.config.quiver.clone(),
            args,
            log: self.config.dir.join("consumers.log"),
        };
        (spec, out)
    }

    /// Starts a consumer process as a new session; returns it and its session number.
    fn start_consumer(&mut self) -> Result<(Proc, u32), SoakError> {
        let session = self.sessions.len() as u32;
        let (spec, out) = self.consumer_spec(session);
        self.sessions.push(out);
        Ok((spec.start()?, session))
    }

    fn record(&mut self, kind: FaultKind, start_ms: i64) {
        let fault = Fault {
            kind,
            start_ms,
            end_ms: now_ms(),
        };
        if self.config.progress {
            eprintln!(
                "soak: {kind:?} at +{:.1} s, back after {} ms",
                (start_ms - self.faults.first().map_or(start_ms, |f| f.start_ms)) as f64 / 1e3,
                fault.end_ms - start_ms
            );
        }
        self.faults.push(fault);
    }

    fn kill_broker(&mut self) -> Result<(), SoakError> {
        let start = now_ms();
        self.broker.kill();
        self.broker = self.broker_spec.start()?;
        self.record(FaultKind::BrokerKill, start);
        Ok(())
    }

    fn kill_consumer(&mut self, slot: usize) -> Result<(), SoakError> {
        let start = now_ms();
        self.consumers[slot].0.kill();
        self.consumers[slot] = self.start_consumer()?;
        self.record(FaultKind::ConsumerKill, start);
        Ok(())
    }

    fn restart_namesrv(&mut self) -> Result<(), SoakError> {
        let start = now_ms();
        self.namesrv.kill();
        self.namesrv = self.namesrv_spec.start()?;
        self.record(FaultKind::NamesrvRestart, start);
        Ok(())
    }

    /// Every delivery recorded so far, all sessions.
    fn deliveries(&self) -> Result<Vec<Delivery>, SoakError> {
        let mut out = Vec::new();
        for (session, path) in self.sessions.iter().enumerate() {
            out.extend(consumer::read_deliveries(path, session as u32)?);
        }
        Ok(out)
    }
}

/// Sends messages one after another until `stop`, each until it is acknowledged (or `stop`).
async fn produce(
    producer: Producer,
    task: u32,
    period: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> Vec<SendRecord> {
    let mut records = Vec::new();
    let mut next = tokio::time::Instant::now();
    for seq in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(period) = period {
            next += period;
            tokio::time::sleep_until(next).await;
        }
        let id = body::id(task, seq);
        let payload = bytes::Bytes::from(body::make(&id));
        let mut record = SendRecord {
            topic: 0,
            id: id.clone(),
            body_bytes: payload.len(),
            first_attempt_ms: now_ms(),
            failed_attempts: 0,
            acked: None,
        };
        send_until_acked(&producer, TOPIC, payload, &mut record, &stop).await;
        records.push(record);
    }
    records
}

/// Sends `payload` until it is acknowledged, fails for good (stored, not confirmed) or `stop`,
/// filling in `record`.
async fn send_until_acked(
    producer: &Producer,
    topic: &str,
    payload: bytes::Bytes,
    record: &mut SendRecord,
    stop: &AtomicBool,
) {
    loop {
        let message = Message::new(topic, payload.clone()).with_keys([record.id.as_str()]);
        match producer.send(message).await {
            Ok(sent) if sent.status == SendStatus::SendOk => {
                record.acked = Some(Ack {
                    at_ms: now_ms(),
                    queue: sent.queue.queue_id,
                    offset: sent.queue_offset,
                    pos: quiver_net::message::decode_offset_msg_id(&sent.offset_msg_id)
                        .map(|(_, pos)| pos),
                });
                return;
            }
            // Stored but not confirmed durable: neither acknowledged nor to be sent again.
            Ok(_) => return,
            Err(_) => {
                record.failed_attempts += 1;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                tokio::time::sleep(SEND_RETRY_PAUSE).await;
            }
        }
    }
}

/// The `n`th new topic: created, then `senders` concurrent senders each send `messages` to its
/// brand-new queues at once. `None` if it could not be created before `stop`.
async fn new_topic_burst(
    producer: Producer,
    admin: Arc<Admin>,
    n: u32,
    senders: u32,
    messages: u32,
    stop: Arc<AtomicBool>,
) -> Option<Vec<SendRecord>> {
    let name = new_topic_name(n);
    let spec = TopicSpec::new(&name, NEW_TOPIC_QUEUES);
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if admin
            .create_topic(&spec, &BrokerSelector::All)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(SEND_RETRY_PAUSE).await;
    }
    let tasks: Vec<_> = (0..senders)
        .map(|sender| {
            let (producer, name, stop) = (producer.clone(), name.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut records = Vec::new();
                for seq in 0..messages {
                    let id = body::new_topic_id(n, sender, seq);
                    let payload = bytes::Bytes::from(body::make(&id));
                    let mut record = SendRecord {
                        topic: n,
                        id,
                        body_bytes: payload.len(),
                        first_attempt_ms: now_ms(),
                        failed_attempts: 0,
                        acked: None,
                    };
                    send_until_acked(&producer, &name, payload, &mut record, &stop).await;
                    records.push(record);
                }
                records
            })
        })
        .collect();
    let mut records = Vec::new();
    for task in tasks {
        records.extend(task.await.unwrap_or_default());
    }
    Some(records)
}

/// Makes `config.new_topics_at_once` new topics every `config.new_topic_interval`, and at
/// once when `restarted` is notified (a broker restart), until `stop`; returns the numbers of
/// the topics made and their sends.
async fn new_topics(
    producer: Producer,
    admin: Arc<Admin>,
    config: SoakConfig,
    restarted: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
) -> (Vec<u32>, Vec<SendRecord>) {
    let (mut made, mut records) = (Vec::new(), Vec::new());
    let mut next = 1;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tokio::time::sleep(config.new_topic_interval) => {}
            _ = restarted.notified() => {}
        }
        let bursts: Vec<_> = (next..next + config.new_topics_at_once)
            .map(|n| {
                let burst = new_topic_burst(
                    producer.clone(),
                    Arc::clone(&admin),
                    n,
                    config.new_topic_senders,
                    config.new_topic_messages,
                    Arc::clone(&stop),
                );
                (n, tokio::spawn(burst))
            })
            .collect();
        next += config.new_topics_at_once;
        for (n, burst) in bursts {
            if let Ok(Some(sent)) = burst.await {
                made.push(n);
                records.extend(sent);
            }
        }
    }
    (made, records)
}

/// Creates the soak's topic, waiting for the broker to be known to the name server.
async fn create_topic(namesrv: &str, queues: i32) -> Result<(), SoakError> {
    let admin = Admin::new([namesrv]).map_err(|e| SoakError::Setup(e.to_string()))?;
    let spec = TopicSpec::new(TOPIC, queues);
    settled(|| admin.create_topic(&spec, &BrokerSelector::All))
        .await
        .map_err(|e| SoakError::Setup(format!("creating the topic: {e}")))?;
    Ok(())
}

/// Calls `op` until it succeeds or [`procs::READY_TIMEOUT`] passes: a process may have just
/// started (a broker not yet registered), or the last fault just happened (a name server
/// restarted a moment ago knows no route until the broker's next registration; a broker
/// restarted a moment ago may still be recovering). Gives the last error.
async fn settled<T, E, F, Fut>(mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + procs::READY_TIMEOUT;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Reads every queue of `topic` from its first offset to its last into `out`, as topic `index`.
async fn read_back(
    namesrv: &str,
    topic: &str,
    index: u32,
    out: &mut BTreeMap<StoreKey, Stored>,
) -> Result<(), SoakError> {
    let reader = PullConsumer::start("soak-verifier", ClientConfig::new(namesrv))?;
    let queues = settled(|| reader.queues(topic)).await?;
    for queue in &queues {
        let mut offset = settled(|| reader.min_offset(queue)).await?;
        let max = settled(|| reader.max_offset(queue)).await?;
        while offset < max {
            let found = settled(|| reader.pull(queue, offset, READ_BACK_BATCH, "*")).await?;
            if found.status != PullStatus::Found || found.messages.is_empty() {
                return Err(SoakError::Setup(format!(
                    "{topic} queue {} answered {:?} at offset {offset} below its max {max}",
                    queue.queue_id, found.status
                )));
            }
            for m in &found.messages {
                let (id, intact) = body::check(&m.body).unwrap_or_else(|| ("?".into(), false));
                let at = (index, queue.queue_id, m.queue_offset);
                out.insert(at, Stored { id, intact });
            }
            offset = found.next_begin_offset;
        }
    }
    reader.shutdown();
    Ok(())
}

/// Runs the soak and judges it.
pub fn run(config: SoakConfig) -> Result<SoakReport, SoakError> {
    if config.producers == 0 || config.consumers == 0 || config.queues <= 0 {
        return Err(SoakError::Setup(
            "producers, consumers and queues must be positive".into(),
        ));
    }
    if config.new_topic_senders > NEW_TOPIC_SENDERS_MAX {
        return Err(SoakError::Setup(format!(
            "at most {NEW_TOPIC_SENDERS_MAX} senders on a new topic"
        )));
    }
    let seed = if config.seed == 0 {
        now_ms() as u64 | 1
    } else {
        config.seed
    };
    let mut schedule = Schedule(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut cluster = Cluster::start(&config)?;
    let namesrv = cluster.namesrv_addr.clone();
    runtime.block_on(create_topic(&namesrv, config.queues))?;
    for _ in 0..config.consumers {
        let start = now_ms();
        let consumer = cluster.start_consumer()?;
        cluster.consumers.push(consumer);
        cluster.record(FaultKind::ConsumerStart, start);
    }

    let mut producer_config = ProducerConfig::new("soak-producers", ClientConfig::new(&namesrv));
    // Every try is the soak's own, so that it knows which messages were sent more than once.
    producer_config.retries = 0;
    let producer = runtime.block_on(Producer::start(producer_config))?;
    let stop = Arc::new(AtomicBool::new(false));
    let period = (config.rate > 0)
        .then(|| Duration::from_secs_f64(f64::from(config.producers) / f64::from(config.rate)));
    let tasks: Vec<_> = (0..config.producers)
        .map(|task| runtime.spawn(produce(producer.clone(), task, period, Arc::clone(&stop))))
        .collect();
    let restarted = Arc::new(tokio::sync::Notify::new());
    let new_topic_task = (!config.new_topic_interval.is_zero()).then(|| {
        let admin = Admin::new([namesrv.as_str()]).map_err(|e| SoakError::Setup(e.to_string()));
        admin.map(|admin| {
            runtime.spawn(new_topics(
                producer.clone(),
                Arc::new(admin),
                config.clone(),
                Arc::clone(&restarted),
                Arc::clone(&stop),
            ))
        })
    });
    let new_topic_task = new_topic_task.transpose()?;

    // Faults: the first three are one of each kind, in a random order; then any.
    let started = Instant::now();
    let mut kinds = [
        FaultKind::BrokerKill,
        FaultKind::ConsumerKill,
        FaultKind::NamesrvRestart,
    ];
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, schedule.below(i as u64 + 1) as usize);
    }
    let mut injected = 0usize;
    loop {
        let pause = schedule.between(config.fault_interval);
        if started.elapsed() + pause >= config.duration {
            std::thread::sleep(config.duration.saturating_sub(started.elapsed()));
            break;
        }
        std::thread::sleep(pause);
        let kind = kinds
            .get(injected)
            .copied()
            .unwrap_or(match schedule.below(5) {
                0 | 1 => FaultKind::BrokerKill,
                2 | 3 => FaultKind::ConsumerKill,
                _ => FaultKind::NamesrvRestart,
            });
        match kind {
            FaultKind::BrokerKill => {
                cluster.kill_broker()?;
                restarted.notify_one();
            }
            FaultKind::ConsumerKill => {
                let slot = schedule.below(u64::from(config.consumers)) as usize;
                cluster.kill_consumer(slot)?;
            }
            _ => cluster.restart_namesrv()?,
        }
        injected += 1;
    }
    let duration_secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut sends = Vec::new();
    for task in tasks {
        sends.extend(
            runtime
                .block_on(task)
                .map_err(|e| SoakError::Setup(format!("a producer task failed: {e}")))?,
        );
    }
    let (new_topics, new_topic_sends) = match new_topic_task {
        Some(task) => runtime
            .block_on(task)
            .map_err(|e| SoakError::Setup(format!("the new-topic task failed: {e}")))?,
        None => (Vec::new(), Vec::new()),
    };
    sends.extend(new_topic_sends);
    runtime.block_on(producer.shutdown());

    // What the store holds now is final: read it, then let the consumers catch up with it.
    let mut store = BTreeMap::new();
    runtime.block_on(read_back(&namesrv, TOPIC, 0, &mut store))?;
    for &n in &new_topics {
        runtime.block_on(read_back(&namesrv, &new_topic_name(n), n, &mut store))?;
    }
    // Caught up: every stored message delivered, or its offset delivered (async: holding a
    // message a crash lost, which the consumers moved past).
    let drain_until = Instant::now() + config.drain_timeout;
    let drained = loop {
        let deliveries = cluster.deliveries()?;
        let ids: HashSet<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
        let positions: HashSet<(i32, i64)> =
            deliveries.iter().map(|d| (d.queue, d.offset)).collect();
        let missing = store
            .iter()
            .filter(|&(&(topic, queue, offset), s)| {
                topic == 0 && !ids.contains(s.id.as_str()) && !positions.contains(&(queue, offset))
            })
            .count();
        if missing == 0 {
            break true;
        }
        if Instant::now() > drain_until {
            if config.progress {
                eprintln!("soak: {missing} stored messages still undelivered at the drain timeout");
            }
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for (consumer, _) in &mut cluster.consumers {
        consumer.stop()?;
    }
    cluster.broker.stop()?;
    cluster.namesrv.stop()?;

    let deliveries = cluster.deliveries()?;
    let crash_loss_bound_bytes = SHARDS as u64 * (WRITE_BUFFER_BYTES + MAX_SOAK_RECORD_BYTES);
    let rules = Rules {
        async_flush: config.flush == Flush::Async,
        crash_loss_bound_bytes,
        record_overhead_bytes: RECORD_OVERHEAD_BYTES,
        orderly: config.orderly,
        redelivery_window_ms: REDELIVERY_WINDOW_MS,
    };
    let verdict = verify::verify(&sends, &deliveries, &store, &cluster.faults, &rules);
    let count = |kind| cluster.faults.iter().filter(|f| f.kind == kind).count() as u32;
    Ok(SoakReport {
        flush: config.flush,
        duration_secs,
        seed,
        broker_kills: count(FaultKind::BrokerKill),
        consumer_kills: count(FaultKind::ConsumerKill),
        namesrv_restarts: count(FaultKind::NamesrvRestart),
        new_topics: new_topics.len() as u32,
        drained,
        crash_loss_bound_bytes,
        passed: verdict.failures.is_empty() && drained,
        verdict,
        faults: cluster.faults.clone(),
    })
}
