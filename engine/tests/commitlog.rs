//! Behaviour of the CommitLog through its public API, on real files.

use std::path::Path;
use std::time::Duration;

use quiver_engine::record::HEADER_BYTES;
use quiver_engine::{
    CommitLog, FlushMode, IoMode, LogConfig, LogError, NewRecord, OpenError, ReadError, TailKind,
};

const SMALL_SEGMENT: u64 = 64 * 1024;

fn small_config(flush: FlushMode, io: IoMode) -> LogConfig {
    LogConfig {
        segment_bytes: SMALL_SEGMENT,
        flush,
        io,
        max_record_bytes: 8 * 1024,
        write_buffer_bytes: 32 * 1024,
        read_cache_bytes: 64 * 1024,
        flush_interval_ms: 20,
        ..LogConfig::default()
    }
}

/// Async mode whose interval timer never fires during a test: only volume or an explicit
/// request makes data durable.
fn no_timer_config() -> LogConfig {
    LogConfig {
        flush_interval_ms: 60_000,
        flush_bytes: 16 * 1024,
        ..small_config(FlushMode::Async, IoMode::Direct)
    }
}

/// Deterministic body for message `i`, of a length that varies so records straddle pages,
/// chunks and segment ends in many ways.
fn body(i: u64) -> Vec<u8> {
    let len = 50 + (i * 7919 % 3000) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn record<'a>(i: u64, body: &'a [u8], keys: &'a [u8]) -> NewRecord<'a> {
    NewRecord {
        topic: b"test-topic",
        queue_id: (i % 4) as u32,
        queue_offset: i / 4,
        born_timestamp_ms: 1_000 + i,
        tag_hash: i * 3,
        flags: 0,
        keys,
        properties: b"",
        body,
    }
}

async fn append_n(log: &CommitLog, from: u64, n: u64) -> Vec<(u64, u64)> {
    let mut placed = Vec::new();
    for i in from..from + n {
        let b = body(i);
        let keys = i.to_string();
        let at = log.append(&record(i, &b, keys.as_bytes())).await.unwrap();
        placed.push((i, at.pos));
    }
    placed
}

async fn assert_all_readable(log: &CommitLog, placed: &[(u64, u64)]) {
    for &(i, pos) in placed {
        let rec = log
            .read_record(pos)
            .await
            .unwrap_or_else(|e| panic!("record {i} at {pos}: {e}"));
        assert_eq!(&rec.body()[..], &body(i)[..], "body of record {i}");
        assert_eq!(&rec.keys()[..], i.to_string().as_bytes());
        assert_eq!(rec.header().queue_offset.get(), i / 4);
        assert_eq!(rec.header().queue_id.get(), (i % 4) as u32);
    }
}

async fn round_trip(flush: FlushMode, io: IoMode) {
    let dir = tempfile::tempdir().unwrap();
    let (log, report) = CommitLog::open(dir.path(), small_config(flush, io))
        .await
        .unwrap();
    assert_eq!(report.end, 0);
    assert_eq!(report.tail, TailKind::Clean);
    let placed = append_n(&log, 0, 200).await;
    assert_all_readable(&log, &placed).await;
    log.close().await.unwrap();

    let (log, report) = CommitLog::open(dir.path(), small_config(flush, io))
        .await
        .unwrap();
    assert_eq!(report.tail, TailKind::Clean, "{report}");
    assert!(report.generation >= 2);
    assert_all_readable(&log, &placed).await;
    let more = append_n(&log, 200, 100).await;
    assert!(more[0].1 >= report.end);
    assert_all_readable(&log, &more).await;
    log.close().await.unwrap();
}

#[compio::test]
async fn round_trip_sync_direct() {
    round_trip(FlushMode::Sync, IoMode::Direct).await;
}

#[compio::test]
async fn round_trip_sync_buffered() {
    round_trip(FlushMode::Sync, IoMode::Buffered).await;
}

#[compio::test]
async fn round_trip_async_direct() {
    round_trip(FlushMode::Async, IoMode::Direct).await;
}

#[compio::test]
async fn round_trip_async_buffered() {
    round_trip(FlushMode::Async, IoMode::Buffered).await;
}

/// Walks the log from its start the way an index rebuild would: record after record,
/// jumping over segment padding.
async fn walk(log: &CommitLog) -> (Vec<u64>, usize) {
    let end = log.positions().readable;
    let mut pos = log.positions().start;
    let mut positions = Vec::new();
    let mut paddings = 0;
    while pos < end {
        match log.read_record(pos).await {
            Ok(rec) => {
                positions.push(pos);
                pos += rec.len() as u64;
            }
            Err(ReadError::Padding { next, .. }) => {
                paddings += 1;
                pos = next;
            }
            Err(e) => panic!("walk stopped at {pos}: {e}"),
        }
    }
    assert_eq!(pos, end);
    (positions, paddings)
}

#[compio::test]
async fn segments_roll_over_with_padding_and_records_never_span_them() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = CommitLog::open(dir.path(), small_config(FlushMode::Sync, IoMode::Direct))
        .await
        .unwrap();
    let placed = append_n(&log, 0, 400).await;
    let positions: Vec<u64> = placed.iter().map(|p| p.1).collect();
    for (&(i, pos), next) in placed.iter().zip(positions.iter().skip(1)) {
        let len = (HEADER_BYTES + b"test-topic".len() + i.to_string().len() + body(i).len()) as u64;
        assert_eq!(
            pos / SMALL_SEGMENT,
            (pos + len - 1) / SMALL_SEGMENT,
            "record {i} spans segments"
        );
        if *next != pos + len {
            assert_eq!(
                next % SMALL_SEGMENT,
                0,
                "a gap that is not padding to a segment end"
            );
        }
    }
    let (walked, paddings) = walk(&log).await;
    assert_eq!(walked, positions);
    let segments_used = positions.last().unwrap() / SMALL_SEGMENT;
    assert_eq!(
        paddings as u64, segments_used,
        "one padding per full segment"
    );
    assert!(log.segment_bases().len() as u64 > segments_used);
    log.close().await.unwrap();
}

