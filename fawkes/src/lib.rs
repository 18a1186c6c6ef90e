//! Fawkes: Phoenix Channels for Rust.
//!
//! A client opens one **socket** (a WebSocket, or LongPoll HTTP requests for
//! clients that cannot hold one) and multiplexes **channels**
//! over it, one per **topic** it joins (`room:lobby`). Your [`Socket`]
//! authenticates the connection in `connect` and may name it with `id`; your
//! [`Channel`]s authorise joins, handle the events clients push, reply, push
//! to their client and **broadcast** to every subscriber of their topic
//! through [`pubsub`]. The wire protocol is Phoenix's, so the official
//! `phoenix` JavaScript client (and its Swift, Kotlin and C# ports) work
//! unmodified.
//!
//! The path of a message: transport → socket task → channel task (one per
//! joined topic) → the socket's outbox → transport. A broadcast is encoded
//! once per serializer version and the same bytes go to every subscriber,
//! unless the channel intercepts the event and runs
//! [`handle_out`](Channel::handle_out) per subscriber.
//!
//! Modules, in the order a message meets them:
//!
//! * [`protocol`]: messages and the V1/V2 serializers (the `fawkes-protocol` crate).
//! * [`socket`]: the socket handler, topic routing, per-connection dispatch.
//! * [`channel`]: the channel trait, its context, the channel task.
//! * [`pubsub`]: topics, subscribers, the fast lane, the cluster adapter seam.
//! * [`presence`]: who is on a topic (`presence_state` / `presence_diff`),
//!   on a replicated tracker.
//! * [`transport`]: WebSocket and LongPoll on axum, origin check, limits;
//!   an in-memory transport for clients in the same process.
//! * [`endpoint`]: the builder and the handle users hold.
//! * [`token`]: signed tokens, to authenticate sockets (and LongPoll sessions).
//! * [`js`]: the JavaScript client, served by an opt-in route.
//! * `testing` (feature `testing`): in-memory sockets to test channels
//!   without a network.

pub mod channel;
pub mod endpoint;
pub mod js;
mod mailbox;
pub mod presence;
pub mod pubsub;
pub mod socket;
#[cfg(feature = "testing")]
pub mod testing;
pub mod token;
pub mod transport;

/// The wire protocol (re-export of the `fawkes-protocol` crate).
pub use fawkes_protocol as protocol;

pub use channel::{
    Channel, ChannelError, ChannelHandle, Context, HandleResult, Reply, ReplyRef, StopReason,
    TimerRef,
};
pub use endpoint::{Endpoint, EndpointBuilder, SocketBuilder, Stats, shutdown_signal};
pub use fawkes_protocol::Payload;
pub use presence::{Presence, PresenceConfig, PresenceError, PresenceOwner};
pub use socket::{Assigns, ConnectInfo, Params, Refused, Socket, Transport};
pub use token::{Token, TokenError};
pub use transport::{
    CheckOrigin, LongPollConfig, MemoryConfig, MemoryTransport, TransportError, WebSocketConfig,
};

/// Compiles the README's examples.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
