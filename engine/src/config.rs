//! The commit log's configuration: one typed struct, documented defaults, loadable from TOML.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::record::HEADER_BYTES;

/// Alignment of every direct write: offset, length and buffer address.
pub const PAGE_BYTES: usize = 4096;

/// Largest in-memory buffer the log fills and writes from. Segments at least this large are
/// a whole number of chunks; smaller segments are one chunk each.
pub const CHUNK_BYTES_MAX: usize = 1 << 20;

/// Smallest segment accepted (tests use small segments to exercise roll-over).
pub const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

/// Largest segment accepted: padding lengths are u32 and a segment is addressed in one file.
pub const MAX_SEGMENT_BYTES: u64 = 2 << 30;

/// When the log is acknowledged as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// An append completes once its bytes are in the log's memory; writes go out at once and
    /// `fdatasync` runs every `flush_interval_ms` or `flush_bytes`. RocketMQ's default.
    #[default]
    Async,
    /// An append completes only after its bytes are durable (written and `fdatasync`ed).
    /// Appends that arrive while a flush is in flight are made durable together by the next.
    Sync,
}

/// How segments are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// The faster of the two for the flush mode, as measured on the reference machine
    /// (BENCHMARKS.md, "Direct or buffered"): buffered for both, because the log flushes
    /// every `flush_bytes` at most, so dirty data stays far below the kernel's limits and
    /// writeback streams while the device's flushes overlap.
    #[default]
    Auto,
    /// `O_DIRECT` writes of 4 KiB-aligned buffers, rewriting the partial last page each time.
    /// No copy into the page cache; may win on devices with low per-request latency.
    Direct,
    /// Ordinary writes through the page cache, made durable by `fdatasync`.
    Buffered,
}

