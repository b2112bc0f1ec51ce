//! What a producer or consumer call can fail with, in terms an application can act on.

use crate::client::ClientError;

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MqError {
    /// No name server is configured or none answered.
    #[error("no name server answered ({0}); check the name server addresses")]
    NameServer(String),
    /// The name servers know no route for the topic (and none for auto-creation).
    #[error("no route for topic {0}: create it, or enable auto-creation on the broker")]
    NoRoute(String),
    /// A broker (or name server) answered with an error code.
    #[error("{addr} refused {what}: code {code}, {remark}")]
    Refused {
        /// The request, in words.
        what: &'static str,
        /// The server.
        addr: String,
        /// RocketMQ's response code.
        code: i32,
        /// The server's explanation.
        remark: String,
    },
    /// The connection failed, closed or timed out.
    #[error(transparent)]
    Transport(#[from] ClientError),
    /// An address could not be resolved or parsed.
    #[error("bad address {addr}: {reason}")]
    Address {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The message (or batch) cannot be sent as it is.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A body from the server could not be decoded.
    #[error("undecodable answer from {addr}: {reason}")]
    Malformed {
        /// The server.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Every try failed; the last error is kept.
    #[error("sending failed after {tries} tries: {last}")]
    Exhausted {
        /// Tries made.
        tries: u32,
        /// The last failure.
        last: Box<MqError>,
    },
    /// The client was shut down.
    #[error("the client is shut down")]
    Shutdown,
    /// The client is used in a way it does not allow (e.g. subscribing after start).
    #[error("{0}")]
    Usage(String),
}

impl MqError {
    /// Whether another broker or a later try may succeed (RocketMQ's producer retries these).
    pub fn is_retryable(&self) -> bool {
        use crate::remoting::codes::response;
        match self {
            MqError::Transport(_) | MqError::NoRoute(_) => true,
            MqError::Refused { code, .. } => matches!(
                *code,
                response::SYSTEM_ERROR
                    | response::SYSTEM_BUSY
                    | response::TOPIC_NOT_EXIST
                    | response::SERVICE_NOT_AVAILABLE
                    | response::NO_PERMISSION
            ),
            _ => false,
        }
    }
}
