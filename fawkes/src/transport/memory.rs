//! The in-memory transport: a client in the same process as the endpoint,
//! with no network, HTTP or WebSocket framing in between.
//!
//! A connection runs exactly what a WebSocket connection runs — the socket
//! handler's `connect` with params, `vsn` negotiation, then one task per
//! connection driving the same socket dispatch, channels, pubsub,
//! heartbeats, limits and close codes — but its frames travel through
//! memory: the client's frames ([`Frame`]) wait in a small bounded queue and
//! are decoded by the socket's serializer as a WebSocket frame would be,
//! and the socket's outgoing frames are handed in batches to a
//! [`FrameSink`] of your choice, or queued for a [`MemoryClient`].
//!
//! Uses: embedding a client in the server process (a bot, a bridge), tests
//! that want the real wire format without sockets, and load tests beyond
//! the machine's file limits (`fawkes-bench inprocess`). What it leaves
//! out, by design, is the cost of a network connection: no read or write
//! buffers, no origin check (there is no HTTP request), no connect info
//! beyond the URI.
//!
//! ```
//! use fawkes::transport::memory::MemoryTransport;
//! use fawkes::{Assigns, Channel, ConnectInfo, Context, Endpoint, HandleResult, Params, Payload, Refused, Socket};
//! use serde_json::{json, Value};
//!
//! struct UserSocket;
//! impl Socket for UserSocket {
//!     async fn connect(&self, params: &Params, _: &ConnectInfo) -> Result<Assigns, Refused> {
//!         params.get_str("token").map(|_| Assigns::new()).ok_or_else(Refused::new)
//!     }
//! }
//!
//! #[derive(Clone)]
//! struct Room;
//! impl Channel for Room {
//!     type Info = ();
//!     async fn join(&mut self, _: &str, _: Value, _: &mut Context<Self>) -> Result<Value, Value> {
//!         Ok(json!({}))
//!     }
//!     async fn handle_in(&mut self, _: &str, payload: Payload, _: &mut Context<Self>) -> HandleResult {
//!         HandleResult::ok(payload)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (_router, endpoint) = Endpoint::builder().socket("/socket", UserSocket).channel("room:*", Room).build();
//! let transport = MemoryTransport::new(&endpoint, "/socket").unwrap();
//! assert!(transport.connect("vsn=2.0.0").await.is_err()); // no token: refused
//!
//! let mut client = transport.connect("token=abc&vsn=2.0.0").await.unwrap();
//! client.send_text(r#"["1","1","room:1","phx_join",{}]"#).await.unwrap();
//! let reply = client.recv().await.unwrap();
//! assert_eq!(&reply.to_bytes()[..], br#"["1","1","room:1","phx_reply",{"status":"ok","response":{}}]"#);
//!
//! endpoint.broadcast("room:1", "news", json!({"n": 1})).unwrap();
//! let news = client.recv().await.unwrap();
//! assert_eq!(&news.to_bytes()[..], br#"[null,null,"room:1","news",{"n":1}]"#);
//!
//! client.close();
//! assert!(client.recv().await.is_none());
//! assert_eq!(client.close_code(), Some(1000));
//! # }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fawkes_protocol::{Frame, Message, Serializer};
use http::Uri;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

use super::{TransportError, negotiate};
use crate::endpoint::{Endpoint, Shared, SocketConfig};
use crate::socket::{
    CloseReason, Conn, ConnectInfo, OutboxLimits, Params, Refused, SocketShared, Transport,
};

/// Limits of in-memory connections.
///
/// ```
/// use std::time::Duration;
/// use fawkes::transport::memory::MemoryConfig;
///
/// let config = MemoryConfig::default().idle_timeout(Some(Duration::from_secs(60)));
/// assert_eq!(config.inbox, 64);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Client frames queued for the socket before [`MemorySender::send`]
    /// waits, as a TCP sender waits for the window. Default 64.
    pub inbox: usize,
    /// Largest accepted client frame; a bigger one closes the connection
    /// with code 1009, as on a WebSocket. Default 1 MiB.
    pub max_frame_size: usize,
    /// Close a connection that sent nothing (not even a heartbeat) for this
    /// long, with code 1002, as a WebSocket. Default `None`: an in-process
    /// client cannot vanish unnoticed, since dropping it closes.
    pub idle_timeout: Option<Duration>,
    /// The transport reported to `connect` and to the channels
    /// ([`Context::transport`](crate::Context::transport)). Default
    /// [`Transport::WebSocket`], whose behaviour this transport has (binary
    /// frames, close codes).
    pub report_as: Transport,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            inbox: 64,
            max_frame_size: 1 << 20,
            idle_timeout: None,
            report_as: Transport::WebSocket,
        }
    }
}