#[compio::test]
async fn a_scan_yields_every_record_in_order_across_segments_from_any_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        read_cache_bytes: 0,
        ..small_config(FlushMode::Sync, IoMode::Direct)
    };
    let (log, _) = CommitLog::open(dir.path(), config).await.unwrap();
    let placed = append_n(&log, 0, 300).await;
    for from in [0, 1, 150, 299] {
        let mut scan = log.scan(placed[from].1);
        let mut seen = Vec::new();
        while let Some(record) = scan.next().await.unwrap() {
            seen.push(record.log_pos());
            let i =
                record.header().queue_offset.get() * 4 + u64::from(record.header().queue_id.get());
            assert_eq!(&record.body()[..], &body(i)[..]);
        }
        let expected: Vec<u64> = placed[from..].iter().map(|p| p.1).collect();
        assert_eq!(seen, expected, "scan from record {from}");
        assert_eq!(scan.position(), log.positions().readable);
    }
    log.close().await.unwrap();
}

#[compio::test]
async fn memory_reads_are_zero_copy_and_evicted_data_comes_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        read_cache_bytes: 0,
        ..small_config(FlushMode::Sync, IoMode::Direct)
    };
    let (log, _) = CommitLog::open(dir.path(), config).await.unwrap();
    let placed = append_n(&log, 0, 3).await;
    let last = placed[2].1;
    // The last record is in the chunk still being filled: two reads share its memory.
    let a = log.read_record(last).await.unwrap();
    let b = log.read_record(last).await.unwrap();
    assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
    // Fill past the first chunk; with no read cache it is dropped once written.
    let more = append_n(&log, 3, 120).await;
    assert!(more.last().unwrap().1 > SMALL_SEGMENT);
    let first = log.read_record(placed[0].1).await.unwrap();
    let again = log.read_record(placed[0].1).await.unwrap();
    assert_ne!(
        first.as_bytes().as_ptr(),
        again.as_bytes().as_ptr(),
        "expected separate disk reads"
    );
    assert_all_readable(&log, &placed).await;
    assert_all_readable(&log, &more).await;
    log.close().await.unwrap();
}

