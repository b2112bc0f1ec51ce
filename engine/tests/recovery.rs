//! Recovery on real files after damage at every byte offset of the last records: the log must
//! end exactly at the first record the damage touched, keep everything before it intact, and
//! serve nothing after it.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use quiver_engine::{CommitLog, FlushMode, IoMode, LogConfig, NewRecord, ReadError, TailKind};

const SEGMENT: u64 = 64 * 1024;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT,
        flush: FlushMode::Sync,
        io: IoMode::Direct,
        max_record_bytes: 8 * 1024,
        write_buffer_bytes: 32 * 1024,
        read_cache_bytes: 0,
        ..LogConfig::default()
    }
}

fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 131 + j * 7 + 1) as u8).collect()
}

/// A log whose last `tail_records` records follow a checkpoint (when `checkpoint_before_tail`)
/// or are covered by no checkpoint at all (a full scan). Returns the directory and every
/// record's `(pos, len)`; the tail records are the last ones.
struct Fixture {
    dir: tempfile::TempDir,
    records: Vec<(u64, u64)>,
    tail_from: usize,
}

fn build(sizes: &[usize], tail_records: usize, checkpoint_before_tail: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let runtime = compio::runtime::Runtime::new().unwrap();
    let tail_from = sizes.len() - tail_records;
    let records = runtime.block_on(async {
        let mut records = Vec::new();
        let (log, _) = CommitLog::open(dir.path(), config()).await.unwrap();
        for (i, &len) in sizes[..tail_from].iter().enumerate() {
            let at = log.append(&rec(i, &body(i, len))).await.unwrap();
            records.push((at.pos, u64::from(at.len)));
        }
        log.close().await.unwrap();
        let saved = std::fs::read(dir.path().join("checkpoint")).unwrap();
        let (log, _) = CommitLog::open(dir.path(), config()).await.unwrap();
        for (i, &len) in sizes.iter().enumerate().skip(tail_from) {
            let at = log.append(&rec(i, &body(i, len))).await.unwrap();
            records.push((at.pos, u64::from(at.len)));
        }
        log.close().await.unwrap();
        if checkpoint_before_tail {
            std::fs::write(dir.path().join("checkpoint"), saved).unwrap();
        } else {
            std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
        }
        records
    });
    Fixture {
        dir,
        records,
        tail_from,
    }
}

fn rec(i: usize, body: &[u8]) -> NewRecord<'_> {
    NewRecord {
        topic: b"t",
        queue_offset: i as u64,
        body,
        ..NewRecord::default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn segment_file(dir: &Path, pos: u64) -> PathBuf {
    dir.join(format!("{:020}", pos - pos % SEGMENT))
}

/// Overwrites the file bytes from log position `at` with `fill`, within that segment.
fn damage(dir: &Path, at: u64, fill: &[u8]) {
    let path = segment_file(dir, at);
    let mut bytes = std::fs::read(&path).unwrap();
    let offset = (at % SEGMENT) as usize;
    let end = (offset + fill.len()).min(bytes.len());
    bytes[offset..end].copy_from_slice(&fill[..end - offset]);
    std::fs::write(&path, bytes).unwrap();
}

/// Every byte range recovery checks, in log order: each record, and the header of each padding
/// that ends a segment. Padding bytes after its header are never read.
fn checked_extents(records: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut extents = Vec::new();
    for (i, &(pos, len)) in records.iter().enumerate() {
        extents.push((pos, pos + len));
        if let Some(&(next, _)) = records.get(i + 1)
            && next != pos + len
        {
            extents.push((
                pos + len,
                pos + len + quiver_engine::record::HEADER_BYTES as u64,
            ));
        }
    }
    extents
}

fn read_at(dir: &Path, pos: u64, len: u64) -> Vec<u8> {
    let bytes = std::fs::read(segment_file(dir, pos)).unwrap();
    let offset = (pos % SEGMENT) as usize;
    bytes[offset..offset + len as usize].to_vec()
}

/// Recovers a damaged copy and checks that the log ends at the first checked extent whose bytes
/// changed, that everything before is served intact and nothing after is served.
fn check_recovery(fixture: &Fixture, work: &Path) {
    let records = &fixture.records;
    let damaged = checked_extents(records).into_iter().find(|&(start, end)| {
        read_at(fixture.dir.path(), start, end - start) != read_at(work, start, end - start)
    });
    let runtime = compio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (log, report) = CommitLog::open(work, config()).await.unwrap();
        let last_end = records.last().map(|&(p, l)| p + l).unwrap();
        match damaged {
            Some((start, _)) => {
                assert_eq!(report.end, start, "damaged extent at {start}: {report}");
                // A header zeroed whole looks like space never written: a clean end.
                let header_zeroed =
                    read_at(work, start, quiver_engine::record::HEADER_BYTES as u64)
                        .iter()
                        .all(|&b| b == 0);
                let expected = if header_zeroed {
                    TailKind::Clean
                } else {
                    TailKind::Torn
                };
                assert_eq!(report.tail, expected, "damaged extent at {start}: {report}");
            }
            None => assert_eq!(report.end, last_end, "no record damaged: {report}"),
        }
        for (i, &(pos, len)) in records.iter().enumerate() {
            if pos + len <= report.end {
                let record = log
                    .read_record(pos)
                    .await
                    .unwrap_or_else(|e| panic!("record {i}: {e}"));
                assert_eq!(&record.body()[..], &body(i, record.body().len())[..]);
            } else {
                assert!(
                    matches!(log.read_record(pos).await, Err(ReadError::BeyondEnd { .. })),
                    "record {i} past the recovered end was served"
                );
            }
        }
        log.close().await.unwrap();
    });
}

