//! A Phoenix Channels client: phoenix.js's model in async Rust, for tests,
//! load tools, bots and services that talk to a Phoenix (or Fawkes) server.
//!
//! The model is phoenix.js's. A [`Socket`] is one WebSocket to an endpoint
//! (`ws://host:4000/socket`, `/websocket` appended), sending its params and
//! an optional bearer token, speaking serializer 2.0.0 (or 1.0.0), sending
//! heartbeats and reconnecting with phoenix.js's back-off when the connection
//! drops. A [`Channel`] is one topic joined over it: it rejoins by itself
//! after a reconnect, a `phx_error` or a failed join, buffers pushes until
//! joined, and ignores messages of an older join. A push resolves with the
//! reply's response, an error reply, or a timeout ([`PushError`]). Events
//! arrive as streams ([`Channel::on`]). [`Presence`] keeps a topic's
//! presence list from `presence_state` and `presence_diff` exactly as
//! phoenix.js does.
//!
//! Frames are read and written through `fawkes-protocol`; this crate does
//! not depend on the server.
//!
//! ```no_run
//! use fawkes_client::{Socket, StreamExt};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let socket = Socket::builder("ws://127.0.0.1:4000/socket")
//!     .params(json!({"user_id": "42"}))
//!     .build()?;
//! socket.connect();
//!
//! let room = socket.channel("room:lobby", json!({"user": "ann"}));
//! let mut messages = room.on("new_msg");
//! room.join().await?;
//!
//! let answer = room.push("echo", json!({"hello": "world"})).await?;
//! assert_eq!(answer.as_json(), Some(&json!({"hello": "world"})));
//!
//! room.push("new_msg", json!({"body": "hi"})).await?;
//! if let Some(msg) = messages.next().await {
//!     println!("{}: {:?}", msg.event, msg.payload);
//! }
//! room.leave().await?;
//! socket.disconnect().await;
//! # Ok(())
//! # }
//! ```
//!
//! Everything is at the crate root except the [`presence`] module, which
//! also holds phoenix.js's static `syncState`, `syncDiff` and `list`. Inside:
//! `socket` (options, handle, notifications), `channel` (handles, pushes,
//! streams), `driver` (the one task per socket that owns the connection,
//! the channels and every timer) and `codec` (protocol messages mapped to
//! the driver's types; `fawkes-protocol` writes and reads the frames).

mod channel;
mod codec;
mod driver;
pub mod presence;
mod socket;

pub use channel::{Channel, ChannelEvent, ChannelState, Events, JoinError, PushError, Reply};
pub use fawkes_protocol::Payload;
pub use futures_util::StreamExt;
pub use presence::Presence;
pub use socket::{
    Backoff, BuildError, ConnectionState, ParamsFn, Socket, SocketBuilder, SocketEvent, Vsn,
    default_reconnect_after, default_rejoin_after,
};
