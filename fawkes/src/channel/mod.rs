//! Channels: one task per joined topic, running a [`Channel`]'s callbacks in order.
//!
//! Owns join, handle_in, handle_out + intercept, handle_info, terminate and the
//! [`Context`] they receive. Knows nothing of transports.
//!
//! A channel is a Rust value created for each join (cloned from the one given
//! to the route) and owned by its own task. The task runs one callback at a
//! time, so the channel's state needs no locks, and frames it produces reach
//! the client in the order it produced them (PROTOCOL §4.14).
//!
//! ```
//! use fawkes::{Channel, Context, HandleResult, Payload};
//! use serde_json::{json, Value};
//!
//! #[derive(Clone)]
//! struct Room;
//!
//! impl Channel for Room {
//!     type Info = ();
//!     const INTERCEPT: &'static [&'static str] = &["new_msg"];
//!
//!     async fn join(&mut self, topic: &str, _payload: Value, _ctx: &mut Context<Self>) -> Result<Value, Value> {
//!         if topic == "room:secret" { Err(json!({"reason": "unauthorized"})) } else { Ok(json!({})) }
//!     }
//!
//!     async fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut Context<Self>) -> HandleResult {
//!         match event {
//!             "new_msg" => {
//!                 ctx.broadcast("new_msg", payload);
//!                 HandleResult::ok(json!({}))
//!             }
//!             _ => HandleResult::error(json!({"reason": "unknown event"})),
//!         }
//!     }
//! }
//! ```

mod context;
mod server;

use std::borrow::Cow;
use std::future::Future;

use fawkes_protocol::Payload;
use serde_json::Value;

pub use context::{ChannelHandle, Context, ReplyRef, TimerRef};
pub(crate) use server::{ChannelCore, ChannelFactory, ChannelMsg, Incoming, JoinRequest, Route};

/// A channel: the server side of one topic for one client.
///
/// Implement [`join`](Channel::join) and [`handle_in`](Channel::handle_in);
/// the other callbacks have defaults. Every callback runs on the channel's own
/// task; a panic in any of them is isolated: the client gets `phx_error` for
/// this topic (or `{"reason":"join crashed"}` for a join) and the socket and
/// its other channels live on.
pub trait Channel: Clone + Send + Sync + Sized + 'static {
    /// Messages the channel sends itself (timers, work after joining) or
    /// receives from other code through a [`ChannelHandle`]; use `()` if none.
    type Info: Send + 'static;

    /// Events whose broadcasts run [`handle_out`](Channel::handle_out) for
    /// each subscriber instead of going out unchanged through the fast lane.
    const INTERCEPT: &'static [&'static str] = &[];

    /// Authorises a join. `Ok(response)` joins (the client gets `response`,
    /// use `json!({})` for none); `Err(response)` refuses with that response.
    ///
    /// Pushes made here are sent after the join reply. Work that must follow
    /// the reply belongs in [`handle_info`](Channel::handle_info), scheduled
    /// with [`Context::send_info`].
    fn join(
        &mut self,
        topic: &str,
        payload: Value,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = Result<Value, Value>> + Send;

    /// Handles an event pushed by the client.
    fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = HandleResult> + Send;

    /// Handles an intercepted broadcast for this subscriber: push it
    /// (changed or not) with [`Context::push`], or push nothing to filter it.
    /// The default pushes it unchanged.
    fn handle_out(
        &mut self,
        event: &str,
        payload: &Payload,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = HandleResult> + Send {
        ctx.push(event, payload.clone());
        async { HandleResult::NoReply }
    }

    /// Handles a message sent with [`Context::send_info`],
    /// [`Context::send_after`] or a [`ChannelHandle`]. The default ignores it.
    fn handle_info(
        &mut self,
        msg: Self::Info,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = HandleResult> + Send {
        let _ = (msg, ctx);
        async { HandleResult::NoReply }
    }

    /// Runs when the channel ends: client leave, stop, crash, socket close,
    /// forced disconnect or shutdown. Not run when a duplicate join replaces
    /// the channel or when the join failed. Pushes reach the client only while
    /// its connection is open (after a leave or stop they follow `phx_close`).
    fn terminate(
        &mut self,
        reason: &StopReason,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reason, ctx);
        async {}
    }
}

/// What a callback asks the channel to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum HandleResult {
    /// Send this reply to the client message being handled.
    Reply(Reply),
    /// Send nothing (the client's push times out if it waits for a reply).
    NoReply,
    /// Stop the channel, after sending the reply if there is one.
    Stop(StopReason, Option<Reply>),
}

impl HandleResult {
    /// Reply `ok` with `response`.
    pub fn ok(response: impl Into<Payload>) -> Self {
        HandleResult::Reply(Reply::ok(response))
    }

    /// Reply `error` with `response`.
    pub fn error(response: impl Into<Payload>) -> Self {
        HandleResult::Reply(Reply::error(response))
    }

    /// Stop with `reason`, without a reply.
    pub fn stop(reason: StopReason) -> Self {
        HandleResult::Stop(reason, None)
    }
}

impl From<Reply> for HandleResult {
    fn from(reply: Reply) -> Self {
        HandleResult::Reply(reply)
    }
}

/// A reply to a client message: `{"status": …, "response": …}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// `ok`, `error` or an application status.
    pub status: Cow<'static, str>,
    /// The response: a JSON value or bytes (V2 WebSocket only).
    pub response: Payload,
}

impl Reply {
    /// A reply with any status.
    pub fn new(status: impl Into<Cow<'static, str>>, response: impl Into<Payload>) -> Self {
        Reply {
            status: status.into(),
            response: response.into(),
        }
    }

    /// An `ok` reply.
    pub fn ok(response: impl Into<Payload>) -> Self {
        Reply::new("ok", response)
    }

    /// An `error` reply.
    pub fn error(response: impl Into<Payload>) -> Self {
        Reply::new("error", response)
    }

    /// A bare status: the response is `{}`.
    pub fn status(status: impl Into<Cow<'static, str>>) -> Self {
        Reply::new(status, Payload::empty())
    }
}

/// Why a channel stops, as in Phoenix: `normal` and `shutdown` reasons close
/// the channel (`phx_close`, no rejoin); an error crashes it (`phx_error`,
/// the client rejoins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A normal stop: the client gets `phx_close`.
    Normal,
    /// A shutdown with a cause (`left`, `closed`, `disconnected`,
    /// `draining`, or the application's): the client gets `phx_close`.
    Shutdown(Cow<'static, str>),
    /// A failure (a panic carries its message): the client gets `phx_error`.
    Error(String),
}

impl StopReason {
    /// Whether the stop is orderly (`phx_close`) rather than a crash.
    pub fn is_orderly(&self) -> bool {
        !matches!(self, StopReason::Error(_))
    }
}

/// Why a channel operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelError {
    /// The channel has ended.
    #[error("channel closed")]
    Closed,
    /// Pushes and broadcasts need a JSON object or bytes.
    #[error("payload must be a json object or bytes")]
    InvalidPayload,
}

/// Pushes and broadcasts carry an object or bytes (PROTOCOL §4.9).
pub(crate) fn valid_payload(payload: &Payload) -> bool {
    match payload {
        Payload::Json(v) => v.is_object(),
        Payload::Binary(_) => true,
    }
}
