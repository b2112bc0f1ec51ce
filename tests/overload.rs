//! Overload against a real `quiver standalone`: thousands of connections held at once, clients
//! that send half a frame and stall, and a client that pipelines large pulls and never reads
//! the responses. The broker keeps serving everyone else, closes what is idle, and its memory
//! stays within what its per-connection limits allow.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quiver_net::client::RemotingClient;
use quiver_net::message::decode_messages;
use quiver_net::remoting::RemotingCommand;
use quiver_net::remoting::codes::{request, response};
use quiver_net::remoting::frame::FrameCodec;
use support::{Standalone, free_port, pull};

const CALL: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;
/// The broker's per-connection limits at their defaults (`quiver_net::server`).
const OUTPUT_MAX_BYTES: u64 = quiver_net::server::DEFAULT_OUTPUT_MAX_BYTES as u64;
const INPUT_MAX_BYTES: u64 = quiver_net::server::DEFAULT_MAX_IN_FLIGHT_REQUEST_BYTES as u64;

/// Serialises changes of this process's open-file limit with the spawns that inherit it.
static RLIMIT: Mutex<()> = Mutex::new(());

fn nofile() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    (limit.rlim_cur, limit.rlim_max)
}

fn set_nofile(soft: u64, hard: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct it is given.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Starts the broker with this process's soft open-file limit raised to its hard limit (this
/// process holds many connections), or, with `child_soft`, with the child inheriting that soft
/// limit instead, as a broker started from a shell with the usual default would.
fn start(config: &Path, data: &Path, child_soft: Option<u64>) -> Standalone {
    let _guard = RLIMIT.lock().unwrap_or_else(|p| p.into_inner());
    let (_, hard) = nofile();
    if let Some(soft) = child_soft {
        set_nofile(soft.min(hard), hard);
    }
    let broker = Standalone::start(config, data);
    set_nofile(hard, hard);
    broker
}

/// As `support::write_config`, with lines for `[broker.store.log]` as well.
fn write_config(dir: &Path, broker_extra: &str, log_extra: &str) -> PathBuf {
    let path = dir.join("quiver.toml");
    let text = format!(
        "[namesrv]\nlisten = \"127.0.0.1:{}\"\n\
         [broker]\nlisten = \"127.0.0.1:{}\"\nvip_channel = false\nbroker_ip = \"127.0.0.1\"\n{broker_extra}\n\
         [broker.store]\nshards = 2\npin_threads = false\ncq_file_entries = 4096\n\
         [broker.store.log]\nflush = \"async\"\nsegment_bytes = 16777216\n{log_extra}\n",
        free_port(),
        free_port()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The broker process: the one whose command line names `config`.
fn broker_pid(config: &Path) -> u32 {
    let needle = config.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "standalone") && args.contains(&needle) {
            return pid;
        }
    }
    panic!("no process runs with {needle}");
}

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib << 10
}

fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

fn send(topic: &str, queue: i32, body: impl Into<Bytes>) -> RemotingCommand {
    RemotingCommand::request(request::SEND_MESSAGE_V2)
        .with_field("a", "overload-producer")
        .with_field("b", topic)
        .with_field("c", "TBW102")
        .with_field("d", 4)
        .with_field("e", queue)
        .with_field("f", 0)
        .with_field("g", 0)
        .with_field("h", 0)
        .with_body(body)
}

/// Sends `body` and reads it back at the offset the broker gave it.
async fn round_trip(client: &RemotingClient, topic: &str, body: Vec<u8>) {
    let answer = client.invoke(send(topic, 0, body.clone()), CALL).await;
    let answer = answer.unwrap_or_else(|e| panic!("send to {topic}: {e}"));
    assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
    let offset: i64 = answer.required_parsed("queueOffset").unwrap();
    let answer = client.invoke(pull(topic, 0, offset, 1, 0), CALL).await;
    let answer = answer.unwrap_or_else(|e| panic!("pull from {topic}: {e}"));
    assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
    let messages = decode_messages(&answer.body_bytes()).unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body.as_ref(), &body[..]);
}

