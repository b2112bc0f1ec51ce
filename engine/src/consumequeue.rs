//! The offset index of one queue (RocketMQ's ConsumeQueue): fixed 20-byte entries, one per
//! message, in queue-offset order, giving the message's log position, size and tag hash. Entry
//! `n` of a file starting at queue offset `f` describes offset `f + n`: a lookup is a map probe
//! and one read.
//!
//! Files are named by their first queue offset (20 digits) and end at a multiple of
//! `file_entries`. Entries are appended by the shard's dispatch in log order, kept in memory
//! until written, and written through the page cache. Files are opened on demand through the
//! shard's [`FileCache`], which keeps at most its budget of them open; the log is the source of truth, so after
//! a crash the index is truncated to what the shard's index checkpoint vouches for and rebuilt
//! from the log (see `shard.rs`).

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use compio::fs::File;
use compio::io::AsyncWriteAtExt;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::file_cache::{Access, FileCache};
use crate::record::HEADER_BYTES;
use crate::segment::{parse_segment_name, read_exact_at, segment_name};

/// Size of one entry on disk.
pub const CQ_ENTRY_BYTES: usize = 20;

/// Room for entries a queue keeps once they are written; more is given back.
const UNWRITTEN_KEPT_ENTRIES: usize = 32;

/// One message of a queue.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct CqEntry {
    /// Log position of the record.
    pub log_pos: U64,
    /// Length of the record.
    pub size: U32,
    /// Tag hash of the message, for filtering without reading the record.
    pub tag_hash: U64,
}

const _: () = assert!(size_of::<CqEntry>() == CQ_ENTRY_BYTES);

impl CqEntry {
    /// An entry.
    pub fn new(log_pos: u64, size: u32, tag_hash: u64) -> CqEntry {
        CqEntry {
            log_pos: U64::new(log_pos),
            size: U32::new(size),
            tag_hash: U64::new(tag_hash),
        }
    }

    /// Log position just past the record.
    pub fn end(&self) -> u64 {
        self.log_pos.get() + u64::from(self.size.get())
    }
}

/// How many leading entries of `bytes` are valid: whole entries with sizes between a header and
/// `max_record_bytes`, each starting at or after the end of the one before (and after
/// `after_end`). Anything after the first invalid entry is a torn or corrupt tail.
pub fn valid_prefix(bytes: &[u8], max_record_bytes: u32, after_end: u64) -> usize {
    let whole = bytes.len() / CQ_ENTRY_BYTES;
    let Ok(entries) = <[CqEntry]>::ref_from_bytes(&bytes[..whole * CQ_ENTRY_BYTES]) else {
        return 0;
    };
    let mut prev_end = after_end;
    for (i, entry) in entries.iter().enumerate() {
        let size = entry.size.get();
        let valid = size as usize >= HEADER_BYTES
            && size <= max_record_bytes
            && entry.log_pos.get() >= prev_end
            && entry.log_pos.get().checked_add(u64::from(size)).is_some();
        if !valid {
            return i;
        }
        prev_end = entry.end();
    }
    whole
}

/// What opening an index found, and so where the log must be re-read for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opened {
    /// Complete up to the shard's index checkpoint.
    Intact,
    /// Damaged after an entry: re-read the log from this position.
    ResumeFrom(u64),
    /// Entries are missing in the middle: emptied, to be rebuilt from the log start.
    Broken,
}

/// The offset index of one queue.
pub(crate) struct ConsumeQueue {
    dir: PathBuf,
    file_entries: u64,
    /// Where its files are opened, and its number there.
    cache: Rc<FileCache>,
    owner: u64,
    /// First queue offset of each file.
    files: FileSet,
    /// The lowest offset whose record is still in the log.
    min_offset: u64,
    /// Offsets below this are in files.
    written: u64,
    /// Entries `[written, max_offset)`, not yet in files.
    unwritten: VecDeque<CqEntry>,
    /// A write of `unwritten` is in flight.
    writing: bool,
    /// Files written since the last sync, by first offset.
    unsynced: BTreeSet<u64>,
    /// A file was created since the last sync: the directory needs one too.
    created_file: bool,
    /// No entry yet: the first one pushed sets the starting offset.
    empty: bool,
    /// Log position just past the last entry's record, if there is one.
    last_entry_end: Option<u64>,
}

