//! The broker's protocol over real sockets, driven by Quiver's own remoting client: sends of
//! every kind, pulls with long polling and tag filters, offsets, groups, locks, lookups and
//! admin commands, with a name server beside it.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use quiver_net::broker::{Broker, BrokerConfig};
use quiver_net::client::RemotingClient;
use quiver_net::message::{DecodedMessage, decode_messages, decode_offset_msg_id};
use quiver_net::namesrv::{NameServer, NamesrvConfig};
use quiver_net::protocol::bodies::{ConsumerIdList, LockBatchResponseBody};
use quiver_net::protocol::route::{TopicConfigWrapper, TopicRouteData};
use quiver_net::protocol::{decode_json, encode_json};
use quiver_net::remoting::RemotingCommand;
use quiver_net::remoting::codes::{request, response};

const CALL: Duration = Duration::from_secs(20);

struct Cluster {
    namesrv: NameServer,
    broker: Option<Broker>,
    dir: tempfile::TempDir,
}

fn broker_config(dir: &std::path::Path, namesrv: std::net::SocketAddr) -> BrokerConfig {
    let mut config = BrokerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        vip_channel: false,
        namesrv_addrs: vec![namesrv.to_string()],
        ..BrokerConfig::default()
    };
    config.store.shards = 2;
    config.store.pin_threads = false;
    config.store.cq_file_entries = 1024;
    config.store.log.segment_bytes = 16 << 20;
    config
}

impl Cluster {
    fn start() -> Cluster {
        let namesrv = NameServer::start(NamesrvConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..NamesrvConfig::default()
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(broker_config(dir.path(), namesrv.local_addr())).unwrap();
        Cluster {
            namesrv,
            broker: Some(broker),
            dir,
        }
    }

    fn broker(&self) -> &Broker {
        self.broker.as_ref().unwrap()
    }

    fn restart_broker(&mut self) {
        self.broker.take().unwrap().shutdown().unwrap();
        let broker =
            Broker::start(broker_config(self.dir.path(), self.namesrv.local_addr())).unwrap();
        self.broker = Some(broker);
    }

    async fn client(&self) -> RemotingClient {
        RemotingClient::connect(self.broker().local_addr())
            .await
            .unwrap()
    }
}

/// A V2 send (short header names), as Java and Rust clients send single messages.
fn send_v2(topic: &str, queue_id: i32, body: &[u8], properties: &str) -> RemotingCommand {
    RemotingCommand::request(request::SEND_MESSAGE_V2)
        .with_field("a", "pg")
        .with_field("b", topic)
        .with_field("c", "TBW102")
        .with_field("d", 4)
        .with_field("e", queue_id)
        .with_field("f", 0)
        .with_field("g", 1_700_000_000_000i64)
        .with_field("h", 0)
        .with_field("i", properties)
        .with_field("j", 0)
        .with_field("k", false)
        .with_body(body.to_vec())
}

fn props(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}\u{1}{v}\u{2}"))
        .collect()
}

fn pull(
    topic: &str,
    queue_id: i32,
    offset: i64,
    sys_flag: i32,
    suspend_ms: i64,
    expr: &str,
) -> RemotingCommand {
    RemotingCommand::request(request::PULL_MESSAGE)
        .with_field("consumerGroup", "cg")
        .with_field("topic", topic)
        .with_field("queueId", queue_id)
        .with_field("queueOffset", offset)
        .with_field("maxMsgNums", 32)
        .with_field("sysFlag", sys_flag)
        .with_field("commitOffset", 0)
        .with_field("suspendTimeoutMillis", suspend_ms)
        .with_field("subscription", expr)
        .with_field("subVersion", 0)
        .with_field("expressionType", "TAG")
}

/// PullSysFlag: subscription carried in the request.
const SUB: i32 = 4;
/// PullSysFlag: may be held.
const SUSPEND: i32 = 2;

async fn ok(client: &RemotingClient, req: RemotingCommand) -> RemotingCommand {
    let answer = client.invoke(req, CALL).await.unwrap();
    assert_eq!(
        answer.code,
        response::SUCCESS,
        "remark: {:?}",
        answer.remark
    );
    answer
}

fn messages(answer: &RemotingCommand) -> Vec<DecodedMessage> {
    decode_messages(&answer.body_bytes()).unwrap()
}

