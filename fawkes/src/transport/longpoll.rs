//! The LongPoll transport at `<path>/longpoll` (PROTOCOL §6), for clients
//! that cannot hold a WebSocket.
//!
//! A *session* stands in for the connection: a task that owns the socket
//! (the same [`Conn`] as a WebSocket's) and whose outbox is the buffer that
//! polls drain. A `GET` without a usable token opens a session and answers
//! `410` with its token; a `GET` with the token waits up to the poll window
//! for frames; a `POST` carries client messages, handed to the session one
//! at a time. The token is signed with the endpoint's secret
//! ([`crate::token::Token`]), so a tampered, expired or foreign token never
//! names a session.
//!
//! Binary frames: the answer to a poll is JSON, so Phoenix cannot send
//! binary over LongPoll (§6.6), and neither do we: a binary push, reply or
//! broadcast for a LongPoll socket is dropped and logged. Channels that send
//! binary should check [`Context::transport`](crate::Context::transport).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use fawkes_protocol::{Frame, Message};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use super::{TransportError, negotiate};
use crate::endpoint::{Shared, SocketConfig};
use crate::socket::{CloseReason, Conn, ConnectInfo, Params, SocketShared, Transport};

/// Limits and timings of LongPoll sessions; enable the transport with
/// [`SocketBuilder::longpoll`](crate::SocketBuilder::longpoll).
///
/// How it works (Phoenix's protocol, PROTOCOL §6): a `GET` without a usable
/// token runs the origin check, `vsn` negotiation and `connect`, opens a
/// session and answers `{"status":410,"token":…}`; a `GET` with the token
/// waits up to [`window`](Self::window) for the socket's frames (`200` with
/// the messages, or `204`); a `POST` of `application/x-ndjson` lines hands
/// each message to the socket in order (`200`, or `408` when one is not
/// taken within the window). Every answer is HTTP 200 with the outcome in
/// the JSON body; refusals are `{"status":403}`.
///
/// Session tokens are signed with the endpoint's
/// [`secret_key_base`](crate::EndpointBuilder::secret_key_base): a tampered,
/// expired or foreign token names no session (a `GET` opens a new one, a
/// `POST` gets `410`). The token may come as the `token` query parameter
/// (phoenix.js ≤ 1.8) or the `X-Phoenix-Longpoll-Token` header (which wins).
///
/// A session's frames wait in the socket's outbox between polls, bounded by
/// [`SocketBuilder::outbox_limits`](crate::SocketBuilder::outbox_limits): a
/// client that stops polling while messages pile up is disconnected, as a
/// slow WebSocket reader is.
///
/// Binary frames are never sent: a poll answer is JSON, and phoenix.js
/// could not read them (Phoenix cannot send them either). A binary push,
/// reply or broadcast to a LongPoll socket is dropped and logged; channels
/// that send binary check [`Context::transport`](crate::Context::transport)
/// and answer otherwise. Binary *client* pushes (base64 ndjson lines) work.
///
/// ```
/// use std::time::Duration;
/// use fawkes::LongPollConfig;
///
/// let config = LongPollConfig::default().window(Duration::from_secs(5));
/// assert_eq!(config.max_body_size, 8_000_000);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LongPollConfig {
    /// How long a poll waits for messages before answering `204`, and how
    /// long a posted message may take to be handled before the answer is
    /// `408`. A session without a poll for 1.5 × this (checked as often)
    /// ends. Default 10 s, as Phoenix.
    pub window: Duration,
    /// Largest accepted `POST` body; a bigger one is answered HTTP 400.
    /// Default 8,000,000 bytes, as Phoenix.
    pub max_body_size: usize,
    /// How long a session token stays valid. Default two weeks, as Phoenix.
    pub token_max_age: Duration,
    /// At most this many live sessions per socket; further clients get HTTP
    /// 503 (phoenix.js retries) until some end. A session costs a few KiB
    /// and outlives an abandoning client by up to 3 windows, so this bounds
    /// what a flood of session opens can take. Default 100,000.
    pub max_sessions: usize,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        LongPollConfig {
            window: Duration::from_secs(10),
            max_body_size: 8_000_000,
            token_max_age: Duration::from_secs(14 * 24 * 3600),
            max_sessions: 100_000,
        }
    }
}

impl LongPollConfig {
    /// Sets [`window`](Self::window).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets [`max_body_size`](Self::max_body_size).
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// Sets [`max_sessions`](Self::max_sessions).
    pub fn max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max;
        self
    }

    /// Sets [`token_max_age`](Self::token_max_age).
    pub fn token_max_age(mut self, max_age: Duration) -> Self {
        self.token_max_age = max_age;
        self
    }
}

