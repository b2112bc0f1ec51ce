//! `quiver admin` end to end: the real binary against a real `quiver standalone`, each command
//! checked for the content it must show (queues created, offsets counted, lag, resets, the
//! right message bodies), and the errors an operator meets (an unreachable name server, a
//! topic without a route, a reset under live consumers).

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use assert_cmd::Command;
use bytes::Bytes;
use predicates::prelude::*;
use quiver_net::client::RemotingClient;
use quiver_net::protocol::encode_json;
use quiver_net::protocol::heartbeat::{ConsumerData, HeartbeatData, SubscriptionData};
use quiver_net::remoting::RemotingCommand;
use quiver_net::remoting::codes::{request, response};
use serde_json::Value;
use support::{Standalone, free_port, write_config};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A standalone broker in a temporary directory, and a runtime to talk to it directly.
struct Cluster {
    server: Standalone,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), free_port(), free_port(), "async", "");
        let server = Standalone::start(&config, &dir.path().join("data"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Cluster {
            server,
            runtime,
            _dir: dir,
        }
    }

    /// `quiver admin <args>` pointed at this cluster's name server.
    fn admin(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
        cmd.arg("admin")
            .args(args)
            .arg("--namesrv")
            .arg(self.server.namesrv.to_string())
            .timeout(Duration::from_secs(60));
        cmd
    }

    /// Runs `quiver admin <args> --json`, insists on success and parses what it printed.
    fn json(&self, args: &[&str]) -> Value {
        let output = self.admin(args).arg("--json").assert().success();
        serde_json::from_slice(&output.get_output().stdout).unwrap()
    }

    fn create_topic(&self, topic: &str, queues: u32) {
        self.admin(&["topic", "create", topic, "--queues", &queues.to_string()])
            .assert()
            .success()
            .stdout(predicate::str::contains(format!("created topic {topic}")));
    }

    fn broker(&self) -> RemotingClient {
        self.runtime
            .block_on(RemotingClient::connect(self.server.broker))
            .unwrap()
    }

    fn call(&self, client: &RemotingClient, ask: RemotingCommand) -> RemotingCommand {
        self.runtime.block_on(client.invoke(ask, TIMEOUT)).unwrap()
    }

    /// Sends one message to a queue and waits until it is readable there; returns the send
    /// answer (message id, queue offset).
    fn send(&self, topic: &str, queue: u32, body: &str, keys: &str) -> RemotingCommand {
        let client = self.broker();
        let properties = if keys.is_empty() {
            String::new()
        } else {
            format!("KEYS\u{1}{keys}\u{2}")
        };
        let ask = RemotingCommand::request(request::SEND_MESSAGE_V2)
            .with_field("a", "cli-test-producer")
            .with_field("b", topic)
            .with_field("c", "TBW102")
            .with_field("d", 4)
            .with_field("e", queue)
            .with_field("f", 0)
            .with_field("g", now_ms())
            .with_field("h", 0)
            .with_field("i", properties)
            .with_field("j", 0)
            .with_field("k", false)
            .with_body(Bytes::from(body.to_string()));
        let answer = self.call(&client, ask);
        assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
        let offset: i64 = answer.required_parsed("queueOffset").unwrap();
        self.wait_readable(&client, topic, queue, offset);
        answer
    }

    /// Holds a pull at `offset` until the broker has indexed the message there (sends are
    /// answered before the offset index is written).
    fn wait_readable(&self, client: &RemotingClient, topic: &str, queue: u32, offset: i64) {
        let ask = RemotingCommand::request(request::PULL_MESSAGE)
            .with_field("consumerGroup", "cli-test-waiter")
            .with_field("topic", topic)
            .with_field("queueId", queue)
            .with_field("queueOffset", offset)
            .with_field("maxMsgNums", 1)
            // FLAG_SUSPEND | FLAG_SUBSCRIPTION: held until the message arrives.
            .with_field("sysFlag", 6)
            .with_field("commitOffset", 0)
            .with_field("suspendTimeoutMillis", 5_000)
            .with_field("subscription", "*")
            .with_field("subVersion", 0);
        let answer = self.call(client, ask);
        assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
    }

    fn commit(&self, group: &str, topic: &str, queue: u32, offset: i64) {
        let ask = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
            .with_field("consumerGroup", group)
            .with_field("topic", topic)
            .with_field("queueId", queue)
            .with_field("commitOffset", offset);
        let answer = self.call(&self.broker(), ask);
        assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
    }

    fn committed(&self, group: &str, topic: &str, queue: u32) -> i64 {
        let ask = RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
            .with_field("consumerGroup", group)
            .with_field("topic", topic)
            .with_field("queueId", queue);
        let answer = self.call(&self.broker(), ask);
        assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
        answer.required_parsed("offset").unwrap()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn i64_at(value: &Value, pointer: &str) -> i64 {
    value
        .pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no integer at {pointer} in {value}"))
}

#[test]
fn a_created_topic_has_its_queues_in_the_route_and_the_list() {
    let cluster = Cluster::start();
    cluster.create_topic("cli-route", 4);
    let route = cluster.json(&["topic", "route", "cli-route"]);
    let queues = route["queueDatas"].as_array().unwrap();
    assert_eq!(queues.len(), 1, "{route}");
    assert_eq!(i64_at(&queues[0], "/readQueueNums"), 4);
    assert_eq!(i64_at(&queues[0], "/writeQueueNums"), 4);
    assert_eq!(route["brokerDatas"][0]["brokerName"], "broker-a");
    cluster
        .admin(&["topic", "route", "cli-route"])
        .assert()
        .success()
        .stdout(predicate::str::contains("broker-a").and(predicate::str::contains("rw")));
    let topics = cluster.json(&["topic", "list"]);
    assert!(
        topics.as_array().unwrap().iter().any(|t| t == "cli-route"),
        "{topics}"
    );

    // Read-only, with different read and write counts, on the one broker by address.
    cluster
        .admin(&[
            "topic",
            "create",
            "cli-route-ro",
            "--read-queues",
            "2",
            "--write-queues",
            "3",
            "--perm",
            "r",
            "--broker",
            &cluster.server.broker.to_string(),
        ])
        .assert()
        .success();
    let route = cluster.json(&["topic", "route", "cli-route-ro"]);
    assert_eq!(i64_at(&route, "/queueDatas/0/readQueueNums"), 2);
    assert_eq!(i64_at(&route, "/queueDatas/0/writeQueueNums"), 3);
    assert_eq!(i64_at(&route, "/queueDatas/0/perm"), 4);
}

#[test]
fn topic_status_counts_the_messages_sent_to_each_queue() {
    let cluster = Cluster::start();
    cluster.create_topic("cli-status", 4);
    let before = now_ms();
    for (queue, count) in [(0, 3), (1, 2), (3, 1)] {
        for i in 0..count {
            cluster.send("cli-status", queue, &format!("m{i}"), "");
        }
    }
    let status = cluster.json(&["topic", "status", "cli-status"]);
    let queues = status["queues"].as_array().unwrap();
    let max: Vec<i64> = queues.iter().map(|q| i64_at(q, "/maxOffset")).collect();
    assert_eq!(max, [3, 2, 0, 1], "{status}");
    assert_eq!(i64_at(&status, "/totalMessages"), 6);
    assert!(i64_at(&queues[0], "/lastUpdateTimestamp") >= before);
    assert_eq!(i64_at(&queues[2], "/lastUpdateTimestamp"), 0);
    cluster
        .admin(&["topic", "status", "cli-status"])
        .assert()
        .success()
        .stdout(predicate::str::contains("6 message(s) in 4 queue(s)"));
}

#[test]
fn group_progress_shows_the_lag_behind_a_committed_offset() {
    let cluster = Cluster::start();
    cluster.create_topic("cli-progress", 2);
    for i in 0..5 {
        cluster.send("cli-progress", 0, &format!("m{i}"), "");
    }
    cluster.send("cli-progress", 1, "other", "");
    cluster.commit("cli-group", "cli-progress", 0, 2);
    let progress = cluster.json(&["group", "progress", "cli-group", "--topic", "cli-progress"]);
    let q0 = &progress["queues"][0];
    assert_eq!(
        (
            i64_at(q0, "/queueId"),
            i64_at(q0, "/brokerOffset"),
            i64_at(q0, "/consumerOffset"),
            i64_at(q0, "/lag")
        ),
        (0, 5, 2, 3),
        "{progress}"
    );
    assert!(
        i64_at(q0, "/lastTimestamp") > 0,
        "the last consumed message has a time"
    );
    assert_eq!(i64_at(&progress, "/queues/1/lag"), 1);
    assert_eq!(i64_at(&progress, "/totalLag"), 4);
    // Without a topic: the topics the group has offsets on.
    let all = cluster.json(&["group", "progress", "cli-group"]);
    assert_eq!(all["queues"][0]["topic"], "cli-progress");
    cluster
        .admin(&["group", "progress", "cli-group", "--topic", "cli-progress"])
        .assert()
        .success()
        .stdout(predicate::str::contains("total lag 4"));
    cluster
        .admin(&["group", "progress", "nobody"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("has committed no offset"));
}

#[test]
fn reset_offset_moves_the_committed_offset_to_a_time_and_to_either_end() {
    let cluster = Cluster::start();
    cluster.create_topic("cli-reset", 1);
    cluster.send("cli-reset", 0, "old-0", "");
    cluster.send("cli-reset", 0, "old-1", "");
    let last_old: i64 = cluster.json(&["message", "at", "cli-reset", "0", "1"])["storeTimestamp"]
        .as_i64()
        .unwrap();
    // The clock moving past the last old message is what separates old from new.
    while now_ms() <= last_old {
        std::thread::sleep(Duration::from_millis(1));
    }
    let cut = now_ms();
    cluster.send("cli-reset", 0, "new-2", "");
    cluster.send("cli-reset", 0, "new-3", "");
    cluster.commit("cli-reset-group", "cli-reset", 0, 4);

    let reset = cluster.json(&[
        "group",
        "reset-offset",
        "cli-reset-group",
        "--topic",
        "cli-reset",
        "--to",
        &cut.to_string(),
    ]);
    assert_eq!(i64_at(&reset, "/queues/0/previousOffset"), 4, "{reset}");
    assert_eq!(i64_at(&reset, "/queues/0/newOffset"), 2);
    assert_eq!(cluster.committed("cli-reset-group", "cli-reset", 0), 2);

    let args = |to: &'static str| {
        [
            "group",
            "reset-offset",
            "cli-reset-group",
            "--topic",
            "cli-reset",
            "--to",
            to,
        ]
    };
    cluster
        .admin(&args("earliest"))
        .assert()
        .success()
        .stdout(predicate::str::contains("earliest"));
    assert_eq!(cluster.committed("cli-reset-group", "cli-reset", 0), 0);
    cluster
        .admin(&args("2999-01-01T00:00:00Z"))
        .assert()
        .success();
    assert_eq!(cluster.committed("cli-reset-group", "cli-reset", 0), 4);
    cluster
        .admin(&args("next tuesday"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("RFC 3339"));

    // A live member of the group would commit over the reset: refused unless forced.
    let member = cluster.broker();
    let heartbeat = HeartbeatData {
        client_id: "cli-test-consumer".into(),
        consumer_data_set: vec![ConsumerData {
            group_name: "cli-reset-group".into(),
            consume_type: "CONSUME_PASSIVELY".into(),
            message_model: "CLUSTERING".into(),
            consume_from_where: "CONSUME_FROM_LAST_OFFSET".into(),
            subscription_data_set: vec![SubscriptionData::from_expression("cli-reset", "*", 0)],
            ..ConsumerData::default()
        }],
        ..HeartbeatData::default()
    };
    let answer = cluster.call(
        &member,
        RemotingCommand::request(request::HEART_BEAT).with_body(encode_json(&heartbeat)),
    );
    assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
    cluster.admin(&args("earliest")).assert().failure().stderr(
        predicate::str::contains("cli-test-consumer").and(predicate::str::contains("--force")),
    );
    assert_eq!(cluster.committed("cli-reset-group", "cli-reset", 0), 4);
    cluster
        .admin(&args("earliest"))
        .arg("--force")
        .assert()
        .success();
    assert_eq!(cluster.committed("cli-reset-group", "cli-reset", 0), 0);
}

#[test]
fn messages_are_found_by_id_by_key_and_by_queue_offset() {
    let cluster = Cluster::start();
    cluster.create_topic("cli-msg", 2);
    let mut ids = Vec::new();
    for i in 0..3 {
        let keys = if i == 1 { "order-7 other" } else { "order-8" };
        let answer = cluster.send("cli-msg", 1, &format!("body-{i}"), keys);
        ids.push(answer.field("msgId").unwrap().to_string());
    }

    let by_id = cluster.json(&["message", "id", &ids[1]]);
    assert_eq!(by_id["body"], "body-1", "{by_id}");
    assert_eq!(i64_at(&by_id, "/queueOffset"), 1);
    assert_eq!(by_id["msgId"], ids[1].as_str());
    // By the producer's unique id (the broker gave one), with the topic.
    let uniq = by_id["uniqKey"].as_str().unwrap().to_string();
    let by_uniq = cluster.json(&["message", "id", &uniq, "--topic", "cli-msg"]);
    assert_eq!(by_uniq["body"], "body-1");

    let by_key = cluster.json(&["message", "key", "cli-msg", "order-7"]);
    let bodies: Vec<&str> = by_key
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["body-1"]);
    let by_key = cluster.json(&["message", "key", "cli-msg", "order-8"]);
    assert_eq!(by_key.as_array().unwrap().len(), 2, "{by_key}");
    cluster
        .admin(&["message", "key", "cli-msg", "order-404"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "no message of topic cli-msg has the key order-404",
        ));

    let at = cluster.json(&["message", "at", "cli-msg", "1", "2"]);
    assert_eq!(at["body"], "body-2", "{at}");
    assert_eq!(i64_at(&at, "/queueOffset"), 2);
    assert_eq!(at["msgId"], ids[2].as_str());
    cluster
        .admin(&["message", "at", "cli-msg", "1", "0"])
        .assert()
        .success()
        .stdout(predicate::str::contains("body-0").and(predicate::str::contains("order-8")));
    cluster
        .admin(&["message", "at", "cli-msg", "1", "9"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("holds offsets 0 to 2"));
    cluster
        .admin(&["message", "at", "cli-msg", "5", "0"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no queue 5"));
    cluster
        .admin(&["message", "id", "not-an-id"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("not an offset message id"));
}

#[test]
fn a_deleted_topic_leaves_the_list_and_the_routes() {
    let cluster = Cluster::start();
    cluster.create_topic("cli-doomed", 2);
    cluster.send("cli-doomed", 0, "bye", "");
    let listed = |c: &Cluster| {
        c.json(&["topic", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "cli-doomed")
    };
    assert!(listed(&cluster));
    cluster
        .admin(&["topic", "delete", "cli-doomed"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "deleted topic cli-doomed on broker-a",
        ));
    assert!(!listed(&cluster));
    cluster
        .admin(&["topic", "route", "cli-doomed"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "no route for topic cli-doomed — create it with `quiver admin topic create cli-doomed`",
        ));
}

#[test]
fn cluster_list_names_the_broker() {
    let cluster = Cluster::start();
    let brokers = cluster.json(&["cluster", "list"]);
    assert_eq!(brokers[0]["cluster"], "DefaultCluster", "{brokers}");
    assert_eq!(brokers[0]["brokerName"], "broker-a");
    assert_eq!(brokers[0]["brokerId"], 0);
    assert_eq!(brokers[0]["addr"], cluster.server.broker.to_string());
    cluster
        .admin(&["cluster", "list"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("broker-a")
                .and(predicate::str::contains("master"))
                .and(predicate::str::contains(cluster.server.broker.to_string())),
        );
}

#[test]
fn broker_status_reports_what_the_broker_knows() {
    let cluster = Cluster::start();
    cluster.create_topic("cli-broker", 1);
    let started = now_ms();
    cluster.send("cli-broker", 0, "one", "");
    cluster.send("cli-broker", 0, "two", "");
    let statuses = cluster.json(&["broker", "status"]);
    let table = &statuses[0]["table"];
    assert_eq!(statuses[0]["brokerName"], "broker-a", "{statuses}");
    assert_eq!(table["brokerVersionDesc"], "V4_9_4");
    assert_eq!(table["flushDiskType"], "ASYNC_FLUSH");
    assert_eq!(table["storeMessagesWritten"], "2");
    assert_eq!(table["storeMessagesHeld"], "2");
    let boot: i64 = table["bootTimestamp"].as_str().unwrap().parse().unwrap();
    assert!(boot > 0 && boot <= now_ms(), "{table}");
    let earliest: i64 = table["earliestMessageTimeStamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(earliest >= started, "{table}");
    assert!(table["runtime"].as_str().unwrap().contains("days"));
    cluster
        .admin(&[
            "broker",
            "status",
            "--broker",
            &cluster.server.broker.to_string(),
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("bootTimestamp").and(predicate::str::contains("V4_9_4")));
}

#[test]
fn an_unreachable_name_server_fails_with_what_to_do() {
    // Nothing listens there: the port was free a moment ago.
    let addr = format!("127.0.0.1:{}", free_port());
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["admin", "topic", "list", "--namesrv", &addr])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains(format!(
                "cannot reach name server {addr}: connection refused"
            ))
            .and(predicate::str::contains("quiver standalone"))
            .and(predicate::str::contains("backtrace").not()),
        );
    // The environment variable names the name servers when the flag does not.
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["admin", "cluster", "list"])
        .env("QUIVER_NAMESRV", &addr)
        .assert()
        .failure()
        .stderr(predicate::str::contains(format!(
            "cannot reach name server {addr}"
        )));
    Command::new(env!("CARGO_BIN_EXE_quiver"))
        .args(["admin", "topic", "list", "--namesrv", "no-port-here"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("host:port"));
}
