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
//! Clusters need no sticky sessions: the token names the node that holds
//! the session, and a request that lands on another node is forwarded
//! there as a node message, answered there by the same logic, and the
//! answer sent back (see [`LongPollConfig`]). The receiving node reads the
//! node's name from the token without verifying it; only the session's
//! node, with its own secret, verifies it.
//!
//! Binary frames: the answer to a poll is JSON, so Phoenix cannot send
//! binary over LongPoll (§6.6), and neither do we: a binary push, reply or
//! broadcast for a LongPoll socket is dropped and logged. Channels that send
//! binary should check [`Context::transport`](crate::Context::transport).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use fawkes_protocol::{Frame, Message};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use super::{TransportError, negotiate};
use crate::endpoint::{Shared, SocketConfig};
use crate::pubsub::NodeMessage;
use crate::socket::{CloseReason, Conn, ConnectInfo, Params, SocketShared, Transport};
use crate::token;

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
/// **In a cluster** (an [adapter](crate::EndpointBuilder::adapter) links the
/// nodes) a load balancer may send each request to any node: no sticky
/// sessions. A token names the node that holds its session; a node that
/// receives a request for another node's session forwards it there over
/// the adapter, and answers the client with what the session's node
/// answered, the same JSON it would have given directly. Nodes need not
/// share a secret for this: the receiving node only reads the node's name
/// from the token, to route it, and the session's node verifies the token
/// with its own secret. When the session's node refuses the token, has no
/// such session, or does not answer within the window plus 2 s (stopped,
/// or Redis unreachable), a `GET` opens a new session on the receiving
/// node and a `POST` gets `410`, as for an unknown token on one node
/// (phoenix.js then reconnects and rejoins its channels). A forwarded
/// `POST` is answered `408` once its messages took the window in all.
/// Frames carried by a forwarded poll whose answer is lost on the way back
/// are lost: delivery between nodes is at most once.
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
    /// In a cluster, at most this many requests per socket wait for
    /// another node's answer at once, and at most as many of other nodes'
    /// requests are served at once; beyond, the client gets HTTP 503
    /// (phoenix.js retries). A request waits at most the window plus 2 s,
    /// so this bounds what requests with forged or stale tokens, which name
    /// absent nodes, can hold. Default 10,000.
    pub max_forwarded: usize,
}

