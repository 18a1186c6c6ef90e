//! Channels: one topic joined over a [`Socket`], with pushes whose replies
//! are awaited and streams of the events the server sends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fawkes_protocol::Payload;
use futures_util::Stream;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::Command;
use crate::socket::Socket;

/// A channel's state, as phoenix.js's `CHANNEL_STATES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// Not joined: never joined, left, or closed by the server.
    Closed,
    /// The join failed, timed out, or the channel or connection crashed; a
    /// rejoin is scheduled.
    Errored,
    /// Joined.
    Joined,
    /// A join is in flight.
    Joining,
    /// A leave is in flight.
    Leaving,
}

/// One message the server sent on a channel's topic.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelEvent {
    /// The topic.
    pub topic: String,
    /// The event, e.g. `new_msg`, `phx_close` or `phx_error`.
    pub event: String,
    /// The payload: JSON, or bytes from a V2 binary frame.
    pub payload: Payload,
    /// The ref, for replies.
    pub ref_: Option<String>,
    /// The join ref the message carried, or else the channel's join ref when
    /// it was delivered (a V1 server sends none).
    pub join_ref: Option<String>,
}

/// Why a join did not succeed.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum JoinError {
    /// The server refused the join (an error reply); the channel rejoins on
    /// the rejoin schedule until it is left.
    #[error("join refused")]
    Refused(Payload),
    /// No reply within the timeout; the channel rejoins on the schedule.
    #[error("join timed out")]
    Timeout,
    /// [`Channel::join`] was already called on this channel.
    #[error("channel already joined once")]
    AlreadyJoined,
    /// The channel was left or closed, or the socket is gone, before a reply.
    #[error("channel closed")]
    Closed,
}

/// Why a push has no ok reply.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum PushError {
    /// The server replied with a status other than `ok` (usually `error`).
    #[error("server replied {status}")]
    Reply {
        /// The reply's status.
        status: String,
        /// The reply's response.
        response: Payload,
    },
    /// No reply within the push's timeout.
    #[error("push timed out")]
    Timeout,
    /// The channel has not been joined ([`Channel::join`] not called), was
    /// left, or the socket is gone.
    #[error("channel closed")]
    Closed,
    /// The channel is not joined yet and its push buffer is full.
    #[error("push buffer full")]
    BufferFull,
    /// The payload cannot be sent (binary on V1, a binary field over 255 bytes).
    #[error("payload cannot be encoded")]
    Encode(#[source] fawkes_protocol::EncodeError),
}

/// What a channel's handles and the socket's task share.
pub(crate) struct ChanShared {
    pub id: u64,
    pub topic: String,
    pub state: watch::Sender<ChannelState>,
    pub join_ref: Mutex<Option<String>>,
    pub subscribers: Mutex<Vec<Subscriber>>,
    /// phoenix.js's `joinedOnce`: a channel instance joins only once.
    pub joined_once: std::sync::atomic::AtomicBool,
}

/// An event stream's sending half, with its event filter (`None`: all).
pub(crate) struct Subscriber {
    pub event: Option<String>,
    pub tx: mpsc::Sender<ChannelEvent>,
}

impl ChanShared {
    pub(crate) fn set_state(&self, state: ChannelState) {
        self.state.send_replace(state);
    }

    pub(crate) fn state(&self) -> ChannelState {
        *self.state.borrow()
    }

    pub(crate) fn join_ref(&self) -> Option<String> {
        lock(&self.join_ref).clone()
    }

    pub(crate) fn set_join_ref(&self, r: Option<String>) {
        *lock(&self.join_ref) = r;
    }

