//! A full disk under a real `quiver standalone` (sync flush): its data directory on a small
//! tmpfs mounted for the test (needs root, as CI runs). Sends go on until the broker refuses,
//! with RocketMQ's SERVICE_NOT_AVAILABLE and a log line; the broker stays up and every
//! acknowledged message reads back intact, also while the indexes cannot be written; freeing
//! space lets sends succeed again without a restart; and after a restart every acknowledged
//! message is still there. A second test keeps the disk full across a stop (SIGTERM exits
//! cleanly although index entries could not be written) and a start: the broker starts, serves
//! every acknowledged message, refuses sends, and takes them again once space is freed.
//!
//! Disk-pressure retention is off (`disk_max_used_ratio = 1.0`, checked every 200 ms), so the
//! broker cannot make room by deleting what it acknowledged.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quiver_net::client::RemotingClient;
use quiver_net::remoting::RemotingCommand;
use quiver_net::remoting::codes::{request, response};
use support::{LogLines, Standalone, Tmpfs, free_port};

const TOPIC: &str = "full";
const CALL: Duration = Duration::from_secs(10);
const LOG_WAIT: Duration = Duration::from_secs(10);
const SEGMENT_BYTES: u64 = 1 << 20;

/// Small segments and records so a few MiB fill the disk; retention never deletes for space.
fn write_config(dir: &Path, namesrv_port: u16, broker_port: u16) -> PathBuf {
    let path = dir.join("quiver.toml");
    let text = format!(
        "[namesrv]\nlisten = \"127.0.0.1:{namesrv_port}\"\n\
         [broker]\nlisten = \"127.0.0.1:{broker_port}\"\nvip_channel = false\n\
         broker_ip = \"127.0.0.1\"\nmax_message_bytes = 65536\noffset_flush_interval_ms = 200\n\
         [broker.store]\nshards = 2\npin_threads = false\ncq_file_entries = 4096\n\
         key_index_slots = 4096\nkey_index_entries = 16384\n\
         disk_max_used_ratio = 1.0\nretention_check_interval_ms = 200\n\
         [broker.store.log]\nflush = \"sync\"\nsegment_bytes = {SEGMENT_BYTES}\n\
         max_record_bytes = 131072\nwrite_buffer_bytes = 1048576\n"
    );
    std::fs::write(&path, text).expect("writing the test config");
    path
}

/// A small tmpfs for a broker's data, with 3 MiB taken by a filler file before the broker
/// starts: space to give back later.
struct SmallDisk {
    fs: Tmpfs,
    _config_dir: tempfile::TempDir,
    config: PathBuf,
    filler: PathBuf,
    data: PathBuf,
    log: LogLines,
}

impl SmallDisk {
    fn new() -> SmallDisk {
        let fs = Tmpfs::mount("12m");
        let config_dir = tempfile::tempdir().unwrap();
        let config = write_config(config_dir.path(), free_port(), free_port());
        let filler = fs.path.join("filler");
        std::fs::write(&filler, vec![1u8; 3 << 20]).unwrap();
        let data = fs.path.join("data");
        SmallDisk {
            fs,
            _config_dir: config_dir,
            config,
            filler,
            data,
            log: LogLines::new(),
        }
    }
}

fn body(i: usize) -> Vec<u8> {
    let mut body = format!("m{i}|").into_bytes();
    let pad = 1500 + (i * 7919) % 1500;
    body.extend((0..pad).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8)));
    body
}

fn send(body: Vec<u8>) -> RemotingCommand {
    RemotingCommand::request(request::SEND_MESSAGE_V2)
        .with_field("a", "full-producer")
        .with_field("b", TOPIC)
        .with_field("c", "TBW102")
        .with_field("d", 1)
        .with_field("e", 0)
        .with_field("f", 0)
        .with_field("g", 0)
        .with_field("h", 0)
        .with_field("i", format!("KEYS\u{1}k{}\u{2}", body.len()))
        .with_body(body)
}

/// Sends message `i`; `Ok(queue offset)` or the refusal's code and remark.
async fn send_one(client: &RemotingClient, i: usize) -> Result<i64, (i32, String)> {
    let answer = client.invoke(send(body(i)), CALL).await.unwrap();
    match answer.code {
        response::SUCCESS => Ok(answer.required_parsed("queueOffset").unwrap()),
        code => Err((code, answer.remark.unwrap_or_default())),
    }
}

/// Sends the next message and expects it stored at the next offset.
async fn send_acked(client: &RemotingClient, acked: &mut Vec<Vec<u8>>) {
    let i = acked.len();
    match send_one(client, i).await {
        Ok(offset) => assert_eq!(offset, i as i64, "message {i} stored out of place"),
        Err((code, remark)) => panic!("message {i} refused: {code} {remark}"),
    }
    acked.push(body(i));
}

