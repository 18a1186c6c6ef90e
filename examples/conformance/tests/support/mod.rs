//! Shared fixture for the black-box tests: a real conformance server on
//! `127.0.0.1:0`, an HTTP helper and a raw WebSocket client.
//!
//! Each test file compiles this module on its own and uses a different subset
//! of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod cluster;
pub mod cluster_presence;
pub mod longpoll;

use std::net::SocketAddr;
use std::time::Duration;

use fawkes_conformance::{Options, serve};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long `recv` waits for a frame before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// The node name every test server is started with.
pub const NODE: &str = "test-node";

/// Default options: the production idle timeout, no cluster.
pub fn options() -> Options {
    Options {
        node_name: NODE.to_string(),
        idle_timeout: Duration::from_secs(60),
        pubsub: None,
        ..Options::default()
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// A conformance server running in the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts the app with [`options`].
    pub async fn start() -> TestServer {
        Self::start_with(options()).await
    }

    /// Starts the app on `127.0.0.1:0` with the given options.
    pub async fn start_with(opts: Options) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, opts, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// An HTTP client for this server.
    pub fn http(&self) -> Http {
        Http::new(self.addr)
    }

    /// Connects a WebSocket client (V2) with the given extra query.
    pub async fn ws(&self, query: &str) -> WsClient {
        WsClient::connect(self.addr, query)
            .await
            .unwrap_or_else(|status| panic!("upgrade with query {query:?} refused: HTTP {status}"))
    }

    /// Connects a V2 client (`vsn=2.0.0`).
    pub async fn ws_v2(&self) -> WsClient {
        self.ws("vsn=2.0.0").await
    }

    /// Signals shutdown and waits (at most 10 s) for `serve` to return.
    ///
    /// The clients must keep reading meanwhile (spawn this future), so that
    /// their close handshakes can complete.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().expect("server handle");
        match tokio::time::timeout(Duration::from_secs(10), handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => panic!("serve panicked: {join}"),
            Err(_) => panic!("serve did not return within 10 s of shutdown"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// A response read in full.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// A small reqwest wrapper bound to one server.
pub struct Http {
    base: String,
    client: reqwest::Client,
}

/// Turns a body into JSON: `Null` when empty, a JSON string when not JSON.
fn parse_body(body: &str) -> Value {
    if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()))
    }
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    async fn read(resp: reqwest::Response) -> RawResponse {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("read body");
        RawResponse {
            status,
            headers,
            body,
        }
    }

    /// `GET path`, returning status and parsed JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let raw = self.request(http::Method::GET, path, &[], None).await;
        (raw.status, parse_body(&raw.body))
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, "application/json", body.to_string())
            .await
    }

    /// `POST path` with the given content type and body.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<String>,
    ) -> (u16, Value) {
        let raw = self
            .request(
                http::Method::POST,
                path,
                &[("content-type", content_type)],
                Some(body.into()),
            )
            .await;
        (raw.status, parse_body(&raw.body))
    }

    /// Any request, read in full.
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> RawResponse {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = tokio::time::timeout(RECV_TIMEOUT, req.send())
            .await
            .unwrap_or_else(|_| panic!("HTTP {path} timed out"))
            .unwrap_or_else(|e| panic!("HTTP {path} failed: {e}"));
        Self::read(resp).await
    }

    /// `/api/broadcast`, asserting `200 {"ok":true}`.
    pub async fn broadcast(&self, topic: &str, event: &str, payload: Value) {
        let body = json!({"topic": topic, "event": event, "payload": payload});
        let (status, answer) = self.post_json("/api/broadcast", &body).await;
        assert_eq!(
            (status, answer),
            (200, json!({"ok": true})),
            "broadcast {body}"
        );
    }

    /// `/api/stats` as `(sockets, channels)`.
    pub async fn stats(&self) -> (u64, u64) {
        let (status, body) = self.get("/api/stats").await;
        assert_eq!(status, 200, "stats: {body}");
        assert_eq!(body["node"], json!(NODE), "stats: {body}");
        let sockets = body["sockets"]
            .as_u64()
            .unwrap_or_else(|| panic!("stats: {body}"));
        let channels = body["channels"]
            .as_u64()
            .unwrap_or_else(|| panic!("stats: {body}"));
        (sockets, channels)
    }

    /// Polls `/api/stats` until it reports `want`, failing after 5 s.
    pub async fn wait_stats(&self, want: (u64, u64)) {
        self.wait_stats_within(want, RECV_TIMEOUT).await;
    }

    /// Polls `/api/stats` until it reports `want`, failing after `within`.
    pub async fn wait_stats_within(&self, want: (u64, u64), within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let mut interval = tokio::time::interval(Duration::from_millis(20));
        loop {
            interval.tick().await;
            let got = self.stats().await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stats stayed at (sockets, channels) = {got:?} for {within:?}, want {want:?}"
            );
        }
    }

    /// Asserts `GET /healthz` is `200 {"status":"ok","node":NODE}`.
    pub async fn assert_healthy(&self) {
        let got = self.get("/healthz").await;
        assert_eq!(got, (200, json!({"status": "ok", "node": NODE})));
    }
}

