//! Quiver's network side: RocketMQ's remoting protocol, the name server, and the broker front
//! that serves RocketMQ clients from the storage engine.

#![deny(missing_docs)]

pub mod admin;
pub mod broker;
pub mod client;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod listen;
pub mod message;
pub mod namesrv;
pub mod protocol;
pub mod remoting;
pub mod server;

use quiver_engine::ConfigError;

use crate::remoting::RemotingCommand;
use crate::remoting::codes::response;

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket, thread or runtime could not be set up.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The error.
        source: std::io::Error,
    },
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] quiver_engine::OpenError),
}

/// Smallest frame limit a server accepts: enough for any header a client sends.
pub const MIN_MAX_FRAME_BYTES: usize = 4 << 10;

/// Largest frame limit: the frame length is a 32-bit signed integer.
pub const MAX_MAX_FRAME_BYTES: usize = i32::MAX as usize;

fn check_max_frame_bytes(value: usize) -> Result<(), ConfigError> {
    if !(MIN_MAX_FRAME_BYTES..=MAX_MAX_FRAME_BYTES).contains(&value) {
        return Err(ConfigError::Invalid {
            field: "max_frame_bytes",
            reason: format!("must be between {MIN_MAX_FRAME_BYTES} and {MAX_MAX_FRAME_BYTES}"),
        });
    }
    Ok(())
}

/// The answer to a request code this server does not handle, worded as RocketMQ's.
fn not_supported(request: &RemotingCommand, code: i32) -> RemotingCommand {
    RemotingCommand::response_to(request, response::REQUEST_CODE_NOT_SUPPORTED)
        .with_remark(not_supported_remark(code))
}

/// The remark of [`not_supported`].
fn not_supported_remark(code: i32) -> String {
    format!(" request type {code} not supported")
}
