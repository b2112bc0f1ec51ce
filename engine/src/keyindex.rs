//! The key index (RocketMQ's IndexFile): from a message key (or unique id) to the log
//! positions of the messages carrying it, with the time range each index file covers.
//!
//! An index file is a header, a table of hash slots and a run of entries. A slot holds the
//! newest entry whose key hashes to it; each entry links to the previous entry of its slot, so
//! a lookup walks one chain newest first. Different keys share chains (hash collisions and slot
//! sharing): every hit is confirmed on the record itself by the caller.
//!
//! The shard keeps the active index in memory and writes it once, whole, when it is full
//! (sealed); sealed files are read with small io_uring reads at query time. After a crash the
//! active index is rebuilt from the log.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use compio::fs::OpenOptions;
use compio::io::AsyncWriteAtExt;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::file_cache::{Access, FileCache, FileKey};
use crate::segment::read_exact_at;

/// Identifies a key index file.
const KEY_INDEX_MAGIC: u32 = u32::from_le_bytes(*b"QVKI");
const KEY_INDEX_VERSION: u32 = 1;

/// The header of a key index file.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct KeyIndexHeader {
    /// `QVKI`.
    pub magic: U32,
    /// 1.
    pub version: U32,
    /// Number of hash slots.
    pub slot_count: U32,
    /// Number of entries.
    pub entry_count: U32,
    /// Log position of the first record indexed.
    pub begin_pos: U64,
    /// Log position just past the last record indexed.
    pub end_pos: U64,
    /// Store timestamp of the first entry, ms; entries hold their time relative to it.
    pub begin_timestamp_ms: U64,
    /// Store timestamp of the last entry, ms.
    pub end_timestamp_ms: U64,
    /// CRC32C of the header bytes before this field.
    pub crc: U32,
}

/// Size of the header.
pub const KEY_INDEX_HEADER_BYTES: usize = size_of::<KeyIndexHeader>();

const _: () = assert!(
    KEY_INDEX_HEADER_BYTES == 52,
    "engine/FORMAT.md documents a 52-byte header"
);

/// One indexed key occurrence.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct KeyEntry {
    /// Hash of topic and key.
    pub key_hash: U32,
    /// Log position of the record.
    pub log_pos: U64,
    /// Store timestamp minus the file's `begin_timestamp_ms`.
    pub time_offset_ms: U32,
    /// 1-based index of the previous entry of the same slot; 0 ends the chain.
    pub prev: U32,
}

/// Size of an entry.
pub const KEY_ENTRY_BYTES: usize = size_of::<KeyEntry>();

const _: () = assert!(KEY_ENTRY_BYTES == 20);

/// The hash a key is indexed under: CRC32C of the topic, a zero byte and the key.
pub fn key_hash(topic: &[u8], key: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(crc32c::crc32c(topic), &[0]), key)
}

/// Why bytes are not a key index file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyIndexError {
    /// Shorter than its header says.
    #[error("key index truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the header calls for.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// Magic, version or header CRC wrong.
    #[error("not a key index file (bad magic, version or header CRC)")]
    BadHeader,
    /// A slot or a chain link points outside the entries, or a link does not point backwards.
    #[error("key index chain broken at entry {0}")]
    BadChain(u32),
}

impl KeyIndexHeader {
    fn sealed(mut self) -> KeyIndexHeader {
        self.crc = U32::new(crc32c::crc32c(
            &self.as_bytes()[..KEY_INDEX_HEADER_BYTES - 4],
        ));
        self
    }

    /// Bytes of a file with this header.
    pub fn file_bytes(&self) -> usize {
        KEY_INDEX_HEADER_BYTES
            + self.slot_count.get() as usize * 4
            + self.entry_count.get() as usize * KEY_ENTRY_BYTES
    }

    /// Checks magic, version and CRC.
    pub fn parse(bytes: &[u8]) -> Result<KeyIndexHeader, KeyIndexError> {
        let Ok((header, _)) = KeyIndexHeader::read_from_prefix(bytes) else {
            return Err(KeyIndexError::Truncated {
                needed: KEY_INDEX_HEADER_BYTES,
                available: bytes.len(),
            });
        };
        let valid = header.magic.get() == KEY_INDEX_MAGIC
            && header.version.get() == KEY_INDEX_VERSION
            && header.slot_count.get() > 0
            && header.crc.get() == crc32c::crc32c(&bytes[..KEY_INDEX_HEADER_BYTES - 4]);
        if !valid {
            return Err(KeyIndexError::BadHeader);
        }
        Ok(header)
    }
}

