//! RocketMQ's message encodings: the record layout clients decode in pull and view responses
//! (`MessageDecoder`), properties strings, tag hashes, message ids, batch bodies; and how the
//! broker keeps what that layout needs in the engine's opaque properties field.
//!
//! Facts from apache/rocketmq `MessageDecoder.java`, `MessageConst.java`, `MessageSysFlag.java`,
//! `MessageExtBrokerInner.java`, `UtilAll.java`. Everything on the wire is big-endian.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// Magic code of a V1 record (1-byte topic length).
pub const MAGIC_V1: i32 = 0xDAA3_20A7_u32 as i32;

/// Magic code of a V2 record (2-byte topic length), used for topics over 127 bytes.
pub const MAGIC_V2: i32 = 0xDAA3_20AB_u32 as i32;

/// Longest properties string (its length is a signed 16-bit integer).
pub const MAX_PROPERTIES_BYTES: usize = i16::MAX as usize;

/// Most messages in one batch body.
pub const MAX_BATCH_MESSAGES: usize = 4096;

/// Separates a property's name from its value.
pub const NAME_VALUE_SEPARATOR: char = '\u{1}';

/// Ends each property.
pub const PROPERTY_SEPARATOR: char = '\u{2}';

/// Property names (`MessageConst`).
pub mod property {
    /// Message keys, space-separated.
    pub const KEYS: &str = "KEYS";
    /// The message tag.
    pub const TAGS: &str = "TAGS";
    /// Whether the producer waits for the store (the broker always does in sync mode).
    pub const WAIT: &str = "WAIT";
    /// The client's unique message id.
    pub const UNIQ_KEY: &str = "UNIQ_KEY";
    /// Cluster of the broker that stored the message.
    pub const CLUSTER: &str = "CLUSTER";
    /// Pop checkpoint, never accepted from producers.
    pub const POP_CK: &str = "POP_CK";
    /// Marks a transactional half message.
    pub const TRAN_MSG: &str = "TRAN_MSG";
    /// Delay level of a delayed message.
    pub const DELAY: &str = "DELAY";
}

/// Java's `String.hashCode`: over UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| {
        h.wrapping_mul(31).wrapping_add(i32::from(c as i16 as u16))
    })
}

/// The tag hash the offset index keeps: Java `tags.hashCode()` sign-extended to 64 bits, 0 when
/// there is no tag (`MessageExtBrokerInner.tagsString2tagsCode`).
pub fn tag_hash(tags: Option<&str>) -> u64 {
    match tags {
        Some(t) if !t.is_empty() => i64::from(java_string_hash(t)) as u64,
        _ => 0,
    }
}

/// Body CRC as RocketMQ computes it: IEEE CRC-32 with the top bit cleared.
pub fn body_crc(body: &[u8]) -> i32 {
    (crc32fast::hash(body) & 0x7FFF_FFFF) as i32
}

/// Properties parsed from their string form, in order. As RocketMQ 5.x does, a pair needs a
/// non-empty name and value, and a later duplicate name wins in [`Properties::get`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, String)>);

impl Properties {
    /// Parses `name\x01value\x02...`.
    pub fn parse(s: &str) -> Properties {
        let pairs = s
            .split(PROPERTY_SEPARATOR)
            .filter_map(|segment| {
                let (k, v) = segment.split_once(NAME_VALUE_SEPARATOR)?;
                (!k.is_empty() && !v.is_empty()).then(|| (k.to_string(), v.to_string()))
            })
            .collect();
        Properties(pairs)
    }

    /// The value of `name` (the last, if repeated).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` (replacing every earlier value).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.retain(|(k, _)| k != name);
        self.0.push((name.to_string(), value.into()));
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(k, _)| k != name);
    }

    /// The string form, every pair ended by `\x02`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.0 {
            out.push_str(k);
            out.push(NAME_VALUE_SEPARATOR);
            out.push_str(v);
            out.push(PROPERTY_SEPARATOR);
        }
        out
    }
}

