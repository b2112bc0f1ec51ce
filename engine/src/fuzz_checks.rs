//! The properties the fuzz targets check, shared with the test that replays their corpus, so
//! CI checks every saved input with the very code the fuzzer ran. A panic is a finding.

use bytes::Bytes;
use zerocopy::FromBytes;

use crate::consumequeue::{CQ_ENTRY_BYTES, CqEntry, valid_prefix};
use crate::keyindex::KeyIndexView;
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

/// Offset-index file decoder: any bytes give a valid prefix of whole entries, each of a
/// plausible size, in increasing, non-overlapping log positions.
pub fn offset_index_decoder(data: &[u8]) {
    let max = FUZZ_MAX_RECORD_BYTES as u32;
    let n = valid_prefix(data, max, 0);
    assert!(n * CQ_ENTRY_BYTES <= data.len());
    let entries = match <[CqEntry]>::ref_from_bytes(&data[..n * CQ_ENTRY_BYTES]) {
        Ok(entries) => entries,
        Err(_) => panic!("a valid prefix is not whole entries"),
    };
    let mut prev_end = 0;
    for entry in entries {
        assert!(entry.size.get() as usize >= HEADER_BYTES && entry.size.get() <= max);
        assert!(entry.log_pos.get() >= prev_end);
        prev_end = entry.end();
    }
    // The prefix is maximal: the next whole entry, if any, is not valid after it.
    if (n + 1) * CQ_ENTRY_BYTES <= data.len() {
        assert_eq!(valid_prefix(&data[..(n + 1) * CQ_ENTRY_BYTES], max, 0), n);
    }
}

/// Key-index file decoder: any bytes are accepted or refused without panicking, and every chain
/// of an accepted file ends, after at most as many steps as there are entries.
pub fn key_index_decoder(data: &[u8]) {
    let Ok(view) = KeyIndexView::decode(data) else {
        return;
    };
    let count = view.header.entry_count.get() as usize;
    let mut hashes = vec![0u32, 1, u32::MAX];
    hashes.extend(
        data.chunks_exact(4)
            .take(64)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    for hash in hashes {
        assert!(view.lookup(hash).take(count + 1).count() <= count);
    }
}

/// Index-checkpoint decoder: any bytes are accepted or refused without panicking; an accepted
/// checkpoint encodes again to bytes that decode to the same checkpoint.
pub fn index_checkpoint_decoder(data: &[u8]) {
    use crate::store::index_checkpoint::{decode, encode};
    let Ok((sequence, checkpoint)) = decode(data) else {
        return;
    };
    let again = encode(sequence, &checkpoint);
    assert_eq!(decode(&again), Ok((sequence, checkpoint)));
}
