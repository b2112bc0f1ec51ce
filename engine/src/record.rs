//! The on-disk record: one fixed little-endian header followed by topic, keys, properties and body.
//!
//! The header carries everything needed to rebuild every index from the log alone (queue, queue
//! offset, timestamps, tag hash, keys), plus what recovery needs to tell a real record from a torn
//! write or from stale bytes of an earlier life of the same file: the record's own log position,
//! the writer generation, and a CRC32C over everything after the CRC field. The layout is
//! documented byte by byte in `engine/FORMAT.md`.

use bytes::Bytes;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of [`RecordHeader`] on disk. Every record, padding included, starts with one.
pub const HEADER_BYTES: usize = std::mem::size_of::<RecordHeader>();

/// Identifies a Quiver record: the bytes `Q`, `V`.
pub const RECORD_MAGIC: u16 = u16::from_le_bytes(*b"QV");

/// The only record format this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes covered by the CRC start here: the length and the CRC itself are outside it.
pub const CRC_START: usize = 8;

/// Longest topic name the engine stores. The network front applies its protocol's stricter limit.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Longest keys field; the length is a u16 on disk.
pub const MAX_KEYS_BYTES: usize = u16::MAX as usize;

/// Longest properties field; the length is a u16 on disk.
pub const MAX_PROPERTIES_BYTES: usize = u16::MAX as usize;

/// Separates keys inside the keys field, as RocketMQ separates the `KEYS` property.
pub const KEY_SEPARATOR: u8 = b' ';

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A stored message.
    Message = 1,
    /// Fills the end of a segment that the next record did not fit into; readers skip it.
    Padding = 2,
}

/// The fixed header at the start of every record. All integers are little-endian and unaligned,
/// so the header can be read in place from any byte offset of a segment or a network buffer.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct RecordHeader {
    /// Length of the whole record, header included.
    pub total_len: U32,
    /// CRC32C of bytes `[8, total_len)` for a message, `[8, HEADER_BYTES)` for padding.
    pub crc: U32,
    /// [`RECORD_MAGIC`].
    pub magic: U16,
    /// [`FORMAT_VERSION`].
    pub version: u8,
    /// A [`RecordKind`].
    pub kind: u8,
    /// Writer generation: raised at every start of the log, never lower than the previous
    /// record's. Lets recovery reject stale records left beyond a truncated tail.
    pub generation: U32,
    /// Log position of this record's first byte; a record found anywhere else is not valid.
    pub log_pos: U64,
    /// Offset of this message within its queue.
    pub queue_offset: U64,
    /// Milliseconds since the Unix epoch when the log stored the record; never decreases.
    pub store_timestamp_ms: U64,
    /// Milliseconds since the Unix epoch when the producer created the message.
    pub born_timestamp_ms: U64,
    /// Hash of the message tag, copied into the offset index for filtering.
    pub tag_hash: U64,
    /// Queue within the topic.
    pub queue_id: U32,
    /// Opaque to the engine; the broker keeps its message flags here.
    pub flags: U32,
    /// Length of the body.
    pub body_len: U32,
    /// Length of the topic name.
    pub topic_len: U16,
    /// Length of the keys field.
    pub keys_len: U16,
    /// Length of the properties field.
    pub properties_len: U16,
    /// Zero in format version 1.
    pub reserved: U16,
}

