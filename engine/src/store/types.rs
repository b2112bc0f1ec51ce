//! What goes into the store and what comes out: owned, `Send` values, so requests can cross
//! from any thread to the shard that owns a queue.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::{LogError, OpenError, ReadError};
use crate::record::{NewRecord, Record};

/// A message to store. Owned `Bytes`, so appends can be handed to a shard thread zero-copy from
/// a network buffer.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// When the producer created it, ms since the Unix epoch.
    pub born_timestamp_ms: u64,
    /// Hash of its tag, kept in the offset index for filtering.
    pub tag_hash: u64,
    /// Opaque flags.
    pub flags: u32,
    /// Keys to index, separated by spaces.
    pub keys: Bytes,
    /// Opaque encoded properties.
    pub properties: Bytes,
    /// The body.
    pub body: Bytes,
}

impl Message {
    pub(crate) fn record<'a>(
        &'a self,
        topic: &'a [u8],
        queue_id: u32,
        queue_offset: u64,
    ) -> NewRecord<'a> {
        NewRecord {
            topic,
            queue_id,
            queue_offset,
            born_timestamp_ms: self.born_timestamp_ms,
            tag_hash: self.tag_hash,
            flags: self.flags,
            keys: &self.keys,
            properties: &self.properties,
            body: &self.body,
        }
    }
}

/// Where a message is stored in the whole store: shard and log position, one `u64`
/// (shard in the top 16 bits). What a message id points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessagePos(u64);

/// Bits of a [`MessagePos`] holding the log position.
const POS_BITS: u32 = 48;

impl MessagePos {
    /// The position `pos` in shard `shard`.
    pub fn new(shard: u16, pos: u64) -> MessagePos {
        debug_assert!(pos < 1 << POS_BITS, "log position beyond 256 TiB");
        MessagePos(u64::from(shard) << POS_BITS | pos)
    }

    /// From its `u64` form (as carried in a message id).
    pub fn from_u64(raw: u64) -> MessagePos {
        MessagePos(raw)
    }

    /// Its `u64` form.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The shard.
    pub fn shard(self) -> u16 {
        (self.0 >> POS_BITS) as u16
    }

    /// The position in the shard's log.
    pub fn log_pos(self) -> u64 {
        self.0 & ((1 << POS_BITS) - 1)
    }
}

/// Where an appended message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its offset in its queue.
    pub queue_offset: u64,
    /// Its position in the store.
    pub pos: MessagePos,
    /// Length of its record.
    pub size: u32,
    /// When the store stored it, ms since the Unix epoch.
    pub store_timestamp_ms: u64,
}

/// A stored message as read.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its offset in its queue.
    pub queue_offset: u64,
    /// Its position in the store.
    pub pos: MessagePos,
    /// The record: header, topic, keys, properties, body.
    pub record: Record,
}

/// Decides whether a record whose tag hash matched really carries a wanted tag.
pub type ConfirmTag = Arc<dyn Fn(&Record) -> bool + Send + Sync>;

/// Which messages a read returns. Tags are filtered on the hash in the offset index, then
/// confirmed on the record by `confirm`, which the caller (who knows where its protocol keeps
/// the tag) provides: the engine knows nothing of message properties.
#[derive(Clone)]
pub struct TagFilter {
    /// Tag hashes wanted.
    pub hashes: Vec<u64>,
    /// Decides on the record itself, after a hash match (hash collisions).
    pub confirm: Option<ConfirmTag>,
}

impl std::fmt::Debug for TagFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagFilter")
            .field("hashes", &self.hashes)
            .field("confirm", &self.confirm.is_some())
            .finish()
    }
}

/// What a read by queue offset found.
#[derive(Debug, Clone)]
pub enum ReadOutcome {
    /// Messages from the offset asked for; filtered-out ones are skipped. `next_offset` is where
    /// the next read should start (past the filtered ones too). May be empty when everything
    /// read was filtered out.
    Found {
        /// The messages.
        messages: Vec<StoredMessage>,
        /// Where to read next.
        next_offset: u64,
        /// The queue's lowest offset.
        min_offset: u64,
        /// One past the queue's last offset.
        max_offset: u64,
    },
    /// Nothing at or after the offset yet (it equals the queue's max offset).
    NoNewMessage {
        /// The queue's lowest offset.
        min_offset: u64,
        /// One past the queue's last offset.
        max_offset: u64,
    },
    /// The offset was deleted by retention; the queue now starts at `min_offset`.
    OffsetMoved {
        /// The queue's lowest offset.
        min_offset: u64,
        /// One past the queue's last offset.
        max_offset: u64,
    },
    /// The offset is past the queue's end.
    OffsetBeyondMax {
        /// The queue's lowest offset.
        min_offset: u64,
        /// One past the queue's last offset.
        max_offset: u64,
    },
    /// No such queue in the store.
    NoSuchQueue,
}

/// A queue's offset range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOffsets {
    /// The lowest offset still stored.
    pub min: u64,
    /// One past the last offset.
    pub max: u64,
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An append failed in the log (disk full, I/O error, record too large…).
    #[error(transparent)]
    Log(#[from] LogError),
    /// A read failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// An index operation failed on I/O.
    #[error("I/O error while {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: Arc<std::io::Error>,
    },
    /// The process is out of file descriptors (an index file could not be opened).
    #[error("{op}: {advice}")]
    OutOfDescriptors {
        /// What was being done.
        op: &'static str,
        /// The cause and what to do about it.
        advice: String,
    },
    /// The shard's request queue is full (only from the `_or_busy` calls).
    #[error("the shard is busy: its request queue is full")]
    Busy,
    /// The store is shutting down.
    #[error("the store is shut down")]
    Shutdown,
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Opening the store failed.
    #[error("cannot open the store: {0}")]
    Open(Arc<OpenError>),
}

impl StoreError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
        move |source| {
            if crate::file_cache::out_of_descriptors(&source) {
                let advice = crate::config::report_descriptor_shortage(op);
                return StoreError::OutOfDescriptors { op, advice };
            }
            StoreError::Io {
                op,
                source: Arc::new(source),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_positions_pack_shard_and_position() {
        let pos = MessagePos::new(3, (1 << 47) + 5);
        assert_eq!(pos.shard(), 3);
        assert_eq!(pos.log_pos(), (1 << 47) + 5);
        assert_eq!(MessagePos::from_u64(pos.as_u64()), pos);
    }
}
