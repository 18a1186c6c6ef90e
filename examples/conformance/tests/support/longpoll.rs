//! LongPoll helpers (PROTOCOL §6): raw requests against `/socket/longpoll`
//! and [`LpClient`], a client that talks like phoenix.js's LongPoll transport.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::Method;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{RECV_TIMEOUT, TestServer, ok, phoenix_helpers, reply, room_join_pushes};

/// The LongPoll transport's path.
pub const PATH: &str = "/socket/longpoll";

/// The content type of every LongPoll answer with a body.
pub const JSON_TYPE: &str = "application/json; charset=utf-8";

/// The content type phoenix.js posts with.
pub const NDJSON: &str = "application/x-ndjson";

/// The most any single request may take: more than the default 10 s window.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Percent-encodes a query component (like `encodeURIComponent`).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A token that differs from `token` in one character at `at`.
pub fn flip_char(token: &str, at: usize) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    assert!(at < chars.len(), "token {token:?} too short to flip [{at}]");
    chars[at] = match chars[at] {
        'A' => 'B',
        'a' => 'b',
        '0' => '1',
        _ => 'A',
    };
    chars.into_iter().collect()
}

// ---------------------------------------------------------------------------
// Raw requests
// ---------------------------------------------------------------------------

/// A LongPoll answer read in full.
#[derive(Debug)]
pub struct LpAnswer {
    /// The HTTP status.
    pub http: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl LpAnswer {
    /// A header's value as text (`None` if absent or not text).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text, for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body, which must be JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "LongPoll body is not JSON ({e}): HTTP {} {:?}",
                self.http,
                self.text()
            )
        })
    }

    /// The body's `status`.
    pub fn status(&self) -> u64 {
        let body = self.json();
        body["status"]
            .as_u64()
            .unwrap_or_else(|| panic!("LongPoll body without numeric status: {body}"))
    }

    /// Checklist 79 (PROTOCOL §6.1): HTTP 200, the JSON content type,
    /// `cache-control: no-store`, `access-control-allow-origin: *`, and a
    /// JSON object body with a numeric `status`.
    pub fn assert_common(&self) {
        let body = self.text();
        assert_eq!(self.http, 200, "LongPoll answer HTTP status; body {body:?}");
        let content_type = self.header("content-type").map(str::to_ascii_lowercase);
        assert_eq!(
            content_type.as_deref(),
            Some(JSON_TYPE),
            "content-type of {body:?}"
        );
        for (name, want) in [
            ("cache-control", "no-store"),
            ("access-control-allow-origin", "*"),
        ] {
            assert_eq!(self.header(name), Some(want), "{name} of {body:?}");
        }
        let json = self.json();
        assert!(
            json.is_object() && json["status"].is_u64(),
            "LongPoll body must be an object with a status: {json}"
        );
    }

    /// Asserts a common answer whose body is exactly `want`.
    pub fn assert_body(&self, want: Value) {
        self.assert_common();
        assert_eq!(self.json(), want, "LongPoll answer body");
    }

    /// Asserts a common answer whose body is exactly `{"status":<status>}`.
    pub fn assert_status(&self, status: u64) {
        self.assert_body(json!({ "status": status }));
    }

    /// Asserts a new-session answer (PROTOCOL §6.3): exactly
    /// `{"status":410,"token":T,"messages":[]}` with a non-empty `T`;
    /// returns `T`.
    pub fn assert_new_session(&self) -> String {
        self.assert_common();
        let body = self.json();
        let token = body["token"].as_str().unwrap_or_default().to_string();
        assert!(!token.is_empty(), "expected a new session, got {body}");
        assert_eq!(
            body,
            json!({"status": 410, "token": token, "messages": []}),
            "expected a new session"
        );
        token
    }

    /// Checklist 79 and 81: a GET answer is a common answer whose body status
    /// is 200, 204, 410 or 403, with the shape of PROTOCOL §6.1.
    pub fn assert_get(&self) {
        self.assert_common();
        let body = self.json();
        match self.status() {
            200 | 204 | 410 => {
                assert!(
                    body["token"].as_str().is_some_and(|t| !t.is_empty()),
                    "GET answer without token: {body}"
                );
                let messages = body["messages"]
                    .as_array()
                    .unwrap_or_else(|| panic!("GET answer without messages: {body}"));
                assert!(
                    messages.iter().all(Value::is_string),
                    "messages must be strings: {body}"
                );
                let keys = body.as_object().expect("object").len();
                assert_eq!(keys, 3, "GET answer with extra fields: {body}");
                if self.status() != 200 {
                    assert!(messages.is_empty(), "{body}");
                }
            }
            403 => assert_eq!(body, json!({"status": 403})),
            other => panic!("GET answered with body status {other} (phoenix.js throws): {body}"),
        }
    }

    /// The messages of a poll answer, which must be 200 or 204 for `token`.
    pub fn poll_messages(&self, token: &str) -> Vec<String> {
        let body = self.json();
        let status = self.status();
        assert!(
            status == 200 || status == 204,
            "poll of a live session answered {body}"
        );
        assert_eq!(body["token"], json!(token), "poll answer token");
        let messages: Vec<String> = body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m.as_str().expect("string message").to_string())
            .collect();
        assert!(
            status == 204 || !messages.is_empty(),
            "poll answered 200 without messages (PROTOCOL §6.1: 200 means messages delivered): {body}"
        );
        messages
    }

    /// As [`poll_messages`](Self::poll_messages), parsed.
    pub fn poll_values(&self, token: &str) -> Vec<Value> {
        let messages = self.poll_messages(token);
        messages
            .iter()
            .map(|m| serde_json::from_str(m).expect("JSON message"))
            .collect()
    }
}

