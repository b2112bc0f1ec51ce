//! Messages as applications build and receive them, and what a send reports back.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::message::{
    DecodedMessage, MAX_BATCH_MESSAGES, MAX_PROPERTIES_BYTES, Properties, property,
};
use crate::protocol::bodies::MessageQueue;

/// A message to send: topic, body, and the properties RocketMQ gives meaning to (tags, keys)
/// or that the application adds.
///
/// ```
/// use quiver_net::client::message::Message;
/// let order = Message::new("orders", "order 17 paid")
///     .with_tags("paid")
///     .with_keys(["order-17"])
///     .with_property("region", "eu");
/// assert_eq!(order.tags(), Some("paid"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// The body.
    pub body: Bytes,
    /// An application flag stored with the message.
    pub flag: i32,
    /// Properties (tags, keys, user properties).
    pub properties: Properties,
}

impl Message {
    /// A message with a body and no properties.
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Message {
        Message {
            topic: topic.into(),
            body: body.into(),
            flag: 0,
            properties: Properties::default(),
        }
    }

    /// Sets the tag consumers filter by.
    pub fn with_tags(mut self, tags: impl Into<String>) -> Message {
        self.properties.set(property::TAGS, tags);
        self
    }

    /// Sets the keys the message can be queried by.
    pub fn with_keys<I, S>(mut self, keys: I) -> Message
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let joined = keys
            .into_iter()
            .map(|k| k.as_ref().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        self.properties.set(property::KEYS, joined);
        self
    }

    /// Adds a user property.
    pub fn with_property(mut self, name: &str, value: impl Into<String>) -> Message {
        self.properties.set(name, value);
        self
    }

    /// The tag, if any.
    pub fn tags(&self) -> Option<&str> {
        self.properties.get(property::TAGS)
    }

    /// The keys.
    pub fn keys(&self) -> Vec<&str> {
        split_keys(&self.properties)
    }

    /// Checks what a broker would refuse, before sending.
    pub(crate) fn validate(&self, max_body_bytes: usize) -> Result<(), String> {
        if let Some(why) = crate::protocol::route::topic_name_error(&self.topic) {
            return Err(why);
        }
        if self.body.is_empty() {
            return Err("the body is empty".into());
        }
        if self.body.len() > max_body_bytes {
            return Err(format!(
                "the body is {} bytes, over the limit of {max_body_bytes}",
                self.body.len()
            ));
        }
        if self.properties.encode().len() > MAX_PROPERTIES_BYTES {
            return Err("the properties are too long".into());
        }
        Ok(())
    }
}

/// How a send went, for sends the broker accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SendStatus {
    /// Stored (and durable, if the broker flushes synchronously).
    SendOk,
    /// Stored, but the synchronous flush did not finish in time.
    FlushDiskTimeout,
    /// Stored, but a slave did not confirm in time.
    FlushSlaveTimeout,
    /// Stored, but no slave was available.
    SlaveNotAvailable,
}

/// What a successful send reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendResult {
    /// Whether it is stored, and how safely.
    pub status: SendStatus,
    /// The message id (the `UNIQ_KEY` the producer set; for a batch, the ids joined by `,`).
    pub msg_id: String,
    /// The broker's id for it: store host and commit-log offset (first message of a batch).
    pub offset_msg_id: String,
    /// Where it went.
    pub queue: MessageQueue,
    /// Its offset in the queue (the first message's, for a batch).
    pub queue_offset: i64,
}

/// The `KEYS` property's keys (RocketMQ joins them with spaces).
fn split_keys(properties: &Properties) -> Vec<&str> {
    properties
        .get(property::KEYS)
        .map(|k| k.split(' ').filter(|k| !k.is_empty()).collect())
        .unwrap_or_default()
}

/// Encodes messages as `SEND_BATCH_MESSAGE` carries them (`MessageDecoder.encodeMessages`).
pub(crate) fn encode_batch(messages: &[Message]) -> Result<Bytes, String> {
    if messages.is_empty() {
        return Err("a batch needs at least one message".into());
    }
    if messages.len() > MAX_BATCH_MESSAGES {
        return Err(format!(
            "a batch holds at most {MAX_BATCH_MESSAGES} messages, not {}",
            messages.len()
        ));
    }
    let mut out = BytesMut::new();
    for message in messages {
        let properties = message.properties.encode();
        let total = 4 + 4 + 4 + 4 + 4 + message.body.len() + 2 + properties.len();
        out.put_i32(total as i32);
        out.put_i32(0); // magic, ignored
        out.put_i32(crate::message::body_crc(&message.body));
        out.put_i32(message.flag);
        out.put_i32(message.body.len() as i32);
        out.put_slice(&message.body);
        out.put_i16(properties.len() as i16);
        out.put_slice(properties.as_bytes());
    }
    Ok(out.freeze())
}

/// A unique message id for a message leaving this client.
pub(crate) fn new_msg_id(client_ip: SocketAddr) -> String {
    crate::message::unique_id(client_ip)
}

impl DecodedMessage {
    /// The tag, if any.
    pub fn tags(&self) -> Option<&str> {
        self.properties.get(property::TAGS)
    }

    /// The keys it can be queried by.
    pub fn keys(&self) -> Vec<&str> {
        split_keys(&self.properties)
    }

    /// The producer's message id (`UNIQ_KEY`), or the broker's id when the producer set none.
    pub fn msg_id(&self) -> String {
        self.properties
            .get(property::UNIQ_KEY)
            .map_or_else(|| self.offset_msg_id(), str::to_string)
    }

    /// The queue it came from (the broker named as the route names it).
    pub fn queue(&self, broker_name: &str) -> MessageQueue {
        MessageQueue {
            topic: self.topic.clone(),
            broker_name: broker_name.to_string(),
            queue_id: self.queue_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::decode_batch;

    #[test]
    fn a_batch_encodes_as_the_broker_decodes_it() {
        let messages = vec![
            Message::new("t", "one").with_tags("a"),
            Message::new("t", "two").with_keys(["k1", "k2"]),
        ];
        let body = encode_batch(&messages).unwrap();
        let items = decode_batch(&body, 1 << 20).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(&items[0].body[..], b"one");
        assert_eq!(
            Properties::parse(&items[0].properties).get("TAGS"),
            Some("a")
        );
        assert_eq!(
            Properties::parse(&items[1].properties).get("KEYS"),
            Some("k1 k2")
        );
        assert!(encode_batch(&[]).is_err());
    }

    #[test]
    fn validation_names_what_is_wrong() {
        assert!(
            Message::new("t", "")
                .validate(10)
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            Message::new("t", "0123456789a")
                .validate(10)
                .unwrap_err()
                .contains("over the limit")
        );
        assert!(Message::new("bad topic!", "x").validate(10).is_err());
        assert!(Message::new("ok", "x").validate(10).is_ok());
    }
}
