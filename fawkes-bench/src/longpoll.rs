//! One LongPoll client as phoenix.js runs it (PROTOCOL §6): a `GET` opens a
//! session (`{"status":410,"token":…}`), `POST`s carry V2 messages as
//! `application/x-ndjson` lines, and exactly one `GET` is outstanding at all
//! times, sent again as soon as the previous one is answered. No
//! heartbeats: the polls are what keeps the session alive.
//!
//! Requests go through one [`reqwest::Client`] per source address, shared
//! by every session. Its pool has no limit on connections, so every pending
//! poll holds a connection of its own and nothing waits for one; a
//! connection freed by an answer serves the next request. N idle clients
//! thus keep about N connections (and as many open files), not the two per
//! client a browser would.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use fawkes_protocol::{Message, events};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, RequestBuilder, Url};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client::{Failure, FailureKind, SERIALIZER, Sources, Target, encode, join_outcome};

/// How long a poll may go unanswered before the session counts as lost:
/// phoenix.js's `longpollerTimeout`. The server answers within its window
/// (10 s).
const POLL_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP clients of a run: one per source address, each with its own
/// connection pool.
pub struct HttpClients(Vec<Client>);

impl HttpClients {
    /// Clients for `target` that bind their sockets to `sources` and give
    /// up connecting after `connect_timeout`.
    ///
    /// # Errors
    ///
    /// A URL reqwest does not take, or a client that cannot be built.
    pub fn new(
        target: &Target,
        sources: Sources,
        connect_timeout: Duration,
    ) -> Result<HttpClients, String> {
        let url = Url::parse(&target.url).map_err(|e| format!("bad url {:?}: {e}", target.url))?;
        let clients = sources.all().into_iter().map(|source| {
            let mut builder = Client::builder()
                // Load goes to the loopback server only, never through a
                // proxy named in the environment.
                .no_proxy()
                .http1_only()
                .connect_timeout(connect_timeout)
                .user_agent(concat!("fawkes-bench/", env!("CARGO_PKG_VERSION")))
                .local_address(source);
            // A host name goes to the loopback address `Target` checked.
            if let Some(host) = url.domain() {
                builder = builder.resolve(host, target.addr);
            }
            builder
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        });
        clients.collect::<Result<_, _>>().map(HttpClients)
    }

    /// The client of connection `i`: its source address is
    /// [`Sources::for_connection`]`(i)`.
    pub fn for_connection(&self, i: usize) -> &Client {
        &self.0[i % self.0.len()]
    }
}

/// A poll in flight: the messages it brings, none for a `204`.
type Poll = Pin<Box<dyn Future<Output = Result<Vec<Message>, Failure>> + Send>>;

/// An open LongPoll session and its outstanding poll.
pub struct LongPoll {
    http: Client,
    /// The URL with the session's token (`&token=`, as phoenix.js 1.8
    /// sends it): every poll and post goes there.
    url: Url,
    next_ref: u64,
    /// The outstanding poll; its request goes out when it is first awaited.
    pending: Poll,
}

impl LongPoll {
    /// Opens a session: a `GET` without a token, answered `410` with one.
    ///
    /// # Errors
    ///
    /// [`FailureKind::Connect`] when no connection could be made,
    /// [`FailureKind::Handshake`] for any other error or answer. The caller
    /// sets the timeout.
    pub async fn open(http: &Client, target: &Target) -> Result<LongPoll, Failure> {
        let handshake = |e| Failure::new(FailureKind::Handshake, e);
        let response = http.get(target.url.as_str()).send().await.map_err(|e| {
            let kind = if e.is_connect() {
                FailureKind::Connect
            } else {
                FailureKind::Handshake
            };
            Failure::new(kind, describe(e))
        })?;
        let body = read_body(response)
            .await
            .map_err(|e| handshake(describe(e)))?;
        let token = match (status(&body), body.get("token").and_then(Value::as_str)) {
            (Some(410), Some(token)) => token,
            _ => return Err(handshake(format!("no session opened: {body}"))),
        };
        let mut url = Url::parse(&target.url).map_err(|e| handshake(e.to_string()))?;
        url.query_pairs_mut().append_pair("token", token);
        let pending = next_poll(http, &url);
        Ok(LongPoll {
            http: http.clone(),
            url,
            next_ref: 1,
            pending,
        })
    }