impl Default for LongPollConfig {
    fn default() -> Self {
        LongPollConfig {
            window: Duration::from_secs(10),
            max_body_size: 8_000_000,
            token_max_age: Duration::from_secs(14 * 24 * 3600),
            max_sessions: 100_000,
            max_forwarded: 10_000,
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

    /// Sets [`max_forwarded`](Self::max_forwarded).
    pub fn max_forwarded(mut self, max: usize) -> Self {
        self.max_forwarded = max;
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

/// What a session token carries: the node holding the session, and the
/// session's id there.
#[derive(Serialize, Deserialize)]
struct SessionRef {
    n: String,
    i: String,
}

/// A found session: its token, inbox and socket.
type Found = (Arc<str>, mpsc::Sender<SessionMsg>, Arc<SocketShared>);

/// The live sessions of one mounted socket, by session id, and its
/// requests forwarded to and from other nodes.
pub(crate) struct Sessions {
    map: Mutex<HashMap<Box<str>, SessionHandle>>,
    /// This node's name, which its tokens carry.
    node: Arc<str>,
    /// The node-message service of this socket's forwarded requests.
    service: Arc<str>,
    /// Request ids start at a random value, so that an answer meant for a
    /// previous run of a node of the same name matches nothing.
    next_id: AtomicU64,
    /// Requests forwarded to other nodes, waiting for their answers.
    pending: Mutex<HashMap<u64, Pending>>,
    /// Other nodes' requests being served here.
    serving: AtomicUsize,
    /// Malformed node messages, counted to log them sparsely.
    malformed: AtomicU64,
}

/// A forwarded request's waiter.
struct Pending {
    /// The node asked: answers from any other are not for this request.
    node: Arc<str>,
    answer: oneshot::Sender<Outcome>,
}

impl Sessions {
    /// The sessions of the socket mounted at `path`, on the node `node`.
    pub(crate) fn new(path: &str, node: &str) -> Sessions {
        Sessions {
            map: Mutex::default(),
            node: node.into(),
            service: format!("longpoll:{path}").into(),
            next_id: AtomicU64::new(crate::presence::random_u64()),
            pending: Mutex::default(),
            serving: AtomicUsize::new(0),
            malformed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, SessionHandle>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Option<Found> {
        self.lock()
            .get(id)
            .map(|s| (s.token.clone(), s.inbox.clone(), s.shared.clone()))
    }

    /// The session `token` names on this node, once verified.
    fn verify(&self, env: &Shared, lp: &LongPollConfig, token: &str) -> Option<Found> {
        let session = env
            .token
            .verify::<SessionRef>(TOKEN_SALT, token, lp.token_max_age)
            .ok()?;
        // With a secret shared by the cluster, another node's token verifies
        // here too; its session is not here.
        (*session.n == *self.node)
            .then(|| self.get(&session.i))
            .flatten()
    }

    /// The other node that `token` says holds its session, unverified (see
    /// [`token::unverified_data`]): only for routing.
    fn elsewhere(&self, token: &str) -> Option<Arc<str>> {
        token::unverified_data::<SessionRef>(token)
            .filter(|session| *session.n != *self.node)
            .map(|session| session.n.into())
    }

    /// Forwards a request to `node` and waits for its answer; `None` if
    /// none came within the window plus [`FORWARD_MARGIN`], or the endpoint
    /// shuts down meanwhile.
    async fn ask(
        &self,
        env: &Shared,
        lp: &LongPollConfig,
        node: Arc<str>,
        request: ForwardedRequest,
        body: Bytes,
    ) -> Option<Outcome> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.lock_pending();
            if pending.len() >= lp.max_forwarded {
                drop(pending);
                tracing::warn!(target: "fawkes::transport", max = lp.max_forwarded, "too many longpoll requests waiting for other nodes, refusing");
                return Some(Outcome::Busy);
            }
            pending.insert(
                id,
                Pending {
                    node: node.clone(),
                    answer: tx,
                },
            );
        }
        // Removes the waiter however this ends: answer, timeout, shutdown,
        // or the client hanging up (the future dropped).
        let _waiting = Waiting { sessions: self, id };
        let head = Head::Request {
            id,
            reply_to: self.node.to_string(),
            method: request.method,
            token: request.token,
            ndjson: request.ndjson,
        };
        env.pubsub
            .send_node_message(Some(&node), &self.service, encode(&head, &body));
        tokio::select! {
            answer = tokio::time::timeout(lp.window + FORWARD_MARGIN, rx) => {
                let answer = answer.ok().and_then(Result::ok);
                if answer.is_none() {
                    tracing::info!(target: "fawkes::transport", %node, "no answer from the longpoll session's node");
                }
                answer
            }
            _ = env.root.cancelled() => None,
        }
    }

    /// Hands another node's answer to its waiter; answers for unknown ids,
    /// or from a node that was not asked, are dropped.
    fn answered(&self, id: u64, from: &str, outcome: Outcome) {
        let mut pending = self.lock_pending();
        match pending.remove(&id) {
            Some(waiter) if *waiter.node == *from => {
                drop(pending);
                let _ = waiter.answer.send(outcome);
            }
            Some(waiter) => {
                pending.insert(id, waiter);
                drop(pending);
                tracing::debug!(target: "fawkes::transport", id, from, "longpoll answer from a node not asked, dropped");
            }
            None => {
                drop(pending);
                tracing::debug!(target: "fawkes::transport", id, from, "longpoll answer for no waiting request, dropped");
            }
        }
    }

    fn malformed(&self, from: &str, why: &str) {
        let malformed = self.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        // Logged at powers of two, so that a flood does not flood the log.
        if malformed.is_power_of_two() {
            tracing::warn!(target: "fawkes::transport", from, why, malformed, "malformed longpoll node message, dropped");
        }
    }
}

/// Removes a forwarded request's waiter when dropped.
struct Waiting<'a> {
    sessions: &'a Sessions,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.sessions.lock_pending().remove(&self.id);
    }
}

/// Counts another node's request as served until dropped.
struct Serving(Arc<Sessions>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a forwarded request waits beyond the window for its answer:
/// the way there and back through the adapter.
const FORWARD_MARGIN: Duration = Duration::from_secs(2);

/// What the LongPoll logic answers, the same whether the request came to
/// this node or was forwarded by another.
#[derive(Debug)]
enum Outcome {
    /// HTTP 200 with this JSON body.
    Answer(Bytes),
    /// No such session, or a token that does not verify.
    Gone,
    /// HTTP 400: a malformed posted message.
    BadRequest,
    /// HTTP 503: too many forwarded requests.
    Busy,
    /// HTTP 500.
    Internal,
}

impl Outcome {
    fn status(status: u16) -> Outcome {
        Outcome::Answer(format!("{{\"status\":{status}}}").into())
    }

    fn kind(&self) -> Kind {
        match self {
            Outcome::Answer(_) => Kind::Answer,
            Outcome::Gone => Kind::Gone,
            Outcome::BadRequest => Kind::BadRequest,
            Outcome::Busy => Kind::Busy,
            Outcome::Internal => Kind::Internal,
        }
    }

    fn from_wire(kind: Kind, body: Bytes) -> Outcome {
        match kind {
            Kind::Answer => Outcome::Answer(body),
            Kind::Gone => Outcome::Gone,
            Kind::BadRequest => Outcome::BadRequest,
            Kind::Busy => Outcome::Busy,
            Kind::Internal => Outcome::Internal,
        }
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        match self {
            Outcome::Answer(body) => json_answer(body),
            Outcome::Gone => status_answer(410),
            Outcome::BadRequest => bad_request_response(),
            Outcome::Busy => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            Outcome::Internal => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

/// How a forwarded request travels: this JSON head, a `\n`, then the body
/// (the posted bytes, or the answer's JSON). JSON never holds a raw `\n`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Head {
    /// A request for a session of the receiving node.
    Request {
        id: u64,
        reply_to: String,
        method: ForwardedMethod,
        token: String,
        ndjson: bool,
    },
    /// The answer to request `id`.
    Answer { id: u64, outcome: Kind },
}

/// The method of a forwarded request (`OPTIONS` is answered where it lands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ForwardedMethod {
    Get,
    Post,
}

/// An [`Outcome`] on the wire; only `Answer` has a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Answer,
    Gone,
    BadRequest,
    Busy,
    Internal,
}

/// What a node forwards of a request, beside its body.
struct ForwardedRequest {
    method: ForwardedMethod,
    token: String,
    ndjson: bool,
}

fn encode(head: &Head, body: &[u8]) -> Bytes {
    let mut out = serde_json::to_vec(head).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out.into()
}

fn decode_forwarded(msg: &Bytes) -> Result<(Head, Bytes), &'static str> {
    let split = msg.iter().position(|b| *b == b'\n').ok_or("no head")?;
    let head = serde_json::from_slice(&msg[..split]).map_err(|_| "malformed head")?;
    Ok((head, msg.slice(split + 1..)))
}

/// Listens for the requests other nodes forward to this socket's sessions,
/// and for the answers to those this node forwarded. Nothing unclustered.
pub(crate) fn listen(config: Arc<SocketConfig>, env: &Arc<Shared>, sessions: Arc<Sessions>) {
    if !env.pubsub.is_clustered() {
        return;
    }
    // Weak: the pubsub holds this handler, and the endpoint the pubsub.
    let weak = Arc::downgrade(env);
    let service = sessions.service.clone();
    env.pubsub.on_node_message(
        &service,
        Arc::new(move |msg: NodeMessage| {
            if let Some(env) = weak.upgrade() {
                receive(&config, &env, &sessions, msg);
            }
        }),
    );
}

/// Handles one node message; runs on the adapter's receive task, so it
/// only spawns what waits.
fn receive(
    config: &Arc<SocketConfig>,
    env: &Arc<Shared>,
    sessions: &Arc<Sessions>,
    msg: NodeMessage,
) {
    let Some(lp) = config.longpoll.clone() else {
        return;
    };
    let (head, body) = match decode_forwarded(&msg.body) {
        Ok(decoded) => decoded,
        Err(why) => return sessions.malformed(&msg.from, why),
    };
    let (id, reply_to, request) = match head {
        Head::Answer { id, outcome } => {
            return sessions.answered(id, &msg.from, Outcome::from_wire(outcome, body));
        }
        Head::Request {
            id,
            reply_to,
            method,
            token,
            ndjson,
        } => (
            id,
            reply_to,
            ForwardedRequest {
                method,
                token,
                ndjson,
            },
        ),
    };
    let reply = {
        let (env, service) = (env.clone(), sessions.service.clone());
        move |outcome: Outcome| {
            let head = Head::Answer {
                id,
                outcome: outcome.kind(),
            };
            let body = match &outcome {
                Outcome::Answer(body) => body.clone(),
                _ => Bytes::new(),
            };
            env.pubsub
                .send_node_message(Some(&reply_to), &service, encode(&head, &body));
        }
    };
    // A node shutting down keeps no session for long: the sender opens one.
    if env.root.is_cancelled() {
        return reply(Outcome::Gone);
    }
    if sessions.serving.fetch_add(1, Ordering::Relaxed) >= lp.max_forwarded {
        sessions.serving.fetch_sub(1, Ordering::Relaxed);
        tracing::warn!(target: "fawkes::transport", max = lp.max_forwarded, from = &*msg.from, "too many longpoll requests from other nodes, refusing");
        return reply(Outcome::Busy);
    }
    let serving = Serving(sessions.clone());
    let task_env = env.clone();
    env.tracker.spawn(async move {
        let outcome = Box::pin(serve_forwarded(&lp, &task_env, &serving.0, request, body)).await;
        drop(serving);
        reply(outcome);
    });
}

/// Serves a request another node forwarded, as if it had come here.
async fn serve_forwarded(
    lp: &LongPollConfig,
    env: &Shared,
    sessions: &Sessions,
    request: ForwardedRequest,
    body: Bytes,
) -> Outcome {
    let Some((token, inbox, shared)) = sessions.verify(env, lp, &request.token) else {
        return Outcome::Gone;
    };
    match request.method {
        ForwardedMethod::Get => poll(lp, &token, inbox).await,
        // The sending node bounded it already; a message is not to be trusted.
        ForwardedMethod::Post if body.len() > lp.max_body_size => Outcome::BadRequest,
        ForwardedMethod::Post => {
            // All lines within the window, so that the answer is back
            // before the sending node stops waiting.
            let deadline = Instant::now() + lp.window;
            post(lp, inbox, &shared, request.ndjson, body, Some(deadline)).await
        }
    }
}

/// Every answer of the LongPoll logic: HTTP 200 and the real status in the
/// JSON body (PROTOCOL §6.1).
fn json_answer(body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
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
    Outcome::status(status).into_response()
}

#[derive(Serialize)]
struct PollAnswer<'a> {
    status: u16,
    token: &'a str,
    messages: Vec<Cow<'a, str>>,
}

fn poll_answer(status: u16, token: &str, frames: &VecDeque<Frame>) -> Outcome {
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
    match serde_json::to_vec(&body) {
        Ok(body) => Outcome::Answer(body.into()),
        Err(_) => Outcome::Internal,
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
    bad_request_response()
}

fn bad_request_response() -> Response {
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
fn presented_token<'a>(headers: &'a HeaderMap, query: &str) -> Option<Cow<'a, str>> {
    if let Some(value) = headers.get("x-phoenix-longpoll-token") {
        return value.to_str().ok().map(Cow::Borrowed);
    }
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "token")
        .last()
        .map(|(_, v)| Cow::Owned(v.into_owned()))
}

