//! Crash tests with real processes: `quiver store probe` appends self-verifying records and
//! prints each acknowledgement; the test kills it with SIGKILL at a random acknowledgement
//! count (sometimes before the first, i.e. during recovery), reopens the log, and checks what
//! survived. Sync mode: every acknowledged record, intact. Async mode: only a suffix of the
//! acknowledged records may be lost, and no more bytes than the documented bound
//! (`write_buffer_bytes` plus the one record a write ended inside). In both: nothing past the recovered end is served, and every record
//! the log holds is an intact probe record.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use quiver_bench::probe;
use quiver_engine::{CommitLog, LogConfig, ReadError};

const ROUNDS: u64 = 24;
const MAX_BODY: usize = 3000;
const WRITE_BUFFER_BYTES: u64 = 64 * 1024;
const MAX_RECORD_BYTES: u64 = 8192;
/// What async mode may lose to a crash: the unwritten buffer, plus the record the last
/// completed write ended inside (its head is on disk, its tail is not, so recovery drops it).
const ASYNC_LOSS_BOUND_BYTES: u64 = WRITE_BUFFER_BYTES + MAX_RECORD_BYTES;

fn config_toml(flush: &str, io: &str) -> String {
    format!(
        "flush = \"{flush}\"\nio = \"{io}\"\nsegment_bytes = 262144\nmax_record_bytes = {MAX_RECORD_BYTES}\n\
         write_buffer_bytes = {WRITE_BUFFER_BYTES}\nflush_interval_ms = 50\nread_cache_bytes = 0\n"
    )
}

/// A tiny deterministic generator; the seed is printed so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Ack {
    run: u64,
    seq: u64,
    pos: u64,
    len: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line
        .strip_prefix("ack ")?
        .split(' ')
        .map(|p| p.parse::<u64>().ok());
    Some(Ack {
        run: parts.next()??,
        seq: parts.next()??,
        pos: parts.next()??,
        len: parts.next()??,
    })
}

/// Starts the probe: 8 appenders unless `extra` says otherwise.
fn spawn_probe(dir: &Path, config: &Path, run: u64, extra: &[&str]) -> Child {
    let appenders = if extra.contains(&"--appenders") {
        &[][..]
    } else {
        &["--appenders", "8"][..]
    };
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["store", "probe", "--max-body", &MAX_BODY.to_string()])
        .args(appenders)
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .arg("--config")
        .arg(config)
        .arg("--run")
        .arg(run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start quiver store probe")
}

/// Runs the probe until `kill_after` acknowledgements were printed (0: kill at once), kills it
/// with SIGKILL, and returns every acknowledgement line it printed before dying.
fn run_and_kill(
    dir: &Path,
    config: &Path,
    run: u64,
    kill_after: u64,
    extra: &[&str],
) -> Vec<String> {
    let mut child = spawn_probe(dir, config, run, extra);
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut acks = Vec::new();
    let mut killed = false;
    if kill_after == 0 {
        child.kill().expect("SIGKILL");
        killed = true;
    }
    // The channel closes when the process's stdout closes: it died.
    for line in rx {
        assert!(line.starts_with("ack "), "unexpected probe output: {line}");
        acks.push(line);
        if !killed && acks.len() as u64 >= kill_after {
            child.kill().expect("SIGKILL");
            killed = true;
        }
    }
    let status = child.wait().expect("wait for the probe");
    reader.join().expect("stdout reader");
    assert!(
        killed,
        "the probe exited by itself ({status}) after {} acks",
        acks.len()
    );
    assert!(
        !status.success(),
        "the probe was killed, yet exited successfully"
    );
    acks
}

struct Verified {
    /// Records found intact among those acknowledged in the round.
    present: Vec<Ack>,
    /// Acknowledged records of the round that are gone.
    lost: Vec<Ack>,
}