    /// Delivers `ev` to every matching stream, dropping streams whose reader
    /// is gone. A full stream misses the event (see `event_capacity`).
    pub(crate) fn dispatch(&self, ev: &ChannelEvent) {
        lock(&self.subscribers).retain(|sub| {
            if sub.event.as_deref().is_some_and(|e| e != ev.event) {
                return !sub.tx.is_closed();
            }
            match sub.tx.try_send(ev.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(target: "fawkes_client::channel", topic = %ev.topic, event = %ev.event, "event stream full, event dropped");
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Ends every stream (the channel is closed).
    pub(crate) fn close_streams(&self) {
        lock(&self.subscribers).clear();
    }
}

/// Locks a mutex, ignoring poisoning: the data is replaced whole under the
/// lock, so a panic elsewhere cannot leave it half-written.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A channel, as phoenix.js's `Channel`: join once, then push, listen, leave.
/// Cheap to clone. Dropping it does not leave the topic: call
/// [`leave`](Self::leave).
#[derive(Clone)]
pub struct Channel {
    socket: Socket,
    shared: Arc<ChanShared>,
    params: Value,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("topic", &self.shared.topic)
            .field("state", &self.state())
            .finish()
    }
}

static NEXT_CHANNEL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Channel {
    pub(crate) fn new(socket: Socket, topic: String, params: Value) -> Channel {
        let (state, _) = watch::channel(ChannelState::Closed);
        let id = NEXT_CHANNEL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Channel {
            socket,
            shared: Arc::new(ChanShared {
                id,
                topic,
                state,
                join_ref: Mutex::new(None),
                subscribers: Mutex::new(Vec::new()),
                joined_once: std::sync::atomic::AtomicBool::new(false),
            }),
            params,
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The state now.
    pub fn state(&self) -> ChannelState {
        self.shared.state()
    }

    /// A watch on the state, to wait for a change.
    pub fn state_changes(&self) -> watch::Receiver<ChannelState> {
        self.shared.state.subscribe()
    }

    /// The ref of the current join (each rejoin has a new one).
    pub fn join_ref(&self) -> Option<String> {
        self.shared.join_ref()
    }

    /// A stream of the server's `event` messages on this channel (messages
    /// of an older join are dropped, as phoenix.js does). Subscribe before
    /// joining to see what the server pushes right after the join.
    pub fn on(&self, event: impl Into<String>) -> Events {
        self.subscribe(Some(event.into()))
    }

    /// A stream of every message on this channel except replies: pushes,
    /// broadcasts, `phx_close`, `phx_error`.
    pub fn events(&self) -> Events {
        self.subscribe(None)
    }

    fn subscribe(&self, event: Option<String>) -> Events {
        let (tx, rx) = mpsc::channel(self.socket.inner.opts.event_capacity);
        lock(&self.shared.subscribers).push(Subscriber { event, tx });
        Events { rx }
    }

    /// Joins with the socket's default timeout; see [`join_with_timeout`](Self::join_with_timeout).
    pub fn join(&self) -> Reply<Result<Payload, JoinError>> {
        self.join_with_timeout(self.socket.inner.opts.timeout)
    }

    /// Joins the topic, sending the params (now if connected, else once the
    /// socket opens). Resolves with the first attempt's outcome; afterwards
    /// the channel rejoins by itself after a reconnect, a `phx_error` or a
    /// failed attempt, until it is left. A channel joins only once.
    pub fn join_with_timeout(&self, timeout: Duration) -> Reply<Result<Payload, JoinError>> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Join {
            chan: self.shared.clone(),
            params: self.params.clone(),
            timeout,
            reply: tx,
        };
        Reply::new(self.send(cmd), rx, Err(JoinError::Closed))
    }

    /// Pushes `event` with the socket's default timeout; see
    /// [`push_with_timeout`](Self::push_with_timeout).
    pub fn push(
        &self,
        event: impl Into<String>,
        payload: impl Into<Payload>,
    ) -> Reply<Result<Payload, PushError>> {
        self.push_with_timeout(event, payload, self.socket.inner.opts.timeout)
    }

    /// Pushes `event` and resolves with the reply's response (status `ok`) or
    /// why there is none. Sent now if joined; otherwise buffered until the
    /// join succeeds, its timeout running meanwhile, as phoenix.js does.
    /// The push is queued when this is called, not when it is awaited.
    pub fn push_with_timeout(
        &self,
        event: impl Into<String>,
        payload: impl Into<Payload>,
        timeout: Duration,
    ) -> Reply<Result<Payload, PushError>> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Push {
            chan: self.shared.id,
            event: event.into(),
            payload: payload.into(),
            timeout,
            reply: tx,
        };
        Reply::new(self.send(cmd), rx, Err(PushError::Closed))
    }

    /// Leaves the topic: resolves once the server acknowledged (or at once
    /// if the channel cannot push). The channel is closed afterwards, even
    /// on a timeout, and its event streams end.
    pub fn leave(&self) -> Reply<Result<(), PushError>> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Leave {
            chan: self.shared.id,
            timeout: self.socket.inner.opts.timeout,
            reply: tx,
        };
        Reply::new(self.send(cmd), rx, Err(PushError::Closed))
    }

    fn send(&self, cmd: Command) -> bool {
        self.socket.inner.cmd.send(cmd).is_ok()
    }
}

/// The outcome of a join, push or leave, resolved by the socket's task.
#[must_use = "a reply does nothing unless awaited (the message is sent anyway)"]
pub struct Reply<T> {
    rx: Option<oneshot::Receiver<T>>,
    gone: Option<T>,
}

impl<T> fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply").finish_non_exhaustive()
    }
}

impl<T> Reply<T> {
    fn new(sent: bool, rx: oneshot::Receiver<T>, gone: T) -> Self {
        Reply {
            rx: sent.then_some(rx),
            gone: Some(gone),
        }
    }
}

impl<T: Unpin> Future for Reply<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        let result = match this.rx.as_mut() {
            Some(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(v)) => Some(v),
                Poll::Ready(Err(_)) => None,
            },
            None => None,
        };
        this.rx = None;
        match result.or_else(|| this.gone.take()) {
            Some(v) => Poll::Ready(v),
            // Polled again after completion.
            None => Poll::Pending,
        }
    }
}

/// A stream of a channel's events ([`Channel::on`], [`Channel::events`]);
/// it ends when the channel closes.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<ChannelEvent>,
}

impl Events {
    /// The next event, or `None` once the channel closed.
    pub async fn recv(&mut self) -> Option<ChannelEvent> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = ChannelEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        self.rx.poll_recv(cx)
    }
}