/// The first offsets of a queue's files, ascending: a sorted vector (a queue has a few files,
/// and a map's node would cost every idle queue more memory than its entries).
#[derive(Debug, Default)]
struct FileSet(Vec<u64>);

impl FileSet {
    fn first(&self) -> Option<&u64> {
        self.0.first()
    }

    fn last(&self) -> Option<&u64> {
        self.0.last()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn contains(&self, first: &u64) -> bool {
        self.0.binary_search(first).is_ok()
    }

    fn iter(&self) -> impl Iterator<Item = &u64> {
        self.0.iter()
    }

    /// Adds `first`; false if it was there.
    fn insert(&mut self, first: u64) -> bool {
        match self.0.binary_search(&first) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, first);
                true
            }
        }
    }

    fn remove(&mut self, first: &u64) -> bool {
        match self.0.binary_search(first) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// The greatest first offset at or below `offset`.
    fn last_at_or_below(&self, offset: u64) -> Option<u64> {
        let at = self.0.partition_point(|&f| f <= offset);
        at.checked_sub(1).and_then(|i| self.0.get(i).copied())
    }
}

/// A file name is its first queue offset, 20 digits, like a segment.
fn file_name(first: u64) -> String {
    segment_name(first)
}

/// Reads entries `[index, index + count)` of `file`.
async fn read_entries(file: &File, index: u64, count: usize) -> io::Result<Vec<CqEntry>> {
    let len = count * CQ_ENTRY_BYTES;
    let compio::BufResult(result, bytes) =
        read_exact_at(file, Vec::new(), len, index * CQ_ENTRY_BYTES as u64).await;
    result?;
    match <[CqEntry]>::ref_from_bytes(&bytes) {
        Ok(entries) => Ok(entries.to_vec()),
        Err(_) => Err(io::Error::other("offset index read of a partial entry")),
    }
}

impl ConsumeQueue {
    /// The index of a queue that has none on disk yet: no I/O (the caller makes `dir`).
    pub(crate) fn new_empty(dir: &Path, file_entries: u64, cache: &Rc<FileCache>) -> ConsumeQueue {
        ConsumeQueue {
            dir: dir.to_path_buf(),
            file_entries,
            owner: cache.owner(),
            cache: Rc::clone(cache),
            files: FileSet::default(),
            min_offset: 0,
            written: 0,
            unwritten: VecDeque::new(),
            writing: false,
            unsynced: BTreeSet::new(),
            created_file: false,
            empty: true,
            last_entry_end: None,
        }
    }

