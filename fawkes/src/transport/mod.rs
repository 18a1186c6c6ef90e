//! Transports: how a client's bytes reach its socket, and the socket's
//! frames reach the client.
//!
//! Owns WebSocket and LongPoll on axum (and [`memory`], for clients in the
//! same process), the origin check, `vsn` negotiation and frame size
//! limits. Knows nothing of channel logic: a transport decodes frames into
//! messages for the socket and writes out what the socket's outbox holds.

pub(crate) mod longpoll;
pub mod memory;
mod origin;
pub(crate) mod websocket;

use axum::response::{IntoResponse, Response};
use fawkes_protocol::Serializer;
use http::StatusCode;

pub use longpoll::LongPollConfig;
pub use memory::{MemoryConfig, MemoryTransport};
pub use origin::{CheckOrigin, InvalidOrigin, OriginPattern};
pub use websocket::WebSocketConfig;

use crate::socket::Params;

/// Why a connection was refused before reaching the application.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Only `GET` opens a WebSocket.
    #[error("method not allowed")]
    Method,
    /// The `Origin` header is not allowed.
    #[error("origin not allowed")]
    Origin,
    /// The `vsn` parameter names no supported serializer.
    #[error("unsupported vsn")]
    Vsn(#[source] Option<fawkes_protocol::VsnError>),
    /// The bearer token of `Sec-WebSocket-Protocol` is not valid base64.
    #[error("malformed bearer token")]
    Token,
    /// The request is not a valid WebSocket upgrade.
    #[error("invalid websocket upgrade: {0}")]
    Upgrade(String),
    /// The endpoint is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

impl TransportError {
    /// The HTTP answer of a refused WebSocket upgrade (PROTOCOL §1.5).
    pub fn status(&self) -> StatusCode {
        match self {
            TransportError::Method => StatusCode::BAD_REQUEST,
            TransportError::Upgrade(_) => StatusCode::BAD_REQUEST,
            TransportError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            TransportError::Origin | TransportError::Vsn(_) | TransportError::Token => {
                StatusCode::FORBIDDEN
            }
        }
    }
}

impl IntoResponse for TransportError {
    fn into_response(self) -> Response {
        tracing::info!(target: "fawkes::transport", error = %self, "connection refused");
        match &self {
            TransportError::Upgrade(reason) => (self.status(), reason.clone()).into_response(),
            _ => self.status().into_response(),
        }
    }
}

/// Picks the serializer from the `vsn` param; absent means `1.0.0`, a
/// non-string value (`vsn[]=…`) is refused (PROTOCOL §1.3).
pub(crate) fn negotiate(params: &Params) -> Result<Serializer, TransportError> {
    match params.get("vsn") {
        None => Ok(Serializer::V1),
        Some(v) => match v.as_str() {
            Some(s) => Serializer::negotiate(Some(s)).map_err(|e| TransportError::Vsn(Some(e))),
            None => Err(TransportError::Vsn(None)),
        },
    }
}
