//! Quiver's storage engine: an append-only CommitLog of fixed-size segment files, written
//! through io_uring by the shard thread that owns it, with switchable sync (group commit) and
//! async flushing and crash recovery that never serves a torn or stale record.
//!
//! The engine knows nothing of network protocols: a record is a topic, a queue, keys,
//! opaque properties and a body (see `FORMAT.md` for the bytes on disk).
//!
//! ```no_run
//! use quiver_engine::{CommitLog, FlushMode, LogConfig, NewRecord};
//!
//! compio::runtime::Runtime::new().unwrap().block_on(async {
//!     let config = LogConfig { flush: FlushMode::Sync, ..LogConfig::default() };
//!     let (log, report) = CommitLog::open("./data/commitlog", config).await.unwrap();
//!     println!("{report}");
//!     let placed = log
//!         .append(&NewRecord { topic: b"orders", body: b"paid", ..NewRecord::default() })
//!         .await
//!         .unwrap(); // durable now: sync mode acknowledges after fdatasync
//!     let record = log.read_record(placed.pos).await.unwrap();
//!     assert_eq!(&record.body()[..], b"paid");
//!     log.close().await.unwrap();
//! });
//! ```

#![deny(missing_docs)]

mod checkpoint;
mod chunk;
pub mod commitlog;
pub mod config;
pub mod consumequeue;
mod error;
pub(crate) mod file_cache;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod keyindex;
pub mod log_budget;
pub mod record;
pub mod scan;
mod segment;
pub mod store;

pub use checkpoint::Checkpoint;
pub use commitlog::{
    AppendTicket, Appended, Blocked, CommitLog, LogScanner, LogStats, Positions, RecoveryReport,
    TryAppendError,
};
pub use config::{ConfigError, FlushMode, IoMode, LogConfig, StoreConfig};
pub use error::{LogError, OpenError, ReadError, TailKind};
pub use record::{NewRecord, Record, RecordError, RecordHeader};
