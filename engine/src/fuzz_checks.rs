//! The properties the fuzz targets check, shared with the test that replays their corpus, so
//! CI checks every saved input with the very code the fuzzer ran. A panic is a finding.

use bytes::Bytes;

use crate::record::{HEADER_BYTES, Record, RecordKind, decode};
use crate::scan::{ScanState, ScanStep, scan_segment, scan_window};

/// Largest record the fuzz targets accept.
pub const FUZZ_MAX_RECORD_BYTES: usize = 1 << 16;

/// Record decoder: any bytes, at any claimed position, give a verdict without panicking, and a
/// message accepted by the decoder is accepted by [`Record::parse`] with consistent parts.
pub fn record_decoder(data: &[u8]) {
    let (pos, bytes) = match data.split_first_chunk::<8>() {
        Some((pos, rest)) => (u64::from_le_bytes(*pos), rest),
        None => (0, data),
    };
    let Ok((header, len)) = decode(bytes, pos, FUZZ_MAX_RECORD_BYTES) else {
        return;
    };
    assert!(len >= HEADER_BYTES);
    if header.kind() == Some(RecordKind::Message) {
        let record = match Record::parse(Bytes::copy_from_slice(&bytes[..len]), pos) {
            Ok(record) => record,
            Err(e) => panic!("decode accepted what Record::parse rejects: {e}"),
        };
        let parts = record.topic().len()
            + record.keys().len()
            + record.properties().len()
            + record.body().len();
        assert_eq!(HEADER_BYTES + parts, record.len());
        assert_eq!(record.log_pos(), pos);
    }
}

/// Recovery over a segment: any segment image scans without panicking to a record boundary
/// inside it; scanning again from any boundary it passed reaches the same end; and scanning in
/// small windows (as recovery reads a file) agrees with scanning it whole.
pub fn segment_recovery(data: &[u8]) {
    let segment = data;
    if segment.len() < HEADER_BYTES {
        return;
    }
    let base = 0u64;
    let mut boundaries = Vec::new();
    let mut state = ScanState::new(base);
    let end = segment.len() as u64;
    let step = scan_window(
        segment,
        base,
        end,
        FUZZ_MAX_RECORD_BYTES,
        &mut state,
        &mut |pos, _| boundaries.push(pos),
    );
    assert_ne!(
        step,
        ScanStep::NeedMore,
        "a whole segment never needs more bytes"
    );
    assert!(state.pos <= end);
    if step == ScanStep::SegmentEnd {
        assert_eq!(state.pos, end);
    }
    for &from in &boundaries {
        let (again, _) = scan_segment(segment, base, from, FUZZ_MAX_RECORD_BYTES);
        assert_eq!(
            again.pos, state.pos,
            "rescanning from {from} ended elsewhere"
        );
    }
    // Windowed, as recovery reads a file: each window starts at the scan position and is
    // longer than the bytes that were not enough last time.
    const STEP: usize = 97;
    let mut windowed = ScanState::new(base);
    let (mut from, mut upto) = (0usize, STEP.min(segment.len()));
    while scan_window(
        &segment[from..upto],
        from as u64,
        end,
        FUZZ_MAX_RECORD_BYTES,
        &mut windowed,
        &mut |_, _| {},
    ) == ScanStep::NeedMore
    {
        let short = upto - windowed.pos as usize;
        from = windowed.pos as usize;
        upto = (from + short + STEP).min(segment.len());
    }
    assert_eq!(
        windowed.pos, state.pos,
        "windowed scan disagrees with a whole scan"
    );
    assert_eq!(windowed.records, state.records);
}
