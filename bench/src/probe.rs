//! Self-verifying records for crash tests: the body of record `seq` of run `run` is derived
//! from the two numbers, so a checker can tell an intact record from a damaged or foreign one
//! without any other state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures_executor::block_on;
use quiver_engine::store::Store;
use quiver_engine::store::types::ReadOutcome;
use quiver_engine::{CommitLog, LogConfig, Record};

/// Topic of probe records.
pub const PROBE_TOPIC: &[u8] = b"probe";

/// Smallest probe body.
pub const PROBE_BODY_MIN_BYTES: usize = 16;

/// Body length of record `seq`: varies so records land on every alignment.
pub fn body_len(seq: u64, max_body: usize) -> usize {
    let span = max_body.saturating_sub(PROBE_BODY_MIN_BYTES).max(1) as u64;
    PROBE_BODY_MIN_BYTES + (seq.wrapping_mul(2_654_435_761) % span) as usize
}

/// The body of record `seq` of run `run`.
pub fn body(run: u64, seq: u64, max_body: usize) -> Vec<u8> {
    let len = body_len(seq, max_body);
    let mut x = run.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ seq.wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&run.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// Keys of record `seq` of run `run`.
pub fn keys(run: u64, seq: u64) -> String {
    format!("{run}-{seq}")
}

/// Checks a stored record is an intact probe record and returns its `(run, seq)`.
pub fn verify(record: &Record, max_body: usize) -> Result<(u64, u64), String> {
    if record.topic() != PROBE_TOPIC {
        return Err("not a probe record".into());
    }
    let body = record.body();
    if body.len() < PROBE_BODY_MIN_BYTES {
        return Err(format!("probe body of {} bytes", body.len()));
    }
    let run = u64::from_le_bytes(body[0..8].try_into().map_err(|_| "short body")?);
    let seq = u64::from_le_bytes(body[8..16].try_into().map_err(|_| "short body")?);
    if self::body(run, seq, max_body) != body[..] {
        return Err(format!("body of probe record {run}-{seq} is damaged"));
    }
    if record.keys() != keys(run, seq).as_bytes() {
        return Err(format!("keys of probe record {run}-{seq} are damaged"));
    }
    Ok((run, seq))
}

/// Per queue (topic, queue id): (queue offset, log position) of every message, in offset order.
pub type QueueIndex = BTreeMap<(Vec<u8>, u32), Vec<(u64, u64)>>;

/// The shard directories of a store.
pub fn shard_dirs(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("shard-"))
        {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// What a store's offset indexes must hold, from its commit logs alone. Opens (so recovers)
/// each shard's log directly: call it while the store is not open.
pub fn index_from_logs(root: &Path, log: &LogConfig) -> Result<QueueIndex, String> {
    let mut index = QueueIndex::new();
    let runtime = compio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    for shard in shard_dirs(root).map_err(|e| e.to_string())? {
        runtime.block_on(async {
            let (log, _) = CommitLog::open(shard.join("commitlog"), log.clone())
                .await
                .map_err(|e| e.to_string())?;
            let mut scan = log.scan(log.positions().start);
            while let Some(record) = scan.next().await.map_err(|e| e.to_string())? {
                let h = record.header();
                index
                    .entry((record.topic().to_vec(), h.queue_id.get()))
                    .or_default()
                    .push((h.queue_offset.get(), record.log_pos()));
            }
            log.close().await.map_err(|e| e.to_string())
        })?;
    }
    Ok(index)
}

/// What the store's offset indexes hold, read through the store from every queue's minimum.
pub fn index_of_store(store: &Store) -> Result<QueueIndex, String> {
    let mut index = QueueIndex::new();
    for queue in store.queues() {
        let mut entries = Vec::new();
        let mut offset = 0;
        loop {
            let outcome =
                block_on(store.read(&queue.topic, queue.queue_id, offset, 256, 4 << 20, None))
                    .map_err(|e| e.to_string())?;
            match outcome {
                ReadOutcome::Found {
                    messages,
                    next_offset,
                    ..
                } => {
                    entries.extend(messages.iter().map(|m| (m.queue_offset, m.pos.log_pos())));
                    offset = next_offset;
                }
                ReadOutcome::NoNewMessage { .. } => break,
                ReadOutcome::OffsetMoved { min_offset, .. } => offset = min_offset,
                other => {
                    return Err(format!(
                        "reading {:?}/{}: {other:?}",
                        queue.topic, queue.queue_id
                    ));
                }
            }
        }
        index.insert((queue.topic.to_vec(), queue.queue_id), entries);
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_engine::NewRecord;

    #[test]
    fn bodies_verify_and_differ() {
        let b = body(3, 7, 500);
        let k = keys(3, 7);
        let rec = NewRecord {
            topic: PROBE_TOPIC,
            keys: k.as_bytes(),
            body: &b,
            ..NewRecord::default()
        }
        .encode(0, 1, 1);
        let record = Record::parse(rec.into(), 0).unwrap();
        assert_eq!(verify(&record, 500), Ok((3, 7)));
        assert_ne!(body(3, 8, 500), b);
        assert_ne!(body(4, 7, 500)[16..], b[16..]);
    }
}