/// Thousands of connections opened and held while a normal client sends and pulls; at the end
/// the held ones are still served. The broker is started with the usual soft open-file limit
/// (1024), so this holds only because it raises its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_held_connections_and_normal_traffic_are_all_served() {
    const HELD: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "", "");
    let broker = start(&config, &dir.path().join("data"), Some(1024));
    let (_, hard) = nofile();
    assert!(
        hard as usize > HELD + 256,
        "this test needs a hard open-file limit above {}, not {hard}",
        HELD + 256
    );
    let pid = broker_pid(&config);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files[3], open_files[4],
        "the broker did not raise its soft open-file limit: {open_files:?}"
    );

    let addr = broker.broker;
    let traffic = tokio::spawn(async move {
        let client = RemotingClient::connect(addr).await.unwrap();
        let mut rounds = 0u64;
        let started = Instant::now();
        // Until the held connections are all open, and a while after.
        while rounds < 200 || started.elapsed() < Duration::from_secs(3) {
            round_trip(&client, "normal", format!("normal-{rounds}").into_bytes()).await;
            rounds += 1;
        }
        rounds
    });
    let started = Instant::now();
    let mut held = Vec::with_capacity(HELD);
    for i in 0..HELD {
        let client = RemotingClient::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        held.push(client);
    }
    eprintln!("{HELD} connections opened in {:?}", started.elapsed());
    let rounds = traffic.await.unwrap();
    eprintln!("normal traffic: {rounds} send + pull round trips meanwhile");

    // Every tenth held connection is answered, all at once.
    let mut asks = tokio::task::JoinSet::new();
    for (i, client) in held.iter().enumerate().step_by(10) {
        let client = client.clone();
        asks.spawn(async move {
            let answer = client
                .invoke(send("held", 0, format!("held-{i}").into_bytes()), CALL)
                .await
                .unwrap_or_else(|e| panic!("held connection {i}: {e}"));
            assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
        });
    }
    let mut answered = 0;
    while let Some(done) = asks.join_next().await {
        done.unwrap();
        answered += 1;
    }
    assert_eq!(answered, HELD.div_ceil(10));
    assert!(held.iter().all(|c| !c.is_closed()));
    drop(held);
    broker.stop();
}

/// Clients that send part of a frame and stall hold up no one, and the idle timeout closes
/// them; a pull held longer than the timeout is not idleness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_partial_frames_hold_up_no_one_and_idle_connections_are_closed() {
    const IDLE: Duration = Duration::from_secs(2);
    const HOLD_MS: i64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("connection_idle_timeout_ms = {}", IDLE.as_millis()),
        "",
    );
    let broker = start(&config, &dir.path().join("data"), None);
    let client = RemotingClient::connect(broker.broker).await.unwrap();
    round_trip(&client, "slow", b"first".to_vec()).await;

    // A frame's length and header length, a few header bytes, then nothing; and one connection
    // that never sends a byte.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let c = RemotingClient::connect(broker.broker).await.unwrap();
        let mut head = Vec::new();
        head.extend_from_slice(&1000u32.to_be_bytes());
        head.extend_from_slice(&200u32.to_be_bytes());
        head.extend_from_slice(b"{\"code\":");
        c.send_raw(Bytes::from(head)).unwrap();
        stalled.push(c);
    }
    stalled.push(RemotingClient::connect(broker.broker).await.unwrap());
    let stalled_at = Instant::now();

    // A pull held past the idle timeout: queue 1 of the topic has nothing.
    let holder = RemotingClient::connect(broker.broker).await.unwrap();
    let held = {
        let holder = holder.clone();
        tokio::spawn(async move {
            let asked = Instant::now();
            let answer = holder.invoke(pull("slow", 1, 0, 1, HOLD_MS), CALL).await;
            (answer, asked.elapsed())
        })
    };

    // Others are served meanwhile.
    for i in 0..50 {
        round_trip(&client, "slow", format!("meanwhile-{i}").into_bytes()).await;
    }
    assert!(
        stalled_at.elapsed() < IDLE,
        "the round trips took longer than the idle timeout; the test proves nothing"
    );

    let mut first_closed = None;
    for (i, c) in stalled.iter().enumerate() {
        assert!(
            c.wait_closed(Duration::from_secs(10)).await,
            "stalled connection {i} was not closed"
        );
        first_closed.get_or_insert(stalled_at.elapsed());
    }
    let (first, last) = (first_closed.unwrap(), stalled_at.elapsed());
    eprintln!("stalled connections closed after {first:?} (first) to {last:?} (last)");
    assert!(
        first >= IDLE - Duration::from_millis(200),
        "closed after {first:?}, before the idle timeout"
    );

    let (answer, waited) = held.await.unwrap();
    let answer = answer.expect("the held pull's connection was closed while it was held");
    assert_eq!(answer.code, response::PULL_NOT_FOUND, "{:?}", answer.remark);
    assert!(
        waited >= Duration::from_millis(HOLD_MS as u64 - 500),
        "{waited:?}"
    );
    eprintln!("held pull answered after {waited:?}");
    broker.stop();
}

/// The broker's side of the loopback connection from `client_port` to `broker_port` has no
/// descriptor any more (gone, or orphaned: inode 0 in `/proc/net/tcp`).
fn broker_side_closed(broker_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    for row in table.lines().skip(1) {
        let fields: Vec<&str> = row.split_whitespace().collect();
        if fields.len() > 9
            && port(fields[1]) == Some(broker_port)
            && port(fields[2]) == Some(client_port)
        {
            return fields[9] == "0";
        }
    }
    true
}

fn frame(command: &RemotingCommand) -> Vec<u8> {
    FrameCodec::default().encode(command).unwrap().concat()
}

/// What the client that never reads saw.
#[derive(Debug, Default)]
struct Unread {
    pulls_written: usize,
    /// Times the broker closed the connection under it (it reconnected).
    closed_by_broker: usize,
    peak_rss: u64,
}

