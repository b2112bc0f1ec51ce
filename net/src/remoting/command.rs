//! One remoting command: a request or a response, its header fields and its body.

use bytes::Bytes;

use super::codes::{
    FLAG_ONEWAY, FLAG_RESPONSE, LANGUAGE_OTHER, QUIVER_PROTOCOL_VERSION, SerializeType,
};
use super::fields::Fields;

/// A decoded or to-be-encoded remoting command (RocketMQ's `RemotingCommand`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotingCommand {
    /// Request code, or response code for a response.
    pub code: i32,
    /// Sender's language number (`LanguageCode`).
    pub language: u8,
    /// Sender's protocol version (`MQVersion` ordinal).
    pub version: i32,
    /// Matches a response to its request.
    pub opaque: i32,
    /// Bit 0: response; bit 1: oneway.
    pub flag: i32,
    /// Free text, usually an error message.
    pub remark: Option<String>,
    /// Header fields, all strings, in the order received or added.
    pub ext_fields: Fields,
    /// Body, in parts (a pull response is many records written with one vectored write).
    pub body: Vec<Bytes>,
    /// How the header was (or is to be) serialized.
    pub serialize_type: SerializeType,
}

/// A header field that is missing or cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A required field is absent.
    #[error("the header field {0} is missing")]
    Missing(&'static str),
    /// A field's value does not parse.
    #[error("the header field {field} has the value {value:?}, which is not a valid {expected}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
}

impl RemotingCommand {
    /// A request.
    pub fn request(code: i32) -> RemotingCommand {
        RemotingCommand {
            code,
            language: LANGUAGE_OTHER,
            version: QUIVER_PROTOCOL_VERSION,
            opaque: 0,
            flag: 0,
            remark: None,
            ext_fields: Fields::default(),
            body: Vec::new(),
            serialize_type: SerializeType::Json,
        }
    }

    /// The response to `request` with `code`: same opaque, same serialization.
    pub fn response_to(request: &RemotingCommand, code: i32) -> RemotingCommand {
        RemotingCommand {
            code,
            language: LANGUAGE_OTHER,
            version: QUIVER_PROTOCOL_VERSION,
            opaque: request.opaque,
            flag: FLAG_RESPONSE,
            remark: None,
            ext_fields: Fields::default(),
            body: Vec::new(),
            serialize_type: request.serialize_type,
        }
    }

    /// Sets the remark.
    pub fn with_remark(mut self, remark: impl Into<String>) -> RemotingCommand {
        self.remark = Some(remark.into());
        self
    }

    /// Adds a header field; the value is written as `Display` writes it, straight into the
    /// command's field text.
    pub fn with_field(mut self, name: &str, value: impl std::fmt::Display) -> RemotingCommand {
        use std::fmt::Write;
        self.ext_fields.push_with(name, |text| {
            // Writing into a `String` does not fail.
            let _ = write!(text, "{value}");
        });
        self
    }

    /// Sets the body to one part.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> RemotingCommand {
        self.body = vec![body.into()];
        self
    }

    /// Marks it oneway: the peer will not answer.
    pub fn oneway(mut self) -> RemotingCommand {
        self.flag |= FLAG_ONEWAY;
        self
    }

    /// Whether this is a response.
    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    /// Whether the sender expects no answer.
    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }

    /// Total body length.
    pub fn body_len(&self) -> usize {
        self.body.iter().map(Bytes::len).sum()
    }

    /// The body as one `Bytes` (zero-copy when it is one part).
    pub fn body_bytes(&self) -> Bytes {
        match self.body.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            parts => parts.concat().into(),
        }
    }

    /// A header field, if present (the first, if repeated).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.ext_fields.get(name)
    }

    /// A required string field.
    pub fn required(&self, name: &'static str) -> Result<&str, FieldError> {
        self.field(name).ok_or(FieldError::Missing(name))
    }

    /// A required field parsed as `T` (integers, booleans: as Java's `parseInt` etc. accept).
    pub fn required_parsed<T: std::str::FromStr>(
        &self,
        name: &'static str,
    ) -> Result<T, FieldError> {
        parse_field(name, self.required(name)?)
    }

    /// An optional field parsed as `T`; `None` when absent.
    pub fn optional_parsed<T: std::str::FromStr>(
        &self,
        name: &'static str,
    ) -> Result<Option<T>, FieldError> {
        self.field(name).map(|v| parse_field(name, v)).transpose()
    }
}

fn parse_field<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, FieldError> {
    let trimmed = value.trim();
    // Java's Boolean.parseBoolean is case-insensitive; FromStr for bool is not.
    let normalized;
    let text = if trimmed.eq_ignore_ascii_case("true") || trimmed.eq_ignore_ascii_case("false") {
        normalized = trimmed.to_ascii_lowercase();
        normalized.as_str()
    } else {
        trimmed
    };
    text.parse().map_err(|_| FieldError::Invalid {
        field: name,
        value: value.chars().take(64).collect(),
        expected: std::any::type_name::<T>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_like_java_and_name_themselves_when_wrong() {
        let cmd = RemotingCommand::request(10)
            .with_field("queueId", "3")
            .with_field("batch", "TRUE")
            .with_field("offset", "x");
        assert_eq!(cmd.required_parsed::<i32>("queueId"), Ok(3));
        assert_eq!(cmd.optional_parsed::<bool>("batch"), Ok(Some(true)));
        assert_eq!(cmd.optional_parsed::<i64>("absent"), Ok(None));
        assert_eq!(cmd.required("absent"), Err(FieldError::Missing("absent")));
        let err = cmd.required_parsed::<i64>("offset").unwrap_err();
        assert!(err.to_string().contains("offset"), "{err}");
    }

    #[test]
    fn responses_mirror_their_request() {
        let mut request = RemotingCommand::request(11);
        request.opaque = 77;
        request.serialize_type = SerializeType::RocketMq;
        let response = RemotingCommand::response_to(&request, 0);
        assert!(response.is_response());
        assert!(!response.is_oneway());
        assert_eq!(response.opaque, 77);
        assert_eq!(response.serialize_type, SerializeType::RocketMq);
        assert!(RemotingCommand::request(40).oneway().is_oneway());
    }
}
