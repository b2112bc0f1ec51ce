//! Stored messages in RocketMQ's record layout: what pulls, queries and views send back.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use quiver_engine::Record;
use quiver_engine::store::types::{MessagePos, TagFilter};

use crate::message::{MessageError, Properties, StoredExtras, WireMessage, property, tag_hash};
use crate::protocol::heartbeat::SubscriptionData;

/// The extras and properties string of a stored record. Records not written by the broker
/// (an engine benchmark's, say) get empty extras rather than an error.
pub(crate) fn extras_of(record: &Record) -> (StoredExtras, Bytes) {
    let field = record.properties();
    match StoredExtras::decode(&field) {
        Ok((extras, props)) => {
            let start = field.len() - props.len();
            (extras, field.slice(start..))
        }
        Err(_) => (
            StoredExtras {
                sys_flag: 0,
                born_host: SocketAddr::from(([0, 0, 0, 0], 0)),
                reconsume_times: 0,
                prepared_transaction_offset: 0,
                body_crc: crate::message::body_crc(&record.body()),
            },
            Bytes::new(),
        ),
    }
}

/// Appends one stored message to `out` as RocketMQ's `MessageDecoder` reads it. Its physical
/// offset is the store position, which a view-by-id request sends back.
pub(crate) fn encode_record(
    record: &Record,
    pos: MessagePos,
    queue_offset: u64,
    store_host: SocketAddr,
    out: &mut Vec<Bytes>,
) -> Result<(), MessageError> {
    let header = record.header();
    let (extras, properties) = extras_of(record);
    let topic = record.topic();
    let message = WireMessage {
        queue_id: header.queue_id.get() as i32,
        flag: header.flags.get() as i32,
        queue_offset: queue_offset as i64,
        physical_offset: pos.as_u64() as i64,
        born_timestamp: header.born_timestamp_ms.get() as i64,
        store_timestamp: header.store_timestamp_ms.get() as i64,
        store_host,
        extras,
        topic: &topic,
        properties: &properties,
    };
    message.encode(record.body(), out)
}

/// The tags of a stored record.
pub(crate) fn tags_of(record: &Record) -> Option<String> {
    let (_, properties) = extras_of(record);
    let text = std::str::from_utf8(&properties).ok()?;
    Properties::parse(text)
        .get(property::TAGS)
        .map(str::to_string)
}

/// The engine filter for a tag subscription: hashes from the subscription's code set, then the
/// tag string itself confirmed on the record (hashes collide). `None` matches everything.
pub(crate) fn tag_filter(subscription: &SubscriptionData) -> Option<TagFilter> {
    if subscription.matches_all() {
        return None;
    }
    let tags = subscription.tags_set.clone();
    // The hashes are computed here from the tags rather than taken from the subscription's
    // code set: some clients (rocketmq-client-rust 1.0.0) hash the tags before trimming them,
    // so their code set for "A || B" matches nothing.
    Some(TagFilter {
        hashes: tags.iter().map(|t| tag_hash(Some(t.as_str()))).collect(),
        confirm: Some(Arc::new(move |record: &Record| {
            tags_of(record).is_some_and(|t| tags.contains(&t))
        })),
    })
}

pub(crate) use crate::message::unique_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_are_32_hex_digits_and_differ() {
        let host = SocketAddr::from(([10, 0, 0, 1], 10911));
        let a = unique_id(host);
        let b = unique_id(host);
        assert_eq!(a.len(), 32);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
        assert_ne!(a, b);
        assert!(a.starts_with("0A000001"));
    }
}
