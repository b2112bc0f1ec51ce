//! The admin bodies RocketMQ's Java side writes with fastjson, which uses `MessageQueue`
//! objects as map keys (`{"offsetTable":{{"brokerName":"b","queueId":0,"topic":"T"}:{…}}}`):
//! not JSON, so `serde_json` cannot read them. A small lenient parser reads them here, for
//! `GET_CONSUME_STATS` and `GET_TOPIC_STATS_INFO`; the broker writes the topic statistics
//! with [`encode_topic_stats`], in the same inline-key form the Java tools expect.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::protocol::BodyError;
use crate::protocol::bodies::{MessageQueue, OffsetWrapper};

/// Deepest nesting the lenient parser follows; deeper bodies are refused rather than risking
/// the stack on hostile input.
const MAX_DEPTH: usize = 64;

/// One queue's offsets in `GET_TOPIC_STATS_INFO` (`TopicOffset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicOffset {
    /// The queue's lowest offset still stored.
    pub min_offset: i64,
    /// One past its last offset.
    pub max_offset: i64,
    /// Store time of its newest message, ms; 0 if it has none.
    pub last_update_timestamp: i64,
}

/// A string table (`KVTable`): the body of `GET_BROKER_RUNTIME_INFO`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KvTable {
    /// The entries.
    pub table: BTreeMap<String, String>,
}

/// A decoded `ConsumeStats`: the group's consumption of each queue.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConsumeStats {
    /// Messages consumed per second, as the broker measures it (Quiver reports 0).
    pub consume_tps: f64,
    /// Each queue's offsets.
    pub offsets: Vec<(MessageQueue, OffsetWrapper)>,
}

/// Writes `TopicStatsTable` as fastjson does: `{"offsetTable":{{queue}:{offsets},…}}`.
pub fn encode_topic_stats(table: &BTreeMap<MessageQueue, TopicOffset>) -> Vec<u8> {
    let mut out = Vec::from(&b"{\"offsetTable\":{"[..]);
    for (i, (queue, offsets)) in table.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&crate::protocol::encode_json(queue));
        out.push(b':');
        out.extend_from_slice(&crate::protocol::encode_json(offsets));
    }
    out.extend_from_slice(b"}}");
    out
}

/// Reads a `TopicStatsTable` body.
pub fn decode_topic_stats(body: &[u8]) -> Result<Vec<(MessageQueue, TopicOffset)>, BodyError> {
    const WHAT: &str = "TopicStatsTable";
    let top = parse(body).map_err(|reason| BodyError { what: WHAT, reason })?;
    match top.field("offsetTable") {
        Some(table) => queue_table(WHAT, table),
        None => Ok(Vec::new()),
    }
}

/// Reads a `ConsumeStats` body.
pub fn decode_consume_stats(body: &[u8]) -> Result<ConsumeStats, BodyError> {
    const WHAT: &str = "ConsumeStats";
    let top = parse(body).map_err(|reason| BodyError { what: WHAT, reason })?;
    let consume_tps = match top.field("consumeTps") {
        Some(Loose::Plain(value)) => value.as_f64().unwrap_or(0.0),
        _ => 0.0,
    };
    let offsets = match top.field("offsetTable") {
        Some(table) => queue_table(WHAT, table)?,
        None => Vec::new(),
    };
    Ok(ConsumeStats {
        consume_tps,
        offsets,
    })
}

/// The entries of a map keyed by `MessageQueue` objects.
fn queue_table<V: serde::de::DeserializeOwned>(
    what: &'static str,
    table: &Loose,
) -> Result<Vec<(MessageQueue, V)>, BodyError> {
    let bad = |reason: String| BodyError { what, reason };
    let Loose::Object(entries) = table else {
        return Err(bad("offsetTable is not an object".into()));
    };
    entries
        .iter()
        .map(|(key, value)| {
            let queue = key
                .to_json()
                .and_then(|k| serde_json::from_value::<MessageQueue>(k).ok())
                .ok_or_else(|| bad("an offsetTable key is not a MessageQueue".into()))?;
            let value = value
                .to_json()
                .ok_or_else(|| bad("an offsetTable value has object keys".into()))?;
            let value = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
            Ok((queue, value))
        })
        .collect()
}

/// A value as fastjson may write it: objects may have any value as a key.
#[derive(Debug, Clone, PartialEq)]
enum Loose {
    Object(Vec<(Loose, Loose)>),
    Array(Vec<Loose>),
    /// A string, number, boolean or null.
    Plain(serde_json::Value),
}

impl Loose {
    /// The value of a string-keyed field of an object.
    fn field(&self, name: &str) -> Option<&Loose> {
        let Loose::Object(entries) = self else {
            return None;
        };
        entries
            .iter()
            .find(|(k, _)| matches!(k, Loose::Plain(serde_json::Value::String(s)) if s == name))
            .map(|(_, v)| v)
    }

    /// As JSON, if every object key is a string or a number (written as its digits).
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(match self {
            Loose::Plain(value) => value.clone(),
            Loose::Array(items) => {
                serde_json::Value::Array(items.iter().map(Loose::to_json).collect::<Option<_>>()?)
            }
            Loose::Object(entries) => {
                let mut map = serde_json::Map::new();
                for (key, value) in entries {
                    let key = match key {
                        Loose::Plain(serde_json::Value::String(s)) => s.clone(),
                        Loose::Plain(serde_json::Value::Number(n)) => n.to_string(),
                        _ => return None,
                    };
                    map.insert(key, value.to_json()?);
                }
                serde_json::Value::Object(map)
            }
        })
    }
}