fn field<T: std::str::FromStr>(answer: &RemotingCommand, name: &'static str) -> T {
    answer.required_parsed(name).unwrap()
}

#[tokio::test]
async fn sends_are_stored_and_pulled_back_as_rocketmq_clients_decode_them() {
    let cluster = Cluster::start();
    let client = cluster.client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let answer = ok(
            &client,
            send_v2(
                "orders",
                1,
                format!("order {i}").as_bytes(),
                &props(&[
                    ("TAGS", "paid"),
                    ("KEYS", &format!("o-{i}")),
                    ("UNIQ_KEY", &format!("U{i}")),
                ]),
            ),
        )
        .await;
        assert_eq!(field::<i32>(&answer, "queueId"), 1);
        assert_eq!(field::<i64>(&answer, "queueOffset"), i);
        assert_eq!(
            answer.field("transactionId"),
            Some(format!("U{i}").as_str())
        );
        assert_eq!(answer.field("MSG_REGION"), Some("DefaultRegion"));
        let msg_id = answer.field("msgId").unwrap().to_string();
        let (host, _) = decode_offset_msg_id(&msg_id).unwrap();
        assert_eq!(host.to_string(), cluster.broker().advertised_addr());
        ids.push(msg_id);
    }
    let answer = ok(&client, pull("orders", 1, 0, SUB, 0, "*")).await;
    assert_eq!(field::<i64>(&answer, "nextBeginOffset"), 3);
    assert_eq!(field::<i64>(&answer, "maxOffset"), 3);
    assert_eq!(field::<i64>(&answer, "minOffset"), 0);
    assert_eq!(field::<i64>(&answer, "suggestWhichBrokerId"), 0);
    let got = messages(&answer);
    assert_eq!(got.len(), 3);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(&m.body[..], format!("order {i}").as_bytes());
        assert_eq!(m.topic, "orders");
        assert_eq!(m.queue_offset, i as i64);
        assert_eq!(m.properties.get("UNIQ_KEY"), Some(format!("U{i}").as_str()));
        assert_eq!(m.properties.get("CLUSTER"), Some("DefaultCluster"));
        assert_eq!(m.born_timestamp, 1_700_000_000_000);
        assert_eq!(m.offset_msg_id(), ids[i]);
    }
    // Sent without a unique key, one is given.
    let answer = ok(&client, send_v2("orders", 1, b"anon", "")).await;
    let uniq = answer.field("transactionId").unwrap().to_string();
    assert_eq!(uniq.len(), 32);
    let got = messages(&ok(&client, pull("orders", 1, 3, SUB, 0, "*")).await);
    assert_eq!(got[0].properties.get("UNIQ_KEY"), Some(uniq.as_str()));

    // The topic was created from the template with the producer's 4 queues, and registered.
    let namesrv = RemotingClient::connect(cluster.namesrv.local_addr())
        .await
        .unwrap();
    let route = ok(
        &namesrv,
        RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with_field("topic", "orders"),
    )
    .await;
    let route: TopicRouteData = decode_json("route", &route.body_bytes()).unwrap();
    assert_eq!(route.queue_datas[0].write_queue_nums, 4);
    assert_eq!(
        route.broker_datas[0].broker_addrs[&0],
        cluster.broker().advertised_addr()
    );
}

fn batch_body(items: &[(&[u8], &str)]) -> Bytes {
    let mut out = BytesMut::new();
    for (body, props) in items {
        out.put_i32((22 + body.len() + props.len()) as i32);
        out.put_i32(0);
        out.put_i32(0);
        out.put_i32(7);
        out.put_i32(body.len() as i32);
        out.put_slice(body);
        out.put_i16(props.len() as i16);
        out.put_slice(props.as_bytes());
    }
    out.freeze()
}

