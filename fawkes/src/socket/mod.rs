//! Sockets: one per client connection, multiplexing its channels.
//!
//! Owns the [`Socket`] handler trait (`connect` with params and connect info,
//! `id`), topic routing (`"room:*"`), and the per-connection dispatch: join,
//! leave, heartbeat, duplicate joins, frames for unjoined topics. Knows
//! nothing of how bytes travel: transports feed it decoded messages and drain
//! its outbox.
//!
//! ```
//! use fawkes::{Assigns, ConnectInfo, Params, Refused, Socket};
//!
//! #[derive(Clone)]
//! struct UserId(String);
//!
//! struct UserSocket;
//!
//! impl Socket for UserSocket {
//!     async fn connect(&self, params: &Params, _info: &ConnectInfo) -> Result<Assigns, Refused> {
//!         match params.get_str("user_id") {
//!             Some(id) => Ok(Assigns::new().with(UserId(id.to_owned()))),
//!             None => Err(Refused::new()),
//!         }
//!     }
//!
//!     fn id(&self, assigns: &Assigns) -> Option<String> {
//!         assigns.get::<UserId>().map(|u| format!("user_socket:{}", u.0))
//!     }
//! }
//! ```

mod conn;
mod params;
mod router;
mod shared;

use std::any::{Any, TypeId};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use fawkes_protocol::{Frame, Payload, Ref};
use http::{HeaderMap, StatusCode, Uri};

pub(crate) use conn::Conn;
pub use params::Params;
pub use router::{InvalidPattern, TopicPattern};
pub(crate) use shared::{CloseReason, OutboxLimits, SocketEvent, SocketShared};

/// Authenticates connections and names them.
///
/// `connect` runs once per connection, before the WebSocket upgrade (or when
/// a LongPoll session opens), with the query params and what the request
/// says about the client.
pub trait Socket: Send + Sync + 'static {
    /// Accepts the connection with its per-socket state, or refuses it
    /// (HTTP 403 by default, see [`Refused`]).
    fn connect(
        &self,
        params: &Params,
        info: &ConnectInfo,
    ) -> impl Future<Output = Result<Assigns, Refused>> + Send;

    /// Names the socket, so that every socket of, say, one user can be
    /// disconnected at once with [`Endpoint::disconnect`](crate::Endpoint::disconnect).
    /// `None` (the default) makes it anonymous.
    fn id(&self, assigns: &Assigns) -> Option<String> {
        let _ = assigns;
        None
    }
}

/// [`Socket`] with its future boxed, so endpoints can hold any handler.
pub(crate) trait DynSocket: Send + Sync + 'static {
    fn connect<'a>(
        &'a self,
        params: &'a Params,
        info: &'a ConnectInfo,
    ) -> Pin<Box<dyn Future<Output = Result<Assigns, Refused>> + Send + 'a>>;
    fn id(&self, assigns: &Assigns) -> Option<String>;
}

impl<S: Socket> DynSocket for S {
    fn connect<'a>(
        &'a self,
        params: &'a Params,
        info: &'a ConnectInfo,
    ) -> Pin<Box<dyn Future<Output = Result<Assigns, Refused>> + Send + 'a>> {
        Box::pin(Socket::connect(self, params, info))
    }

    fn id(&self, assigns: &Assigns) -> Option<String> {
        Socket::id(self, assigns)
    }
}

/// Per-socket state set by `connect` and read by every channel of the socket:
/// a map from type to value.
///
/// ```
/// use fawkes::Assigns;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct UserId(String);
///
/// let assigns = Assigns::new().with(UserId("42".into()));
/// assert_eq!(assigns.get::<UserId>(), Some(&UserId("42".into())));
/// ```
#[derive(Clone, Default)]
pub struct Assigns(Box<[(TypeId, Box<dyn AssignValue>)]>);

