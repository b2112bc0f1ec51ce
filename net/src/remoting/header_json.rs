//! The JSON header (`SerializeType.JSON`): what Java clients send by default.
//!
//! Fields as fastjson writes them, alphabetically: `code`, `extFields` (omitted when empty),
//! `flag`, `language` (a name), `opaque`, `remark` (omitted when none),
//! `serializeTypeCurrentRPC`, `version`. Decoding accepts any order, missing optional fields,
//! unknown fields, and non-string `extFields` values (kept as their JSON text; `null`s dropped).
//!
//! Hand-written rather than derived: every request and every answer passes through here, and
//! with serde_json (a map of fields, a `String` per name and value) this was a fifth of the
//! broker's CPU under single sends. The decoder writes every name and value into one string
//! ([`Fields`]); the encoder writes straight into the output.

use super::codes::{SerializeType, language_code, language_name};
use super::command::RemotingCommand;
use super::fields::{EXT_FIELDS_MAX, Fields};

/// Deepest nesting of arrays and objects accepted inside a header (serde_json's default).
const NESTING_MAX: usize = 128;

/// Decodes a JSON header.
pub fn decode(bytes: &[u8]) -> Result<RemotingCommand, String> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| format!("bad JSON header: not UTF-8 ({e})"))?;
    Parser { text, at: 0 }
        .header()
        .map_err(|e| format!("bad JSON header: {e}"))
}