#[tokio::test]
async fn batches_and_oneway_sends_land_in_order() {
    let cluster = Cluster::start();
    let client = cluster.client().await;
    let items: Vec<(Vec<u8>, String)> = (0..5)
        .map(|i| {
            (
                format!("b{i}").into_bytes(),
                props(&[("UNIQ_KEY", &format!("B{i}"))]),
            )
        })
        .collect();
    let refs: Vec<(&[u8], &str)> = items.iter().map(|(b, p)| (&b[..], p.as_str())).collect();
    let mut batch = send_v2("batched", 0, b"", "");
    batch.code = request::SEND_BATCH_MESSAGE;
    batch.body = vec![batch_body(&refs)];
    let answer = ok(&client, batch).await;
    assert_eq!(answer.field("msgId").unwrap().split(',').count(), 5);
    assert_eq!(field::<i64>(&answer, "queueOffset"), 0);
    assert_eq!(answer.field("transactionId"), None);

    // Oneway sends get no answer; a sync send after them is stored after them.
    for i in 5..8 {
        client
            .invoke_oneway(send_v2("batched", 0, format!("b{i}").as_bytes(), ""))
            .unwrap();
    }
    ok(&client, send_v2("batched", 0, b"b8", "")).await;
    let got = messages(&ok(&client, pull("batched", 0, 0, SUB, 0, "*")).await);
    let bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, (0..9).map(|i| format!("b{i}")).collect::<Vec<_>>());
    assert!(got[..5].iter().all(|m| m.flag == 7));
    assert_eq!(got[2].properties.get("UNIQ_KEY"), Some("B2"));
}

#[tokio::test]
async fn a_held_pull_is_answered_when_a_message_arrives_and_empty_at_its_timeout() {
    let cluster = Cluster::start();
    let client = cluster.client().await;
    ok(&client, send_v2("polled", 2, b"first", "")).await;
    // Caught up, short hold: not found, with the offsets to continue from.
    let answer = client
        .invoke(pull("polled", 2, 1, SUB | SUSPEND, 200, "*"), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::PULL_NOT_FOUND);
    assert_eq!(field::<i64>(&answer, "nextBeginOffset"), 1);
    assert_eq!(field::<i64>(&answer, "maxOffset"), 1);

    // A hold longer than the client will wait (60 s against 20 s): only an answer on arrival
    // passes.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .invoke(pull("polled", 2, 1, SUB | SUSPEND, 60_000, "*"), CALL)
                .await
        })
    };
    // A second connection's send wakes it; the same holds for a queue on any shard.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sender = cluster.client().await;
    ok(&sender, send_v2("polled", 2, b"second", "")).await;
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.code, response::SUCCESS);
    assert_eq!(&messages(&answer)[0].body[..], b"second");

    // A queue of a known topic never written to is polled the same way.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .invoke(pull("polled", 3, 0, SUB | SUSPEND, 60_000, "*"), CALL)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    ok(&sender, send_v2("polled", 3, b"third", "")).await;
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);
}

