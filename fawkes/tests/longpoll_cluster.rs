//! LongPoll across a cluster over a real Redis, with no sticky sessions:
//! endpoints in this process, each with its own adapter, node name and
//! random secret, served over TCP.
//!
//! * a session opened on one node is polled and posted through the others:
//!   join reply, pushes and broadcasts;
//! * a forwarded `POST` is `408` when a message outlasts the window, `410`
//!   when the session ended (and a forwarded `GET` then opens a session on
//!   the receiving node);
//! * a tampered token is refused by the session's node;
//! * once the session's node is gone, a `GET` opens a new session and a
//!   `POST` is `410`, within the window plus the margin;
//! * requests waiting for other nodes are bounded (HTTP 503 beyond);
//! * garbage node messages on the LongPoll service break nothing.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use fawkes::pubsub::redis::{RedisAdapter, RedisConfig};
use fawkes::{Endpoint, LongPollConfig};
use serde_json::{Value, json};
use support::*;

/// How long a forwarded request waits beyond the window (the crate's
/// `FORWARD_MARGIN`).
const MARGIN: Duration = Duration::from_secs(2);

/// The node-message service of `/socket`'s LongPoll requests.
const SERVICE: &str = "longpoll:/socket";

/// One node of the cluster.
struct Node {
    server: TestServer,
    adapter: RedisAdapter,
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

/// Nodes named `names` on one fresh namespace, each serving the probe
/// socket with LongPoll as `lp` says; returns once all hear Redis.
async fn cluster(obs: &Observer, names: &[&'static str], lp: LongPollConfig) -> Vec<Node> {
    let ns = namespace("lp-test");
    let mut nodes = Vec::new();
    for &name in names {
        let adapter =
            RedisAdapter::new(RedisConfig::new(redis_url()).namespace(&ns)).expect("redis url");
        let (router, endpoint) = Endpoint::builder()
            .node_name(name)
            .adapter(adapter.clone())
            .socket("/socket", ProbeSocket(obs.clone()))
            .channel("probe:*", Probe::new(obs.clone()))
            .longpoll(lp.clone())
            .build();
        nodes.push(Node {
            server: serve(router, endpoint).await,
            adapter,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nodes.iter().all(|n| n.adapter.is_connected()) {
        assert!(Instant::now() < deadline, "nodes not connected to redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes
}

fn lp(window_ms: u64) -> LongPollConfig {
    LongPollConfig::default().window(Duration::from_millis(window_ms))
}

/// A V2 LongPoll client whose requests may go to any node.
struct Lp {
    http: reqwest::Client,
    query: String,
    token: String,
}

impl Lp {
    /// Opens a session on `addr`; panics unless the answer is 410 with a token.
    async fn open(addr: SocketAddr, query: &str) -> Lp {
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/socket/longpoll?vsn=2.0.0{query}");
        let body = get(&http, &url).await;
        assert_eq!(body["status"], 410, "open: {body}");
        let token = body["token"].as_str().expect("token").to_owned();
        Lp {
            http,
            query: query.to_owned(),
            token,
        }
    }

    /// The same client presenting another token.
    fn with_token(&self, token: &str) -> Lp {
        Lp {
            http: self.http.clone(),
            query: self.query.clone(),
            token: token.to_owned(),
        }
    }

    fn url(&self, addr: SocketAddr) -> String {
        format!(
            "http://{addr}/socket/longpoll?vsn=2.0.0{}&token={}",
            self.query, self.token
        )
    }

    async fn poll(&self, addr: SocketAddr) -> Value {
        get(&self.http, &self.url(addr)).await
    }

    /// Polls `addr` until `n` messages arrived; returns them decoded.
    async fn messages(&self, addr: SocketAddr, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while out.len() < n {
            assert!(Instant::now() < deadline, "only {out:?} of {n}");
            let body = self.poll(addr).await;
            assert!(
                body["status"] == 200 || body["status"] == 204,
                "poll: {body}"
            );
            assert_eq!(body["token"], json!(self.token), "the session's token");
            out.extend(decoded(&body));
        }
        out
    }

    async fn post_raw(&self, addr: SocketAddr, lines: &[Value]) -> reqwest::Response {
        let body: Vec<String> = lines.iter().map(Value::to_string).collect();
        tokio::time::timeout(
            Duration::from_secs(15),
            self.http
                .post(self.url(addr))
                .header("content-type", "application/x-ndjson")
                .body(body.join("\n"))
                .send(),
        )
        .await
        .expect("post timed out")
        .expect("post")
    }

    async fn post(&self, addr: SocketAddr, lines: &[Value]) -> Value {
        let answer = self.post_raw(addr, lines).await;
        assert_eq!(answer.status(), 200);
        answer.json().await.expect("json")
    }
}

/// The messages of a poll answer, decoded.
fn decoded(body: &Value) -> Vec<Value> {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| serde_json::from_str(m.as_str().expect("string")).expect("json"))
        .collect()
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    let answer = tokio::time::timeout(Duration::from_secs(15), http.get(url).send())
        .await
        .expect("get timed out")
        .expect("get");
    assert_eq!(answer.status(), 200);
    answer.json().await.expect("json")
}

/// A token's payload, read as any holder can (tokens are signed, not
/// encrypted).
fn payload(token: &str) -> Value {
    let (payload, _) = token.rsplit_once('.').expect("token format");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json")
}

/// The node a token names.
fn node_of(token: &str) -> String {
    payload(token)["d"]["n"]
        .as_str()
        .expect("node name")
        .to_owned()
}

/// A token whose payload is `payload` and whose MAC is `mac`'s.
fn with_payload(payload: &Value, mac_of: &str) -> String {
    let (_, mac) = mac_of.rsplit_once('.').expect("token format");
    format!(
        "{}.{mac}",
        URL_SAFE_NO_PAD.encode(payload.to_string().as_bytes())
    )
}

fn join(topic: &str, r: &str) -> Value {
    json!([r, r, topic, "phx_join", {}])
}

#[tokio::test]
async fn a_session_opened_on_one_node_is_polled_and_posted_through_the_others() {
    let (obs, _seer) = observer();
    let nodes = cluster(&obs, &["a", "b", "c"], lp(1000)).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let client = Lp::open(a.addr(), "").await;
    assert_eq!(node_of(&client.token), "a");

    // As phoenix.js does: a poll outstanding on one node while the post
    // goes through another.
    let pending = {
        let (client, addr) = (client.with_token(&client.token), c.addr());
        tokio::spawn(async move { client.messages(addr, 1).await })
    };
    assert_eq!(
        client.post(b.addr(), &[join("probe:x", "1")]).await,
        json!({"status": 200})
    );
    let reply = pending.await.expect("poll task");
    assert_eq!(
        reply,
        vec![json!(["1", "1", "probe:x", "phx_reply", {"status": "ok", "response": {}}])]
    );

    // A push and an echo, posted through c, polled through b.
    let answer = client
        .post(
            c.addr(),
            &[
                json!(["1", "2", "probe:x", "push", {"event": "hello", "payload": {"n": 1}}]),
                json!(["1", "3", "probe:x", "echo", {"n": 3}]),
            ],
        )
        .await;
    assert_eq!(answer, json!({"status": 200}));
    let got = client.messages(b.addr(), 3).await;
    assert_eq!(
        got,
        vec![
            json!(["1", null, "probe:x", "hello", {"n": 1}]),
            json!(["1", "2", "probe:x", "phx_reply", {"status": "ok", "response": {}}]),
            json!(["1", "3", "probe:x", "phx_reply", {"status": "ok", "response": {"n": 3}}]),
        ]
    );

    // A broadcast made on c reaches the session on a, polled through b.
    c.server
        .endpoint
        .broadcast("probe:x", "news", json!({"n": 7}))
        .unwrap();
    let got = client.messages(b.addr(), 1).await;
    assert_eq!(got, vec![json!([null, null, "probe:x", "news", {"n": 7}])]);

    // Nothing arrived within the window: 204 with the token, via c.
    let idle = client.poll(c.addr()).await;
    assert_eq!(
        idle,
        json!({"status": 204, "token": client.token, "messages": []})
    );

    // One session, on a; the others only forwarded.
    a.server.wait_stats(1, 1).await;
    b.server.wait_stats(0, 0).await;
    c.server.wait_stats(0, 0).await;
}

#[tokio::test]
async fn a_forwarded_post_is_408_past_the_window_and_410_once_the_session_ended() {
    let (obs, mut seer) = observer();
    let nodes = cluster(&obs, &["a", "b"], lp(500)).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let client = Lp::open(a.addr(), "&id=user-1").await;

    // A slow join holds the post past the window: 408, the rest not run.
    let answer = client
        .post(
            b.addr(),
            &[
                json!(["1", "1", "probe:a", "phx_join", {"block": true}]),
                join("probe:b", "2"),
            ],
        )
        .await;
    assert_eq!(answer, json!({"status": 408}));
    seer.blocked().await.send(()).expect("release");
    let replies = client.messages(b.addr(), 1).await;
    assert_eq!(
        replies[0][2], "probe:a",
        "the slow join's reply: {replies:?}"
    );
    assert_eq!(replies[0][3], "phx_reply");
    assert_eq!(client.poll(b.addr()).await["status"], 204);

    // The session ends (a forced disconnect): a post through b is 410, a
    // poll through b opens a new session, on b.
    a.server.endpoint.disconnect("user-1");
    a.server.wait_stats(0, 0).await;
    assert_eq!(
        client.post(b.addr(), &[join("probe:c", "3")]).await,
        json!({"status": 410})
    );
    let fresh = client.poll(b.addr()).await;
    assert_eq!(fresh["status"], 410, "{fresh}");
    let token = fresh["token"].as_str().expect("token");
    assert_ne!(token, client.token);
    assert_eq!(node_of(token), "b");
    b.server.wait_stats(1, 0).await;
    a.server.wait_stats(0, 0).await;
}

#[tokio::test]
async fn a_tampered_token_is_refused_by_the_sessions_node() {
    let (obs, _seer) = observer();
    let nodes = cluster(&obs, &["a", "b"], lp(500)).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let client = Lp::open(a.addr(), "").await;
    let other = Lp::open(a.addr(), "").await;
    a.server.wait_stats(2, 0).await;

    // Another session's payload under this one's MAC, and this one's
    // payload under a flipped MAC: both name a, both refused there.
    let swapped = with_payload(&payload(&other.token), &client.token);
    let (signed, mac) = client.token.rsplit_once('.').expect("token format");
    let first = if mac.starts_with('A') { 'B' } else { 'A' };
    let flipped = format!("{signed}.{first}{}", &mac[1..]);
    for tampered in [swapped, flipped] {
        assert_eq!(node_of(&tampered), "a");
        let forged = client.with_token(&tampered);
        let started = Instant::now();
        assert_eq!(
            forged.post(b.addr(), &[join("probe:x", "1")]).await,
            json!({"status": 410})
        );
        let fresh = forged.poll(b.addr()).await;
        assert_eq!(fresh["status"], 410, "{fresh}");
        assert_eq!(node_of(fresh["token"].as_str().expect("token")), "b");
        // Refused by a, not left unanswered.
        assert!(started.elapsed() < MARGIN, "{:?}", started.elapsed());
    }
    // Nothing reached either session; both still live.
    assert_eq!(
        client.post(b.addr(), &[join("probe:y", "1")]).await,
        json!({"status": 200})
    );
    let got = client.messages(b.addr(), 1).await;
    assert_eq!(got[0][2], "probe:y", "{got:?}");
    assert_eq!(other.poll(b.addr()).await["status"], 204);
    a.server.wait_stats(2, 1).await;
}

#[tokio::test]
async fn once_the_sessions_node_is_gone_get_opens_a_session_and_post_is_410() {
    let (obs, _seer) = observer();
    let window = Duration::from_millis(500);
    let mut nodes = cluster(&obs, &["a", "b"], lp(500)).await;
    let b = nodes.pop().expect("b");
    let a = nodes.pop().expect("a");
    let client = Lp::open(a.addr(), "").await;
    client.post(b.addr(), &[join("probe:x", "1")]).await;
    client.messages(b.addr(), 1).await;

    a.server.stop().await;
    let started = Instant::now();
    assert_eq!(
        client.post(b.addr(), &[join("probe:y", "2")]).await,
        json!({"status": 410})
    );
    let waited = started.elapsed();
    assert!(
        waited >= window + MARGIN - Duration::from_millis(100) && waited < window + MARGIN * 2,
        "post answered after {waited:?}"
    );
    let started = Instant::now();
    let fresh = client.poll(b.addr()).await;
    let waited = started.elapsed();
    assert_eq!(fresh["status"], 410, "{fresh}");
    assert_eq!(node_of(fresh["token"].as_str().expect("token")), "b");
    assert!(
        waited < window + MARGIN * 2,
        "poll answered after {waited:?}"
    );
    // The new session works, on b alone.
    let fresh = client.with_token(fresh["token"].as_str().expect("token"));
    fresh.post(b.addr(), &[join("probe:z", "1")]).await;
    assert_eq!(fresh.messages(b.addr(), 1).await[0][2], "probe:z");
    b.server.wait_stats(1, 1).await;
}

#[tokio::test]
async fn requests_waiting_for_other_nodes_are_bounded() {
    let (obs, _seer) = observer();
    let nodes = cluster(&obs, &["a", "b"], lp(300).max_forwarded(2)).await;
    let b = &nodes[1];
    // Tokens naming a node that does not exist: nobody answers them.
    let absent = format!(
        "{}.x",
        URL_SAFE_NO_PAD.encode(json!({"d": {"n": "nowhere", "i": "1"}, "s": 0}).to_string())
    );
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/socket/longpoll?vsn=2.0.0&token={absent}",
        b.addr()
    );
    // Three at once: two wait (the window plus the margin), one is refused.
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let answer = http.get(&url).send().await.expect("get");
                let status = answer.status().as_u16();
                (status, answer.json::<Value>().await.ok())
            })
        })
        .collect();
    let mut refused = 0;
    for request in requests {
        match request.await.expect("request") {
            (503, _) => refused += 1,
            (200, Some(answer)) => {
                // No answer in time: a session opened on b.
                assert_eq!(answer["status"], 410, "{answer}");
                assert_eq!(node_of(answer["token"].as_str().expect("token")), "b");
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(refused, 1);
    // The waiters are gone: b forwards again.
    let answer = http.post(&url).body("x").send().await.expect("post");
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.json::<Value>().await.expect("json"),
        json!({"status": 410})
    );
}

#[tokio::test]
async fn garbage_node_messages_on_the_longpoll_service_break_nothing() {
    let (obs, _seer) = observer();
    let nodes = cluster(&obs, &["a", "b"], lp(500)).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let client = Lp::open(a.addr(), "").await;
    let huge_token = "A".repeat(100_000);
    let garbage: Vec<Bytes> = vec![
        Bytes::new(),
        Bytes::from_static(b"\n"),
        Bytes::from_static(b"\xff\xfe\x00\n\x01"),
        Bytes::from_static(b"not json at all"),
        Bytes::from_static(b"{}\n"),
        Bytes::from_static(b"[1,2,3]\nbody"),
        Bytes::from_static(b"{\"k\":\"answer\",\"id\":1,\"outcome\":\"answer\"}\n{\"status\":200}"),
        Bytes::from_static(b"{\"k\":\"answer\",\"id\":-1,\"outcome\":\"nonsense\"}\n"),
        Bytes::from_static(b"{\"k\":\"request\",\"id\":1,\"reply_to\":\"b\",\"method\":\"delete\",\"token\":\"t\",\"ndjson\":true}\n"),
        Bytes::from_static(b"{\"k\":\"request\",\"id\":2,\"reply_to\":\"b\",\"method\":\"get\",\"token\":\"garbage\",\"ndjson\":false}\n"),
        Bytes::from_static(b"{\"k\":\"request\",\"id\":3,\"reply_to\":\"nowhere\",\"method\":\"post\",\"token\":\"garbage\",\"ndjson\":true}\n[\"1\",\"1\",\"probe:x\",\"phx_join\",{}]"),
        Bytes::from(format!(
            "{}\n",
            json!({"k": "request", "id": 4, "reply_to": "b", "method": "get", "token": huge_token, "ndjson": false})
        )),
        // A genuine token, but a body beyond any line's sense.
        Bytes::from(format!(
            "{}\n{}",
            json!({"k": "request", "id": 5, "reply_to": "b", "method": "post", "token": client.token, "ndjson": true}),
            "\n".repeat(10_000)
        )),
    ];
    let sent = garbage.len() as u64;
    let before = a.adapter.stats().node_messages_received;
    for body in garbage {
        b.server
            .endpoint
            .pubsub()
            .send_node_message(Some("a"), SERVICE, body.clone());
        a.server
            .endpoint
            .pubsub()
            .send_node_message(None, SERVICE, body);
    }
    // Both nodes still serve the session, through each other.
    assert_eq!(
        client.post(b.addr(), &[join("probe:x", "1")]).await,
        json!({"status": 200})
    );
    let got = client.messages(b.addr(), 1).await;
    assert_eq!(got[0][3], "phx_reply", "{got:?}");
    assert_eq!(client.poll(a.addr()).await["status"], 204);
    let on_b = Lp::open(b.addr(), "").await;
    assert_eq!(on_b.poll(a.addr()).await["status"], 204);
    a.server.wait_stats(1, 1).await;
    b.server.wait_stats(1, 0).await;
    // The garbage did reach a's handler (and the forwarded requests since).
    let received = a.adapter.stats().node_messages_received - before;
    assert!(received >= sent, "{received} of {sent}");
}
