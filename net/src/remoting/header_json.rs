//! The JSON header (`SerializeType.JSON`): what Java clients send by default.
//!
//! Fields as fastjson writes them, alphabetically: `code`, `extFields` (omitted when empty),
//! `flag`, `language` (a name), `opaque`, `remark` (omitted when none),
//! `serializeTypeCurrentRPC`, `version`. Decoding accepts any order, missing optional fields, and
//! non-string `extFields` values (written as their JSON text).

use std::borrow::Cow;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

use super::codes::{SerializeType, language_code, language_name};
use super::command::RemotingCommand;

/// The header as read. `extFields` goes straight into name/value pairs: this runs for every
/// request, and a `serde_json::Map` of `Value`s in between cost a tenth of a broker's CPU.
#[derive(Deserialize)]
struct JsonHeaderIn<'a> {
    code: i32,
    #[serde(rename = "extFields", default)]
    ext_fields: ExtFields,
    #[serde(default)]
    flag: i32,
    #[serde(default = "java", borrow)]
    language: Cow<'a, str>,
    #[serde(default)]
    opaque: i32,
    #[serde(default)]
    remark: Option<String>,
    #[serde(default)]
    version: i32,
}

/// The header as written: fields in fastjson's (alphabetical) order, borrowing the command.
#[derive(Serialize)]
struct JsonHeaderOut<'a> {
    code: i32,
    #[serde(rename = "extFields", skip_serializing_if = "SortedFields::is_empty")]
    ext_fields: SortedFields<'a>,
    flag: i32,
    language: &'a str,
    opaque: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    remark: Option<&'a str>,
    #[serde(rename = "serializeTypeCurrentRPC")]
    serialize_type: &'a str,
    version: i32,
}

fn java() -> Cow<'static, str> {
    "JAVA".into()
}

/// `extFields` as sorted, de-duplicated (last wins) name/value pairs; non-string values are
/// kept as their JSON text, `null`s dropped.
#[derive(Default)]
struct ExtFields(Vec<(String, String)>);

impl<'de> Deserialize<'de> for ExtFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = ExtFields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of fields")
            }
            fn visit_unit<E>(self) -> Result<ExtFields, E> {
                Ok(ExtFields::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExtFields, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(12).min(64));
                while let Some(name) = map.next_key::<String>()? {
                    if let FieldValue(Some(value)) = map.next_value()? {
                        fields.push((name, value));
                    }
                }
                // Sorted and last-wins, as the map this replaces, so a header re-encodes to
                // what decodes to the same command.
                fields.reverse();
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                fields.dedup_by(|later, kept| later.0 == kept.0);
                Ok(ExtFields(fields))
            }
        }
        d.deserialize_any(Fields)
    }
}

/// One `extFields` value as text.
struct FieldValue(Option<String>);

impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Value;
        impl<'de> Visitor<'de> for Value {
            type Value = FieldValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field value")
            }
            fn visit_str<E>(self, v: &str) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(v.to_string())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(serde_json::Value::from(v).to_string())))
            }
            fn visit_unit<E>(self) -> Result<FieldValue, E> {
                Ok(FieldValue(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldValue, A::Error> {
                let value = serde_json::Value::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(FieldValue(Some(value.to_string())))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<FieldValue, A::Error> {
                let value = serde_json::Value::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(FieldValue(Some(value.to_string())))
            }
        }
        d.deserialize_any(Value)
    }
}

/// A command's fields, written as a JSON object in name order.
struct SortedFields<'a>(Vec<&'a (String, String)>);

impl SortedFields<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for SortedFields<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Decodes a JSON header.
pub fn decode(bytes: &[u8]) -> Result<RemotingCommand, String> {
    let header: JsonHeaderIn<'_> =
        serde_json::from_slice(bytes).map_err(|e| format!("bad JSON header: {e}"))?;
    Ok(RemotingCommand {
        code: header.code,
        language: language_code(&header.language),
        version: header.version,
        opaque: header.opaque,
        flag: header.flag,
        remark: header.remark,
        ext_fields: header.ext_fields.0,
        body: Vec::new(),
        serialize_type: SerializeType::Json,
    })
}

/// Encodes a command's header as JSON.
pub fn encode(cmd: &RemotingCommand) -> Vec<u8> {
    let mut fields: Vec<&(String, String)> = cmd.ext_fields.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    // A name set twice is written once, with its last value (as a map would hold it).
    fields.reverse();
    fields.dedup_by(|earlier, kept| earlier.0 == kept.0);
    fields.reverse();
    let header = JsonHeaderOut {
        code: cmd.code,
        ext_fields: SortedFields(fields),
        flag: cmd.flag,
        language: language_name(cmd.language),
        opaque: cmd.opaque,
        remark: cmd.remark.as_deref(),
        serialize_type: "JSON",
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
    fn fields_come_out_sorted_last_value_winning_objects_as_text() {
        let cmd =
            decode(br#"{"code":1,"extFields":{"b":"2","a":{"x":[1,2]},"b":"3","c":1.5}}"#).unwrap();
        let fields: Vec<(&str, &str)> = cmd
            .ext_fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(fields, [("a", r#"{"x":[1,2]}"#), ("b", "3"), ("c", "1.5")]);
        let twice = RemotingCommand::request(1)
            .with_field("z", "first")
            .with_field("a", "1")
            .with_field("z", "second");
        let text = String::from_utf8(encode(&twice)).unwrap();
        assert!(
            text.contains(r#""extFields":{"a":"1","z":"second"}"#),
            "{text}"
        );
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