#[tokio::test]
async fn tag_subscriptions_filter_and_offsets_answer_every_case() {
    let cluster = Cluster::start();
    let client = cluster.client().await;
    for (i, tag) in ["A", "B", "A", "C"].iter().enumerate() {
        ok(
            &client,
            send_v2(
                "tagged",
                0,
                format!("{tag}{i}").as_bytes(),
                &props(&[("TAGS", tag)]),
            ),
        )
        .await;
    }
    let answer = ok(&client, pull("tagged", 0, 0, SUB, 0, "A || C")).await;
    let bodies: Vec<Bytes> = messages(&answer).into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, [&b"A0"[..], b"A2", b"C3"]);
    assert_eq!(field::<i64>(&answer, "nextBeginOffset"), 4);
    // Everything after offset 2 that matches "B": none; the client retries from the end.
    let answer = client
        .invoke(pull("tagged", 0, 2, SUB, 0, "B"), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::PULL_RETRY_IMMEDIATELY);
    assert_eq!(field::<i64>(&answer, "nextBeginOffset"), 4);
    // Beyond the end: moved to the end. A queue never written: moved to 0.
    let answer = client
        .invoke(pull("tagged", 0, 9, SUB, 0, "*"), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::PULL_OFFSET_MOVED);
    assert_eq!(field::<i64>(&answer, "nextBeginOffset"), 4);
    let answer = client
        .invoke(pull("tagged", 1, 5, SUB, 0, "*"), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::PULL_OFFSET_MOVED);
    assert_eq!(field::<i64>(&answer, "nextBeginOffset"), 0);
    // Unknown topic, bad queue, SQL92.
    let answer = client
        .invoke(pull("nope", 0, 0, SUB, 0, "*"), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::TOPIC_NOT_EXIST);
    let answer = client
        .invoke(pull("tagged", 99, 0, SUB, 0, "*"), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::SYSTEM_ERROR);
    let mut sql = pull("tagged", 0, 0, SUB, 0, "a > 1");
    sql.ext_fields.retain(|k, _| k != "expressionType");
    let answer = client
        .invoke(sql.with_field("expressionType", "SQL92"), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::SYSTEM_ERROR);
    assert!(answer.remark.unwrap().contains("SQL92"));
    // Without the subscription flag, a group unknown to the broker is refused.
    let answer = client
        .invoke(pull("tagged", 0, 0, 0, 0, ""), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::SUBSCRIPTION_NOT_EXIST);

    let offset = |code: i32, fields: &[(&str, &str)]| {
        let mut req = RemotingCommand::request(code)
            .with_field("topic", "tagged")
            .with_field("queueId", 0);
        for (k, v) in fields {
            req = req.with_field(k, *v);
        }
        req
    };
    let max = ok(&client, offset(request::GET_MAX_OFFSET, &[])).await;
    assert_eq!(field::<i64>(&max, "offset"), 4);
    let min = ok(&client, offset(request::GET_MIN_OFFSET, &[])).await;
    assert_eq!(field::<i64>(&min, "offset"), 0);
    let earliest = ok(&client, offset(request::GET_EARLIEST_MSG_STORETIME, &[])).await;
    let first_stored: i64 = field(&earliest, "timestamp");
    assert!(first_stored > 0);
    let search = ok(
        &client,
        offset(request::SEARCH_OFFSET_BY_TIMESTAMP, &[("timestamp", "0")]),
    )
    .await;
    assert_eq!(field::<i64>(&search, "offset"), 0);
    let future = ok(
        &client,
        offset(
            request::SEARCH_OFFSET_BY_TIMESTAMP,
            &[("timestamp", "99999999999999")],
        ),
    )
    .await;
    assert_eq!(field::<i64>(&future, "offset"), 4);
    let upper = ok(
        &client,
        offset(
            request::SEARCH_OFFSET_BY_TIMESTAMP,
            &[("timestamp", "99999999999999"), ("boundaryType", "UPPER")],
        ),
    )
    .await;
    assert_eq!(field::<i64>(&upper, "offset"), 3);
}

fn heartbeat(client_id: &str, group: &str, topic: &str, expr: &str) -> RemotingCommand {
    let body = format!(
        r#"{{"clientID":"{client_id}","consumerDataSet":[{{"consumeFromWhere":"CONSUME_FROM_FIRST_OFFSET","consumeType":"CONSUME_PASSIVELY","groupName":"{group}","messageModel":"CLUSTERING","subscriptionDataSet":[{{"classFilterMode":false,"codeSet":[{code}],"expressionType":"TAG","subString":"{expr}","subVersion":5,"tagsSet":["{expr}"],"topic":"{topic}"}}],"unitMode":false}}],"producerDataSet":[{{"groupName":"CLIENT_INNER_PRODUCER"}}]}}"#,
        code = quiver_net::message::java_string_hash(expr),
    );
    RemotingCommand::request(request::HEART_BEAT).with_body(body.into_bytes())
}

