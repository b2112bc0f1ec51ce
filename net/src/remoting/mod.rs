//! RocketMQ's remoting protocol: frames, the two header serializations, commands and codes.

pub mod codes;
pub mod command;
pub mod fields;
pub mod frame;
pub mod header_binary;
pub mod header_json;

pub use command::{FieldError, RemotingCommand};
pub use fields::Fields;
pub use frame::{FrameCodec, FrameError};