/// What a stored message needs for RocketMQ's record layout beyond the engine's own header:
/// kept at the front of the engine's properties field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredExtras {
    /// `MessageSysFlag` bits as sent (compression, transaction type); host bits are recomputed.
    pub sys_flag: i32,
    /// The producer's address as the broker saw it.
    pub born_host: SocketAddr,
    /// How many times the message was consumed again.
    pub reconsume_times: i32,
    /// Transaction bookkeeping; 0 for normal messages.
    pub prepared_transaction_offset: i64,
    /// CRC of the body as stored.
    pub body_crc: i32,
}

/// Version byte of the stored extras layout.
const EXTRAS_VERSION: u8 = 1;

/// Why stored bytes or a client's bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Too short for what it claims.
    #[error("message bytes truncated in {0}")]
    Truncated(&'static str),
    /// A length or count is out of range.
    #[error("{0}")]
    Invalid(String),
}

fn put_host(out: &mut BytesMut, host: SocketAddr) {
    match host.ip() {
        IpAddr::V4(ip) => out.put_slice(&ip.octets()),
        IpAddr::V6(ip) => out.put_slice(&ip.octets()),
    }
    out.put_i32(i32::from(host.port()));
}

/// An address as RocketMQ writes it, IPv4-mapped IPv6 shown as IPv4 (4-byte form).
pub fn normalize_host(host: SocketAddr) -> SocketAddr {
    match host.ip() {
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), host.port()),
            None => host,
        },
        IpAddr::V4(_) => host,
    }
}

impl StoredExtras {
    /// The engine properties field: these extras, then the properties string.
    pub fn encode_with(&self, properties: &str) -> Bytes {
        let mut out = BytesMut::with_capacity(40 + properties.len());
        out.put_u8(EXTRAS_VERSION);
        out.put_i32(self.sys_flag);
        let host = normalize_host(self.born_host);
        out.put_u8(if host.is_ipv4() { 4 } else { 16 });
        put_host(&mut out, host);
        out.put_i32(self.reconsume_times);
        out.put_i64(self.prepared_transaction_offset);
        out.put_i32(self.body_crc);
        out.put_slice(properties.as_bytes());
        out.freeze()
    }

    /// Reads the extras and the properties string back from an engine properties field.
    pub fn decode(field: &[u8]) -> Result<(StoredExtras, &[u8]), MessageError> {
        let take = |at: usize, n: usize, what: &'static str| {
            field.get(at..at + n).ok_or(MessageError::Truncated(what))
        };
        if take(0, 1, "version")?[0] != EXTRAS_VERSION {
            return Err(MessageError::Invalid(format!(
                "stored extras of unknown version {}",
                field[0]
            )));
        }
        let sys_flag = i32::from_be_bytes(take(1, 4, "sys flag")?.try_into().unwrap_or_default());
        let ip_len = take(5, 1, "born host")?[0] as usize;
        let ip: IpAddr = match ip_len {
            4 => IpAddr::from(<[u8; 4]>::try_from(take(6, 4, "born host")?).unwrap_or_default()),
            16 => IpAddr::from(<[u8; 16]>::try_from(take(6, 16, "born host")?).unwrap_or_default()),
            n => return Err(MessageError::Invalid(format!("born host of {n} bytes"))),
        };
        let mut at = 6 + ip_len;
        let int = |at: usize, what| {
            take(at, 4, what).map(|b| i32::from_be_bytes(b.try_into().unwrap_or_default()))
        };
        let port = int(at, "born port")?;
        at += 4;
        let reconsume_times = int(at, "reconsume times")?;
        at += 4;
        let prepared_transaction_offset = i64::from_be_bytes(
            take(at, 8, "transaction offset")?
                .try_into()
                .unwrap_or_default(),
        );
        at += 8;
        let body_crc = int(at, "body crc")?;
        at += 4;
        let extras = StoredExtras {
            sys_flag,
            born_host: SocketAddr::new(ip, port as u16),
            reconsume_times,
            prepared_transaction_offset,
            body_crc,
        };
        Ok((extras, &field[at..]))
    }
}

/// System flag bits for the born and store host widths.
const BORNHOST_V6_FLAG: i32 = 0x10;
const STOREHOST_V6_FLAG: i32 = 0x20;

