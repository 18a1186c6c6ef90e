//! The endpoint: what users build and hold.
//!
//! [`Endpoint::builder`] mounts sockets with their channel routes and returns
//! an [`axum::Router`] to serve (alone or merged into the application's own)
//! and the [`Endpoint`] handle, which broadcasts from code outside any
//! channel, disconnects sockets by id, reports counts and shuts down.
//!
//! ```no_run
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
//!     async fn join(&mut self, _: &str, _: Value, _: &mut Context<Self>) -> Result<Value, Value> {
//!         Ok(json!({}))
//!     }
//!     async fn handle_in(&mut self, _: &str, payload: Payload, _: &mut Context<Self>) -> HandleResult {
//!         HandleResult::ok(payload)
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let (router, endpoint) = Endpoint::builder()
//!     .socket("/socket", UserSocket)
//!     .channel("room:*", Room)
//!     .build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
//! // Until Ctrl-C or SIGTERM; then every socket is closed with 1012.
//! endpoint.serve(listener, router, fawkes::shutdown_signal()).await
//! # }
//! ```

mod serve;

pub use serve::shutdown_signal;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get};
use fawkes_protocol::Payload;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::channel::{Channel, ChannelError, ChannelFactory, Route};
use crate::presence::{Presence, PresenceConfig, Tracker};
use crate::pubsub::{Adapter, Link, PubSub};
use crate::socket::{DynSocket, OutboxLimits, Socket, TopicPattern};
use crate::token::Token;
use crate::transport::{CheckOrigin, LongPollConfig, WebSocketConfig, longpoll, websocket};

/// What every task of an endpoint shares.
pub(crate) struct Shared {
    pub(crate) pubsub: PubSub,
    pub(crate) presence: Presence,
    node_name: String,
    pub(crate) tracker: TaskTracker,
    pub(crate) root: CancellationToken,
    pub(crate) sockets: AtomicUsize,
    pub(crate) channels: AtomicUsize,
    /// Signs LongPoll session tokens.
    pub(crate) token: Token,
    /// The mounted sockets by path, for in-memory sockets
    /// ([`crate::transport::memory`], `testing`).
    pub(crate) mounts: Vec<(String, Arc<SocketConfig>)>,
    shutdown_timeout: Duration,
}

/// One mounted socket's handler, routes and limits.
pub(crate) struct SocketConfig {
    pub(crate) handler: Arc<dyn DynSocket>,
    pub(crate) routes: Vec<(TopicPattern, Arc<dyn ChannelFactory>)>,
    pub(crate) max_channels: usize,
    pub(crate) channel_mailbox: usize,
    pub(crate) outbox: OutboxLimits,
    pub(crate) check_origin: CheckOrigin,
    pub(crate) websocket: WebSocketConfig,
    /// `None`: no LongPoll transport.
    pub(crate) longpoll: Option<LongPollConfig>,
    /// Serve the JavaScript client at `<path>/fawkes.js`.
    pub(crate) client_js: bool,
}

impl SocketConfig {
    /// The first route matching `topic` (PROTOCOL §4.2).
    pub(crate) fn route(&self, topic: &str) -> Option<&Arc<dyn ChannelFactory>> {
        self.routes
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map(|(_, f)| f)
    }
}

/// Counts of this node's live connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connected sockets.
    pub sockets: usize,
    /// Joined channels.
    pub channels: usize,
}

/// The handle to a running endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Endpoint {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts building an endpoint.
    pub fn builder() -> EndpointBuilder {
        EndpointBuilder {
            pubsub: None,
            sockets: Vec::new(),
            shutdown_timeout: Duration::from_secs(30),
            token: None,
            presence: PresenceConfig::default(),
            node_name: None,
        }
    }

    /// Broadcasts to every subscriber of `topic` on every node, as code
    /// outside any channel (intercepted events still run `handle_out`).
    pub fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<(), ChannelError> {
        self.shared.pubsub.broadcast(topic, event, payload)
    }

    /// Broadcasts to the subscribers of `topic` on this node only.
    pub fn local_broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<(), ChannelError> {
        self.shared.pubsub.local_broadcast(topic, event, payload)
    }

    /// Closes every socket whose id is `socket_id`, on every node (code 1001;
    /// their channels terminate). Anonymous sockets are never affected.
    pub fn disconnect(&self, socket_id: &str) {
        let _ = self
            .shared
            .pubsub
            .broadcast(socket_id, "disconnect", json!({}));
    }

    /// This node's socket and channel counts.
    pub fn stats(&self) -> Stats {
        Stats {
            sockets: self.shared.sockets.load(Ordering::Relaxed),
            channels: self.shared.channels.load(Ordering::Relaxed),
        }
    }

    /// The endpoint's pubsub.
    pub fn pubsub(&self) -> &PubSub {
        &self.shared.pubsub
    }

    /// The node's presence: who is on any topic, and owners to track from
    /// code outside channels.
    pub fn presence(&self) -> &Presence {
        &self.shared.presence
    }

    /// Waits up to `within` for the link to the other nodes (the
    /// [adapter](EndpointBuilder::adapter)'s connection) to be up; whether
    /// it is. A node may serve before, but until then its broadcasts stay
    /// local and its joins see only local broadcasts: wait for it before
    /// taking traffic. At once `true` without an adapter.
    pub async fn linked(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.shared.pubsub.is_linked() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// This node's name ([`EndpointBuilder::node_name`]).
    pub fn node_name(&self) -> &str {
        &self.shared.node_name
    }

    /// Shuts down: refuses new connections, closes every socket with code
    /// 1012 after running its channels' `terminate`, and waits for them (up
    /// to the shutdown timeout, 30 s by default).
    ///
    /// The HTTP server's own graceful shutdown does not cover upgraded
    /// WebSockets; call this from it, as the builder's example does.
    pub async fn shutdown(&self) {
        self.shared.root.cancel();
        self.shared.tracker.close();
        if tokio::time::timeout(self.shared.shutdown_timeout, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(target: "fawkes::endpoint", tasks = self.shared.tracker.len(), "shutdown timed out");
        }
    }
}