// ---------------------------------------------------------------------------
// Frames and the helpers both clients share
// ---------------------------------------------------------------------------

/// A reply status `ok` with its response.
pub fn ok(response: Value) -> Value {
    json!({"status": "ok", "response": response})
}

/// A reply status `error` with its reason.
pub fn error(reason: &str) -> Value {
    json!({"status": "error", "response": {"reason": reason}})
}

/// A V2 `phx_reply` frame.
pub fn reply(join_ref: &str, r: &str, topic: &str, status: Value) -> Value {
    json!([join_ref, r, topic, "phx_reply", status])
}

/// The reply the socket layer gives to a message for a topic without channel.
pub fn unmatched(r: &str, topic: &str) -> Value {
    json!([null, r, topic, "phx_reply", error("unmatched topic")])
}

/// What a `room:*` join produces after its ok reply (PROTOCOL §5.2): the
/// `user_entered` broadcast, then the `joined` push.
pub fn room_join_pushes(join_ref: &str, topic: &str, user: Value, user_id: Value) -> [Value; 2] {
    [
        json!([null, null, topic, "user_entered", {"user": user}]),
        json!([join_ref, null, topic, "joined", {"status": "connected", "user_id": user_id}]),
    ]
}

/// The Phoenix-level helpers of [`WsClient`] and the LongPoll client, written
/// once: refs, heartbeats, joins, pushes. The client must have the fields
/// `v2: bool` and `counter: u64`, and `send` and `expect` methods that take a
/// `Value` (it is a macro because the WebSocket tests call these as inherent
/// methods, without a trait import).
macro_rules! phoenix_helpers {
    () => {
        /// A fresh ref, unique on this client.
        pub fn next_ref(&mut self) -> String {
            self.counter += 1;
            format!("{}", self.counter)
        }

        /// A heartbeat in this client's encoding.
        pub fn heartbeat(&self, r: &str) -> serde_json::Value {
            if self.v2 {
                serde_json::json!([null, r, "phoenix", "heartbeat", {}])
            } else {
                serde_json::json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": r})
            }
        }

        /// The heartbeat reply in this client's encoding.
        pub fn heartbeat_reply(&self, r: &str) -> serde_json::Value {
            let payload = crate::support::ok(serde_json::json!({}));
            if self.v2 {
                serde_json::json!([null, r, "phoenix", "phx_reply", payload])
            } else {
                serde_json::json!({"topic": "phoenix", "event": "phx_reply", "payload": payload, "ref": r})
            }
        }

        /// Sends a heartbeat with a unique ref and asserts that the very next
        /// message is its reply: everything the socket produced before it has
        /// been read, and nothing else was sent.
        pub async fn barrier(&mut self) {
            let r = format!("barrier-{}", self.next_ref());
            self.send(self.heartbeat(&r)).await;
            let want = self.heartbeat_reply(&r);
            self.expect(want).await;
        }

        /// Sends `phx_join` (V2, `join_ref == ref`) and asserts the next
        /// message is its ok reply `{}`; returns the join ref. Post-join
        /// messages are left unread.
        pub async fn join(&mut self, topic: &str, payload: serde_json::Value) -> String {
            let r = self.next_ref();
            self.send(serde_json::json!([r, r, topic, "phx_join", payload]))
                .await;
            let ok = crate::support::ok(serde_json::json!({}));
            self.expect(crate::support::reply(&r, &r, topic, ok)).await;
            r
        }

        /// Joins a `room:*` topic and reads its post-join messages.
        pub async fn join_room(
            &mut self,
            topic: &str,
            user: serde_json::Value,
            user_id: serde_json::Value,
        ) -> String {
            let payload = serde_json::json!({"user": user});
            let join_ref = self.join(topic, payload).await;
            for want in crate::support::room_join_pushes(&join_ref, topic, user, user_id) {
                self.expect(want).await;
            }
            join_ref
        }

        /// Sends `event` on a joined topic and returns the ref used.
        pub async fn push(
            &mut self,
            join_ref: &str,
            topic: &str,
            event: &str,
            payload: serde_json::Value,
        ) -> String {
            let r = self.next_ref();
            self.send(serde_json::json!([join_ref, r, topic, event, payload]))
                .await;
            r
        }

        /// `echo` round trip on a joined room: the next message must be the
        /// reply. Proves the channel processed everything sent to it before.
        pub async fn echo(&mut self, join_ref: &str, topic: &str) {
            let payload = serde_json::json!({"probe": self.counter});
            let r = self.push(join_ref, topic, "echo", payload.clone()).await;
            let ok = crate::support::ok(payload);
            self.expect(crate::support::reply(join_ref, &r, topic, ok))
                .await;
        }
    };
}
pub(crate) use phoenix_helpers;

