//! Page-aligned memory chunks: the log's write buffer and its cache of fresh data in one.
//!
//! A chunk covers a fixed, chunk-aligned range of log positions. Appends copy records into the
//! tail chunk front to back; writes hand page-aligned ranges of it to the kernel (direct I/O
//! needs aligned memory); readers get zero-copy [`Bytes`] of its filled part, which stays valid
//! after the chunk leaves the cache. Freed memory goes back to a pool, because page-faulting a
//! fresh MiB for every MiB appended would cost more than the copy itself.
//!
//! Invariant that makes the sharing sound: bytes below a chunk's `filled` mark are never
//! written again, and only the single owning thread writes at or above it. Readers only ever
//! see ranges below `filled`.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::config::PAGE_BYTES;

/// Chunks kept for reuse beyond those in use.
const POOL_FREE_CHUNKS_MAX: usize = 8;

/// Anonymous memory mapped straight from the kernel: page-aligned for direct I/O, zeroed, and
/// returned to the kernel when dropped. Not from the global allocator: glibc serves repeated
/// 1 MiB allocations from its heap once one is freed and keeps what is freed, which made a
/// log's resident memory grow to seven times its live chunks (BENCHMARKS.md, "Memory").
struct AlignedMem {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedMem is a uniquely owned mapping; sharing rules are enforced by Chunk.
unsafe impl Send for AlignedMem {}
// SAFETY: as above; &AlignedMem only exposes the raw pointer.
unsafe impl Sync for AlignedMem {}

impl AlignedMem {
    fn new_zeroed(len: usize) -> AlignedMem {
        assert!(
            len > 0 && len.is_multiple_of(PAGE_BYTES),
            "chunk size must be whole pages"
        );
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let mapped = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        };
        match mapped.ok().and_then(|p| NonNull::new(p.cast::<u8>())) {
            Some(ptr) => AlignedMem { ptr, len },
            None => match Layout::from_size_align(len, PAGE_BYTES) {
                Ok(layout) => alloc::handle_alloc_error(layout),
                Err(_) => unreachable!("chunk sizes are valid layouts"),
            },
        }
    }
}

impl Drop for AlignedMem {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in new_zeroed with this length and nothing refers
        // to it any more (the last SharedMem holding it is being dropped).
        let unmapped = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        debug_assert!(unmapped.is_ok(), "munmap of a chunk failed");
    }
}

/// Recycles chunk memory between the log and readers that hold on to it.
pub(crate) struct ChunkPool {
    chunk_bytes: usize,
    free: Mutex<Vec<AlignedMem>>,
}

impl ChunkPool {
    pub(crate) fn new(chunk_bytes: usize) -> Arc<ChunkPool> {
        Arc::new(ChunkPool {
            chunk_bytes,
            free: Mutex::new(Vec::new()),
        })
    }

    fn take(&self) -> AlignedMem {
        let reused = match self.free.lock() {
            Ok(mut free) => free.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        };
        reused.unwrap_or_else(|| AlignedMem::new_zeroed(self.chunk_bytes))
    }

    fn give(&self, mem: AlignedMem) {
        debug_assert_eq!(mem.len, self.chunk_bytes);
        let mut free = match self.free.lock() {
            Ok(free) => free,
            Err(poisoned) => poisoned.into_inner(),
        };
        if free.len() < POOL_FREE_CHUNKS_MAX {
            free.push(mem);
        }
    }
}

/// Memory of one chunk, shared by the log and by the `Bytes` handed to readers and to the
/// kernel. Returns itself to the pool when the last holder lets go.
struct SharedMem {
    mem: Option<AlignedMem>,
    pool: Arc<ChunkPool>,
}

impl SharedMem {
    fn ptr(&self) -> *mut u8 {
        match &self.mem {
            Some(mem) => mem.ptr.as_ptr(),
            None => unreachable!("chunk memory used after drop"),
        }
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        if let Some(mem) = self.mem.take() {
            self.pool.give(mem);
        }
    }
}

/// A read-only view of filled chunk bytes; the owner behind a reader's `Bytes`.
struct FilledView {
    mem: Arc<SharedMem>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for FilledView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: [start, end) lies below the chunk's filled mark when the view was made, and
        // filled bytes are never written again (module invariant). The memory lives as long
        // as `mem`.
        unsafe { std::slice::from_raw_parts(self.mem.ptr().add(self.start), self.end - self.start) }
    }
}

/// A range of chunk memory handed to the kernel for a write. It may extend past the filled
/// mark up to the end of a page (direct writes are whole pages); those trailing bytes are
/// zeroed before the write is issued and are rewritten by the next write of that page.
pub(crate) struct WriteBuf {
    mem: Arc<SharedMem>,
    start: usize,
    end: usize,
}

impl compio::buf::IoBuf for WriteBuf {
    fn as_init(&self) -> &[u8] {
        // SAFETY: the range is inside the allocation and initialised (allocated zeroed). The
        // reference lives only while the driver builds the submission entry, on the owning
        // thread, during which nothing writes to the chunk.
        unsafe { std::slice::from_raw_parts(self.mem.ptr().add(self.start), self.end - self.start) }
    }
}

/// One chunk of the log in memory.
pub(crate) struct Chunk {
    /// Log position of the chunk's first byte; a multiple of the chunk size.
    base: u64,
    mem: Arc<SharedMem>,
    len: usize,
    /// Bytes `[0, filled)` hold log data and are immutable.
    filled: usize,
    /// A `Bytes` of the whole chunk, made once the chunk is full, so reads slice it without
    /// allocating.
    sealed: Option<Bytes>,
}

