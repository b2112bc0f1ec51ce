//! Serving remoting connections on a compio runtime: frames in, requests handled concurrently,
//! responses out with coalesced vectored writes.
//!
//! Each connection has a reader (the task that accepted it) and a writer task. The reader reads
//! in large chunks and cuts every whole frame out of what arrived; each request runs as its own
//! task, so a long-polling pull does not hold up the sends pipelined behind it on the same
//! connection. Responses go to the writer through a channel; the writer takes everything
//! queued and writes it with one `sendmsg`, so many small responses cost one system call.
//! At most [`MAX_IN_FLIGHT_REQUESTS`] requests of a connection run at once; past that the
//! reader stops reading, and TCP pushes back on the client.
//!
//! A frame that breaks the protocol (too large, bad length, unknown serialization, bad header)
//! is answered with an error when its opaque is known, logged, and its connection closed.
//! Nothing it did reaches another connection.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use compio::BufResult;
use compio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};

use crate::remoting::codes::{FLAG_ONEWAY, FLAG_RESPONSE, response};
use crate::remoting::frame::{FrameCodec, FrameError};
use crate::remoting::{RemotingCommand, codes::LANGUAGE_OTHER, codes::QUIVER_PROTOCOL_VERSION};

/// Most requests of one connection handled at once.
pub const MAX_IN_FLIGHT_REQUESTS: usize = 4096;

/// Bytes the reader asks the kernel for at a time (at least).
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Most buffers one `sendmsg` takes (Linux `IOV_MAX`).
const MAX_IOVECS_PER_WRITE: usize = 1024;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

enum Outbound {
    Frame(Vec<Bytes>),
    Close,
}

/// The sending side of a connection. `Send` and cheap to clone: what a registry keeps to reach a
/// client later from any thread (to tell a consumer its group changed, say).
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnectionInner>,
}

struct ConnectionInner {
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    codec: FrameCodec,
    tx: flume::Sender<Outbound>,
    closed: AtomicBool,
    next_opaque: AtomicI32,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .finish()
    }
}

impl Connection {
    /// Unique for the life of the process.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.inner.peer
    }

    /// The address the client reached (this server's side).
    pub fn local(&self) -> SocketAddr {
        self.inner.local
    }

    /// Whether the connection has closed; sends are then dropped.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed)
    }

    /// Queues a command for the writer. Returns false if it was dropped: the connection is
    /// closed, or the command cannot be encoded (logged).
    pub fn send(&self, command: &RemotingCommand) -> bool {
        if self.is_closed() {
            return false;
        }
        match self.inner.codec.encode(command) {
            Ok(parts) => self.inner.tx.send(Outbound::Frame(parts)).is_ok(),
            Err(e) => {
                tracing::error!(peer = %self.inner.peer, code = command.code, error = %e, "dropping a command that cannot be encoded");
                false
            }
        }
    }

    /// Sends a request the peer is not to answer, with a fresh opaque.
    pub fn send_oneway(&self, mut request: RemotingCommand) -> bool {
        request.flag = FLAG_ONEWAY;
        request.opaque = self.inner.next_opaque.fetch_add(1, Ordering::Relaxed);
        self.send(&request)
    }

    fn close(&self) {
        if !self.inner.closed.swap(true, Ordering::Relaxed) {
            let _ = self.inner.tx.send(Outbound::Close);
        }
    }
}

/// What a server does with requests. Runs on one thread; its futures need not be `Send`.
pub trait Service: 'static {
    /// Handles one request. The answer is sent unless the request was oneway; `None` sends
    /// nothing.
    fn handle(
        self: Rc<Self>,
        connection: Connection,
        request: RemotingCommand,
    ) -> impl Future<Output = Option<RemotingCommand>>;

    /// Called once when a connection has closed, after its last request was read.
    fn closed(&self, connection: &Connection) {
        let _ = connection;
    }
}

/// Connection settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// The frame codec (its frame size limit).
    pub codec: FrameCodec,
}

