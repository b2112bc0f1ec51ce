//! A shard's budget of open index files. Offset-index and key-index files are opened on demand
//! through this cache and closed, least recently used first, once more than the budget would be
//! open, as database engines keep a table-file cache: the descriptors a shard holds are bounded
//! by its budget, not by its number of queues.
//!
//! A file is named by its owner (a queue's index or the key index, each given a number by
//! [`FileCache::owner`]) and its first offset or position, so a hit allocates nothing. Opening is
//! single-flight per file: callers that ask while it is being opened wait for it. A handle given
//! out stays valid after its entry is evicted (the descriptor closes when the last handle goes),
//! so the budget can be passed by the operations in flight, never by idle files. A file that is
//! deleted must be forgotten first ([`FileCache::forget`], [`FileCache::forget_owner`]) so that
//! no descriptor of it is kept.
//!
//! Owned by one shard thread (`Rc`, `RefCell`), never shared across threads.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

use compio::fs::{File, OpenOptions};
use event_listener::Event;

/// Who owns a file (a queue's offset index, a shard's key index) and which of its files it is.
pub(crate) type FileKey = (u64, u64);

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read and write an existing file.
    Existing,
    /// Read and write, creating the file if it is missing.
    Create,
}

/// What the cache did, for tests.
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FileCacheStats {
    /// Files open in the cache now.
    pub open: usize,
    /// Opens so far (misses).
    pub opened: u64,
    /// Files closed to stay within the budget.
    pub evicted: u64,
}

/// Files opening now; callers for the same file wait on it.
struct Opening {
    done: Event,
}

/// The open index files of one shard, at most `capacity` of them.
pub(crate) struct FileCache {
    capacity: usize,
    next_owner: Cell<u64>,
    tick: Cell<u64>,
    /// Open files and the tick of their last use.
    open: RefCell<BTreeMap<FileKey, (File, u64)>>,
    /// Last-use tick → file, oldest first.
    lru: RefCell<BTreeMap<u64, FileKey>>,
    opening: RefCell<HashMap<FileKey, Rc<Opening>>>,
    opened: Cell<u64>,
    evicted: Cell<u64>,
}

impl FileCache {
    /// A cache keeping at most `capacity` files open (at least one).
    pub(crate) fn new(capacity: usize) -> FileCache {
        FileCache {
            capacity: capacity.max(1),
            next_owner: Cell::new(0),
            tick: Cell::new(0),
            open: RefCell::new(BTreeMap::new()),
            lru: RefCell::new(BTreeMap::new()),
            opening: RefCell::new(HashMap::new()),
            opened: Cell::new(0),
            evicted: Cell::new(0),
        }
    }

    /// A number for a new owner of files.
    pub(crate) fn owner(&self) -> u64 {
        let owner = self.next_owner.get();
        self.next_owner.set(owner + 1);
        owner
    }