/// Pipelines `pulls` pulls of several MiB each over a raw socket, paced, never reading a byte;
/// samples the broker's RSS after each, then for a second more. Stops early once the RSS passes
/// `bound`: without limits it would go on growing.
fn never_reading_client(broker: SocketAddr, pid: u32, pulls: usize, bound: u64) -> Unread {
    let connect = || {
        let s = TcpStream::connect(broker).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let mut stream = connect();
    let mut seen = Unread::default();
    for i in 0..pulls {
        let mut command = pull("wide", 0, ((i * 7) % 140) as i64, 16, 0);
        command.opaque = i as i32;
        match stream.write_all(&frame(&command)) {
            Ok(()) => seen.pulls_written += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // The broker stopped reading and the socket buffers are full: as meant.
                break;
            }
            Err(_) => {
                seen.closed_by_broker += 1;
                stream = connect();
            }
        }
        seen.peak_rss = seen.peak_rss.max(rss(pid));
        if seen.peak_rss > bound {
            return seen;
        }
        // Paced, as a client pipelining pulls would: the broker sees a stream, not one burst.
        std::thread::sleep(Duration::from_millis(5));
    }
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until && seen.peak_rss <= bound {
        seen.peak_rss = seen.peak_rss.max(rss(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stream);
    seen
}

/// A client pipelining pulls of several MiB and never reading the responses: the broker's
/// memory stays within its baseline plus the per-connection output and input limits (and some
/// slack), other clients are served meanwhile, and a burst that takes the output past its hard
/// limit gets the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_bounded_and_others_are_served() {
    const BODY: usize = 256 << 10;
    const FILL: usize = 160;
    const PULLS: usize = 300;
    // Room for the pulls in flight when reading pauses (each holds its buffer read from the
    // log until its response is queued or dropped), the allocator's slack, the normal client.
    const SLACK: u64 = 128 * MIB;
    let dir = tempfile::tempdir().unwrap();
    // Pulls of up to 4 MiB; nothing kept in memory after it is written, so every pull reads
    // the log into a fresh buffer (a pull of cached data would share the cache's memory).
    let config = write_config(
        dir.path(),
        "max_pull_bytes = 4194304",
        "read_cache_bytes = 0",
    );
    let broker = start(&config, &dir.path().join("data"), None);
    let pid = broker_pid(&config);
    let client = RemotingClient::connect(broker.broker).await.unwrap();
    for i in 0..FILL {
        let answer = client
            .invoke(send("wide", 0, vec![i as u8; BODY]), CALL)
            .await
            .unwrap();
        assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
    }
    let answer = client
        .invoke(pull("wide", 0, 0, 16, 0), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
    let one_pull = answer.body_len() as u64;
    assert!(one_pull > 3 * MIB, "a pull returns {one_pull} bytes");

    let baseline = rss(pid);
    reset_peak(pid);
    let bound = baseline + OUTPUT_MAX_BYTES + INPUT_MAX_BYTES + SLACK;
    let addr = broker.broker;
    let unread = std::thread::spawn(move || never_reading_client(addr, pid, PULLS, bound));
    let mut rounds = 0;
    while !unread.is_finished() {
        round_trip(&client, "normal", format!("normal-{rounds}").into_bytes()).await;
        rounds += 1;
    }
    let seen = unread.join().unwrap();
    let peak = status_bytes(pid, "VmHWM:");
    eprintln!(
        "never-reading client: {} pulls of {:.1} MiB written ({:.0} MiB of responses), closed by the broker {} times; \
         broker RSS baseline {:.0} MiB, sampled peak {:.0} MiB, VmHWM {:.0} MiB, bound {:.0} MiB; \
         {rounds} normal round trips meanwhile",
        seen.pulls_written,
        mib(one_pull),
        mib(one_pull * seen.pulls_written as u64),
        seen.closed_by_broker,
        mib(baseline),
        mib(seen.peak_rss),
        mib(peak),
        mib(bound),
    );
    assert!(
        seen.peak_rss.max(peak) <= bound,
        "broker RSS reached {:.0} MiB, past the bound of {:.0} MiB",
        mib(seen.peak_rss.max(peak)),
        mib(bound)
    );
    assert!(rounds > 0, "no normal traffic ran meanwhile");
    round_trip(&client, "normal", b"after".to_vec()).await;

    // A burst of pulls read at once: their responses pass the hard limit, and the broker closes
    // the connection instead of keeping them.
    let mut burst = TcpStream::connect(broker.broker).unwrap();
    let client_port = burst.local_addr().unwrap().port();
    let mut bytes = Vec::new();
    for i in 0..32 {
        let mut command = pull("wide", 0, (i * 4) as i64, 16, 0);
        command.opaque = i;
        bytes.extend(frame(&command));
    }
    burst.write_all(&bytes).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !broker_side_closed(broker.broker.port(), client_port) {
        assert!(
            Instant::now() < deadline,
            "the broker kept a connection whose unread responses passed the output limit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak = status_bytes(pid, "VmHWM:");
    eprintln!(
        "burst of 32 pulls ({:.0} MiB of responses): connection closed by the broker; VmHWM {:.0} MiB",
        mib(32 * one_pull),
        mib(peak)
    );
    assert!(peak <= bound, "broker RSS reached {:.0} MiB", mib(peak));
    round_trip(&client, "normal", b"after the burst".to_vec()).await;
    drop(burst);
    broker.stop();
}
