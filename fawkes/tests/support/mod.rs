//! Shared fixture for the framework tests: an endpoint served on
//! `127.0.0.1:0`, a raw V2 WebSocket client, and a probe [`Socket`] and
//! [`Channel`] that report what the framework made them do.
//!
//! Each test file compiles this module on its own and uses a different subset
//! of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use fawkes::{
    Assigns, Channel, ChannelHandle, ConnectInfo, Context, Endpoint, HandleResult, Params, Payload,
    Refused, Reply, ReplyRef, Socket, SocketBuilder, StopReason,
};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as ClientConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long anything the test awaits may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// An endpoint served by `axum::serve` in the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub endpoint: Endpoint,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

/// Serves `router` on `127.0.0.1:0` with peer addresses as connect info; the
/// graceful shutdown calls [`Endpoint::shutdown`], as users are told to.
pub async fn serve(router: Router, endpoint: Endpoint) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = endpoint.clone();
    let handle = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
            shutdown.shutdown().await;
        })
        .await
    });
    TestServer {
        addr,
        endpoint,
        stop: Some(stop),
        handle: Some(handle),
    }
}

impl TestServer {
    /// A V2 client on `/socket/websocket`.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr, "").await
    }

    /// Triggers the graceful shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let handle = self.handle.take().expect("serve task");
        match tokio::time::timeout(TIMEOUT, handle).await {
            Ok(Ok(result)) => result.expect("serve failed"),
            Ok(Err(join)) => panic!("serve panicked: {join}"),
            Err(_) => panic!("serve did not return within {TIMEOUT:?} of shutdown"),
        }
    }

    /// Polls [`Endpoint::stats`] until it reports `(sockets, channels)`.
    pub async fn wait_stats(&self, sockets: usize, channels: usize) {
        wait_stats(&self.endpoint, sockets, channels).await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// Polls [`Endpoint::stats`] until it reports `(sockets, channels)`; fails
/// after [`TIMEOUT`].
pub async fn wait_stats(endpoint: &Endpoint, sockets: usize, channels: usize) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        let stats = endpoint.stats();
        if (stats.sockets, stats.channels) == (sockets, channels) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats stayed at {stats:?}, want sockets={sockets} channels={channels}"
        );
    }
}

/// A plain HTTP/1.1 GET, read to the end: `(status, body)`.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        String::from_utf8(raw).expect("utf-8 answer")
    };
    let raw = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} timed out"));
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// One frame as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text frame, parsed as JSON.
    Json(Value),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame and its code.
    Close(Option<u16>),
    /// The connection ended without a close frame.
    Gone(String),
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw V2 JSON Phoenix client.
pub struct Client {
    ws: Ws,
    /// Headers of the 101 answer.
    pub headers: http::HeaderMap,
    /// The client's end of the TCP connection.
    pub local_addr: SocketAddr,
    refs: u64,
}

impl Client {
    /// Connects with `vsn=2.0.0` and `query` appended; panics if refused.
    pub async fn connect(addr: SocketAddr, query: &str) -> Client {
        Self::connect_with(addr, query, &[])
            .await
            .unwrap_or_else(|status| panic!("upgrade ({query:?}) refused with HTTP {status}"))
    }