/// Builds an [`Endpoint`] and its router.
#[must_use]
pub struct EndpointBuilder {
    pubsub: Option<PubSub>,
    sockets: Vec<(String, SocketConfig)>,
    shutdown_timeout: Duration,
    token: Option<Token>,
    presence: PresenceConfig,
    node_name: Option<String>,
}

impl EndpointBuilder {
    /// The secret that signs the endpoint's tokens (LongPoll sessions), like
    /// Phoenix's `secret_key_base`: at least 32 bytes, kept out of the
    /// source (read it from the environment). LongPoll sessions live on one
    /// node, which alone verifies their tokens, so nodes of a cluster need
    /// not share it. Default: a random secret per process.
    ///
    /// # Panics
    ///
    /// If `secret` is shorter than [`Token::MIN_SECRET_LEN`].
    pub fn secret_key_base(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.token = Some(Token::new(secret));
        self
    }

    /// Links this node to others through `adapter` (the `redis` feature's
    /// [`RedisAdapter`](crate::pubsub::redis::RedisAdapter), say): broadcasts,
    /// presence and forced disconnects then span every node. Started when
    /// the endpoint is built, which must then run inside a tokio runtime.
    pub fn adapter(mut self, adapter: impl Adapter) -> Self {
        self.pubsub
            .get_or_insert_with(PubSub::new)
            .set_adapter(Arc::new(adapter));
        self
    }

    /// Uses this pubsub (for instance one with a cluster adapter) instead of a
    /// new in-memory one.
    pub fn pubsub(mut self, pubsub: PubSub) -> Self {
        self.pubsub = Some(pubsub);
        self
    }

    /// How the tracker behind [`Endpoint::presence`] runs: diff batching,
    /// meta size limit, shards. Default [`PresenceConfig::default`].
    pub fn presence(mut self, config: PresenceConfig) -> Self {
        self.presence = config;
        self
    }

    /// Names this node, for logs and presence; nodes of a cluster need
    /// distinct names. Default: `fawkes-` and random hex digits.
    pub fn node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = Some(name.into());
        self
    }

    /// How long [`Endpoint::shutdown`] waits for sockets to close. Default 30 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Mounts a socket handler at `path` (e.g. `/socket`): WebSocket at
    /// `<path>/websocket`, and LongPoll at `<path>/longpoll` once enabled
    /// with [`SocketBuilder::longpoll`].
    pub fn socket(self, path: &str, handler: impl Socket) -> SocketBuilder {
        SocketBuilder {
            endpoint: self,
            path: path.trim_end_matches('/').to_owned(),
            config: SocketConfig {
                handler: Arc::new(handler),
                routes: Vec::new(),
                max_channels: 100,
                channel_mailbox: 1024,
                outbox: OutboxLimits {
                    frames: 4096,
                    bytes: 16 << 20,
                },
                check_origin: CheckOrigin::default(),
                websocket: WebSocketConfig::default(),
                longpoll: None,
                client_js: false,
            },
        }
    }

    /// Builds the router to serve and the endpoint handle.
    pub fn build(self) -> (Router, Endpoint) {
        let mounts: Vec<_> = self
            .sockets
            .into_iter()
            .map(|(path, config)| (path, Arc::new(config)))
            .collect();
        let pubsub = self.pubsub.unwrap_or_default();
        let tracker = TaskTracker::new();
        let root = CancellationToken::new();
        let node_name = self
            .node_name
            .unwrap_or_else(|| format!("fawkes-{:08x}", crate::presence::random_u64() as u32));
        if let Some(adapter) = pubsub.adapter() {
            adapter.start(Link::new(
                &pubsub,
                &node_name,
                root.clone(),
                tracker.clone(),
            ));
        }
        let presence = Presence::new(Tracker::new(
            pubsub.clone(),
            self.presence,
            tracker.clone(),
            root.clone(),
            &node_name,
        ));
        let shared = Arc::new(Shared {
            pubsub,
            presence,
            node_name,
            tracker,
            root,
            sockets: AtomicUsize::new(0),
            channels: AtomicUsize::new(0),
            token: self.token.unwrap_or_else(Token::generate),
            mounts: mounts.clone(),
            shutdown_timeout: self.shutdown_timeout,
        });
        let mut router = Router::new();
        for (path, config) in mounts {
            if config.longpoll.is_some() {
                let (config, env) = (config.clone(), shared.clone());
                let sessions = Arc::new(longpoll::Sessions::new(&path, &shared.node_name));
                // Requests landing on another node reach their sessions here.
                longpoll::listen(config.clone(), &shared, sessions.clone());
                router = router.route(
                    &format!("{path}/longpoll"),
                    any(move |req| {
                        longpoll::handle(config.clone(), env.clone(), sessions.clone(), req)
                    }),
                );
            }
            if config.client_js {
                router = router.route(&format!("{path}/fawkes.js"), get(crate::js::serve));
            }
            let env = shared.clone();
            router = router.route(
                &format!("{path}/websocket"),
                any(move |req| websocket::handle(config.clone(), env.clone(), req)),
            );
        }
        (router, Endpoint { shared })
    }
}

