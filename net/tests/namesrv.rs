//! The name server over real sockets: registration, routes, expiry, and how it meets malformed
//! frames.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use quiver_net::client::RemotingClient;
use quiver_net::namesrv::{NameServer, NamesrvConfig};
use quiver_net::protocol::route::{
    ClusterInfo, RegisterBrokerBody, TopicConfig, TopicList, TopicRouteData,
};
use quiver_net::protocol::{decode_json, encode_json};
use quiver_net::remoting::RemotingCommand;
use quiver_net::remoting::codes::{request, response};

const CALL: Duration = Duration::from_secs(5);

fn start(expiry_ms: u64) -> NameServer {
    NameServer::start(NamesrvConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        broker_expiry_ms: expiry_ms,
        scan_interval_ms: 100.min(expiry_ms),
        max_frame_bytes: 64 << 10,
    })
    .unwrap()
}

fn register(name: &str, addr: &str, topics: &[(&str, i32)], counter: i64) -> RemotingCommand {
    let mut body = RegisterBrokerBody::default();
    body.topic_config_serialize_wrapper.data_version.counter = counter;
    for (topic, queues) in topics {
        body.topic_config_serialize_wrapper
            .topic_config_table
            .insert(topic.to_string(), TopicConfig::new(*topic, *queues, 6));
    }
    RemotingCommand::request(request::REGISTER_BROKER)
        .with_field("brokerName", name)
        .with_field("brokerAddr", addr)
        .with_field("clusterName", "DefaultCluster")
        .with_field("haServerAddr", addr)
        .with_field("brokerId", 0)
        .with_field("compressed", false)
        .with_field("bodyCrc32", 0)
        .with_body(encode_json(&body))
}