    /// Connects to `/socket/websocket?vsn=2.0.0&<query>` with extra request
    /// headers; `Err(status)` when the upgrade is answered with HTTP.
    pub async fn connect_with(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        let mut url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        let mut request = url.as_str().into_client_request().expect("request");
        for (name, value) in headers {
            request.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                http::HeaderValue::from_str(value).expect("header value"),
            );
        }
        let config = ClientConfig::default()
            .max_frame_size(Some(64 << 20))
            .max_message_size(Some(64 << 20));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        match tokio::time::timeout(TIMEOUT, connect).await {
            Err(_) => panic!("upgrade to {url} timed out"),
            Ok(Ok((ws, response))) => {
                let local_addr = match ws.get_ref() {
                    MaybeTlsStream::Plain(tcp) => tcp.local_addr().expect("local addr"),
                    _ => unreachable!("plain TCP"),
                };
                Ok(Client {
                    ws,
                    headers: response.headers().clone(),
                    local_addr,
                    refs: 0,
                })
            }
            Ok(Err(tungstenite::Error::Http(response))) => Err(response.status().as_u16()),
            Ok(Err(e)) => panic!("upgrade to {url} failed: {e}"),
        }
    }

    /// A ref unique on this client.
    pub fn next_ref(&mut self) -> String {
        self.refs += 1;
        self.refs.to_string()
    }

    /// Sends one V2 JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.send_message(Message::text(frame.to_string())).await;
    }

    /// Sends any WebSocket message; the error is the test's to judge.
    pub async fn try_send_message(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        tokio::time::timeout(TIMEOUT, self.ws.send(message))
            .await
            .expect("send timed out")
    }

    /// Sends any WebSocket message.
    pub async fn send_message(&mut self, message: Message) {
        self.try_send_message(message).await.expect("send failed");
    }

    /// Sends `[join_ref, ref, topic, event, payload]`; returns the ref.
    pub async fn push(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        let r = self.next_ref();
        self.send(json!([join_ref, r, topic, event, payload])).await;
        r
    }

    /// Sends a join and returns its join ref and the reply's payload.
    pub async fn join_raw(&mut self, topic: &str, payload: Value) -> (String, Value) {
        let r = self.next_ref();
        self.send(json!([r, r, topic, "phx_join", payload])).await;
        let reply = self.recv().await;
        assert_eq!(
            reply,
            json!([r, r, topic, "phx_reply", reply[4]]),
            "join reply for {topic}"
        );
        (r, reply[4].clone())
    }

    /// Joins `topic` and asserts the ok reply; returns the join ref.
    pub async fn join(&mut self, topic: &str, payload: Value) -> String {
        let (join_ref, reply) = self.join_raw(topic, payload).await;
        assert_eq!(reply["status"], "ok", "join {topic}: {reply}");
        join_ref
    }

    /// Pushes `event` to a joined topic and returns the reply's
    /// `{"status", "response"}`, asserting it is the next frame.
    pub async fn call(
        &mut self,
        join_ref: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Value {
        let r = self.push(Some(join_ref), topic, event, payload).await;
        let reply = self.recv().await;
        assert_eq!(
            reply,
            json!([join_ref, r, topic, "phx_reply", reply[4]]),
            "reply to {event}"
        );
        reply[4].clone()
    }

    /// The next text, binary or close frame; `None` after `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                None => Frame::Gone("end of stream".into()),
                Some(Err(e)) => Frame::Gone(e.to_string()),
                Some(Ok(Message::Text(text))) => Frame::Json(
                    serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("server sent non-JSON text {text:?}: {e}")),
                ),
                Some(Ok(Message::Binary(bytes))) => Frame::Binary(bytes.to_vec()),
                Some(Ok(Message::Close(frame))) => Frame::Close(frame.map(|f| u16::from(f.code))),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            });
        }
    }

    /// The next frame; fails the test after [`TIMEOUT`].
    pub async fn recv_frame(&mut self) -> Frame {
        self.recv_within(TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no frame within {TIMEOUT:?}"))
    }

    /// The next frame, which must be JSON.
    pub async fn recv(&mut self) -> Value {
        match self.recv_frame().await {
            Frame::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next frame must be a close frame: returns its code, after
    /// answering it so the server's close handshake completes.
    pub async fn expect_close(&mut self) -> Option<u16> {
        match self.recv_frame().await {
            Frame::Close(code) => {
                self.finish_close().await;
                code
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Reads (and discards JSON frames) until the connection closes: the
    /// close code, `None` when it ended without a close frame.
    pub async fn drain_until_close(&mut self) -> Option<u16> {
        loop {
            match self.recv_frame().await {
                Frame::Json(_) | Frame::Binary(_) => {}
                Frame::Close(code) => {
                    self.finish_close().await;
                    return code;
                }
                Frame::Gone(_) => return None,
            }
        }
    }

    /// Flushes tungstenite's automatic answer to the server's close frame.
    async fn finish_close(&mut self) {
        let _ = tokio::time::timeout(TIMEOUT, self.ws.next()).await;
    }

    /// Proves that the server sent nothing before this point: a heartbeat's
    /// reply must be the very next frame (the socket answers heartbeats in
    /// order with everything queued before them).
    pub async fn barrier(&mut self) {
        let r = format!("barrier-{}", self.next_ref());
        self.send(json!([null, r, "phoenix", "heartbeat", {}]))
            .await;
        assert_eq!(
            self.recv().await,
            json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
            "something arrived before the barrier's heartbeat reply"
        );
    }

    /// Closes the connection with a close frame (code 1000).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(TIMEOUT, self.ws.close(None)).await;
        let _ =
            tokio::time::timeout(TIMEOUT, async { while self.ws.next().await.is_some() {} }).await;
    }
}

/// `{"status":"ok","response":response}`.
pub fn ok(response: Value) -> Value {
    json!({"status": "ok", "response": response})
}

// ---------------------------------------------------------------------------
// Probe socket and channel
// ---------------------------------------------------------------------------

/// What the probe socket and channels report to the test.
pub enum Seen {
    /// `connect` ran with these params and connect info.
    Connected(Params, Box<ConnectInfo>),
    /// A join succeeded; the handle reaches that instance's `handle_info`.
    Joined(String, ChannelHandle<Note>),
    /// `terminate` ran.
    Terminated(String, StopReason),
    /// `handle_in("later")` kept the message's reply ref and answered nothing.
    Later(ReplyRef),
    /// `handle_in("block")` (or a `block_terminate` channel's `terminate`)
    /// waits until this is sent or dropped.
    Blocked(oneshot::Sender<()>),
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Connected(p, _) => write!(f, "Connected({p:?})"),
            Seen::Joined(t, _) => write!(f, "Joined({t})"),
            Seen::Terminated(t, r) => write!(f, "Terminated({t}, {r:?})"),
            Seen::Later(r) => write!(f, "Later({r:?})"),
            Seen::Blocked(_) => f.write_str("Blocked"),
        }
    }
}

/// The sending side the probes hold.
pub type Observer = mpsc::UnboundedSender<Seen>;

/// The receiving side the test holds.
pub struct Seer(mpsc::UnboundedReceiver<Seen>);

/// A new observer and its receiver.
pub fn observer() -> (Observer, Seer) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Seer(rx))
}