/// A whole key index file in memory, checked: every slot and link points at an existing entry
/// and every link points strictly backwards, so a chain walk always ends. The decoder the fuzz
/// target exercises; also what queries on the active index use.
pub struct KeyIndexView<'a> {
    /// The header.
    pub header: KeyIndexHeader,
    slots: &'a [U32],
    entries: &'a [KeyEntry],
}

impl<'a> KeyIndexView<'a> {
    /// Decodes and checks a file's bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<KeyIndexView<'a>, KeyIndexError> {
        let header = KeyIndexHeader::parse(bytes)?;
        let needed = header.file_bytes();
        if bytes.len() < needed {
            return Err(KeyIndexError::Truncated {
                needed,
                available: bytes.len(),
            });
        }
        let slots_end = KEY_INDEX_HEADER_BYTES + header.slot_count.get() as usize * 4;
        let slots = <[U32]>::ref_from_bytes(&bytes[KEY_INDEX_HEADER_BYTES..slots_end])
            .map_err(|_| KeyIndexError::BadHeader)?;
        let entries = <[KeyEntry]>::ref_from_bytes(&bytes[slots_end..needed])
            .map_err(|_| KeyIndexError::BadHeader)?;
        let view = KeyIndexView {
            header,
            slots,
            entries,
        };
        view.check()?;
        Ok(view)
    }

    fn check(&self) -> Result<(), KeyIndexError> {
        let count = self.entries.len() as u32;
        if let Some(slot) = self.slots.iter().find(|s| s.get() > count) {
            return Err(KeyIndexError::BadChain(slot.get()));
        }
        for (i, entry) in self.entries.iter().enumerate() {
            // Entry i is number i + 1; its link must name an earlier one.
            if entry.prev.get() > i as u32 {
                return Err(KeyIndexError::BadChain(i as u32 + 1));
            }
        }
        Ok(())
    }

    /// Entries whose key hash is `hash`, newest first, with their store timestamps.
    pub fn lookup(&self, hash: u32) -> impl Iterator<Item = (u64, u64)> + '_ {
        let slot = hash as usize % self.slots.len();
        let mut next = self.slots[slot].get();
        let begin = self.header.begin_timestamp_ms.get();
        std::iter::from_fn(move || {
            while next != 0 {
                let entry = self.entries[next as usize - 1];
                next = entry.prev.get();
                if entry.key_hash.get() == hash {
                    return Some((
                        entry.log_pos.get(),
                        begin + u64::from(entry.time_offset_ms.get()),
                    ));
                }
            }
            None
        })
    }
}

/// The index being filled, in memory.
pub(crate) struct ActiveKeyIndex {
    header: KeyIndexHeader,
    slots: Vec<U32>,
    entries: Vec<KeyEntry>,
    capacity: usize,
}

/// The active index has no room for another entry (or time offsets would overflow): seal it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

impl ActiveKeyIndex {
    /// An empty index for records from `begin_pos` on.
    pub(crate) fn new(slot_count: u32, capacity: usize, begin_pos: u64) -> ActiveKeyIndex {
        ActiveKeyIndex {
            header: KeyIndexHeader {
                magic: U32::new(KEY_INDEX_MAGIC),
                version: U32::new(KEY_INDEX_VERSION),
                slot_count: U32::new(slot_count.max(1)),
                entry_count: U32::ZERO,
                begin_pos: U64::new(begin_pos),
                end_pos: U64::new(begin_pos),
                begin_timestamp_ms: U64::ZERO,
                end_timestamp_ms: U64::ZERO,
                crc: U32::ZERO,
            },
            slots: vec![U32::ZERO; slot_count.max(1) as usize],
            entries: Vec::new(),
            capacity,
        }
    }

    /// Where the records it indexes start.
    pub(crate) fn begin_pos(&self) -> u64 {
        self.header.begin_pos.get()
    }

    /// Whether it holds no entry.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Indexes `hash` for the record at `log_pos` stored at `timestamp_ms`.
    pub(crate) fn add(&mut self, hash: u32, log_pos: u64, timestamp_ms: u64) -> Result<(), Full> {
        if self.entries.is_empty() {
            self.header.begin_timestamp_ms = U64::new(timestamp_ms);
        }
        let offset = timestamp_ms.saturating_sub(self.header.begin_timestamp_ms.get());
        if self.entries.len() >= self.capacity || offset > u64::from(u32::MAX) {
            return Err(Full);
        }
        let slot = hash as usize % self.slots.len();
        self.entries.push(KeyEntry {
            key_hash: U32::new(hash),
            log_pos: U64::new(log_pos),
            time_offset_ms: U32::new(offset as u32),
            prev: self.slots[slot],
        });
        self.slots[slot] = U32::new(self.entries.len() as u32);
        self.header.end_timestamp_ms =
            U64::new(timestamp_ms.max(self.header.end_timestamp_ms.get()));
        Ok(())
    }

