//! The JSON header (`SerializeType.JSON`): what Java clients send by default.
//!
//! Fields as fastjson writes them, alphabetically: `code`, `extFields` (omitted when empty),
//! `flag`, `language` (a name), `opaque`, `remark` (omitted when none),
//! `serializeTypeCurrentRPC`, `version`. Decoding accepts any order, missing optional fields, and
//! non-string `extFields` values (written as their JSON text).

use serde::{Deserialize, Serialize};

use super::codes::{SerializeType, language_code, language_name};
use super::command::RemotingCommand;

#[derive(Serialize, Deserialize)]
struct JsonHeader<'a> {
    code: i32,
    #[serde(rename = "extFields", default, skip_serializing_if = "Option::is_none")]
    ext_fields: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    flag: i32,
    #[serde(default = "java", borrow)]
    language: std::borrow::Cow<'a, str>,
    #[serde(default)]
    opaque: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remark: Option<String>,
    #[serde(
        rename = "serializeTypeCurrentRPC",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    serialize_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    version: i32,
}

fn java() -> std::borrow::Cow<'static, str> {
    "JAVA".into()
}

/// Decodes a JSON header.
pub fn decode(bytes: &[u8]) -> Result<RemotingCommand, String> {
    let header: JsonHeader<'_> =
        serde_json::from_slice(bytes).map_err(|e| format!("bad JSON header: {e}"))?;
    let ext_fields = header
        .ext_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s)),
            serde_json::Value::Null => None,
            other => Some((k, other.to_string())),
        })
        .collect();
    Ok(RemotingCommand {
        code: header.code,
        language: language_code(&header.language),
        version: header.version,
        opaque: header.opaque,
        flag: header.flag,
        remark: header.remark,
        ext_fields,
        body: Vec::new(),
        serialize_type: SerializeType::Json,
    })
}

/// Encodes a command's header as JSON.
pub fn encode(cmd: &RemotingCommand) -> Vec<u8> {
    let header = JsonHeader {
        code: cmd.code,
        ext_fields: (!cmd.ext_fields.is_empty()).then(|| {
            cmd.ext_fields
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect()
        }),
        flag: cmd.flag,
        language: language_name(cmd.language).into(),
        opaque: cmd.opaque,
        remark: cmd.remark.clone(),
        serialize_type: Some("JSON".into()),
        version: cmd.version,
    };
    match serde_json::to_vec(&header) {
        Ok(bytes) => bytes,
        // Serializing strings and integers does not fail; should it, the peer still gets the
        // fields that match the answer to its request.
        Err(e) => {
            tracing::error!(error = %e, "JSON header encoding failed");
            format!(
                r#"{{"code":{},"flag":{},"language":"OTHER","opaque":{},"serializeTypeCurrentRPC":"JSON","version":{}}}"#,
                cmd.code, cmd.flag, cmd.opaque, cmd.version
            )
            .into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_java_request_decodes() {
        let captured = br#"{"code":310,"extFields":{"f":"0","g":"1491978653614","d":"4","e":"0","b":"yyztest2","c":"TBW102","a":"yyzGroup2","j":"0","k":"false","h":"0","i":"TAGS\u0001TAG\u0002WAIT\u0001true\u0002KEYS\u0001ffff\u0002"},"flag":0,"language":"JAVA","opaque":3,"serializeTypeCurrentRPC":"JSON","version":115}"#;
        let cmd = decode(captured).unwrap();
        assert_eq!(
            (cmd.code, cmd.opaque, cmd.version, cmd.language),
            (310, 3, 115, 0)
        );
        assert_eq!(cmd.field("b"), Some("yyztest2"));
        assert_eq!(
            cmd.field("i"),
            Some("TAGS\u{1}TAG\u{2}WAIT\u{1}true\u{2}KEYS\u{1}ffff\u{2}")
        );
    }

    #[test]
    fn output_matches_the_java_field_order() {
        let cmd = RemotingCommand::request(105).with_field("topic", "TopicTest");
        let text = String::from_utf8(encode(&cmd)).unwrap();
        assert_eq!(
            text,
            r#"{"code":105,"extFields":{"topic":"TopicTest"},"flag":0,"language":"OTHER","opaque":0,"serializeTypeCurrentRPC":"JSON","version":401}"#
        );
        let back = decode(text.as_bytes()).unwrap();
        assert_eq!(back.ext_fields, cmd.ext_fields);
    }

    #[test]
    fn leniency_for_other_clients() {
        let cmd = decode(
            br#"{"code":34,"opaque":9,"extFields":{"n":5,"b":true,"z":null},"language":"KOTLIN"}"#,
        )
        .unwrap();
        assert_eq!(cmd.field("n"), Some("5"));
        assert_eq!(cmd.field("b"), Some("true"));
        assert_eq!(cmd.field("z"), None);
        assert_eq!(cmd.language, 7, "unknown languages read as OTHER");
        assert!(decode(b"{\"opaque\":1}").is_err(), "code is required");
        assert!(decode(b"not json").is_err());
    }
}
