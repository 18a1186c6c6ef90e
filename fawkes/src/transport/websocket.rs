//! The WebSocket transport at `<path>/websocket`: handshake checks, then one
//! task per connection that reads frames into the socket and writes its
//! outbox out in batches.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use base64::Engine;
use fawkes_protocol::{DecodeError, Frame};
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::WaitForCancellationFuture;
use tracing::Instrument;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame as WsFrame};
use tungstenite::protocol::{Role, WebSocketConfig as WsConfig};
use tungstenite::{Message as WsMessage, Utf8Bytes};

use super::{TransportError, negotiate};
use crate::endpoint::{Shared, SocketConfig};
use crate::socket::{CloseReason, Conn, ConnectInfo, Params, SocketShared, Transport};

/// Limits and buffers of WebSocket connections.
///
/// The defaults keep an idle connection to a few KiB: the usual 128 KiB read
/// buffer per connection would dominate memory (and cost a memset per read).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WebSocketConfig {
    /// Largest accepted frame or message; a bigger one closes the connection
    /// with code 1009. Default 1 MiB.
    pub max_frame_size: usize,
    /// Close a connection that received nothing (not even a heartbeat) for
    /// this long, with code 1002. Default 60 s, as Phoenix.
    pub idle_timeout: Duration,
    /// Bytes read from the network at once. Default 1 KiB.
    pub read_buffer_size: usize,
    /// Outgoing bytes gathered before a write. Default 4 KiB.
    pub write_buffer_size: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_frame_size: 1 << 20,
            idle_timeout: Duration::from_secs(60),
            read_buffer_size: 1024,
            write_buffer_size: 4096,
        }
    }
}

impl WebSocketConfig {
    /// Sets [`max_frame_size`](Self::max_frame_size).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }
}

/// An upgraded connection.
type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Larger frames are sent in fragments of this size (RFC 6455 §5.4), since
/// the WebSocket's write buffer keeps the capacity of the largest frame it
/// ever held: a 1 MB presence list would otherwise stay allocated on every
/// connection that received one.
const FRAGMENT: usize = 8 * 1024;

const BEARER_PREFIX: &str = "base64url.bearer.phx.";

/// The bearer token among the offered sub-protocols (PROTOCOL §1.6): standard
/// base64 alphabet, padding optional, despite the `base64url` prefix.
fn bearer_token(headers: &HeaderMap) -> Result<Option<String>, TransportError> {
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for proto in offered {
        if let Some(encoded) = proto.strip_prefix(BEARER_PREFIX) {
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            let bytes = engine.decode(encoded).map_err(|_| TransportError::Token)?;
            return String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| TransportError::Token);
        }
    }
    Ok(None)
}

fn header_contains(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains(token))
}

fn header_is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Checks an HTTP/1.1 upgrade request (RFC 6455 §4.2.1); the key to answer
/// and the upgrade to await.
fn upgrade_request(
    parts: &mut http::request::Parts,
) -> Result<(HeaderValue, OnUpgrade), TransportError> {
    let refuse = |reason: &str| Err(TransportError::Upgrade(reason.to_owned()));
    if !header_contains(&parts.headers, header::CONNECTION, "upgrade") {
        return refuse("Connection header did not include 'upgrade'");
    }
    if !header_is(&parts.headers, header::UPGRADE, "websocket") {
        return refuse("`Upgrade` header did not include 'websocket'");
    }
    let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return refuse("`Sec-WebSocket-Key` header missing");
    };
    if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return refuse("`Sec-WebSocket-Version` header did not include '13'");
    }
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return refuse("WebSocket request couldn't be upgraded since no upgrade state was present");
    };
    Ok((key, on_upgrade))
}

fn offers_phoenix(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "phoenix")
}

