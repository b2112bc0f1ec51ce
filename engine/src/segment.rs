//! Segment files: naming, discovery, and preparation ahead of the writer.
//!
//! A segment is named by the log position of its first byte, 20 decimal digits as RocketMQ
//! names its CommitLog files. Segments are created at full size and pre-written with zeros (or
//! recycled from retired segments) before the writer reaches them: on this machine direct
//! writes into a freshly extended or merely fallocated file run at a third of the speed of
//! writes into a pre-written one, and every `fdatasync` after a first write into unwritten
//! extents also commits a metadata change.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use compio::buf::{IntoInner, IoBuf};
use compio::fs::{File, OpenOptions};
use compio::io::{AsyncReadAtExt, AsyncWriteAtExt};

use crate::config::{IoMode, PAGE_BYTES};

/// Suffix of a segment being prepared; such files are deleted when the log opens.
pub(crate) const PREP_SUFFIX: &str = ".prep";

/// Size of each zero-filling write while pre-writing a segment.
const PREWRITE_BYTES: usize = 256 << 10;

/// Zero-filling writes kept in flight while pre-writing at full speed.
const PREWRITE_IN_FLIGHT: usize = 4;

/// How the pre-writing of a segment should proceed, asked before each round of writes.
///
/// A device flush covers every write queued before it, so pre-writing at full speed makes
/// every flush of the log wait for megabytes of zeroes: measured here, 20 ms stalls of sync
/// appends. The log paces pre-writing to stay just ahead of its tail instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Nothing waits on the log (or an append waits on this segment): all writes in flight.
    Fast,
    /// The log is busy: one write at a time, so a flush waits for at most one.
    Slow,
    /// Far enough ahead of the tail: check again after this long.
    Pause(std::time::Duration),
    /// The log is closing: give up; the unfinished file is removed.
    Stop,
}

/// File name of the segment starting at `base`.
pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}")
}

/// The base of a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// An open segment file.
#[derive(Clone)]
pub(crate) struct Segment {
    /// Descriptor the log writes through (`O_DIRECT` in direct mode).
    pub(crate) write: File,
    /// Buffered descriptor for reads and recovery scans.
    pub(crate) read: File,
}

fn direct_flag(io: IoMode) -> i32 {
    match io {
        IoMode::Direct => libc::O_DIRECT,
        IoMode::Buffered | IoMode::Auto => 0,
    }
}

/// Opens an existing segment for writing and reading.
pub(crate) async fn open_segment(dir: &Path, base: u64, io: IoMode) -> io::Result<Segment> {
    let path = dir.join(segment_name(base));
    let write = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(direct_flag(io))
        .open(&path)
        .await?;
    let read = OpenOptions::new().read(true).open(&path).await?;
    Ok(Segment { write, read })
}

/// Reads exactly `len` bytes at `offset` into `buf` (reusing its allocation), so a buffer
/// with spare capacity is not filled beyond `len`.
pub(crate) async fn read_exact_at(
    file: &File,
    mut buf: Vec<u8>,
    len: usize,
    offset: u64,
) -> compio::BufResult<(), Vec<u8>> {
    buf.clear();
    buf.reserve(len);
    let compio::BufResult(result, slice) = file.read_exact_at(buf.slice(..len), offset).await;
    compio::BufResult(result, slice.into_inner())
}

/// Memory of zeros for pre-writing, aligned for direct I/O and shared by every log.
fn zeros() -> &'static [u8] {
    static ZEROS: OnceLock<&'static [u8]> = OnceLock::new();
    ZEROS.get_or_init(|| {
        let layout = match std::alloc::Layout::from_size_align(PREWRITE_BYTES, PAGE_BYTES) {
            Ok(layout) => layout,
            Err(_) => unreachable!("constant layout is valid"),
        };
        // SAFETY: non-zero size; the allocation is leaked on purpose and lives forever.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: ptr points to PREWRITE_BYTES zeroed bytes that are never freed or written.
        unsafe { std::slice::from_raw_parts(ptr, PREWRITE_BYTES) }
    })
}

/// Makes the directory entry changes in `dir` durable.
pub(crate) async fn sync_dir(dir: &Path) -> io::Result<()> {
    let handle = File::open(dir).await?;
    handle.sync_all().await
}

/// Creates the segment at `base` at full size: by renaming `recycled` if given (an old
/// segment, already allocated and written), otherwise by allocating and zero-filling a new
/// file, asking `pace` how fast (with the bytes filled so far). The segment appears under its
/// final name only when complete and durable. Stopping yields an `Interrupted` error.
pub(crate) async fn prepare_segment(
    dir: &Path,
    base: u64,
    segment_bytes: u64,
    recycled: Option<PathBuf>,
    pace: &dyn Fn(u64) -> Pace,
) -> io::Result<()> {
    let final_path = dir.join(segment_name(base));
    if let Some(old) = recycled {
        compio::fs::rename(&old, &final_path).await?;
        return sync_dir(dir).await;
    }
    let prep_path = dir.join(format!("{}{PREP_SUFFIX}", segment_name(base)));
    let file = match create_for_prewrite(&prep_path, true).await {
        Ok(file) => file,
        // Filesystems without O_DIRECT (tmpfs) pre-write through the page cache.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            create_for_prewrite(&prep_path, false).await?
        }
        Err(e) => return Err(e),
    };
    let result = fill_with_zeros(&file, segment_bytes, pace).await;
    if let Err(e) = result {
        drop(file);
        // Give the space back at once; a leftover would also be removed at the next open.
        let _ = compio::fs::remove_file(&prep_path).await;
        return Err(e);
    }
    file.sync_data().await?;
    drop(file);
    compio::fs::rename(&prep_path, &final_path).await?;
    sync_dir(dir).await
}