    /// What it did so far.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> FileCacheStats {
        FileCacheStats {
            open: self.open.borrow().len(),
            opened: self.opened.get(),
            evicted: self.evicted.get(),
        }
    }

    fn touch(&self, key: FileKey) -> Option<File> {
        let mut open = self.open.borrow_mut();
        let (file, used) = open.get_mut(&key)?;
        let tick = self.tick.get() + 1;
        self.tick.set(tick);
        let mut lru = self.lru.borrow_mut();
        lru.remove(used);
        lru.insert(tick, key);
        *used = tick;
        Some(file.clone())
    }

    /// The file `key` (at `path()`, asked for only when it must be opened), opened if it is
    /// not open. Out of descriptors, it closes half of what it holds and tries once more.
    pub(crate) async fn get(
        &self,
        key: FileKey,
        path: impl FnOnce() -> PathBuf,
        access: Access,
    ) -> io::Result<File> {
        loop {
            if let Some(file) = self.touch(key) {
                return Ok(file);
            }
            let in_flight = self.opening.borrow().get(&key).cloned();
            let Some(opening) = in_flight else { break };
            let listener = opening.done.listen();
            if self.opening.borrow().contains_key(&key) {
                listener.await;
            }
        }
        let opening = Rc::new(Opening { done: Event::new() });
        self.opening.borrow_mut().insert(key, Rc::clone(&opening));
        let _done = OpeningDone {
            cache: self,
            key,
            opening: &opening,
        };
        let path = path();
        let file = match open_file(&path, access).await {
            Err(e) if out_of_descriptors(&e) && self.shrink() > 0 => {
                open_file(&path, access).await?
            }
            result => result?,
        };
        self.opened.set(self.opened.get() + 1);
        let tick = self.tick.get() + 1;
        self.tick.set(tick);
        self.open.borrow_mut().insert(key, (file.clone(), tick));
        self.lru.borrow_mut().insert(tick, key);
        self.evict_down_to(self.capacity);
        Ok(file)
    }

    /// Closes the least recently used files until at most `keep` are open.
    fn evict_down_to(&self, keep: usize) -> usize {
        let mut closed = 0;
        let mut open = self.open.borrow_mut();
        let mut lru = self.lru.borrow_mut();
        while open.len() > keep {
            let Some((_, key)) = lru.pop_first() else {
                break;
            };
            open.remove(&key);
            closed += 1;
        }
        self.evicted.set(self.evicted.get() + closed as u64);
        closed
    }

    /// Closes half of the open files (out of descriptors); returns how many.
    pub(crate) fn shrink(&self) -> usize {
        let open = self.open.borrow().len();
        self.evict_down_to(open / 2)
    }

    /// Closes `key` if it is open (its file is about to be deleted).
    pub(crate) fn forget(&self, key: FileKey) {
        if let Some((_, used)) = self.open.borrow_mut().remove(&key) {
            self.lru.borrow_mut().remove(&used);
        }
    }

    /// Closes every open file of `owner` (its files are about to be deleted).
    pub(crate) fn forget_owner(&self, owner: u64) {
        let keys: Vec<FileKey> = self
            .open
            .borrow()
            .range((owner, 0)..=(owner, u64::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            self.forget(key);
        }
    }
}

/// Ends an opening, however the opener's future ends: waiters wake and look again.
struct OpeningDone<'a> {
    cache: &'a FileCache,
    key: FileKey,
    opening: &'a Rc<Opening>,
}

impl Drop for OpeningDone<'_> {
    fn drop(&mut self) {
        let mut opening = self.cache.opening.borrow_mut();
        if opening
            .get(&self.key)
            .is_some_and(|o| Rc::ptr_eq(o, self.opening))
        {
            opening.remove(&self.key);
        }
        self.opening.done.notify(usize::MAX);
    }
}

async fn open_file(path: &std::path::Path, access: Access) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(access == Access::Create)
        .truncate(false)
        .open(path)
        .await
}

pub(crate) use crate::config::out_of_descriptors;

#[cfg(test)]
mod tests {
    use super::*;

    #[compio::test]
    async fn at_most_the_budget_stays_open_and_evicted_files_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(4);
        let owner = cache.owner();
        for i in 0..20u64 {
            let file = cache
                .get(
                    (owner, i),
                    || dir.path().join(i.to_string()),
                    Access::Create,
                )
                .await
                .unwrap();
            drop(file);
            assert!(cache.stats().open <= 4);
        }
        assert_eq!(cache.stats().evicted, 16);
        // The most recent four are hits; an evicted one opens again.
        for i in 16..20u64 {
            cache
                .get((owner, i), || unreachable!("{i} is open"), Access::Existing)
                .await
                .unwrap();
        }
        let opened = cache.stats().opened;
        cache
            .get((owner, 0), || dir.path().join("0"), Access::Existing)
            .await
            .unwrap();
        assert_eq!(cache.stats().opened, opened + 1);
        // Forgetting an owner closes its files.
        cache.forget_owner(owner);
        assert_eq!(cache.stats().open, 0);
        // A missing file is an error, not created, with Existing access.
        let missing = cache
            .get((owner, 99), || dir.path().join("99"), Access::Existing)
            .await;
        assert!(missing.is_err());
        assert!(!dir.path().join("99").exists());
    }

    #[compio::test]
    async fn concurrent_first_opens_of_one_file_open_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(8);
        let owner = cache.owner();
        let opens =
            (0..16).map(|_| cache.get((owner, 7), || dir.path().join("seven"), Access::Create));
        let files = futures_util::future::join_all(opens).await;
        assert!(files.iter().all(Result::is_ok));
        assert_eq!(cache.stats().opened, 1, "{:?}", cache.stats());
    }
}
