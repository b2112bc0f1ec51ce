//! Serving remoting connections on a compio runtime: frames in, requests handled concurrently,
//! responses out with coalesced vectored writes.
//!
//! Each connection has a reader (the task that accepted it) and a writer task. The reader reads
//! in large chunks and cuts every whole frame out of what arrived; each request runs as its own
//! task, so a long-polling pull does not hold up the sends pipelined behind it on the same
//! connection. Responses go to the writer through a channel; the writer takes everything
//! queued and writes it with one `sendmsg`, so many small responses cost one system call.
//!
//! No client can make the server's memory grow without bound, and a slow one holds up only
//! itself ([`ServeOptions`] has the limits):
//! - input: the reader stops taking frames while the connection has too many requests running,
//!   or too many bytes of them; TCP then pushes back on the client;
//! - output: responses waiting for the writer are counted (a zero-copy pull body as its length:
//!   it keeps store memory alive just the same). While past the pause threshold the reader
//!   stops taking frames until the writer drains below it, so a client that does not read its
//!   responses stops being served. Requests already running can still push the queue further;
//!   past the hard limit the connection is closed and its queued output dropped;
//! - idle: a connection that delivers no complete frame for the idle timeout, with no request
//!   running and no output waiting, is closed (a client trickling a frame, or none, cannot
//!   hold a descriptor forever; a long-polling pull is not idleness). A watchdog task per
//!   connection keeps the timer, so the reader's read is never cancelled (its buffer may hold
//!   half a frame); the watchdog shuts the socket down to end it.
//!
//! A frame that breaks the protocol (too large, bad length, unknown serialization, bad header)
//! is answered with an error when its opaque is known, logged, and its connection closed.
//! Nothing it did reaches another connection.

use std::cell::Cell;
use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use compio::BufResult;
use compio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
use futures_util::future::{Either, select};
use quiver_engine::log_budget::LogBudget;

use crate::remoting::codes::{FLAG_ONEWAY, FLAG_RESPONSE, response};
use crate::remoting::frame::{FrameCodec, FrameError};
use crate::remoting::{RemotingCommand, codes::LANGUAGE_OTHER, codes::QUIVER_PROTOCOL_VERSION};

/// Default for [`ServeOptions::max_in_flight_requests`].
pub const DEFAULT_MAX_IN_FLIGHT_REQUESTS: usize = 4096;

/// Default for [`ServeOptions::max_in_flight_request_bytes`]: 64 MiB.
pub const DEFAULT_MAX_IN_FLIGHT_REQUEST_BYTES: usize = 64 << 20;

/// Default for [`ServeOptions::output_pause_bytes`]: 16 MiB, a quarter of the hard limit.
pub const DEFAULT_OUTPUT_PAUSE_BYTES: usize = DEFAULT_OUTPUT_MAX_BYTES / 4;

/// Default for [`ServeOptions::output_max_bytes`]: 64 MiB.
pub const DEFAULT_OUTPUT_MAX_BYTES: usize = 64 << 20;

/// Default for [`ServeOptions::idle_timeout`]: 120 s, as RocketMQ's
/// `serverChannelMaxIdleTimeSeconds`.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 120_000;

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
    /// Bytes of frames queued for the writer and not yet written. Sends come from any thread.
    queued: AtomicUsize,
    output_pause_bytes: usize,
    output_max_bytes: usize,
    /// Set (with `closed`) when the output limit closed the connection: what is queued is
    /// dropped instead of written.
    aborted: AtomicBool,
    /// Wakes a reader waiting to take more frames: a request finished, the output drained
    /// below the pause threshold, or the connection was aborted.
    progress: event_listener::Event,
    /// Wakes the watchdog when the connection is aborted, so that it shuts the socket down on
    /// the connection's own thread (the writer may be stuck writing to a client that does not
    /// read, the reader waiting for requests).
    kill: event_listener::Event,
}