/// What a client decodes for one message, apart from the body.
pub struct WireMessage<'a> {
    /// Queue id.
    pub queue_id: i32,
    /// The user flag.
    pub flag: i32,
    /// Offset in the queue.
    pub queue_offset: i64,
    /// Where it is stored: the offset message id names it, and view requests send it back.
    pub physical_offset: i64,
    /// Producer timestamp, ms.
    pub born_timestamp: i64,
    /// Store timestamp, ms.
    pub store_timestamp: i64,
    /// The broker address clients can reach (part of the offset message id).
    pub store_host: SocketAddr,
    /// Stored extras.
    pub extras: StoredExtras,
    /// Topic.
    pub topic: &'a [u8],
    /// Properties string.
    pub properties: &'a [u8],
}

impl WireMessage<'_> {
    /// Appends the record to `out` as `[head, body, tail]`: the body is shared, not copied.
    pub fn encode(&self, body: Bytes, out: &mut Vec<Bytes>) -> Result<(), MessageError> {
        if self.properties.len() > MAX_PROPERTIES_BYTES {
            return Err(MessageError::Invalid(format!(
                "properties of {} bytes",
                self.properties.len()
            )));
        }
        if self.topic.len() > i16::MAX as usize {
            return Err(MessageError::Invalid(format!(
                "topic of {} bytes",
                self.topic.len()
            )));
        }
        let born = normalize_host(self.extras.born_host);
        let store = normalize_host(self.store_host);
        let mut sys_flag = self.extras.sys_flag & !(BORNHOST_V6_FLAG | STOREHOST_V6_FLAG);
        if born.is_ipv6() {
            sys_flag |= BORNHOST_V6_FLAG;
        }
        if store.is_ipv6() {
            sys_flag |= STOREHOST_V6_FLAG;
        }
        let host_len = |h: SocketAddr| if h.is_ipv4() { 8 } else { 20 };
        let v1 = self.topic.len() <= 127;
        let topic_len_size = if v1 { 1 } else { 2 };
        let total = 4
            + 4
            + 4
            + 4
            + 4
            + 8
            + 8
            + 4
            + 8
            + host_len(born)
            + 8
            + host_len(store)
            + 4
            + 8
            + 4
            + body.len()
            + topic_len_size
            + self.topic.len()
            + 2
            + self.properties.len();
        let total = i32::try_from(total)
            .map_err(|_| MessageError::Invalid("message longer than 2 GiB".into()))?;
        let mut head = BytesMut::with_capacity(100);
        head.put_i32(total);
        head.put_i32(if v1 { MAGIC_V1 } else { MAGIC_V2 });
        head.put_i32(self.extras.body_crc);
        head.put_i32(self.queue_id);
        head.put_i32(self.flag);
        head.put_i64(self.queue_offset);
        head.put_i64(self.physical_offset);
        head.put_i32(sys_flag);
        head.put_i64(self.born_timestamp);
        put_host(&mut head, born);
        head.put_i64(self.store_timestamp);
        put_host(&mut head, store);
        head.put_i32(self.extras.reconsume_times);
        head.put_i64(self.extras.prepared_transaction_offset);
        head.put_i32(body.len() as i32);
        let mut tail = BytesMut::with_capacity(2 + self.topic.len() + 2 + self.properties.len());
        if v1 {
            tail.put_u8(self.topic.len() as u8);
        } else {
            tail.put_i16(self.topic.len() as i16);
        }
        tail.put_slice(self.topic);
        tail.put_i16(self.properties.len() as i16);
        tail.put_slice(self.properties);
        out.push(head.freeze());
        if !body.is_empty() {
            out.push(body);
        }
        out.push(tail.freeze());
        Ok(())
    }
}

/// The offset message id: uppercase hex of store host IP, port (4 bytes) and physical offset.
pub fn offset_msg_id(store_host: SocketAddr, physical_offset: u64) -> String {
    let host = normalize_host(store_host);
    let mut bytes = BytesMut::with_capacity(28);
    put_host(&mut bytes, host);
    bytes.put_u64(physical_offset);
    upper_hex(&bytes)
}