/// Opens the log (recovering it), checks the acknowledged records of a round and the whole log.
fn verify(dir: &Path, config: &LogConfig, round: &[Ack], earlier: &BTreeMap<u64, Ack>) -> Verified {
    let runtime = compio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (log, report) = CommitLog::open(dir, config.clone())
            .await
            .expect("reopen after crash");
        let end = report.end;
        // Every record the log holds is an intact probe record, read in order.
        let mut pos = log.positions().start;
        let mut held = BTreeMap::new();
        while pos < end {
            match log.read_record(pos).await {
                Ok(record) => {
                    let id = probe::verify(&record, MAX_BODY)
                        .unwrap_or_else(|e| panic!("at {pos}: {e}"));
                    held.insert(pos, (id, record.len() as u64));
                    pos += record.len() as u64;
                }
                Err(ReadError::Padding { next, .. }) => pos = next,
                Err(e) => panic!("log unreadable at {pos} below its end {end}: {e} ({report})"),
            }
        }
        assert_eq!(pos, end, "walk overran the recovered end");
        // Nothing at or past the recovered end is served.
        assert!(matches!(
            log.read_record(end).await,
            Err(ReadError::BeyondEnd { .. })
        ));
        for ack in earlier.values() {
            assert_eq!(
                held.get(&ack.pos),
                Some(&((ack.run, ack.seq), ack.len)),
                "record {}-{} acknowledged in an earlier round is gone ({report})",
                ack.run,
                ack.seq
            );
        }
        let (mut present, mut lost) = (Vec::new(), Vec::new());
        for ack in round {
            match held.get(&ack.pos) {
                Some(&(id, len)) if id == (ack.run, ack.seq) && len == ack.len => {
                    present.push(*ack)
                }
                _ => lost.push(*ack),
            }
        }
        log.close().await.expect("close");
        Verified { present, lost }
    })
}

fn crash_rounds(flush: &str, io: &str, check: impl Fn(u64, &Verified)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("log");
    let config_path = dir.path().join("log.toml");
    std::fs::write(&config_path, config_toml(flush, io)).expect("write config");
    let config = LogConfig::load(&config_path).expect("config");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        | 1;
    eprintln!("crash test ({flush}, {io}) seed {seed}");
    let mut rng = XorShift(seed);
    let mut durable_acks = BTreeMap::new();
    let mut total_acked = 0;
    for run in 0..ROUNDS {
        // Mostly mid-stream kills at a random point; one round in six dies before its first ack.
        let kill_after = if rng.next().is_multiple_of(6) {
            0
        } else {
            1 + rng.next() % 4000
        };
        let acks: Vec<Ack> = run_and_kill(&log_dir, &config_path, run, kill_after, &[])
            .iter()
            .map(|line| parse_ack(line).unwrap_or_else(|| panic!("unreadable ack: {line}")))
            .collect();
        total_acked += acks.len();
        let verified = verify(&log_dir, &config, &acks, &durable_acks);
        check(run, &verified);
        for ack in verified.present {
            durable_acks.insert(ack.pos, ack);
        }
    }
    assert!(
        total_acked > 1000,
        "too few acknowledgements ({total_acked}) to test anything"
    );
}

fn no_acknowledged_record_lost(run: u64, verified: &Verified) {
    assert!(
        verified.lost.is_empty(),
        "run {run}: {} acknowledged records lost, first {:?}",
        verified.lost.len(),
        verified.lost.first()
    );
}

fn only_a_bounded_suffix_lost(run: u64, verified: &Verified) {
    if let Some(first_lost) = verified.lost.iter().map(|a| a.pos).min() {
        let survivor_after = verified.present.iter().find(|a| a.pos > first_lost);
        assert!(
            survivor_after.is_none(),
            "run {run}: a hole in the log: {survivor_after:?} survived after {first_lost}"
        );
    }
    let lost_bytes: u64 = verified.lost.iter().map(|a| a.len).sum();
    assert!(
        lost_bytes <= ASYNC_LOSS_BOUND_BYTES,
        "run {run}: lost {lost_bytes} acknowledged bytes, bound is {ASYNC_LOSS_BOUND_BYTES}"
    );
}

#[test]
fn sync_direct_keeps_every_acknowledged_record_through_kill_9() {
    crash_rounds("sync", "direct", no_acknowledged_record_lost);
}

#[test]
fn sync_buffered_keeps_every_acknowledged_record_through_kill_9() {
    crash_rounds("sync", "buffered", no_acknowledged_record_lost);
}

#[test]
fn async_direct_loses_at_most_the_write_buffer_and_only_a_suffix() {
    crash_rounds("async", "direct", only_a_bounded_suffix_lost);
}

#[test]
fn async_buffered_loses_at_most_the_write_buffer_and_only_a_suffix() {
    crash_rounds("async", "buffered", only_a_bounded_suffix_lost);
}

/// An acknowledgement of the probe in store mode: `ack run seq pos len queue offset`.
#[derive(Debug, Clone, Copy)]
struct StoreAck {
    run: u64,
    seq: u64,
    pos: u64,
    queue: u32,
    offset: u64,
}