/// Lines of one `POST` beyond this are ignored (Phoenix ≥ 1.8.9).
const MAX_LINES: usize = 100;
/// What session tokens are signed for.
const TOKEN_SALT: &str = "fawkes longpoll session";
/// Pending requests per session; more wait (bounded by the window).
const INBOX: usize = 8;

/// A request handed to a session's task.
enum SessionMsg {
    /// A poll: the sender gets the frames once there are some.
    Poll(oneshot::Sender<VecDeque<Frame>>),
    /// A client message; the sender is told once it is handled.
    Dispatch(Box<Message>, oneshot::Sender<()>),
}

struct SessionHandle {
    token: Arc<str>,
    inbox: mpsc::Sender<SessionMsg>,
    shared: Arc<SocketShared>,
}

/// The live sessions of one mounted socket, by session id.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<Box<str>, SessionHandle>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, SessionHandle>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Option<(Arc<str>, mpsc::Sender<SessionMsg>, Arc<SocketShared>)> {
        self.lock()
            .get(id)
            .map(|s| (s.token.clone(), s.inbox.clone(), s.shared.clone()))
    }
}

/// Every answer of the LongPoll logic: HTTP 200 and the real status in the
/// JSON body (PROTOCOL §6.1).
fn json_answer(body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

fn status_answer(status: u16) -> Response {
    json_answer(format!("{{\"status\":{status}}}"))
}

#[derive(Serialize)]
struct PollAnswer<'a> {
    status: u16,
    token: &'a str,
    messages: Vec<Cow<'a, str>>,
}

fn poll_answer(status: u16, token: &str, frames: &VecDeque<Frame>) -> Response {
    // Our serializers only produce UTF-8 text frames.
    let messages = frames
        .iter()
        .filter_map(|frame| match frame {
            Frame::Text(bytes) => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
            Frame::SharedText(_) => String::from_utf8(frame.to_bytes().to_vec())
                .ok()
                .map(Cow::Owned),
            Frame::Binary(_) => None,
        })
        .collect();
    let body = PollAnswer {
        status,
        token,
        messages,
    };
    match serde_json::to_string(&body) {
        Ok(body) => json_answer(body),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The queued frames a poll can carry: binary ones are dropped (see
/// [`LongPollConfig`]), so that they never wake a poll with nothing to send.
fn take_text_frames(shared: &SocketShared) -> VecDeque<Frame> {
    let mut frames = shared.take_frames();
    let before = frames.len();
    frames.retain(Frame::is_text);
    if frames.len() < before {
        tracing::warn!(target: "fawkes::transport", socket_id = shared.id.as_deref(), dropped = before - frames.len(), "binary frames cannot be sent over longpoll, dropped");
    }
    frames
}

/// A request that is not LongPoll at all: HTTP 400, empty body.
fn bad_request(why: &str) -> Response {
    tracing::info!(target: "fawkes::transport", why, "bad longpoll request");
    let mut response = StatusCode::BAD_REQUEST.into_response();
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// The session token of a request: the `X-Phoenix-Longpoll-Token` header,
/// else the last `token` query parameter (a user's own `token` param comes
/// first in phoenix.js's URLs).
fn presented_token<'a>(headers: &'a HeaderMap, query: &str) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(value) = headers.get("x-phoenix-longpoll-token") {
        return value.to_str().ok().map(std::borrow::Cow::Borrowed);
    }
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "token")
        .last()
        .map(|(_, v)| std::borrow::Cow::Owned(v.into_owned()))
}

/// Handles a request on `<path>/longpoll`.
pub(crate) async fn handle(
    config: Arc<SocketConfig>,
    env: Arc<Shared>,
    sessions: Arc<Sessions>,
    req: Request<Body>,
) -> Response {
    let Some(lp) = config.longpoll.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // PROTOCOL §6.8: the origin check comes first, for every method.
    if !config.check_origin.allows(req.headers()) {
        tracing::info!(target: "fawkes::transport", "longpoll origin refused");
        return status_answer(403);
    }
    let method = req.method().clone();
    if method != Method::GET && method != Method::POST && method != Method::OPTIONS {
        return bad_request("method not allowed");
    }
    if method == Method::OPTIONS {
        return preflight(req.headers());
    }
    let session = presented_token(req.headers(), req.uri().query().unwrap_or(""))
        .and_then(|token| {
            env.token
                .verify::<String>(TOKEN_SALT, &token, lp.token_max_age)
                .ok()
        })
        .and_then(|id| sessions.get(&id));
    // Posts and opens are boxed: an idle client's pending poll is what
    // stays in memory, and it should not reserve their larger state.
    if method == Method::POST {
        return match session {
            Some((_, inbox, shared)) => Box::pin(post(&lp, inbox, shared, req)).await,
            None => status_answer(410),
        };
    }
    match session {
        Some((token, inbox, _)) => {
            // A poll waits up to the window: hold nothing of the request.
            drop(req);
            poll(&lp, &token, inbox).await
        }
        None => Box::pin(open(config, env, sessions, &lp, req)).await,
    }
}

/// CORS pre-flight (PROTOCOL §6.8).
fn preflight(headers: &HeaderMap) -> Response {
    let mut response = Response::new(Body::empty());
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("get, post, options"),
    );
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("3600"),
    );
    response
}