/// Upper-case hex of `bytes`, as RocketMQ's `UtilAll.bytes2string` writes ids (without a
/// `format!` per byte: this runs once per stored message).
pub(crate) fn upper_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The store host and physical offset inside an offset message id, if it is one.
pub fn decode_offset_msg_id(id: &str) -> Option<(SocketAddr, u64)> {
    if !id.is_ascii() || (id.len() != 32 && id.len() != 56) {
        return None;
    }
    let bytes: Vec<u8> = (0..id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&id[i..i + 2], 16).ok())
        .collect::<Option<_>>()?;
    let ip_len = if id.len() == 32 { 4 } else { 16 };
    let ip: IpAddr = if ip_len == 4 {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[..4]).ok()?))
    } else {
        IpAddr::from(<[u8; 16]>::try_from(&bytes[..16]).ok()?)
    };
    let port = u32::from_be_bytes(bytes[ip_len..ip_len + 4].try_into().ok()?);
    let offset = u64::from_be_bytes(bytes[ip_len + 4..ip_len + 12].try_into().ok()?);
    Some((SocketAddr::new(ip, u16::try_from(port).ok()?), offset))
}

/// One message of a batch body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    /// The user flag.
    pub flag: i32,
    /// The body.
    pub body: Bytes,
    /// Its properties string.
    pub properties: String,
}

/// Splits a `SEND_BATCH_MESSAGE` body: records of total size, magic, CRC, flag, body length and
/// body, properties length (i16) and properties. Every length is checked.
pub fn decode_batch(body: &Bytes, max_body_bytes: usize) -> Result<Vec<BatchItem>, MessageError> {
    let mut items = Vec::new();
    let mut at = 0usize;
    let int = |at: usize, what: &'static str| -> Result<i32, MessageError> {
        let b = body.get(at..at + 4).ok_or(MessageError::Truncated(what))?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    while at < body.len() {
        if items.len() >= MAX_BATCH_MESSAGES {
            return Err(MessageError::Invalid(format!(
                "more than {MAX_BATCH_MESSAGES} messages in a batch"
            )));
        }
        let total = int(at, "batch record size")?;
        let total = usize::try_from(total)
            .map_err(|_| MessageError::Invalid(format!("batch record size {total}")))?;
        let end = at
            .checked_add(total)
            .filter(|&e| e <= body.len() && total >= 22);
        let end = end.ok_or_else(|| {
            MessageError::Invalid(format!(
                "batch record of {total} bytes at {at} does not fit"
            ))
        })?;
        let flag = int(at + 12, "flag")?;
        let body_len = int(at + 16, "body length")?;
        let body_len = usize::try_from(body_len)
            .map_err(|_| MessageError::Invalid(format!("body length {body_len}")))?;
        if body_len > max_body_bytes {
            return Err(MessageError::Invalid(format!(
                "batch message body of {body_len} bytes"
            )));
        }
        let body_at = at + 20;
        let props_len_at = body_at
            .checked_add(body_len)
            .filter(|&p| p + 2 <= end)
            .ok_or(MessageError::Truncated("batch body"))?;
        let props_len = i16::from_be_bytes([body[props_len_at], body[props_len_at + 1]]);
        let props_len = usize::try_from(props_len)
            .map_err(|_| MessageError::Invalid(format!("properties length {props_len}")))?;
        let props_at = props_len_at + 2;
        if props_at + props_len != end {
            return Err(MessageError::Invalid(
                "batch record lengths do not add up to its size".into(),
            ));
        }
        let properties = std::str::from_utf8(&body[props_at..end])
            .map_err(|_| MessageError::Invalid("batch message properties are not UTF-8".into()))?
            .to_string();
        items.push(BatchItem {
            flag,
            body: body.slice(body_at..body_at + body_len),
            properties,
        });
        at = end;
    }
    Ok(items)
}

/// A message as a client decodes it from a pull, query or view body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedMessage {
    /// Queue id.
    pub queue_id: i32,
    /// The user flag.
    pub flag: i32,
    /// Offset in the queue.
    pub queue_offset: i64,
    /// Where it is stored (what its offset message id carries).
    pub physical_offset: i64,
    /// `MessageSysFlag` bits.
    pub sys_flag: i32,
    /// Producer timestamp, ms.
    pub born_timestamp: i64,
    /// The producer's address.
    pub born_host: SocketAddr,
    /// Store timestamp, ms.
    pub store_timestamp: i64,
    /// The broker's address.
    pub store_host: SocketAddr,
    /// Times consumed again.
    pub reconsume_times: i32,
    /// The body as stored (compressed if the sys flag says so).
    pub body: Bytes,
    /// Topic.
    pub topic: String,
    /// Properties.
    pub properties: Properties,
}

