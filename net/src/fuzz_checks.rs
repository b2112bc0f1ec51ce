//! The properties the fuzz targets check, shared with the test that replays their corpus, so
//! CI checks every saved input with the very code the fuzzer ran. A panic is a finding.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{decode_batch, decode_messages};
use crate::remoting::frame::FrameCodec;

/// Frame limit the frame target decodes with: small, so the limit path is reached.
pub const FUZZ_MAX_FRAME_BYTES: usize = 1 << 16;

/// Body limit the batch target decodes with.
pub const FUZZ_MAX_BODY_BYTES: usize = 1 << 12;

/// Frame and header decoders: any byte stream, fed whole or in two pieces (the first byte
/// says where to split), yields the same commands and the same verdict without panicking; every
/// decoded command encodes and decodes back to itself.
pub fn frame_decoder(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let codec = FrameCodec::new(FUZZ_MAX_FRAME_BYTES);
    let whole = decode_all(&codec, &[stream]);
    let cut = (split as usize * stream.len()) / 255;
    let pieces = decode_all(&codec, &[&stream[..cut], &stream[cut..]]);
    assert_eq!(whole, pieces, "splitting the stream changed what decodes");
    for command in whole.0 {
        let parts = codec
            .encode(&command)
            .unwrap_or_else(|e| panic!("a decoded command does not encode: {e}"));
        let mut buf = BytesMut::from(&parts.concat()[..]);
        let again = codec
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("an encoded command does not decode: {e}"))
            .unwrap_or_else(|| panic!("an encoded command is incomplete"));
        assert_eq!(again, command, "re-encoding changed a command");
        assert!(buf.is_empty());
    }
}

type Decoded = (Vec<crate::remoting::RemotingCommand>, Option<String>);

/// Everything decodable from the chunks fed in order, and the error that stopped it, if any.
fn decode_all(codec: &FrameCodec, chunks: &[&[u8]]) -> Decoded {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(command)) => {
                    // A body never outgrows its frame.
                    assert!(command.body_len() < FUZZ_MAX_FRAME_BYTES);
                    out.push(command);
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }
    (out, None)
}

/// JSON header decoder against serde_json: any text serde_json reads as a header (an object
/// whose `code` is an `i32`, no known field given twice, and `extFields`, if any, an object of
/// strings) decodes to the same code, opaque, flag, version, remark and fields (the last of a
/// repeated name winning). Ours also refuses a header that is not UTF-8 throughout (JSON text
/// must be), where serde_json skips unknown fields unchecked, and an array in place of the
/// object. Whatever decodes re-encodes to JSON that serde_json reads back to
/// the same fields.
pub fn json_header_decoder(data: &[u8]) {
    use crate::remoting::header_json;
    use std::collections::BTreeMap;

    /// The header as the serde-derived decoder this one replaced read it.
    #[derive(serde::Deserialize)]
    struct Strict {
        code: i32,
        #[serde(rename = "extFields", default)]
        ext_fields: Option<BTreeMap<String, String>>,
        #[serde(default)]
        flag: i32,
        #[serde(default)]
        opaque: i32,
        #[serde(default)]
        version: i32,
        #[serde(default)]
        remark: Option<String>,
        #[serde(default)]
        #[allow(dead_code)]
        language: Option<String>,
    }

    let ours = header_json::decode(data);
    // serde also reads a struct from an array of its fields; a header is an object.
    let object = std::str::from_utf8(data).is_ok_and(|t| t.trim_start().starts_with('{'));
    if let (true, Ok(strict)) = (object, serde_json::from_slice::<Strict>(data)) {
        let cmd = ours
            .as_ref()
            .unwrap_or_else(|e| panic!("serde_json reads this header, ours refused: {e}"));
        assert_eq!(
            (cmd.code, cmd.opaque, cmd.flag, cmd.version),
            (strict.code, strict.opaque, strict.flag, strict.version)
        );
        assert_eq!(cmd.remark, strict.remark);
        // The map keeps the last of a repeated name and sorts by name, as ours does.
        let theirs: Vec<(String, String)> =
            strict.ext_fields.unwrap_or_default().into_iter().collect();
        let ours: Vec<(String, String)> = cmd
            .ext_fields
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(ours, theirs, "fields differ from serde_json's");
    }
    if let Ok(cmd) = ours {
        let text = header_json::encode(&cmd);
        let again: serde_json::Value = serde_json::from_slice(&text)
            .unwrap_or_else(|e| panic!("our encoding is not JSON ({e}): {text:?}"));
        let back = header_json::decode(&text)
            .unwrap_or_else(|e| panic!("our encoding does not decode ({e}): {text:?}"));
        assert_eq!(back, cmd, "re-encoding changed the header");
        let fields = again
            .get("extFields")
            .and_then(serde_json::Value::as_object);
        for (name, value) in cmd.ext_fields.iter() {
            let theirs = fields
                .and_then(|f| f.get(name))
                .and_then(serde_json::Value::as_str);
            assert_eq!(
                theirs,
                Some(value),
                "serde_json reads field {name:?} otherwise"
            );
        }
    }
}

/// Batch decoder: any body splits into messages or is refused without panicking; what is
/// accepted re-encodes to the same bytes and respects the body limit.
pub fn batch_decoder(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    let Ok(items) = decode_batch(&body, FUZZ_MAX_BODY_BYTES) else {
        return;
    };
    let mut again = BytesMut::new();
    for item in &items {
        assert!(item.body.len() <= FUZZ_MAX_BODY_BYTES);
        again.put_i32((22 + item.body.len() + item.properties.len()) as i32);
        again.put_i32(0);
        again.put_i32(0);
        again.put_i32(item.flag);
        again.put_i32(item.body.len() as i32);
        again.put_slice(&item.body);
        again.put_i16(item.properties.len() as i16);
        again.put_slice(item.properties.as_bytes());
    }
    // Magic and CRC are ignored by the decoder, so compare with them zeroed.
    let mut original = data.to_vec();
    let mut at = 0;
    for item in &items {
        original[at + 4..at + 12].fill(0);
        at += 22 + item.body.len() + item.properties.len();
    }
    assert_eq!(&again[..], &original[..], "re-encoding a batch changed it");
    // The pulled-message decoder must not panic on the same bytes either.
    let _ = decode_messages(&body);
}

/// Topic-journal decoder: any bytes are accepted (up to a torn last line) or refused as
/// damaged without panicking; what is accepted re-encodes to lines that decode to the same
/// changes, whole.
pub fn topic_journal_decoder(data: &[u8]) {
    use crate::broker::topic_journal::{decode, encode};
    let Ok((changes, valid)) = decode(data) else {
        return;
    };
    assert!(valid <= data.len());
    let again: Vec<u8> = changes.iter().flat_map(encode).collect();
    assert_eq!(decode(&again), Ok((changes, again.len())));
}