    /// Opens the index in `dir`, keeping only entries whose records start before `keep_below`
    /// (what the shard's index checkpoint vouches for) and are valid; the rest is truncated,
    /// to be re-added from the log. Says from where the log must be re-read for this queue.
    /// With `vouched_max`, the checkpoint's word that offsets below it are on disk, synced and
    /// below `keep_below`: when the files reach it, they are cut there without being read.
    /// Files are opened one at a time through `cache` and left to it.
    ///
    /// It may delete and truncate files, so it is only for an index nothing holds open: the
    /// shard calls it while opening.
    pub(crate) async fn open(
        dir: &Path,
        file_entries: u64,
        max_record_bytes: u32,
        keep_below: u64,
        vouched_max: Option<u64>,
        cache: &Rc<FileCache>,
    ) -> io::Result<(ConsumeQueue, Opened)> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(u64, u64)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
                found.push((first, entry.metadata()?.len()));
            }
        }
        found.sort_unstable();
        let mut queue = ConsumeQueue::new_empty(dir, file_entries, cache);
        // Every file but the last must be full and followed by the next: a hole means entries
        // the checkpoint vouches for are gone, and only the whole log can restore them.
        let continuous = found.windows(2).all(|w| {
            let end = queue.file_end(w[0].0);
            w[1].0 == end && w[0].1 == (end - w[0].0) * CQ_ENTRY_BYTES as u64
        });
        if !continuous {
            for (first, _) in &found {
                std::fs::remove_file(dir.join(file_name(*first)))?;
            }
            return Ok((queue, Opened::Broken));
        }
        queue.files = FileSet(found.iter().map(|&(first, _)| first).collect());
        if let (Some(max), Some(&(last, len))) = (vouched_max, found.last())
            && queue.cut_unread(last, len, max).await?
        {
            return Ok((queue, Opened::Intact));
        }
        let mut state = Opened::Intact;
        // From the newest file back: keep its valid entries below `keep_below`; a file left
        // with none is deleted and the one before examined.
        while let Some(&first) = queue.files.last() {
            let len = found.iter().find(|f| f.0 == first).map_or(0, |f| f.1);
            let file = queue.file(first, Access::Existing).await?;
            let compio::BufResult(result, bytes) =
                read_exact_at(&file, Vec::new(), len as usize, 0).await;
            result?;
            let valid = valid_prefix(&bytes, max_record_bytes, 0);
            let entries =
                <[CqEntry]>::ref_from_bytes(&bytes[..valid * CQ_ENTRY_BYTES]).unwrap_or(&[]);
            if valid * CQ_ENTRY_BYTES != bytes.len() && state == Opened::Intact {
                // Damaged or torn: re-read the log from the last good entry.
                state = match entries.last() {
                    Some(last) => Opened::ResumeFrom(last.end()),
                    None => Opened::Broken,
                };
            }
            let keep = entries.partition_point(|e| e.log_pos.get() < keep_below);
            if keep == 0 && queue.files.len() > 1 {
                queue.remove_file(first)?;
                continue;
            }
            if (keep * CQ_ENTRY_BYTES) as u64 != len {
                file.set_len((keep * CQ_ENTRY_BYTES) as u64).await?;
                file.sync_data().await?;
            }
            drop(file);
            if keep == 0 {
                queue.remove_file(first)?;
                break;
            }
            queue.written = first + keep as u64;
            queue.min_offset = queue.files.first().copied().unwrap_or(first);
            queue.empty = false;
            queue.last_entry_end = entries.get(keep - 1).map(CqEntry::end);
            break;
        }
        if state == Opened::Broken {
            for first in std::mem::take(&mut queue.files).0 {
                cache.forget((queue.owner, first));
                std::fs::remove_file(dir.join(file_name(first)))?;
            }
            queue.written = 0;
            queue.min_offset = 0;
            queue.empty = true;
            queue.last_entry_end = None;
        }
        Ok((queue, state))
    }

    /// With the files known continuous and the last at `last` holding `len` bytes: if they
    /// reach `max` (the checkpoint's word that offsets below it are on disk and vouched for),
    /// cuts the last file there without reading it and says so; otherwise leaves everything.
    async fn cut_unread(&mut self, last: u64, len: u64, max: u64) -> io::Result<bool> {
        let held_to = last + len / CQ_ENTRY_BYTES as u64;
        let Some(&first) = self.files.first() else {
            return Ok(false);
        };
        if max <= last || max > held_to || max <= first {
            return Ok(false);
        }
        let keep_bytes = (max - last) * CQ_ENTRY_BYTES as u64;
        if keep_bytes != len {
            let file = self.file(last, Access::Existing).await?;
            file.set_len(keep_bytes).await?;
            file.sync_data().await?;
        }
        self.written = max;
        self.min_offset = first;
        self.empty = false;
        Ok(true)
    }

    /// Its file starting at `first`, through the cache.
    async fn file(&self, first: u64, access: Access) -> io::Result<File> {
        let dir = &self.dir;
        self.cache
            .get((self.owner, first), || dir.join(file_name(first)), access)
            .await
    }

    /// Deletes its file starting at `first` (closing it first).
    fn remove_file(&mut self, first: u64) -> io::Result<()> {
        self.files.remove(&first);
        self.cache.forget((self.owner, first));
        std::fs::remove_file(self.dir.join(file_name(first)))
    }

    /// Closes every file it has open (before they are deleted with its directory).
    pub(crate) fn close_files(&self) {
        self.cache.forget_owner(self.owner);
    }

    /// One past the last offset: the next message of the queue gets this offset.
    pub(crate) fn max_offset(&self) -> u64 {
        self.written + self.unwritten.len() as u64
    }

    /// The lowest offset still readable.
    pub(crate) fn min_offset(&self) -> u64 {
        self.min_offset
    }

    /// Whether the queue has never had an entry (since its index was last emptied).
    pub(crate) fn is_empty(&self) -> bool {
        self.empty
    }

    /// Log position just past the record of the last entry, if there is an entry.
    pub(crate) fn last_entry_end(&self) -> Option<u64> {
        self.last_entry_end
    }

    /// Gives a queue without entries its offsets: the next message gets `offset` (a queue whose
    /// records are all gone from the log, restored from the index checkpoint).
    pub(crate) fn position_at(&mut self, offset: u64) {
        assert!(
            self.empty,
            "positioning a queue that has entries: {:?} at {offset}",
            self.dir
        );
        self.empty = false;
        self.written = offset;
        self.min_offset = offset;
    }

    /// Appends the entry for `offset`, which must be [`Self::max_offset`] (or anything, for a
    /// queue without entries, whose offsets then start there).
    pub(crate) fn push(&mut self, offset: u64, entry: CqEntry) -> Result<(), u64> {
        if self.empty {
            self.empty = false;
            self.written = offset;
            self.min_offset = offset;
        }
        if offset != self.max_offset() {
            return Err(self.max_offset());
        }
        self.unwritten.push_back(entry);
        self.last_entry_end = Some(entry.end());
        Ok(())
    }

    /// Entries still in memory.
    pub(crate) fn unwritten_len(&self) -> usize {
        self.unwritten.len()
    }

    /// The first offset of the file holding `offset`.
    fn file_for(&self, offset: u64) -> Option<u64> {
        self.files.last_at_or_below(offset)
    }

    /// First offset past the file that starts at `first`.
    fn file_end(&self, first: u64) -> u64 {
        first - first % self.file_entries + self.file_entries
    }

    /// What a read of entries `[from, from + count)` needs from files, before any I/O:
    /// `(file's first offset, index in file, count)` pieces, and the entries from memory.
    fn plan_read(&self, from: u64, count: usize) -> (Vec<(u64, u64, usize)>, Vec<CqEntry>) {
        let from = from.max(self.min_offset);
        let to = (from + count as u64).min(self.max_offset());
        let mut pieces = Vec::new();
        let mut to = to;
        let mut at = from;
        while at < to.min(self.written) {
            match self.file_for(at) {
                Some(first) if self.file_end(first) > at => {
                    let upto = to.min(self.written).min(self.file_end(first));
                    pieces.push((first, at - first, (upto - at) as usize));
                    at = upto;
                }
                // A file is missing: stop before the hole, so offsets stay right.
                _ => {
                    to = at;
                    break;
                }
            }
        }
        let memory_from = from.max(self.written);
        let memory = if memory_from < to {
            let skip = (memory_from - self.written) as usize;
            self.unwritten
                .iter()
                .skip(skip)
                .take((to - memory_from) as usize)
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        (pieces, memory)
    }

    /// Takes what `write_pending` should write next: the file (created if needed), its first
    /// offset, the index in it, and the entries; marks the write in flight.
    async fn next_write(
        cell: &std::cell::RefCell<ConsumeQueue>,
    ) -> io::Result<Option<(File, u64, u64, Vec<CqEntry>)>> {
        let (first, new, cache, owner, dir) = {
            let mut q = cell.borrow_mut();
            if q.writing || q.unwritten.is_empty() {
                return Ok(None);
            }
            q.writing = true;
            let at = q.written;
            let (first, new) = match q.file_for(at) {
                Some(first) if at < q.file_end(first) => (first, false),
                _ => (at, true),
            };
            (first, new, Rc::clone(&q.cache), q.owner, q.dir.clone())
        };
        let access = if new {
            Access::Create
        } else {
            Access::Existing
        };
        let file = match cache
            .get((owner, first), || dir.join(file_name(first)), access)
            .await
        {
            Ok(file) => file,
            Err(e) => {
                cell.borrow_mut().writing = false;
                return Err(e);
            }
        };
        let mut q = cell.borrow_mut();
        if new && q.files.insert(first) {
            q.created_file = true;
        }
        let at = q.written;
        let room = (q.file_end(first) - at) as usize;
        let entries: Vec<CqEntry> = q.unwritten.iter().take(room).copied().collect();
        Ok(Some((file, first, at - first, entries)))
    }

    /// Writes the entries held in memory to files. Entries pushed meanwhile wait for the next
    /// call. Readers see written entries in memory until the write completes.
    pub(crate) async fn write_pending(cell: &std::cell::RefCell<ConsumeQueue>) -> io::Result<()> {
        while let Some((file, first, index, entries)) = ConsumeQueue::next_write(cell).await? {
            let mut handle = &file;
            let compio::BufResult(result, _) = handle
                .write_all_at(entries.as_bytes().to_vec(), index * CQ_ENTRY_BYTES as u64)
                .await;
            let mut q = cell.borrow_mut();
            q.writing = false;
            result?;
            q.written += entries.len() as u64;
            q.unwritten.drain(..entries.len());
            // A burst's room is not kept by a queue that goes idle (thousands of them would
            // hold megabytes for nothing).
            if q.unwritten.is_empty() && q.unwritten.capacity() > UNWRITTEN_KEPT_ENTRIES {
                q.unwritten = VecDeque::new();
            }
            q.unsynced.insert(first);
        }
        Ok(())
    }

    /// Files written since the last call (by first offset), to be synced by the caller, and
    /// the index's directory if a file was created in it meanwhile (its entry to be synced too).
    pub(crate) fn take_unsynced(&mut self) -> (Vec<u64>, Option<PathBuf>) {
        let dir = std::mem::take(&mut self.created_file).then(|| self.dir.clone());
        (
            std::mem::take(&mut self.unsynced).into_iter().collect(),
            dir,
        )
    }

    /// Syncs the file starting at `first`, if it still exists (retention may have given it
    /// up). A descriptor opened after the write flushes the same file's pages.
    pub(crate) async fn sync_file(
        cell: &std::cell::RefCell<ConsumeQueue>,
        first: u64,
    ) -> io::Result<()> {
        let (cache, owner, dir, held) = {
            let q = cell.borrow();
            (
                Rc::clone(&q.cache),
                q.owner,
                q.dir.clone(),
                q.files.contains(&first),
            )
        };
        if !held {
            return Ok(());
        }
        let file = cache
            .get(
                (owner, first),
                || dir.join(file_name(first)),
                Access::Existing,
            )
            .await?;
        file.sync_data().await
    }

    /// Reads up to `count` entries from `from` (clamped to what exists).
    pub(crate) async fn entries(
        cell: &std::cell::RefCell<ConsumeQueue>,
        from: u64,
        count: usize,
    ) -> io::Result<Vec<CqEntry>> {
        let (pieces, memory, cache, owner, dir) = {
            let q = cell.borrow();
            let (pieces, memory) = q.plan_read(from, count);
            (pieces, memory, Rc::clone(&q.cache), q.owner, q.dir.clone())
        };
        let mut out = Vec::with_capacity(count);
        for (first, index, n) in pieces {
            let file = cache
                .get(
                    (owner, first),
                    || dir.join(file_name(first)),
                    Access::Existing,
                )
                .await?;
            out.extend(read_entries(&file, index, n).await?);
        }
        out.extend(memory);
        Ok(out)
    }

    /// Raises the minimum offset past entries whose records are below `log_start`, and gives up
    /// files holding only such entries (never the last file, which keeps the queue's offsets).
    /// Returns their paths: the caller deletes them once an index checkpoint with the new
    /// minimum is durable, so that the files on disk never start after what it vouches for.
    pub(crate) async fn retire_below(
        cell: &std::cell::RefCell<ConsumeQueue>,
        log_start: u64,
    ) -> io::Result<Vec<PathBuf>> {
        // Binary search for the first offset whose record is at or after `log_start`.
        let (mut lo, mut hi) = {
            let q = cell.borrow();
            (q.min_offset, q.max_offset())
        };
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let entry = ConsumeQueue::entries(cell, mid, 1).await?;
            match entry.first() {
                Some(e) if e.log_pos.get() < log_start => lo = mid + 1,
                _ => hi = mid,
            }
        }
        let doomed: Vec<u64> = {
            let mut q = cell.borrow_mut();
            q.min_offset = q.min_offset.max(lo);
            let last = q.files.last().copied();
            let doomed: Vec<u64> = q
                .files
                .iter()
                .copied()
                .filter(|&f| Some(f) != last && q.file_end(f) <= lo)
                .collect();
            for first in &doomed {
                q.files.remove(first);
                q.unsynced.remove(first);
                q.cache.forget((q.owner, *first));
            }
            doomed
        };
        let dir = cell.borrow().dir.clone();
        Ok(doomed
            .into_iter()
            .map(|first| dir.join(file_name(first)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn cache() -> Rc<FileCache> {
        Rc::new(FileCache::new(64))
    }

    fn entry(i: u64) -> CqEntry {
        CqEntry::new(1000 + i * 200, 100 + (i % 50) as u32, i * 7)
    }

    #[test]
    fn valid_prefix_stops_at_the_first_bad_entry() {
        let entries: Vec<CqEntry> = (0..10).map(entry).collect();
        let mut bytes = entries.as_bytes().to_vec();
        assert_eq!(valid_prefix(&bytes, 1 << 20, 0), 10);
        bytes.truncate(bytes.len() - 3);
        assert_eq!(valid_prefix(&bytes, 1 << 20, 0), 9, "a torn last entry");
        let mut backwards = entries.clone();
        backwards[5] = CqEntry::new(10, 100, 0);
        assert_eq!(valid_prefix(backwards.as_bytes(), 1 << 20, 0), 5);
        let mut tiny = entries.clone();
        tiny[3] = CqEntry::new(1600, 3, 0);
        assert_eq!(valid_prefix(tiny.as_bytes(), 1 << 20, 0), 3);
        assert_eq!(
            valid_prefix(&[0u8; 100], 1 << 20, 0),
            0,
            "zeroes are not entries"
        );
    }

    #[compio::test]
    async fn entries_cross_files_and_memory_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let q = RefCell::new(
            ConsumeQueue::open(dir.path(), 8, 1 << 20, u64::MAX, None, &cache())
                .await
                .unwrap()
                .0,
        );
        for i in 0..20 {
            q.borrow_mut().push(i, entry(i)).unwrap();
        }
        assert_eq!(
            q.borrow_mut().push(30, entry(30)),
            Err(20),
            "offsets must follow on"
        );
        ConsumeQueue::write_pending(&q).await.unwrap();
        for i in 20..25 {
            q.borrow_mut().push(i, entry(i)).unwrap();
        }
        // 0..20 in three files (8 + 8 + 4), 20..25 in memory.
        let got = ConsumeQueue::entries(&q, 5, 100).await.unwrap();
        assert_eq!(got, (5..25).map(entry).collect::<Vec<_>>());
        ConsumeQueue::write_pending(&q).await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
        drop(q);
        let q = RefCell::new(
            ConsumeQueue::open(dir.path(), 8, 1 << 20, u64::MAX, None, &cache())
                .await
                .unwrap()
                .0,
        );
        assert_eq!(q.borrow().max_offset(), 25);
        assert_eq!(
            ConsumeQueue::entries(&q, 0, 100).await.unwrap(),
            (0..25).map(entry).collect::<Vec<_>>()
        );
    }

    #[compio::test]
    async fn opening_keeps_only_what_the_checkpoint_vouches_for() {
        let dir = tempfile::tempdir().unwrap();
        let q = RefCell::new(
            ConsumeQueue::open(dir.path(), 8, 1 << 20, u64::MAX, None, &cache())
                .await
                .unwrap()
                .0,
        );
        for i in 0..20 {
            q.borrow_mut().push(i, entry(i)).unwrap();
        }
        ConsumeQueue::write_pending(&q).await.unwrap();
        drop(q);
        // Entry 12 starts at 3400: keep records starting below it.
        let q = RefCell::new(
            ConsumeQueue::open(dir.path(), 8, 1 << 20, 3400, None, &cache())
                .await
                .unwrap()
                .0,
        );
        assert_eq!(q.borrow().max_offset(), 12);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "the third file went"
        );
        drop(q);
        // Nothing vouched for: the queue is empty and takes its start from the next push.
        let q = RefCell::new(
            ConsumeQueue::open(dir.path(), 8, 1 << 20, 0, None, &cache())
                .await
                .unwrap()
                .0,
        );
        assert!(q.borrow().is_empty());
        q.borrow_mut().push(40, entry(40)).unwrap();
        assert_eq!((q.borrow().min_offset(), q.borrow().max_offset()), (40, 41));
    }

    #[compio::test]
    async fn a_torn_tail_entry_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let q = RefCell::new(
            ConsumeQueue::open(dir.path(), 100, 1 << 20, u64::MAX, None, &cache())
                .await
                .unwrap()
                .0,
        );
        for i in 0..10 {
            q.borrow_mut().push(i, entry(i)).unwrap();
        }
        ConsumeQueue::write_pending(&q).await.unwrap();
        drop(q);
        let path = dir.path().join(file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 7);
        std::fs::write(&path, bytes).unwrap();
        let q = RefCell::new(
            ConsumeQueue::open(dir.path(), 100, 1 << 20, u64::MAX, None, &cache())
                .await
                .unwrap()
                .0,
        );
        assert_eq!(q.borrow().max_offset(), 9);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            9 * CQ_ENTRY_BYTES as u64
        );
    }

    #[compio::test]
    async fn retiring_moves_the_minimum_and_deletes_whole_files_but_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let q = RefCell::new(
            ConsumeQueue::open(dir.path(), 8, 1 << 20, u64::MAX, None, &cache())
                .await
                .unwrap()
                .0,
        );
        for i in 0..20 {
            q.borrow_mut().push(i, entry(i)).unwrap();
        }
        ConsumeQueue::write_pending(&q).await.unwrap();
        // Records of entries 0..=9 are gone (entry 10 starts at 3000).
        let doomed = ConsumeQueue::retire_below(&q, 3000).await.unwrap();
        assert_eq!(q.borrow().min_offset(), 10);
        assert_eq!(
            doomed,
            vec![dir.path().join(file_name(0))],
            "file 0..8 given up"
        );
        assert_eq!(
            ConsumeQueue::entries(&q, 0, 3).await.unwrap(),
            (10..13).map(entry).collect::<Vec<_>>()
        );
        // Everything gone: the last file stays so the offsets are kept.
        let doomed = ConsumeQueue::retire_below(&q, 1 << 40).await.unwrap();
        assert_eq!((q.borrow().min_offset(), q.borrow().max_offset()), (20, 20));
        assert_eq!(doomed, vec![dir.path().join(file_name(8))]);
    }
}