impl DecodedMessage {
    /// The offset message id (store host and physical offset).
    pub fn offset_msg_id(&self) -> String {
        offset_msg_id(self.store_host, self.physical_offset as u64)
    }
}

/// Decodes concatenated records as RocketMQ's `MessageDecoder.decodes` does, checking every
/// length and each body's CRC.
pub fn decode_messages(bytes: &Bytes) -> Result<Vec<DecodedMessage>, MessageError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let take = |from: usize, n: usize, what: &'static str| -> Result<&[u8], MessageError> {
            from.checked_add(n)
                .and_then(|end| bytes.get(from..end))
                .ok_or(MessageError::Truncated(what))
        };
        let int = |from: usize, what| {
            take(from, 4, what).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let long = |from: usize, what| {
            take(from, 8, what).map(|b| i64::from_be_bytes(b.try_into().unwrap_or_default()))
        };
        let total = int(at, "total size")?;
        let total = usize::try_from(total)
            .ok()
            .filter(|&t| t >= 4 && at + t <= bytes.len())
            .ok_or_else(|| MessageError::Invalid(format!("record size {total} at {at}")))?;
        let end = at + total;
        let magic = int(at + 4, "magic")?;
        if magic != MAGIC_V1 && magic != MAGIC_V2 {
            return Err(MessageError::Invalid(format!("magic {magic:#x} at {at}")));
        }
        let body_crc_stored = int(at + 8, "body crc")?;
        let queue_id = int(at + 12, "queue id")?;
        let flag = int(at + 16, "flag")?;
        let queue_offset = long(at + 20, "queue offset")?;
        let physical_offset = long(at + 28, "physical offset")?;
        let sys_flag = int(at + 36, "sys flag")?;
        let born_timestamp = long(at + 40, "born timestamp")?;
        let mut p = at + 48;
        let host = |p: &mut usize, v6: bool, what| -> Result<SocketAddr, MessageError> {
            let n = if v6 { 16 } else { 4 };
            let ip: IpAddr = if v6 {
                IpAddr::from(<[u8; 16]>::try_from(take(*p, 16, what)?).unwrap_or_default())
            } else {
                IpAddr::from(<[u8; 4]>::try_from(take(*p, 4, what)?).unwrap_or_default())
            };
            let port = int(*p + n, what)?;
            *p += n + 4;
            Ok(SocketAddr::new(ip, port as u16))
        };
        let born_host = host(&mut p, sys_flag & BORNHOST_V6_FLAG != 0, "born host")?;
        let store_timestamp = long(p, "store timestamp")?;
        p += 8;
        let store_host = host(&mut p, sys_flag & STOREHOST_V6_FLAG != 0, "store host")?;
        let reconsume_times = int(p, "reconsume times")?;
        p += 4 + 8;
        let body_len = usize::try_from(int(p, "body length")?)
            .map_err(|_| MessageError::Invalid("negative body length".into()))?;
        p += 4;
        take(p, body_len, "body")?;
        let body = bytes.slice(p..p + body_len);
        if body_crc(&body) != body_crc_stored {
            return Err(MessageError::Invalid(format!("body CRC mismatch at {at}")));
        }
        p += body_len;
        let topic_len = if magic == MAGIC_V1 {
            let n = take(p, 1, "topic length")?[0] as usize;
            p += 1;
            n
        } else {
            let b = take(p, 2, "topic length")?;
            p += 2;
            u16::from_be_bytes([b[0], b[1]]) as usize
        };
        let topic = String::from_utf8(take(p, topic_len, "topic")?.to_vec())
            .map_err(|_| MessageError::Invalid("topic is not UTF-8".into()))?;
        p += topic_len;
        let b = take(p, 2, "properties length")?;
        let props_len = u16::from_be_bytes([b[0], b[1]]) as usize;
        p += 2;
        let props = std::str::from_utf8(take(p, props_len, "properties")?)
            .map_err(|_| MessageError::Invalid("properties are not UTF-8".into()))?;
        p += props_len;
        if p != end {
            return Err(MessageError::Invalid(format!(
                "record at {at} says {total} bytes but its fields take {}",
                p - at
            )));
        }
        out.push(DecodedMessage {
            queue_id,
            flag,
            queue_offset,
            physical_offset,
            sys_flag,
            born_timestamp,
            born_host,
            store_timestamp,
            store_host,
            reconsume_times,
            body,
            topic,
            properties: Properties::parse(props),
        });
        at = end;
    }
    Ok(out)
}