impl Chunk {
    pub(crate) fn new(pool: &Arc<ChunkPool>, base: u64) -> Chunk {
        let len = pool.chunk_bytes;
        debug_assert_eq!(base % len as u64, 0, "chunk base must be chunk-aligned");
        Chunk {
            base,
            mem: Arc::new(SharedMem {
                mem: Some(pool.take()),
                pool: Arc::clone(pool),
            }),
            len,
            filled: 0,
            sealed: None,
        }
    }

    /// Log position of the first byte.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// Log position just past the last byte the chunk can hold.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.len as u64
    }

    /// Log position just past the last filled byte.
    pub(crate) fn filled_end(&self) -> u64 {
        self.base + self.filled as u64
    }

    /// Bytes still free.
    pub(crate) fn room(&self) -> usize {
        self.len - self.filled
    }

    /// Copies `data` after the filled bytes. The caller checks there is room.
    pub(crate) fn append(&mut self, data: &[u8]) {
        assert!(
            data.len() <= self.room(),
            "append beyond the end of a chunk"
        );
        // SAFETY: the destination [filled, filled + len) is inside the allocation, at or above
        // the filled mark, so no reader or in-flight view depends on it; only this thread
        // writes chunks. Source and destination cannot overlap: `data` is not chunk memory
        // at or above `filled`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.mem.ptr().add(self.filled),
                data.len(),
            );
        }
        self.filled += data.len();
        self.seal_if_full();
    }

    /// Appends `n` zero bytes.
    pub(crate) fn append_zeros(&mut self, n: usize) {
        assert!(n <= self.room(), "append beyond the end of a chunk");
        // SAFETY: as in `append`.
        unsafe { std::ptr::write_bytes(self.mem.ptr().add(self.filled), 0, n) }
        self.filled += n;
        self.seal_if_full();
    }

    fn seal_if_full(&mut self) {
        if self.filled == self.len && self.sealed.is_none() {
            self.sealed = Some(Bytes::from_owner(FilledView {
                mem: Arc::clone(&self.mem),
                start: 0,
                end: self.len,
            }));
        }
    }

    /// Zero-copy bytes of log range `[start, end)`, which must be filled.
    pub(crate) fn bytes(&self, start: u64, end: u64) -> Bytes {
        assert!(
            self.base <= start && start <= end && end <= self.filled_end(),
            "read outside filled chunk bytes"
        );
        let (s, e) = ((start - self.base) as usize, (end - self.base) as usize);
        match &self.sealed {
            Some(all) => all.slice(s..e),
            None => Bytes::from_owner(FilledView {
                mem: Arc::clone(&self.mem),
                start: s,
                end: e,
            }),
        }
    }

    /// Copies filled log range `[start, end)` into `out`.
    pub(crate) fn copy_to(&self, start: u64, end: u64, out: &mut Vec<u8>) {
        assert!(
            self.base <= start && start <= end && end <= self.filled_end(),
            "copy outside filled chunk bytes"
        );
        let (s, e) = ((start - self.base) as usize, (end - self.base) as usize);
        // SAFETY: [s, e) is filled, hence immutable (module invariant).
        let filled = unsafe { std::slice::from_raw_parts(self.mem.ptr().add(s), e - s) };
        out.extend_from_slice(filled);
    }

    /// Memory for a write of log range `[start, end)`. Bytes between the filled mark and `end`
    /// are zeroed first, so a direct write's trailing partial page carries zeros.
    pub(crate) fn write_buf(&mut self, start: u64, end: u64) -> WriteBuf {
        assert!(
            self.base <= start && start < end && end <= self.end(),
            "write outside the chunk"
        );
        let (s, e) = ((start - self.base) as usize, (end - self.base) as usize);
        if e > self.filled {
            // SAFETY: [filled, e) is inside the allocation and above the filled mark.
            unsafe { std::ptr::write_bytes(self.mem.ptr().add(self.filled), 0, e - self.filled) }
        }
        WriteBuf {
            mem: Arc::clone(&self.mem),
            start: s,
            end: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_outlive_the_chunk_and_memory_is_recycled() {
        let pool = ChunkPool::new(PAGE_BYTES);
        let mut chunk = Chunk::new(&pool, 0);
        chunk.append(b"hello ");
        let early = chunk.bytes(0, 5);
        chunk.append(b"world");
        assert_eq!(&chunk.bytes(6, 11)[..], b"world");
        drop(chunk);
        assert_eq!(&early[..], b"hello");
        assert_eq!(
            pool.free.lock().unwrap().len(),
            0,
            "memory still held by a reader"
        );
        drop(early);
        assert_eq!(pool.free.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_full_chunk_is_sealed_and_sliced() {
        let pool = ChunkPool::new(PAGE_BYTES);
        let mut chunk = Chunk::new(&pool, PAGE_BYTES as u64);
        chunk.append(&[7u8; 100]);
        chunk.append_zeros(PAGE_BYTES - 100);
        assert_eq!(chunk.room(), 0);
        let b = chunk.bytes(PAGE_BYTES as u64 + 90, PAGE_BYTES as u64 + 110);
        assert_eq!(&b[..10], &[7u8; 10]);
        assert_eq!(&b[10..], &[0u8; 10]);
    }

    #[test]
    fn write_buffers_zero_the_unfilled_tail() {
        let pool = ChunkPool::new(PAGE_BYTES);
        let mut chunk = Chunk::new(&pool, 0);
        chunk.append(&[0xFFu8; PAGE_BYTES]);
        drop(chunk);
        // The recycled memory still holds 0xFF beyond what the new chunk fills.
        let mut chunk = Chunk::new(&pool, 0);
        chunk.append(b"abc");
        let buf = chunk.write_buf(0, PAGE_BYTES as u64);
        let bytes = compio::buf::IoBuf::as_init(&buf);
        assert_eq!(&bytes[..3], b"abc");
        assert!(bytes[3..].iter().all(|&b| b == 0));
    }
}