/// Sends until the broker refuses (what the prepared segment takes once no new one can be
/// made); returns the refusal.
async fn send_until_refused(client: &RemotingClient, acked: &mut Vec<Vec<u8>>) -> (i32, String) {
    loop {
        let i = acked.len();
        match send_one(client, i).await {
            Ok(offset) => {
                assert_eq!(offset, i as i64, "message {i} stored out of place");
                acked.push(body(i));
            }
            Err(refused) => return refused,
        }
        assert!(
            acked.len() < 20_000,
            "the disk never filled ({} acknowledged)",
            acked.len()
        );
    }
}

/// Every message of the queue, in order, must be exactly what was acknowledged.
async fn assert_all_stored(client: &RemotingClient, acked: &[Vec<u8>], when: &str) {
    let stored = support::read_queue(client, TOPIC, 0).await;
    for (offset, m) in stored.iter().enumerate() {
        let expected = acked.get(offset).unwrap_or_else(|| {
            panic!("{when}: offset {offset} holds a message never acknowledged")
        });
        assert!(
            &m.body[..] == expected,
            "{when}: message {offset} is corrupt"
        );
    }
    assert_eq!(
        stored.len(),
        acked.len(),
        "{when}: acknowledged messages missing"
    );
}

fn commit_offset(offset: i64) -> RemotingCommand {
    RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
        .with_field("consumerGroup", "full-consumer")
        .with_field("topic", TOPIC)
        .with_field("queueId", 0)
        .with_field("commitOffset", offset)
}

fn query_offset() -> RemotingCommand {
    RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
        .with_field("consumerGroup", "full-consumer")
        .with_field("topic", TOPIC)
        .with_field("queueId", 0)
        .with_field("setZeroIfNotFound", false)
}

/// Fills what is left of the filesystem with a file of its own.
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 4096];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = file.sync_all();
}

