//! Small records that must survive a torn write: the log's checkpoint (where recovery may
//! start, the writer generation) and each shard's index checkpoint.
//!
//! A [`SlotFile`] holds two copies in separate pages, written alternately, each with a
//! sequence number and its own CRC32C, so a write torn by a crash leaves the other intact. The
//! valid slot with the higher sequence wins.

use std::io;
use std::marker::PhantomData;
use std::path::Path;

use compio::fs::{File, OpenOptions};
use compio::io::AsyncWriteAtExt;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::config::PAGE_BYTES;

const SLOTS: u64 = 2;

/// Header of a slot: identifies the kind of record and orders the copies.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
struct SlotHeader {
    magic: U32,
    version: U32,
    sequence: U64,
}

/// A record stored in a [`SlotFile`].
pub(crate) trait SlotRecord:
    FromBytes + IntoBytes + Immutable + KnownLayout + Unaligned + Copy
{
    /// Identifies the kind of file (four ASCII bytes).
    const MAGIC: [u8; 4];
    /// Layout version of the record.
    const VERSION: u32;
}

/// A two-slot file holding one `T`.
pub(crate) struct SlotFile<T> {
    file: File,
    sequence: u64,
    _record: PhantomData<T>,
}

fn slot_bytes<T: SlotRecord>() -> usize {
    size_of::<SlotHeader>() + size_of::<T>() + 4
}

fn encode<T: SlotRecord>(sequence: u64, record: &T) -> Vec<u8> {
    let header = SlotHeader {
        magic: U32::new(u32::from_le_bytes(T::MAGIC)),
        version: U32::new(T::VERSION),
        sequence: U64::new(sequence),
    };
    let mut out = Vec::with_capacity(slot_bytes::<T>());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(record.as_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode<T: SlotRecord>(bytes: &[u8]) -> Option<(u64, T)> {
    let body = bytes.get(..slot_bytes::<T>() - 4)?;
    let crc = bytes.get(body.len()..body.len() + 4)?;
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let (header, rest) = SlotHeader::ref_from_prefix(body).ok()?;
    if header.magic.get() != u32::from_le_bytes(T::MAGIC) || header.version.get() != T::VERSION {
        return None;
    }
    let record = T::read_from_bytes(rest).ok()?;
    Some((header.sequence.get(), record))
}

/// The newest valid record among the slots in `file_bytes`.
pub(crate) fn newest<T: SlotRecord>(file_bytes: &[u8]) -> Option<(u64, T)> {
    (0..SLOTS as usize)
        .filter_map(|i| file_bytes.get(i * PAGE_BYTES..).and_then(decode::<T>))
        .max_by_key(|(sequence, _)| *sequence)
}

impl<T: SlotRecord> SlotFile<T> {
    /// Opens (creating if needed) `path` and reads it; `None` if no slot is valid.
    pub(crate) async fn open(path: &Path) -> io::Result<(SlotFile<T>, Option<T>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .await?;
        let len = file.metadata().await?.len().min(SLOTS * PAGE_BYTES as u64) as usize;
        let compio::BufResult(res, bytes) =
            crate::segment::read_exact_at(&file, Vec::new(), len, 0).await;
        res?;
        let found = newest::<T>(&bytes);
        // Both slots exist on disk from the start, so that a later store only overwrites what
        // the file already holds and never needs space a full disk no longer has.
        let whole = SLOTS as usize * PAGE_BYTES;
        if len < whole {
            let compio::BufResult(res, _) = (&file)
                .write_all_at(vec![0u8; whole - len], len as u64)
                .await;
            res?;
            file.sync_data().await?;
        }
        let sequence = found.map_or(0, |(sequence, _)| sequence);
        let slot_file = SlotFile {
            file,
            sequence,
            _record: PhantomData,
        };
        Ok((slot_file, found.map(|(_, record)| record)))
    }

    /// Durably records `record` in the slot not holding the newest copy.
    pub(crate) async fn store(&mut self, record: &T) -> io::Result<()> {
        let sequence = self.sequence + 1;
        let slot = sequence % SLOTS;
        let compio::BufResult(res, _) = (&self.file)
            .write_all_at(encode(sequence, record), slot * PAGE_BYTES as u64)
            .await;
        res?;
        self.file.sync_data().await?;
        self.sequence = sequence;
        Ok(())
    }
}

/// File name of the log's checkpoint inside its directory.
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";

/// The log's checkpoint.
#[derive(
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
)]
#[repr(C)]
pub struct Checkpoint {
    /// Generation of the writer that wrote it; the next writer uses a higher one.
    pub generation: U32,
    reserved: U32,
    /// A record boundary below which every byte is durable and was verified.
    pub durable_pos: U64,
    /// Largest store timestamp written so far, so timestamps never go backwards after restart.
    pub last_store_timestamp_ms: U64,
}

impl Checkpoint {
    pub(crate) fn new(
        generation: u32,
        durable_pos: u64,
        last_store_timestamp_ms: u64,
    ) -> Checkpoint {
        Checkpoint {
            generation: U32::new(generation),
            reserved: U32::ZERO,
            durable_pos: U64::new(durable_pos),
            last_store_timestamp_ms: U64::new(last_store_timestamp_ms),
        }
    }
}

impl SlotRecord for Checkpoint {
    const MAGIC: [u8; 4] = *b"QVCK";
    const VERSION: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[compio::test]
    async fn the_newest_slot_survives_a_torn_write_of_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let (mut file, found) = SlotFile::<Checkpoint>::open(&path).await.unwrap();
        assert_eq!(found, None);
        // Both slots are there before the first store: stores never grow the file.
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            SLOTS * PAGE_BYTES as u64
        );
        for pos in [100u64, 200, 300] {
            file.store(&Checkpoint::new(4, pos, pos * 10))
                .await
                .unwrap();
        }
        drop(file);
        let (_, found) = SlotFile::<Checkpoint>::open(&path).await.unwrap();
        assert_eq!(found.unwrap().durable_pos.get(), 300);
        // Tear the slot holding the newest (sequence 3 lives in slot 1).
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[PAGE_BYTES + 20] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let (mut file, found) = SlotFile::<Checkpoint>::open(&path).await.unwrap();
        let found = found.unwrap();
        assert_eq!((found.durable_pos.get(), found.generation.get()), (200, 4));
        // The next store goes to the torn slot (sequence 3 again), keeping the good one.
        file.store(&Checkpoint::new(5, 400, 0)).await.unwrap();
        let (_, found) = SlotFile::<Checkpoint>::open(&path).await.unwrap();
        assert_eq!(found.unwrap().durable_pos.get(), 400);
    }

    #[derive(
        FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq,
    )]
    #[repr(C)]
    struct Other {
        value: U64,
    }

    impl SlotRecord for Other {
        const MAGIC: [u8; 4] = *b"TEST";
        const VERSION: u32 = 1;
    }

    #[compio::test]
    async fn a_file_of_another_kind_is_not_read_as_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let (mut file, _) = SlotFile::<Other>::open(&path).await.unwrap();
        file.store(&Other { value: U64::new(7) }).await.unwrap();
        drop(file);
        let (_, found) = SlotFile::<Checkpoint>::open(&path).await.unwrap();
        assert_eq!(found, None);
    }
}