fn segment_path(dir: &Path, base: u64) -> std::path::PathBuf {
    dir.join(format!("{base:020}"))
}

fn damage(dir: &Path, pos: u64, f: impl FnOnce(&mut [u8])) {
    let base = pos - pos % SMALL_SEGMENT;
    let path = segment_path(dir, base);
    let mut bytes = std::fs::read(&path).unwrap();
    f(&mut bytes[(pos - base) as usize..]);
    std::fs::write(&path, bytes).unwrap();
}

#[compio::test]
async fn a_torn_tail_is_truncated_and_its_stale_records_never_return() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(FlushMode::Sync, IoMode::Buffered);
    let (log, _) = CommitLog::open(dir.path(), config.clone()).await.unwrap();
    let placed = append_n(&log, 0, 10).await;
    log.close().await.unwrap();

    // Tear record 6: records 7..9 after it stay intact on disk.
    let torn = placed[6].1;
    let stale_record_7 = {
        let (start, end) = (placed[7].1, placed[8].1);
        let bytes = std::fs::read(segment_path(dir.path(), start - start % SMALL_SEGMENT)).unwrap();
        let at = (start % SMALL_SEGMENT) as usize;
        bytes[at..at + (end - start) as usize].to_vec()
    };
    damage(dir.path(), torn + 30, |b| b[0] ^= 0x40);
    // Make recovery scan from the start, as after a crash before the first checkpoint.
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let (log, report) = CommitLog::open(dir.path(), config.clone()).await.unwrap();
    assert_eq!(report.tail, TailKind::Torn, "{report}");
    assert_eq!(report.end, torn);
    assert_eq!(report.records_scanned, 6);
    for &(_, pos) in &placed[6..] {
        assert!(matches!(
            log.read_record(pos).await,
            Err(ReadError::BeyondEnd { .. })
        ));
    }
    assert_all_readable(&log, &placed[..6]).await;

    // A new writer overwrites record 6 with one of the same length. Its write zeroes the rest
    // of the page, but a crash can leave old bytes after the new tail all the same (a page
    // write torn at sector granularity, an old page past the zeroed one): put record 7 back.
    // It is then a valid record at its own position, but of the old generation.
    let b = body(6);
    let keys = b"6";
    let replaced = log.append(&record(6, &b, keys)).await.unwrap();
    assert_eq!(replaced.pos, torn);
    log.close().await.unwrap();
    damage(dir.path(), placed[7].1, |b| {
        b[..stale_record_7.len()].copy_from_slice(&stale_record_7)
    });
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let (log, report) = CommitLog::open(dir.path(), config).await.unwrap();
    assert_eq!(report.end, placed[7].1, "{report}");
    assert_eq!(report.tail, TailKind::Stale, "{report}");
    assert!(matches!(
        log.read_record(placed[7].1).await,
        Err(ReadError::BeyondEnd { .. })
    ));
    log.close().await.unwrap();
}

#[compio::test]
async fn corruption_below_the_checkpoint_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        read_cache_bytes: 0,
        ..small_config(FlushMode::Sync, IoMode::Direct)
    };
    let (log, _) = CommitLog::open(dir.path(), config.clone()).await.unwrap();
    let placed = append_n(&log, 0, 40).await;
    log.close().await.unwrap();
    let victim = placed[3].1;
    damage(dir.path(), victim + HEADER_BYTES as u64 + 20, |b| b[0] ^= 1);
    let (log, report) = CommitLog::open(dir.path(), config).await.unwrap();
    assert_eq!(
        report.scanned_from, report.end,
        "checkpoint at the clean end: nothing rescanned"
    );
    match log.read_record(victim).await {
        Err(ReadError::Corrupt { pos, .. }) => assert_eq!(pos, victim),
        other => panic!("corrupt record served: {other:?}"),
    }
    assert_all_readable(&log, &placed[4..]).await;
    log.close().await.unwrap();
}