const _: () = assert!(HEADER_BYTES == 76);

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes are available than the header or the declared length needs.
    #[error("record truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the record needs.
        needed: usize,
        /// Bytes there were.
        available: usize,
    },
    /// All header bytes are zero: the end of written data in a pre-written segment.
    #[error("no record: zeroed bytes")]
    Zeroed,
    /// The magic number is wrong.
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    /// The format version is not one this code reads.
    #[error("unsupported record format version {0}")]
    BadVersion(u8),
    /// The kind byte is not a known [`RecordKind`].
    #[error("unknown record kind {0}")]
    BadKind(u8),
    /// The declared lengths are inconsistent or exceed a limit.
    #[error("bad record length: {0}")]
    BadLength(&'static str),
    /// The record claims a different log position than where it was found.
    #[error("record claims log position {claimed}, found at {found}")]
    PositionMismatch {
        /// The position written in the header.
        claimed: u64,
        /// Where the record was read.
        found: u64,
    },
    /// The CRC does not match the bytes.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC stored in the header.
        stored: u32,
        /// CRC of the bytes read.
        computed: u32,
    },
    /// A reserved field is not zero.
    #[error("reserved header field is {0}, expected 0")]
    Reserved(u16),
}

/// A message to append. Borrowed so that callers can append straight from network buffers.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewRecord<'a> {
    /// Topic name, 1 to [`MAX_TOPIC_BYTES`] bytes.
    pub topic: &'a [u8],
    /// Queue within the topic.
    pub queue_id: u32,
    /// Offset of the message within its queue; assigned by the caller that owns the queue.
    pub queue_offset: u64,
    /// When the producer created the message, in milliseconds since the Unix epoch.
    pub born_timestamp_ms: u64,
    /// Hash of the tag, for filtering in the offset index.
    pub tag_hash: u64,
    /// Opaque flags.
    pub flags: u32,
    /// Keys to index, separated by [`KEY_SEPARATOR`].
    pub keys: &'a [u8],
    /// Opaque encoded properties.
    pub properties: &'a [u8],
    /// Message body.
    pub body: &'a [u8],
}

impl NewRecord<'_> {
    /// Length of the record on disk, header included, unchecked.
    fn total_len(&self) -> usize {
        HEADER_BYTES + self.topic.len() + self.keys.len() + self.properties.len() + self.body.len()
    }

    /// Length the record will have on disk, or why it cannot be stored.
    pub fn encoded_len(&self, max_record_bytes: usize) -> Result<usize, RecordError> {
        if self.topic.is_empty() {
            return Err(RecordError::BadLength("topic is empty"));
        }
        if self.topic.len() > MAX_TOPIC_BYTES {
            return Err(RecordError::BadLength("topic longer than MAX_TOPIC_BYTES"));
        }
        if self.keys.len() > MAX_KEYS_BYTES {
            return Err(RecordError::BadLength("keys longer than MAX_KEYS_BYTES"));
        }
        if self.properties.len() > MAX_PROPERTIES_BYTES {
            return Err(RecordError::BadLength(
                "properties longer than MAX_PROPERTIES_BYTES",
            ));
        }
        let len = self.total_len();
        if len > max_record_bytes {
            return Err(RecordError::BadLength(
                "record longer than max_record_bytes",
            ));
        }
        Ok(len)
    }

    /// The header this record gets at `log_pos`, CRC included. `total_len` must come from
    /// [`NewRecord::encoded_len`].
    pub fn header(
        &self,
        total_len: usize,
        log_pos: u64,
        generation: u32,
        store_timestamp_ms: u64,
    ) -> RecordHeader {
        debug_assert_eq!(total_len, self.total_len());
        let mut header = RecordHeader {
            queue_offset: U64::new(self.queue_offset),
            store_timestamp_ms: U64::new(store_timestamp_ms),
            born_timestamp_ms: U64::new(self.born_timestamp_ms),
            tag_hash: U64::new(self.tag_hash),
            queue_id: U32::new(self.queue_id),
            flags: U32::new(self.flags),
            body_len: U32::new(self.body.len() as u32),
            topic_len: U16::new(self.topic.len() as u16),
            keys_len: U16::new(self.keys.len() as u16),
            properties_len: U16::new(self.properties.len() as u16),
            ..prelude(RecordKind::Message, total_len, log_pos, generation)
        };
        let mut crc = crc32c::crc32c(&header.as_bytes()[CRC_START..]);
        for part in self.variable_parts() {
            crc = crc32c::crc32c_append(crc, part);
        }
        header.crc = U32::new(crc);
        header
    }

    /// Topic, keys, properties and body, in on-disk order.
    pub fn variable_parts(&self) -> [&[u8]; 4] {
        [self.topic, self.keys, self.properties, self.body]
    }

    /// Encodes the whole record into a new buffer. The log writes the parts in place instead;
    /// this is for tests and tools.
    pub fn encode(&self, log_pos: u64, generation: u32, store_timestamp_ms: u64) -> Vec<u8> {
        let len = self.total_len();
        let header = self.header(len, log_pos, generation, store_timestamp_ms);
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(header.as_bytes());
        for part in self.variable_parts() {
            out.extend_from_slice(part);
        }
        out
    }
}

