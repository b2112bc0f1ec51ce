//! Framing: `length (i32 BE, bytes after it) | type (u8) + header length (u24 BE) | header | body`.
//!
//! The decoder takes whole frames off the front of a read buffer, zero-copy for bodies, and
//! refuses anything that breaks a limit before buffering it. The encoder returns the frame as
//! parts for one vectored write: the prefix with the header, then the body parts as they are.

use bytes::{Buf, Bytes, BytesMut};

use super::codes::SerializeType;
use super::command::RemotingCommand;
use super::{header_binary, header_json};

/// Default largest frame, as RocketMQ's `com.rocketmq.remoting.frameMaxLength` (16 MiB,
/// length prefix included).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// Largest header the 24-bit length can describe.
pub const MAX_HEADER_BYTES: usize = (1 << 24) - 1;

/// What a frame's first bytes said about its request, when the frame itself cannot be used:
/// enough to answer it with an error before closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// The request's opaque.
    pub opaque: i32,
    /// Its header serialization.
    pub serialize_type: SerializeType,
    /// Whether it asked for no answer.
    pub oneway: bool,
}

/// Why bytes are not a usable frame. The connection is closed after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Frame length, prefix included.
        len: usize,
        /// The limit.
        max: usize,
        /// The request, if its header could be read.
        sender: Option<Sender>,
    },
    /// The length prefix is impossible.
    #[error("frame length {0} is shorter than its type and header length field")]
    BadLength(u32),
    /// The header length runs past the frame.
    #[error("header length {header} runs past the frame of {frame} bytes")]
    BadHeaderLength {
        /// Declared header length.
        header: usize,
        /// Bytes after the length prefix.
        frame: usize,
    },
    /// The serialization type byte is unknown.
    #[error("unknown header serialization type {0}")]
    UnknownSerializeType(u8),
    /// The header does not decode.
    #[error("{0}")]
    BadHeader(String),
    /// A command to send is too large for the protocol or the limit.
    #[error("cannot encode: {0}")]
    Unencodable(String),
}

/// Cuts frames out of a byte stream and writes them, within a frame size limit.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_bytes: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

fn decode_header(serialize_type: SerializeType, bytes: &[u8]) -> Result<RemotingCommand, String> {
    match serialize_type {
        SerializeType::Json => header_json::decode(bytes),
        SerializeType::RocketMq => header_binary::decode(bytes),
    }
}

impl FrameCodec {
    /// A codec refusing frames larger than `max_frame_bytes` (length prefix included).
    pub fn new(max_frame_bytes: usize) -> FrameCodec {
        FrameCodec { max_frame_bytes }
    }

    /// The limit.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Takes one whole frame off the front of `buf`; `Ok(None)` if more bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<RemotingCommand>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < 4 {
            return Err(FrameError::BadLength(len));
        }
        let total = len as usize + 4;
        if total > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len: total,
                max: self.max_frame_bytes,
                sender: peek_sender(buf),
            });
        }
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total).freeze();
        frame.advance(4);
        let type_and_len = frame.get_u32();
        let header_len = (type_and_len & 0x00FF_FFFF) as usize;
        let type_code = (type_and_len >> 24) as u8;
        if header_len > frame.len() {
            return Err(FrameError::BadHeaderLength {
                header: header_len,
                frame: len as usize,
            });
        }
        let serialize_type = SerializeType::from_code(type_code)
            .ok_or(FrameError::UnknownSerializeType(type_code))?;
        let mut command =
            decode_header(serialize_type, &frame[..header_len]).map_err(FrameError::BadHeader)?;
        let body = frame.slice(header_len..);
        if !body.is_empty() {
            command.body = vec![body];
        }
        Ok(Some(command))
    }

    /// The frame for `command`, as parts for a vectored write: the length prefix, type and
    /// header in one part, then the body parts unchanged.
    pub fn encode(&self, command: &RemotingCommand) -> Result<Vec<Bytes>, FrameError> {
        let header = match command.serialize_type {
            SerializeType::Json => header_json::encode(command),
            SerializeType::RocketMq => header_binary::encode(command),
        };
        if header.len() > MAX_HEADER_BYTES {
            return Err(FrameError::Unencodable(format!(
                "header of {} bytes",
                header.len()
            )));
        }
        let total = 8 + header.len() + command.body_len();
        if total > self.max_frame_bytes {
            return Err(FrameError::Unencodable(format!(
                "frame of {total} bytes exceeds the limit of {}",
                self.max_frame_bytes
            )));
        }
        let mut head = BytesMut::with_capacity(8 + header.len());
        head.extend_from_slice(&((total - 4) as u32).to_be_bytes());
        let type_and_len = (command.serialize_type as u32) << 24 | header.len() as u32;
        head.extend_from_slice(&type_and_len.to_be_bytes());
        head.extend_from_slice(&header);
        let mut parts = Vec::with_capacity(1 + command.body.len());
        parts.push(head.freeze());
        parts.extend(command.body.iter().filter(|b| !b.is_empty()).cloned());
        Ok(parts)
    }
}