/// A new random session id: 128 bits, hex.
fn session_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    let mut id = String::with_capacity(32);
    for b in bytes {
        let _ = write!(id, "{b:02x}");
    }
    Ok(id)
}

/// Opens a session (PROTOCOL §6.3): origin (already checked), `vsn`,
/// `connect`, then `410` with the new token.
async fn open(
    config: Arc<SocketConfig>,
    env: Arc<Shared>,
    sessions: Arc<Sessions>,
    lp: &LongPollConfig,
    req: Request<Body>,
) -> Response {
    if env.root.is_cancelled() {
        return TransportError::ShuttingDown.into_response();
    }
    // Checked before `connect`, so a flood of opens costs little; a few
    // concurrent opens may overshoot by as many.
    if sessions.lock().len() >= lp.max_sessions {
        tracing::warn!(target: "fawkes::transport", max = lp.max_sessions, "too many longpoll sessions, refusing");
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let (parts, _body) = req.into_parts();
    let params = Params::from_query(parts.uri.query().unwrap_or(""));
    let serializer = match negotiate(&params) {
        Ok(s) => s,
        Err(err) => {
            tracing::info!(target: "fawkes::transport", error = %err, "longpoll session refused");
            return status_answer(403);
        }
    };
    let auth_token = parts
        .headers
        .get("x-phoenix-authtoken")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let info = ConnectInfo {
        peer: parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0),
        uri: parts.uri,
        auth_token,
        transport: Transport::LongPoll,
        headers: parts.headers,
    };
    let assigns = match config.handler.connect(&params, &info).await {
        Ok(assigns) => assigns,
        Err(_) => {
            tracing::info!(target: "fawkes::transport", "longpoll connect refused");
            return status_answer(403);
        }
    };
    let id = match session_id() {
        Ok(id) => id,
        Err(err) => {
            tracing::error!(target: "fawkes::transport", %err, "no randomness for a session id");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let token: Arc<str> = env.token.sign(TOKEN_SALT, &id).into();
    let socket_id = config.handler.id(&assigns).map(Arc::<str>::from);
    let shared = Arc::new(SocketShared::new(
        serializer,
        Transport::LongPoll,
        socket_id,
        assigns,
        env.root.child_token(),
        config.outbox,
    ));
    let (tx, rx) = mpsc::channel(INBOX);
    let span = tracing::debug_span!(
        "socket",
        socket_id = shared.id.as_deref(),
        transport = "longpoll",
        vsn = serializer.vsn()
    );
    let id: Box<str> = id.into();
    sessions.lock().insert(
        id.clone(),
        SessionHandle {
            token: token.clone(),
            inbox: tx,
            shared: shared.clone(),
        },
    );
    let conn = Conn::new(shared, config, env.clone());
    let session = Session {
        conn,
        inbox: rx,
        sessions,
        id,
        inactivity: lp.window.mul_f64(1.5),
    };
    env.tracker.spawn(session.run().instrument(span));
    poll_answer(410, &token, &VecDeque::new())
}

/// Waits for frames (PROTOCOL §6.4).
async fn poll(lp: &LongPollConfig, token: &str, inbox: mpsc::Sender<SessionMsg>) -> Response {
    let deadline = Instant::now() + lp.window;
    let (tx, rx) = oneshot::channel();
    let sent = tokio::time::timeout_at(deadline, inbox.send(SessionMsg::Poll(tx))).await;
    if let Ok(Ok(())) = sent {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(frames)) if !frames.is_empty() => return poll_answer(200, token, &frames),
            // The session ended with nothing left to send.
            Ok(Ok(_)) => return poll_answer(204, token, &VecDeque::new()),
            // A newer poll took over: this one ends at its own window end.
            Ok(Err(_)) => tokio::time::sleep_until(deadline).await,
            Err(_) => {}
        }
    }
    poll_answer(204, token, &VecDeque::new())
}