impl Seer {
    /// The next report; fails after [`TIMEOUT`].
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(TIMEOUT, self.0.recv())
            .await
            .unwrap_or_else(|_| panic!("no report within {TIMEOUT:?}"))
            .expect("observer closed")
    }

    /// The next report `pick` accepts, skipping the others.
    pub async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(Seen) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let seen = tokio::time::timeout_at(deadline, self.0.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} report within {TIMEOUT:?}"))
                .expect("observer closed");
            if let Some(t) = pick(seen) {
                return t;
            }
        }
    }

    /// The next `terminate` report: `(topic, reason)`.
    pub async fn terminated(&mut self) -> (String, StopReason) {
        self.wait_for("terminate", |s| match s {
            Seen::Terminated(t, r) => Some((t, r)),
            _ => None,
        })
        .await
    }

    /// The next `connect` report.
    pub async fn connected(&mut self) -> (Params, ConnectInfo) {
        self.wait_for("connect", |s| match s {
            Seen::Connected(p, i) => Some((p, *i)),
            _ => None,
        })
        .await
    }

    /// The release of the next blocked callback.
    pub async fn blocked(&mut self) -> oneshot::Sender<()> {
        self.wait_for("block", |s| match s {
            Seen::Blocked(tx) => Some(tx),
            _ => None,
        })
        .await
    }

    /// The handle of the next joined channel.
    pub async fn joined(&mut self) -> (String, ChannelHandle<Note>) {
        self.wait_for("join", |s| match s {
            Seen::Joined(t, h) => Some((t, h)),
            _ => None,
        })
        .await
    }

    /// Whatever is already queued, without waiting.
    pub fn pending(&mut self) -> Vec<Seen> {
        std::iter::from_fn(|| self.0.try_recv().ok()).collect()
    }
}

