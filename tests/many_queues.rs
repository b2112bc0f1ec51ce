//! A real `quiver standalone` under a low open-file limit (set in the child, soft and hard, so it
//! cannot raise it) holding far more non-empty queues than the limit: it fills them, restarts
//! under the same limit, serves every acknowledged message back, and keeps answering new
//! connections; under a limit too low to run at all it refuses to start, saying why.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use quiver_net::client::RemotingClient;
use quiver_net::remoting::RemotingCommand;
use quiver_net::remoting::codes::{request, response};
use support::{Standalone, free_port, write_config};

/// The child's open-file limit: below the number of queues it holds.
const FILE_LIMIT: u64 = 256;
const TOPICS: usize = 250;
const QUEUES: i32 = 8;
const PER_QUEUE: i64 = 3;
const CALL: Duration = Duration::from_secs(30);

fn send(topic: &str, queue: i32, body: String) -> RemotingCommand {
    RemotingCommand::request(request::SEND_MESSAGE_V2)
        .with_field("a", "many-queues-producer")
        .with_field("b", topic)
        .with_field("c", "TBW102")
        .with_field("d", QUEUES)
        .with_field("e", queue)
        .with_field("f", 0)
        .with_field("g", 0)
        .with_field("h", 0)
        .with_body(body.into_bytes())
}

fn topic(t: usize) -> String {
    format!("many-{t}")
}

/// Descriptors the process holds.
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// (topic, queue, offset) → body of every answered send.
type Acked = BTreeMap<(String, i32, i64), String>;

async fn fill(broker: std::net::SocketAddr) -> Acked {
    let client = RemotingClient::connect(broker).await.expect("connecting");
    let mut acked = Acked::new();
    for round in 0..PER_QUEUE {
        // Every queue of 25 topics at once, one send each.
        for topics in (0..TOPICS).collect::<Vec<_>>().chunks(25) {
            let sends = topics.iter().flat_map(|&t| {
                let client = &client;
                (0..QUEUES).map(move |q| {
                    let body = format!("{}/{q}/{round}", topic(t));
                    async move {
                        let answer = client
                            .invoke(send(&topic(t), q, body.clone()), CALL)
                            .await
                            .expect("a send answered");
                        assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
                        let offset: i64 = answer.required_parsed("queueOffset").unwrap();
                        ((topic(t), q, offset), body)
                    }
                })
            });
            acked.extend(join_all(sends).await);
        }
    }
    acked
}

async fn assert_all_there(broker: std::net::SocketAddr, acked: &Acked) {
    let client = RemotingClient::connect(broker).await.expect("connecting");
    let mut stored = Acked::new();
    for t in 0..TOPICS {
        for q in 0..QUEUES {
            for m in support::read_queue(&client, &topic(t), q).await {
                let body = String::from_utf8_lossy(&m.body).into_owned();
                stored.insert((topic(t), q, m.queue_offset), body);
            }
        }
    }
    assert_eq!(stored.len(), acked.len(), "messages stored vs acknowledged");
    assert!(
        stored == *acked,
        "the store holds other messages than were acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_queues_under_a_limit_of_256_files_fill_restart_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), free_port(), free_port(), "async", "");
    let quiver = Standalone::start_with_file_limit(&config, &data, FILE_LIMIT);
    let acked = fill(quiver.broker).await;
    assert_eq!(acked.len(), TOPICS * QUEUES as usize * PER_QUEUE as usize);
    assert_all_there(quiver.broker, &acked).await;
    let held = fds_of(quiver.pid());
    assert!(held < FILE_LIMIT as usize, "{held} descriptors held");
    quiver.stop();

    let quiver = Standalone::start_with_file_limit(&config, &data, FILE_LIMIT);
    assert_all_there(quiver.broker, &acked).await;
    // More connections than the limit allows: each is answered or closed, none left hanging.
    let connects = (0..FILE_LIMIT as usize).map(|_| async {
        let attempt = async {
            let client = RemotingClient::connect(quiver.broker).await.ok()?;
            let ask = RemotingCommand::request(request::GET_MAX_OFFSET)
                .with_field("topic", topic(7))
                .with_field("queueId", 3);
            let answer = client.invoke(ask, CALL).await.ok()?;
            Some((client, answer.code))
        };
        tokio::time::timeout(Duration::from_secs(60), attempt).await
    });
    let outcomes = join_all(connects).await;
    let hung = outcomes.iter().filter(|o| o.is_err()).count();
    assert_eq!(hung, 0, "connections left hanging at the descriptor limit");
    let served = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Some((_, code))) if *code == response::SUCCESS))
        .count();
    assert!(served > 0, "no connection was served");
    drop(outcomes);
    // Once the clients are gone (the broker sees each close), it serves everything again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ask = RemotingCommand::request(request::GET_MAX_OFFSET)
            .with_field("topic", topic(7))
            .with_field("queueId", 3);
        let served = match RemotingClient::connect(quiver.broker).await {
            Ok(client) => client
                .invoke(ask, CALL)
                .await
                .is_ok_and(|a| a.code == response::SUCCESS),
            Err(_) => false,
        };
        if served {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_all_there(quiver.broker, &acked).await;
    quiver.stop();
}

#[test]
fn a_limit_too_low_to_run_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), free_port(), "async", "");
    let mut command = Standalone::command(&config, &dir.path().join("data"));
    support::limit_open_files(&mut command, 64);
    let output = command.output().expect("running quiver");
    assert!(!output.status.success(), "it started under a limit of 64");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("open-file limit is 64") && stderr.contains("ulimit -n"),
        "{stderr}"
    );
}