/// The fields every record starts with; the rest zero, the CRC still to compute.
fn prelude(kind: RecordKind, total_len: usize, log_pos: u64, generation: u32) -> RecordHeader {
    RecordHeader {
        total_len: U32::new(total_len as u32),
        magic: U16::new(RECORD_MAGIC),
        version: FORMAT_VERSION,
        kind: kind as u8,
        generation: U32::new(generation),
        log_pos: U64::new(log_pos),
        ..RecordHeader::new_zeroed()
    }
}

/// The header of a padding record of `total_len` bytes at `log_pos`.
pub fn padding_header(total_len: usize, log_pos: u64, generation: u32) -> RecordHeader {
    assert!(total_len >= HEADER_BYTES, "padding shorter than a header");
    assert!(
        total_len <= u32::MAX as usize,
        "padding longer than a u32 length"
    );
    let mut header = prelude(RecordKind::Padding, total_len, log_pos, generation);
    header.crc = U32::new(crc32c::crc32c(&header.as_bytes()[CRC_START..]));
    header
}

impl RecordHeader {
    /// Reads the header at the start of `bytes` and checks everything that can be checked
    /// without the rest of the record: magic, version, kind, reserved bits, lengths against
    /// `max_len`, and that the record claims position `pos`.
    pub fn parse(bytes: &[u8], pos: u64, max_len: usize) -> Result<&RecordHeader, RecordError> {
        let header = RecordHeader::parse_unplaced(bytes, max_len)?;
        if header.log_pos.get() != pos {
            return Err(RecordError::PositionMismatch {
                claimed: header.log_pos.get(),
                found: pos,
            });
        }
        Ok(header)
    }

    /// [`RecordHeader::parse`] without the position check, for recovery, which tells an
    /// intact record at the wrong position (stale) from a torn one by its CRC.
    pub fn parse_unplaced(bytes: &[u8], max_len: usize) -> Result<&RecordHeader, RecordError> {
        let Ok((header, _)) = RecordHeader::ref_from_prefix(bytes) else {
            return Err(RecordError::Truncated {
                needed: HEADER_BYTES,
                available: bytes.len(),
            });
        };
        if header.magic.get() != RECORD_MAGIC {
            if bytes[..HEADER_BYTES].iter().all(|&b| b == 0) {
                return Err(RecordError::Zeroed);
            }
            return Err(RecordError::BadMagic(header.magic.get()));
        }
        if header.version != FORMAT_VERSION {
            return Err(RecordError::BadVersion(header.version));
        }
        if header.reserved.get() != 0 {
            return Err(RecordError::Reserved(header.reserved.get()));
        }
        let total = header.total_len.get() as usize;
        if total < HEADER_BYTES {
            return Err(RecordError::BadLength(
                "total length shorter than the header",
            ));
        }
        if total > max_len {
            return Err(RecordError::BadLength(
                "total length beyond the allowed maximum",
            ));
        }
        match header.kind() {
            Some(RecordKind::Message) => {
                let parts = header.topic_len.get() as usize
                    + header.keys_len.get() as usize
                    + header.properties_len.get() as usize
                    + header.body_len.get() as usize;
                if HEADER_BYTES + parts != total {
                    return Err(RecordError::BadLength(
                        "parts do not add up to the total length",
                    ));
                }
                if header.topic_len.get() == 0 || header.topic_len.get() as usize > MAX_TOPIC_BYTES
                {
                    return Err(RecordError::BadLength("topic length out of range"));
                }
            }
            Some(RecordKind::Padding) => {}
            None => return Err(RecordError::BadKind(header.kind)),
        }
        Ok(header)
    }