/// Handles a request on `<path>/websocket`.
pub(crate) async fn handle(
    config: Arc<SocketConfig>,
    env: Arc<Shared>,
    req: Request<axum::body::Body>,
) -> Response {
    match accept(config, env, req).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn accept(
    config: Arc<SocketConfig>,
    env: Arc<Shared>,
    req: Request<axum::body::Body>,
) -> Result<Response, TransportError> {
    if req.method() != Method::GET {
        return Err(TransportError::Method);
    }
    if env.root.is_cancelled() {
        return Err(TransportError::ShuttingDown);
    }
    let (mut parts, _body) = req.into_parts();
    // PROTOCOL §1.4: the origin check runs before anything else.
    if !config.check_origin.allows(&parts.headers) {
        return Err(TransportError::Origin);
    }
    let params = Params::from_query(parts.uri.query().unwrap_or(""));
    let serializer = negotiate(&params)?;
    let auth_token = bearer_token(&parts.headers)?;
    let (key, on_upgrade) = upgrade_request(&mut parts)?;
    let info = ConnectInfo {
        peer: parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0),
        uri: parts.uri,
        auth_token,
        transport: Transport::WebSocket,
        headers: parts.headers,
    };
    let assigns = match config.handler.connect(&params, &info).await {
        Ok(assigns) => assigns,
        Err(refused) => {
            tracing::info!(target: "fawkes::transport", status = %refused.status, "connect refused");
            return Ok(refused.status.into_response());
        }
    };
    let id = config.handler.id(&assigns).map(Arc::<str>::from);
    let ws_config = &config.websocket;
    let ws_config = WsConfig::default()
        .read_buffer_size(ws_config.read_buffer_size)
        .write_buffer_size(ws_config.write_buffer_size)
        // Bounded by the outbox instead: a large broadcast must never fail
        // the write (DESIGN: max_write_buffer_size > write buffer + frame).
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(config.websocket.max_frame_size))
        .max_frame_size(Some(config.websocket.max_frame_size));
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) =
        HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key.as_bytes()))
    {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if offers_phoenix(&info.headers) {
        // Browsers abort when offered protocols get no answer (PROTOCOL §1.6).
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("phoenix"),
        );
    }
    let shared = Arc::new(SocketShared::new(
        serializer,
        Transport::WebSocket,
        id,
        assigns,
        env.root.child_token(),
        config.outbox,
    ));
    let span = tracing::debug_span!(
        "socket",
        socket_id = shared.id.as_deref(),
        transport = "websocket",
        vsn = serializer.vsn()
    );
    let tracker = env.tracker.clone();
    tracker.spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(target: "fawkes::transport", %err, "upgrade failed");
                    return;
                }
            };
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(ws_config),
            )
            .await;
            let conn = Conn::new(shared, config, env);
            run(ws, conn).await;
        }
        .instrument(span),
    );
    Ok(response)
}

/// The connection task.
///
/// Memory: the task's future is allocated once at its largest state and
/// kept for the connection's life. Reading, writing and closing are boxed
/// so an idle connection does not reserve their state (about 1 KiB).
///
/// Time, per delivery: the cancellation is registered once, not per wake
/// (each fresh `cancelled()` locks the token's mutex to register and
/// unregister), and a write that completes at once arms no timer.
async fn run(mut ws: WebSocket, mut conn: Conn) {
    let shared = conn.shared.clone();
    let idle_timeout = conn.config.websocket.idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let cancelled = shared.cancel.cancelled();
    tokio::pin!(cancelled);
    let mut cancel_seen = false;
    let reason = loop {
        let frames = {
            let (batch, closing) = shared.take_and_closing();
            if !batch.events.is_empty() {
                conn.handle_events(batch.events);
            }
            if closing || cancel_seen {
                break shared.close_reason().unwrap_or(CloseReason::Shutdown);
            }
            batch.frames
        };
        if frames.is_empty() {
            // Moved on every path: the task keeps no room for it across
            // the wait (a task's size is rounded up to 128 bytes).
            drop(frames);
        } else {
            let written = Box::pin(write_step(
                &mut ws,
                frames,
                cancelled.as_mut(),
                idle_timeout,
            ))
            .await;
            match written {
                Some(Ok(())) => {}
                Some(Err(reason)) => break reason,
                None => {
                    cancel_seen = true;
                    continue;
                }
            }
        }
        tokio::select! {
            biased;
            _ = &mut cancelled => cancel_seen = true,
            _ = shared.notified() => {}
            msg = ws.next() => {
                idle.as_mut().reset(Instant::now() + idle_timeout);
                if let Err(reason) = Box::pin(receive_ready(&mut ws, &mut conn, msg)).await {
                    break reason;
                }
            }
            _ = &mut idle => break CloseReason::Idle,
        }
    };
    // First reason wins: channels terminate with it.
    shared.close(reason);
    let reason = shared.close_reason().unwrap_or(reason);
    tracing::debug!(target: "fawkes::transport", ?reason, "websocket closing");
    drop(conn);
    Box::pin(close(&mut ws, reason)).await;
}

/// Writes a batch; `None` when the connection is cancelled first.
async fn write_step(
    ws: &mut WebSocket,
    frames: impl IntoIterator<Item = Frame>,
    mut cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
    idle_timeout: Duration,
) -> Option<Result<(), CloseReason>> {
    let write = write_batch(ws, frames);
    tokio::pin!(write);
    // Most writes complete at once: no timer to arm then.
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return Some(r);
    }
    tokio::select! {
        biased;
        _ = &mut cancelled => None,
        r = &mut write => Some(r),
        // A client that does not read for the idle timeout is gone.
        _ = tokio::time::sleep(idle_timeout) => Some(Err(CloseReason::SlowClient)),
    }
}

