//! A shard's index checkpoint: the log position below which every record is in the offset
//! indexes on disk, what those indexes held at that point, queue by queue (its offset range),
//! and the topics deleted recently (records of a topic below the position recorded at its
//! deletion belong to its deleted life and are never indexed again). Recovery truncates the indexes to the position and re-reads the log from there;
//! the per-queue ranges let it notice, without reading the log, an index that lost entries the
//! checkpoint vouched for (a file deleted, cut short or never written), so that it is rebuilt
//! from the log instead of silently starting later or ending sooner.
//!
//! Two files, `index-checkpoint.0` and `.1`, written alternately in place, each a whole
//! encoding with a sequence number and a CRC32C, so a write torn by a crash leaves the other
//! intact; the valid one with the higher sequence wins. A file only grows when the encoding
//! does (more queues); otherwise a store overwrites what the file holds and needs no space a
//! full disk no longer has. The bytes are described in `engine/FORMAT.md`.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use bytes::Bytes;
use compio::fs::{File, OpenOptions};
use compio::io::AsyncWriteAtExt;

use super::shard::QueueId;
use crate::record::MAX_TOPIC_BYTES;

/// File names of the two copies, in a shard directory.
pub(crate) const FILE_NAMES: [&str; 2] = ["index-checkpoint.0", "index-checkpoint.1"];

/// Largest checkpoint file read, bytes: about six million queues of 20-byte names.
pub const CHECKPOINT_BYTES_MAX: usize = 256 << 20;

const MAGIC: [u8; 4] = *b"QVIQ";
const VERSION: u32 = 1;
/// magic, version, sequence, dispatched position, queue count, deleted-topic count.
const HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 4 + 4;
/// queue id, topic length, min and max offset (the topic follows).
const QUEUE_FIXED_BYTES: usize = 4 + 2 + 8 + 8;
/// topic length, log position (the topic follows).
const DELETED_FIXED_BYTES: usize = 2 + 8;
const CRC_BYTES: usize = 4;

/// A queue's offset range as its index held it at the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRange {
    /// Lowest readable offset.
    pub min: u64,
    /// One past the last offset.
    pub max: u64,
}

/// What one checkpoint says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexCheckpoint {
    /// Every record below this log position is in the offset indexes on disk.
    pub dispatched_pos: u64,
    /// Every queue of the shard at that point and its range.
    pub queues: HashMap<QueueId, QueueRange>,
    /// Topics deleted whose records may still be above `dispatched_pos`: records of the topic
    /// placed below this log position belong to the deleted life.
    pub deleted: HashMap<Bytes, u64>,
}

/// Why bytes are not a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its header and CRC, or than the queues it claims.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// Not a checkpoint file, or of another layout version.
    #[error("bad magic or version")]
    NotACheckpoint,
    /// The CRC32C does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// An entry is impossible (empty or over-long topic, min above max, listed twice).
    #[error("invalid entry {index}: {problem}")]
    BadEntry {
        /// Which entry.
        index: usize,
        /// What is wrong.
        problem: &'static str,
    },
}