/// A cursor over the header text. `at` is always on a character boundary: it only moves past
/// ASCII bytes it has matched, or to the end of a run found by searching for ASCII bytes.
struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn fail<T>(&self, expected: &str) -> Result<T, String> {
        match self.peek() {
            Some(b) if b.is_ascii_graphic() => Err(format!(
                "expected {expected} at byte {}, found '{}'",
                self.at, b as char
            )),
            Some(b) => Err(format!(
                "expected {expected} at byte {}, found byte {b:#04x}",
                self.at
            )),
            None => Err(format!("expected {expected}, found the end")),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), String> {
        if self.eat(byte) {
            Ok(())
        } else {
            self.fail(what)
        }
    }

    fn literal(&mut self, word: &str) -> Result<(), String> {
        if self.bytes()[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(())
        } else {
            self.fail(word)
        }
    }

    fn header(mut self) -> Result<RemotingCommand, String> {
        let mut cmd = RemotingCommand::request(0);
        cmd.language = language_code("JAVA");
        cmd.version = 0;
        let mut code = None;
        let mut key = String::new();
        self.expect(b'{', "'{'")?;
        if !self.eat(b'}') {
            loop {
                self.skip_ws();
                self.expect(b'"', "a field name")?;
                key.clear();
                self.string_into(&mut key)?;
                self.expect(b':', "':'")?;
                self.skip_ws();
                match key.as_str() {
                    "code" => code = Some(self.int("code")?),
                    "flag" => cmd.flag = self.int("flag")?,
                    "opaque" => cmd.opaque = self.int("opaque")?,
                    "version" => cmd.version = self.int("version")?,
                    "language" => {
                        if let Some(name) = self.nullable_string()? {
                            cmd.language = language_code(&name);
                        }
                    }
                    "remark" => cmd.remark = self.nullable_string()?,
                    "extFields" => self.ext_fields(&mut cmd.ext_fields)?,
                    _ => self.skip_value(0)?,
                }
                if self.eat(b'}') {
                    break;
                }
                self.expect(b',', "',' or '}'")?;
            }
        }
        self.skip_ws();
        if self.at != self.text.len() {
            return self.fail("the end of the header");
        }
        cmd.code = code.ok_or("missing field `code`")?;
        cmd.serialize_type = SerializeType::Json;
        Ok(cmd)
    }

    /// An integer that fits an `i32`.
    fn int(&mut self, field: &str) -> Result<i32, String> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        if self.at == digits || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            self.at = start;
            return self.fail(&format!("an integer for `{field}`"));
        }
        self.text[start..self.at]
            .parse()
            .map_err(|_| format!("`{field}` is out of range: {}", &self.text[start..self.at]))
    }

    fn nullable_string(&mut self) -> Result<Option<String>, String> {
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                let mut s = String::new();
                self.string_into(&mut s)?;
                Ok(Some(s))
            }
            Some(b'n') => self.literal("null").map(|()| None),
            _ => self.fail("a string"),
        }
    }

    /// The rest of a string whose opening quote was read, unescaped onto `out`.
    fn string_into(&mut self, out: &mut String) -> Result<(), String> {
        loop {
            let rest = &self.bytes()[self.at..];
            let run = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .ok_or("a string is not closed")?;
            out.push_str(&self.text[self.at..self.at + run]);
            self.at += run;
            if rest[run] == b'"' {
                self.at += 1;
                return Ok(());
            }
            self.at += 1;
            let escaped = self.peek().ok_or("a string is not closed")?;
            self.at += 1;
            match escaped {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => out.push(self.unicode_escape()?),
                _ => {
                    self.at -= 1;
                    return self.fail("an escape character");
                }
            }
        }
    }

    /// The character of a `\u` escape whose `\u` was read, with its second half when it is a
    /// surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes()[self.at..].starts_with(b"\\u") {
                    return Err(format!("a lone surrogate \\u{first:04x}"));
                }
                self.at += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(format!("a lone surrogate \\u{first:04x}"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(format!("a lone surrogate \\u{first:04x}")),
            _ => first,
        };
        char::from_u32(code).ok_or_else(|| format!("\\u escape {code:#x} is not a character"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .bytes()
            .get(self.at..self.at + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| {
                u32::from_str_radix(d, 16)
                    .ok()
                    .filter(|_| !d.starts_with('+'))
            });
        match digits {
            Some(value) => {
                self.at += 4;
                Ok(value)
            }
            None => self.fail("four hex digits"),
        }
    }

    /// `extFields`: an object (or `null`) whose values go into `fields` as text.
    fn ext_fields(&mut self, fields: &mut Fields) -> Result<(), String> {
        if self.peek() == Some(b'n') {
            return self.literal("null");
        }
        self.expect(b'{', "an object of fields")?;
        if self.eat(b'}') {
            return Ok(());
        }
        // Unescaped, the fields' text is shorter than what is left of the header: one
        // allocation holds it all.
        *fields = Fields::with_capacity(16, self.text.len() - self.at);
        loop {
            self.expect(b'"', "a field name")?;
            let name_at = fields.text_mut().len();
            self.string_into(fields.text_mut())?;
            self.expect(b':', "':'")?;
            self.skip_ws();
            let value_at = fields.text_mut().len();
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    self.string_into(fields.text_mut())?;
                    fields.push_span(name_at, value_at);
                }
                Some(b'n') => {
                    self.literal("null")?;
                    fields.truncate_text(name_at);
                }
                _ => {
                    let start = self.at;
                    self.skip_value(1)?;
                    fields.text_mut().push_str(&self.text[start..self.at]);
                    fields.push_span(name_at, value_at);
                }
            }
            if fields.len() > EXT_FIELDS_MAX {
                return Err(format!("more than {EXT_FIELDS_MAX} header fields"));
            }
            if self.eat(b'}') {
                break;
            }
            self.expect(b',', "',' or '}'")?;
        }
        fields.sort_last_wins();
        Ok(())
    }

    /// Steps over one JSON value, checking its syntax, `depth` levels inside the header.
    fn skip_value(&mut self, depth: usize) -> Result<(), String> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                self.skip_string()
            }
            Some(open @ (b'{' | b'[')) => {
                if depth >= NESTING_MAX {
                    return Err(format!("nested more than {NESTING_MAX} deep"));
                }
                self.at += 1;
                let close = if open == b'{' { b'}' } else { b']' };
                if self.eat(close) {
                    return Ok(());
                }
                loop {
                    if open == b'{' {
                        self.expect(b'"', "a field name")?;
                        self.skip_string()?;
                        self.expect(b':', "':'")?;
                    }
                    self.skip_value(depth + 1)?;
                    if self.eat(close) {
                        return Ok(());
                    }
                    self.expect(b',', "',' or a closing bracket")?;
                }
            }
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.skip_number(),
            _ => self.fail("a value"),
        }
    }

    fn skip_string(&mut self) -> Result<(), String> {
        loop {
            let rest = &self.bytes()[self.at..];
            let run = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .ok_or("a string is not closed")?;
            self.at += run + 1;
            if rest[run] == b'"' {
                return Ok(());
            }
            match self.peek() {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 1,
                Some(b'u') => {
                    // Only the form is checked: a string skipped is never decoded (serde_json
                    // does the same with what it ignores).
                    self.at += 1;
                    self.hex4()?;
                }
                _ => return self.fail("an escape character"),
            }
        }
    }

    fn skip_number(&mut self) -> Result<(), String> {
        let digits = |p: &mut Self| {
            let start = p.at;
            while p.peek().is_some_and(|b| b.is_ascii_digit()) {
                p.at += 1;
            }
            if p.at == start {
                p.fail("a digit")
            } else {
                Ok(())
            }
        };
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        digits(self)?;
        if self.peek() == Some(b'.') {
            self.at += 1;
            digits(self)?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            digits(self)?;
        }
        Ok(())
    }
}