/// Settings of one commit log. Every field has a default; a TOML file need only name what
/// it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Size of each segment file. Default 1 GiB, as RocketMQ's `mappedFileSizeCommitLog`.
    /// At least 64 KiB, at most 2 GiB, a multiple of 4 KiB, and of 1 MiB when 1 MiB or more.
    pub segment_bytes: u64,
    /// `async` (default) or `sync`; see [`FlushMode`].
    pub flush: FlushMode,
    /// `auto` (default), `direct` or `buffered`; see [`IoMode`].
    pub io: IoMode,
    /// Async mode: `fdatasync` at least this often while data is unflushed. Default 500 ms,
    /// as RocketMQ's `flushIntervalCommitLog`.
    pub flush_interval_ms: u64,
    /// Async mode: `fdatasync` as soon as this many written bytes are unflushed. Default 64 MiB.
    /// With `flush_interval_ms` this bounds what a power failure can lose.
    pub flush_bytes: u64,
    /// Most bytes appended but not yet written out. An append waits for room beyond this.
    /// In async mode it bounds what a process crash can lose: at most this many bytes of
    /// acknowledged records, plus the one record a write was cut through (a write may end
    /// mid-record, and a half-written record is truncated on recovery). Default 16 MiB.
    pub write_buffer_bytes: u64,
    /// Recently written bytes kept in memory so reads of fresh data need no I/O. Default 32 MiB.
    pub read_cache_bytes: u64,
    /// Largest record accepted, header included. Default 4 MiB + 64 KiB, so a RocketMQ message
    /// at its 4 MiB body limit fits with its topic and properties.
    pub max_record_bytes: u64,
    /// Segments kept prepared (allocated and pre-written) ahead of the one being written.
    /// Default 1.
    pub segments_ahead: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            flush: FlushMode::Async,
            io: IoMode::Auto,
            flush_interval_ms: 500,
            flush_bytes: 64 << 20,
            write_buffer_bytes: 16 << 20,
            read_cache_bytes: 32 << 20,
            max_record_bytes: (4 << 20) + (64 << 10),
            segments_ahead: 1,
        }
    }
}

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field's value is out of range.
    #[error("invalid value for `{field}`: {reason}")]
    Invalid {
        /// The offending field, as spelled in the TOML file.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The TOML could not be parsed or has an unknown field or a wrong type (the message names it).
    #[error("config: {0}")]
    Parse(#[from] toml::de::Error),
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl LogConfig {
    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<LogConfig, ConfigError> {
        let config: LogConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<LogConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        LogConfig::from_toml(&text)
    }

    /// Checks every field's range and the relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let seg = self.segment_bytes;
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&seg) {
            return Err(invalid(
                "segment_bytes",
                format!("{seg} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}"),
            ));
        }
        if !seg.is_multiple_of(PAGE_BYTES as u64) {
            return Err(invalid(
                "segment_bytes",
                format!("{seg} is not a multiple of 4096"),
            ));
        }
        if seg >= CHUNK_BYTES_MAX as u64 && !seg.is_multiple_of(CHUNK_BYTES_MAX as u64) {
            return Err(invalid(
                "segment_bytes",
                format!("{seg} is 1 MiB or more but not a multiple of 1 MiB"),
            ));
        }
        if self.flush_interval_ms == 0 || self.flush_interval_ms > 60_000 {
            return Err(invalid("flush_interval_ms", "must be between 1 and 60000"));
        }
        if self.flush_bytes < PAGE_BYTES as u64 {
            return Err(invalid("flush_bytes", "must be at least 4096"));
        }
        let min_record = HEADER_BYTES as u64 + 1;
        if self.max_record_bytes < min_record {
            return Err(invalid(
                "max_record_bytes",
                format!("must be at least {min_record}"),
            ));
        }
        if self.max_record_bytes + HEADER_BYTES as u64 > seg {
            return Err(invalid(
                "max_record_bytes",
                format!(
                    "{} does not fit in a segment of {seg} bytes with room for a padding header",
                    self.max_record_bytes
                ),
            ));
        }
        if self.write_buffer_bytes < self.max_record_bytes + PAGE_BYTES as u64 {
            return Err(invalid(
                "write_buffer_bytes",
                format!(
                    "must hold at least one largest record (max_record_bytes {}) plus a page",
                    self.max_record_bytes
                ),
            ));
        }
        if self.write_buffer_bytes > 1 << 30 {
            return Err(invalid("write_buffer_bytes", "must be at most 1 GiB"));
        }
        if self.read_cache_bytes > 64 << 30 {
            return Err(invalid("read_cache_bytes", "must be at most 64 GiB"));
        }
        if self.segments_ahead == 0 || self.segments_ahead > 16 {
            return Err(invalid("segments_ahead", "must be between 1 and 16"));
        }
        Ok(())
    }

    /// Size of the in-memory chunks: 1 MiB, or the whole segment when segments are smaller.
    pub fn chunk_bytes(&self) -> usize {
        (self.segment_bytes as usize).min(CHUNK_BYTES_MAX)
    }

    /// The I/O mode actually used, with `auto` resolved.
    pub fn effective_io(&self) -> IoMode {
        match self.io {
            IoMode::Auto => IoMode::Buffered,
            other => other,
        }
    }
}

/// Settings of a whole store: the shards, their logs and indexes, and retention. Every field has
/// a default; a TOML file need only name what it changes, with the log's settings under `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Shard threads (each pinned to a core). 0, the default, means one per core.
    pub shards: usize,
    /// Pin each shard thread to its own core. Default true.
    pub pin_threads: bool,
    /// Requests that may wait for a shard thread before senders wait (or get `Busy`). Default
    /// 4096.
    pub request_queue_depth: usize,
    /// Entries per offset-index file. Default 300,000 (6 MB files), as RocketMQ's
    /// `mappedFileSizeConsumeQueue`.
    pub cq_file_entries: u64,
    /// Hash slots per key-index file. Default 262,144.
    pub key_index_slots: u32,
    /// Entries per key-index file; a full file is sealed and a new one started. Default
    /// 1,048,576 (20 MiB of entries).
    pub key_index_entries: u32,
    /// Segments older than this (by last write) are deleted. Default 72, as RocketMQ's
    /// `fileReservedTime`.
    pub retention_hours: f64,
    /// Above this share of the disk in use, the oldest segments are deleted whatever their
    /// age. Default 0.75, as RocketMQ's `diskMaxUsedSpaceRatio`.
    pub disk_max_used_ratio: f64,
    /// How often retention runs. Default 10,000, as RocketMQ's `cleanResourceInterval`.
    pub retention_check_interval_ms: u64,
    /// Most offset-index and key-index files open at once, over all shards (each shard keeps
    /// its share and closes the least recently used beyond it). 0, the default: a quarter of
    /// the process's open-file limit, at most 65,536; the rest is left for connections, log
    /// segments and the runtime.
    pub open_files_max: usize,
    /// Settings of each shard's commit log.
    pub log: LogConfig,
}

