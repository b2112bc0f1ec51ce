//! The soak's consumer process (`quiver soak-consumer`): a push consumer of the soak's group
//! that writes a line per delivered message to its own file before the handler returns, so
//! whatever was acknowledged to the broker was recorded, even when the process is killed.
//!
//! Line format: `<ms since epoch> <queue> <offset> <id> <1 intact | 0 damaged>`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use quiver_net::client::ClientConfig;
use quiver_net::client::consumer::{ConsumeResult, PushConsumer, PushConsumerConfig};

use super::verify::Delivery;
use super::{SoakError, now_ms};

/// What a consumer process is told.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Name servers.
    pub namesrv: String,
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// The file deliveries are appended to.
    pub out: PathBuf,
    /// Orderly (one batch per queue at a time, queue locks) or concurrent consumption.
    pub orderly: bool,
}

/// Messages per handler call.
const CONSUME_BATCH_MAX: usize = 32;

/// Runs a consumer until SIGTERM or SIGINT, then shuts it down cleanly (offsets committed).
/// Prints `ready` once it has started.
pub fn run(settings: ConsumerSettings) -> Result<(), SoakError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(consume(settings))
}

async fn consume(settings: ConsumerSettings) -> Result<(), SoakError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&settings.out)?;
    let out = Arc::new(Mutex::new(out));
    let mut config = PushConsumerConfig::new(&settings.group, ClientConfig::new(&settings.namesrv));
    config.consume_batch_max = CONSUME_BATCH_MAX;
    config.consume_from = quiver_net::client::consumer::ConsumeFrom::FirstOffset;
    let consumer = PushConsumer::new(config)?;
    consumer.subscribe(&settings.topic, "*")?;
    let handler = move |messages: Vec<quiver_net::message::DecodedMessage>, _context| {
        let out = Arc::clone(&out);
        async move {
            let now = now_ms();
            let mut lines = String::new();
            for m in &messages {
                let (id, intact) =
                    super::body::check(&m.body).unwrap_or_else(|| ("?".to_string(), false));
                lines.push_str(&format!(
                    "{now} {} {} {id} {}\n",
                    m.queue_id,
                    m.queue_offset,
                    u8::from(intact)
                ));
            }
            // One write per batch, before the handler answers: a kill after this line is
            // written can only cause a redelivery, never a silent loss.
            let written = match out.lock() {
                Ok(mut file) => file.write_all(lines.as_bytes()),
                Err(_) => Err(std::io::Error::other("the output lock is poisoned")),
            };
            match written {
                Ok(()) => ConsumeResult::Success,
                Err(e) => {
                    tracing::error!(error = %e, "cannot record deliveries; retrying the batch");
                    ConsumeResult::Retry
                }
            }
        }
    };
    if settings.orderly {
        consumer.start_orderly(handler).await?;
    } else {
        consumer.start_concurrently(handler).await?;
    }
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    consumer.shutdown().await;
    Ok(())
}

/// Reads a consumer's delivery file. A last line cut short by a kill is skipped.
pub fn read_deliveries(path: &Path, session: u32) -> Result<Vec<Delivery>, SoakError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&text);
    let mut out = Vec::new();
    for line in text.split_inclusive('\n') {
        let Some(line) = line.strip_suffix('\n') else {
            break;
        };
        let fields: Vec<&str> = line.split(' ').collect();
        let parsed = match fields.as_slice() {
            [at, queue, offset, id, intact] => (|| {
                Some(Delivery {
                    session,
                    at_ms: at.parse().ok()?,
                    queue: queue.parse().ok()?,
                    offset: offset.parse().ok()?,
                    id: (*id).to_string(),
                    intact: *intact == "1",
                })
            })(),
            _ => None,
        };
        match parsed {
            Some(d) => out.push(d),
            None => {
                return Err(SoakError::Setup(format!(
                    "{}: unreadable delivery line {line:?}",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}
