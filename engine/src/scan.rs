//! Finding the end of valid data: the pure core of recovery, free of I/O so it can be fuzzed.
//!
//! A scan walks records from a known-good position. A record counts only if its header is
//! sane, it leaves room for a padding header before the segment end, its CRC matches, it claims
//! the position it was found at, and its generation is not below the previous record's. The
//! first position where any of that fails is where the log ends; everything from there on is a
//! torn tail (the CRC or the header failed) or a stale one (an intact record of an earlier life
//! of the file) and is never served.

use crate::record::{self, HEADER_BYTES, RecordError, RecordHeader, RecordKind};

/// Progress of a scan across windows of one or more segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanState {
    /// Next position to examine; a record boundary.
    pub pos: u64,
    /// Generation of the last valid record; the next may not be lower.
    pub generation_floor: u32,
    /// Highest generation seen.
    pub max_generation: u32,
    /// Valid message records seen.
    pub records: u64,
    /// Largest store timestamp seen.
    pub max_store_timestamp_ms: u64,
}

impl ScanState {
    /// A scan starting at `pos`, a record boundary.
    pub fn new(pos: u64) -> ScanState {
        ScanState {
            pos,
            generation_floor: 0,
            max_generation: 0,
            records: 0,
            max_store_timestamp_ms: 0,
        }
    }
}

/// Why the data at a position is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TailError {
    /// The header or the record is malformed, or its CRC does not match.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// An intact record that claims another position: left from an earlier life of a recycled
    /// segment.
    #[error("intact record of position {claimed} found at {found}")]
    StalePosition {
        /// The position the record claims.
        claimed: u64,
        /// Where it was found.
        found: u64,
    },
    /// An intact record of an older writer: stale bytes beyond an earlier truncation.
    #[error("stale record of generation {found} after generation {floor}")]
    StaleGeneration {
        /// The record's generation.
        found: u32,
        /// The previous record's generation.
        floor: u32,
    },
    /// A message that would leave no room for the padding header before the segment end, or a
    /// padding record that does not reach it.
    #[error("record does not fit the segment layout")]
    BadPlacement,
}

/// How a scan over a window stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStep {
    /// Reached the segment end through a valid padding record (or exactly at it).
    SegmentEnd,
    /// The window ends inside the record at `state.pos`; scan again from there with more bytes.
    NeedMore,
    /// The log ends at `state.pos` for this reason.
    End(TailError),
}

/// Scans `window`, the bytes of the log starting at position `window_pos`, in the segment that
/// ends at `segment_end`, from `state.pos` on. `max_record_bytes` bounds message lengths.
/// Calls `on_record` for every valid message. The window must not extend past `segment_end`.
pub fn scan_window(
    window: &[u8],
    window_pos: u64,
    segment_end: u64,
    max_record_bytes: usize,
    state: &mut ScanState,
    on_record: &mut dyn FnMut(u64, &RecordHeader),
) -> ScanStep {
    let window_end = window_pos + window.len() as u64;
    assert!(
        window_end <= segment_end,
        "scan window extends past its segment"
    );
    assert!(
        window_pos <= state.pos && state.pos <= window_end,
        "scan position outside its window"
    );
    let window_reaches_segment_end = window_end == segment_end;
    loop {
        let pos = state.pos;
        if pos == segment_end {
            return ScanStep::SegmentEnd;
        }
        let remaining = (segment_end - pos) as usize;
        let available = &window[(pos - window_pos) as usize..];
        let header = match RecordHeader::parse_unplaced(available, remaining) {
            Ok(header) => header,
            Err(RecordError::Truncated { .. }) if !window_reaches_segment_end => {
                return ScanStep::NeedMore;
            }
            Err(e) => return ScanStep::End(e.into()),
        };
        let len = header.len();
        let is_padding = header.kind() == Some(RecordKind::Padding);
        if !is_padding && (len > max_record_bytes || len + HEADER_BYTES > remaining) {
            return ScanStep::End(TailError::BadPlacement);
        }
        let needed = if is_padding { HEADER_BYTES } else { len };
        if available.len() < needed {
            // `needed` fits the segment, so a window reaching the segment end holds it.
            debug_assert!(!window_reaches_segment_end);
            return ScanStep::NeedMore;
        }
        // Intact or not decides torn versus stale, so the CRC comes before position and age.
        if let Err(e) = header.verify_crc(available) {
            return ScanStep::End(e.into());
        }
        if header.log_pos.get() != pos {
            return ScanStep::End(TailError::StalePosition {
                claimed: header.log_pos.get(),
                found: pos,
            });
        }
        if header.generation.get() < state.generation_floor {
            return ScanStep::End(TailError::StaleGeneration {
                found: header.generation.get(),
                floor: state.generation_floor,
            });
        }
        if is_padding && len != remaining {
            return ScanStep::End(TailError::BadPlacement);
        }
        let generation = header.generation.get();
        state.generation_floor = generation;
        state.max_generation = state.max_generation.max(generation);
        if is_padding {
            state.pos = segment_end;
            return ScanStep::SegmentEnd;
        }
        state.records += 1;
        state.max_store_timestamp_ms = state
            .max_store_timestamp_ms
            .max(header.store_timestamp_ms.get());
        on_record(pos, header);
        state.pos = pos + len as u64;
    }
}

