//! Quiver's RocketMQ client, on tokio as applications run: a [`Producer`](producer::Producer),
//! a [`PullConsumer`](consumer::PullConsumer) with explicit offsets, and a
//! [`PushConsumer`](consumer::PushConsumer) whose group divides the topic's queues among its
//! live members. They speak the remoting protocol, so they work against Quiver and against
//! Apache RocketMQ brokers alike.
//!
//! [`RemotingClient`] underneath is one connection with requests matched to answers; brokers
//! and tools use it directly.

pub mod config;
pub mod consumer;
pub mod error;
mod instance;
pub mod message;
pub mod producer;
mod remoting;

pub use config::ClientConfig;
pub use error::MqError;
pub use remoting::{ClientError, RemotingClient};
