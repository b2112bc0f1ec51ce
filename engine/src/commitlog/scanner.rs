//! Reading the log front to back: what rebuilding an index after a crash needs. Reads large
//! windows (from memory or through io_uring) and hands out each record as a zero-copy slice
//! of its window, verified, skipping segment padding.

use bytes::Bytes;

use super::CommitLog;
use crate::error::ReadError;
use crate::record::{HEADER_BYTES, Record, RecordError, RecordHeader, RecordKind};

/// Bytes read per window (at least one record).
const SCAN_WINDOW_BYTES: usize = 4 << 20;

/// Yields the records of a log from a position up to the readable end at the time it was made.
pub struct LogScanner {
    log: CommitLog,
    pos: u64,
    end: u64,
    window: Bytes,
    window_pos: u64,
}

impl CommitLog {
    /// Records from `from` (a record boundary) to the end readable now, in log order.
    pub fn scan(&self, from: u64) -> LogScanner {
        LogScanner {
            log: self.clone(),
            pos: from,
            end: self.positions().readable,
            window: Bytes::new(),
            window_pos: from,
        }
    }
}

/// Whether the bytes a scanner needs can be had.
enum Filled {
    Yes,
    /// They lie past the readable end: the scan is over for now.
    NotYetReadable,
}

impl LogScanner {
    /// Position of the next record.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next message record, or `None` at the readable end. A record that fails
    /// verification is an error, never returned.
    pub async fn next(&mut self) -> Result<Option<Record>, ReadError> {
        let seg_bytes = self.log.config().segment_bytes;
        let max_record = self.log.config().max_record_bytes as usize;
        loop {
            if self.pos >= self.end {
                return Ok(None);
            }
            let seg_end = self.pos - self.pos % seg_bytes + seg_bytes;
            if let Filled::NotYetReadable = self.fill(HEADER_BYTES, seg_end).await? {
                return Ok(None);
            }
            let pos = self.pos;
            let corrupt = |error| ReadError::Corrupt { pos, error };
            let (kind, len) = RecordHeader::parse(self.available(), pos, (seg_end - pos) as usize)
                .map(|h| (h.kind(), h.len()))
                .map_err(corrupt)?;
            if kind == Some(RecordKind::Padding) {
                self.pos = seg_end;
                continue;
            }
            if len > max_record {
                return Err(corrupt(RecordError::BadLength(
                    "record longer than max_record_bytes",
                )));
            }
            if let Filled::NotYetReadable = self.fill(len, seg_end).await? {
                return Ok(None);
            }
            let offset = (pos - self.window_pos) as usize;
            let record =
                Record::parse(self.window.slice(offset..offset + len), pos).map_err(corrupt)?;
            self.pos += len as u64;
            return Ok(Some(record));
        }
    }

    /// The window's bytes from the scan position on.
    fn available(&self) -> &[u8] {
        match self.pos.checked_sub(self.window_pos) {
            Some(offset) if (offset as usize) < self.window.len() => {
                &self.window[offset as usize..]
            }
            _ => &[],
        }
    }

    /// Makes the window hold `want` bytes from the scan position, reading a new window if
    /// needed; the bytes must lie before `seg_end`.
    async fn fill(&mut self, want: usize, seg_end: u64) -> Result<Filled, ReadError> {
        if self.available().len() >= want {
            return Ok(Filled::Yes);
        }
        if self.pos + want as u64 > seg_end {
            return Err(ReadError::Corrupt {
                pos: self.pos,
                error: RecordError::Truncated {
                    needed: want,
                    available: (seg_end - self.pos) as usize,
                },
            });
        }
        if self.pos + want as u64 > self.end {
            return Ok(Filled::NotYetReadable);
        }
        let limit = (seg_end.min(self.end) - self.pos) as usize;
        let len = want.max(SCAN_WINDOW_BYTES).min(limit);
        self.window = self.log.read(self.pos, len).await?;
        self.window_pos = self.pos;
        Ok(Filled::Yes)
    }
}