/// Least index files a shard keeps open whatever the budget.
pub const OPEN_FILES_PER_SHARD_MIN: usize = 8;

/// Largest budget derived from the open-file limit.
pub const OPEN_FILES_AUTO_MAX: usize = 65_536;

/// Lowest open-file limit a broker runs under: its index-file budget at the least (8 a shard),
/// and a reserve for connections, log segments, checkpoints and the runtime.
pub const OPEN_FILE_LIMIT_MIN: u64 = 128;

/// The process's open-file limit (soft), if it can be read.
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    read.then_some(limit.rlim_cur)
}

/// Whether `e` says the process or the system is out of file descriptors.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// What to say when descriptors run out: the cause and the two ways out.
pub fn descriptor_advice() -> String {
    let limit = open_file_limit().map_or_else(|| "unknown".to_string(), |l| l.to_string());
    format!(
        "too many open files: raise the open-file limit (ulimit -n, now {limit}) or lower \
         open_files_max (the index files Quiver keeps open)"
    )
}

/// Descriptor shortages are logged at most this often (with a count of the others).
const DESCRIPTOR_ERROR_LOG_MS: u64 = 10_000;

static DESCRIPTOR_ERRORS: crate::log_budget::LogBudget =
    crate::log_budget::LogBudget::new(1, std::time::Duration::from_millis(DESCRIPTOR_ERROR_LOG_MS));

/// Logs a shortage of descriptors met while doing `op`, as one ERROR with the advice, then at
/// most every 10 s; returns the advice.
pub fn report_descriptor_shortage(op: &str) -> String {
    let advice = descriptor_advice();
    if let Some(not_logged_before) = DESCRIPTOR_ERRORS.take(std::time::Instant::now()) {
        tracing::error!(op, not_logged_before, "{advice}");
    }
    advice
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            shards: 0,
            pin_threads: true,
            request_queue_depth: 4096,
            cq_file_entries: 300_000,
            key_index_slots: 1 << 18,
            key_index_entries: 1 << 20,
            retention_hours: 72.0,
            disk_max_used_ratio: 0.75,
            retention_check_interval_ms: 10_000,
            open_files_max: 0,
            log: LogConfig::default(),
        }
    }
}

impl StoreConfig {
    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<StoreConfig, ConfigError> {
        let config: StoreConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<StoreConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        StoreConfig::from_toml(&text)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.log.validate()?;
        if self.shards > 1024 {
            return Err(invalid("shards", "must be at most 1024"));
        }
        if self.request_queue_depth == 0 || self.request_queue_depth > 1 << 20 {
            return Err(invalid(
                "request_queue_depth",
                "must be between 1 and 1048576",
            ));
        }
        if self.cq_file_entries < 2 || self.cq_file_entries > 1 << 26 {
            return Err(invalid("cq_file_entries", "must be between 2 and 67108864"));
        }
        if self.key_index_slots == 0 || self.key_index_slots > 1 << 26 {
            return Err(invalid("key_index_slots", "must be between 1 and 67108864"));
        }
        if self.key_index_entries == 0 || self.key_index_entries > 1 << 26 {
            return Err(invalid(
                "key_index_entries",
                "must be between 1 and 67108864",
            ));
        }
        if !(self.retention_hours > 0.0 && self.retention_hours.is_finite()) {
            return Err(invalid("retention_hours", "must be a positive number"));
        }
        if !(self.disk_max_used_ratio > 0.0 && self.disk_max_used_ratio <= 1.0) {
            return Err(invalid("disk_max_used_ratio", "must be in (0, 1]"));
        }
        if self.retention_check_interval_ms == 0 {
            return Err(invalid("retention_check_interval_ms", "must be at least 1"));
        }
        Ok(())
    }