async fn route(client: &RemotingClient, topic: &str) -> RemotingCommand {
    client
        .invoke(
            RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with_field("topic", topic),
            CALL,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn brokers_register_and_clients_get_routes() {
    let server = start(120_000);
    let broker = RemotingClient::connect(server.local_addr()).await.unwrap();
    let answer = broker
        .invoke(
            register("broker-a", "10.0.0.1:10911", &[("T", 4), ("TBW102", 8)], 1),
            CALL,
        )
        .await
        .unwrap();
    assert_eq!(answer.code, response::SUCCESS, "{:?}", answer.remark);

    let client = RemotingClient::connect(server.local_addr()).await.unwrap();
    let found = route(&client, "T").await;
    assert_eq!(found.code, response::SUCCESS);
    let data: TopicRouteData = decode_json("route", &found.body_bytes()).unwrap();
    assert_eq!(data.queue_datas[0].write_queue_nums, 4);
    assert_eq!(data.broker_datas[0].broker_addrs[&0], "10.0.0.1:10911");
    // The raw JSON quotes the broker id key, as strict JSON clients need.
    assert!(String::from_utf8_lossy(&found.body_bytes()).contains(r#""brokerAddrs":{"0":"#));

    let missing = route(&client, "nope").await;
    assert_eq!(missing.code, response::TOPIC_NOT_EXIST);
    assert!(missing.remark.unwrap().contains("nope"));

    let info = client
        .invoke(
            RemotingCommand::request(request::GET_BROKER_CLUSTER_INFO),
            CALL,
        )
        .await
        .unwrap();
    let info: ClusterInfo = decode_json("cluster", &info.body_bytes()).unwrap();
    assert!(info.cluster_addr_table["DefaultCluster"].contains("broker-a"));

    let topics = client
        .invoke(
            RemotingCommand::request(request::GET_ALL_TOPIC_LIST_FROM_NAMESERVER),
            CALL,
        )
        .await
        .unwrap();
    let topics: TopicList = decode_json("topics", &topics.body_bytes()).unwrap();
    assert_eq!(topics.topic_list.len(), 2);

    let deleted = client
        .invoke(
            RemotingCommand::request(request::DELETE_TOPIC_IN_NAMESRV).with_field("topic", "T"),
            CALL,
        )
        .await
        .unwrap();
    assert_eq!(deleted.code, response::SUCCESS);
    assert_eq!(route(&client, "T").await.code, response::TOPIC_NOT_EXIST);

    let gone = broker
        .invoke(
            RemotingCommand::request(request::UNREGISTER_BROKER)
                .with_field("brokerName", "broker-a")
                .with_field("brokerAddr", "10.0.0.1:10911")
                .with_field("clusterName", "DefaultCluster")
                .with_field("brokerId", 0),
            CALL,
        )
        .await
        .unwrap();
    assert_eq!(gone.code, response::SUCCESS);
    assert_eq!(
        route(&client, "TBW102").await.code,
        response::TOPIC_NOT_EXIST
    );
    server.shutdown();
}

#[tokio::test]
async fn a_broker_that_stops_registering_expires_and_a_closed_one_leaves_at_once() {
    let server = start(1_000);
    let broker = RemotingClient::connect(server.local_addr()).await.unwrap();
    broker
        .invoke(register("broker-a", "10.0.0.1:10911", &[("T", 4)], 1), CALL)
        .await
        .unwrap();
    let client = RemotingClient::connect(server.local_addr()).await.unwrap();
    assert_eq!(route(&client, "T").await.code, response::SUCCESS);
    // No more registrations: gone after the expiry (1 s), found by the scan.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while route(&client, "T").await.code == response::SUCCESS {
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.live_brokers().is_empty());
    server.shutdown();

    // A registration dropped with its connection (well within the expiry).
    let server = start(120_000);
    let other = RemotingClient::connect(server.local_addr()).await.unwrap();
    other
        .invoke(register("broker-b", "10.0.0.2:10911", &[("U", 4)], 1), CALL)
        .await
        .unwrap();
    assert_eq!(server.live_brokers(), ["10.0.0.2:10911"]);
    drop(other);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.live_brokers().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.shutdown();
}

#[tokio::test]
async fn bad_registrations_and_unknown_codes_get_clear_errors() {
    let server = start(120_000);
    let client = RemotingClient::connect(server.local_addr()).await.unwrap();
    let no_name = client
        .invoke(
            RemotingCommand::request(request::REGISTER_BROKER).with_field("brokerAddr", "x:1"),
            CALL,
        )
        .await
        .unwrap();
    assert_eq!(no_name.code, response::SYSTEM_ERROR);
    assert!(no_name.remark.unwrap().contains("brokerName"));

    let mut bad_crc = register("b", "1:1", &[("T", 1)], 1);
    bad_crc.ext_fields.retain(|k, _| k != "bodyCrc32");
    let bad_crc = bad_crc.with_field("bodyCrc32", 12345);
    let answer = client.invoke(bad_crc, CALL).await.unwrap();
    assert_eq!(answer.code, response::SYSTEM_ERROR);
    assert_eq!(answer.remark.as_deref(), Some("crc32 not match"));

    let bad_body = register("b", "1:1", &[], 1).with_body(&b"{not json"[..]);
    let answer = client.invoke(bad_body, CALL).await.unwrap();
    assert_eq!(answer.code, response::SYSTEM_ERROR);
    assert!(answer.remark.unwrap().contains("RegisterBrokerBody"));

    let unknown = client
        .invoke(RemotingCommand::request(9999), CALL)
        .await
        .unwrap();
    assert_eq!(unknown.code, response::REQUEST_CODE_NOT_SUPPORTED);
    assert_eq!(
        unknown.remark.as_deref(),
        Some(" request type 9999 not supported")
    );
    // Nothing was registered by the bad requests.
    assert!(server.live_brokers().is_empty());
    server.shutdown();
}

/// A frame: length, type and header length, header, body.
fn frame(serialize_type: u8, header: &[u8], body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u32((4 + header.len() + body.len()) as u32);
    out.put_u32(u32::from(serialize_type) << 24 | header.len() as u32);
    out.put_slice(header);
    out.put_slice(body);
    out.freeze()
}

#[tokio::test]
async fn malformed_frames_close_only_their_connection() {
    let server = start(120_000);
    let healthy = RemotingClient::connect(server.local_addr()).await.unwrap();

    let cases: Vec<(&str, Bytes)> = vec![
        ("bad serialize type", frame(9, b"{}", b"")),
        ("bad header JSON", frame(0, b"{\"code\":105,", b"")),
        ("header longer than the frame", {
            let mut out = BytesMut::new();
            out.put_u32(8);
            out.put_u32(1000);
            out.put_u32(0);
            out.freeze()
        }),
        ("impossible length", Bytes::from_static(&[0, 0, 0, 1, 0])),
    ];
    for (what, bytes) in cases {
        let victim = RemotingClient::connect(server.local_addr()).await.unwrap();
        victim.send_raw(bytes).unwrap();
        assert!(
            victim.wait_closed(CALL).await,
            "{what}: connection left open"
        );
        assert_eq!(
            route(&healthy, "T").await.code,
            response::TOPIC_NOT_EXIST,
            "{what} disturbed another connection"
        );
    }

    // Oversized, with a readable header: answered with an error, then closed.
    let victim = RemotingClient::connect(server.local_addr()).await.unwrap();
    let big = RemotingCommand::request(request::REGISTER_BROKER)
        .with_field("brokerName", "b")
        .with_body(vec![b'x'; 100 << 10]);
    let answer = victim.invoke(big, CALL).await;
    match answer {
        Ok(answer) => {
            assert_eq!(answer.code, response::SYSTEM_ERROR);
            assert!(answer.remark.unwrap().contains("exceeds the limit"));
        }
        // The server may close before the answer is read if the client is still writing.
        Err(e) => assert!(
            matches!(e, quiver_net::client::ClientError::Closed(_)),
            "{e}"
        ),
    }
    assert!(victim.wait_closed(CALL).await);

    // Truncated: the server waits for the rest, then sees the connection end mid-frame.
    let victim = RemotingClient::connect(server.local_addr()).await.unwrap();
    let whole = frame(0, br#"{"code":105,"opaque":1,"flag":0}"#, b"");
    victim.send_raw(whole.slice(..whole.len() - 3)).unwrap();
    drop(victim);

    assert_eq!(route(&healthy, "T").await.code, response::TOPIC_NOT_EXIST);
    server.shutdown();
}