    /// Records before `end_pos` are indexed.
    pub(crate) fn set_end(&mut self, end_pos: u64) {
        self.header.end_pos = U64::new(end_pos);
    }

    /// The file's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut header = self.header;
        header.entry_count = U32::new(self.entries.len() as u32);
        let header = header.sealed();
        let mut out = Vec::with_capacity(header.file_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(self.slots.as_bytes());
        out.extend_from_slice(self.entries.as_bytes());
        out
    }

    /// A view for lookups.
    pub(crate) fn view(&self) -> KeyIndexView<'_> {
        let mut header = self.header;
        header.entry_count = U32::new(self.entries.len() as u32);
        KeyIndexView {
            header,
            slots: &self.slots,
            entries: &self.entries,
        }
    }
}

/// A sealed index file on disk; its header is kept in memory, the file opened on demand through
/// the shard's [`FileCache`] (under the key index's owner number and the file's first log
/// position). Cloning shares nothing but the names.
#[derive(Clone)]
pub(crate) struct SealedKeyIndex {
    pub(crate) header: KeyIndexHeader,
    path: PathBuf,
    key: FileKey,
    cache: Rc<FileCache>,
}

impl SealedKeyIndex {
    /// Writes `active` to `path` durably.
    #[cfg(test)]
    pub(crate) async fn seal(
        active: &ActiveKeyIndex,
        path: &Path,
        key: FileKey,
        cache: &Rc<FileCache>,
    ) -> io::Result<SealedKeyIndex> {
        SealedKeyIndex::seal_encoded(active.encode(), path, key, cache).await
    }

    /// Writes an encoded index (from [`ActiveKeyIndex::encode`]) to `path` durably, through a
    /// temporary name so a crash never leaves a partial file under a final name.
    pub(crate) async fn seal_encoded(
        bytes: Vec<u8>,
        path: &Path,
        key: FileKey,
        cache: &Rc<FileCache>,
    ) -> io::Result<SealedKeyIndex> {
        let header = KeyIndexHeader::parse(&bytes).map_err(io::Error::other)?;
        let tmp = path.with_extension("tmp");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .await?;
        let compio::BufResult(result, _) = (&file).write_all_at(bytes, 0).await;
        result?;
        file.sync_data().await?;
        drop(file);
        compio::fs::rename(&tmp, path).await?;
        Ok(SealedKeyIndex {
            header,
            path: path.to_path_buf(),
            key,
            cache: Rc::clone(cache),
        })
    }

    /// Opens a sealed file, checking its header and size.
    pub(crate) async fn open(
        path: &Path,
        key: FileKey,
        cache: &Rc<FileCache>,
    ) -> io::Result<SealedKeyIndex> {
        let file = cache
            .get(key, || path.to_path_buf(), Access::Existing)
            .await?;
        let compio::BufResult(result, bytes) =
            read_exact_at(&file, Vec::new(), KEY_INDEX_HEADER_BYTES, 0).await;
        result?;
        let header = KeyIndexHeader::parse(&bytes).map_err(io::Error::other)?;
        let len = file.metadata().await?.len();
        if len < header.file_bytes() as u64 {
            return Err(io::Error::other(KeyIndexError::Truncated {
                needed: header.file_bytes(),
                available: len as usize,
            }));
        }
        Ok(SealedKeyIndex {
            header,
            path: path.to_path_buf(),
            key,
            cache: Rc::clone(cache),
        })
    }

    /// Closes its file if it is open (before it is deleted).
    pub(crate) fn close(&self) {
        self.cache.forget(self.key);
    }