fn logged(log: &LogLines, from: usize, parts: &[&str]) -> String {
    tokio::task::block_in_place(|| log.wait_for(from, parts, LOG_WAIT))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_clearly_loses_nothing_and_recovers_without_a_restart() {
    let SmallDisk {
        fs,
        _config_dir,
        config,
        filler,
        data,
        log,
    } = SmallDisk::new();
    let broker = Standalone::start_logged(&config, &data, &log);
    let client = RemotingClient::connect(broker.broker).await.unwrap();
    let mut acked = Vec::new();
    for _ in 0..20 {
        send_acked(&client, &mut acked).await;
    }
    // Take every byte that is left: the segments already prepared still take appends, but no
    // index file can grow and no new segment can be prepared.
    let topup = fs.path.join("topup");
    let before_full = log.len();
    fill_up(&topup);
    assert_eq!(fs.free_bytes(), 0);

    let mark = log.len();
    let started = Instant::now();
    let (code, remark) = send_until_refused(&client, &mut acked).await;
    let full_after = acked.len();
    eprintln!(
        "refused after {full_after} acknowledged messages ({:?} of sending on a full disk): {code} {remark}",
        started.elapsed()
    );
    assert!(
        full_after > 20 + (SEGMENT_BYTES / 3000) as usize,
        "refused after only {full_after} messages: the prepared segment should have taken more"
    );
    assert_eq!(
        code,
        response::SERVICE_NOT_AVAILABLE,
        "a full disk is RocketMQ's SERVICE_NOT_AVAILABLE: {remark}"
    );
    assert!(remark.contains("disk full"), "{remark}");
    logged(
        &log,
        mark,
        &[
            "request refused",
            "code=14",
            "disk full",
            "No space left on device",
        ],
    );

    // Still full: refused the same way at once, nothing stored meanwhile, and everything
    // acknowledged reads back whole (its index entries could not be written).
    for _ in 0..3 {
        let refused = send_one(&client, acked.len()).await;
        assert!(
            matches!(&refused, Err((response::SERVICE_NOT_AVAILABLE, _))),
            "{refused:?}"
        );
    }
    assert_all_stored(&client, &acked, "while the disk is full").await;
    // Failing index writes (retried every 10 ms) and segment preparations (retried by every
    // send) are logged once, not each time: one line per refused request is the broker's.
    let refusals = tokio::task::block_in_place(|| {
        log.wait_for_count(before_full, &["request refused"], 4, LOG_WAIT)
    });
    assert_eq!(refusals.len(), 4, "one line per refused send");
    let lines = log.lines();
    let count = |what: &str| {
        lines[before_full..]
            .iter()
            .filter(|l| l.contains(what))
            .count()
    };
    assert!(
        count("writing indexes") <= 2,
        "index write failures flood the log"
    );
    assert!(
        count("segment preparation failed") <= 2,
        "segment preparation failures flood the log"
    );
    // Another connection is served too.
    let other = RemotingClient::connect(broker.broker).await.unwrap();
    assert_all_stored(&other, &acked, "on a new connection while the disk is full").await;

    // A consumer offset committed now cannot be written yet: the attempt is logged, leaves no
    // partial file taking space, and the commit is kept for later.
    let mark = log.len();
    let committed = acked.len() as i64;
    let answer = other.invoke(commit_offset(committed), CALL).await.unwrap();
    assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
    logged(
        &log,
        mark,
        &["writing consumer offsets failed", "No space left on device"],
    );
    let leftover = data.join("config").join("consumerOffset.tmp");
    assert!(
        !leftover.exists(),
        "a failed offsets write left {} behind",
        leftover.display()
    );

    // Give back the space taken at the start: the next send succeeds, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    send_acked(&client, &mut acked).await;
    eprintln!(
        "first send after freeing space answered in {:?}",
        freed.elapsed()
    );
    // And on: across at least one more segment.
    for _ in 0..(SEGMENT_BYTES / 2500) {
        send_acked(&client, &mut acked).await;
    }
    assert_all_stored(&client, &acked, "after space was freed").await;

    // A clean restart on the same data: every acknowledged message is there.
    std::fs::remove_file(&topup).unwrap();
    drop(client);
    drop(other);
    broker.stop();
    let broker = Standalone::start_logged(&config, &data, &log);
    let client = RemotingClient::connect(broker.broker).await.unwrap();
    assert_all_stored(&client, &acked, "after a restart").await;
    let answer = client.invoke(query_offset(), CALL).await.unwrap();
    assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
    assert_eq!(
        answer.required_parsed::<i64>("offset").unwrap(),
        committed,
        "the offset committed while the disk was full"
    );
    send_acked(&client, &mut acked).await;
    assert_all_stored(&client, &acked, "after a restart and a send").await;
    broker.stop();
}

/// The disk stays full across a stop and a start. SIGTERM exits cleanly although offset-index
/// entries could not be written (the log is flushed and closed; indexes are rebuilt from it at
/// open), the broker starts on the full disk, serves every acknowledged message and refuses
/// sends with SERVICE_NOT_AVAILABLE; once space is freed it takes sends without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_and_started_on_a_full_disk_serves_reads_and_takes_sends_once_space_is_freed()
 {
    let SmallDisk {
        fs,
        _config_dir,
        config,
        filler,
        data,
        log,
    } = SmallDisk::new();
    let broker = Standalone::start_logged(&config, &data, &log);
    let client = RemotingClient::connect(broker.broker).await.unwrap();
    let mut acked = Vec::new();
    for _ in 0..20 {
        send_acked(&client, &mut acked).await;
    }
    let mark = log.len();
    fill_up(&fs.path.join("topup"));
    let (code, remark) = send_until_refused(&client, &mut acked).await;
    assert_eq!(code, response::SERVICE_NOT_AVAILABLE, "{remark}");
    // What was sent since cannot all be indexed on disk: those entries are only in memory.
    logged(
        &log,
        mark,
        &["writing indexes failed", "No space left on device"],
    );
    assert_all_stored(&client, &acked, "before the stop").await;

    // SIGTERM, the disk still full: a clean exit (`stop` asserts it), the unwritten index
    // entries named in a warning.
    let mark = log.len();
    drop(client);
    broker.stop();
    logged(
        &log,
        mark,
        &[
            "closing a shard",
            "indexes not written",
            "No space left on device",
        ],
    );
    assert_eq!(
        fs.free_bytes(),
        0,
        "the disk must still be full at the start"
    );

    // Started on the full disk: every acknowledged message reads back, sends are refused.
    let mark = log.len();
    let started = Instant::now();
    let broker = Standalone::start_logged(&config, &data, &log);
    eprintln!("started on a full disk in {:?}", started.elapsed());
    // The entries rebuilt from the log could not be written either: they are held in memory.
    logged(
        &log,
        mark,
        &[
            "opening a shard",
            "rebuilt indexes not written",
            "No space left on device",
        ],
    );
    let client = RemotingClient::connect(broker.broker).await.unwrap();
    assert_all_stored(&client, &acked, "after a start on a full disk").await;
    for _ in 0..3 {
        let refused = send_one(&client, acked.len()).await;
        assert!(
            matches!(&refused, Err((response::SERVICE_NOT_AVAILABLE, remark)) if remark.contains("disk full")),
            "{refused:?}"
        );
    }
    logged(&log, mark, &["request refused", "code=14", "disk full"]);
    assert_all_stored(&client, &acked, "after sends refused on a full disk").await;

    // Space freed: sends succeed at once, across at least one more segment, no restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    send_acked(&client, &mut acked).await;
    eprintln!(
        "first send after freeing space answered in {:?}",
        freed.elapsed()
    );
    for _ in 0..(SEGMENT_BYTES / 2500) {
        send_acked(&client, &mut acked).await;
    }
    assert_all_stored(&client, &acked, "after space was freed").await;

    // The indexes held in memory meanwhile reach the disk: a stop and start keep everything.
    drop(client);
    broker.stop();
    let broker = Standalone::start_logged(&config, &data, &log);
    let client = RemotingClient::connect(broker.broker).await.unwrap();
    assert_all_stored(&client, &acked, "after a last restart").await;
    send_acked(&client, &mut acked).await;
    assert_all_stored(&client, &acked, "after a last restart and a send").await;
    drop(client);
    broker.stop();
}