impl MemoryConfig {
    /// Sets [`inbox`](Self::inbox) (at least 1).
    pub fn inbox(mut self, frames: usize) -> Self {
        self.inbox = frames.max(1);
        self
    }

    /// Sets [`max_frame_size`](Self::max_frame_size).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`report_as`](Self::report_as).
    pub fn report_as(mut self, transport: Transport) -> Self {
        self.report_as = transport;
        self
    }
}

/// Why an in-memory connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// No socket is mounted at this path.
    #[error("no socket mounted at `{0}`")]
    NotMounted(String),
    /// Refused before `connect`: an unsupported `vsn`, or the endpoint is
    /// shutting down.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The socket handler's `connect` refused.
    #[error("connect refused ({})", .0.status)]
    Refused(Refused),
}

/// The client frames could not be sent: the connection has ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection closed")]
pub struct Closed;

/// The client side could not take the frames: it reads too slowly. The
/// connection closes with code 1013, as a slow WebSocket reader's does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client too slow")]
pub struct Overflow;

/// Where an in-memory connection's outgoing frames go: the client side's
/// end of the "wire".
///
/// Owned by the connection's task, which calls [`send`](Self::send) with
/// every batch of frames the socket queued (in order: replies, pushes,
/// broadcasts; shared broadcast bytes are not copied), and
/// [`closed`](Self::closed) once at the end. Both run on that task, so they
/// must not block: queue or count, and wake whoever reads.
pub trait FrameSink: Send + 'static {
    /// Takes frames for the client; [`Overflow`] when it cannot keep up.
    fn send(&mut self, frames: VecDeque<Frame>) -> Result<(), Overflow>;

    /// The connection has ended with this close code (PROTOCOL §1.7: 1000
    /// after the client closed, 1001 on a disconnect, 1012 on shutdown,
    /// 1013 for a slow client, …). Frames still queued then are dropped,
    /// as on a WebSocket.
    fn closed(&mut self, code: u16);
}

/// Connects in-memory clients to the socket mounted at one path of an
/// endpoint. Cheap to clone.
#[derive(Clone)]
pub struct MemoryTransport {
    config: Arc<SocketConfig>,
    env: Arc<Shared>,
    path: Arc<str>,
    memory: Arc<MemoryConfig>,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("path", &self.path)
            .field("config", &self.memory)
            .finish_non_exhaustive()
    }
}

impl MemoryTransport {
    /// The transport of the socket mounted at `path` (e.g. `"/socket"`),
    /// with the default [`MemoryConfig`].
    ///
    /// # Errors
    ///
    /// [`MemoryError::NotMounted`] if no socket is mounted there.
    pub fn new(endpoint: &Endpoint, path: &str) -> Result<Self, MemoryError> {
        let path = path.trim_end_matches('/');
        let env = endpoint.shared().clone();
        let config = env
            .mounts
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| MemoryError::NotMounted(path.to_owned()))?;
        Ok(MemoryTransport {
            config,
            env,
            path: path.into(),
            memory: Arc::new(MemoryConfig::default()),
        })
    }

    /// Uses `config` for the connections opened from now on.
    pub fn with_config(mut self, config: MemoryConfig) -> Self {
        self.memory = Arc::new(config);
        self
    }

    /// Connects a [`MemoryClient`], which queues what the socket sends
    /// within the socket's outbox limits.
    ///
    /// `query` is the connect URL's query string (`"token=abc&vsn=2.0.0"`):
    /// the params `connect` sees, and `vsn` picks the serializer (`1.0.0`
    /// when absent, as for a WebSocket).
    ///
    /// # Errors
    ///
    /// An unsupported `vsn`, an endpoint shutting down, or a refusal of
    /// `connect`.
    pub async fn connect(&self, query: &str) -> Result<MemoryClient, MemoryError> {
        let queue = Arc::new(ClientQueue {
            state: Mutex::new(QueueState::default()),
            readable: Notify::new(),
            limits: self.config.outbox,
        });
        let sender = self.connect_with(query, QueueSink(queue.clone())).await?;
        Ok(MemoryClient { sender, queue })
    }

    /// Connects a client whose frames go to `sink`; the returned sender
    /// carries the client's frames, and dropping it closes the connection
    /// (code 1000).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with<S: FrameSink>(
        &self,
        query: &str,
        sink: S,
    ) -> Result<MemorySender, MemoryError> {
        let env = &self.env;
        if env.root.is_cancelled() {
            return Err(TransportError::ShuttingDown.into());
        }
        let params = Params::from_query(query);
        let serializer = negotiate(&params)?;
        let transport = self.memory.report_as;
        let info = ConnectInfo {
            headers: http::HeaderMap::new(),
            peer: None,
            uri: Uri::try_from(format!("{}/{}?{query}", self.path, transport.as_str()))
                .unwrap_or_default(),
            auth_token: None,
            transport,
        };
        let assigns = self
            .config
            .handler
            .connect(&params, &info)
            .await
            .map_err(MemoryError::Refused)?;
        drop((params, info));
        let id = self.config.handler.id(&assigns).map(Arc::<str>::from);
        let shared = Arc::new(SocketShared::new(
            serializer,
            transport,
            id,
            assigns,
            env.root.child_token(),
            self.config.outbox,
        ));
        let inbox = Arc::new(Inbox {
            state: Mutex::new(InboxState::default()),
            socket: shared.clone(),
            writable: Notify::new(),
            capacity: self.memory.inbox.max(1),
        });
        let span = tracing::debug_span!(
            "socket",
            socket_id = shared.id.as_deref(),
            transport = "memory",
            vsn = serializer.vsn()
        );
        let conn = Conn::new(shared, self.config.clone(), env.clone());
        let link = Link {
            inbox: inbox.clone(),
            max_frame_size: self.memory.max_frame_size,
            idle_timeout: self.memory.idle_timeout,
        };
        let task = run(conn, link, sink);
        // A disabled span still takes 40 bytes in every task: enough to
        // put the task in a larger size class of the runtime's allocations.
        if span.is_disabled() {
            env.tracker.spawn(task);
        } else {
            env.tracker.spawn(task.instrument(span));
        }
        Ok(MemorySender { inbox })
    }
}