    /// The kind, if the byte is a known one.
    pub fn kind(&self) -> Option<RecordKind> {
        match self.kind {
            1 => Some(RecordKind::Message),
            2 => Some(RecordKind::Padding),
            _ => None,
        }
    }

    /// Total length as a `usize`.
    pub fn len(&self) -> usize {
        self.total_len.get() as usize
    }

    /// Never true for a parsed header; here so `len` has its usual partner.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the CRC given the complete record bytes (`bytes.len() >= self.len()`).
    pub fn verify_crc(&self, bytes: &[u8]) -> Result<(), RecordError> {
        let covered_end = match self.kind() {
            Some(RecordKind::Padding) => HEADER_BYTES,
            _ => self.len(),
        };
        let Some(covered) = bytes.get(CRC_START..covered_end) else {
            return Err(RecordError::Truncated {
                needed: covered_end,
                available: bytes.len(),
            });
        };
        let computed = crc32c::crc32c(covered);
        if computed != self.crc.get() {
            return Err(RecordError::CrcMismatch {
                stored: self.crc.get(),
                computed,
            });
        }
        Ok(())
    }
}

/// Parses and fully verifies the record at the start of `bytes`, which was found at log
/// position `pos`. Returns the header and the record's length.
pub fn decode(
    bytes: &[u8],
    pos: u64,
    max_len: usize,
) -> Result<(&RecordHeader, usize), RecordError> {
    let header = RecordHeader::parse(bytes, pos, max_len)?;
    let len = header.len();
    if bytes.len() < len && header.kind() == Some(RecordKind::Message) {
        return Err(RecordError::Truncated {
            needed: len,
            available: bytes.len(),
        });
    }
    header.verify_crc(bytes)?;
    Ok((header, len))
}

/// A stored message, owning its bytes (zero-copy from the log's memory where possible).
#[derive(Clone, Debug)]
pub struct Record {
    bytes: Bytes,
}

impl Record {
    /// Verifies `bytes` as one complete message record found at `pos`.
    pub fn parse(bytes: Bytes, pos: u64) -> Result<Record, RecordError> {
        let (header, len) = decode(&bytes, pos, bytes.len())?;
        if header.kind() != Some(RecordKind::Message) {
            return Err(RecordError::BadKind(header.kind));
        }
        if len != bytes.len() {
            return Err(RecordError::BadLength("bytes beyond the record's length"));
        }
        Ok(Record { bytes })
    }

    fn header_of(bytes: &[u8]) -> &RecordHeader {
        match RecordHeader::ref_from_prefix(bytes) {
            Ok((header, _)) => header,
            // A Record is only built from verified bytes at least a header long.
            Err(_) => unreachable!("record shorter than its header"),
        }
    }

    /// The fixed header.
    pub fn header(&self) -> &RecordHeader {
        Record::header_of(&self.bytes)
    }

