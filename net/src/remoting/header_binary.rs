//! The binary header (`SerializeType.ROCKETMQ`), big-endian:
//! code i16, language u8, version i16, opaque i32, flag i32, remark length i32 and bytes,
//! extFields length i32 then entries (key length i16, key, value length i32, value).
//! Every length is checked against what is left of the header before anything is read.

use super::codes::SerializeType;
use super::command::RemotingCommand;
pub use super::fields::EXT_FIELDS_MAX;
use super::fields::Fields;

/// Bytes of a header with no remark and no fields.
pub const MIN_HEADER_BYTES: usize = 21;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "binary header truncated in {what}: {n} bytes needed, {} left",
                self.bytes.len() - self.at
            ));
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn i16(&mut self, what: &str) -> Result<i16, String> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &str) -> Result<i32, String> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn len(&mut self, what: &str) -> Result<usize, String> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| format!("negative length {n} in {what}"))
    }

    fn string(&mut self, n: usize, what: &str) -> Result<String, String> {
        self.str(n, what).map(str::to_owned)
    }

    fn str(&mut self, n: usize, what: &str) -> Result<&'a str, String> {
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))
    }
}

/// Decodes a binary header.
pub fn decode(bytes: &[u8]) -> Result<RemotingCommand, String> {
    let mut r = Reader { bytes, at: 0 };
    let code = i32::from(r.i16("code")?);
    let language = r.take(1, "language")?[0];
    let version = i32::from(r.i16("version")?);
    let opaque = r.i32("opaque")?;
    let flag = r.i32("flag")?;
    let remark_len = r.len("remark length")?;
    let remark = match remark_len {
        0 => None,
        n => Some(r.string(n, "remark")?),
    };
    let fields_len = r.len("extFields length")?;
    let fields = r.take(fields_len, "extFields")?;
    let mut f = Reader {
        bytes: fields,
        at: 0,
    };
    let mut ext_fields = Fields::with_capacity(16, fields.len());
    while f.at < fields.len() {
        if ext_fields.len() >= EXT_FIELDS_MAX {
            return Err(format!("more than {EXT_FIELDS_MAX} header fields"));
        }
        let key_len = f.i16("field name length")?;
        let key_len = usize::try_from(key_len)
            .map_err(|_| format!("negative field name length {key_len}"))?;
        let key = f.str(key_len, "field name")?;
        let value_len = f.len("field value length")?;
        let value = f.str(value_len, "field value")?;
        ext_fields.push(key, value);
    }
    Ok(RemotingCommand {
        code,
        language,
        version,
        opaque,
        flag,
        remark,
        ext_fields,
        body: Vec::new(),
        serialize_type: SerializeType::RocketMq,
    })
}

/// Encodes a command's header in binary. Codes and versions are 16-bit on this wire.
pub fn encode(cmd: &RemotingCommand) -> Vec<u8> {
    let remark = cmd.remark.as_deref().unwrap_or("");
    let fields_len: usize = cmd
        .ext_fields
        .iter()
        .map(|(k, v)| 2 + k.len() + 4 + v.len())
        .sum();
    let mut out = Vec::with_capacity(MIN_HEADER_BYTES + remark.len() + fields_len);
    out.extend_from_slice(&(cmd.code as i16).to_be_bytes());
    out.push(cmd.language);
    out.extend_from_slice(&(cmd.version as i16).to_be_bytes());
    out.extend_from_slice(&cmd.opaque.to_be_bytes());
    out.extend_from_slice(&cmd.flag.to_be_bytes());
    out.extend_from_slice(&(remark.len() as i32).to_be_bytes());
    out.extend_from_slice(remark.as_bytes());
    out.extend_from_slice(&(fields_len as i32).to_be_bytes());
    for (k, v) in cmd.ext_fields.iter() {
        out.extend_from_slice(&(k.len() as i16).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_route_request_encodes_byte_for_byte() {
        // GET_ROUTEINFO_BY_TOPIC, JAVA, version 401, opaque 1, {topic=TopicTest}: 41 bytes.
        let mut cmd = RemotingCommand::request(105).with_field("topic", "TopicTest");
        cmd.language = 0;
        cmd.opaque = 1;
        let header = encode(&cmd);
        let expected: Vec<u8> = [
            &[
                0x00, 0x69, 0x00, 0x01, 0x91, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x14,
            ][..],
            &[0x00, 0x05],
            b"topic",
            &[0, 0, 0, 9],
            b"TopicTest",
        ]
        .concat();
        assert_eq!(header, expected);
        let back = decode(&header).unwrap();
        assert_eq!((back.code, back.version, back.opaque), (105, 401, 1));
        assert_eq!(back.field("topic"), Some("TopicTest"));
    }

    #[test]
    fn lengths_past_the_header_are_refused() {
        let mut header = encode(&RemotingCommand::request(10).with_remark("hello"));
        assert_eq!(decode(&header).unwrap().remark.as_deref(), Some("hello"));
        header[13..17].copy_from_slice(&1000i32.to_be_bytes());
        assert!(decode(&header).unwrap_err().contains("remark"));
        let mut header = encode(&RemotingCommand::request(10));
        header[17..21].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(decode(&header).unwrap_err().contains("negative"));
        assert!(decode(&[0u8; 5]).is_err());
    }
}
