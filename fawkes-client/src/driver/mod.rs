//! The socket's task: owns the connection, the channels, the pending pushes
//! and every timer, so that all of phoenix.js's state changes happen in one
//! place, in order, without locks around the protocol state. This file
//! holds the loop, the commands, the connection and the heartbeat; `chan`
//! holds message dispatch and the channel state machine.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use fawkes_protocol::{EncodeError, Frame, Payload, events};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod chan;

use crate::channel::{ChanShared, ChannelState, JoinError, PushError};
use crate::codec::{self, Outgoing};
use crate::socket::{ConnectionState, Options, SocketEvent, SocketShared, endpoint_url};
use chan::reset_join;

const TARGET: &str = "fawkes_client::socket";
/// phoenix.js's prefix of the bearer token sub-protocol (PROTOCOL §1.6).
const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";
/// How long a closed connection may take to finish its close handshake.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<Box<Ws>, String>> + Send>>;

/// A request from a handle to the socket's task.
pub(crate) enum Command {
    Connect,
    Disconnect {
        done: oneshot::Sender<()>,
    },
    Join {
        chan: Arc<ChanShared>,
        params: Value,
        timeout: Duration,
        reply: oneshot::Sender<Result<Payload, JoinError>>,
    },
    Push {
        chan: u64,
        event: String,
        payload: Payload,
        timeout: Duration,
        reply: oneshot::Sender<Result<Payload, PushError>>,
    },
    Leave {
        chan: u64,
        timeout: Duration,
        reply: oneshot::Sender<Result<(), PushError>>,
    },
}

enum Conn {
    Idle,
    Connecting(Connecting),
    Open {
        out: mpsc::Sender<WsMessage>,
        reader: SplitStream<Ws>,
    },
}

/// What the connection did.
enum ConnEvent {
    Connected(Result<Box<Ws>, String>),
    Frame(Option<Result<WsMessage, tungstenite::Error>>),
}

/// A channel as the task sees it: phoenix.js's Channel and its joinPush.
struct ChanEntry {
    shared: Arc<ChanShared>,
    params: Value,
    timeout: Duration,
    join_ref: Option<String>,
    join_deadline: Option<Instant>,
    /// Whether the current join went out on the current connection; a join
    /// made while disconnected waits for the next open (phoenix.js's send
    /// buffer).
    join_sent: bool,
    join_waiters: Vec<oneshot::Sender<Result<Payload, JoinError>>>,
    rejoin_tries: u32,
    rejoin_at: Option<Instant>,
    /// Refs of pushes held until the join succeeds, oldest first.
    buffer: VecDeque<String>,
}

enum PushKind {
    Push(oneshot::Sender<Result<Payload, PushError>>),
    Leave(oneshot::Sender<Result<(), PushError>>),
}

struct PendingPush {
    chan: u64,
    topic: String,
    event: String,
    /// The payload while the push is buffered; `None` once sent.
    buffered: Option<Payload>,
    timeout: Duration,
    deadline: Instant,
    kind: PushKind,
}

pub(crate) struct Driver {
    opts: Arc<Options>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    state_tx: watch::Sender<ConnectionState>,
    shared: Arc<SocketShared>,
    conn: Conn,
    /// `connect` was called and `disconnect` was not since (phoenix.js's
    /// `!closeWasClean`): reconnect whenever the connection drops.
    want_connected: bool,
    reconnect_tries: u32,
    reconnect_at: Option<Instant>,
    heartbeat_at: Option<Instant>,
    heartbeat_timeout_at: Option<Instant>,
    pending_heartbeat: Option<String>,
    ref_counter: u64,
    channels: HashMap<u64, ChanEntry>,
    pushes: HashMap<String, PendingPush>,
    /// Push deadlines; an entry whose push is gone or has a newer deadline
    /// is skipped when it comes up.
    push_timers: BinaryHeap<Reverse<(Instant, String)>>,
}