static UNIQUE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A message id in the shape of RocketMQ's client ids (`MessageClientIDSetter`): 16 bytes in
/// upper-case hex, from this host, the process, the time and a counter. Producers set it as
/// `UNIQ_KEY`; the broker gives one to messages sent without.
pub fn unique_id(host: SocketAddr) -> String {
    let mut bytes = Vec::with_capacity(16);
    match host.ip() {
        std::net::IpAddr::V4(ip) => bytes.extend_from_slice(&ip.octets()),
        std::net::IpAddr::V6(ip) => bytes.extend_from_slice(&ip.octets()[12..]),
    }
    bytes.extend_from_slice(&(std::process::id() as u16).to_be_bytes());
    bytes.extend_from_slice(&u32::from(host.port()).to_be_bytes());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    bytes.extend_from_slice(&(now as u32).to_be_bytes());
    let count = UNIQUE_COUNTER.fetch_add(1, Ordering::Relaxed);
    bytes.extend_from_slice(&(count as u16).to_be_bytes());
    upper_hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_java() {
        assert_eq!(java_string_hash("TagA"), 2598919);
        assert_eq!(java_string_hash("TagB"), 2598920);
        assert_eq!(java_string_hash("*"), 42);
        assert_eq!(java_string_hash("tag-中文"), -880646131);
        assert_eq!(tag_hash(Some("tag-中文")), (-880646131i64) as u64);
        assert_eq!(tag_hash(None), 0);
        assert_eq!(body_crc(b"Hello RocketMQ"), 1774740973);
    }

    #[test]
    fn properties_parse_like_rocketmq_5() {
        let p = Properties::parse(
            "TAGS\u{1}TagA\u{2}KEYS\u{1}k1 k2\u{2}\u{1}noname\u{2}empty\u{1}\u{2}UNIQ_KEY\u{1}X\u{2}UNIQ_KEY\u{1}Y\u{2}",
        );
        assert_eq!(p.get("TAGS"), Some("TagA"));
        assert_eq!(p.get("KEYS"), Some("k1 k2"));
        assert_eq!(p.get("empty"), None);
        assert_eq!(p.get("UNIQ_KEY"), Some("Y"), "a later duplicate wins");
        let mut p = p;
        p.set("UNIQ_KEY", "Z");
        assert_eq!(Properties::parse(&p.encode()).get("UNIQ_KEY"), Some("Z"));
    }

    /// The worked example of the research notes: topic TopicTest, body "Hello RocketMQ".
    #[test]
    fn the_documented_record_encodes_byte_for_byte() {
        let props = "TAGS\u{1}TagA\u{2}UNIQ_KEY\u{1}C0A8010A1F906D06D69C0A1B2C3D0001\u{2}WAIT\u{1}true\u{2}CLUSTER\u{1}DefaultCluster\u{2}";
        let message = WireMessage {
            queue_id: 3,
            flag: 0,
            queue_offset: 42,
            physical_offset: 0x4000_0000,
            born_timestamp: 0x18b_cfe5_6800,
            store_timestamp: 0x18b_cfe5_6805,
            store_host: "192.168.1.20:10911".parse().unwrap(),
            extras: StoredExtras {
                sys_flag: 0,
                born_host: "192.168.1.10:54321".parse().unwrap(),
                reconsume_times: 0,
                prepared_transaction_offset: 0,
                body_crc: body_crc(b"Hello RocketMQ"),
            },
            topic: b"TopicTest",
            properties: props.as_bytes(),
        };
        let mut parts = Vec::new();
        message
            .encode(Bytes::from_static(b"Hello RocketMQ"), &mut parts)
            .unwrap();
        let bytes: Vec<u8> = parts.concat();
        assert_eq!(bytes.len(), 199);
        let expected_prefix: [u8; 0x58] = [
            0x00, 0x00, 0x00, 0xc7, 0xda, 0xa3, 0x20, 0xa7, 0x69, 0xc8, 0x65, 0xed, 0x00, 0x00,
            0x00, 0x03, //
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x00,
            0x00, 0x00, //
            0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5,
            0x68, 0x00, //
            0xc0, 0xa8, 0x01, 0x0a, 0x00, 0x00, 0xd4, 0x31, 0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5,
            0x68, 0x05, //
            0xc0, 0xa8, 0x01, 0x14, 0x00, 0x00, 0x2a, 0x9f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, //
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0e,
        ];
        assert_eq!(&bytes[..0x58], &expected_prefix[..]);
        assert_eq!(&bytes[0x58..0x66], b"Hello RocketMQ");
        assert_eq!(bytes[0x66], 9);
        assert_eq!(&bytes[0x67..0x70], b"TopicTest");
        assert_eq!(&bytes[0x70..0x72], &[0x00, 0x55]);
        assert_eq!(
            offset_msg_id(message.store_host, 0x4000_0000),
            "C0A8011400002A9F0000000040000000"
        );
        let decoded = decode_messages(&Bytes::from(bytes.clone())).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].topic, "TopicTest");
        assert_eq!(&decoded[0].body[..], b"Hello RocketMQ");
        assert_eq!(decoded[0].properties.get("TAGS"), Some("TagA"));
        assert_eq!(
            decoded[0].offset_msg_id(),
            "C0A8011400002A9F0000000040000000"
        );
        assert_eq!(decoded[0].born_host, message.extras.born_host);
        for cut in 0..bytes.len() {
            assert!(decode_messages(&Bytes::from(bytes[..cut].to_vec())).is_ok() == (cut == 0));
        }
        assert_eq!(
            decode_offset_msg_id("C0A8011400002A9F0000000040000000"),
            Some(("192.168.1.20:10911".parse().unwrap(), 0x4000_0000))
        );
    }

    #[test]
    fn stored_extras_round_trip_in_both_address_families() {
        for host in ["10.1.2.3:999", "[2001:db8::1]:5", "[::ffff:10.0.0.1]:7"] {
            let extras = StoredExtras {
                sys_flag: 0x301,
                born_host: host.parse().unwrap(),
                reconsume_times: 2,
                prepared_transaction_offset: -1,
                body_crc: 12345,
            };
            let field = extras.encode_with("TAGS\u{1}x\u{2}");
            let (back, props) = StoredExtras::decode(&field).unwrap();
            assert_eq!(back.born_host, normalize_host(extras.born_host));
            assert_eq!(
                (back.sys_flag, back.reconsume_times, back.body_crc),
                (0x301, 2, 12345)
            );
            assert_eq!(props, b"TAGS\x01x\x02");
            for cut in 0..field.len() - 9 {
                assert!(StoredExtras::decode(&field[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    fn batch_record(flag: i32, body: &[u8], props: &str) -> Vec<u8> {
        let total = 22 + body.len() + props.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(total as i32).to_be_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&flag.to_be_bytes());
        out.extend_from_slice(&(body.len() as i32).to_be_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(&(props.len() as i16).to_be_bytes());
        out.extend_from_slice(props.as_bytes());
        out
    }

    #[test]
    fn batches_split_and_refuse_bad_lengths() {
        let first = batch_record(1, b"one", "TAGS\u{1}a\u{2}");
        let body: Bytes = [first.clone(), batch_record(2, b"", "")].concat().into();
        let items = decode_batch(&body, 1 << 20).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            (
                items[0].flag,
                &items[0].body[..],
                items[0].properties.as_str()
            ),
            (1, &b"one"[..], "TAGS\u{1}a\u{2}")
        );
        assert_eq!((items[1].flag, items[1].body.len()), (2, 0));
        for cut in 1..body.len() {
            // Only a cut between the two records leaves a valid (one-record) batch.
            assert_eq!(
                decode_batch(&body.slice(..cut), 1 << 20).is_ok(),
                cut == first.len(),
                "cut at {cut}"
            );
        }
        let mut bad = batch_record(1, b"x", "");
        bad[0..4].copy_from_slice(&1000i32.to_be_bytes());
        assert!(decode_batch(&Bytes::from(bad), 1 << 20).is_err());
        assert!(
            decode_batch(&Bytes::from(batch_record(1, &[0; 50], "")), 10).is_err(),
            "body limit"
        );
    }
}
