//! Crash test of the broker with real processes: in sync flush mode a send is answered only
//! once its message is durable, so every answered send must survive SIGKILL. Producers send
//! concurrently over the remoting protocol; the broker is killed at a random number of
//! answers, restarted, and every queue is read back: each answered message must be at its
//! offset with its exact body, and nothing else may be there but messages that were sent.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver_net::client::RemotingClient;
use quiver_net::remoting::RemotingCommand;
use quiver_net::remoting::codes::{request, response};
use support::{Standalone, free_port, write_config};

const ROUNDS: u64 = 6;
const SENDERS: usize = 16;
const QUEUES: i32 = 4;
const TOPIC: &str = "crash";
const CALL: Duration = Duration::from_secs(10);

/// (queue, offset) → body of every answered send.
type Acked = BTreeMap<(i32, i64), Vec<u8>>;

fn send(queue: i32, body: Vec<u8>) -> RemotingCommand {
    RemotingCommand::request(request::SEND_MESSAGE_V2)
        .with_field("a", "crash-producer")
        .with_field("b", TOPIC)
        .with_field("c", "TBW102")
        .with_field("d", QUEUES)
        .with_field("e", queue)
        .with_field("f", 0)
        .with_field("g", 0)
        .with_field("h", 0)
        .with_body(body)
}

fn body(round: u64, sender: usize, seq: u64) -> Vec<u8> {
    let mut body = format!("r{round}-s{sender}-n{seq}|").into_bytes();
    let pad = ((round * 7919 + sender as u64 * 104_729 + seq * 31) % 3000) as usize;
    body.extend((0..pad).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seq as u8)));
    body
}

/// Sends until the connection fails, recording every answered send.
async fn sender(
    client: RemotingClient,
    round: u64,
    id: usize,
    acked: Arc<Mutex<Acked>>,
    count: Arc<AtomicUsize>,
) {
    for seq in 0.. {
        let queue = ((id as u64 + seq) % QUEUES as u64) as i32;
        let body = body(round, id, seq);
        let Ok(answer) = client.invoke(send(queue, body.clone()), CALL).await else {
            return;
        };
        if answer.code != response::SUCCESS {
            return;
        }
        let offset: i64 = answer.required_parsed("queueOffset").unwrap();
        let queue_id: i32 = answer.required_parsed("queueId").unwrap();
        let previous = acked.lock().unwrap().insert((queue_id, offset), body);
        assert!(
            previous.is_none(),
            "offset {offset} of queue {queue_id} answered twice"
        );
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every message of every queue, by (queue, offset).
async fn read_back(broker: std::net::SocketAddr) -> Acked {
    let client = RemotingClient::connect(broker).await.unwrap();
    let mut stored = Acked::new();
    for queue in 0..QUEUES {
        for m in support::read_queue(&client, TOPIC, queue).await {
            stored.insert((queue, m.queue_offset), m.body.to_vec());
        }
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_sync_send_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), free_port(), "sync", "");
    let data = dir.path().join("data");
    let mut acked = Acked::new();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..ROUNDS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = 20 + (seed % 400) as usize;
        let broker = Standalone::start(&config, &data);
        // What earlier rounds acknowledged is all still there.
        let stored = read_back(broker.broker).await;
        for (at, body) in &acked {
            assert_eq!(
                stored.get(at),
                Some(body),
                "round {round}: answered message at {at:?} lost"
            );
        }
        let round_acked = Arc::new(Mutex::new(Acked::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for id in 0..SENDERS {
            let client = RemotingClient::connect(broker.broker).await.unwrap();
            tasks.push(tokio::spawn(sender(
                client,
                round,
                id,
                Arc::clone(&round_acked),
                Arc::clone(&count),
            )));
        }
        while count.load(Ordering::Relaxed) < kill_after {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        broker.kill();
        for task in tasks {
            task.await.unwrap();
        }
        let round_acked = std::mem::take(&mut *round_acked.lock().unwrap());
        eprintln!(
            "round {round}: killed after {} answers (seed {seed:#x})",
            round_acked.len()
        );
        acked.extend(round_acked);
    }
    let broker = Standalone::start(&config, &data);
    let stored = read_back(broker.broker).await;
    for (at, body) in &acked {
        assert_eq!(
            stored.get(at),
            Some(body),
            "answered message at {at:?} lost"
        );
    }
    // Nothing else: every stored message is one a sender made (some were stored but not yet
    // answered when the broker died, which is allowed).
    for (at, body) in &stored {
        let text =
            String::from_utf8_lossy(&body[..body.iter().position(|&b| b == b'|').unwrap_or(0)]);
        let mut parts = text.split('-');
        let round: u64 = parts
            .next()
            .and_then(|p| p.strip_prefix('r')?.parse().ok())
            .unwrap_or_else(|| panic!("{at:?} holds a message nobody sent"));
        let sender: usize = parts
            .next()
            .and_then(|p| p.strip_prefix('s')?.parse().ok())
            .unwrap();
        let seq: u64 = parts
            .next()
            .and_then(|p| p.strip_prefix('n')?.parse().ok())
            .unwrap();
        assert_eq!(body, &self::body(round, sender, seq), "{at:?} is corrupt");
    }
    broker.stop();
}