/// Frames handled in one go when the client pipelines: their replies are
/// then written together, not one write each.
const READ_BATCH: usize = 32;

/// Feeds a received frame to the socket, then the frames already read
/// behind it (up to [`READ_BATCH`]), without waiting for more.
async fn receive_ready(
    ws: &mut WebSocket,
    conn: &mut Conn,
    msg: Option<Result<WsMessage, tungstenite::Error>>,
) -> Result<(), CloseReason> {
    receive(conn, msg).await?;
    for _ in 1..READ_BATCH {
        if conn.shared.is_closed() {
            break;
        }
        match ws.next().now_or_never() {
            Some(msg) => receive(conn, msg).await?,
            None => break,
        }
    }
    Ok(())
}

/// Feeds one received frame to the socket.
async fn receive(
    conn: &mut Conn,
    msg: Option<Result<WsMessage, tungstenite::Error>>,
) -> Result<(), CloseReason> {
    let serializer = conn.shared.serializer;
    let decoded = match msg {
        None | Some(Ok(WsMessage::Close(_))) => return Err(CloseReason::Closed),
        Some(Ok(WsMessage::Text(text))) => serializer.decode_text(text.as_str()),
        Some(Ok(WsMessage::Binary(bytes))) => serializer.decode_binary(bytes),
        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => return Ok(()),
        Some(Err(err)) => return Err(classify(err)),
    };
    match decoded {
        Ok(msg) => {
            conn.handle(msg).await;
            Ok(())
        }
        Err(err) => {
            log_bad_frame(&conn.shared, &err);
            Err(CloseReason::BadFrame)
        }
    }
}

fn log_bad_frame(shared: &SocketShared, err: &DecodeError) {
    tracing::warn!(target: "fawkes::transport", socket_id = shared.id.as_deref(), error = %err, "malformed frame, closing");
}

fn classify(err: tungstenite::Error) -> CloseReason {
    match err {
        tungstenite::Error::Capacity(e) => {
            tracing::warn!(target: "fawkes::transport", error = %e, "frame too large, closing");
            CloseReason::TooLarge
        }
        tungstenite::Error::Utf8(_) => {
            tracing::warn!(target: "fawkes::transport", "invalid utf-8 in text frame, closing");
            CloseReason::BadFrame
        }
        tungstenite::Error::Protocol(e) => {
            tracing::warn!(target: "fawkes::transport", error = %e, "websocket protocol error, closing");
            CloseReason::ProtocolError
        }
        err => {
            tracing::debug!(target: "fawkes::transport", error = %err, "websocket read failed");
            CloseReason::Closed
        }
    }
}

/// Writes every queued frame and flushes once: one write for the batch
/// instead of one per frame. Frames are handed over as they are (text
/// frames are UTF-8 by construction), larger ones in fragments, and the
/// shared payload of a [`Frame::SharedText`] without being copied first.
async fn write_batch(
    ws: &mut WebSocket,
    frames: impl IntoIterator<Item = Frame>,
) -> Result<(), CloseReason> {
    for frame in frames {
        write_frame(ws, &frame)
            .await
            .map_err(|_| CloseReason::Closed)?;
    }
    ws.flush().await.map_err(|_| CloseReason::Closed)
}

/// Feeds one frame: its parts in fragments of at most [`FRAGMENT`] bytes,
/// the first with the frame's opcode, the last final.
async fn write_frame(ws: &mut WebSocket, frame: &Frame) -> Result<(), tungstenite::Error> {
    let mut opcode = OpCode::Data(if frame.is_text() {
        Data::Text
    } else {
        Data::Binary
    });
    let mut left = frame.len();
    if left == 0 {
        let empty = WsFrame::message(bytes::Bytes::new(), opcode, true);
        return ws.feed(WsMessage::Frame(empty)).await;
    }
    for part in frame.parts() {
        let mut at = 0;
        while at < part.len() {
            let end = part.len().min(at + FRAGMENT);
            left -= end - at;
            let fragment = WsFrame::message(part.slice(at..end), opcode, left == 0);
            ws.feed(WsMessage::Frame(fragment)).await?;
            opcode = OpCode::Data(Data::Continue);
            at = end;
        }
    }
    Ok(())
}

/// Sends the close frame and waits briefly for the client's, so that unread
/// data does not turn the close into a reset.
async fn close(ws: &mut WebSocket, reason: CloseReason) {
    if reason == CloseReason::Closed {
        // Sends the reply tungstenite queued to the client's close frame.
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
        return;
    }
    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: Utf8Bytes::from_static(""),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if ws.send(WsMessage::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            if matches!(msg, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}