async fn create_for_prewrite(path: &Path, direct: bool) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(if direct { libc::O_DIRECT } else { 0 })
        .open(path)
        .await
}

async fn fill_with_zeros(
    file: &File,
    segment_bytes: u64,
    pace: &dyn Fn(u64) -> Pace,
) -> io::Result<()> {
    // Reserve the blocks first so a full disk fails here, not halfway through the writes.
    rustix::fs::fallocate(
        file.as_fd(),
        rustix::fs::FallocateFlags::empty(),
        0,
        segment_bytes,
    )?;
    let zeros = zeros();
    let mut next = 0u64;
    while next < segment_bytes {
        let in_flight = match pace(next) {
            Pace::Fast => PREWRITE_IN_FLIGHT,
            Pace::Slow => 1,
            Pace::Pause(wait) => {
                compio::time::sleep(wait).await;
                continue;
            }
            Pace::Stop => {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "segment preparation stopped",
                ));
            }
        };
        let mut writes = Vec::with_capacity(in_flight);
        for _ in 0..in_flight {
            if next >= segment_bytes {
                break;
            }
            let len = (segment_bytes - next).min(PREWRITE_BYTES as u64) as usize;
            let mut handle = file;
            let offset = next;
            writes.push(async move {
                let compio::BufResult(res, _) = handle.write_all_at(&zeros[..len], offset).await;
                res
            });
            next += len as u64;
        }
        for result in futures_util::future::join_all(writes).await {
            result?;
        }
    }
    Ok(())
}

/// Segment files and leftovers found in a log directory.
#[derive(Debug, Default)]
pub(crate) struct DirListing {
    /// Bases of segment files, ascending.
    pub(crate) segments: Vec<u64>,
    /// Sizes of those files, same order.
    pub(crate) sizes: Vec<u64>,
    /// Unfinished preparations to delete.
    pub(crate) leftovers: Vec<PathBuf>,
}

/// Lists `dir`.
pub(crate) fn list_dir(dir: &Path) -> io::Result<DirListing> {
    let mut listing = DirListing::default();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = parse_segment_name(name) {
            found.push((base, entry.metadata()?.len()));
        } else if name.ends_with(PREP_SUFFIX) {
            listing.leftovers.push(entry.path());
        }
    }
    found.sort_unstable();
    (listing.segments, listing.sizes) = found.into_iter().unzip();
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_twenty_digits_and_parse_back() {
        assert_eq!(segment_name(0), "00000000000000000000");
        assert_eq!(segment_name(1 << 30), "00000000001073741824");
        assert_eq!(parse_segment_name("00000000001073741824"), Some(1 << 30));
        assert_eq!(parse_segment_name("0000000000107374182"), None);
        assert_eq!(parse_segment_name("0000000000107374182x"), None);
        assert_eq!(parse_segment_name("00000000001073741824.prep"), None);
    }

    #[compio::test]
    async fn a_prepared_segment_is_full_size_zeroed_and_named() {
        let dir = tempfile::tempdir().unwrap();
        prepare_segment(dir.path(), 1 << 20, 3 << 20, None, &|_| Pace::Fast)
            .await
            .unwrap();
        let data = std::fs::read(dir.path().join(segment_name(1 << 20))).unwrap();
        assert_eq!(data.len(), 3 << 20);
        assert!(data.iter().all(|&b| b == 0));
        let listing = list_dir(dir.path()).unwrap();
        assert_eq!(listing.segments, vec![1 << 20]);
        assert!(listing.leftovers.is_empty());
    }

    #[compio::test]
    async fn stopping_removes_the_unfinished_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = prepare_segment(dir.path(), 0, 1 << 20, None, &|done| {
            if done < 512 << 10 {
                Pace::Slow
            } else {
                Pace::Stop
            }
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[compio::test]
    async fn recycling_renames_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        prepare_segment(dir.path(), 0, 1 << 20, None, &|_| Pace::Slow)
            .await
            .unwrap();
        let old = dir.path().join(segment_name(0));
        prepare_segment(dir.path(), 5 << 20, 1 << 20, Some(old.clone()), &|_| {
            Pace::Stop
        })
        .await
        .unwrap();
        assert!(!old.exists());
        assert_eq!(list_dir(dir.path()).unwrap().segments, vec![5 << 20]);
    }
}