/// Encodes a command's header as JSON.
pub fn encode(cmd: &RemotingCommand) -> Vec<u8> {
    let fields = &cmd.ext_fields;
    let text_bytes: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 6).sum();
    let remark_bytes = cmd.remark.as_ref().map_or(0, |r| r.len() + 12);
    let mut out = Vec::with_capacity(120 + text_bytes + remark_bytes);
    out.extend_from_slice(b"{\"code\":");
    push_int(&mut out, cmd.code);
    if !fields.is_empty() {
        out.extend_from_slice(b",\"extFields\":{");
        let mut sorted: Vec<(&str, &str)> = fields.iter().collect();
        if !sorted.windows(2).all(|w| w[0].0 < w[1].0) {
            // A name set twice is written once, with its last value (as a map would hold it).
            sorted.reverse();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            sorted.dedup_by(|later, kept| later.0 == kept.0);
        }
        for (i, (name, value)) in sorted.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_string(&mut out, name);
            out.push(b':');
            push_string(&mut out, value);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b",\"flag\":");
    push_int(&mut out, cmd.flag);
    out.extend_from_slice(b",\"language\":");
    push_string(&mut out, language_name(cmd.language));
    out.extend_from_slice(b",\"opaque\":");
    push_int(&mut out, cmd.opaque);
    if let Some(remark) = &cmd.remark {
        out.extend_from_slice(b",\"remark\":");
        push_string(&mut out, remark);
    }
    out.extend_from_slice(b",\"serializeTypeCurrentRPC\":\"JSON\",\"version\":");
    push_int(&mut out, cmd.version);
    out.push(b'}');
    out
}

fn push_int(out: &mut Vec<u8>, value: i32) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A JSON string, escaped as serde_json and fastjson do: quotes, backslashes and control
/// characters; everything else as it is.
fn push_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
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
        let fields: Vec<(&str, &str)> = cmd.ext_fields.iter().collect();
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

    #[test]
    fn escapes_decode_and_encode_as_json_says() {
        let cmd = decode(
            br#"{"code":1,"remark":"q\"b\\s\/n\nt\te\u00e9g\ud83d\ude00","extFields":{"k":"\u0001\u0002"}}"#,
        )
        .unwrap();
        assert_eq!(
            cmd.remark.as_deref(),
            Some("q\"b\\s/n\nt\te\u{e9}g\u{1f600}")
        );
        assert_eq!(cmd.field("k"), Some("\u{1}\u{2}"));
        let text = String::from_utf8(encode(&cmd)).unwrap();
        assert!(text.contains(r#""k":"\u0001\u0002""#), "{text}");
        assert!(text.contains(r#""remark":"q\"b\\s/n\nt\teé"#), "{text}");
        assert_eq!(decode(text.as_bytes()).unwrap(), cmd);
    }

    #[test]
    fn malformed_headers_are_refused_with_where() {
        for (bad, says) in [
            (&br#"{"code":2147483648}"#[..], "out of range"),
            (br#"{"code":1.0}"#, "integer"),
            (br#"{"code":1,"extFields":{"a":"\ud800"}}"#, "surrogate"),
            (br#"{"code":1} x"#, "end of the header"),
            (br#"{"code":1,"remark":"open"#, "not closed"),
            (br#"{"code":1,"extFields":{"a":"\q"}}"#, "escape"),
            (br#"{"code":1,"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]"#, "nested"),
            (b"{\"code\":1,\"remark\":\"\xff\"}", "UTF-8"),
            (br#"{"code":1,"extFields":{"a":tru}}"#, "true"),
        ] {
            let err = decode(bad).unwrap_err();
            assert!(err.contains(says), "{err} (wanted {says:?})");
        }
    }
}