/// Whether a `POST` carries ndjson lines (else one message).
fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-ndjson"))
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
    let token =
        presented_token(req.headers(), req.uri().query().unwrap_or("")).map(Cow::into_owned);
    if let Some(token) = &token
        && env.pubsub.is_clustered()
        && let Some(node) = sessions.elsewhere(token)
    {
        return Box::pin(forward(
            config,
            env,
            sessions,
            &lp,
            node,
            token.clone(),
            req,
        ))
        .await;
    }
    let session = token.and_then(|token| sessions.verify(&env, &lp, &token));
    // Posts and opens are boxed: an idle client's pending poll is what
    // stays in memory, and it should not reserve their larger state.
    if method == Method::POST {
        return match session {
            Some((_, inbox, shared)) => {
                Box::pin(async move {
                    let ndjson = is_ndjson(req.headers());
                    match axum::body::to_bytes(req.into_body(), lp.max_body_size).await {
                        Ok(body) => post(&lp, inbox, &shared, ndjson, body, None)
                            .await
                            .into_response(),
                        Err(_) => bad_request("body unreadable or too large"),
                    }
                })
                .await
            }
            None => status_answer(410),
        };
    }
    match session {
        Some((token, inbox, _)) => {
            // A poll waits up to the window: hold nothing of the request.
            drop(req);
            poll(&lp, &token, inbox).await.into_response()
        }
        None => Box::pin(open(config, env, sessions, &lp, req)).await,
    }
}