/// The client's half of an in-memory connection for its own frames. Not
/// cloneable: dropping it (or [`close`](Self::close)) ends the connection
/// as a client's close frame does (code 1000).
pub struct MemorySender {
    inbox: Arc<Inbox>,
}

impl std::fmt::Debug for MemorySender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySender")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl MemorySender {
    /// Sends a client frame (text: a JSON message of the socket's
    /// serializer; binary: a V2 binary push), waiting while the inbox is
    /// full.
    ///
    /// # Errors
    ///
    /// [`Closed`] once the connection has ended.
    pub async fn send(&self, frame: Frame) -> Result<(), Closed> {
        self.inbox.send(frame).await
    }

    /// Sends a text frame.
    ///
    /// # Errors
    ///
    /// [`Closed`] once the connection has ended.
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), Closed> {
        self.send(Frame::Text(Bytes::from(text.into()))).await
    }

    /// Sends a binary frame.
    ///
    /// # Errors
    ///
    /// [`Closed`] once the connection has ended.
    pub async fn send_binary(&self, bytes: impl Into<Bytes>) -> Result<(), Closed> {
        self.send(Frame::Binary(bytes.into())).await
    }

    /// Ends the connection, as a client's close frame: frames already sent
    /// are handled first, then the channels terminate (reason `closed`).
    pub fn close(&self) {
        self.inbox.close_input();
    }

    /// Whether the connection has ended (or is ending).
    pub fn is_closed(&self) -> bool {
        self.inbox.lock().closed
    }
}

impl Drop for MemorySender {
    fn drop(&mut self) {
        self.inbox.close_input();
    }
}

/// An in-memory client that queues what the socket sends, from
/// [`MemoryTransport::connect`]: send frames, [`recv`](Self::recv) the
/// socket's. A client that lets more frames pile up than the socket's
/// outbox limits allow is closed with code 1013, as a slow reader.
pub struct MemoryClient {
    sender: MemorySender,
    queue: Arc<ClientQueue>,
}

impl std::fmt::Debug for MemoryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.queue.lock();
        f.debug_struct("MemoryClient")
            .field("queued", &st.frames.len())
            .field("close_code", &st.closed)
            .finish()
    }
}

impl MemoryClient {
    /// The half that sends frames.
    pub fn sender(&self) -> &MemorySender {
        &self.sender
    }

    /// Sends a client frame; see [`MemorySender::send`].
    ///
    /// # Errors
    ///
    /// [`Closed`] once the connection has ended.
    pub async fn send(&self, frame: Frame) -> Result<(), Closed> {
        self.sender.send(frame).await
    }