impl ConnectionInner {
    fn new(
        peer: SocketAddr,
        local: SocketAddr,
        options: &ServeOptions,
        tx: flume::Sender<Outbound>,
    ) -> ConnectionInner {
        ConnectionInner {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
            codec: options.codec,
            tx,
            closed: AtomicBool::new(false),
            next_opaque: AtomicI32::new(1),
            queued: AtomicUsize::new(0),
            output_pause_bytes: options.output_pause_bytes,
            output_max_bytes: options.output_max_bytes,
            aborted: AtomicBool::new(false),
            progress: event_listener::Event::new(),
            kill: event_listener::Event::new(),
        }
    }
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
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Queues a command for the writer. Returns false if it was dropped: the connection is
    /// closed, the command cannot be encoded (logged), or it would take the connection's
    /// queued output past its hard limit, which closes the connection (logged).
    pub fn send(&self, command: &RemotingCommand) -> bool {
        if self.is_closed() {
            return false;
        }
        match self.inner.codec.encode(command) {
            Ok(parts) => {
                let bytes = frame_bytes(&parts);
                let before = self.inner.queued.fetch_add(bytes, Ordering::SeqCst);
                // One frame is always taken when nothing is waiting, whatever its size: the
                // limit is on a client falling behind, not on what one response may hold.
                if before > 0 && before + bytes > self.inner.output_max_bytes {
                    self.abort(before, bytes);
                    return false;
                }
                self.inner.tx.send(Outbound::Frame(parts)).is_ok()
            }
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

    /// Closes after what is queued has been written.
    fn close(&self) {
        if !self.inner.closed.swap(true, Ordering::SeqCst) {
            let _ = self.inner.tx.send(Outbound::Close);
        }
    }

    /// Closes at once, dropping what is queued: the client is not reading its responses.
    fn abort(&self, queued: usize, refused: usize) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.aborted.store(true, Ordering::SeqCst);
        tracing::warn!(
            peer = %self.inner.peer,
            queued,
            refused,
            limit = self.inner.output_max_bytes,
            "closing the connection: its responses waiting to be sent would pass the output limit (the client is not reading them)"
        );
        // The writer may be waiting for a frame: the close wakes it.
        let _ = self.inner.tx.send(Outbound::Close);
        self.inner.progress.notify(usize::MAX);
        self.inner.kill.notify(usize::MAX);
    }

    /// The writer wrote `bytes`: wakes the reader if that took the output below the pause
    /// threshold.
    fn written(&self, bytes: usize) {
        let before = self.inner.queued.fetch_sub(bytes, Ordering::SeqCst);
        let pause = self.inner.output_pause_bytes;
        if before >= pause && before - bytes < pause {
            self.inner.progress.notify(1);
        }
    }

    fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::SeqCst)
    }

    fn is_aborted(&self) -> bool {
        self.inner.aborted.load(Ordering::SeqCst)
    }
}

fn frame_bytes(parts: &[Bytes]) -> usize {
    parts.iter().map(Bytes::len).sum()
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

/// Connection settings: the frame codec and the per-connection limits that keep one client
/// from growing the server's memory without bound or holding a descriptor forever.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// The frame codec (its frame size limit).
    pub codec: FrameCodec,
    /// Most requests of one connection handled at once; past that the reader stops reading.
    pub max_in_flight_requests: usize,
    /// Most bytes of requests (whole frames) of one connection handled at once; past that the
    /// reader stops reading. A frame larger than this is still taken when it is alone.
    pub max_in_flight_request_bytes: usize,
    /// While more bytes than this wait to be written to the client, the reader stops reading.
    pub output_pause_bytes: usize,
    /// Past this many bytes waiting to be written (requests already running can get there),
    /// the connection is closed and what waits dropped. One frame is always accepted when
    /// nothing waits.
    pub output_max_bytes: usize,
    /// A connection that delivers no complete frame for this long, with no request running
    /// and nothing waiting to be written, is closed.
    pub idle_timeout: Duration,
}

impl ServeOptions {
    /// The default limits with `codec`.
    pub fn new(codec: FrameCodec) -> ServeOptions {
        ServeOptions {
            codec,
            max_in_flight_requests: DEFAULT_MAX_IN_FLIGHT_REQUESTS,
            max_in_flight_request_bytes: DEFAULT_MAX_IN_FLIGHT_REQUEST_BYTES,
            output_pause_bytes: DEFAULT_OUTPUT_PAUSE_BYTES,
            output_max_bytes: DEFAULT_OUTPUT_MAX_BYTES,
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
        }
    }

    /// Sets the output hard limit, and the pause threshold to a quarter of it (as by default):
    /// room for the responses of requests already running when reading pauses.
    pub fn with_output_max_bytes(mut self, max: usize) -> ServeOptions {
        self.output_max_bytes = max;
        self.output_pause_bytes = max / 4;
        self
    }
}

/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Least time between two warnings of failed accepts.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Descriptors every process keeps back from connections whatever else reserves: listeners,
/// runtimes, logs, the spare descriptors.
const BASE_RESERVED_FDS: usize = 48;