/// Parses a whole body.
fn parse(bytes: &[u8]) -> Result<Loose, String> {
    let mut parser = Parser { bytes, pos: 0 };
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos != bytes.len() {
        return Err(format!("unexpected bytes at {}", parser.pos));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, want: u8) -> Result<(), String> {
        match self.peek() {
            Some(b) if b == want => {
                self.pos += 1;
                Ok(())
            }
            Some(b) => Err(format!(
                "expected {:?} at {}, found {:?}",
                want as char, self.pos, b as char
            )),
            None => Err(format!("expected {:?}, found the end", want as char)),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Loose, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        match self.peek() {
            None => Err("unexpected end".into()),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string(),
            Some(_) => self.scalar(),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Loose, String> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Loose::Object(entries));
        }
        loop {
            let key = self.value(depth + 1)?;
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Loose::Object(entries));
                }
                _ => return Err(format!("expected ',' or '}}' at {}", self.pos)),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Loose, String> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Loose::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Loose::Array(items));
                }
                _ => return Err(format!("expected ',' or ']' at {}", self.pos)),
            }
        }
    }

    /// A string token, unescaped by `serde_json`.
    fn string(&mut self) -> Result<Loose, String> {
        let start = self.pos;
        let mut at = start + 1;
        let mut escaped = false;
        loop {
            let Some(&b) = self.bytes.get(at) else {
                return Err(format!("unterminated string at {start}"));
            };
            at += 1;
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => break,
                _ => {}
            }
        }
        self.pos = at;
        serde_json::from_slice::<String>(&self.bytes[start..at])
            .map(|s| Loose::Plain(serde_json::Value::String(s)))
            .map_err(|e| format!("bad string at {start}: {e}"))
    }

    /// A number, `true`, `false` or `null`.
    fn scalar(&mut self) -> Result<Loose, String> {
        let start = self.pos;
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|b| !matches!(b, b',' | b':' | b'}' | b']') && !b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
        match serde_json::from_slice::<serde_json::Value>(&self.bytes[start..self.pos]) {
            Ok(value @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                Ok(Loose::Plain(value))
            }
            Ok(serde_json::Value::Null) => Ok(Loose::Plain(serde_json::Value::Null)),
            _ => Err(format!("unexpected token at {start}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::bodies::encode_consume_stats;

    fn queue(broker: &str, id: i32, topic: &str) -> MessageQueue {
        MessageQueue {
            broker_name: broker.into(),
            queue_id: id,
            topic: topic.into(),
        }
    }

    #[test]
    fn consume_stats_round_trip_through_the_brokers_encoder() {
        let table = BTreeMap::from([
            (
                queue("broker-a", 0, "T1"),
                OffsetWrapper {
                    broker_offset: 10,
                    consumer_offset: 8,
                    last_timestamp: 1_700_000_000_000,
                    pull_offset: 9,
                },
            ),
            (
                queue("broker-a", 1, "T1"),
                OffsetWrapper {
                    broker_offset: 3,
                    ..OffsetWrapper::default()
                },
            ),
        ]);
        let body = encode_consume_stats(&table, 1.5);
        let stats = decode_consume_stats(&body).unwrap();
        assert_eq!(stats.consume_tps, 1.5);
        assert_eq!(stats.offsets, table.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_java_brokers_consume_stats_decode() {
        // As fastjson writes it, with a field Quiver does not write and keys in another order.
        let body = br#"{"consumeTps":2.5,"offsetTable":{{"brokerName":"b","queueId":3,"topic":"T"}:{"brokerOffset":7,"consumerOffset":5,"lastTimestamp":0,"pullOffset":6}},"totalDiff":2}"#;
        let stats = decode_consume_stats(body).unwrap();
        assert_eq!(stats.consume_tps, 2.5);
        assert_eq!(stats.offsets.len(), 1);
        assert_eq!(stats.offsets[0].0, queue("b", 3, "T"));
        assert_eq!(stats.offsets[0].1.broker_offset, 7);
    }

    #[test]
    fn topic_stats_round_trip() {
        let table = BTreeMap::from([(
            queue("broker-a", 2, "T"),
            TopicOffset {
                min_offset: 1,
                max_offset: 4,
                last_update_timestamp: 99,
            },
        )]);
        let body = encode_topic_stats(&table);
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            r#"{"offsetTable":{{"brokerName":"broker-a","queueId":2,"topic":"T"}:{"minOffset":1,"maxOffset":4,"lastUpdateTimestamp":99}}}"#
        );
        assert_eq!(
            decode_topic_stats(&body).unwrap(),
            table.into_iter().collect::<Vec<_>>()
        );
        assert_eq!(decode_topic_stats(br#"{"offsetTable":{}}"#).unwrap(), []);
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let good = encode_topic_stats(&BTreeMap::from([(
            queue("b", 0, "T"),
            TopicOffset::default(),
        )]));
        for cut in 0..good.len() {
            assert!(decode_topic_stats(&good[..cut]).is_err(), "cut at {cut}");
        }
        let deep = "[".repeat(10_000);
        assert!(decode_consume_stats(deep.as_bytes()).is_err());
        assert!(decode_consume_stats(br#"{"offsetTable":{"x":{}}}"#).is_err());
        assert!(decode_consume_stats(br#"{"offsetTable":[1]}"#).is_err());
        assert!(decode_consume_stats(b"{\"a\":\"\\").is_err());
        assert!(decode_consume_stats(br#"{"a":nope}"#).is_err());
    }
}