    /// Entries whose key hash is `hash`, newest first, up to `limit`, as (log position, store
    /// timestamp): one read for the slot, one per chain link.
    pub(crate) async fn lookup(&self, hash: u32, limit: usize) -> io::Result<Vec<(u64, u64)>> {
        let slot_count = self.header.slot_count.get();
        let entry_count = self.header.entry_count.get();
        let slot_at = (KEY_INDEX_HEADER_BYTES + (hash % slot_count) as usize * 4) as u64;
        let entries_at = KEY_INDEX_HEADER_BYTES as u64 + u64::from(slot_count) * 4;
        let file = self
            .cache
            .get(self.key, || self.path.clone(), Access::Existing)
            .await?;
        let compio::BufResult(result, bytes) = read_exact_at(&file, Vec::new(), 4, slot_at).await;
        result?;
        let mut next = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let mut found = Vec::new();
        let mut steps = 0u32;
        while next != 0 && found.len() < limit {
            // A link must name an existing, earlier entry: a damaged file cannot loop or overrun.
            if next > entry_count || steps > entry_count {
                return Err(io::Error::other(KeyIndexError::BadChain(next)));
            }
            steps += 1;
            let at = entries_at + u64::from(next - 1) * KEY_ENTRY_BYTES as u64;
            let compio::BufResult(result, bytes) =
                read_exact_at(&file, Vec::new(), KEY_ENTRY_BYTES, at).await;
            result?;
            let entry = KeyEntry::read_from_bytes(&bytes)
                .map_err(|_| io::Error::other("short key index entry"))?;
            if entry.prev.get() >= next {
                return Err(io::Error::other(KeyIndexError::BadChain(next)));
            }
            if entry.key_hash.get() == hash {
                let ts =
                    self.header.begin_timestamp_ms.get() + u64::from(entry.time_offset_ms.get());
                found.push((entry.log_pos.get(), ts));
            }
            next = entry.prev.get();
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_return_every_entry_of_a_hash_newest_first() {
        let mut index = ActiveKeyIndex::new(4, 100, 0);
        // With 4 slots, hashes 1, 5 and 9 share slot 1.
        for (i, hash) in [1u32, 5, 1, 9, 1].iter().enumerate() {
            index.add(*hash, i as u64 * 100, 1000 + i as u64).unwrap();
        }
        let view = index.view();
        assert_eq!(
            view.lookup(1).collect::<Vec<_>>(),
            vec![(400, 1004), (200, 1002), (0, 1000)]
        );
        assert_eq!(view.lookup(5).collect::<Vec<_>>(), vec![(100, 1001)]);
        assert_eq!(view.lookup(2).count(), 0);
    }

    #[test]
    fn a_full_index_says_so() {
        let mut index = ActiveKeyIndex::new(4, 2, 0);
        index.add(1, 0, 10).unwrap();
        index.add(2, 1, 10).unwrap();
        assert_eq!(index.add(3, 2, 10), Err(Full));
        let mut index = ActiveKeyIndex::new(4, 10, 0);
        index.add(1, 0, 0).unwrap();
        assert_eq!(
            index.add(1, 0, u64::from(u32::MAX) + 1),
            Err(Full),
            "time offsets must fit"
        );
    }

    #[test]
    fn decode_rejects_broken_chains_and_headers() {
        let mut index = ActiveKeyIndex::new(8, 100, 0);
        for i in 0..20u32 {
            index.add(i * 3, u64::from(i), 5).unwrap();
        }
        let bytes = index.encode();
        assert_eq!(
            KeyIndexView::decode(&bytes)
                .unwrap()
                .lookup(9)
                .collect::<Vec<_>>(),
            vec![(3, 5)]
        );
        let mut damaged = bytes.clone();
        damaged[3] ^= 1;
        assert_eq!(
            KeyIndexView::decode(&damaged).err(),
            Some(KeyIndexError::BadHeader)
        );
        // Make entry 2 point forward to itself.
        let mut looped = bytes.clone();
        let entry2 = KEY_INDEX_HEADER_BYTES + 8 * 4 + KEY_ENTRY_BYTES + 16;
        looped[entry2..entry2 + 4].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            KeyIndexView::decode(&looped).err(),
            Some(KeyIndexError::BadChain(2))
        );
        assert!(matches!(
            KeyIndexView::decode(&bytes[..bytes.len() - 1]),
            Err(KeyIndexError::Truncated { .. })
        ));
    }

    #[compio::test]
    async fn sealed_files_answer_like_the_active_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = ActiveKeyIndex::new(16, 1000, 4096);
        for i in 0..500u64 {
            index
                .add(
                    key_hash(b"t", format!("k{}", i % 37).as_bytes()),
                    4096 + i * 64,
                    1_000_000 + i,
                )
                .unwrap();
        }
        index.set_end(4096 + 500 * 64);
        let path = dir.path().join("00000000000000004096");
        let cache = Rc::new(FileCache::new(4));
        let sealed = SealedKeyIndex::seal(&index, &path, (0, 1), &cache)
            .await
            .unwrap();
        let reopened = SealedKeyIndex::open(&path, (0, 2), &cache).await.unwrap();
        assert_eq!(reopened.header, sealed.header);
        for k in 0..37 {
            let hash = key_hash(b"t", format!("k{k}").as_bytes());
            let expected: Vec<_> = index.view().lookup(hash).collect();
            assert_eq!(reopened.lookup(hash, usize::MAX).await.unwrap(), expected);
            assert_eq!(reopened.lookup(hash, 3).await.unwrap(), expected[..3]);
        }
        assert_eq!(reopened.header.end_pos.get(), 4096 + 500 * 64);
    }
}
