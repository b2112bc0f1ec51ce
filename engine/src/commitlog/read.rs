//! Reads: zero-copy from the chunks still in memory, otherwise an io_uring read of the segment
//! through its buffered descriptor. Records are verified (position, lengths, CRC) before they
//! are returned, wherever they came from.

use std::sync::Arc;

use bytes::Bytes;

use super::{CommitLog, Inner, State};
use crate::error::ReadError;
use crate::record::{HEADER_BYTES, Record, RecordHeader, RecordKind};
use crate::segment::read_exact_at;

/// Bytes read from disk when the record length is not known yet: most records fit, so one
/// read usually suffices.
const READ_AHEAD_BYTES: usize = 4096;

impl Inner {
    fn check_range(&self, st: &State, pos: u64, len: usize) -> Result<(), ReadError> {
        if pos < st.start {
            return Err(ReadError::BeforeStart {
                pos,
                start: st.start,
            });
        }
        let end = pos + len as u64;
        let readable = self.readable_end(st);
        if end > readable {
            return Err(ReadError::BeyondEnd { end, readable });
        }
        if len > 0 && self.segment_base(pos) != self.segment_base(end - 1) {
            return Err(ReadError::CrossesSegment { pos, len });
        }
        Ok(())
    }

    /// Bytes `[pos, end)` if they are all in memory: a zero-copy slice when they lie in one
    /// chunk, a copy when they cross chunks.
    fn cached(&self, st: &State, pos: u64, end: u64) -> Option<Bytes> {
        let front = st.chunks.front()?;
        let index = (pos.checked_sub(front.base())? / self.chunk_bytes as u64) as usize;
        let chunk = st.chunks.get(index)?;
        if end <= chunk.filled_end() {
            return Some(chunk.bytes(pos, end));
        }
        let mut out = Vec::with_capacity((end - pos) as usize);
        let mut at = pos;
        for chunk in st.chunks.range(index..) {
            let upto = end.min(chunk.filled_end());
            chunk.copy_to(at, upto, &mut out);
            at = upto;
            if at == end {
                return Some(Bytes::from(out));
            }
        }
        None
    }
}

impl CommitLog {
    /// Reads `len` raw bytes at `pos`. The range must lie in one segment, at or after the log
    /// start and before the readable end. The bytes are not verified; see [`Self::read_record`].
    pub async fn read(&self, pos: u64, len: usize) -> Result<Bytes, ReadError> {
        let file = {
            let st = self.inner.st.borrow();
            self.inner.check_range(&st, pos, len)?;
            if let Some(bytes) = self.inner.cached(&st, pos, pos + len as u64) {
                return Ok(bytes);
            }
            match st.segments.get(&self.inner.segment_base(pos)) {
                Some(segment) => segment.read.clone(),
                None => {
                    return Err(ReadError::BeforeStart {
                        pos,
                        start: st.start,
                    });
                }
            }
        };
        let offset = pos % self.inner.config.segment_bytes;
        let compio::BufResult(result, buf) = read_exact_at(&file, Vec::new(), len, offset).await;
        result.map_err(|e| ReadError::Io {
            pos,
            source: Arc::new(e),
        })?;
        Ok(Bytes::from(buf))
    }

    /// Reads the message record at `pos`, verified. Padding at `pos` is reported as
    /// [`ReadError::Padding`] with the position of the next segment.
    pub async fn read_record(&self, pos: u64) -> Result<Record, ReadError> {
        let (seg_end, readable) = {
            let st = self.inner.st.borrow();
            let seg_end = self.inner.segment_base(pos) + self.inner.config.segment_bytes;
            (seg_end, self.inner.readable_end(&st))
        };
        if pos >= readable {
            return Err(ReadError::BeyondEnd {
                end: pos + HEADER_BYTES as u64,
                readable,
            });
        }
        let limit = seg_end.min(readable) - pos;
        let head = self
            .read(pos, (READ_AHEAD_BYTES as u64).min(limit) as usize)
            .await?;
        let max_len = (self.inner.config.max_record_bytes).min(seg_end - pos) as usize;
        let header = RecordHeader::parse(&head, pos, max_len)
            .map_err(|error| ReadError::Corrupt { pos, error })?;
        if header.kind() == Some(RecordKind::Padding) {
            return Err(ReadError::Padding { pos, next: seg_end });
        }
        let len = header.len();
        let bytes = if len <= head.len() {
            head.slice(..len)
        } else {
            self.read(pos, len).await?
        };
        Record::parse(bytes, pos).map_err(|error| ReadError::Corrupt { pos, error })
    }

    /// Reads the message record at `pos` whose length is known (from an index), verified.
    pub async fn read_record_sized(&self, pos: u64, len: usize) -> Result<Record, ReadError> {
        let bytes = self.read(pos, len).await?;
        Record::parse(bytes, pos).map_err(|error| ReadError::Corrupt { pos, error })
    }
}

#[cfg(test)]
mod tests {
    use crate::record::Record;

    #[test]
    fn record_parse_rejects_trailing_bytes() {
        let rec = crate::NewRecord {
            topic: b"t",
            body: b"x",
            ..Default::default()
        }
        .encode(0, 1, 1);
        let mut longer = rec.clone();
        longer.push(0);
        assert!(Record::parse(longer.into(), 0).is_err());
        assert!(Record::parse(rec.into(), 0).is_ok());
    }
}
