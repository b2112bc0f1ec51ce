//! Quiver's network side: RocketMQ's remoting protocol, the name server, and the broker front
//! that serves RocketMQ clients from the storage engine.

#![deny(missing_docs)]

pub mod message;
pub mod remoting;