/// The socket's id, from the `id` param.
#[derive(Clone)]
struct SocketId(Option<String>);

/// A socket that reports every `connect`. Params: `status=N` refuses with
/// HTTP N, `id=X` names the socket `X`.
pub struct ProbeSocket(pub Observer);

impl Socket for ProbeSocket {
    async fn connect(&self, params: &Params, info: &ConnectInfo) -> Result<Assigns, Refused> {
        let _ = self
            .0
            .send(Seen::Connected(params.clone(), Box::new(info.clone())));
        if let Some(status) = params.get_str("status") {
            let status = StatusCode::from_bytes(status.as_bytes()).expect("status param");
            return Err(Refused::with_status(status));
        }
        Ok(Assigns::new().with(SocketId(params.get_str("id").map(str::to_owned))))
    }

    fn id(&self, assigns: &Assigns) -> Option<String> {
        assigns.get::<SocketId>().and_then(|s| s.0.clone())
    }
}

/// What the probe channel's `handle_info` receives: push `event` with
/// `payload` (the event `panic` panics instead).
#[derive(Debug)]
pub struct Note(pub String, pub Value);

/// A channel driven by its join payload and the events it receives.
///
/// Join payload: `name` (handle_out tags pushes with it), `mute` (handle_out
/// filters), `panic_out`, `panic_terminate`, `block_terminate` (terminate
/// reports `Blocked` and waits), `info` (`{event, payload}` sent to itself
/// with `send_info` during join), `refuse`.
///
/// Events: `echo`, `push`/`info` (`{event, payload}`, pushed now / after the
/// callback), `after` (`{ms, event, payload}`), `cancelled_after`
/// (`{ms, witness_ms}`), `later`, `block`, `panic`, `stop`. Intercepts
/// `shout` and `whisper`.
#[derive(Clone)]
pub struct Probe {
    obs: Observer,
    name: String,
    mute: bool,
    panic_out: bool,
    panic_terminate: bool,
    block_terminate: bool,
}

impl Probe {
    pub fn new(obs: Observer) -> Self {
        Probe {
            obs,
            name: String::new(),
            mute: false,
            panic_out: false,
            panic_terminate: false,
            block_terminate: false,
        }
    }
}

fn note(v: &Value) -> Note {
    Note(
        v["event"].as_str().expect("event").to_owned(),
        v["payload"].clone(),
    )
}