/// Connections open in this process, over every server in it.
static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// Descriptors servers and stores in this process have reserved (index-file budgets, log
/// segments): connections get what the open-file limit leaves.
static RESERVED_FDS: AtomicUsize = AtomicUsize::new(BASE_RESERVED_FDS);

/// Keeps `fds` descriptors from connections until the reservation is dropped (a broker
/// reserves its store's index-file budget and segments): past the open-file limit less every
/// reservation, new connections are refused at once, so that what the store needs is there.
pub fn reserve_descriptors(fds: usize) -> Reservation {
    RESERVED_FDS.fetch_add(fds, Ordering::Relaxed);
    Reservation(fds)
}

/// Descriptors kept from connections; given back when dropped.
#[derive(Debug)]
pub struct Reservation(usize);

impl Drop for Reservation {
    fn drop(&mut self) {
        RESERVED_FDS.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Most connections the process takes: the open-file limit less what is reserved (none when
/// the limit cannot be read).
pub fn connections_max() -> Option<usize> {
    let limit = quiver_engine::config::open_file_limit()?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Some(limit.saturating_sub(RESERVED_FDS.load(Ordering::Relaxed)))
}

/// Counts a connection open until dropped.
struct Counted;

impl Counted {
    /// Counts one more, or `None` at the limit.
    fn admit(max: Option<usize>) -> Option<Counted> {
        let open = CONNECTIONS.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|max| open >= max) {
            CONNECTIONS.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Counted)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        CONNECTIONS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refusals at the connection limit are logged at most this often (with a count).
const CONNECTION_LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How long a connection waiting in the backlog is looked for once the spare descriptor is
/// given up to refuse it.
const REFUSE_WAIT: Duration = Duration::from_millis(5);

/// A descriptor kept spare, so that when the process runs out a waiting connection can still be
/// accepted and closed at once (the client learns now, instead of hanging in the backlog).
struct Spare(Option<std::fs::File>);

impl Spare {
    fn take() -> Spare {
        Spare(std::fs::File::open("/dev/null").ok())
    }

    /// Out of descriptors: gives the spare up, accepts the connection waiting first and closes
    /// it, then takes the spare again. True if one was refused.
    async fn refuse_one(&mut self, listener: &TcpListener) -> bool {
        if self.0.take().is_none() {
            *self = Spare::take();
            return false;
        }
        let accept = std::pin::pin!(listener.accept());
        let wait = std::pin::pin!(compio::time::sleep(REFUSE_WAIT));
        let refused = match select(accept, wait).await {
            Either::Left((Ok((stream, _)), _)) => {
                drop(stream);
                true
            }
            _ => false,
        };
        *self = Spare::take();
        refused
    }
}

/// Accepts connections on `listener` and serves each with `service` until `stop` completes.
/// Connections already open are served until they close. Out of descriptors, it refuses the
/// connections waiting (accepted with a spare descriptor and closed at once) and logs one
/// ERROR with the advice, until descriptors free up.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Rc<S>,
    options: ServeOptions,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let accept_warnings = LogBudget::new(1, ACCEPT_WARNING_INTERVAL);
    let limit_warnings = LogBudget::new(1, CONNECTION_LIMIT_LOG_INTERVAL);
    let mut spare = Spare::take();
    loop {
        let accepted = {
            let accept = std::pin::pin!(listener.accept());
            match select(accept, stop.as_mut()).await {
                Either::Left((accepted, _)) => accepted,
                Either::Right(_) => return,
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                let max = connections_max();
                let Some(counted) = Counted::admit(max) else {
                    // Closed at once: the client learns now, and the store keeps its files.
                    drop(stream);
                    if let Some(not_logged_before) = limit_warnings.take(Instant::now()) {
                        let advice = quiver_engine::config::descriptor_advice();
                        tracing::error!(%peer, max, not_logged_before, "connection refused at the connection limit the open-file limit leaves; {advice}");
                    }
                    continue;
                };
                let service = Rc::clone(&service);
                compio::runtime::spawn(async move {
                    let _counted = counted;
                    serve_connection(stream, peer, service, options).await;
                })
                .detach();
            }
            Err(e) if quiver_engine::config::out_of_descriptors(&e) => {
                // Keep serving the connections there are; refuse the one waiting rather than
                // leave it hanging.
                quiver_engine::config::report_descriptor_shortage("accepting a connection");
                if !spare.refuse_one(&listener).await {
                    compio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                }
            }
            Err(e) => {
                // Say so once a second at most, not at every retry.
                if let Some(not_logged_before) = accept_warnings.take(Instant::now()) {
                    tracing::warn!(error = %e, not_logged_before, "accept failed");
                }
                compio::time::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}

/// What the reader, the writer, the watchdog and the request tasks of one connection share on
/// its thread.
struct Local {
    /// Requests running.
    requests: Cell<usize>,
    /// Bytes of the frames of the requests running.
    request_bytes: Cell<usize>,
    /// When a frame last arrived, a request last finished or a write last completed.
    last_active: Cell<Instant>,
}

/// A running request: counted until dropped, when it wakes the reader.
struct InFlightGuard {
    local: Rc<Local>,
    connection: Connection,
    bytes: usize,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let local = &self.local;
        local.requests.set(local.requests.get().saturating_sub(1));
        local
            .request_bytes
            .set(local.request_bytes.get().saturating_sub(self.bytes));
        local.last_active.set(Instant::now());
        self.connection.inner.progress.notify(1);
    }
}

/// Whether the reader is to stop taking frames.
fn paused(connection: &Connection, local: &Local, options: &ServeOptions) -> bool {
    local.requests.get() >= options.max_in_flight_requests
        || local.request_bytes.get() >= options.max_in_flight_request_bytes
        || connection.queued() >= options.output_pause_bytes
}

/// Waits until the reader may take frames again, or the connection has closed.
async fn wait_while_paused(connection: &Connection, local: &Local, options: &ServeOptions) {
    loop {
        if connection.is_closed() || !paused(connection, local, options) {
            return;
        }
        let listener = connection.inner.progress.listen();
        if connection.is_closed() || !paused(connection, local, options) {
            return;
        }
        listener.await;
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
    let local_addr = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (tx, rx) = flume::unbounded();
    let connection = Connection {
        inner: Arc::new(ConnectionInner::new(peer, local_addr, &options, tx)),
    };
    tracing::debug!(%peer, id = connection.id(), "connection opened");
    let local = Rc::new(Local {
        requests: Cell::new(0),
        request_bytes: Cell::new(0),
        last_active: Cell::new(Instant::now()),
    });
    let writer = compio::runtime::spawn(write_loop(
        stream.clone(),
        rx,
        connection.clone(),
        Rc::clone(&local),
    ));
    let watchdog = compio::runtime::spawn(watch(
        stream.clone(),
        connection.clone(),
        Rc::clone(&local),
        options.idle_timeout,
    ));
    let mut reader = stream;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    'reading: loop {
        let mut framed = false;
        loop {
            // Checked before every frame, not only before a read: a read may bring many.
            if paused(&connection, &local, &options) {
                wait_while_paused(&connection, &local, &options).await;
            }
            if connection.is_closed() {
                break 'reading;
            }
            let before = buf.len();
            match options.codec.decode(&mut buf) {
                Ok(Some(command)) => {
                    framed = true;
                    let bytes = before - buf.len();
                    dispatch(&service, &connection, &local, command, bytes);
                }
                Ok(None) => break,
                Err(e) => {
                    refuse_frame(&connection, &e);
                    break 'reading;
                }
            }
        }
        if framed {
            local.last_active.set(Instant::now());
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 2 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let BufResult(read, returned) = reader.append(buf).await;
        buf = returned;
        match read {
            Ok(0) => {
                // Closed by the watchdog (idle, aborted) unless the flag is still clear.
                if !buf.is_empty() && !connection.is_closed() {
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
    let _ = watchdog.cancel().await;
    let _ = writer.await;
    tracing::debug!(%peer, id = connection.id(), "connection closed");
}

fn dispatch<S: Service>(
    service: &Rc<S>,
    connection: &Connection,
    local: &Rc<Local>,
    command: RemotingCommand,
    bytes: usize,
) {
    if command.is_response() {
        // The server sends only oneway requests; a response to one is noise.
        tracing::debug!(peer = %connection.peer(), opaque = command.opaque, "ignoring a response");
        return;
    }
    local.requests.set(local.requests.get() + 1);
    local.request_bytes.set(local.request_bytes.get() + bytes);
    let guard = InFlightGuard {
        local: Rc::clone(local),
        connection: connection.clone(),
        bytes,
    };
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

/// Closes the connection when it has been idle for `idle`, or shuts its socket down when the
/// output limit aborted it. Runs until then, or until the reader cancels it.
async fn watch(stream: TcpStream, connection: Connection, local: Rc<Local>, idle: Duration) {
    let mut deadline = Instant::now() + idle;
    loop {
        let killed = connection.inner.kill.listen();
        if connection.is_aborted() {
            break;
        }
        let timer = std::pin::pin!(compio::time::sleep_until(deadline));
        if let Either::Right(_) = select(timer, killed).await {
            continue;
        }
        let now = Instant::now();
        if local.requests.get() > 0 || connection.queued() > 0 {
            // A held pull, or a client still receiving: not idle.
            deadline = now + idle;
            continue;
        }
        let quiet_since = local.last_active.get();
        if now.saturating_duration_since(quiet_since) < idle {
            deadline = quiet_since + idle;
            continue;
        }
        tracing::info!(
            peer = %connection.peer(),
            idle_ms = idle.as_millis() as u64,
            "closing an idle connection: no request within the idle timeout"
        );
        connection.close();
        // The reader is waiting in a read (nothing is running or queued, so it is not
        // paused): ending the read side makes that read return 0.
        shutdown(&stream, &connection, Shutdown::Read);
        return;
    }
    // Aborted: a write to a client that does not read, and a read waiting for requests, both
    // end once the socket is shut down both ways.
    shutdown(&stream, &connection, Shutdown::Both);
}

fn shutdown(stream: &TcpStream, connection: &Connection, how: Shutdown) {
    if let Err(e) = socket2::SockRef::from(stream).shutdown(how) {
        tracing::debug!(peer = %connection.peer(), error = %e, "shutdown failed");
    }
}

async fn write_loop(
    mut stream: TcpStream,
    rx: flume::Receiver<Outbound>,
    connection: Connection,
    local: Rc<Local>,
) {
    let peer = connection.peer();
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
            if connection.is_aborted() {
                break 'writing;
            }
            let rest = parts.split_off(parts.len().min(MAX_IOVECS_PER_WRITE));
            let bytes = frame_bytes(&parts);
            let BufResult(written, _) = stream.write_vectored_all(parts).await;
            parts = rest;
            if let Err(e) = written {
                tracing::debug!(%peer, error = %e, "write failed; dropping the connection's output");
                break 'writing;
            }
            connection.written(bytes);
            local.last_active.set(Instant::now());
        }
        if close {
            break;
        }
    }
    // Whatever was not written goes now, not when the last sender (a request still running, a
    // registry) lets go of the channel.
    drop(parts);
    rx.drain().for_each(drop);
    drop(rx);
    if !connection.is_aborted() {
        let _ = stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(options: &ServeOptions) -> (Connection, flume::Receiver<Outbound>) {
        let (tx, rx) = flume::unbounded();
        let connection = Connection {
            inner: Arc::new(ConnectionInner::new(
                SocketAddr::from(([127, 0, 0, 1], 1)),
                SocketAddr::from(([127, 0, 0, 1], 2)),
                options,
                tx,
            )),
        };
        (connection, rx)
    }

    #[test]
    fn oneway_requests_get_fresh_opaques_and_closed_connections_drop_sends() {
        let (connection, rx) = connection(&ServeOptions::new(FrameCodec::default()));
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

    #[test]
    fn queued_output_is_counted_and_past_the_hard_limit_the_connection_is_aborted() {
        let options = ServeOptions::new(FrameCodec::default()).with_output_max_bytes(10_000);
        assert_eq!(options.output_pause_bytes, 2_500);
        let (connection, rx) = connection(&options);
        let big = || RemotingCommand::request(40).with_body(vec![7u8; 6_000]);
        // Alone, a frame above the limit is taken; the count is its whole length.
        assert!(connection.send(&big().with_body(vec![7u8; 20_000])));
        let first = connection.queued();
        assert!(first > 20_000, "{first}");
        connection.written(first);
        assert_eq!(connection.queued(), 0);
        assert!(connection.send(&big()));
        let one = connection.queued();
        // The second would pass the limit: refused, and the connection closed for good.
        assert!(!connection.send(&big()));
        assert!(connection.is_closed() && connection.is_aborted());
        assert!(!connection.send(&RemotingCommand::request(40)));
        let frames: Vec<_> = rx.drain().collect();
        assert_eq!(frames.len(), 3, "two frames and the close");
        assert!(matches!(frames[2], Outbound::Close));
        assert!(one > 6_000);
    }
}
