//! Errors of the commit log. Cloneable, because one I/O failure is reported to every append
//! that was waiting on it.

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::config::ConfigError;
use crate::record::RecordError;
use crate::scan::TailError;

/// Why an append did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// The record itself is unacceptable (empty topic, over a length limit).
    #[error("record rejected: {0}")]
    Record(#[from] RecordError),
    /// A batch larger than the write buffer can never be placed.
    #[error("batch of {bytes} bytes exceeds write_buffer_bytes ({limit})")]
    BatchTooLarge {
        /// Bytes the batch needs.
        bytes: u64,
        /// The configured write buffer.
        limit: u64,
    },
    /// No space for the next segment. Appends fail until space is freed; stored data is
    /// unaffected and stays readable.
    #[error("disk full: cannot prepare segment {segment}: {source}")]
    DiskFull {
        /// Path of the segment that could not be created.
        segment: String,
        /// The underlying error (ENOSPC or EDQUOT).
        source: Arc<io::Error>,
    },
    /// An I/O operation failed.
    #[error("I/O error while {op}: {source}")]
    Io {
        /// What the log was doing.
        op: &'static str,
        /// The underlying error.
        source: Arc<io::Error>,
    },
    /// A write or flush failed earlier. What reached the disk is unknown, so the log takes no
    /// more appends; reopening it recovers to the last valid record.
    #[error("the log refuses appends after an earlier failure ({0}); reopen it to recover")]
    Failed(Arc<LogError>),
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
}

impl LogError {
    pub(crate) fn io(op: &'static str, source: io::Error) -> LogError {
        LogError::Io {
            op,
            source: Arc::new(source),
        }
    }

    pub(crate) fn preparing(segment: &Path, source: io::Error) -> LogError {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => LogError::DiskFull {
                segment: segment.display().to_string(),
                source: Arc::new(source),
            },
            Some(libc::EMFILE) | Some(libc::ENFILE) => LogError::io(
                "preparing a segment",
                io::Error::other(crate::config::report_descriptor_shortage(
                    "preparing a segment",
                )),
            ),
            _ => LogError::io("preparing a segment", source),
        }
    }
}

/// Why a read returned nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The position was retired (or never existed); the log now starts at `start`.
    #[error("position {pos} is before the start of the log ({start})")]
    BeforeStart {
        /// Position asked for.
        pos: u64,
        /// First position still stored.
        start: u64,
    },
    /// The range reaches past what readers may see (durable data in sync mode, appended
    /// data in async mode).
    #[error("range ending at {end} is beyond the readable end of the log ({readable})")]
    BeyondEnd {
        /// End of the range asked for.
        end: u64,
        /// End of readable data.
        readable: u64,
    },
    /// A range may not cross a segment boundary; records never do.
    #[error("range {pos}+{len} crosses a segment boundary")]
    CrossesSegment {
        /// Start of the range.
        pos: u64,
        /// Its length.
        len: usize,
    },
    /// The bytes at the position are not a valid record; they are not returned.
    #[error("no valid record at {pos}: {error}")]
    Corrupt {
        /// Position read.
        pos: u64,
        /// What is wrong.
        error: RecordError,
    },
    /// The position holds the padding that ends a segment; the next record is at `next`.
    #[error("position {pos} is segment padding; the next record is at {next}")]
    Padding {
        /// Position read.
        pos: u64,
        /// Start of the next segment.
        next: u64,
    },
    /// The read failed.
    #[error("I/O error reading position {pos}: {source}")]
    Io {
        /// Position read.
        pos: u64,
        /// The underlying error.
        source: Arc<io::Error>,
    },
}

/// Why a log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another process (or another open log) holds the directory.
    #[error("log directory {dir} is in use by another process")]
    Locked {
        /// The directory.
        dir: String,
    },
    /// `io = "direct"` on a filesystem without `O_DIRECT`.
    #[error("the filesystem of {dir} does not support O_DIRECT; set io = \"buffered\"")]
    DirectIoUnsupported {
        /// The directory.
        dir: String,
    },
    /// The segment files do not form a valid log.
    #[error("log directory {dir} is not a valid log: {problem}")]
    Layout {
        /// The directory.
        dir: String,
        /// What is wrong.
        problem: String,
    },
    /// The checkpoint says data was durable beyond the segments present: files are missing.
    #[error(
        "checkpoint records durable data up to {durable}, but segments end at {end}: segment files \
         are missing (delete the checkpoint file to accept the loss)"
    )]
    CheckpointAhead {
        /// Durable position in the checkpoint.
        durable: u64,
        /// End of the segments present.
        end: u64,
    },
    /// Starting the log failed on I/O.
    #[error("I/O error while {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// Preparing the first segment failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl OpenError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> OpenError {
        move |source| OpenError::Io { op, source }
    }
}

/// How recovery found the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailKind {
    /// Zeroed bytes or the end of the last segment: a clean end.
    Clean,
    /// Leftovers of an earlier life of the file (a recycled segment, or bytes past an earlier
    /// truncation): valid-looking records at the wrong position or of an older generation.
    Stale,
    /// A torn or corrupt record: a crash during a write, or damage. Truncated.
    Torn,
}

impl TailKind {
    pub(crate) fn of(error: &TailError) -> TailKind {
        match error {
            TailError::Record(RecordError::Zeroed) => TailKind::Clean,
            TailError::Record(RecordError::PositionMismatch { .. })
            | TailError::StaleGeneration { .. } => TailKind::Stale,
            _ => TailKind::Torn,
        }
    }
}