#[compio::test]
async fn sync_appends_complete_only_when_durable_and_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 8 << 20,
        flush: FlushMode::Sync,
        ..LogConfig::default()
    };
    let (log, _) = CommitLog::open(dir.path(), config).await.unwrap();
    let body = vec![7u8; 1000];
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let log = log.clone();
        let body = body.clone();
        tasks.push(compio::runtime::spawn(async move {
            for i in 0..20 {
                let at = log.append(&record(t * 100 + i, &body, b"")).await.unwrap();
                let durable = log.positions().durable;
                assert!(
                    durable >= at.pos + u64::from(at.len),
                    "acknowledged before durable"
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = log.stats();
    assert_eq!(stats.records, 64 * 20);
    assert!(
        stats.flushes < stats.records / 4,
        "64 concurrent appenders should share flushes: {stats:?}"
    );
    log.close().await.unwrap();
}

#[compio::test]
async fn async_mode_flushes_by_interval_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = CommitLog::open(dir.path(), small_config(FlushMode::Async, IoMode::Direct))
        .await
        .unwrap();
    let placed = append_n(&log, 0, 5).await;
    let end = log.positions().tail;
    assert_eq!(log.stats().flushes, 0);
    compio::time::timeout(Duration::from_secs(20), log.wait_durable(end))
        .await
        .expect("the flush timer never made the data durable")
        .unwrap();
    assert!(log.stats().flushes >= 1);
    assert_all_readable(&log, &placed).await;
    log.close().await.unwrap();
}

#[compio::test]
async fn async_mode_flushes_by_volume() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = CommitLog::open(dir.path(), no_timer_config())
        .await
        .unwrap();
    append_n(&log, 0, 60).await;
    compio::time::timeout(Duration::from_secs(20), log.wait_durable(16 * 1024))
        .await
        .expect("flush_bytes did not trigger a flush")
        .unwrap();
    log.close().await.unwrap();
}

/// Inodes of the files in `dir` whose names satisfy `pick`.
fn inodes(dir: &Path, pick: impl Fn(&str) -> bool) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| pick(&e.file_name().to_string_lossy()))
        .map(|e| e.metadata().unwrap().ino())
        .collect()
}

#[compio::test]
async fn flush_and_close_finish_without_the_interval_timer() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = CommitLog::open(dir.path(), no_timer_config())
        .await
        .unwrap();
    // Appends leave writes and volume-triggered flushes in flight when `flush` is called; the
    // flush must still cover everything appended, however those complete.
    for round in 0..50 {
        append_n(&log, round * 7, 7).await;
        let tail = log.positions().tail;
        compio::time::timeout(Duration::from_secs(10), log.flush())
            .await
            .unwrap_or_else(|_| panic!("flush in round {round} waited for the interval timer"))
            .unwrap();
        assert!(log.positions().durable >= tail);
    }
    append_n(&log, 1000, 7).await;
    compio::time::timeout(Duration::from_secs(10), log.close())
        .await
        .expect("close waited for the interval timer")
        .unwrap();
}