/// The request of a frame too large to take, if the buffered bytes hold its whole header.
fn peek_sender(buf: &[u8]) -> Option<Sender> {
    let type_and_len = u32::from_be_bytes(buf.get(4..8)?.try_into().ok()?);
    let header_len = (type_and_len & 0x00FF_FFFF) as usize;
    let serialize_type = SerializeType::from_code((type_and_len >> 24) as u8)?;
    let header = buf.get(8..8 + header_len)?;
    let command = decode_header(serialize_type, header).ok()?;
    Some(Sender {
        opaque: command.opaque,
        serialize_type,
        oneway: command.is_oneway(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(codec: &FrameCodec, cmd: &RemotingCommand) -> BytesMut {
        let parts = codec.encode(cmd).unwrap();
        let mut buf = BytesMut::new();
        for p in parts {
            buf.extend_from_slice(&p);
        }
        buf
    }

    #[test]
    fn frames_round_trip_in_both_serializations_and_arrive_in_pieces() {
        let codec = FrameCodec::default();
        for serialize_type in [SerializeType::Json, SerializeType::RocketMq] {
            let mut cmd = RemotingCommand::request(310)
                .with_field("b", "orders")
                .with_remark("hi")
                .with_body(Bytes::from_static(b"payload"));
            cmd.opaque = -5;
            cmd.serialize_type = serialize_type;
            let whole = frame_bytes(&codec, &cmd);
            // Byte by byte: nothing until the last byte arrives.
            let mut buf = BytesMut::new();
            for (i, b) in whole.iter().enumerate() {
                buf.extend_from_slice(&[*b]);
                let got = codec.decode(&mut buf).unwrap();
                assert_eq!(got.is_some(), i == whole.len() - 1);
                if let Some(got) = got {
                    assert_eq!(got, cmd);
                }
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn the_documented_json_prefix() {
        let mut cmd = RemotingCommand::request(105).with_field("topic", "TopicTest");
        cmd.language = 0;
        cmd.opaque = 1;
        let parts = FrameCodec::default().encode(&cmd).unwrap();
        // 4 + header length in the first int; type 0 and the header length in the second.
        let header_len = parts[0].len() - 8;
        assert_eq!(&parts[0][..4], &((header_len + 4) as u32).to_be_bytes());
        assert_eq!(&parts[0][4..8], &(header_len as u32).to_be_bytes());
    }

    #[test]
    fn limits_and_garbage_are_refused_with_what_can_be_told() {
        let codec = FrameCodec::new(1024);
        let mut big = RemotingCommand::request(10).with_body(vec![0u8; 2000]);
        big.opaque = 42;
        let large = frame_bytes(&FrameCodec::default(), &big);
        match codec.decode(&mut large.clone()) {
            Err(FrameError::TooLarge {
                sender: Some(sender),
                ..
            }) => assert_eq!(sender.opaque, 42),
            other => panic!("{other:?}"),
        }
        assert!(
            codec.encode(&big).is_err(),
            "oversized frames are not sent either"
        );
        let mut short = BytesMut::from(&[0u8, 0, 0, 2, 0, 0][..]);
        assert_eq!(codec.decode(&mut short), Err(FrameError::BadLength(2)));
        let mut past = BytesMut::from(&[0u8, 0, 0, 8, 0, 0, 0, 9, 1, 2, 3, 4][..]);
        assert!(matches!(
            codec.decode(&mut past),
            Err(FrameError::BadHeaderLength { .. })
        ));
        let mut kind = BytesMut::from(&[0u8, 0, 0, 4, 7, 0, 0, 0][..]);
        assert_eq!(
            codec.decode(&mut kind),
            Err(FrameError::UnknownSerializeType(7))
        );
        let mut json = BytesMut::from(&[0u8, 0, 0, 7, 0, 0, 0, 3, b'{', b'x', b'}'][..]);
        assert!(matches!(
            codec.decode(&mut json),
            Err(FrameError::BadHeader(_))
        ));
    }
}
