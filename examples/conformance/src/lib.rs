//! The conformance app: the example that outside test suites (the official
//! Phoenix clients, load tools) drive over the network, so its behaviour is
//! fixed point by point. Run it with
//! `cargo run --release --bin fawkes-conformance` (`--port`, `--host`,
//! `--node-name`, `--pubsub redis://HOST:PORT`; it listens on
//! 127.0.0.1:4000 by default). Nodes started with the same `--pubsub` (and
//! `--pubsub-namespace`) form one cluster.
//!
//! A socket at `/socket` (WebSocket at `/socket/websocket`, LongPoll at
//! `/socket/longpoll`, serializers `1.0.x` and `2.0.x`; origins other than
//! `localhost` and `127.0.0.1` are refused). `connect`: `reject=true` or the bearer token `reject` refuses,
//! `user_id=U` names the socket `user_socket:U`. Channels:
//!
//! | topics | channel |
//! | --- | --- |
//! | `room:*` | [`Room`]: join (`room:denied` refused, `room:join_crash` panics), then a `user_entered` broadcast and a `joined` push; events `new_msg` (intercepted broadcast, `to` filtering, `transport` added), `new_msg_from`, `echo`, `error`, `noreply`, `boom` (panics), `stop`, `binary`; `you_left` pushed on terminate |
//! | `chat:*` | [`Chat`]: the talk's ChatChannel (`chat:secret` refused; every event broadcast as `new_msg`, no reply) |
//! | `presence:*` | [`Presence`]: tracks the socket's `user_id` (`anon-<n>` if anonymous) with `{"online_at", "device"}` (the join param `device`), then pushes `presence_state`; `update_meta` `{"device"}` updates the meta; every change is a `presence_diff` |
//! | `bench:*` | [`Bench`]: `ping` echoes, `broadcast` broadcasts `msg` |
//!
//! HTTP API: `GET /healthz`, `POST /api/broadcast` `{"topic","event","payload"}`,
//! `POST /api/disconnect` `{"socket_id"}`, `GET /api/presence/TOPIC` (the
//! topic's presence map), `GET /api/stats`; a malformed body gets 400 with
//! `{"error": …}`.

mod channels;
mod http_api;

use std::future::Future;
use std::time::Duration;

use fawkes::pubsub::redis::{RedisAdapter, RedisConfig, RedisUrlError, Routing};
use fawkes::{
    Assigns, CheckOrigin, ConnectInfo, Endpoint, LongPollConfig, Params, PresenceConfig, Refused,
    Socket, WebSocketConfig,
};

pub use channels::{AnonId, Bench, Chat, MAX_DEVICE_BYTES, Presence, Room, UserId, next_anon_id};

/// How the app is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node's name, for `/healthz`, `/api/stats` and logs.
    pub node_name: String,
    /// Close a WebSocket that received nothing for this long (default 60 s).
    pub idle_timeout: Duration,
    /// The LongPoll poll window (default 10 s): a poll waits this long for
    /// messages, and a session without a poll for 1.5 × this ends.
    pub longpoll_window: Duration,
    /// `redis://HOST:PORT` to join a cluster; `None` runs alone.
    pub pubsub: Option<String>,
    /// The cluster's Redis channel prefix (default `fawkes`): nodes with
    /// another namespace on the same Redis are another cluster.
    pub pubsub_namespace: String,
    /// How broadcasts are routed between nodes (default: by topic shard).
    pub pubsub_routing: Routing,
    /// Merge presence changes over this window into one diff per topic
    /// ([`fawkes::PresenceConfig::diff_batch_window`]); `None` (the default)
    /// sends one diff per change.
    pub presence_batch_window: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_name: random_node_name(),
            idle_timeout: Duration::from_secs(60),
            longpoll_window: Duration::from_secs(10),
            pubsub: None,
            pubsub_namespace: "fawkes".into(),
            pubsub_routing: Routing::default(),
            presence_batch_window: None,
        }
    }
}

/// A name unique enough to tell nodes apart: `fawkes-<pid>-<nanos>`.
pub fn random_node_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("fawkes-{}-{nanos:08x}", std::process::id())
}

/// The socket: `reject=true` (or the bearer token `reject`) refuses,
/// `user_id=U` names the socket `user_socket:U`.
pub struct UserSocket;

impl Socket for UserSocket {
    async fn connect(&self, params: &Params, info: &ConnectInfo) -> Result<Assigns, Refused> {
        if params.get_str("reject") == Some("true") || info.auth_token.as_deref() == Some("reject")
        {
            return Err(Refused::new());
        }
        let mut assigns = Assigns::new();
        match params.get_str("user_id") {
            Some(user_id) => {
                assigns.insert(UserId(user_id.to_owned()));
            }
            None => {
                assigns.insert(AnonId(next_anon_id()));
            }
        }
        Ok(assigns)
    }

    fn id(&self, assigns: &Assigns) -> Option<String> {
        assigns
            .get::<UserId>()
            .map(|u| format!("user_socket:{}", u.0))
    }
}

/// Builds the app: the router to serve and the endpoint handle. With
/// `opts.pubsub` it joins the cluster over Redis (retrying for as long as
/// Redis is unreachable); call it inside a tokio runtime.
///
/// # Errors
///
/// If `opts.pubsub` is not a Redis URL.
pub fn app(opts: &Options) -> Result<(axum::Router, Endpoint), RedisUrlError> {
    let check_origin =
        CheckOrigin::list(["//localhost", "//127.0.0.1"]).unwrap_or_else(|e| panic!("{e}"));
    let mut presence = PresenceConfig::default();
    if let Some(window) = opts.presence_batch_window {
        presence = presence.diff_batch_window(window);
    }
    let mut builder = Endpoint::builder().node_name(opts.node_name.clone());
    if let Some(url) = &opts.pubsub {
        let config = RedisConfig::new(url.clone())
            .namespace(opts.pubsub_namespace.clone())
            .routing(opts.pubsub_routing);
        builder = builder.adapter(RedisAdapter::new(config)?);
    }
    let (socket_router, endpoint) = builder
        .presence(presence)
        .socket("/socket", UserSocket)
        .channel("room:*", Room)
        .channel("chat:*", Chat)
        .channel("presence:*", Presence::default())
        .channel("bench:*", Bench)
        .check_origin(check_origin)
        .websocket(WebSocketConfig::default().idle_timeout(opts.idle_timeout))
        .longpoll(LongPollConfig::default().window(opts.longpoll_window))
        .build();
    let router = socket_router.merge(http_api::router(endpoint.clone(), opts.node_name.clone()));
    Ok((router, endpoint))
}

/// How long [`serve`] waits for the link to the cluster before taking
/// traffic anyway.
const CLUSTER_LINK_WAIT: Duration = Duration::from_secs(5);

/// Serves the app on `listener` (logging `listening on http://HOST:PORT`
/// once linked to the cluster, if any) until `shutdown` resolves, then closes every
/// socket (code 1012) after running their channels' terminate, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, endpoint) = app(&opts).map_err(std::io::Error::other)?;
    // In a cluster, take traffic once linked to the other nodes, so that
    // the first joins and broadcasts span the cluster; a Redis still
    // unreachable then is retried while the node serves its own clients.
    if opts.pubsub.is_some() && !endpoint.linked(CLUSTER_LINK_WAIT).await {
        tracing::warn!(node = %opts.node_name, "not linked to the cluster yet (redis unreachable?); serving local clients and retrying");
    }
    tracing::info!(node = %opts.node_name, "listening on http://{}", listener.local_addr()?);
    endpoint.serve(listener, router, shutdown).await
}