#[compio::test]
async fn retired_segments_are_recycled_and_reads_below_the_start_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(FlushMode::Sync, IoMode::Direct);
    let (log, _) = CommitLog::open(dir.path(), config.clone()).await.unwrap();
    let placed = append_n(&log, 0, 300).await;
    let retired = log.retire_segments_before(3 * SMALL_SEGMENT).await.unwrap();
    assert_eq!(retired, 3);
    assert_eq!(log.positions().start, 3 * SMALL_SEGMENT);
    match log.read_record(placed[0].1).await {
        Err(ReadError::BeforeStart { start, .. }) => assert_eq!(start, 3 * SMALL_SEGMENT),
        other => panic!("expected BeforeStart, got {other:?}"),
    }
    let kept: Vec<_> = placed
        .iter()
        .copied()
        .filter(|p| p.1 >= 3 * SMALL_SEGMENT)
        .collect();
    assert_all_readable(&log, &kept).await;

    // Retention in a loop: the directory stays bounded and retired files come back as new
    // segments (same inode, new name) instead of new files being pre-written.
    let mut retired_inodes = inodes(dir.path(), |n| n.ends_with(".recycle"));
    let mut reused = 0;
    let mut next = 300;
    for _ in 0..10 {
        let batch = append_n(&log, next, 60).await;
        next += 60;
        let segment_inodes = inodes(dir.path(), |n| n.len() == 20);
        reused += segment_inodes
            .iter()
            .filter(|i| retired_inodes.contains(i))
            .count();
        retired_inodes.retain(|i| !segment_inodes.contains(i));
        let tail = log.positions().tail;
        log.retire_segments_before(tail - tail % SMALL_SEGMENT - SMALL_SEGMENT)
            .await
            .unwrap();
        retired_inodes.extend(inodes(dir.path(), |n| n.ends_with(".recycle")));
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 9, "directory grew to {files} files");
        let start = log.positions().start;
        let live: Vec<_> = batch.into_iter().filter(|p| p.1 >= start).collect();
        assert_all_readable(&log, &live).await;
    }
    assert!(
        reused >= 5,
        "only {reused} retired files were reused as segments"
    );
    let start = log.positions().start;
    log.close().await.unwrap();

    // Reopening sees a log starting at the retired boundary.
    let (log, report) = CommitLog::open(dir.path(), config).await.unwrap();
    assert_eq!(report.start, start);
    assert_eq!(report.tail, TailKind::Clean, "{report}");
    log.close().await.unwrap();
}

#[compio::test]
async fn oversized_and_malformed_records_are_rejected_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = CommitLog::open(dir.path(), small_config(FlushMode::Sync, IoMode::Direct))
        .await
        .unwrap();
    let big = vec![0u8; 9000];
    let err = log.append(&record(0, &big, b"")).await.unwrap_err();
    assert!(matches!(err, LogError::Record(_)), "{err}");
    let err = log
        .append(&NewRecord {
            topic: b"",
            ..NewRecord::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::Record(_)), "{err}");
    assert_eq!(
        log.positions().tail,
        0,
        "a rejected record must not move the tail"
    );
    let placed = append_n(&log, 0, 3).await;
    assert_all_readable(&log, &placed).await;
    log.close().await.unwrap();
}

#[compio::test]
async fn a_directory_is_opened_by_one_log_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = CommitLog::open(dir.path(), small_config(FlushMode::Sync, IoMode::Direct))
        .await
        .unwrap();
    match CommitLog::open(dir.path(), small_config(FlushMode::Sync, IoMode::Direct)).await {
        Err(OpenError::Locked { .. }) => {}
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second open of the same directory succeeded"),
    }
    log.close().await.unwrap();
}

#[compio::test]
async fn close_stops_segment_preparation_and_releases_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    // Large segments, two ahead: preparation is still zero-filling when `close` is called.
    let config = LogConfig {
        segment_bytes: 256 << 20,
        segments_ahead: 2,
        ..LogConfig::default()
    };
    let (log, _) = CommitLog::open(dir.path(), config.clone()).await.unwrap();
    let placed = append_n(&log, 0, 10).await;
    log.close().await.unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".prep"))
        .collect();
    assert!(leftovers.is_empty(), "close left {leftovers:?}");
    let (log, report) = CommitLog::open(dir.path(), config)
        .await
        .expect("reopen right after close");
    assert_eq!(report.tail, TailKind::Clean, "{report}");
    assert_all_readable(&log, &placed).await;
    log.close().await.unwrap();
}

#[compio::test]
async fn a_changed_segment_size_is_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = CommitLog::open(dir.path(), small_config(FlushMode::Sync, IoMode::Direct))
        .await
        .unwrap();
    log.close().await.unwrap();
    let other = LogConfig {
        segment_bytes: 2 * SMALL_SEGMENT,
        ..small_config(FlushMode::Sync, IoMode::Direct)
    };
    let err = CommitLog::open(dir.path(), other)
        .await
        .err()
        .expect("opened with the wrong segment size");
    assert!(err.to_string().contains("segment_bytes"), "{err}");
}
