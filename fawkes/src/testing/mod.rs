//! Testing channels without a network, as Phoenix's `ChannelTest` does.
//!
//! A [`TestSocket`] is an in-memory client of a real endpoint: it connects
//! through the socket handler, joins topics, pushes events and asserts on
//! replies, pushes and broadcasts, with the endpoint's real routing,
//! channels and pubsub, but no transport. Frames are the ones a V2 client
//! would get, decoded back into messages. Enabled by the `testing` feature.
//!
//! ```
//! use fawkes::testing::TestSocket;
//! use fawkes::{Assigns, Channel, ConnectInfo, Context, Endpoint, HandleResult, Params, Payload, Refused, Socket};
//! use serde_json::{json, Value};
//!
//! struct UserSocket;
//! impl Socket for UserSocket {
//!     async fn connect(&self, _: &Params, _: &ConnectInfo) -> Result<Assigns, Refused> {
//!         Ok(Assigns::new())
//!     }
//! }
//!
//! #[derive(Clone)]
//! struct Room;
//! impl Channel for Room {
//!     type Info = ();
//!     async fn join(&mut self, _: &str, _: Value, ctx: &mut Context<Self>) -> Result<Value, Value> {
//!         ctx.push("welcome", json!({"topic": ctx.topic()}));
//!         Ok(json!({}))
//!     }
//!     async fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut Context<Self>) -> HandleResult {
//!         ctx.broadcast("shout", payload.clone());
//!         HandleResult::ok(payload)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (_router, endpoint) = Endpoint::builder().socket("/socket", UserSocket).channel("room:*", Room).build();
//! let mut socket = TestSocket::connect(&endpoint, "/socket", &[]).await.unwrap();
//!
//! assert_eq!(socket.join("room:1", json!({})).await, Ok(json!({})));
//! assert_eq!(socket.assert_push("room:1", "welcome").await, json!({"topic": "room:1"}).into());
//!
//! let push = socket.push("room:1", "hi", json!({"body": "yo"})).await;
//! assert_eq!(socket.assert_broadcast("room:1", "shout").await, json!({"body": "yo"}).into());
//! assert_eq!(socket.assert_reply(&push).await, fawkes::Reply::ok(json!({"body": "yo"})));
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fawkes_protocol::{Frame, Message, Payload, Ref, Serializer, events};
use http::Uri;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::channel::Reply;
use crate::endpoint::Endpoint;
use crate::socket::{
    Assigns, Conn, ConnectInfo, OutboxLimits, Params, Refused, SocketShared, Transport,
};

/// How long assertions wait for a message before they panic.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// An in-memory client of an endpoint's socket. Its methods panic with a
/// description of what arrived when an assertion fails, as test helpers do.
pub struct TestSocket {
    conn: Conn,
    shared: Arc<SocketShared>,
    inbox: VecDeque<Message>,
    join_refs: HashMap<String, Ref>,
    next_ref: u64,
    timeout: Duration,
}

impl std::fmt::Debug for TestSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestSocket")
            .field("id", &self.shared.id)
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