fn sizes_crossing_a_segment() -> Vec<usize> {
    // 41 records of 1.5 KiB fill most of a segment; the last three straddle into the next,
    // with a padding record between them.
    let mut sizes = vec![1500; 41];
    sizes.extend([200, 17, 900]);
    sizes
}

fn every_offset_of_the_last_records(checkpoint_before_tail: bool) {
    let fixture = build(&sizes_crossing_a_segment(), 3, checkpoint_before_tail);
    let (first_pos, _) = fixture.records[fixture.tail_from];
    let (last_pos, last_len) = *fixture.records.last().unwrap();
    assert!(
        first_pos / SEGMENT == 0 && last_pos / SEGMENT == 1,
        "the tail should straddle segments 0 and 1"
    );
    let scratch = tempfile::tempdir().unwrap();
    for (n, cut) in (first_pos..last_pos + last_len).enumerate() {
        let work = scratch.path().join(n.to_string());
        copy_dir(fixture.dir.path(), &work);
        // A torn write: nothing from `cut` on reached the disk (segments are pre-written zeros).
        damage(&work, cut, &vec![0u8; (SEGMENT - cut % SEGMENT) as usize]);
        check_recovery(&fixture, &work);
        std::fs::remove_dir_all(&work).unwrap();
    }
}

#[test]
fn zeroing_from_every_offset_of_the_last_records_with_a_full_scan() {
    every_offset_of_the_last_records(false);
}

#[test]
fn zeroing_from_every_offset_of_the_last_records_after_a_checkpoint() {
    every_offset_of_the_last_records(true);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random record sizes, random damage (garbage, not just zeroes) at a random offset in the
    /// tail records, with or without a checkpoint in front of them.
    #[test]
    fn random_garbage_in_the_tail_truncates_at_the_first_damaged_record(
        sizes in proptest::collection::vec(1usize..3000, 8..40),
        tail in 1usize..6,
        checkpoint in any::<bool>(),
        cut_fraction in 0.0f64..1.0,
        garbage in proptest::collection::vec(any::<u8>(), 1..600),
    ) {
        let tail = tail.min(sizes.len() - 1);
        let fixture = build(&sizes, tail, checkpoint);
        let (first_pos, _) = fixture.records[fixture.tail_from];
        let (last_pos, last_len) = *fixture.records.last().unwrap();
        let span = last_pos + last_len - first_pos;
        let cut = first_pos + ((span as f64 * cut_fraction) as u64).min(span - 1);
        let scratch = tempfile::tempdir().unwrap();
        let work = scratch.path().join("log");
        copy_dir(fixture.dir.path(), &work);
        let room = (SEGMENT - cut % SEGMENT) as usize;
        damage(&work, cut, &garbage[..garbage.len().min(room)]);
        check_recovery(&fixture, &work);
    }
}