/// Forwards a request for a session of `node` there, and answers with what
/// that node answered; when it does not (no such session, refused token,
/// no answer), as for an unknown token here: a `GET` opens a session, a
/// `POST` gets `410`.
async fn forward(
    config: Arc<SocketConfig>,
    env: Arc<Shared>,
    sessions: Arc<Sessions>,
    lp: &LongPollConfig,
    node: Arc<str>,
    token: String,
    req: Request<Body>,
) -> Response {
    let get = req.method() == Method::GET;
    let (parts, body) = req.into_parts();
    let (request, body) = if get {
        let request = ForwardedRequest {
            method: ForwardedMethod::Get,
            token,
            ndjson: false,
        };
        (request, Bytes::new())
    } else {
        let body = match axum::body::to_bytes(body, lp.max_body_size).await {
            Ok(body) => body,
            Err(_) => return bad_request("body unreadable or too large"),
        };
        let request = ForwardedRequest {
            method: ForwardedMethod::Post,
            token,
            ndjson: is_ndjson(&parts.headers),
        };
        (request, body)
    };
    match sessions.ask(&env, lp, node, request, body).await {
        Some(Outcome::Gone) | None if get => {
            open(
                config,
                env,
                sessions,
                lp,
                Request::from_parts(parts, Body::empty()),
            )
            .await
        }
        Some(Outcome::Gone) | None => status_answer(410),
        Some(outcome) => outcome.into_response(),
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
    let session_ref = SessionRef {
        n: sessions.node.to_string(),
        i: id,
    };
    let token: Arc<str> = env.token.sign(TOKEN_SALT, &session_ref).into();
    let id = session_ref.i;
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
    poll_answer(410, &token, &VecDeque::new()).into_response()
}

/// Waits for frames (PROTOCOL §6.4).
async fn poll(lp: &LongPollConfig, token: &str, inbox: mpsc::Sender<SessionMsg>) -> Outcome {
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

/// Hands the posted messages to the session, one at a time (PROTOCOL
/// §6.5); each within the window, and all by `deadline` if there is one.
async fn post(
    lp: &LongPollConfig,
    inbox: mpsc::Sender<SessionMsg>,
    shared: &SocketShared,
    ndjson: bool,
    body: Bytes,
    deadline: Option<Instant>,
) -> Outcome {
    let lines: Vec<Bytes> = if ndjson {
        split_lines(&body)
    } else {
        vec![body]
    };
    for line in lines {
        let msg = match decode(shared, line, ndjson) {
            Ok(msg) => msg,
            Err(why) => {
                // Like a malformed WebSocket frame: the connection ends.
                tracing::warn!(target: "fawkes::transport", socket_id = shared.id.as_deref(), why, "malformed longpoll message, closing session");
                shared.close(CloseReason::BadFrame);
                return Outcome::BadRequest;
            }
        };
        let mut line_deadline = Instant::now() + lp.window;
        if let Some(deadline) = deadline {
            line_deadline = line_deadline.min(deadline);
        }
        let (ack, acked) = oneshot::channel();
        let handled = tokio::time::timeout_at(line_deadline, async {
            inbox
                .send(SessionMsg::Dispatch(Box::new(msg), ack))
                .await
                .ok()?;
            acked.await.ok()
        })
        .await;
        match handled {
            Ok(Some(())) => {}
            Ok(None) => return Outcome::status(410),
            Err(_) => return Outcome::status(408),
        }
    }
    Outcome::status(200)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_messages_round_trip_with_any_body() {
        let head = Head::Request {
            id: u64::MAX,
            reply_to: "node-b".into(),
            method: ForwardedMethod::Post,
            token: "abc.def".into(),
            ndjson: true,
        };
        let body = b"[\"1\"]\n\xff\r\nline";
        let (decoded, rest) = decode_forwarded(&encode(&head, body)).unwrap();
        assert!(matches!(
            decoded,
            Head::Request { id: u64::MAX, ref reply_to, method: ForwardedMethod::Post, ref token, ndjson: true }
                if reply_to == "node-b" && token == "abc.def"
        ));
        assert_eq!(&rest[..], body);

        let head = Head::Answer {
            id: 7,
            outcome: Kind::Gone,
        };
        let (decoded, rest) = decode_forwarded(&encode(&head, b"")).unwrap();
        assert!(matches!(
            decoded,
            Head::Answer {
                id: 7,
                outcome: Kind::Gone
            }
        ));
        assert!(rest.is_empty());
    }

    #[test]
    fn malformed_forwarded_messages_are_errors() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"no newline",
            b"\n",
            b"{}\n",
            b"\xff\n",
            b"{\"k\":\"answer\",\"id\":-1,\"outcome\":\"gone\"}\n",
            b"{\"k\":\"answer\",\"id\":1,\"outcome\":\"teapot\"}\n",
            b"{\"k\":\"request\",\"id\":1,\"reply_to\":\"b\",\"method\":\"put\",\"token\":\"t\",\"ndjson\":true}\n",
        ];
        for input in inputs {
            assert!(
                decode_forwarded(&Bytes::from_static(input)).is_err(),
                "{input:?}"
            );
        }
    }

    #[test]
    fn answers_reach_only_their_waiter_from_the_node_asked() {
        let sessions = Sessions::new("/socket", "a");
        let (tx, mut rx) = oneshot::channel();
        sessions.lock_pending().insert(
            1,
            Pending {
                node: "b".into(),
                answer: tx,
            },
        );
        sessions.answered(2, "b", Outcome::Gone);
        sessions.answered(1, "c", Outcome::Gone);
        assert!(rx.try_recv().is_err());
        assert_eq!(sessions.lock_pending().len(), 1);
        sessions.answered(1, "b", Outcome::status(200));
        assert!(matches!(rx.try_recv(), Ok(Outcome::Answer(body)) if body == "{\"status\":200}"));
        assert!(sessions.lock_pending().is_empty());
    }

    #[test]
    fn tokens_route_by_their_node_unverified() {
        let sessions = Sessions::new("/socket", "a");
        let signer = crate::token::Token::generate();
        let of = |n: &str| {
            signer.sign(
                TOKEN_SALT,
                &SessionRef {
                    n: n.into(),
                    i: "1".into(),
                },
            )
        };
        assert_eq!(sessions.elsewhere(&of("b")).as_deref(), Some("b"));
        assert_eq!(sessions.elsewhere(&of("a")), None);
        assert_eq!(sessions.elsewhere("garbage"), None);
        assert_eq!(sessions.service.as_ref(), "longpoll:/socket");
    }
}
