//! A remoting client on tokio, as applications run: one connection, requests matched to their
//! responses by opaque, many in flight at once, and the server's own requests (a broker telling
//! a consumer its group changed) handed to the caller.
//!
//! The broker uses it to register with name servers; tests and tools use it to speak to a
//! broker directly.
//!
//! ```no_run
//! use std::time::Duration;
//! use quiver_net::client::RemotingClient;
//! use quiver_net::remoting::{RemotingCommand, codes::request};
//!
//! # async fn demo() -> Result<(), quiver_net::client::ClientError> {
//! let client = RemotingClient::connect("127.0.0.1:9876".parse().unwrap()).await?;
//! let ask = RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with_field("topic", "orders");
//! let route = client.invoke(ask, Duration::from_secs(3)).await?;
//! println!("route code {}", route.code);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::remoting::RemotingCommand;
use crate::remoting::codes::FLAG_ONEWAY;
use crate::remoting::frame::{FrameCodec, FrameError};

/// Bytes read from the socket at a time (at least).
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Connecting or writing failed.
    #[error("{op} {addr}: {reason}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The server.
        addr: SocketAddr,
        /// The error.
        reason: String,
    },
    /// The connection closed before the answer came.
    #[error("the connection to {0} closed")]
    Closed(SocketAddr),
    /// No answer within the timeout.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The server.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The request cannot be framed.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

type Pending = Mutex<HashMap<i32, oneshot::Sender<RemotingCommand>>>;

/// A connection to a remoting server. Cheap to clone; every clone shares the connection.
#[derive(Clone)]
pub struct RemotingClient {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    codec: FrameCodec,
    tx: mpsc::UnboundedSender<Vec<Bytes>>,
    pending: Pending,
    next_opaque: AtomicI32,
    closed: AtomicBool,
    incoming: Mutex<Option<mpsc::UnboundedReceiver<RemotingCommand>>>,
}

impl RemotingClient {
    /// Connects with the default frame limit.
    pub async fn connect(addr: SocketAddr) -> Result<RemotingClient, ClientError> {
        RemotingClient::connect_with(addr, FrameCodec::default()).await
    }

    /// Connects with the given codec (frame limit).
    pub async fn connect_with(
        addr: SocketAddr,
        codec: FrameCodec,
    ) -> Result<RemotingClient, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ClientError::Io {
                op: "connecting to",
                addr,
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            addr,
            codec,
            tx,
            pending: Mutex::new(HashMap::new()),
            next_opaque: AtomicI32::new(1),
            closed: AtomicBool::new(false),
            incoming: Mutex::new(Some(incoming_rx)),
        });
        tokio::spawn(write_loop(write_half, rx));
        // The reader holds the client weakly: when the last handle is dropped, the writer's
        // channel closes, the connection is shut down, and the reader sees it end.
        tokio::spawn(read_loop(read_half, Arc::downgrade(&inner), incoming_tx));
        Ok(RemotingClient { inner })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed)
    }

    /// Requests the server sends (such as `NOTIFY_CONSUMER_IDS_CHANGED`); only the first caller
    /// gets the receiver.
    pub fn server_requests(&self) -> Option<mpsc::UnboundedReceiver<RemotingCommand>> {
        self.inner
            .incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<i32, oneshot::Sender<RemotingCommand>>> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a request and waits for its answer.
    pub async fn invoke(
        &self,
        mut request: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed(self.inner.addr));
        }
        request.opaque = self.inner.next_opaque.fetch_add(1, Ordering::Relaxed);
        request.flag &= !FLAG_ONEWAY;
        let frame = self.inner.codec.encode(&request)?;
        let (answer_tx, answer_rx) = oneshot::channel();
        self.pending().insert(request.opaque, answer_tx);
        if self.inner.tx.send(frame).is_err() {
            self.pending().remove(&request.opaque);
            return Err(ClientError::Closed(self.inner.addr));
        }
        match tokio::time::timeout(timeout, answer_rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(ClientError::Closed(self.inner.addr)),
            Err(_) => {
                self.pending().remove(&request.opaque);
                Err(ClientError::Timeout {
                    addr: self.inner.addr,
                    timeout,
                })
            }
        }
    }

    /// Sends a request the server will not answer.
    pub fn invoke_oneway(&self, mut request: RemotingCommand) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed(self.inner.addr));
        }
        request.opaque = self.inner.next_opaque.fetch_add(1, Ordering::Relaxed);
        request.flag |= FLAG_ONEWAY;
        let frame = self.inner.codec.encode(&request)?;
        self.inner
            .tx
            .send(frame)
            .map_err(|_| ClientError::Closed(self.inner.addr))
    }

    /// Answers a request the server sent (from [`RemotingClient::server_requests`]); the
    /// response carries the request's opaque.
    pub fn respond(&self, response: RemotingCommand) -> Result<(), ClientError> {
        let frame = self.inner.codec.encode(&response)?;
        self.inner
            .tx
            .send(frame)
            .map_err(|_| ClientError::Closed(self.inner.addr))
    }

    /// Writes raw bytes on the connection, for tests of how a server meets malformed frames.
    pub fn send_raw(&self, bytes: Bytes) -> Result<(), ClientError> {
        self.inner
            .tx
            .send(vec![bytes])
            .map_err(|_| ClientError::Closed(self.inner.addr))
    }

    /// Waits until the server closes the connection, or `timeout` passes; true if it closed.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // The read loop drops the incoming sender when the connection closes.
        let receiver = self.server_requests();
        if let Some(mut receiver) = receiver {
            let closed = async { while receiver.recv().await.is_some() {} };
            return tokio::time::timeout_at(deadline, closed).await.is_ok();
        }
        while !self.is_closed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

async fn write_loop(
    mut stream: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<Bytes>>,
) {
    let mut out = BytesMut::new();
    while let Some(first) = rx.recv().await {
        out.clear();
        first.iter().for_each(|p| out.extend_from_slice(p));
        while out.len() < READ_CHUNK_BYTES {
            match rx.try_recv() {
                Ok(more) => more.iter().for_each(|p| out.extend_from_slice(p)),
                Err(_) => break,
            }
        }
        if stream.write_all(&out).await.is_err() {
            break;
        }
    }
    let _ = stream.shutdown().await;
}

async fn read_loop(
    mut stream: tokio::net::tcp::OwnedReadHalf,
    weak: std::sync::Weak<Inner>,
    incoming: mpsc::UnboundedSender<RemotingCommand>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    'reading: loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        loop {
            match inner.codec.decode(&mut buf) {
                Ok(Some(command)) if command.is_response() => {
                    let waiter = inner
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&command.opaque);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(command);
                    }
                }
                Ok(Some(command)) => {
                    let _ = incoming.send(command);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(server = %inner.addr, error = %e, "bad frame from the server; closing");
                    break 'reading;
                }
            }
        }
        drop(inner);
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 2 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let Some(inner) = weak.upgrade() else {
        return;
    };
    inner.closed.store(true, Ordering::Relaxed);
    // Dropping the waiters tells every caller the connection closed.
    inner
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
}
