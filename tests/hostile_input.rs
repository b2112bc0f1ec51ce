//! Hostile input against a real `quiver standalone`: broken frames, bad headers, truncated
//! batch bodies, illegal topic names, oversized properties, bodies and frames. Each is answered
//! with RocketMQ's response code (or, when the frame itself cannot be read, by closing that
//! connection, as RocketMQ's decoder does), the broker's log names the problem in one line, and
//! the broker goes on serving: after every case a good send on another connection is pulled
//! back intact.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use quiver_net::client::RemotingClient;
use quiver_net::message::decode_messages;
use quiver_net::remoting::RemotingCommand;
use quiver_net::remoting::codes::{request, response};
use quiver_net::remoting::frame::FrameCodec;
use support::{LogLines, Standalone, free_port, pull, write_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CALL: Duration = Duration::from_secs(10);
const LOG_WAIT: Duration = Duration::from_secs(10);
/// RocketMQ's limits, as the broker's defaults.
const TOPIC_MAX: usize = 127;
const PROPERTIES_MAX: usize = i16::MAX as usize;
const BODY_MAX: usize = 4 << 20;
const FRAME_MAX: usize = 16 << 20;
/// What the log says when a frame closes its connection.
const BAD_FRAME: &str = "closing the connection after a bad frame";

fn send(code: i32, topic: &str, body: impl Into<Bytes>, properties: &str) -> RemotingCommand {
    RemotingCommand::request(code)
        .with_field("a", "hostile-producer")
        .with_field("b", topic)
        .with_field("c", "TBW102")
        .with_field("d", 4)
        .with_field("e", 0)
        .with_field("f", 0)
        .with_field("g", 1_700_000_000_000i64)
        .with_field("h", 0)
        .with_field("i", properties)
        .with_field("j", 0)
        .with_field("k", false)
        .with_body(body)
}

fn send_v2(topic: &str, body: impl Into<Bytes>, properties: &str) -> RemotingCommand {
    send(request::SEND_MESSAGE_V2, topic, body, properties)
}

/// `length | type + header length | header | body`, with whatever the caller puts in.
fn frame(serialize_type: u8, header: &[u8], body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u32((4 + header.len() + body.len()) as u32);
    out.put_u32(u32::from(serialize_type) << 24 | header.len() as u32);
    out.put_slice(header);
    out.put_slice(body);
    out.freeze()
}

/// One record of a `SEND_BATCH_MESSAGE` body, as `MessageDecoder.encodeMessage` writes it.
fn batch_record(body: &[u8], properties: &str) -> Vec<u8> {
    let total = 4 + 4 + 4 + 4 + 4 + body.len() + 2 + properties.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as i32).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // magic
    out.extend_from_slice(&0i32.to_be_bytes()); // body CRC
    out.extend_from_slice(&0i32.to_be_bytes()); // flag
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&(properties.len() as i16).to_be_bytes());
    out.extend_from_slice(properties.as_bytes());
    out
}

/// Waits for a log line off the async runtime's back.
fn logged(log: &LogLines, from: usize, parts: &[&str]) -> String {
    tokio::task::block_in_place(|| log.wait_for(from, parts, LOG_WAIT))
}

