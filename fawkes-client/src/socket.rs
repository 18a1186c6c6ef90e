//! The socket: one connection to a Phoenix endpoint, kept open as phoenix.js
//! keeps it (heartbeats, reconnects with back-off), carrying any number of
//! [`Channel`]s.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fawkes_protocol::Serializer;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, watch};

use crate::channel::{Channel, ChannelEvent};
use crate::driver::{Command, Driver};

/// phoenix.js's reconnect schedule: try `n` (from 1) waits `RECONNECT[n-1]`
/// ms, and 5000 ms after the list.
const RECONNECT_MS: [u64; 9] = [10, 50, 100, 150, 200, 250, 500, 1000, 2000];
/// phoenix.js's rejoin schedule, then 10000 ms.
const REJOIN_MS: [u64; 3] = [1000, 2000, 5000];

/// phoenix.js's default back-off between reconnect attempts; `tries` counts
/// from 1.
pub fn default_reconnect_after(tries: u32) -> Duration {
    let i = (tries as usize).wrapping_sub(1);
    Duration::from_millis(RECONNECT_MS.get(i).copied().unwrap_or(5000))
}

/// phoenix.js's default wait before rejoining an errored channel; `tries`
/// counts from 1.
pub fn default_rejoin_after(tries: u32) -> Duration {
    let i = (tries as usize).wrapping_sub(1);
    Duration::from_millis(REJOIN_MS.get(i).copied().unwrap_or(10_000))
}

/// A back-off schedule: the wait before try `n` (counting from 1).
pub type Backoff = Arc<dyn Fn(u32) -> Duration + Send + Sync>;

/// Connect params, evaluated again on every (re)connect as phoenix.js does.
pub type ParamsFn = Arc<dyn Fn() -> Value + Send + Sync>;

/// The serializer version asked for with the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Vsn {
    /// `1.0.0`: JSON objects, no binary payloads.
    V1,
    /// `2.0.0` (phoenix.js's default): JSON arrays and binary frames.
    #[default]
    V2,
}

impl Vsn {
    pub(crate) fn serializer(self) -> Serializer {
        match self {
            Vsn::V1 => Serializer::V1,
            Vsn::V2 => Serializer::V2,
        }
    }
}

/// The state of the connection, as phoenix.js's `connectionState()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// A WebSocket handshake is under way.
    Connecting,
    /// Connected: messages flow.
    Open,
    /// The client is closing the connection.
    Closing,
    /// No connection (never connected, disconnected, or waiting to reconnect).
    Closed,
}

/// A socket-level notification, as phoenix.js's `onOpen`, `onClose` and
/// `onError` callbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEvent {
    /// A connection opened.
    Open,
    /// The connection closed; the code and reason of the close frame, if any.
    Close {
        /// The close code (`None`: no close frame, the TCP connection ended).
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
    /// A connection attempt failed or the connection broke.
    Error(String),
}

/// A socket that cannot be built from its options.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// The endpoint is not a `ws://` or `wss://` URL.
    #[error("endpoint `{0}` is not a ws:// or wss:// url")]
    BadEndpoint(String),
    /// The connect params are not a JSON object.
    #[error("connect params must be a json object")]
    ParamsNotObject,
}

/// Every option of a [`Socket`]; built with [`Socket::builder`].
#[derive(Clone)]
pub(crate) struct Options {
    pub endpoint: String,
    pub params: ParamsFn,
    pub auth_token: Option<String>,
    pub vsn: Vsn,
    pub timeout: Duration,
    pub heartbeat_interval: Duration,
    pub reconnect_after: Backoff,
    pub rejoin_after: Backoff,
    pub jitter: f64,
    pub outbox_capacity: usize,
    pub push_buffer_capacity: usize,
    pub event_capacity: usize,
}

/// Builds a [`Socket`]; every option has phoenix.js's default.
#[must_use]
pub struct SocketBuilder {
    opts: Options,
    static_params: Option<Value>,
}

impl fmt::Debug for SocketBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketBuilder")
            .field("endpoint", &self.opts.endpoint)
            .field("vsn", &self.opts.vsn)
            .finish_non_exhaustive()
    }
}

impl SocketBuilder {
    /// Connect params, sent as the query string (nested objects in
    /// phoenix.js's bracket notation, `user[id]=1`). Default: none.
    pub fn params(mut self, params: Value) -> Self {
        self.static_params = Some(params);
        self
    }

    /// Connect params computed on every (re)connect, so a reconnect can
    /// present a fresh token (phoenix.js's `params` closure).
    pub fn params_with(mut self, params: impl Fn() -> Value + Send + Sync + 'static) -> Self {
        self.static_params = None;
        self.opts.params = Arc::new(params);
        self
    }