    /// The index-file budget of the whole store: `open_files_max`, or with 0 a quarter of the
    /// open-file limit (at most [`OPEN_FILES_AUTO_MAX`]).
    pub fn open_files_budget(&self) -> usize {
        if self.open_files_max > 0 {
            return self.open_files_max;
        }
        let limit = open_file_limit().unwrap_or(1024);
        (limit / 4).min(OPEN_FILES_AUTO_MAX as u64) as usize
    }

    /// Fails at once, saying what to do, if the open-file limit is too low to run at all.
    pub fn check_open_file_limit(&self) -> Result<(), ConfigError> {
        let Some(limit) = open_file_limit() else {
            return Ok(());
        };
        if limit < OPEN_FILE_LIMIT_MIN {
            return Err(invalid(
                "open_files_max",
                format!(
                    "the open-file limit is {limit}, below the {OPEN_FILE_LIMIT_MIN} Quiver needs \
                     to run: raise it (ulimit -n, or LimitNOFILE= for a systemd service)"
                ),
            ));
        }
        let budget = self.open_files_budget() as u64;
        if budget >= limit {
            return Err(invalid(
                "open_files_max",
                format!(
                    "{budget} index files would leave nothing of the open-file limit ({limit}) \
                     for connections and log segments: lower open_files_max or raise the limit"
                ),
            ));
        }
        Ok(())
    }

    /// Shard threads to run, with 0 resolved to the number of cores.
    pub fn thread_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_config_nests_the_log_and_names_fields() {
        let config = StoreConfig::from_toml("shards = 2\n[log]\nflush = \"sync\"").unwrap();
        assert_eq!(config.shards, 2);
        assert_eq!(config.log.flush, FlushMode::Sync);
        assert_eq!(config.retention_hours, 72.0);
        let err = StoreConfig::from_toml("disk_max_used_ratio = 1.5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`disk_max_used_ratio`"), "{err}");
        let err = StoreConfig::from_toml("[log]\nsegment_bytes = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`segment_bytes`"), "{err}");
    }

    #[test]
    fn defaults_are_valid_and_match_the_docs() {
        let config = LogConfig::default();
        config.validate().unwrap();
        assert_eq!(config.segment_bytes, 1 << 30);
        assert_eq!(config.flush, FlushMode::Async);
        assert_eq!(config.flush_interval_ms, 500);
        assert_eq!(LogConfig::from_toml("").unwrap(), config);
    }

    #[test]
    fn toml_overrides_only_what_it_names() {
        let config =
            LogConfig::from_toml("flush = \"sync\"\nsegment_bytes = 8388608\nio = \"buffered\"")
                .unwrap();
        assert_eq!(config.flush, FlushMode::Sync);
        assert_eq!(config.io, IoMode::Buffered);
        assert_eq!(config.segment_bytes, 8 << 20);
        assert_eq!(config.flush_interval_ms, 500);
    }

    fn error_of(text: &str) -> String {
        LogConfig::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(error_of("segment_bytes = 1000").contains("`segment_bytes`"));
        assert!(error_of("segment_bytes = 1572864").contains("multiple of 1 MiB"));
        assert!(error_of("flush_interval_ms = 0").contains("`flush_interval_ms`"));
        assert!(error_of("flush = \"sometimes\"").contains("flush"));
        assert!(error_of("segments_ahead = 0").contains("`segments_ahead`"));
        assert!(error_of("segment_bytes = 65536").contains("`max_record_bytes`"));
        assert!(
            error_of("max_record_bytes = 1000\nwrite_buffer_bytes = 1000")
                .contains("`write_buffer_bytes`")
        );
        assert!(error_of("segmnet_bytes = 1").contains("segmnet_bytes"));
    }
}