    /// Joins `topic` (join ref = ref, as phoenix.js does): posts the
    /// `phx_join` with the poll out, and polls until the reply comes and
    /// the post is answered. Returns the time from the post to the answer
    /// of the poll that brought the reply.
    ///
    /// # Errors
    ///
    /// [`FailureKind::Refused`] on an error reply, and those of
    /// [`recv`](Self::recv) and of the post. The caller sets the timeout.
    pub async fn join(&mut self, topic: &str) -> Result<Duration, Failure> {
        let ref_ = Value::String(self.next_ref.to_string());
        self.next_ref += 1;
        let frame = encode(
            Some(ref_.clone()),
            ref_.clone(),
            topic,
            events::JOIN,
            json!({}),
        )?;
        if !frame.is_text() {
            return Err(Failure::new(FailureKind::Closed, "join encoded as binary"));
        }
        let line = frame.to_bytes();
        let post = post(
            self.http
                .post(self.url.clone())
                .header(CONTENT_TYPE, "application/x-ndjson")
                .body(line),
        );
        let mut post = std::pin::pin!(post);
        let start = Instant::now();
        let (mut posted, mut replied) = (false, None);
        loop {
            tokio::select! {
                // The poll first: phoenix.js has it out before it posts.
                biased;
                messages = self.recv() => {
                    for msg in messages? {
                        if let Some(outcome) = join_outcome(&msg, &ref_, topic) {
                            outcome?;
                            replied = Some(start.elapsed());
                        }
                    }
                }
                answer = &mut post, if !posted => {
                    answer?;
                    posted = true;
                }
            }
            if let (true, Some(took)) = (posted, replied) {
                return Ok(took);
            }
        }
    }

    /// The messages of the outstanding poll once it is answered (none for a
    /// `204`). The next poll takes its place at once and goes out as soon
    /// as this is called again, as phoenix.js polls again straight after
    /// every answer. Cancel-safe: an interrupted wait keeps the poll.
    ///
    /// # Errors
    ///
    /// [`FailureKind::Closed`] when the session is gone (`410`), a request
    /// fails or an answer does not decode; [`FailureKind::Timeout`] for a
    /// poll unanswered for 20 s.
    pub async fn recv(&mut self) -> Result<Vec<Message>, Failure> {
        let answer = (&mut self.pending).await;
        self.pending = next_poll(&self.http, &self.url);
        answer
    }
}

/// A poll of the session at `url`, not yet sent.
fn next_poll(http: &Client, url: &Url) -> Poll {
    Box::pin(poll(http.get(url.clone()).timeout(POLL_TIMEOUT)))
}

/// Sends one poll and decodes its answer.
async fn poll(request: RequestBuilder) -> Result<Vec<Message>, Failure> {
    let response = request.send().await.map_err(lost)?;
    let body = read_body(response).await.map_err(lost)?;
    match status(&body) {
        Some(200) => {
            let messages = body.get("messages").and_then(Value::as_array);
            let texts = messages.into_iter().flatten().map(Value::as_str);
            texts
                .map(|text| {
                    let text = text.ok_or_else(|| closed(format!("not a message: {body}")))?;
                    SERIALIZER.decode_text(text).map_err(closed)
                })
                .collect()
        }
        Some(204) => Ok(Vec::new()),
        Some(410) => Err(closed("session gone (410)")),
        _ => Err(closed(format!("poll answered {body}"))),
    }
}

/// Sends one post; `Ok` once it is answered `200`.
async fn post(request: RequestBuilder) -> Result<(), Failure> {
    let response = request.send().await.map_err(lost)?;
    let body = read_body(response).await.map_err(lost)?;
    match status(&body) {
        Some(200) => Ok(()),
        Some(410) => Err(closed("session gone (410)")),
        _ => Err(closed(format!("post answered {body}"))),
    }
}

/// An answer's JSON body. LongPoll answers are HTTP 200 with the outcome in
/// the body; any other HTTP status is an error.
async fn read_body(response: reqwest::Response) -> Result<Value, reqwest::Error> {
    response.error_for_status()?.json().await
}

/// The `status` field of an answer.
fn status(body: &Value) -> Option<u64> {
    body.get("status").and_then(Value::as_u64)
}

fn closed(detail: impl std::fmt::Display) -> Failure {
    Failure::new(FailureKind::Closed, detail)
}

/// A request that failed: timed out, or the session is as good as lost.
fn lost(e: reqwest::Error) -> Failure {
    let kind = if e.is_timeout() {
        FailureKind::Timeout
    } else {
        FailureKind::Closed
    };
    Failure::new(kind, describe(e))
}

/// The error with its causes (reqwest's own text leaves them out, such as
/// "Too many open files"), without the URL: every session's differs.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