struct Fixture {
    _dir: tempfile::TempDir,
    broker: Standalone,
    log: LogLines,
    /// Never sent anything bad: must keep working throughout.
    healthy: RemotingClient,
    /// Sends the bad requests that are answered (not closed).
    hostile: RemotingClient,
    good_sends: usize,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), free_port(), free_port(), "async", "");
        let log = LogLines::new();
        let broker = Standalone::start_logged(&config, &dir.path().join("data"), &log);
        let healthy = RemotingClient::connect(broker.broker).await.unwrap();
        let hostile = RemotingClient::connect(broker.broker).await.unwrap();
        Fixture {
            _dir: dir,
            broker,
            log,
            healthy,
            hostile,
            good_sends: 0,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.broker.broker
    }

    /// A good send on the healthy connection, pulled back with its exact body.
    async fn still_serving(&mut self, after: &str) {
        self.good_sends += 1;
        let body = format!("good message {} after {after}", self.good_sends);
        let answer = self
            .healthy
            .invoke(send_v2("healthy", body.clone(), ""), CALL)
            .await
            .unwrap_or_else(|e| panic!("after {after}: a good send failed: {e}"));
        assert_eq!(
            answer.code,
            response::SUCCESS,
            "after {after}: a good send was refused: {:?}",
            answer.remark
        );
        let offset: i64 = answer.required_parsed("queueOffset").unwrap();
        let pulled = self
            .healthy
            .invoke(pull("healthy", 0, offset, 1, 0), CALL)
            .await;
        let pulled = pulled.unwrap_or_else(|e| panic!("after {after}: a pull failed: {e}"));
        assert_eq!(
            pulled.code,
            response::SUCCESS,
            "after {after}: {:?}",
            pulled.remark
        );
        let messages = decode_messages(&pulled.body_bytes()).unwrap();
        assert_eq!(messages[0].queue_offset, offset, "after {after}");
        assert_eq!(messages[0].body, body.as_bytes(), "after {after}");
    }

    /// Sends `req` on the hostile connection and checks the answer's code, that its remark
    /// contains `remark`, and that the broker logged the refusal with both.
    async fn refused(&mut self, what: &str, req: RemotingCommand, code: i32, remark: &str) {
        let mark = self.log.len();
        let request_code = req.code;
        let answer = self
            .hostile
            .invoke(req, CALL)
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        let text = answer.remark.clone().unwrap_or_default();
        assert_eq!(answer.code, code, "{what}: answered {text:?}");
        assert!(
            text.contains(remark),
            "{what}: remark {text:?} does not say {remark:?}"
        );
        let line = logged(
            &self.log,
            mark,
            &[
                "request refused",
                &format!("request={request_code}"),
                &format!("code={code}"),
                remark,
            ],
        );
        assert!(line.contains("WARN"), "{what}: {line}");
        self.still_serving(what).await;
    }

    /// Sends `req` on the hostile connection and expects it stored.
    async fn accepted(&mut self, what: &str, req: RemotingCommand) -> i64 {
        let answer = self.hostile.invoke(req, CALL).await.unwrap();
        assert_eq!(
            answer.code,
            response::SUCCESS,
            "{what}: refused: {:?}",
            answer.remark
        );
        answer.required_parsed("queueOffset").unwrap()
    }

    /// Writes `bytes` on a connection of its own and expects the broker to close it, with a
    /// log line saying why; returns what the broker wrote back before closing.
    async fn closes(&mut self, what: &str, bytes: &[u8], reason: &str) -> Vec<u8> {
        let mark = self.log.len();
        let mut stream = tokio::net::TcpStream::connect(self.addr()).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut received = Vec::new();
        let read = tokio::time::timeout(CALL, async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                    // A reset is a close too (the broker had not read everything).
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
                    Err(e) => panic!("{what}: reading: {e}"),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "{what}: the connection was left open");
        logged(&self.log, mark, &[BAD_FRAME, reason]);
        self.still_serving(what).await;
        received
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_clearly_logged_and_leaves_the_broker_serving() {
    let mut f = Fixture::start().await;
    f.still_serving("start").await;

    // Frames that cannot be read: the connection is closed, as RocketMQ's decoder does.
    f.closes(
        "impossible length",
        &[0, 0, 0, 1, 0],
        "frame length 1 is shorter",
    )
    .await;
    f.closes("zero length", &[0, 0, 0, 0], "frame length 0 is shorter")
        .await;
    f.closes(
        "negative length",
        &[0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0],
        "exceeds the limit of 16777216",
    )
    .await;
    let mut long_header = BytesMut::new();
    long_header.put_u32(8);
    long_header.put_u32(1000);
    long_header.put_u32(0);
    f.closes(
        "header longer than the frame",
        &long_header,
        "header length 1000 runs past the frame of 8 bytes",
    )
    .await;
    f.closes(
        "truncated header JSON",
        &frame(0, b"{\"code\":310,", b""),
        "bad JSON header",
    )
    .await;
    f.closes(
        "header JSON of the wrong shape",
        &frame(0, b"[1,2,3]", b""),
        "bad JSON header",
    )
    .await;
    f.closes(
        "header JSON with a non-numeric code",
        &frame(0, br#"{"code":"send","opaque":1,"flag":0}"#, b""),
        "bad JSON header",
    )
    .await;
    f.closes(
        "header not UTF-8",
        &frame(0, b"{\"code\":\xff}", b""),
        "not UTF-8",
    )
    .await;
    f.closes(
        "binary header cut short",
        &frame(1, &[0, 10, 0], b""),
        "binary header truncated",
    )
    .await;
    let mut negative_remark = BytesMut::new();
    negative_remark.put_i16(310); // code
    negative_remark.put_u8(0); // language
    negative_remark.put_i16(0); // version
    negative_remark.put_i32(1); // opaque
    negative_remark.put_i32(0); // flag
    negative_remark.put_i32(-1); // remark length
    negative_remark.put_i32(0);
    f.closes(
        "binary header with a negative remark length",
        &frame(1, &negative_remark, b""),
        "negative length -1 in remark length",
    )
    .await;
    let mut long_fields = BytesMut::new();
    long_fields.put_i16(310);
    long_fields.put_u8(0);
    long_fields.put_i16(0);
    long_fields.put_i32(1);
    long_fields.put_i32(0);
    long_fields.put_i32(0); // no remark
    long_fields.put_i32(1 << 20); // extFields length past the header
    long_fields.put_slice(b"xx");
    f.closes(
        "binary header with extFields past its end",
        &frame(1, &long_fields, b""),
        "binary header truncated in extFields",
    )
    .await;
    f.closes(
        "unknown serialize type",
        &frame(9, b"{}", b""),
        "unknown header serialization type 9",
    )
    .await;
    f.closes(
        "serialize type 2",
        &frame(2, b"{}", b""),
        "unknown header serialization type 2",
    )
    .await;

    // Over the 16 MiB frame limit, with a readable header: answered (SYSTEM_ERROR, naming the
    // limit) before the close, without the broker reading the body. RocketMQ closes without
    // an answer; the answer tells the producer why.
    let header = br#"{"code":310,"extFields":{"b":"big"},"flag":0,"language":"JAVA","opaque":4242,"serializeTypeCurrentRPC":"JSON","version":0}"#;
    let mut oversized = BytesMut::new();
    oversized.put_u32((FRAME_MAX - 4 + 1) as u32);
    oversized.put_u32(header.len() as u32);
    oversized.put_slice(header);
    let written = f
        .closes(
            "frame over 16 MiB",
            &oversized,
            "frame of 16777217 bytes exceeds the limit of 16777216",
        )
        .await;
    let answer = FrameCodec::default()
        .decode(&mut BytesMut::from(&written[..]))
        .unwrap()
        .expect("an answer before the close");
    assert_eq!((answer.code, answer.opaque), (response::SYSTEM_ERROR, 4242));
    assert!(
        answer.remark.unwrap().contains("exceeds the limit"),
        "the answer names the limit"
    );

    // Requests that are read but refused: answered with RocketMQ's code; the connection stays.
    f.refused(
        "unknown request code",
        RemotingCommand::request(7777),
        response::REQUEST_CODE_NOT_SUPPORTED,
        "request type 7777 not supported",
    )
    .await;
    let mut no_topic = send_v2("t", &b"x"[..], "");
    no_topic.ext_fields.retain(|k, _| k != "b");
    f.refused(
        "send without a topic",
        no_topic,
        response::SYSTEM_ERROR,
        "topic",
    )
    .await;
    let mut bad_queue = send_v2("t", &b"x"[..], "");
    bad_queue.ext_fields.retain(|k, _| k != "e");
    let bad_queue = bad_queue.with_field("e", "zero");
    f.refused(
        "send with a non-numeric queue id",
        bad_queue,
        response::SYSTEM_ERROR,
        "queueId",
    )
    .await;

    // Topic names: RocketMQ's TopicValidator, SYSTEM_ERROR.
    let longest = "t".repeat(TOPIC_MAX);
    f.accepted(
        "a topic of 127 characters",
        send_v2(&longest, &b"x"[..], ""),
    )
    .await;
    f.refused(
        "a topic of 128 characters",
        send_v2(&"t".repeat(TOPIC_MAX + 1), &b"x"[..], ""),
        response::SYSTEM_ERROR,
        "longer than 127",
    )
    .await;
    for topic in ["has space", "a/b", "a.b", "t\u{f3}pico", "semi;colon"] {
        f.refused(
            &format!("topic {topic:?}"),
            send_v2(topic, &b"x"[..], ""),
            response::SYSTEM_ERROR,
            "only [%|a-zA-Z0-9_-] are allowed",
        )
        .await;
    }
    f.refused(
        "an empty topic",
        send_v2("", &b"x"[..], ""),
        response::SYSTEM_ERROR,
        "empty",
    )
    .await;

    // Properties over 32767 bytes (Short.MAX_VALUE): MESSAGE_ILLEGAL.
    let near = format!("big\u{1}{}\u{2}", "p".repeat(32_000));
    f.accepted(
        "properties of 32,005 bytes",
        send_v2("props", &b"x"[..], &near),
    )
    .await;
    let over = format!("big\u{1}{}\u{2}", "p".repeat(PROPERTIES_MAX));
    f.refused(
        "properties over 32767 bytes",
        send_v2("props", &b"x"[..], &over),
        response::MESSAGE_ILLEGAL,
        "properties length",
    )
    .await;

    // Bodies over max_message_bytes (4 MiB): MESSAGE_ILLEGAL; at the limit, stored intact.
    let at_limit: Vec<u8> = (0..BODY_MAX).map(|i| (i % 251) as u8).collect();
    let offset = f
        .accepted("a body of 4 MiB", send_v2("bodies", at_limit.clone(), ""))
        .await;
    let pulled = f
        .healthy
        .invoke(pull("bodies", 0, offset, 1, 0), CALL)
        .await
        .unwrap();
    assert_eq!(pulled.code, response::SUCCESS);
    assert_eq!(
        decode_messages(&pulled.body_bytes()).unwrap()[0].body,
        at_limit
    );
    f.refused(
        "a body of 4 MiB + 1",
        send_v2("bodies", vec![7u8; BODY_MAX + 1], ""),
        response::MESSAGE_ILLEGAL,
        "MAX: 4194304",
    )
    .await;

    // Truncated batch bodies: MESSAGE_ILLEGAL, and nothing of the batch is stored.
    let records = [
        batch_record(b"first", "KEYS\u{1}k1\u{2}"),
        batch_record(&[9u8; 300], ""),
        batch_record(b"third", "TAGS\u{1}t\u{2}"),
    ];
    let whole: Vec<u8> = records.concat();
    let first_end = records[0].len();
    let second_end = first_end + records[1].len();
    let cuts = [
        ("inside the first record's size", 2),
        ("inside the first record's header", 13),
        ("inside the first body length", 18),
        ("inside the first body", 22),
        ("inside the first properties length", 20 + 5 + 1),
        ("inside the first properties", first_end - 1),
        ("inside the second record's size", first_end + 3),
        ("inside the second body", first_end + 120),
        ("inside the last properties", whole.len() - 1),
    ];
    for (where_, at) in cuts {
        assert!(at != first_end && at != second_end && at < whole.len());
        f.refused(
            &format!("a batch cut {where_} (at {at} of {})", whole.len()),
            send(
                request::SEND_BATCH_MESSAGE,
                "batches",
                whole[..at].to_vec(),
                "",
            ),
            response::MESSAGE_ILLEGAL,
            "the batch body",
        )
        .await;
    }
    let mut lying = whole.clone();
    lying[first_end..first_end + 4].copy_from_slice(&10_000i32.to_be_bytes());
    f.refused(
        "a batch whose second record claims more than there is",
        send(request::SEND_BATCH_MESSAGE, "batches", lying, ""),
        response::MESSAGE_ILLEGAL,
        "does not fit",
    )
    .await;
    let mut inconsistent = whole.clone();
    inconsistent[16..20].copy_from_slice(&100i32.to_be_bytes());
    f.refused(
        "a batch whose first body length runs past its record",
        send(request::SEND_BATCH_MESSAGE, "batches", inconsistent, ""),
        response::MESSAGE_ILLEGAL,
        "truncated in batch body",
    )
    .await;
    // None of the refused batches left anything behind: the whole one lands at offset 0.
    let offset = f
        .accepted(
            "the whole batch",
            send(request::SEND_BATCH_MESSAGE, "batches", whole, ""),
        )
        .await;
    assert_eq!(offset, 0, "a refused batch stored messages");
    let pulled = f
        .healthy
        .invoke(pull("batches", 0, 0, 1, 0), CALL)
        .await
        .unwrap();
    assert_eq!(pulled.code, response::SUCCESS);
    assert_eq!(
        decode_messages(&pulled.body_bytes()).unwrap()[0].body,
        &b"first"[..]
    );

    // The connection that sent every refused request still works.
    let offset = f
        .accepted(
            "a good send on the hostile connection",
            send_v2("healthy", &b"x"[..], ""),
        )
        .await;
    assert!(offset > 0);
    f.broker.stop();
}

/// A client can have requests refused as fast as it sends them: the broker logs at most its
/// budget of them a second, and the next line logged says how many it did not, so a flood
/// cannot fill the disk with log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_requests_is_logged_within_a_budget() {
    const FLOOD: usize = 2_000;
    let mut f = Fixture::start().await;
    let mark = f.log.len();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let client = f.hostile.clone();
        flood.spawn(async move { client.invoke(RemotingCommand::request(7777), CALL).await });
    }
    while let Some(answer) = flood.join_next().await {
        assert_eq!(
            answer.unwrap().unwrap().code,
            response::REQUEST_CODE_NOT_SUPPORTED
        );
    }
    // Refused again until a line reports the ones not logged (the budget's next second).
    let deadline = std::time::Instant::now() + LOG_WAIT;
    let summary = loop {
        let answer = f.hostile.invoke(RemotingCommand::request(7777), CALL).await;
        assert_eq!(answer.unwrap().code, response::REQUEST_CODE_NOT_SUPPORTED);
        let lines = f.log.lines();
        if let Some(line) = lines[mark..]
            .iter()
            .find(|l| l.contains("not_logged_before"))
        {
            break line.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line reported the refusals not logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logged = f.log.lines()[mark..]
        .iter()
        .filter(|l| l.contains("request refused"))
        .count();
    assert!(
        logged < FLOOD / 4,
        "{logged} lines for {FLOOD} refused requests: the budget did not hold"
    );
    assert!(summary.contains("request=7777"), "{summary}");
    f.still_serving("a flood of refused requests").await;
}