    /// A bearer token, offered as the `base64url.bearer.phx.<base64>`
    /// sub-protocol beside `phoenix` (phoenix.js's `authToken`). Default: none.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.opts.auth_token = Some(token.into());
        self
    }

    /// The serializer version. Default: [`Vsn::V2`].
    pub fn vsn(mut self, vsn: Vsn) -> Self {
        self.opts.vsn = vsn;
        self
    }

    /// The default timeout of joins, pushes and leaves, and of a connection
    /// handshake. Default: 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.opts.timeout = timeout;
        self
    }

    /// How often a heartbeat is sent; a heartbeat not answered within one
    /// interval closes the connection (code 1000, "heartbeat timeout") and
    /// reconnects. Default: 30 s.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.opts.heartbeat_interval = interval;
        self
    }

    /// The wait before reconnect try `n` (from 1). Default:
    /// [`default_reconnect_after`], phoenix.js's schedule.
    pub fn reconnect_after(mut self, f: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Self {
        self.opts.reconnect_after = Arc::new(f);
        self
    }

    /// The wait before rejoin try `n` (from 1) of an errored channel.
    /// Default: [`default_rejoin_after`], phoenix.js's schedule.
    pub fn rejoin_after(mut self, f: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Self {
        self.opts.rejoin_after = Arc::new(f);
        self
    }

    /// Random extra wait added to each reconnect, as a fraction of the
    /// back-off (0.0 to 1.0), so that clients dropped together do not come
    /// back together. phoenix.js has none. Default: 0.2.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.opts.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// Frames waiting to be written to the connection. When full, the server
    /// is not reading: the connection is closed and reconnected. Default: 1024.
    pub fn outbox_capacity(mut self, capacity: usize) -> Self {
        self.opts.outbox_capacity = capacity.max(1);
        self
    }

    /// Pushes a channel holds until it is joined (phoenix.js buffers them
    /// without limit). When full, a push fails at once with
    /// [`PushError::BufferFull`](crate::PushError::BufferFull). Default: 1024.
    pub fn push_buffer_capacity(mut self, capacity: usize) -> Self {
        self.opts.push_buffer_capacity = capacity;
        self
    }

    /// Events an event stream ([`Channel::on`], [`Channel::events`]) holds
    /// for a slow reader. When full, new events for that stream are dropped
    /// and logged, so one slow reader never stalls the socket. Also the
    /// capacity of [`Socket::messages`]. Default: 1024.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.opts.event_capacity = capacity.max(1);
        self
    }

    /// Builds the socket and starts its task, not yet connected (call
    /// [`Socket::connect`]).
    ///
    /// # Errors
    ///
    /// An endpoint that is not `ws://` or `wss://`, or params that are not a
    /// JSON object.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn build(mut self) -> Result<Socket, BuildError> {
        let endpoint = &self.opts.endpoint;
        if !(endpoint.starts_with("ws://") || endpoint.starts_with("wss://")) {
            return Err(BuildError::BadEndpoint(endpoint.clone()));
        }
        if let Some(params) = self.static_params.take() {
            if !params.is_object() {
                return Err(BuildError::ParamsNotObject);
            }
            self.opts.params = Arc::new(move || params.clone());
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(ConnectionState::Closed);
        let (events_tx, _) = broadcast::channel(SOCKET_EVENT_CAPACITY);
        let (messages_tx, _) = broadcast::channel(self.opts.event_capacity);
        let shared = Arc::new(SocketShared {
            events: events_tx,
            messages: messages_tx,
            state: state_rx,
        });
        let opts = Arc::new(self.opts);
        let driver = Driver::new(opts.clone(), cmd_rx, state_tx, shared.clone());
        let span = tracing::info_span!("fawkes_client_socket", endpoint = %opts.endpoint, vsn = opts.vsn.serializer().vsn());
        tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        Ok(Socket {
            inner: Arc::new(SocketHandle {
                cmd: cmd_tx,
                shared,
                opts,
            }),
        })
    }
}

/// Socket events a slow [`Socket::events`] reader may fall behind by before
/// it misses some (it then gets `Lagged`, as any tokio broadcast receiver).
const SOCKET_EVENT_CAPACITY: usize = 64;

/// What the socket's task and its handles share.
pub(crate) struct SocketShared {
    pub events: broadcast::Sender<SocketEvent>,
    pub messages: broadcast::Sender<ChannelEvent>,
    pub state: watch::Receiver<ConnectionState>,
}

pub(crate) struct SocketHandle {
    // Unbounded: commands come only from this API's own calls, each async
    // call waits for its answer, so the queue holds at most one command per
    // call in flight.
    pub cmd: mpsc::UnboundedSender<Command>,
    pub shared: Arc<SocketShared>,
    pub opts: Arc<Options>,
}

/// A connection to a Phoenix endpoint, as phoenix.js's `Socket`. Cheap to
/// clone; the task behind it ends when every `Socket` and [`Channel`] is
/// dropped.
#[derive(Clone)]
pub struct Socket {
    pub(crate) inner: Arc<SocketHandle>,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("endpoint", &self.inner.opts.endpoint)
            .field("state", &self.state())
            .finish()
    }
}

