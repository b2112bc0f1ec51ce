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
    match serde_json::from_slice(body) {
        Ok(value) => Ok(value),
        // Java brokers and name servers (fastjson) write integer map keys unquoted
        // (`{"brokerAddrs":{0:"10.0.0.1:10911"}}`), which is not JSON; quote them and retry.
        Err(first) => match quote_bare_integer_keys(body) {
            Some(fixed) => serde_json::from_slice(&fixed),
            None => Err(first),
        }
        .map_err(|e| BodyError {
            what,
            reason: e.to_string(),
        }),
    }
}

/// `body` with every unquoted integer object key quoted, or `None` if it has none.
fn quote_bare_integer_keys(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        out.push(b);
        i += 1;
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b',' => {
                let mut j = i;
                while j < body.len() && body[j].is_ascii_whitespace() {
                    j += 1;
                }
                let start = j;
                if j < body.len() && body[j] == b'-' {
                    j += 1;
                }
                while j < body.len() && body[j].is_ascii_digit() {
                    j += 1;
                }
                let digits = j > start && body[start..j].iter().any(u8::is_ascii_digit);
                let mut k = j;
                while k < body.len() && body[k].is_ascii_whitespace() {
                    k += 1;
                }
                if digits && k < body.len() && body[k] == b':' {
                    out.extend_from_slice(&body[i..start]);
                    out.push(b'"');
                    out.extend_from_slice(&body[start..j]);
                    out.push(b'"');
                    i = j;
                    changed = true;
                }
            }
            _ => {}
        }
    }
    changed.then_some(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn fastjson_integer_keys_are_read() {
        let body = br#"{"a":{0:"x:1", -1 : "y"},"s":"{0:not a key}"}"#;
        #[derive(serde::Deserialize)]
        struct Body {
            a: BTreeMap<i64, String>,
            s: String,
        }
        let parsed: Body = decode_json("test", body).unwrap();
        assert_eq!(parsed.a.get(&0).map(String::as_str), Some("x:1"));
        assert_eq!(parsed.a.get(&-1).map(String::as_str), Some("y"));
        assert_eq!(parsed.s, "{0:not a key}");
        assert!(decode_json::<Body>("test", b"{0:}").is_err());
    }
}