/// Accepts connections on `listener` and serves each with `service` until `stop` completes.
/// Connections already open are served until they close.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Rc<S>,
    options: ServeOptions,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = {
            let accept = std::pin::pin!(listener.accept());
            match futures_util::future::select(accept, stop.as_mut()).await {
                futures_util::future::Either::Left((accepted, _)) => accepted,
                futures_util::future::Either::Right(_) => return,
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                compio::runtime::spawn(serve_connection(
                    stream,
                    peer,
                    Rc::clone(&service),
                    options,
                ))
                .detach();
            }
            Err(e) => {
                // Out of descriptors and the like: keep serving the connections there are.
                tracing::warn!(error = %e, "accept failed");
                compio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Counts a connection's running requests and wakes its reader when one finishes.
struct InFlight {
    count: std::cell::Cell<usize>,
    finished: event_listener::Event,
}

struct InFlightGuard(Rc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.count.set(self.0.count.get() - 1);
        self.0.finished.notify(1);
    }
}

/// Serves one accepted connection until it closes.
pub async fn serve_connection<S: Service>(
    stream: TcpStream,
    peer: SocketAddr,
    service: Rc<S>,
    options: ServeOptions,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (tx, rx) = flume::unbounded();
    let connection = Connection {
        inner: Arc::new(ConnectionInner {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
            codec: options.codec,
            tx,
            closed: AtomicBool::new(false),
            next_opaque: AtomicI32::new(1),
        }),
    };
    tracing::debug!(%peer, id = connection.id(), "connection opened");
    let writer = compio::runtime::spawn(write_loop(stream.clone(), rx, peer));
    let in_flight = Rc::new(InFlight {
        count: std::cell::Cell::new(0),
        finished: event_listener::Event::new(),
    });
    let mut reader = stream;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    'reading: loop {
        loop {
            match options.codec.decode(&mut buf) {
                Ok(Some(command)) => {
                    dispatch(&service, &connection, &in_flight, command);
                }
                Ok(None) => break,
                Err(e) => {
                    refuse_frame(&connection, &e);
                    break 'reading;
                }
            }
        }
        while in_flight.count.get() >= MAX_IN_FLIGHT_REQUESTS {
            let listener = in_flight.finished.listen();
            if in_flight.count.get() < MAX_IN_FLIGHT_REQUESTS {
                break;
            }
            listener.await;
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 2 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let BufResult(read, returned) = reader.append(buf).await;
        buf = returned;
        match read {
            Ok(0) => {
                if !buf.is_empty() {
                    tracing::warn!(%peer, bytes = buf.len(), "connection closed inside a frame");
                }
                break;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%peer, error = %e, "read failed; closing");
                break;
            }
        }
    }
    connection.close();
    service.closed(&connection);
    let _ = writer.await;
    tracing::debug!(%peer, id = connection.id(), "connection closed");
}

fn dispatch<S: Service>(
    service: &Rc<S>,
    connection: &Connection,
    in_flight: &Rc<InFlight>,
    command: RemotingCommand,
) {
    if command.is_response() {
        // The server sends only oneway requests; a response to one is noise.
        tracing::debug!(peer = %connection.peer(), opaque = command.opaque, "ignoring a response");
        return;
    }
    in_flight.count.set(in_flight.count.get() + 1);
    let guard = InFlightGuard(Rc::clone(in_flight));
    let service = Rc::clone(service);
    let connection = connection.clone();
    compio::runtime::spawn(async move {
        let oneway = command.is_oneway();
        let answer = service.handle(connection.clone(), command).await;
        if let Some(answer) = answer
            && !oneway
        {
            connection.send(&answer);
        }
        drop(guard);
    })
    .detach();
}

/// Answers a frame that cannot be used, when its opaque is known, and logs why.
fn refuse_frame(connection: &Connection, error: &FrameError) {
    tracing::warn!(peer = %connection.peer(), %error, "closing the connection after a bad frame");
    if let FrameError::TooLarge {
        sender: Some(sender),
        ..
    } = error
        && !sender.oneway
    {
        let answer = RemotingCommand {
            code: response::SYSTEM_ERROR,
            language: LANGUAGE_OTHER,
            version: QUIVER_PROTOCOL_VERSION,
            opaque: sender.opaque,
            flag: FLAG_RESPONSE,
            remark: Some(error.to_string()),
            ext_fields: Default::default(),
            body: Vec::new(),
            serialize_type: sender.serialize_type,
        };
        connection.send(&answer);
    }
}

async fn write_loop(mut stream: TcpStream, rx: flume::Receiver<Outbound>, peer: SocketAddr) {
    let mut parts: Vec<Bytes> = Vec::new();
    'writing: while let Ok(first) = rx.recv_async().await {
        let mut close = false;
        match first {
            Outbound::Frame(frame) => parts.extend(frame),
            Outbound::Close => close = true,
        }
        while !close && parts.len() < MAX_IOVECS_PER_WRITE {
            match rx.try_recv() {
                Ok(Outbound::Frame(frame)) => parts.extend(frame),
                Ok(Outbound::Close) => close = true,
                Err(_) => break,
            }
        }
        while !parts.is_empty() {
            let rest = parts.split_off(parts.len().min(MAX_IOVECS_PER_WRITE));
            let BufResult(written, _) = stream.write_vectored_all(parts).await;
            parts = rest;
            if let Err(e) = written {
                tracing::debug!(%peer, error = %e, "write failed; dropping the connection's output");
                break 'writing;
            }
        }
        if close {
            break;
        }
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oneway_requests_get_fresh_opaques_and_closed_connections_drop_sends() {
        let (tx, rx) = flume::unbounded();
        let connection = Connection {
            inner: Arc::new(ConnectionInner {
                id: 1,
                peer: SocketAddr::from(([127, 0, 0, 1], 1)),
                local: SocketAddr::from(([127, 0, 0, 1], 2)),
                codec: FrameCodec::default(),
                tx,
                closed: AtomicBool::new(false),
                next_opaque: AtomicI32::new(1),
            }),
        };
        assert!(connection.send_oneway(RemotingCommand::request(40)));
        assert!(connection.send_oneway(RemotingCommand::request(40)));
        let mut opaques = Vec::new();
        for _ in 0..2 {
            let Ok(Outbound::Frame(parts)) = rx.try_recv() else {
                panic!("expected a frame");
            };
            let mut buf = BytesMut::from(&parts.concat()[..]);
            let command = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
            assert!(command.is_oneway());
            opaques.push(command.opaque);
        }
        assert_ne!(opaques[0], opaques[1]);
        connection.close();
        assert!(matches!(rx.try_recv(), Ok(Outbound::Close)));
        assert!(!connection.send(&RemotingCommand::request(40)));
    }
}