impl Socket {
    /// A builder for a socket at `endpoint`, e.g. `ws://127.0.0.1:4000/socket`
    /// (`/websocket` is appended, as phoenix.js does). `wss://` is accepted
    /// but this build has no TLS: such a connection fails and is retried.
    pub fn builder(endpoint: impl Into<String>) -> SocketBuilder {
        SocketBuilder {
            opts: Options {
                endpoint: endpoint.into(),
                params: Arc::new(|| Value::Object(Default::default())),
                auth_token: None,
                vsn: Vsn::V2,
                timeout: Duration::from_secs(10),
                heartbeat_interval: Duration::from_secs(30),
                reconnect_after: Arc::new(default_reconnect_after),
                rejoin_after: Arc::new(default_rejoin_after),
                jitter: 0.2,
                outbox_capacity: 1024,
                push_buffer_capacity: 1024,
                event_capacity: 1024,
            },
            static_params: None,
        }
    }

    /// Starts connecting (and reconnecting whenever the connection drops),
    /// unless already connected or connecting.
    pub fn connect(&self) {
        let _ = self.inner.cmd.send(Command::Connect);
    }

    /// Closes the connection with code 1000 and stops reconnecting; channels
    /// are errored and rejoin after the next [`connect`](Self::connect).
    /// Resolves once the close frame is queued.
    pub async fn disconnect(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .inner
            .cmd
            .send(Command::Disconnect { done: tx })
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        *self.inner.shared.state.borrow()
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        self.state() == ConnectionState::Open
    }

    /// A watch on the connection state, to wait for a change.
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.inner.shared.state.clone()
    }

    /// Open, close and error notifications from now on.
    pub fn events(&self) -> broadcast::Receiver<SocketEvent> {
        self.inner.shared.events.subscribe()
    }

    /// Every message received from now on, of every topic, including replies
    /// and heartbeat replies (phoenix.js's `onMessage`). A reader more than
    /// `event_capacity` messages behind misses the oldest and gets `Lagged`.
    pub fn messages(&self) -> broadcast::Receiver<ChannelEvent> {
        self.inner.shared.messages.subscribe()
    }

    /// A channel for `topic`, joined with `params` by [`Channel::join`].
    pub fn channel(&self, topic: impl Into<String>, params: Value) -> Channel {
        Channel::new(self.clone(), topic.into(), params)
    }

    /// The WebSocket URL this socket connects to now: the endpoint,
    /// `/websocket`, the params, then `vsn`.
    pub fn endpoint_url(&self) -> String {
        endpoint_url(&self.inner.opts)
    }
}

/// `<endpoint>/websocket?<params>&vsn=<vsn>`, as phoenix.js's `endPointURL`.
pub(crate) fn endpoint_url(opts: &Options) -> String {
    let mut url = format!("{}/websocket", opts.endpoint);
    let mut query = Vec::new();
    serialize_params(&(opts.params)(), None, &mut query);
    query.push(format!("vsn={}", opts.vsn.serializer().vsn()));
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(&query.join("&"));
    url
}

/// phoenix.js's `Ajax.serialize`: nested objects become `a[b]=c`.
fn serialize_params(value: &Value, parent: Option<&str>, out: &mut Vec<String>) {
    let Value::Object(map) = value else { return };
    for (key, val) in map {
        let key = match parent {
            Some(p) => format!("{p}[{key}]"),
            None => key.clone(),
        };
        match val {
            Value::Object(_) => serialize_params(val, Some(&key), out),
            Value::String(s) => out.push(format!(
                "{}={}",
                encode_uri_component(&key),
                encode_uri_component(s)
            )),
            other => out.push(format!(
                "{}={}",
                encode_uri_component(&key),
                encode_uri_component(&other.to_string())
            )),
        }
    }
}

/// JavaScript's `encodeURIComponent`.
fn encode_uri_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn schedules_are_phoenix_js() {
        let ms = |d: Duration| d.as_millis();
        let reconnect: Vec<_> = (1..=11).map(|n| ms(default_reconnect_after(n))).collect();
        assert_eq!(
            reconnect,
            [10, 50, 100, 150, 200, 250, 500, 1000, 2000, 5000, 5000]
        );
        let rejoin: Vec<_> = (1..=5).map(|n| ms(default_rejoin_after(n))).collect();
        assert_eq!(rejoin, [1000, 2000, 5000, 10000, 10000]);
    }

    #[test]
    fn url_is_endpoint_websocket_params_then_vsn() {
        let mut opts = Socket::builder("ws://h:4000/socket").opts;
        opts.params = Arc::new(|| json!({"token": "a b&c", "user": {"id": 1}}));
        assert_eq!(
            endpoint_url(&opts),
            "ws://h:4000/socket/websocket?token=a%20b%26c&user%5Bid%5D=1&vsn=2.0.0"
        );
        opts.vsn = Vsn::V1;
        opts.params = Arc::new(|| json!({}));
        assert_eq!(
            endpoint_url(&opts),
            "ws://h:4000/socket/websocket?vsn=1.0.0"
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let err = Socket::builder("http://h/socket").build().unwrap_err();
        assert_eq!(err, BuildError::BadEndpoint("http://h/socket".into()));
    }
}