/// Sends one request to the LongPoll path; `Err` on a transport failure
/// (connection reset, no answer within [`REQUEST_TIMEOUT`]).
pub async fn lp_try_request(
    client: &reqwest::Client,
    addr: SocketAddr,
    method: Method,
    query: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<LpAnswer, String> {
    let url = if query.is_empty() {
        format!("http://{addr}{PATH}")
    } else {
        format!("http://{addr}{PATH}?{query}")
    };
    let mut req = client.request(method.clone(), url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let work = async move {
        let resp = req.send().await.map_err(|e| format!("send: {e:?}"))?;
        let http = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("read body: {e:?}"))?;
        Ok(LpAnswer {
            http,
            headers,
            body: body.to_vec(),
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{method} {PATH} took more than {REQUEST_TIMEOUT:?}"
            ))
        })
}

/// As [`lp_try_request`] with a fresh client, failing the test on a
/// transport failure.
pub async fn lp_request(
    addr: SocketAddr,
    method: Method,
    query: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> LpAnswer {
    let client = reqwest::Client::new();
    lp_try_request(&client, addr, method.clone(), query, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {PATH}?{query}: {e}"))
}

impl TestServer {
    /// Opens a LongPoll session with the given query.
    pub async fn lp(&self, query: &str) -> LpClient {
        LpClient::open(self.addr, query).await
    }

    /// Opens a V2 LongPoll session (`vsn=2.0.0`).
    pub async fn lp_v2(&self) -> LpClient {
        self.lp("vsn=2.0.0").await
    }
}

// ---------------------------------------------------------------------------
// LpClient
// ---------------------------------------------------------------------------

/// Which way a request carries the session token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenIn {
    /// `token` query parameter (phoenix.js ≤ 1.8).
    Query,
    /// `x-phoenix-longpoll-token` header (phoenix.js 1.9).
    Header,
}

impl TokenIn {
    /// Both ways.
    pub const BOTH: [TokenIn; 2] = [TokenIn::Query, TokenIn::Header];

    /// `token` as the `(query token, header token)` of a request.
    pub fn place(self, token: &str) -> (Option<&str>, Option<&str>) {
        match self {
            TokenIn::Query => (Some(token), None),
            TokenIn::Header => (None, Some(token)),
        }
    }
}

/// A LongPoll session, driven the way phoenix.js drives it: every request
/// carries the connect query (and `vsn`), plus the session token.
pub struct LpClient {
    addr: SocketAddr,
    /// The connect query, sent on every request (`vsn`, params).
    pub query: String,
    /// The session token from the opening 410.
    pub token: String,
    /// V2 (arrays) when the query selects `vsn=2.0.x`; V1 objects otherwise.
    pub v2: bool,
    /// How this client presents its token.
    pub token_in: TokenIn,
    client: reqwest::Client,
    counter: u64,
    inbox: VecDeque<String>,
}

impl LpClient {
    phoenix_helpers!();

    /// Opens a session (`GET` without token), asserting the 410 answer.
    pub async fn open(addr: SocketAddr, query: &str) -> LpClient {
        Self::open_with(addr, query, &[]).await
    }

    /// As [`open`](Self::open), with extra request headers.
    pub async fn open_with(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> LpClient {
        let client = reqwest::Client::new();
        let answer = lp_try_request(&client, addr, Method::GET, query, headers, None)
            .await
            .unwrap_or_else(|e| panic!("open {query:?}: {e}"));
        LpClient {
            addr,
            query: query.to_string(),
            token: answer.assert_new_session(),
            v2: query
                .split('&')
                .any(|p| p.starts_with("vsn=2.0.") && p.len() > "vsn=2.0.".len()),
            token_in: TokenIn::Query,
            client,
            counter: 0,
            inbox: VecDeque::new(),
        }
    }

    /// This client's connect query with `token` appended last.
    fn query_with(&self, token: &str) -> String {
        let token = format!("token={}", encode_component(token));
        if self.query.is_empty() {
            token
        } else {
            format!("{}&{token}", self.query)
        }
    }

    /// This client's connect query with its token, as phoenix.js ≤ 1.8 sends.
    pub fn token_query(&self) -> String {
        self.query_with(&self.token)
    }

    /// Any request with this client's connect query, plus the given query
    /// token (appended last) and header token.
    pub async fn request(
        &self,
        method: Method,
        query_token: Option<&str>,
        header_token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> LpAnswer {
        let query = query_token.map_or_else(|| self.query.clone(), |t| self.query_with(t));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.extend(header_token.map(|t| ("x-phoenix-longpoll-token", t)));
        lp_try_request(&self.client, self.addr, method.clone(), &query, &all, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {PATH}?{query}: {e}"))
    }

    /// A GET with this session's token; asserts the common answer format and
    /// a body status phoenix.js understands (checklist 79, 81).
    pub async fn get(&self) -> LpAnswer {
        let (q, h) = self.token_in.place(&self.token);
        let answer = self.request(Method::GET, q, h, &[], None).await;
        answer.assert_get();
        answer
    }

    /// One poll of this session: the GET must be 200 or 204 with this
    /// session's token; returns the messages.
    pub async fn poll(&self) -> Vec<String> {
        self.get().await.poll_messages(&self.token)
    }

    /// A GET of this session (token in the query) on its own task, with its
    /// own HTTP client: a poll left pending while the test does something
    /// else.
    pub fn spawn_poll(&self) -> JoinHandle<LpAnswer> {
        let (addr, query) = (self.addr, self.token_query());
        tokio::spawn(async move { lp_request(addr, Method::GET, &query, &[], None).await })
    }

    /// A POST with the given tokens, content type and body (no check).
    pub async fn post_with(
        &self,
        query_token: Option<&str>,
        header_token: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> LpAnswer {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        self.request(
            Method::POST,
            query_token,
            header_token,
            &headers,
            Some(body),
        )
        .await
    }

    /// A POST with this session's token (no check).
    pub async fn post(&self, content_type: Option<&str>, body: Vec<u8>) -> LpAnswer {
        let (q, h) = self.token_in.place(&self.token);
        self.post_with(q, h, content_type, body).await
    }

    /// An ndjson POST of these lines, joined with `\n` (no check).
    pub async fn post_lines(&self, lines: &[String]) -> LpAnswer {
        self.post(Some(NDJSON), lines.join("\n").into_bytes()).await
    }

    /// Sends messages in one POST as phoenix.js does (V2: ndjson; V1: one
    /// JSON body per POST); asserts `{"status":200}`.
    pub async fn send_all(&mut self, values: &[Value]) {
        if self.v2 {
            let lines: Vec<String> = values.iter().map(Value::to_string).collect();
            let answer = self.post_lines(&lines).await;
            answer.assert_status(200);
        } else {
            for value in values {
                let body = value.to_string().into_bytes();
                let answer = self.post(Some("application/json"), body).await;
                answer.assert_status(200);
            }
        }
    }

    /// Sends one message; asserts `{"status":200}`.
    pub async fn send(&mut self, value: Value) {
        self.send_all(&[value]).await;
    }

    /// Sends V2 binary pushes as base64 ndjson lines; asserts `{"status":200}`.
    pub async fn send_binary(&mut self, frames: &[Vec<u8>]) {
        let lines: Vec<String> = frames.iter().map(|f| BASE64.encode(f)).collect();
        let answer = self.post_lines(&lines).await;
        answer.assert_status(200);
    }

    /// The next message as the server serialized it, polling as needed;
    /// fails the test after `RECV_TIMEOUT`.
    pub async fn recv_text(&mut self) -> String {
        let deadline = Instant::now() + RECV_TIMEOUT;
        while self.inbox.is_empty() {
            let messages = tokio::time::timeout_at(deadline, self.poll())
                .await
                .unwrap_or_else(|_| panic!("no LongPoll message within {RECV_TIMEOUT:?}"));
            self.inbox.extend(messages);
        }
        self.inbox.pop_front().expect("inbox")
    }

    /// The next message, parsed.
    pub async fn recv(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("LongPoll message is not JSON ({e}): {text:?}"))
    }

    /// The next `n` messages.
    pub async fn recv_n(&mut self, n: usize) -> Vec<Value> {
        let mut got = Vec::with_capacity(n);
        for _ in 0..n {
            got.push(self.recv().await);
        }
        got
    }

    /// Asserts that the next message is exactly `want`.
    pub async fn expect(&mut self, want: Value) {
        let got = self.recv().await;
        assert_eq!(got, want, "unexpected LongPoll message");
    }

    /// Asserts that the next messages are exactly `wants`, in order.
    pub async fn expect_all(&mut self, wants: impl IntoIterator<Item = Value>) {
        for want in wants {
            self.expect(want).await;
        }
    }

    /// Messages up to and including the first that matches `pred`.
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let message = self.recv().await;
            let done = pred(&message);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }

    /// Messages received but not yet consumed.
    pub fn pending(&self) -> usize {
        self.inbox.len()
    }

    /// Reads what a `room:*` join with `join_ref == ref == join_ref` produces
    /// (PROTOCOL §5.2): the ok reply, `user_entered`, then `joined`.
    pub async fn join_room_replies(
        &mut self,
        join_ref: &str,
        topic: &str,
        user: Value,
        user_id: Value,
    ) {
        self.expect(reply(join_ref, join_ref, topic, ok(json!({}))))
            .await;
        self.expect_all(room_join_pushes(join_ref, topic, user, user_id))
            .await;
    }

    /// Asserts that this session is gone: a POST gets `{"status":410}` and a
    /// GET opens a new session (410 with another token). Returns the new
    /// session's token.
    pub async fn assert_gone(&self) -> String {
        let hb = self.heartbeat("gone?").to_string().into_bytes();
        let content_type = if self.v2 { NDJSON } else { "application/json" };
        self.post(Some(content_type), hb).await.assert_status(410);
        let fresh = self.get().await.assert_new_session();
        assert_ne!(fresh, self.token, "a new session must have a new token");
        fresh
    }
}