/// Hands the posted messages to the session, one at a time (PROTOCOL §6.5).
async fn post(
    lp: &LongPollConfig,
    inbox: mpsc::Sender<SessionMsg>,
    shared: Arc<SocketShared>,
    req: Request<Body>,
) -> Response {
    let ndjson = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-ndjson"));
    let body = match axum::body::to_bytes(req.into_body(), lp.max_body_size).await {
        Ok(body) => body,
        Err(_) => return bad_request("body unreadable or too large"),
    };
    let lines: Vec<Bytes> = if ndjson {
        split_lines(&body)
    } else {
        vec![body]
    };
    for line in lines {
        let msg = match decode(&shared, line, ndjson) {
            Ok(msg) => msg,
            Err(why) => {
                // Like a malformed WebSocket frame: the connection ends.
                tracing::warn!(target: "fawkes::transport", socket_id = shared.id.as_deref(), why, "malformed longpoll message, closing session");
                shared.close(CloseReason::BadFrame);
                return bad_request(why);
            }
        };
        let (ack, acked) = oneshot::channel();
        let handled = tokio::time::timeout(lp.window, async {
            inbox
                .send(SessionMsg::Dispatch(Box::new(msg), ack))
                .await
                .ok()?;
            acked.await.ok()
        })
        .await;
        match handled {
            Ok(Some(())) => {}
            Ok(None) => return status_answer(410),
            Err(_) => return status_answer(408),
        }
    }
    status_answer(200)
}

/// The ndjson lines of a body: `\n` or `\r\n` separated, empty lines
/// skipped, at most [`MAX_LINES`].
fn split_lines(body: &Bytes) -> Vec<Bytes> {
    body.split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
        .take(MAX_LINES)
        .map(|line| body.slice_ref(line))
        .collect()
}

/// Decodes one posted message: JSON text, or (ndjson lines not starting
/// like JSON) a base64 binary push.
fn decode(shared: &SocketShared, line: Bytes, ndjson: bool) -> Result<Message, &'static str> {
    let serializer = shared.serializer;
    let text = !ndjson || matches!(line.first(), Some(b'[' | b'{'));
    if text {
        let text = std::str::from_utf8(&line).map_err(|_| "invalid utf-8")?;
        serializer
            .decode_text(text)
            .map_err(|_| "malformed message")
    } else {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&line)
            .map_err(|_| "malformed base64 line")?;
        serializer
            .decode_binary(Bytes::from(bytes))
            .map_err(|_| "malformed binary message")
    }
}

/// A session's task: owns the socket, answers polls, handles posted
/// messages, and ends when no poll came for the inactivity period.
struct Session {
    conn: Conn,
    inbox: mpsc::Receiver<SessionMsg>,
    sessions: Arc<Sessions>,
    id: Box<str>,
    inactivity: Duration,
}

impl Session {
    async fn run(mut self) {
        let shared = self.conn.shared.clone();
        let mut last_poll = Instant::now();
        let mut check = tokio::time::interval_at(last_poll + self.inactivity, self.inactivity);
        let mut poll: Option<oneshot::Sender<VecDeque<Frame>>> = None;
        let reason = loop {
            let events = shared.take_events();
            if !events.is_empty() {
                self.conn.handle_events(events);
            }
            if let Some(waiting) = poll.take_if(|p| !p.is_closed()) {
                let frames = take_text_frames(&shared);
                if frames.is_empty() {
                    poll = Some(waiting);
                } else if let Err(frames) = waiting.send(frames) {
                    // The client gave up meanwhile: keep them for the next poll.
                    shared.requeue(frames);
                }
            }
            if shared.cancel.is_cancelled() {
                break shared.close_reason().unwrap_or(CloseReason::Shutdown);
            }
            tokio::select! {
                biased;
                _ = shared.cancel.cancelled() => {}
                _ = shared.notified() => {}
                msg = self.inbox.recv() => match msg {
                    Some(SessionMsg::Poll(waiting)) => {
                        last_poll = Instant::now();
                        // A newer poll supersedes an older one.
                        poll = Some(waiting);
                    }
                    Some(SessionMsg::Dispatch(msg, ack)) => {
                        Box::pin(self.conn.handle(*msg)).await;
                        let _ = ack.send(());
                    }
                    None => break CloseReason::Closed,
                },
                _ = check.tick() => {
                    let polling = poll.as_ref().is_some_and(|p| !p.is_closed());
                    if !polling && last_poll.elapsed() >= self.inactivity {
                        break CloseReason::Idle;
                    }
                }
            }
        };
        // Unregister first, so that new requests see the session gone.
        self.sessions.lock().remove(&self.id);
        shared.close(reason);
        // Requests that raced with the end: polls get an empty answer at
        // once, posts (their acks dropped) a 410.
        self.inbox.close();
        while let Ok(msg) = self.inbox.try_recv() {
            if let SessionMsg::Poll(waiting) = msg {
                let _ = waiting.send(VecDeque::new());
            }
        }
        let reason = shared.close_reason().unwrap_or(reason);
        tracing::debug!(target: "fawkes::transport", ?reason, "longpoll session ended");
        if let Some(waiting) = poll {
            let _ = waiting.send(take_text_frames(&shared));
        }
        drop(self.conn);
    }
}