/// A value of [`Assigns`]: any `Clone + Send + Sync` type.
trait AssignValue: Any + Send + Sync {
    fn clone_box(&self) -> Box<dyn AssignValue>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Clone + Send + Sync + 'static> AssignValue for T {
    fn clone_box(&self) -> Box<dyn AssignValue> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Clone for Box<dyn AssignValue> {
    fn clone(&self) -> Self {
        // `(**self)`: the boxed value's impl, not the box's own.
        (**self).clone_box()
    }
}

impl Assigns {
    /// Empty assigns.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value, replacing one of the same type.
    pub fn with<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.insert(value);
        self
    }

    /// Inserts a value, returning the one of the same type it replaces.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        let id = TypeId::of::<T>();
        if let Some((_, old)) = self.0.iter_mut().find(|(t, _)| *t == id) {
            let old = (**old).as_any_mut().downcast_mut::<T>()?;
            return Some(std::mem::replace(old, value));
        }
        // A boxed slice, exactly as long as it needs: a socket keeps its
        // assigns for its whole life, and most hold one or two values.
        let mut entries = std::mem::take(&mut self.0).into_vec();
        entries.reserve_exact(1);
        entries.push((id, Box::new(value)));
        self.0 = entries.into_boxed_slice();
        None
    }

    /// The value of type `T`, if any.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        let (_, value) = self.0.iter().find(|(t, _)| *t == id)?;
        (**value).as_any().downcast_ref()
    }
}

impl std::fmt::Debug for Assigns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assigns")
            .field("len", &self.0.len())
            .finish()
    }
}

/// The transport a socket is connected over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// RFC 6455 WebSocket at `<path>/websocket`.
    WebSocket,
    /// HTTP long-polling at `<path>/longpoll`.
    LongPoll,
}

impl Transport {
    /// `"websocket"` or `"longpoll"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::LongPoll => "longpoll",
        }
    }
}

/// What the connecting request says about the client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectInfo {
    /// The request headers.
    pub headers: HeaderMap,
    /// The client's address, when the server was started with
    /// `into_make_service_with_connect_info::<SocketAddr>()` (as
    /// [`Endpoint::serve`](crate::Endpoint::serve) does).
    pub peer: Option<SocketAddr>,
    /// The request URI.
    pub uri: Uri,
    /// The bearer token of phoenix.js's `authToken` option: decoded from
    /// `Sec-WebSocket-Protocol` on WebSocket (PROTOCOL §1.6), the
    /// `X-Phoenix-AuthToken` header on LongPoll.
    pub auth_token: Option<String>,
    /// The transport.
    pub transport: Transport,
}

/// A refused connection. WebSocket answers with `status` (403 unless set);
/// LongPoll always answers `{"status":403}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The HTTP status of a refused WebSocket upgrade.
    pub status: StatusCode,
}

impl Refused {
    /// A plain refusal: HTTP 403.
    pub fn new() -> Self {
        Refused {
            status: StatusCode::FORBIDDEN,
        }
    }

    /// A refusal with another HTTP status (e.g. 429 for a rate limit).
    pub fn with_status(status: StatusCode) -> Self {
        Refused { status }
    }
}

impl Default for Refused {
    fn default() -> Self {
        Self::new()
    }
}

/// Encodes a `phx_reply` for `socket`, logging what cannot be encoded.
pub(crate) fn reply_frame(
    socket: &SocketShared,
    join_ref: Option<Ref>,
    ref_: Option<Ref>,
    topic: &str,
    status: &str,
    response: Payload,
) -> Option<Frame> {
    let reply = fawkes_protocol::Reply {
        join_ref,
        ref_,
        topic: topic.to_owned(),
        status: status.to_owned(),
        response,
    };
    match socket.serializer.encode_reply(&reply) {
        Ok(frame) => Some(frame),
        Err(err) => {
            tracing::warn!(target: "fawkes::socket", topic, %err, "reply dropped");
            None
        }
    }
}