// ---------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One frame as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text frame, parsed as JSON.
    Json(Value),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A close frame and its code (`None` if it had no body).
    Close(Option<u16>),
    /// The connection ended without a close frame (reset, EOF, error).
    Gone(String),
}

/// A raw Phoenix client over tokio-tungstenite.
pub struct WsClient {
    sink: SplitSink<WsStream, Message>,
    stream: SplitStream<WsStream>,
    /// V2 (array) frames, from the query's `vsn=2.0.x`; V1 (objects) otherwise.
    pub v2: bool,
    /// Headers of the 101 answer.
    pub headers: http::HeaderMap,
    counter: u64,
}

/// The client configuration: large enough for the oversize and flood tests.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_frame_size(Some(64 << 20))
        .max_message_size(Some(64 << 20))
}

impl WsClient {
    phoenix_helpers!();

    /// Connects to `/socket/websocket?<query>`; `Err(status)` if the upgrade
    /// is refused with an HTTP answer.
    pub async fn connect(addr: SocketAddr, query: &str) -> Result<WsClient, u16> {
        Self::connect_with(addr, query, &[]).await
    }

    /// As [`connect`](Self::connect), with extra request headers (`Origin`,
    /// `Sec-WebSocket-Protocol`…).
    pub async fn connect_with(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, u16> {
        let url = if query.is_empty() {
            format!("ws://{addr}/socket/websocket")
        } else {
            format!("ws://{addr}/socket/websocket?{query}")
        };
        let mut request = url.as_str().into_client_request().expect("request");
        for (name, value) in headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                http::HeaderValue::from_str(value).expect("header value"),
            );
        }
        let connect =
            tokio_tungstenite::connect_async_with_config(request, Some(client_config()), true);
        let result = tokio::time::timeout(RECV_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| panic!("upgrade to {url} timed out"));
        match result {
            Ok((ws, response)) => {
                let (sink, stream) = ws.split();
                Ok(WsClient {
                    sink,
                    stream,
                    v2: query.split('&').any(|p| p.starts_with("vsn=2.0.")),
                    headers: response.headers().clone(),
                    counter: 0,
                })
            }
            Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("upgrade to {url} failed: {e}"),
        }
    }

    /// Sends one JSON text frame (a V2 array or a V1 object).
    pub async fn send(&mut self, value: Value) {
        self.send_message(Message::text(value.to_string())).await;
    }

    /// Sends a text frame as is.
    pub async fn send_text(&mut self, text: &str) {
        self.send_message(Message::text(text.to_string())).await;
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send_message(Message::binary(bytes)).await;
    }

    /// Sends a text frame whose bytes need not be UTF-8.
    pub async fn send_text_bytes(&mut self, bytes: Vec<u8>) {
        let frame = RawFrame::message(bytes, OpCode::Data(Data::Text), true);
        self.send_message(Message::Frame(frame)).await;
    }

    /// Sends a message, returning the error instead of failing the test
    /// (the server may close the connection while a large frame is written).
    pub async fn try_send(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        tokio::time::timeout(RECV_TIMEOUT, self.sink.send(message))
            .await
            .expect("send timed out")
    }

    async fn send_message(&mut self, message: Message) {
        tokio::time::timeout(RECV_TIMEOUT, self.sink.send(message))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// The next text, binary or close frame; fails the test after 5 s.
    pub async fn recv(&mut self) -> Frame {
        match self.recv_within(RECV_TIMEOUT).await {
            Some(frame) => frame,
            None => panic!("no frame within {RECV_TIMEOUT:?}"),
        }
    }

    /// The next frame, or `None` if nothing arrives within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(next) => next,
                Err(_) => return None,
            };
            return Some(match next {
                None => Frame::Gone("stream ended".to_string()),
                Some(Err(e)) => Frame::Gone(e.to_string()),
                Some(Ok(Message::Text(text))) => {
                    Frame::Json(serde_json::from_str(text.as_str()).unwrap_or_else(|e| {
                        panic!("server sent a text frame that is not JSON ({e}): {text:?}")
                    }))
                }
                Some(Ok(Message::Binary(bytes))) => Frame::Binary(bytes.to_vec()),
                Some(Ok(Message::Close(close))) => {
                    self.finish_close().await;
                    Frame::Close(close.map(|c| u16::from(c.code)))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            });
        }
    }

    /// Completes the close handshake after a server close frame: reading on
    /// flushes tungstenite's queued close reply, then waits for the server to
    /// end the TCP connection (RFC 6455 §7.1.1).
    async fn finish_close(&mut self) {
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => {
                    panic!("TCP connection still open {RECV_TIMEOUT:?} after the close frame")
                }
                Ok(None | Some(Err(_))) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(Some(Ok(other))) => panic!("frame after the close frame: {other:?}"),
            }
        }
    }

    /// Ends the connection abruptly: no close frame, and the TCP connection
    /// is reset (`SO_LINGER` 0) rather than shut down.
    pub fn reset(self) {
        let ws = self
            .sink
            .reunite(self.stream)
            .expect("sink and stream of one connection");
        if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
            tcp.set_zero_linger().expect("SO_LINGER 0");
        }
        drop(ws);
    }

    /// Waits for a pong carrying `data` (other frames are an error).
    pub async fn expect_pong(&mut self, data: &[u8]) {
        match tokio::time::timeout(RECV_TIMEOUT, self.stream.next()).await {
            Ok(Some(Ok(Message::Pong(got)))) => assert_eq!(&got[..], data),
            other => panic!("expected a pong, got {other:?}"),
        }
    }

    /// The next frame, which must be JSON.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Frame::Json(value) => value,
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// The next frame, which must be binary.
    pub async fn recv_binary(&mut self) -> Vec<u8> {
        match self.recv().await {
            Frame::Binary(bytes) => bytes,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// The next text frame as the server wrote it (for byte comparisons).
    pub async fn recv_text(&mut self) -> String {
        loop {
            let next = tokio::time::timeout(RECV_TIMEOUT, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {RECV_TIMEOUT:?}"));
            match next {
                Some(Ok(Message::Text(text))) => return text.as_str().to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Asserts that the next frame is exactly `want`.
    pub async fn expect(&mut self, want: Value) {
        let got = self.recv().await;
        assert_eq!(got, Frame::Json(want), "unexpected frame");
    }

    /// Asserts that the next frame is a close frame and returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        match self.recv().await {
            Frame::Close(Some(code)) => code,
            other => panic!("expected a close frame with a code, got {other:?}"),
        }
    }

    /// Asserts that the connection ends next (close frame or abrupt end);
    /// returns the close code if there was one.
    pub async fn expect_ended(&mut self) -> Option<u16> {
        match self.recv().await {
            Frame::Close(code) => code,
            Frame::Gone(_) => None,
            other => panic!("expected the connection to end, got {other:?}"),
        }
    }

    /// Asserts that nothing at all arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(frame) = self.recv_within(wait).await {
            panic!("expected silence for {wait:?}, got {frame:?}");
        }
    }

    /// Sends every message while reading concurrently; returns the first `n`
    /// frames received.
    pub async fn flood(&mut self, messages: Vec<Message>, n: usize) -> Vec<Frame> {
        let sink = &mut self.sink;
        let stream = &mut self.stream;
        let send = async move {
            let mut all = futures_util::stream::iter(messages.into_iter().map(Ok));
            sink.send_all(&mut all).await.expect("flood send");
        };
        let read = async move {
            let mut frames = Vec::with_capacity(n);
            while frames.len() < n {
                let next = tokio::time::timeout(RECV_TIMEOUT, stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("flood: only {} of {n} answers", frames.len()));
                match next {
                    Some(Ok(Message::Text(text))) => frames.push(Frame::Json(
                        serde_json::from_str(text.as_str()).expect("json"),
                    )),
                    Some(Ok(Message::Binary(bytes))) => frames.push(Frame::Binary(bytes.to_vec())),
                    Some(Ok(Message::Close(c))) => {
                        panic!("flood: closed after {} answers: {c:?}", frames.len())
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("flood: error after {} answers: {e}", frames.len()),
                    None => panic!("flood: stream ended after {} answers", frames.len()),
                }
            }
            frames
        };
        let ((), frames) = tokio::join!(send, read);
        frames
    }
}

// ---------------------------------------------------------------------------
// V2 binary frames (PROTOCOL §2.3)
// ---------------------------------------------------------------------------

/// A kind 0 client push: 5 length bytes, then the strings, then the payload.
pub fn binary_push(join_ref: &str, r: &str, topic: &str, event: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![
        0,
        join_ref.len() as u8,
        r.len() as u8,
        topic.len() as u8,
        event.len() as u8,
    ];
    for part in [join_ref, r, topic, event] {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// A decoded kind 1 reply.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryReply {
    pub join_ref: String,
    pub r: String,
    pub topic: String,
    pub status: String,
    pub payload: Vec<u8>,
}

/// Decodes a kind 1 reply, failing the test on any other frame.
pub fn decode_binary_reply(bytes: &[u8]) -> BinaryReply {
    assert!(bytes.len() >= 5, "binary reply too short: {bytes:?}");
    assert_eq!(bytes[0], 1, "expected kind 1 (reply), got {bytes:?}");
    let lens = [bytes[1], bytes[2], bytes[3], bytes[4]].map(usize::from);
    let mut at = 5;
    let mut parts = Vec::new();
    for len in lens {
        let part = bytes
            .get(at..at + len)
            .unwrap_or_else(|| panic!("truncated reply {bytes:?}"));
        parts.push(String::from_utf8(part.to_vec()).expect("utf-8 header field"));
        at += len;
    }
    BinaryReply {
        join_ref: parts[0].clone(),
        r: parts[1].clone(),
        topic: parts[2].clone(),
        status: parts[3].clone(),
        payload: bytes[at..].to_vec(),
    }
}