impl Channel for Probe {
    type Info = Note;
    const INTERCEPT: &'static [&'static str] = &["shout", "whisper"];

    async fn join(
        &mut self,
        topic: &str,
        payload: Value,
        ctx: &mut Context<Self>,
    ) -> Result<Value, Value> {
        if payload["refuse"] == true {
            return Err(json!({"reason": "refused"}));
        }
        if payload["block"] == true {
            let (tx, rx) = oneshot::channel();
            let _ = self.obs.send(Seen::Blocked(tx));
            let _ = rx.await;
        }
        self.name = payload["name"].as_str().unwrap_or_default().to_owned();
        self.mute = payload["mute"] == true;
        self.panic_out = payload["panic_out"] == true;
        self.panic_terminate = payload["panic_terminate"] == true;
        self.block_terminate = payload["block_terminate"] == true;
        if payload["info"].is_object() {
            ctx.send_info(note(&payload["info"]));
        }
        let _ = self.obs.send(Seen::Joined(topic.to_owned(), ctx.handle()));
        Ok(json!({}))
    }

    async fn handle_in(
        &mut self,
        event: &str,
        payload: Payload,
        ctx: &mut Context<Self>,
    ) -> HandleResult {
        let p = match &payload {
            Payload::Json(v) => v.clone(),
            Payload::Binary(_) => Value::Null,
        };
        match event {
            "echo" => HandleResult::ok(payload),
            "push" => {
                ctx.push(p["event"].as_str().expect("event"), p["payload"].clone());
                HandleResult::ok(json!({}))
            }
            "info" => {
                ctx.send_info(note(&p));
                HandleResult::ok(json!({}))
            }
            "after" => {
                let ms = p["ms"].as_u64().expect("ms");
                ctx.send_after(Duration::from_millis(ms), note(&p));
                HandleResult::ok(json!({}))
            }
            "cancelled_after" => {
                let ms = p["ms"].as_u64().expect("ms");
                let witness_ms = p["witness_ms"].as_u64().expect("witness_ms");
                let timer = ctx.send_after(
                    Duration::from_millis(ms),
                    Note("tick".into(), json!({"name": "cancelled"})),
                );
                ctx.send_after(
                    Duration::from_millis(witness_ms),
                    Note("tick".into(), json!({"name": "witness"})),
                );
                timer.cancel();
                HandleResult::ok(json!({}))
            }
            "later" => {
                let reply = ctx.reply_ref().expect("reply ref inside handle_in");
                let _ = self.obs.send(Seen::Later(reply));
                HandleResult::NoReply
            }
            "block" => {
                let (tx, rx) = oneshot::channel();
                let _ = self.obs.send(Seen::Blocked(tx));
                let _ = rx.await;
                HandleResult::ok(json!({}))
            }
            "panic" => panic!("probe panics in handle_in"),
            "stop" => HandleResult::Stop(StopReason::Normal, Some(Reply::ok(json!({})))),
            _ => HandleResult::error(json!({"reason": "unknown event"})),
        }
    }

    async fn handle_out(
        &mut self,
        event: &str,
        payload: &Payload,
        ctx: &mut Context<Self>,
    ) -> HandleResult {
        if self.panic_out {
            panic!("probe panics in handle_out");
        }
        if !(self.mute && event == "shout") {
            let mut payload = match payload {
                Payload::Json(v) => v.clone(),
                Payload::Binary(_) => json!({}),
            };
            payload["to"] = json!(self.name);
            ctx.push(event, payload);
        }
        HandleResult::NoReply
    }

    async fn handle_info(&mut self, msg: Note, ctx: &mut Context<Self>) -> HandleResult {
        if msg.0 == "panic" {
            panic!("probe panics in handle_info");
        }
        ctx.push(&msg.0, msg.1);
        HandleResult::NoReply
    }

    async fn terminate(&mut self, reason: &StopReason, ctx: &mut Context<Self>) {
        let _ = self
            .obs
            .send(Seen::Terminated(ctx.topic().to_owned(), reason.clone()));
        if self.block_terminate {
            let (tx, rx) = oneshot::channel();
            let _ = self.obs.send(Seen::Blocked(tx));
            let _ = rx.await;
        }
        if self.panic_terminate {
            panic!("probe panics in terminate");
        }
    }
}

/// `/socket` with the probe socket and `probe:*` routed to [`Probe`]; the
/// test adds its limits and calls `build`.
pub fn probe_endpoint(obs: &Observer) -> SocketBuilder {
    Endpoint::builder()
        .socket("/socket", ProbeSocket(obs.clone()))
        .channel("probe:*", Probe::new(obs.clone()))
}

/// Builds and serves [`probe_endpoint`] as configured by `configure`.
pub async fn serve_probe(
    obs: &Observer,
    configure: impl FnOnce(SocketBuilder) -> SocketBuilder,
) -> TestServer {
    let (router, endpoint) = configure(probe_endpoint(obs)).build();
    serve(router, endpoint).await
}

/// The Redis of the cluster tests: `REDIS_URL`, by default the local one.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis channel namespace no other test shares, starting with `prefix`.
pub fn namespace(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}