fn parse_store_ack(line: &str) -> Option<StoreAck> {
    let mut parts = line
        .strip_prefix("ack ")?
        .split(' ')
        .map(|p| p.parse::<u64>().ok());
    let (run, seq, pos, _len, queue, offset) = (
        parts.next()??,
        parts.next()??,
        parts.next()??,
        parts.next()??,
        parts.next()??,
        parts.next()??,
    );
    Some(StoreAck {
        run,
        seq,
        pos,
        queue: u32::try_from(queue).ok()?,
        offset,
    })
}

#[test]
fn store_indexes_rebuilt_after_kill_9_match_the_logs_exactly() {
    store_crash_rounds("sync", Queues::Same);
}

#[test]
fn store_kill_9_during_first_appends_to_new_queues_loses_nothing() {
    store_crash_rounds("sync", Queues::NewEachRun);
}

#[test]
fn async_store_kill_9_during_first_appends_to_new_queues_keeps_indexes_exact() {
    store_crash_rounds("async", Queues::NewEachRun);
}

/// Which queues each round of the store crash test appends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queues {
    /// The same 7 queues every round, from 8 appenders.
    Same,
    /// 64 queues no earlier round used, from 256 appenders: four race for each one's first append.
    NewEachRun,
}

/// Rounds of the probe through a whole store, each killed with SIGKILL: the indexes rebuilt at
/// the next open must equal what the logs say, queue by queue, and (sync) every acknowledged
/// message must be readable at its offset.
fn store_crash_rounds(flush: &str, queues: Queues) {
    use quiver_bench::probe::{index_from_logs, index_of_store};
    use quiver_engine::StoreConfig;
    use quiver_engine::store::Store;
    use quiver_engine::store::types::MessagePos;

    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let config_path = dir.path().join("log.toml");
    std::fs::write(&config_path, config_toml(flush, "buffered")).expect("write config");
    let log_config = LogConfig::load(&config_path).expect("config");
    let store_config = StoreConfig {
        shards: 2,
        pin_threads: false,
        log: log_config.clone(),
        ..StoreConfig::default()
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        | 1;
    eprintln!("store crash test ({flush}, {queues:?}) seed {seed}");
    let mut rng = XorShift(seed);
    let mut acked: Vec<StoreAck> = Vec::new();
    for run in 0..12 {
        let kill_after = if rng.next().is_multiple_of(6) {
            0
        } else {
            1 + rng.next() % 3000
        };
        let (count, appenders, base) = match queues {
            Queues::Same => (7, "8", 0),
            Queues::NewEachRun => (64, "256", run as u32 * 64),
        };
        let (count, base) = (count.to_string(), base.to_string());
        let lines = run_and_kill(
            &store_dir,
            &config_path,
            run,
            kill_after,
            &[
                "--queues",
                &count,
                "--shards",
                "2",
                "--appenders",
                appenders,
                "--queue-base",
                &base,
            ],
        );
        acked.extend(
            lines
                .iter()
                .map(|l| parse_store_ack(l).unwrap_or_else(|| panic!("unreadable ack: {l}"))),
        );
        if !store_dir.exists() {
            continue;
        }
        let expected = index_from_logs(&store_dir, &log_config).expect("scan the logs");
        let store =
            Store::open(&store_dir, store_config.clone()).expect("reopen the store after kill -9");
        let indexed = index_of_store(&store).expect("read the indexes");
        assert_eq!(
            indexed, expected,
            "run {run}: the rebuilt indexes differ from the logs"
        );
        if flush == "sync" {
            for ack in &acked {
                let pos = MessagePos::from_u64(ack.pos);
                let entries = &expected[&(probe::PROBE_TOPIC.to_vec(), ack.queue)];
                assert!(
                    entries.binary_search(&(ack.offset, pos.log_pos())).is_ok(),
                    "run {run}: acknowledged {ack:?} is not at its offset"
                );
                let record = futures_executor::block_on(store.read_at(pos))
                    .expect("read an acknowledged message");
                assert_eq!(probe::verify(&record, MAX_BODY), Ok((ack.run, ack.seq)));
            }
        }
        futures_executor::block_on(store.shutdown()).expect("shutdown");
    }
    assert!(
        acked.len() > 1000,
        "too few acknowledgements ({}) to test anything",
        acked.len()
    );
}