    /// Sends a text frame.
    ///
    /// # Errors
    ///
    /// [`Closed`] once the connection has ended.
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), Closed> {
        self.sender.send_text(text).await
    }

    /// Sends a binary frame.
    ///
    /// # Errors
    ///
    /// [`Closed`] once the connection has ended.
    pub async fn send_binary(&self, bytes: impl Into<Bytes>) -> Result<(), Closed> {
        self.sender.send_binary(bytes).await
    }

    /// Ends the connection; see [`MemorySender::close`]. [`recv`](Self::recv)
    /// still returns what was queued, then `None`.
    pub fn close(&self) {
        self.sender.close();
    }

    /// The next frame from the socket, waiting for one; `None` once the
    /// connection has ended and every frame was read.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            {
                let mut st = self.queue.lock();
                if let Some(frame) = st.frames.pop_front() {
                    st.bytes -= frame.len();
                    if st.frames.is_empty() {
                        // An idle client keeps no buffer.
                        st.frames = VecDeque::new();
                    }
                    return Some(frame);
                }
                if st.closed.is_some() {
                    return None;
                }
            }
            self.queue.readable.notified().await;
        }
    }

    /// The next frame already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Frame> {
        let mut st = self.queue.lock();
        let frame = st.frames.pop_front()?;
        st.bytes -= frame.len();
        if st.frames.is_empty() {
            st.frames = VecDeque::new();
        }
        Some(frame)
    }

    /// The close code, once the connection has ended.
    pub fn close_code(&self) -> Option<u16> {
        self.queue.lock().closed
    }
}

/// The client's frames on their way to the socket: a bounded queue that
/// holds no buffer while empty (an idle connection's is always empty). A
/// frame wakes the socket's task through its outbox's notification, so an
/// idle task waits on one notification fewer.
struct Inbox {
    state: Mutex<InboxState>,
    /// The socket whose task takes the frames (and outlives it while the
    /// client holds its sender).
    socket: Arc<SocketShared>,
    writable: Notify,
    capacity: usize,
}

#[derive(Default)]
struct InboxState {
    frames: VecDeque<Frame>,
    /// Set by either side: the client closed, or the connection ended.
    closed: bool,
}