    /// The whole record as stored.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    fn part(&self, index: usize) -> Bytes {
        let header = self.header();
        let lens = [
            header.topic_len.get() as usize,
            header.keys_len.get() as usize,
            header.properties_len.get() as usize,
            header.body_len.get() as usize,
        ];
        let start = HEADER_BYTES + lens[..index].iter().sum::<usize>();
        self.bytes.slice(start..start + lens[index])
    }

    /// Topic name bytes.
    pub fn topic(&self) -> Bytes {
        self.part(0)
    }

    /// Keys field.
    pub fn keys(&self) -> Bytes {
        self.part(1)
    }

    /// Encoded properties.
    pub fn properties(&self) -> Bytes {
        self.part(2)
    }

    /// Message body.
    pub fn body(&self) -> Bytes {
        self.part(3)
    }

    /// Log position.
    pub fn log_pos(&self) -> u64 {
        self.header().log_pos.get()
    }

    /// Length on disk.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: a record holds at least a header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NewRecord<'static> {
        NewRecord {
            topic: b"orders",
            queue_id: 3,
            queue_offset: 42,
            born_timestamp_ms: 1_700_000_000_000,
            tag_hash: 0xdead_beef,
            flags: 7,
            keys: b"k1 k2",
            properties: b"a\x01b\x02",
            body: b"hello world",
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let rec = sample();
        let bytes = rec.encode(4096, 9, 1_700_000_000_123);
        let record = Record::parse(Bytes::from(bytes), 4096).unwrap();
        let h = record.header();
        assert_eq!(h.queue_id.get(), 3);
        assert_eq!(h.queue_offset.get(), 42);
        assert_eq!(h.generation.get(), 9);
        assert_eq!(h.store_timestamp_ms.get(), 1_700_000_000_123);
        assert_eq!(h.born_timestamp_ms.get(), 1_700_000_000_000);
        assert_eq!(h.tag_hash.get(), 0xdead_beef);
        assert_eq!(h.flags.get(), 7);
        assert_eq!(&record.topic()[..], b"orders");
        assert_eq!(&record.keys()[..], b"k1 k2");
        assert_eq!(&record.properties()[..], b"a\x01b\x02");
        assert_eq!(&record.body()[..], b"hello world");
        assert_eq!(record.log_pos(), 4096);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = sample().encode(0, 1, 5);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(
                    decode(&damaged, 0, damaged.len()).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_record_elsewhere_than_it_claims_is_rejected() {
        let bytes = sample().encode(100, 1, 5);
        assert_eq!(
            decode(&bytes, 200, bytes.len()).unwrap_err(),
            RecordError::PositionMismatch {
                claimed: 100,
                found: 200
            }
        );
    }

    #[test]
    fn padding_is_checked_over_its_header_only() {
        let header = padding_header(1000, 64, 2);
        let mut bytes = vec![0xAAu8; 1000];
        bytes[..HEADER_BYTES].copy_from_slice(header.as_bytes());
        let (parsed, len) = decode(&bytes, 64, 1000).unwrap();
        assert_eq!(parsed.kind(), Some(RecordKind::Padding));
        assert_eq!(len, 1000);
        // A padding header alone (without the padded bytes) is enough to skip it.
        assert!(decode(&bytes[..HEADER_BYTES], 64, 1000).is_ok());
    }

    #[test]
    fn zeroes_and_short_input_are_told_apart() {
        assert_eq!(
            decode(&[0u8; 100], 0, 100).unwrap_err(),
            RecordError::Zeroed
        );
        assert!(matches!(
            decode(&[1u8; 10], 0, 100).unwrap_err(),
            RecordError::Truncated { .. }
        ));
        let bytes = sample().encode(0, 1, 5);
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1], 0, 1 << 20).unwrap_err(),
            RecordError::Truncated { .. }
        ));
    }

    #[test]
    fn limits_are_enforced_before_encoding() {
        let long_topic = [b'a'; MAX_TOPIC_BYTES + 1];
        let rec = NewRecord {
            topic: &long_topic,
            ..sample()
        };
        assert!(rec.encoded_len(1 << 20).is_err());
        assert!(
            NewRecord {
                topic: b"",
                ..sample()
            }
            .encoded_len(1 << 20)
            .is_err()
        );
        let body = vec![0u8; 1000];
        let rec = NewRecord {
            body: &body,
            ..sample()
        };
        assert!(rec.encoded_len(1000).is_err());
        assert!(rec.encoded_len(2000).is_ok());
    }
}
