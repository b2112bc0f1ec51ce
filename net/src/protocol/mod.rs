//! RocketMQ's JSON bodies: routes, topic configs, heartbeats and the admin answers, with the field
//! names RocketMQ clients read and write.
//!
//! Reading is lenient (absent fields take their Java defaults, unknown fields are ignored), as
//! fastjson is; writing emits every field a strict decoder (serde in `rocketmq-client-rust`)
//! requires, and quotes numeric map keys, which fastjson and serde both accept.

pub mod bodies;
pub mod heartbeat;
pub mod route;

/// Decodes a JSON body, naming what it was meant to be when it is not.
pub fn decode_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    body: &[u8],
) -> Result<T, BodyError> {
    serde_json::from_slice(body).map_err(|e| BodyError {
        what,
        reason: e.to_string(),
    })
}

/// Encodes a JSON body. Serializing these plain structures cannot fail; should it, the body is
/// empty and the error logged rather than a panic on a network path.
pub fn encode_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a JSON body did not serialize");
        Vec::new()
    })
}

/// A body that is not the JSON it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {what} body is not valid: {reason}")]
pub struct BodyError {
    /// What the body should have been.
    pub what: &'static str,
    /// The decoder's complaint.
    pub reason: String,
}