#[tokio::test]
async fn groups_learn_members_from_heartbeats_and_are_told_of_changes() {
    let cluster = Cluster::start();
    let first = cluster.client().await;
    let mut first_notices = first.server_requests().unwrap();
    ok(&first, heartbeat("c1", "cg", "news", "sport")).await;
    // Every member is told of every join, its own included.
    let own = tokio::time::timeout(CALL, first_notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(own.code, request::NOTIFY_CONSUMER_IDS_CHANGED);
    let second = cluster.client().await;
    ok(&second, heartbeat("c2", "cg", "news", "sport")).await;
    // c1 is told c2 joined.
    let notice = tokio::time::timeout(CALL, first_notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notice.code, request::NOTIFY_CONSUMER_IDS_CHANGED);
    assert!(notice.is_oneway());
    assert_eq!(notice.field("consumerGroup"), Some("cg"));
    let list = ok(
        &first,
        RemotingCommand::request(request::GET_CONSUMER_LIST_BY_GROUP)
            .with_field("consumerGroup", "cg"),
    )
    .await;
    let list: ConsumerIdList = decode_json("list", &list.body_bytes()).unwrap();
    assert_eq!(list.consumer_id_list, ["c1", "c2"]);
    // The retry topic exists now.
    let topics = ok(
        &first,
        RemotingCommand::request(request::GET_ALL_TOPIC_CONFIG),
    )
    .await;
    let topics: TopicConfigWrapper = decode_json("topics", &topics.body_bytes()).unwrap();
    assert!(topics.topic_config_table.contains_key("%RETRY%cg"));

    // The registered subscription filters pulls that do not carry one.
    ok(
        &first,
        send_v2("news", 0, b"football", &props(&[("TAGS", "sport")])),
    )
    .await;
    ok(
        &first,
        send_v2("news", 0, b"election", &props(&[("TAGS", "politics")])),
    )
    .await;
    let answer = ok(&first, pull("news", 0, 0, 0, 0, "").with_field("x", "y")).await;
    assert_eq!(messages(&answer).len(), 1);
    // A pull naming a newer subscription than the broker has is told so.
    let mut newer = pull("news", 0, 0, 0, 0, "");
    newer.ext_fields.retain(|k, _| k != "subVersion");
    let answer = first
        .invoke(newer.with_field("subVersion", 6), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::SUBSCRIPTION_NOT_LATEST);

    // c2 leaves by closing its connection: c1 is told, the list shrinks.
    drop(second);
    let notice = tokio::time::timeout(CALL, first_notices.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notice.code, request::NOTIFY_CONSUMER_IDS_CHANGED);
    let list = ok(
        &first,
        RemotingCommand::request(request::GET_CONSUMER_LIST_BY_GROUP)
            .with_field("consumerGroup", "cg"),
    )
    .await;
    let list: ConsumerIdList = decode_json("list", &list.body_bytes()).unwrap();
    assert_eq!(list.consumer_id_list, ["c1"]);
    ok(
        &first,
        RemotingCommand::request(request::UNREGISTER_CLIENT)
            .with_field("clientID", "c1")
            .with_field("consumerGroup", "cg"),
    )
    .await;
    let answer = first
        .invoke(
            RemotingCommand::request(request::GET_CONSUMER_LIST_BY_GROUP)
                .with_field("consumerGroup", "cg"),
            CALL,
        )
        .await
        .unwrap();
    assert_eq!(answer.code, response::SYSTEM_ERROR);
}

#[tokio::test]
async fn committed_offsets_survive_a_restart_and_new_groups_start_at_zero() {
    let mut cluster = Cluster::start();
    let client = cluster.client().await;
    ok(&client, send_v2("kept", 0, b"x", "")).await;
    let query = |group: &str| {
        RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
            .with_field("consumerGroup", group)
            .with_field("topic", "kept")
            .with_field("queueId", 0)
    };
    // Never committed, queue never truncated: start at 0. Unless the client says not to.
    assert_eq!(
        field::<i64>(&ok(&client, query("fresh")).await, "offset"),
        0
    );
    let answer = client
        .invoke(query("fresh").with_field("setZeroIfNotFound", false), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::QUERY_NOT_FOUND);

    client
        .invoke_oneway(
            RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
                .with_field("consumerGroup", "cg")
                .with_field("topic", "kept")
                .with_field("queueId", 0)
                .with_field("commitOffset", 1),
        )
        .unwrap();
    // And by a pull's piggyback.
    ok(
        &client,
        pull("kept", 0, 0, SUB | 1, 0, "*").with_field("consumerGroup", "other"),
    )
    .await;
    let mut piggyback = pull("kept", 0, 0, SUB | 1, 0, "*");
    piggyback
        .ext_fields
        .retain(|k, _| k != "commitOffset" && k != "consumerGroup");
    ok(
        &client,
        piggyback
            .with_field("commitOffset", 1)
            .with_field("consumerGroup", "puller"),
    )
    .await;
    // The oneway commit has landed once a later request on the same connection is answered.
    assert_eq!(field::<i64>(&ok(&client, query("cg")).await, "offset"), 1);
    drop(client);
    cluster.restart_broker();
    let client = cluster.client().await;
    assert_eq!(field::<i64>(&ok(&client, query("cg")).await, "offset"), 1);
    assert_eq!(
        field::<i64>(&ok(&client, query("puller")).await, "offset"),
        1
    );
    let all = ok(
        &client,
        RemotingCommand::request(request::GET_ALL_CONSUMER_OFFSET),
    )
    .await;
    assert!(String::from_utf8_lossy(&all.body_bytes()).contains(r#""kept@cg":{"0":1}"#));
    let stats = ok(
        &client,
        RemotingCommand::request(request::GET_CONSUME_STATS)
            .with_field("consumerGroup", "cg")
            .with_field("topic", "kept"),
    )
    .await;
    let stats = String::from_utf8(stats.body_bytes().to_vec()).unwrap();
    assert!(
        stats.contains(r#"{"brokerName":"broker-a","queueId":0,"topic":"kept"}:{"brokerOffset":1,"consumerOffset":1,"#),
        "{stats}"
    );
}

#[tokio::test]
async fn messages_are_found_by_key_by_unique_key_and_by_id() {
    let cluster = Cluster::start();
    let client = cluster.client().await;
    let sent = ok(
        &client,
        send_v2(
            "found",
            0,
            b"needle",
            &props(&[("KEYS", "k1 k2"), ("UNIQ_KEY", "UNIQ-1")]),
        ),
    )
    .await;
    ok(
        &client,
        send_v2("found", 1, b"hay", &props(&[("KEYS", "k3")])),
    )
    .await;
    let query = |key: &str| {
        RemotingCommand::request(request::QUERY_MESSAGE)
            .with_field("topic", "found")
            .with_field("key", key)
            .with_field("maxNum", 10)
            .with_field("beginTimestamp", 0)
            .with_field("endTimestamp", i64::MAX)
    };
    for key in ["k2", "UNIQ-1"] {
        let answer = ok(
            &client,
            query(key).with_field("_UNIQUE_KEY_QUERY", key == "UNIQ-1"),
        )
        .await;
        let got = messages(&answer);
        assert_eq!(got.len(), 1, "{key}");
        assert_eq!(&got[0].body[..], b"needle");
        assert!(answer.field("indexLastUpdateTimestamp").is_some());
    }
    let answer = client.invoke(query("absent"), CALL).await.unwrap();
    assert_eq!(answer.code, response::QUERY_NOT_FOUND);

    let (_, offset) = decode_offset_msg_id(sent.field("msgId").unwrap()).unwrap();
    let view = ok(
        &client,
        RemotingCommand::request(request::VIEW_MESSAGE_BY_ID).with_field("offset", offset),
    )
    .await;
    let got = messages(&view);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], b"needle");
    assert_eq!(got[0].offset_msg_id(), sent.field("msgId").unwrap());
    let answer = client
        .invoke(
            RemotingCommand::request(request::VIEW_MESSAGE_BY_ID).with_field("offset", offset + 3),
            CALL,
        )
        .await
        .unwrap();
    assert_eq!(answer.code, response::SYSTEM_ERROR);
}

fn create_topic(topic: &str, queues: i32) -> RemotingCommand {
    RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
        .with_field("topic", topic)
        .with_field("defaultTopic", "TBW102")
        .with_field("readQueueNums", queues)
        .with_field("writeQueueNums", queues)
        .with_field("perm", 6)
        .with_field("topicFilterType", "SINGLE_TAG")
        .with_field("topicSysFlag", 0)
        .with_field("order", false)
}

#[tokio::test]
async fn admins_create_and_delete_topics_and_routes_follow_at_once() {
    let cluster = Cluster::start();
    let client = cluster.client().await;
    let namesrv = RemotingClient::connect(cluster.namesrv.local_addr())
        .await
        .unwrap();
    ok(&client, create_topic("made", 6)).await;
    // Answered after registration: the route is there already.
    let route = ok(
        &namesrv,
        RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with_field("topic", "made"),
    )
    .await;
    let route: TopicRouteData = decode_json("route", &route.body_bytes()).unwrap();
    assert_eq!(route.queue_datas[0].read_queue_nums, 6);
    ok(&client, send_v2("made", 5, b"x", "")).await;
    let answer = client
        .invoke(send_v2("made", 6, b"x", ""), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::SYSTEM_ERROR, "queue 6 of 6");

    for (bad, why) in [("bad topic!", "name"), ("TBW102", "system")] {
        let answer = client.invoke(create_topic(bad, 4), CALL).await.unwrap();
        assert_eq!(answer.code, response::SYSTEM_ERROR, "{why}");
    }
    let answer = client.invoke(create_topic("zero", 0), CALL).await.unwrap();
    assert_eq!(answer.code, response::SYSTEM_ERROR);

    ok(
        &client,
        RemotingCommand::request(request::DELETE_TOPIC_IN_BROKER).with_field("topic", "made"),
    )
    .await;
    let answer = client
        .invoke(pull("made", 5, 0, SUB, 0, "*"), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::TOPIC_NOT_EXIST);
    // Recreated, it starts empty.
    ok(&client, create_topic("made", 6)).await;
    let answer = client
        .invoke(pull("made", 5, 0, SUB, 0, "*"), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::PULL_NOT_FOUND);
}

#[tokio::test]
async fn orderly_consumers_lock_queues_one_holder_at_a_time() {
    let cluster = Cluster::start();
    let client = cluster.client().await;
    let lock = |client_id: &str, queues: &[i32]| {
        let mq_set: BTreeSet<_> = queues
            .iter()
            .map(|&q| quiver_net::protocol::bodies::MessageQueue {
                broker_name: "broker-a".into(),
                queue_id: q,
                topic: "T".into(),
            })
            .collect();
        let body = quiver_net::protocol::bodies::LockBatchRequestBody {
            client_id: client_id.into(),
            consumer_group: "og".into(),
            mq_set,
            only_this_broker: false,
        };
        encode_json(&body)
    };
    let held = |answer: RemotingCommand| -> Vec<i32> {
        let body: LockBatchResponseBody = decode_json("lock", &answer.body_bytes()).unwrap();
        body.lock_ok_mq_set.iter().map(|q| q.queue_id).collect()
    };
    let a = ok(
        &client,
        RemotingCommand::request(request::LOCK_BATCH_MQ).with_body(lock("a", &[0, 1])),
    )
    .await;
    assert_eq!(held(a), [0, 1]);
    let b = ok(
        &client,
        RemotingCommand::request(request::LOCK_BATCH_MQ).with_body(lock("b", &[1, 2])),
    )
    .await;
    assert_eq!(held(b), [2]);
    ok(
        &client,
        RemotingCommand::request(request::UNLOCK_BATCH_MQ).with_body(lock("a", &[1])),
    )
    .await;
    let b = ok(
        &client,
        RemotingCommand::request(request::LOCK_BATCH_MQ).with_body(lock("b", &[1])),
    )
    .await;
    assert_eq!(held(b), [1]);
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_leave_the_broker_serving() {
    let cluster = Cluster::start();
    let client = cluster.client().await;
    let answer = client
        .invoke(RemotingCommand::request(7777), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::REQUEST_CODE_NOT_SUPPORTED);
    let mut missing = send_v2("t", 0, b"x", "");
    missing.ext_fields.retain(|k, _| k != "e");
    let answer = client.invoke(missing, CALL).await.unwrap();
    assert_eq!(answer.code, response::SYSTEM_ERROR);
    assert!(answer.remark.unwrap().contains("queueId"));
    let answer = client
        .invoke(send_v2("t", 0, &vec![0u8; (4 << 20) + 1], ""), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::MESSAGE_ILLEGAL);
    let answer = client
        .invoke(send_v2("t", 0, b"x", &props(&[("DELAY", "3")])), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::MESSAGE_ILLEGAL);
    let answer = client
        .invoke(send_v2("t", 0, b"x", &props(&[("TRAN_MSG", "true")])), CALL)
        .await
        .unwrap();
    assert_eq!(answer.code, response::NO_PERMISSION);
    let mut bad_batch = send_v2("t", 0, b"", "");
    bad_batch.code = request::SEND_BATCH_MESSAGE;
    bad_batch.body = vec![Bytes::from_static(&[0, 0, 0, 99, 1, 2, 3])];
    let answer = client.invoke(bad_batch, CALL).await.unwrap();
    assert_eq!(answer.code, response::MESSAGE_ILLEGAL);
    let answer = client
        .invoke(
            RemotingCommand::request(request::HEART_BEAT).with_body(&b"{"[..]),
            CALL,
        )
        .await
        .unwrap();
    assert_eq!(answer.code, response::SYSTEM_ERROR);
    assert!(answer.remark.unwrap().contains("HeartbeatData"));
    // A broken frame closes only its own connection.
    let victim = cluster.client().await;
    victim
        .send_raw(Bytes::from_static(&[
            0, 0, 0, 8, 9, 0, 0, 2, b'{', b'}', 0, 0,
        ]))
        .unwrap();
    assert!(victim.wait_closed(CALL).await);
    ok(&client, send_v2("t", 0, b"still here", "")).await;
}