/// What [`Inbox::pop`] found.
enum Pop {
    Frame(Frame),
    Empty,
    Closed,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn send(&self, frame: Frame) -> Result<(), Closed> {
        loop {
            // Registered before the check, so a wake-up in between is seen.
            let room = self.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut st = self.lock();
                if st.closed {
                    return Err(Closed);
                }
                if st.frames.len() < self.capacity {
                    st.frames.push_back(frame);
                    drop(st);
                    self.socket.notify.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// The next frame; closed once the client closed and all were taken.
    fn pop(&self) -> Pop {
        let mut st = self.lock();
        match st.frames.pop_front() {
            Some(frame) => {
                if st.frames.is_empty() {
                    st.frames = VecDeque::new();
                }
                drop(st);
                self.writable.notify_one();
                Pop::Frame(frame)
            }
            None if st.closed => Pop::Closed,
            None => Pop::Empty,
        }
    }

    /// The client is done sending.
    fn close_input(&self) {
        self.lock().closed = true;
        self.socket.notify.notify_one();
        self.writable.notify_waiters();
    }

    /// The connection ended: later sends fail, unread frames are dropped.
    fn close(&self) {
        let rest = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.frames)
        };
        drop(rest);
        self.writable.notify_waiters();
    }
}

/// The socket task's side of the connection.
struct Link {
    inbox: Arc<Inbox>,
    max_frame_size: usize,
    idle_timeout: Option<Duration>,
}

/// The connection task, as the WebSocket's: hands the outbox to the sink,
/// feeds client frames to the socket one at a time between outbox drains,
/// ends on close, cancellation or idle.
///
/// Memory and time: an idle task waits on the outbox's notification (which
/// client frames also use), its cancellation (registered once, not per
/// wake) and, with a timeout, a boxed timer; handling a frame is boxed, so
/// its state is not kept for the connection's life.
// Not an `async fn`: it would store its arguments twice in the task.
#[allow(clippy::manual_async_fn)]
fn run<S: FrameSink>(mut conn: Conn, link: Link, mut sink: S) -> impl Future<Output = ()> + Send {
    async move {
        let shared = conn.shared.clone();
        let mut idle: Option<Pin<Box<Sleep>>> = link
            .idle_timeout
            .map(|timeout| Box::pin(tokio::time::sleep(timeout)));
        let cancelled = shared.cancel.cancelled();
        tokio::pin!(cancelled);
        let reason = loop {
            match step(&mut conn, &mut sink, &link.inbox) {
                Err(reason) => break reason,
                Ok(Some(frame)) => {
                    if let (Some(sleep), Some(timeout)) = (idle.as_mut(), link.idle_timeout) {
                        sleep.as_mut().reset(Instant::now() + timeout);
                    }
                    if let Err(reason) =
                        Box::pin(receive(&mut conn, frame, link.max_frame_size)).await
                    {
                        break reason;
                    }
                    // A client sending without pause still sees the close.
                    if shared.cancel.is_cancelled() {
                        break shared.close_reason().unwrap_or(CloseReason::Shutdown);
                    }
                    continue;
                }
                Ok(None) => {}
            }
            tokio::select! {
                biased;
                _ = &mut cancelled => break shared.close_reason().unwrap_or(CloseReason::Shutdown),
                _ = shared.notified() => {}
                _ = expired(&mut idle) => break CloseReason::Idle,
            }
        };
        // First reason wins: channels terminate with it.
        shared.close(reason);
        let reason = shared.close_reason().unwrap_or(reason);
        tracing::debug!(target: "fawkes::transport", ?reason, "memory connection closing");
        link.inbox.close();
        drop(conn);
        sink.closed(reason.code());
    }
}

/// Hands what the socket queued to the sink, then takes the next client
/// frame. Not async: the batch is not kept in the task while it waits.
fn step<S: FrameSink>(
    conn: &mut Conn,
    sink: &mut S,
    inbox: &Inbox,
) -> Result<Option<Frame>, CloseReason> {
    let batch = conn.shared.take();
    if !batch.events.is_empty() {
        conn.handle_events(batch.events);
    }
    if !batch.frames.is_empty() && sink.send(batch.frames.into()).is_err() {
        return Err(CloseReason::SlowClient);
    }
    match inbox.pop() {
        Pop::Frame(frame) => Ok(Some(frame)),
        Pop::Closed => Err(CloseReason::Closed),
        Pop::Empty => Ok(None),
    }
}

/// Resolves when the idle timer fires; never without one.
async fn expired(idle: &mut Option<Pin<Box<Sleep>>>) {
    match idle {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Decodes one client frame, as the WebSocket transport does, and feeds it
/// to the socket.
async fn receive(conn: &mut Conn, frame: Frame, max_frame_size: usize) -> Result<(), CloseReason> {
    if frame.len() > max_frame_size {
        tracing::warn!(target: "fawkes::transport", len = frame.len(), "frame too large, closing");
        return Err(CloseReason::TooLarge);
    }
    match decode(conn.shared.serializer, frame) {
        Ok(msg) => {
            conn.handle(msg).await;
            Ok(())
        }
        Err(why) => {
            tracing::warn!(target: "fawkes::transport", socket_id = conn.shared.id.as_deref(), error = %why, "malformed frame, closing");
            Err(CloseReason::BadFrame)
        }
    }
}

fn decode(serializer: Serializer, frame: Frame) -> Result<Message, String> {
    match frame {
        Frame::Binary(bytes) => serializer.decode_binary(bytes).map_err(|e| e.to_string()),
        text => {
            let bytes = text.to_bytes();
            let text = std::str::from_utf8(&bytes).map_err(|_| "invalid utf-8".to_owned())?;
            serializer.decode_text(text).map_err(|e| e.to_string())
        }
    }
}

/// The frames queued for a [`MemoryClient`].
struct ClientQueue {
    state: Mutex<QueueState>,
    readable: Notify,
    limits: OutboxLimits,
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<Frame>,
    bytes: usize,
    closed: Option<u16>,
}

impl ClientQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A [`MemoryClient`]'s sink: its queue, bounded by the outbox limits.
struct QueueSink(Arc<ClientQueue>);

impl FrameSink for QueueSink {
    fn send(&mut self, mut frames: VecDeque<Frame>) -> Result<(), Overflow> {
        let limits = self.0.limits;
        let bytes: usize = frames.iter().map(Frame::len).sum();
        let mut st = self.0.lock();
        if st.frames.len() + frames.len() > limits.frames || st.bytes + bytes > limits.bytes {
            return Err(Overflow);
        }
        st.bytes += bytes;
        if st.frames.is_empty() {
            st.frames = frames;
        } else {
            st.frames.append(&mut frames);
        }
        drop(st);
        self.0.readable.notify_one();
        Ok(())
    }

    fn closed(&mut self, code: u16) {
        self.0.lock().closed.get_or_insert(code);
        self.0.readable.notify_one();
    }
}

impl Drop for QueueSink {
    fn drop(&mut self) {
        // A task dropped without finishing (the runtime went away): 1006,
        // "abnormal closure", as a client sees a connection lost.
        self.closed(1006);
    }
}