impl TestSocket {
    /// Connects to the socket mounted at `path` with these params, through
    /// its handler's `connect` (the transport is reported as WebSocket).
    ///
    /// # Panics
    ///
    /// If no socket is mounted at `path`.
    pub async fn connect(
        endpoint: &Endpoint,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<TestSocket, Refused> {
        Self::connect_over(endpoint, path, params, Transport::WebSocket).await
    }

    /// Like [`connect`](Self::connect), with `transport` reported to
    /// `connect` and to the channels ([`Context::transport`](crate::Context::transport)),
    /// to test what a channel does differently over LongPoll. Frames are
    /// still read as they are queued: a binary frame a LongPoll client would
    /// never get still shows here.
    ///
    /// # Panics
    ///
    /// If no socket is mounted at `path`.
    pub async fn connect_over(
        endpoint: &Endpoint,
        path: &str,
        params: &[(&str, &str)],
        transport: Transport,
    ) -> Result<TestSocket, Refused> {
        let config = config(endpoint, path);
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let params = Params::from_query(&query);
        let info = ConnectInfo {
            headers: http::HeaderMap::new(),
            peer: None,
            uri: Uri::try_from(format!("{path}/{}?{query}", transport.as_str()))
                .unwrap_or_default(),
            auth_token: None,
            transport,
        };
        let assigns = config.handler.connect(&params, &info).await?;
        Ok(Self::build(endpoint, path, assigns, transport))
    }

    /// A socket with these assigns, without running `connect` (its id still
    /// comes from the handler's `id`).
    ///
    /// # Panics
    ///
    /// If no socket is mounted at `path`.
    pub fn with_assigns(endpoint: &Endpoint, path: &str, assigns: Assigns) -> TestSocket {
        Self::build(endpoint, path, assigns, Transport::WebSocket)
    }

    fn build(
        endpoint: &Endpoint,
        path: &str,
        assigns: Assigns,
        transport: Transport,
    ) -> TestSocket {
        let config = config(endpoint, path);
        let env = endpoint.shared().clone();
        let id = config.handler.id(&assigns).map(Arc::<str>::from);
        let shared = Arc::new(SocketShared::new(
            Serializer::V2,
            transport,
            id,
            assigns,
            env.root.child_token(),
            // Tests read at their own pace: never count them as slow clients.
            OutboxLimits {
                frames: usize::MAX,
                bytes: usize::MAX,
            },
        ));
        TestSocket {
            conn: Conn::new(shared.clone(), config, env),
            shared,
            inbox: VecDeque::new(),
            join_refs: HashMap::new(),
            next_ref: 0,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets how long assertions wait (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn new_ref(&mut self) -> Ref {
        self.next_ref += 1;
        json!(self.next_ref.to_string())
    }

    /// Sends a raw message, as a client frame would.
    pub async fn send(&mut self, msg: Message) {
        self.conn.handle(msg).await;
    }

    /// Joins `topic`: `Ok(response)` or `Err(response)` as the channel's
    /// `join` answered.
    pub async fn join(&mut self, topic: &str, payload: Value) -> Result<Value, Value> {
        let ref_ = self.new_ref();
        self.send(Message {
            join_ref: Some(ref_.clone()),
            ref_: Some(ref_.clone()),
            topic: topic.to_owned(),
            event: events::JOIN.to_owned(),
            payload: Payload::Json(payload),
        })
        .await;
        let reply = self.assert_reply(&ref_).await;
        let response = match reply.response {
            Payload::Json(v) => v,
            Payload::Binary(_) => Value::Null,
        };
        if reply.status == "ok" {
            self.join_refs.insert(topic.to_owned(), ref_);
            Ok(response)
        } else {
            Err(response)
        }
    }

    /// Pushes `event` to the channel of `topic`; returns the push's ref for
    /// [`assert_reply`](Self::assert_reply).
    pub async fn push(&mut self, topic: &str, event: &str, payload: impl Into<Payload>) -> Ref {
        let ref_ = self.new_ref();
        self.send(Message {
            join_ref: self.join_refs.get(topic).cloned(),
            ref_: Some(ref_.clone()),
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload: payload.into(),
        })
        .await;
        ref_
    }

    /// Leaves `topic`; returns the leave's reply.
    pub async fn leave(&mut self, topic: &str) -> Reply {
        let ref_ = self.push(topic, events::LEAVE, json!({})).await;
        self.join_refs.remove(topic);
        self.assert_reply(&ref_).await
    }

    /// Waits for the reply to the message with `ref_`.
    pub async fn assert_reply(&mut self, ref_: &Ref) -> Reply {
        let msg = self
            .expect(&format!("a reply to ref {ref_}"), |m| {
                m.event == events::REPLY && m.ref_.as_ref() == Some(ref_)
            })
            .await;
        let Payload::Json(Value::Object(mut map)) = msg.payload else {
            panic!("malformed reply: {msg:?}");
        };
        let status = match map.remove("status") {
            Some(Value::String(s)) => s,
            other => panic!("reply without a status: {other:?}"),
        };
        Reply::new(status, map.remove("response").unwrap_or(Value::Null))
    }

    /// Waits for a push of `event` on `topic` to this client (a frame with
    /// the channel's join ref, including intercepted broadcasts).
    pub async fn assert_push(&mut self, topic: &str, event: &str) -> Payload {
        self.expect(&format!("a push of {event} on {topic}"), |m| {
            m.topic == topic && m.event == event && m.ref_.is_none() && m.join_ref.is_some()
        })
        .await
        .payload
    }

    /// Waits for a fast-lane broadcast of `event` on `topic` (a frame with
    /// no refs).
    pub async fn assert_broadcast(&mut self, topic: &str, event: &str) -> Payload {
        self.expect(&format!("a broadcast of {event} on {topic}"), |m| {
            m.topic == topic && m.event == event && m.ref_.is_none() && m.join_ref.is_none()
        })
        .await
        .payload
    }

    /// Waits for the next message, whatever it is; `None` after the timeout.
    pub async fn next_message(&mut self) -> Option<Message> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(msg) = self.inbox.pop_front() {
                return Some(msg);
            }
            if !self.fill(deadline).await {
                return None;
            }
        }
    }

    /// The messages received and not yet matched by an assertion.
    pub fn unmatched(&self) -> impl Iterator<Item = &Message> {
        self.inbox.iter()
    }

    /// Takes the first message `pick` accepts, waiting up to the timeout;
    /// other messages stay for later assertions.
    async fn expect(&mut self, what: &str, pick: impl Fn(&Message) -> bool) -> Message {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(pos) = self.inbox.iter().position(&pick)
                && let Some(msg) = self.inbox.remove(pos)
            {
                return msg;
            }
            if !self.fill(deadline).await {
                panic!(
                    "expected {what} within {:?}; received: {:?}",
                    self.timeout, self.inbox
                );
            }
        }
    }

    /// Moves what the socket queued into the inbox, waiting until something
    /// arrives or `deadline` passes (then `false`).
    async fn fill(&mut self, deadline: Instant) -> bool {
        loop {
            let batch = self.shared.take();
            self.conn.handle_events(batch.events);
            let mut got = false;
            for frame in batch.frames {
                match frame {
                    Frame::Binary(bytes) => {
                        panic!("binary frames are not supported by TestSocket yet: {bytes:?}")
                    }
                    text => {
                        let bytes = text.to_bytes();
                        let text = String::from_utf8_lossy(&bytes);
                        match Serializer::V2.decode_text(&text) {
                            Ok(msg) => {
                                self.inbox.push_back(msg);
                                got = true;
                            }
                            Err(err) => panic!("server sent an undecodable frame ({err}): {text}"),
                        }
                    }
                }
            }
            if got {
                return true;
            }
            if tokio::time::timeout_at(deadline, self.shared.notified())
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

fn config(endpoint: &Endpoint, path: &str) -> Arc<crate::endpoint::SocketConfig> {
    let path = path.trim_end_matches('/');
    endpoint
        .shared()
        .mounts
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, c)| c.clone())
        .unwrap_or_else(|| panic!("no socket mounted at {path}"))
}