/// Configures one mounted socket: its channel routes and limits.
#[must_use]
pub struct SocketBuilder {
    endpoint: EndpointBuilder,
    path: String,
    config: SocketConfig,
}

impl SocketBuilder {
    /// Routes topics matching `pattern` (`"room:lobby"`, or `"room:*"` for a
    /// prefix) to a clone of `channel`, one per join. Routes are tried in
    /// the order declared.
    ///
    /// # Panics
    ///
    /// If `*` appears elsewhere than at the end of `pattern`.
    pub fn channel<C: Channel>(mut self, pattern: &str, channel: C) -> Self {
        let pattern = TopicPattern::parse(pattern).unwrap_or_else(|e| panic!("{e}"));
        self.config.routes.push((pattern, Arc::new(Route(channel))));
        self
    }

    /// Which origins may connect. Default: [`CheckOrigin::SameHost`].
    pub fn check_origin(mut self, check: CheckOrigin) -> Self {
        self.config.check_origin = check;
        self
    }

    /// WebSocket limits and buffers.
    pub fn websocket(mut self, config: WebSocketConfig) -> Self {
        self.config.websocket = config;
        self
    }

    /// Enables the LongPoll transport at `<path>/longpoll`, for clients that
    /// cannot hold a WebSocket (phoenix.js's `LongPoll` transport and its
    /// `longPollFallbackMs` option). Off by default, as in Phoenix.
    ///
    /// Channels need no change: a LongPoll socket has the same channels,
    /// limits and outbox (the buffer polls drain, with the same slow-client
    /// policy), and [`Context::transport`](crate::Context::transport) tells
    /// them apart. Binary frames are never sent over LongPoll (PROTOCOL §6.6).
    pub fn longpoll(mut self, config: LongPollConfig) -> Self {
        self.config.longpoll = Some(config);
        self
    }

    /// Serves Fawkes's JavaScript client at `<path>/fawkes.js` (for a socket
    /// at `/socket`: `/socket/fawkes.js`), so pages load it with no build
    /// step: `import { Socket } from "/socket/fawkes.js"`. Off by default.
    /// Answers carry an `ETag` and `Cache-Control: no-cache`, so browsers
    /// revalidate and fetch a new version only after an upgrade. See
    /// [`crate::js`].
    pub fn client_js(mut self) -> Self {
        self.config.client_js = true;
        self
    }

    /// At most this many channels per socket; the next join is refused with
    /// `{"reason":"too many channels joined"}`. Default 100, as Phoenix.
    pub fn max_channels(mut self, max: usize) -> Self {
        self.config.max_channels = max;
        self
    }

    /// Bounds of each socket's queue of outgoing frames. When a client reads
    /// so slowly that its queue would exceed `frames` frames or `bytes`
    /// bytes, the frame is dropped and the socket closed with code 1013
    /// (the client reconnects). Default 4096 frames, 16 MiB.
    pub fn outbox_limits(mut self, frames: usize, bytes: usize) -> Self {
        self.config.outbox = OutboxLimits { frames, bytes };
        self
    }

    /// Bound of each channel's queue of messages. A client pushing faster
    /// than its channel handles waits (its socket stops reading); a channel
    /// whose intercepted broadcasts pile up beyond it closes its socket
    /// (code 1013). Default 1024.
    pub fn channel_mailbox(mut self, capacity: usize) -> Self {
        self.config.channel_mailbox = capacity.max(1);
        self
    }

    /// Mounts another socket handler.
    pub fn socket(self, path: &str, handler: impl Socket) -> SocketBuilder {
        self.finish().socket(path, handler)
    }

    fn finish(mut self) -> EndpointBuilder {
        self.endpoint.sockets.push((self.path, self.config));
        self.endpoint
    }

    /// Builds the router to serve and the endpoint handle.
    pub fn build(self) -> (Router, Endpoint) {
        self.finish().build()
    }
}