/// Encodes a checkpoint with `sequence`.
pub fn encode(sequence: u64, checkpoint: &IndexCheckpoint) -> Vec<u8> {
    let (queues, deleted) = (&checkpoint.queues, &checkpoint.deleted);
    let body: usize = queues
        .keys()
        .map(|id| QUEUE_FIXED_BYTES + id.topic.len())
        .chain(deleted.keys().map(|t| DELETED_FIXED_BYTES + t.len()))
        .sum();
    let mut out = Vec::with_capacity(HEADER_BYTES + body + CRC_BYTES);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&checkpoint.dispatched_pos.to_le_bytes());
    out.extend_from_slice(&(queues.len() as u32).to_le_bytes());
    out.extend_from_slice(&(deleted.len() as u32).to_le_bytes());
    let topic_fits = |topic: &[u8]| !topic.is_empty() && topic.len() <= MAX_TOPIC_BYTES;
    for (id, range) in queues {
        assert!(
            topic_fits(&id.topic),
            "a queue of a {}-byte topic in the index checkpoint",
            id.topic.len()
        );
        assert!(range.min <= range.max, "queue {id:?}: range {range:?}");
        out.extend_from_slice(&id.queue_id.to_le_bytes());
        out.extend_from_slice(&(id.topic.len() as u16).to_le_bytes());
        out.extend_from_slice(&range.min.to_le_bytes());
        out.extend_from_slice(&range.max.to_le_bytes());
        out.extend_from_slice(&id.topic);
    }
    for (topic, before) in deleted {
        assert!(
            topic_fits(topic),
            "a deleted topic of {} bytes",
            topic.len()
        );
        out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        out.extend_from_slice(&before.to_le_bytes());
        out.extend_from_slice(topic);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads `N` bytes at `at`.
fn take<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], DecodeError> {
    bytes
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or(DecodeError::Truncated(at))
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, DecodeError> {
    take::<4>(bytes, at).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, DecodeError> {
    take::<8>(bytes, at).map(u64::from_le_bytes)
}

/// A topic of `len` bytes at `at`, checked against the topic limits.
fn topic_at(bytes: &[u8], at: usize, len: usize, index: usize) -> Result<Bytes, DecodeError> {
    let topic = bytes.get(at..at + len).ok_or(DecodeError::Truncated(at))?;
    if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
        return Err(DecodeError::BadEntry {
            index,
            problem: "topic length out of range",
        });
    }
    Ok(Bytes::copy_from_slice(topic))
}

/// Decodes a checkpoint (bytes after its CRC are ignored); returns its sequence too.
pub fn decode(bytes: &[u8]) -> Result<(u64, IndexCheckpoint), DecodeError> {
    if take::<4>(bytes, 0)? != MAGIC || u32_at(bytes, 4)? != VERSION {
        return Err(DecodeError::NotACheckpoint);
    }
    let sequence = u64_at(bytes, 8)?;
    let dispatched_pos = u64_at(bytes, 16)?;
    let count = u32_at(bytes, 24)? as usize;
    let deleted_count = u32_at(bytes, 28)? as usize;
    // Every entry takes at least its fixed part: a count the bytes cannot hold is a lie.
    let room = bytes.len().saturating_sub(HEADER_BYTES);
    if count > room / QUEUE_FIXED_BYTES || deleted_count > room / DELETED_FIXED_BYTES {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    let mut queues = HashMap::with_capacity(count);
    let mut at = HEADER_BYTES;
    for index in 0..count {
        let queue_id = u32_at(bytes, at)?;
        let topic_len = u16::from_le_bytes(take::<2>(bytes, at + 4)?) as usize;
        let min = u64_at(bytes, at + 6)?;
        let max = u64_at(bytes, at + 14)?;
        at += QUEUE_FIXED_BYTES;
        let topic = topic_at(bytes, at, topic_len, index)?;
        at += topic_len;
        let bad = |problem| DecodeError::BadEntry { index, problem };
        if min > max {
            return Err(bad("min offset above max offset"));
        }
        if queues
            .insert(QueueId { topic, queue_id }, QueueRange { min, max })
            .is_some()
        {
            return Err(bad("queue listed twice"));
        }
    }
    let mut deleted = HashMap::with_capacity(deleted_count);
    for index in count..count + deleted_count {
        let topic_len = u16::from_le_bytes(take::<2>(bytes, at)?) as usize;
        let before = u64_at(bytes, at + 2)?;
        at += DELETED_FIXED_BYTES;
        let topic = topic_at(bytes, at, topic_len, index)?;
        at += topic_len;
        if deleted.insert(topic, before).is_some() {
            return Err(DecodeError::BadEntry {
                index,
                problem: "deleted topic listed twice",
            });
        }
    }
    let crc = u32_at(bytes, at)?;
    if crc32c::crc32c(&bytes[..at]) != crc {
        return Err(DecodeError::Checksum);
    }
    Ok((
        sequence,
        IndexCheckpoint {
            dispatched_pos,
            queues,
            deleted,
        },
    ))
}

/// The two files of a shard's index checkpoint.
pub(crate) struct CheckpointFiles {
    files: [File; 2],
    /// Sequence of the newest valid copy (0: none).
    sequence: u64,
}

async fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .await
}

/// The checkpoint in `file`, if it holds a valid one.
async fn read_copy(file: &File, path: &Path) -> io::Result<Option<(u64, IndexCheckpoint)>> {
    let len = file.metadata().await?.len();
    if len as usize > CHECKPOINT_BYTES_MAX {
        tracing::warn!(?path, len, "index checkpoint file too large; ignored");
        return Ok(None);
    }
    let compio::BufResult(result, bytes) =
        crate::segment::read_exact_at(file, Vec::new(), len as usize, 0).await;
    result?;
    match decode(&bytes) {
        Ok(found) => Ok(Some(found)),
        Err(e) => {
            if len > 0 {
                tracing::warn!(?path, error = %e, "index checkpoint copy unreadable; using the other");
            }
            Ok(None)
        }
    }
}

impl CheckpointFiles {
    /// Opens (creating) both files in `dir`; returns the newest valid checkpoint, if any.
    pub(crate) async fn open(dir: &Path) -> io::Result<(CheckpointFiles, Option<IndexCheckpoint>)> {
        let paths = FILE_NAMES.map(|name| dir.join(name));
        let new = paths.iter().any(|p| !p.exists());
        let files = [open_file(&paths[0]).await?, open_file(&paths[1]).await?];
        if new {
            // Their names durable, so a power loss does not take a stored checkpoint away.
            crate::segment::sync_dir(dir).await?;
        }
        let mut newest: Option<(u64, IndexCheckpoint)> = None;
        for (file, path) in files.iter().zip(&paths) {
            if let Some((sequence, checkpoint)) = read_copy(file, path).await?
                && newest.as_ref().is_none_or(|(s, _)| sequence > *s)
            {
                newest = Some((sequence, checkpoint));
            }
        }
        let sequence = newest.as_ref().map_or(0, |(s, _)| *s);
        Ok((
            CheckpointFiles { files, sequence },
            newest.map(|(_, checkpoint)| checkpoint),
        ))
    }

    /// Durably records `checkpoint` in the file not holding the newest copy.
    pub(crate) async fn store(&mut self, checkpoint: &IndexCheckpoint) -> io::Result<()> {
        let sequence = self.sequence + 1;
        let file = &self.files[(sequence % 2) as usize];
        let compio::BufResult(result, _) =
            (&*file).write_all_at(encode(sequence, checkpoint), 0).await;
        result?;
        file.sync_data().await?;
        self.sequence = sequence;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(queues: usize) -> IndexCheckpoint {
        IndexCheckpoint {
            dispatched_pos: 123_456,
            queues: (0..queues)
                .map(|i| {
                    (
                        QueueId::new(format!("topic-{}", i % 7).as_bytes(), i as u32),
                        QueueRange {
                            min: i as u64,
                            max: 10 * i as u64,
                        },
                    )
                })
                .collect(),
            deleted: (0..queues / 4)
                .map(|i| (Bytes::from(format!("gone-{i}")), 1000 * i as u64))
                .collect(),
        }
    }

    #[test]
    fn round_trips_and_ignores_trailing_bytes() {
        for n in [0, 1, 50] {
            let checkpoint = sample(n);
            let mut bytes = encode(9, &checkpoint);
            assert_eq!(decode(&bytes), Ok((9, checkpoint.clone())));
            bytes.extend_from_slice(&[0xAB; 100]);
            assert_eq!(decode(&bytes), Ok((9, checkpoint)));
        }
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode(3, &sample(5));
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            assert!(decode(&damaged).is_err(), "byte {i} flipped");
        }
    }

    #[test]
    fn a_lying_count_is_refused_without_allocating_for_it() {
        for field in [24..28, 28..32] {
            let mut bytes = encode(1, &sample(0));
            bytes[field].copy_from_slice(&u32::MAX.to_le_bytes());
            assert_eq!(decode(&bytes), Err(DecodeError::Truncated(bytes.len())));
        }
    }

    #[compio::test]
    async fn the_newest_copy_wins_and_a_torn_one_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, found) = CheckpointFiles::open(dir.path()).await.unwrap();
        assert_eq!(found, None);
        let (a, b) = (sample(3), sample(40));
        files.store(&a).await.unwrap();
        files.store(&b).await.unwrap();
        drop(files);
        let (mut files, found) = CheckpointFiles::open(dir.path()).await.unwrap();
        assert_eq!(found.as_ref(), Some(&b));
        // A smaller checkpoint over the larger copy: the stale tail is ignored.
        files.store(&a).await.unwrap();
        files.store(&a).await.unwrap();
        drop(files);
        let (_, found) = CheckpointFiles::open(dir.path()).await.unwrap();
        assert_eq!(found.as_ref(), Some(&a));
        // Tear the newest (sequence 4, in file 0): the other copy is used.
        let path = dir.path().join(FILE_NAMES[0]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();
        let (_, found) = CheckpointFiles::open(dir.path()).await.unwrap();
        assert_eq!(found.as_ref(), Some(&a), "sequence 3 held a as well");
    }
}