impl Driver {
    pub(crate) fn new(
        opts: Arc<Options>,
        cmd_rx: mpsc::UnboundedReceiver<Command>,
        state_tx: watch::Sender<ConnectionState>,
        shared: Arc<SocketShared>,
    ) -> Driver {
        Driver {
            opts,
            cmd_rx,
            state_tx,
            shared,
            conn: Conn::Idle,
            want_connected: false,
            reconnect_tries: 0,
            reconnect_at: None,
            heartbeat_at: None,
            heartbeat_timeout_at: None,
            pending_heartbeat: None,
            ref_counter: 0,
            channels: HashMap::new(),
            pushes: HashMap::new(),
            push_timers: BinaryHeap::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            let deadline = self.next_deadline();
            let sleep = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                ev = conn_event(&mut self.conn) => match ev {
                    ConnEvent::Connected(result) => self.on_connected(result),
                    ConnEvent::Frame(frame) => self.on_frame(frame),
                },
                () = sleep => self.on_timers(Instant::now()),
            }
        }
        // Every handle is gone: nobody can observe the socket any more.
        self.close_conn(1000, "client dropped");
    }

    // ---- commands -------------------------------------------------------

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Connect => {
                self.want_connected = true;
                if matches!(self.conn, Conn::Idle) {
                    self.reconnect_at = None;
                    self.start_connect();
                }
            }
            Command::Disconnect { done } => {
                self.want_connected = false;
                self.reconnect_at = None;
                self.reconnect_tries = 0;
                let was_open = matches!(self.conn, Conn::Open { .. });
                self.close_conn(1000, "");
                self.set_state(ConnectionState::Closed);
                if was_open {
                    self.emit(SocketEvent::Close {
                        code: Some(1000),
                        reason: String::new(),
                    });
                    self.trigger_chan_error("connection_closed");
                }
                let _ = done.send(());
            }
            Command::Join {
                chan,
                params,
                timeout,
                reply,
            } => {
                if chan
                    .joined_once
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    let _ = reply.send(Err(JoinError::AlreadyJoined));
                    return;
                }
                let id = chan.id;
                self.channels.insert(
                    id,
                    ChanEntry {
                        shared: chan,
                        params,
                        timeout,
                        join_ref: None,
                        join_deadline: None,
                        join_sent: false,
                        join_waiters: vec![reply],
                        rejoin_tries: 0,
                        rejoin_at: None,
                        buffer: VecDeque::new(),
                    },
                );
                self.rejoin(id);
            }
            Command::Push {
                chan,
                event,
                payload,
                timeout,
                reply,
            } => self.push(chan, event, payload, timeout, reply),
            Command::Leave {
                chan,
                timeout,
                reply,
            } => self.leave(chan, timeout, reply),
        }
    }

    fn push(
        &mut self,
        id: u64,
        event: String,
        payload: Payload,
        timeout: Duration,
        reply: oneshot::Sender<Result<Payload, PushError>>,
    ) {
        if payload.is_binary() && self.opts.vsn.serializer() == fawkes_protocol::Serializer::V1 {
            let _ = reply.send(Err(PushError::Encode(EncodeError::BinaryUnsupported)));
            return;
        }
        let can_push = self.is_open();
        let Some(entry) = self.channels.get(&id) else {
            let _ = reply.send(Err(PushError::Closed));
            return;
        };
        let joined = entry.shared.state() == ChannelState::Joined;
        if !(can_push && joined) && entry.buffer.len() >= self.opts.push_buffer_capacity {
            let _ = reply.send(Err(PushError::BufferFull));
            return;
        }
        let topic = entry.shared.topic.clone();
        let join_ref = entry.join_ref.clone();
        let r = self.make_ref();
        let deadline = Instant::now() + timeout;
        let buffered = if can_push && joined {
            let out = Outgoing {
                join_ref: join_ref.as_deref(),
                ref_: Some(&r),
                topic: &topic,
                event: &event,
                payload: &payload,
            };
            if let Err(e) = self.send(&out) {
                let _ = reply.send(Err(PushError::Encode(e)));
                return;
            }
            None
        } else {
            // PROTOCOL/phoenix.js: held until joined, its timeout running.
            if let Some(entry) = self.channels.get_mut(&id) {
                entry.buffer.push_back(r.clone());
            }
            Some(payload)
        };
        self.add_pending(
            r,
            PendingPush {
                chan: id,
                topic,
                event,
                buffered,
                timeout,
                deadline,
                kind: PushKind::Push(reply),
            },
        );
    }

    fn leave(&mut self, id: u64, timeout: Duration, reply: oneshot::Sender<Result<(), PushError>>) {
        let Some(entry) = self.channels.get_mut(&id) else {
            let _ = reply.send(Ok(()));
            return;
        };
        entry.rejoin_at = None;
        entry.rejoin_tries = 0;
        entry.join_deadline = None;
        entry.shared.set_state(ChannelState::Leaving);
        let topic = entry.shared.topic.clone();
        let join_ref = entry.join_ref.clone();
        // phoenix.js closes the channel at once (its leave push can never
        // `canPush` in the leaving state) and sends the leave if connected;
        // here the reply also waits for the server's answer.
        let r = self.make_ref();
        let payload = Payload::empty();
        if self.is_open() {
            let out = Outgoing {
                join_ref: join_ref.as_deref(),
                ref_: Some(&r),
                topic: &topic,
                event: events::LEAVE,
                payload: &payload,
            };
            // An empty JSON payload always encodes.
            let _ = self.send(&out);
            self.add_pending(
                r,
                PendingPush {
                    chan: id,
                    topic,
                    event: events::LEAVE.to_owned(),
                    buffered: None,
                    timeout,
                    deadline: Instant::now() + timeout,
                    kind: PushKind::Leave(reply),
                },
            );
        } else {
            let _ = reply.send(Ok(()));
        }
        self.close_channel(id);
    }

    // ---- connection -----------------------------------------------------

    fn start_connect(&mut self) {
        let url = endpoint_url(&self.opts);
        let token = self.opts.auth_token.clone();
        let timeout = self.opts.timeout;
        tracing::debug!(target: TARGET, %url, "connecting");
        let fut = async move {
            let mut request = url
                .as_str()
                .into_client_request()
                .map_err(|e| e.to_string())?;
            if let Some(token) = token {
                let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(token.as_bytes());
                let protocols = format!("phoenix, {AUTH_TOKEN_PREFIX}{b64}");
                let value = HeaderValue::from_str(&protocols).map_err(|e| e.to_string())?;
                request
                    .headers_mut()
                    .insert("sec-websocket-protocol", value);
            }
            match tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request)).await {
                Ok(Ok((ws, _response))) => Ok(Box::new(ws)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("connect timed out".to_owned()),
            }
        };
        self.conn = Conn::Connecting(Box::pin(fut));
        self.set_state(ConnectionState::Connecting);
    }

    fn on_connected(&mut self, result: Result<Box<Ws>, String>) {
        match result {
            Ok(ws) => {
                let (mut sink, reader) = (*ws).split();
                let (out, mut rx) = mpsc::channel::<WsMessage>(self.opts.outbox_capacity);
                tokio::spawn(async move {
                    while let Some(msg) = rx.recv().await {
                        let closing = matches!(msg, WsMessage::Close(_));
                        if sink.send(msg).await.is_err() || closing {
                            break;
                        }
                    }
                    let _ = sink.close().await;
                });
                self.conn = Conn::Open { out, reader };
                self.on_open();
            }
            Err(e) => {
                tracing::debug!(target: TARGET, error = %e, "connect failed");
                self.conn = Conn::Idle;
                self.set_state(ConnectionState::Closed);
                self.emit(SocketEvent::Error(e.clone()));
                // As a browser WebSocket: an error, then a close without a frame.
                self.emit(SocketEvent::Close {
                    code: None,
                    reason: e,
                });
                self.trigger_chan_error("connection_error");
                self.schedule_reconnect();
            }
        }
    }

    fn on_open(&mut self) {
        tracing::debug!(target: TARGET, "connected");
        self.set_state(ConnectionState::Open);
        self.reconnect_tries = 0;
        self.reconnect_at = None;
        self.reset_heartbeat();
        // The send buffer: joins made while disconnected go out first.
        let unsent: Vec<u64> = self
            .channels
            .iter()
            .filter(|(_, c)| c.shared.state() == ChannelState::Joining && !c.join_sent)
            .map(|(&id, _)| id)
            .collect();
        for id in unsent {
            self.send_join(id);
        }
        self.emit(SocketEvent::Open);
        for id in self.reset_rejoin_timers() {
            if self
                .channels
                .get(&id)
                .is_some_and(|c| c.shared.state() == ChannelState::Errored)
            {
                self.rejoin(id);
            }
        }
    }

    fn on_frame(&mut self, frame: Option<Result<WsMessage, tungstenite::Error>>) {
        let serializer = self.opts.vsn.serializer();
        match frame {
            Some(Ok(WsMessage::Text(text))) => {
                match codec::decode_text(serializer, text.as_str()) {
                    Ok(msg) => self.on_message(msg),
                    Err(e) => {
                        tracing::warn!(target: TARGET, error = %e, "bad text frame from the server, skipped")
                    }
                }
            }
            Some(Ok(WsMessage::Binary(bytes))) => {
                if serializer == fawkes_protocol::Serializer::V1 {
                    tracing::warn!(target: TARGET, "binary frame on a V1 socket, skipped");
                    return;
                }
                match codec::decode_binary(bytes) {
                    Ok(msg) => self.on_message(msg),
                    Err(e) => {
                        tracing::warn!(target: TARGET, error = %e, "bad binary frame from the server, skipped")
                    }
                }
            }
            Some(Ok(WsMessage::Close(frame))) => {
                let (code, reason) = match frame {
                    Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                    None => (None, String::new()),
                };
                self.on_conn_lost(code, reason);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                self.emit(SocketEvent::Error(e.to_string()));
                self.on_conn_lost(None, e.to_string());
            }
            None => self.on_conn_lost(None, "connection ended".to_owned()),
        }
    }

    /// The server closed the connection or it broke: phoenix.js's
    /// `onConnClose`, which reconnects after any close it did not initiate.
    fn on_conn_lost(&mut self, code: Option<u16>, reason: String) {
        tracing::debug!(target: TARGET, ?code, %reason, "connection closed");
        self.drop_conn();
        self.set_state(ConnectionState::Closed);
        self.emit(SocketEvent::Close { code, reason });
        self.trigger_chan_error("connection_closed");
        self.schedule_reconnect();
    }

    /// Closes the connection from this side, if any.
    fn close_conn(&mut self, code: u16, reason: &str) {
        if let Conn::Open { out, .. } = &self.conn {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let _ = out.try_send(WsMessage::Close(Some(frame)));
        }
        self.drop_conn();
    }

    /// Forgets the connection; its reader drains in the background so that
    /// a close handshake can finish.
    fn drop_conn(&mut self) {
        self.clear_heartbeat();
        if let Conn::Open { reader, .. } = std::mem::replace(&mut self.conn, Conn::Idle) {
            tokio::spawn(async move {
                let mut reader = reader;
                let _ = tokio::time::timeout(CLOSE_DRAIN, async {
                    while let Some(Ok(_)) = reader.next().await {}
                })
                .await;
            });
        }
        for entry in self.channels.values_mut() {
            entry.join_sent = false;
        }
    }

    fn schedule_reconnect(&mut self) {
        if !self.want_connected {
            return;
        }
        let base = (self.opts.reconnect_after)(self.reconnect_tries + 1);
        self.reconnect_at = Some(Instant::now() + jittered(base, self.opts.jitter));
    }

    fn is_open(&self) -> bool {
        matches!(self.conn, Conn::Open { .. })
    }

    fn set_state(&self, state: ConnectionState) {
        self.state_tx.send_replace(state);
    }

    fn emit(&self, ev: SocketEvent) {
        // No receiver is fine: nobody listens.
        let _ = self.shared.events.send(ev);
    }

    fn make_ref(&mut self) -> String {
        self.ref_counter = self.ref_counter.wrapping_add(1);
        self.ref_counter.to_string()
    }

    /// Encodes and queues one frame on the open connection (a no-op when
    /// closed). A full outbox means the server stopped reading: the
    /// connection is dropped and reconnected.
    fn send(&mut self, out: &Outgoing<'_>) -> Result<(), EncodeError> {
        let frame = codec::encode(self.opts.vsn.serializer(), out)?;
        let Conn::Open { out: tx, .. } = &self.conn else {
            return Ok(());
        };
        let msg = match frame {
            Frame::Binary(b) => WsMessage::Binary(b),
            other => match String::from_utf8(other.to_bytes().to_vec()) {
                Ok(s) => WsMessage::Text(s.into()),
                // The encoders write JSON, which is UTF-8.
                Err(_) => return Ok(()),
            },
        };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(target: TARGET, "outbox full, reconnecting");
                self.give_up_conn("outbox full", "connection_closed");
            }
            // The writer stopped; the reader reports the close.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
        Ok(())
    }

    // ---- heartbeat ------------------------------------------------------

    fn reset_heartbeat(&mut self) {
        self.clear_heartbeat();
        self.heartbeat_at = Some(Instant::now() + self.opts.heartbeat_interval);
    }

    fn clear_heartbeat(&mut self) {
        self.pending_heartbeat = None;
        self.heartbeat_at = None;
        self.heartbeat_timeout_at = None;
    }

    fn send_heartbeat(&mut self) {
        self.heartbeat_at = None;
        if !self.is_open() {
            return;
        }
        let r = self.make_ref();
        let payload = Payload::empty();
        let _ = self.send(&Outgoing {
            join_ref: None,
            ref_: Some(&r),
            topic: events::PHOENIX_TOPIC,
            event: events::HEARTBEAT,
            payload: &payload,
        });
        self.pending_heartbeat = Some(r);
        self.heartbeat_timeout_at = Some(Instant::now() + self.opts.heartbeat_interval);
    }

    fn heartbeat_timeout(&mut self) {
        tracing::debug!(target: TARGET, "heartbeat timeout, reconnecting");
        self.give_up_conn("heartbeat timeout", "heartbeat_timeout");
    }

    /// Closes a connection the client gave up on (code 1000, `reason`),
    /// errors its channels with `chan_reason` and reconnects.
    fn give_up_conn(&mut self, reason: &str, chan_reason: &str) {
        self.close_conn(1000, reason);
        self.set_state(ConnectionState::Closed);
        self.emit(SocketEvent::Close {
            code: Some(1000),
            reason: reason.to_owned(),
        });
        self.trigger_chan_error(chan_reason);
        self.schedule_reconnect();
    }

    // ---- timers ---------------------------------------------------------

    fn next_deadline(&mut self) -> Option<Instant> {
        // Skip stale timer entries so that they do not wake the task.
        while let Some(Reverse((at, r))) = self.push_timers.peek() {
            if self.pushes.get(r).is_some_and(|p| p.deadline == *at) {
                break;
            }
            self.push_timers.pop();
        }
        let chans = self
            .channels
            .values()
            .flat_map(|c| [c.join_deadline, c.rejoin_at]);
        [
            self.heartbeat_at,
            self.heartbeat_timeout_at,
            self.reconnect_at,
            self.push_timers.peek().map(|t| t.0.0),
        ]
        .into_iter()
        .chain(chans)
        .flatten()
        .min()
    }

    fn on_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.push_timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, r))) = self.push_timers.pop() else {
                break;
            };
            if self.pushes.get(&r).is_none_or(|p| p.deadline != at) {
                continue;
            }
            let Some(p) = self.pushes.remove(&r) else {
                continue;
            };
            if p.buffered.is_some()
                && let Some(entry) = self.channels.get_mut(&p.chan)
            {
                entry.buffer.retain(|b| *b != r);
            }
            match p.kind {
                PushKind::Push(tx) => {
                    let _ = tx.send(Err(PushError::Timeout));
                }
                PushKind::Leave(tx) => {
                    let _ = tx.send(Err(PushError::Timeout));
                }
            }
        }

        let ids: Vec<u64> = self.channels.keys().copied().collect();
        for id in ids {
            let Some(entry) = self.channels.get_mut(&id) else {
                continue;
            };
            if entry.join_deadline.is_some_and(|d| d <= now) {
                self.join_timeout(id);
            }
            let Some(entry) = self.channels.get_mut(&id) else {
                continue;
            };
            if entry.rejoin_at.is_some_and(|d| d <= now) {
                entry.rejoin_at = None;
                entry.rejoin_tries += 1;
                if self.is_open() {
                    self.rejoin(id);
                }
            }
        }

        if self.heartbeat_timeout_at.is_some_and(|d| d <= now) {
            self.heartbeat_timeout();
        }
        if self.heartbeat_at.is_some_and(|d| d <= now) {
            self.send_heartbeat();
        }
        if self.reconnect_at.is_some_and(|d| d <= now) {
            self.reconnect_at = None;
            self.reconnect_tries += 1;
            if self.want_connected && matches!(self.conn, Conn::Idle) {
                self.start_connect();
            }
        }
    }

    /// phoenix.js's join timeout: a leave for that join, errored, rejoin
    /// scheduled.
    fn join_timeout(&mut self, id: u64) {
        let connected = self.is_open();
        let Some(entry) = self.channels.get_mut(&id) else {
            return;
        };
        tracing::debug!(target: TARGET, topic = %entry.shared.topic, "join timed out");
        let topic = entry.shared.topic.clone();
        let join_ref = entry.join_ref.clone();
        entry.shared.set_state(ChannelState::Errored);
        reset_join(entry);
        for w in entry.join_waiters.drain(..) {
            let _ = w.send(Err(JoinError::Timeout));
        }
        if connected {
            let r = self.make_ref();
            let payload = Payload::empty();
            let _ = self.send(&Outgoing {
                join_ref: join_ref.as_deref(),
                ref_: Some(&r),
                topic: &topic,
                event: events::LEAVE,
                payload: &payload,
            });
            self.schedule_rejoin(id);
        }
    }
}

/// `base` plus a random share of up to `fraction` of it.
fn jittered(base: Duration, fraction: f64) -> Duration {
    if fraction <= 0.0 {
        return base;
    }
    // No randomness available: no jitter rather than no reconnect.
    let r = getrandom::u32().unwrap_or(0);
    let share = f64::from(r) / f64::from(u32::MAX) * fraction;
    base + base.mul_f64(share)
}

/// The next thing the connection does; pending while there is none.
async fn conn_event(conn: &mut Conn) -> ConnEvent {
    match conn {
        Conn::Idle => std::future::pending().await,
        Conn::Connecting(fut) => ConnEvent::Connected(fut.await),
        Conn::Open { reader, .. } => ConnEvent::Frame(reader.next().await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_share() {
        let base = Duration::from_millis(1000);
        for _ in 0..100 {
            let got = jittered(base, 0.2);
            assert!(got >= base && got <= Duration::from_millis(1200), "{got:?}");
        }
        assert_eq!(jittered(base, 0.0), base);
    }
}
