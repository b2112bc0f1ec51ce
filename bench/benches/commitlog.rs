//! Criterion benches of the CommitLog: append throughput of 1 KiB records in sync and async
//! mode at 1, 16 and 256 concurrent appenders, and read throughput from memory and from the
//! segment files. One iteration is one record; throughput is in record bytes.
//!
//! Run with `cargo bench -p quiver-bench --bench commitlog`; `BENCH_DIR` chooses the disk
//! (default `./data/criterion`). The log is opened once per group and kept warm (segments
//! retired and recycled), so samples measure the steady state.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use quiver_bench::bench_dir;
use quiver_bench::engine::{AppendLoad, run_phase};
use quiver_engine::{CommitLog, FlushMode, LogConfig, NewRecord};

const RECORD_BYTES: usize = 1024;
const SEGMENT_BYTES: u64 = 64 << 20;

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_1KiB");
    group.throughput(Throughput::Bytes(RECORD_BYTES as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(3));
    group.measurement_time(Duration::from_secs(8));
    for flush in [FlushMode::Sync, FlushMode::Async] {
        for appenders in [1usize, 16, 256] {
            let name = format!("{flush:?}").to_lowercase();
            let dir = bench_dir(&format!("append-{name}-{appenders}"));
            let load = AppendLoad {
                dir: dir.clone(),
                config: LogConfig {
                    flush,
                    segment_bytes: SEGMENT_BYTES,
                    ..LogConfig::default()
                },
                appenders,
                record_bytes: RECORD_BYTES,
                batch: 1,
                warmup: Duration::ZERO,
                measure: Duration::ZERO,
                keep_segments: 2,
            };
            let runtime = compio::runtime::Runtime::new().expect("runtime");
            let (log, _) = runtime
                .block_on(CommitLog::open(&dir, load.config.clone()))
                .expect("open");
            group.bench_with_input(BenchmarkId::new(name, appenders), &appenders, |b, _| {
                b.iter_custom(|records| {
                    let report = runtime
                        .block_on(run_phase(&log, &load, Duration::from_secs(3600), records))
                        .expect("append");
                    Duration::from_secs_f64(report.seconds)
                });
            });
            runtime.block_on(log.close()).expect("close");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_1KiB");
    group.throughput(Throughput::Bytes(RECORD_BYTES as u64));
    group.sample_size(20);
    for (name, read_cache_bytes) in [("memory", 256u64 << 20), ("segment_file", 0)] {
        let dir = bench_dir(&format!("read-{name}"));
        let config = LogConfig {
            flush: FlushMode::Async,
            segment_bytes: SEGMENT_BYTES,
            read_cache_bytes,
            ..LogConfig::default()
        };
        let runtime = compio::runtime::Runtime::new().expect("runtime");
        let (log, positions) = runtime.block_on(async {
            let (log, _) = CommitLog::open(&dir, config).await.expect("open");
            let body = vec![0x5Au8; RECORD_BYTES - quiver_engine::record::HEADER_BYTES - 5];
            let mut positions = Vec::new();
            // 128 MiB of records: more than the memory case needs, all cached in that case.
            for i in 0..(128 << 20) / RECORD_BYTES as u64 {
                let at = log
                    .append(&NewRecord {
                        topic: b"bench",
                        queue_offset: i,
                        body: &body,
                        ..NewRecord::default()
                    })
                    .await
                    .expect("append");
                positions.push(at.pos);
            }
            log.flush().await.expect("flush");
            (log, positions)
        });
        let in_cache = positions
            .len()
            .min((read_cache_bytes as usize / RECORD_BYTES).saturating_sub(1024));
        let positions = if read_cache_bytes > 0 {
            positions[positions.len() - in_cache..].to_vec()
        } else {
            positions
        };
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter_custom(|records| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..records {
                        let record = log
                            .read_record(positions[next % positions.len()])
                            .await
                            .expect("read");
                        assert_eq!(record.len(), RECORD_BYTES);
                        next += 1;
                    }
                    start.elapsed()
                })
            });
        });
        runtime.block_on(log.close()).expect("close");
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

criterion_group!(benches, append, read);

/// The baseline, measured first in the same run on the same disk (`BENCH_FIO_MIB`, default 4096;
/// 0 skips it).
fn fio_baseline() {
    let mib = std::env::var("BENCH_FIO_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096);
    if mib == 0 {
        return;
    }
    let dir = bench_dir("fio");
    let _ = std::fs::create_dir_all(&dir);
    match quiver_bench::fio::measure(&dir, mib) {
        Ok(b) => println!(
            "fio baseline, {mib} MiB, 64 KiB writes x8 in flight: O_DIRECT new file {:.0} MB/s, \
             O_DIRECT pre-written {:.0} MB/s, buffered+fsync {:.0} MB/s",
            b.direct_new_file_mb_s, b.direct_prewritten_mb_s, b.buffered_mb_s
        ),
        Err(e) => println!("fio baseline skipped: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    fio_baseline();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