/// Scans a whole segment held in memory (its bytes start at `segment_base`) from `start`:
/// what recovery does over a file, for tests and fuzzing.
pub fn scan_segment(
    segment: &[u8],
    segment_base: u64,
    start: u64,
    max_record_bytes: usize,
) -> (ScanState, ScanStep) {
    let mut state = ScanState::new(start);
    let end = segment_base + segment.len() as u64;
    let step = scan_window(
        segment,
        segment_base,
        end,
        max_record_bytes,
        &mut state,
        &mut |_, _| {},
    );
    debug_assert_ne!(step, ScanStep::NeedMore);
    (state, step)
}

/// Decodes the record at the start of `bytes` as recovery would accept it at `pos`; the
/// entry point of the record-decoder fuzz target.
pub fn check_record(bytes: &[u8], pos: u64, max_record_bytes: usize) -> Result<usize, RecordError> {
    record::decode(bytes, pos, max_record_bytes).map(|(_, len)| len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{NewRecord, padding_header};
    use zerocopy::IntoBytes;

    const SEGMENT: usize = 4096;

    /// A segment of `n` records of growing bodies, each of generation `generation`, padded.
    fn segment_with(n: usize, generation: u32) -> (Vec<u8>, Vec<u64>) {
        let mut seg = vec![0u8; SEGMENT];
        let mut positions = Vec::new();
        let mut pos = 0usize;
        for i in 0..n {
            let body = vec![i as u8; 10 + i * 7];
            let rec = NewRecord {
                topic: b"t",
                queue_offset: i as u64,
                body: &body,
                ..NewRecord::default()
            }
            .encode(pos as u64, generation, 100 + i as u64);
            seg[pos..pos + rec.len()].copy_from_slice(&rec);
            positions.push(pos as u64);
            pos += rec.len();
        }
        let pad = padding_header(SEGMENT - pos, pos as u64, generation);
        seg[pos..pos + HEADER_BYTES].copy_from_slice(pad.as_bytes());
        positions.push(pos as u64);
        (seg, positions)
    }

    #[test]
    fn a_complete_segment_scans_to_its_end() {
        let (seg, positions) = segment_with(5, 3);
        let (state, step) = scan_segment(&seg, 0, 0, SEGMENT);
        assert_eq!(step, ScanStep::SegmentEnd);
        assert_eq!(state.records, 5);
        assert_eq!(state.pos, SEGMENT as u64);
        assert_eq!(state.max_store_timestamp_ms, 104);
        assert_eq!(positions.len(), 6);
    }

    #[test]
    fn zeroing_from_every_byte_of_the_last_records_truncates_to_a_boundary() {
        let (seg, positions) = segment_with(4, 1);
        // Each record's extent; the padding counts up to the end of its header.
        let mut extents: Vec<(u64, u64)> = positions.windows(2).map(|w| (w[0], w[1])).collect();
        let pad = *positions.last().unwrap();
        extents.push((pad, pad + HEADER_BYTES as u64));
        for cut in positions[1] as usize..SEGMENT {
            let mut torn = seg.clone();
            torn[cut..].fill(0);
            let (state, step) = scan_segment(&torn, 0, 0, SEGMENT);
            // The log must end at the first record whose bytes the cut changed.
            let damaged = extents
                .iter()
                .find(|&&(s, e)| seg[s as usize..e as usize] != torn[s as usize..e as usize]);
            match damaged {
                Some(&(start, _)) => {
                    assert_eq!(state.pos, start, "cut at {cut}");
                    assert!(matches!(step, ScanStep::End(_)), "cut at {cut}");
                }
                None => assert_eq!(step, ScanStep::SegmentEnd, "cut at {cut}"),
            }
        }
    }

    #[test]
    fn a_stale_record_after_a_newer_one_ends_the_log() {
        let (old, positions) = segment_with(4, 1);
        // A newer writer rewrote the first two records with the same lengths.
        let (new, _) = segment_with(2, 2);
        let mut seg = old.clone();
        let second_end = positions[2] as usize;
        seg[..second_end].copy_from_slice(&new[..second_end]);
        let (state, step) = scan_segment(&seg, 0, 0, SEGMENT);
        assert_eq!(state.pos, positions[2]);
        assert_eq!(
            step,
            ScanStep::End(TailError::StaleGeneration { found: 1, floor: 2 })
        );
    }

    #[test]
    fn a_window_ending_inside_a_record_asks_for_more() {
        let (seg, positions) = segment_with(3, 1);
        let mut state = ScanState::new(0);
        let cut = positions[1] as usize + 5;
        let step = scan_window(
            &seg[..cut],
            0,
            SEGMENT as u64,
            SEGMENT,
            &mut state,
            &mut |_, _| {},
        );
        assert_eq!(step, ScanStep::NeedMore);
        assert_eq!(state.pos, positions[1]);
        let step = scan_window(
            &seg[positions[1] as usize..],
            positions[1],
            SEGMENT as u64,
            SEGMENT,
            &mut state,
            &mut |_, _| {},
        );
        assert_eq!(step, ScanStep::SegmentEnd);
        assert_eq!(state.records, 3);
    }
}
