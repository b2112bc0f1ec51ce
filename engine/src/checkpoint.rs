//! The checkpoint: where recovery may start scanning, and the writer generation.
//!
//! Two slots in separate pages are written alternately, each with its own CRC, so a write torn
//! by a crash leaves the other slot intact. The valid slot with the higher sequence wins.

use std::io;
use std::path::Path;

use compio::fs::{File, OpenOptions};
use compio::io::AsyncWriteAtExt;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::config::PAGE_BYTES;

/// File name inside the log directory.
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";

const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"QVCK");
const CHECKPOINT_VERSION: u32 = 1;
const SLOTS: u64 = 2;

/// What the checkpoint records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Raised on every write; picks the newer slot.
    pub sequence: u64,
    /// Generation of the writer that wrote it; the next writer uses a higher one.
    pub generation: u32,
    /// A record boundary below which every byte is durable and was verified.
    pub durable_pos: u64,
    /// Largest store timestamp written so far, so timestamps never go backwards after restart.
    pub last_store_timestamp_ms: u64,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
struct Slot {
    magic: U32,
    version: U32,
    sequence: U64,
    generation: U32,
    reserved: U32,
    durable_pos: U64,
    last_store_timestamp_ms: U64,
    crc: U32,
}

const SLOT_CRC_COVERS: usize = std::mem::size_of::<Slot>() - 4;

fn encode(cp: &Checkpoint) -> Vec<u8> {
    let mut slot = Slot {
        magic: U32::new(CHECKPOINT_MAGIC),
        version: U32::new(CHECKPOINT_VERSION),
        sequence: U64::new(cp.sequence),
        generation: U32::new(cp.generation),
        reserved: U32::ZERO,
        durable_pos: U64::new(cp.durable_pos),
        last_store_timestamp_ms: U64::new(cp.last_store_timestamp_ms),
        crc: U32::ZERO,
    };
    slot.crc = U32::new(crc32c::crc32c(&slot.as_bytes()[..SLOT_CRC_COVERS]));
    slot.as_bytes().to_vec()
}

fn decode(bytes: &[u8]) -> Option<Checkpoint> {
    let (slot, _) = Slot::ref_from_prefix(bytes).ok()?;
    let valid = slot.magic.get() == CHECKPOINT_MAGIC
        && slot.version.get() == CHECKPOINT_VERSION
        && slot.crc.get() == crc32c::crc32c(&slot.as_bytes()[..SLOT_CRC_COVERS]);
    valid.then(|| Checkpoint {
        sequence: slot.sequence.get(),
        generation: slot.generation.get(),
        durable_pos: slot.durable_pos.get(),
        last_store_timestamp_ms: slot.last_store_timestamp_ms.get(),
    })
}

/// Picks the newest valid slot from the file's bytes.
pub(crate) fn newest(file_bytes: &[u8]) -> Option<Checkpoint> {
    (0..SLOTS as usize)
        .filter_map(|i| file_bytes.get(i * PAGE_BYTES..).and_then(decode))
        .max_by_key(|cp| cp.sequence)
}

/// The checkpoint file of one log.
pub(crate) struct CheckpointFile {
    file: File,
    last: Checkpoint,
}

impl CheckpointFile {
    /// Opens (creating if needed) and reads the checkpoint file; `None` if no slot is valid.
    pub(crate) async fn open(dir: &Path) -> io::Result<(CheckpointFile, Option<Checkpoint>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(CHECKPOINT_FILE))
            .await?;
        let len = file.metadata().await?.len().min(SLOTS * PAGE_BYTES as u64) as usize;
        let compio::BufResult(res, bytes) =
            crate::segment::read_exact_at(&file, Vec::new(), len, 0).await;
        res?;
        let found = newest(&bytes);
        let last = found.unwrap_or_default();
        Ok((CheckpointFile { file, last }, found))
    }

    /// Durably records `cp` (its sequence is assigned here) in the slot not holding the newest.
    pub(crate) async fn store(&mut self, mut cp: Checkpoint) -> io::Result<()> {
        cp.sequence = self.last.sequence + 1;
        let slot = cp.sequence % SLOTS;
        let compio::BufResult(res, _) = (&self.file)
            .write_all_at(encode(&cp), slot * PAGE_BYTES as u64)
            .await;
        res?;
        self.file.sync_data().await?;
        self.last = cp;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[compio::test]
    async fn the_newest_slot_survives_a_torn_write_of_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, found) = CheckpointFile::open(dir.path()).await.unwrap();
        assert_eq!(found, None);
        for pos in [100u64, 200, 300] {
            file.store(Checkpoint {
                generation: 4,
                durable_pos: pos,
                last_store_timestamp_ms: pos * 10,
                ..Checkpoint::default()
            })
            .await
            .unwrap();
        }
        drop(file);
        let path = dir.path().join(CHECKPOINT_FILE);
        let (_, found) = CheckpointFile::open(dir.path()).await.unwrap();
        assert_eq!(found.unwrap().durable_pos, 300);
        // Tear the slot holding the newest (sequence 3 lives in slot 1).
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[PAGE_BYTES + 20] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let (_, found) = CheckpointFile::open(dir.path()).await.unwrap();
        let found = found.unwrap();
        assert_eq!(
            (found.sequence, found.durable_pos, found.generation),
            (2, 200, 4)
        );
    }
}
