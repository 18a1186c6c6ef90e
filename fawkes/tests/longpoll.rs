//! The LongPoll transport with test-local sockets and channels: what the
//! conformance app cannot show (slow handlers, binary frames, secrets and
//! token expiry, connect info, shutdown).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use fawkes::{Endpoint, LongPollConfig, Transport};
use serde_json::{Value, json};
use support::*;

/// A LongPoll client speaking V2 to `/socket/longpoll`.
struct Lp {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Lp {
    /// Opens a session; panics unless the answer is 410 with a token.
    async fn open(addr: SocketAddr, query: &str) -> Lp {
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/socket/longpoll?vsn=2.0.0{query}");
        let body = get(&http, &url, &[]).await;
        assert_eq!(body["status"], 410, "open: {body}");
        let token = body["token"].as_str().expect("token").to_owned();
        Lp { http, url, token }
    }

    fn with_token(&self) -> String {
        format!("{}&token={}", self.url, self.token)
    }

    async fn poll(&self) -> Value {
        get(&self.http, &self.with_token(), &[]).await
    }

    /// Polls until `n` messages arrived; returns them decoded.
    async fn messages(&self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while out.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {out:?} of {n}"
            );
            let body = self.poll().await;
            assert!(
                body["status"] == 200 || body["status"] == 204,
                "poll: {body}"
            );
            for m in body["messages"].as_array().expect("messages") {
                out.push(serde_json::from_str(m.as_str().expect("string")).expect("json"));
            }
        }
        out
    }

    async fn post(&self, lines: &[String]) -> Value {
        let answer = self
            .http
            .post(self.with_token())
            .header("content-type", "application/x-ndjson")
            .body(lines.join("\n"))
            .send()
            .await
            .expect("post");
        assert_eq!(answer.status(), 200);
        answer.json().await.expect("json")
    }
}

async fn get(http: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let answer = tokio::time::timeout(Duration::from_secs(15), req.send())
        .await
        .expect("get timed out")
        .expect("get");
    assert_eq!(answer.status(), 200);
    answer.json().await.expect("json")
}

fn line(v: Value) -> String {
    v.to_string()
}

/// A V2 binary client push (kind 0), base64 as an ndjson line.
fn binary_line(join_ref: &str, r: &str, topic: &str, event: &str, payload: &[u8]) -> String {
    let mut bytes = vec![
        0,
        join_ref.len() as u8,
        r.len() as u8,
        topic.len() as u8,
        event.len() as u8,
    ];
    for part in [join_ref, r, topic, event] {
        bytes.extend_from_slice(part.as_bytes());
    }
    bytes.extend_from_slice(payload);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn lp(window_ms: u64) -> LongPollConfig {
    LongPollConfig::default().window(Duration::from_millis(window_ms))
}

#[tokio::test]
async fn a_message_not_handled_within_the_window_is_408_and_the_rest_is_not_processed() {
    let (obs, mut seer) = observer();
    let server = serve_probe(&obs, |s| s.longpoll(lp(500))).await;
    let client = Lp::open(server.addr, "").await;
    // Like Phoenix, a message counts as handled once the socket has routed
    // it; a join is decided before that, so a slow join holds the POST.
    let answer = client
        .post(&[
            line(json!(["1", "1", "probe:a", "phx_join", {"block": true}])),
            line(json!(["2", "2", "probe:b", "phx_join", {}])),
        ])
        .await;
    assert_eq!(answer, json!({"status": 408}));
    seer.blocked().await.send(()).expect("release");
    let replies = client.messages(1).await;
    assert_eq!(replies[0][3], "phx_reply", "{replies:?}");
    assert_eq!(
        replies[0][2], "probe:a",
        "the slow join's reply: {replies:?}"
    );
    // The join after the timed-out message never ran.
    let later = client.poll().await;
    assert_eq!(later["status"], 204, "{later}");
}

#[tokio::test]
async fn binary_frames_are_never_sent_over_longpoll() {
    let (obs, _seer) = observer();
    let server = serve_probe(&obs, |s| s.longpoll(lp(1000))).await;
    let client = Lp::open(server.addr, "").await;
    client
        .post(&[line(json!(["1", "1", "probe:b", "phx_join", {}]))])
        .await;
    client.messages(1).await;
    // The binary echo's reply would be a binary frame: dropped, the JSON
    // echo after it arrives.
    let answer = client
        .post(&[
            binary_line("1", "2", "probe:b", "echo", b"\x00\x01"),
            line(json!(["1", "3", "probe:b", "echo", {"n": 3}])),
        ])
        .await;
    assert_eq!(answer, json!({"status": 200}));
    let got = client.messages(1).await;
    assert_eq!(
        got,
        vec![json!(["1", "3", "probe:b", "phx_reply", {"status": "ok", "response": {"n": 3}}])]
    );
}

#[tokio::test]
async fn connect_sees_the_longpoll_transport_and_the_auth_token_header() {
    let (obs, mut seer) = observer();
    let server = serve_probe(&obs, |s| s.longpoll(lp(1000))).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/socket/longpoll?vsn=2.0.0&a=1", server.addr);
    let body = get(&http, &url, &[("x-phoenix-authtoken", "s3cret")]).await;
    assert_eq!(body["status"], 410);
    let (params, info) = seer.connected().await;
    assert_eq!(params.get_str("a"), Some("1"));
    assert_eq!(info.transport, Transport::LongPoll);
    assert_eq!(info.auth_token.as_deref(), Some("s3cret"));
    assert!(info.peer.is_some());
}

#[tokio::test]
async fn a_refused_connect_is_status_403_in_the_body_whatever_the_http_status() {
    let (obs, _seer) = observer();
    let server = serve_probe(&obs, |s| s.longpoll(lp(1000))).await;
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/socket/longpoll?vsn=2.0.0&status=429",
        server.addr
    );
    assert_eq!(get(&http, &url, &[]).await, json!({"status": 403}));
    server.wait_stats(0, 0).await;
}

#[tokio::test]
async fn tokens_of_another_secret_or_expired_open_a_new_session() {
    let (obs, _seer) = observer();
    let secret = [7u8; 32];
    let a = serve_probe(&obs, |s| {
        s.longpoll(lp(1000).token_max_age(Duration::from_millis(1500)))
    })
    .await;
    let b = {
        let (router, endpoint) = Endpoint::builder()
            .secret_key_base(secret)
            .socket("/socket", ProbeSocket(obs.clone()))
            .channel("probe:*", Probe::new(obs.clone()))
            .longpoll(lp(1000))
            .build();
        serve(router, endpoint).await
    };
    let on_a = Lp::open(a.addr, "").await;
    // A token signed by another endpoint's secret names no session here.
    let foreign = Lp {
        http: reqwest::Client::new(),
        url: on_a.url.clone(),
        token: Lp::open(b.addr, "").await.token,
    };
    let fresh = foreign.poll().await;
    assert_eq!(fresh["status"], 410);
    assert_ne!(fresh["token"], json!(foreign.token));
    assert_eq!(
        foreign
            .post(&[line(json!(["1", "1", "probe:x", "phx_join", {}]))])
            .await,
        json!({"status": 410})
    );
    // Past its max age a token is refused even though its session lives.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        on_a.post(&[line(json!([null, "1", "phoenix", "heartbeat", {}]))])
            .await,
        json!({"status": 410})
    );
    assert_eq!(on_a.poll().await["status"], 410);
}

#[tokio::test]
async fn shutdown_answers_a_pending_poll_at_once_and_terminates_channels() {
    let (obs, mut seer) = observer();
    let server = serve_probe(&obs, |s| s.longpoll(lp(5000))).await;
    let client = Lp::open(server.addr, "").await;
    client
        .post(&[line(json!(["1", "1", "probe:s", "phx_join", {}]))])
        .await;
    client.messages(1).await;
    let started = std::time::Instant::now();
    let pending = tokio::spawn(async move { client.poll().await });
    // Let the poll reach the session before shutting down.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop().await;
    let (topic, _) = seer.terminated().await;
    assert_eq!(topic, "probe:s");
    let answer = pending.await.expect("poll task");
    assert_eq!(answer["status"], 204, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn sessions_beyond_max_sessions_are_refused_until_one_ends() {
    let (obs, _seer) = observer();
    let server = serve_probe(&obs, |s| s.longpoll(lp(400).max_sessions(2))).await;
    let _a = Lp::open(server.addr, "").await;
    let _b = Lp::open(server.addr, "").await;
    let url = format!("http://{}/socket/longpoll?vsn=2.0.0", server.addr);
    let answer = reqwest::get(&url).await.expect("get");
    assert_eq!(answer.status(), 503);
    // Abandoned, both end after 1.5–3 windows; then a new session opens.
    server.wait_stats(0, 0).await;
    Lp::open(server.addr, "").await;
}

/// Pushes its topic's presence list on join.
#[derive(Clone)]
struct Lobby;

impl fawkes::Channel for Lobby {
    type Info = ();

    async fn join(
        &mut self,
        _topic: &str,
        _payload: Value,
        ctx: &mut fawkes::Context<Self>,
    ) -> Result<Value, Value> {
        ctx.push_presence_state();
        Ok(json!({}))
    }

    async fn handle_in(
        &mut self,
        _event: &str,
        _payload: fawkes::Payload,
        _ctx: &mut fawkes::Context<Self>,
    ) -> fawkes::HandleResult {
        fawkes::HandleResult::NoReply
    }
}

#[tokio::test]
async fn a_large_presence_list_arrives_whole_over_both_transports() {
    let (obs, _seer) = observer();
    let server = serve_probe(&obs, |s| s.channel("lobby:*", Lobby).longpoll(lp(5000))).await;
    let owner = server.endpoint.presence().owner();
    for i in 0..200 {
        let meta = json!({"bio": "é".repeat(20)});
        owner
            .track("lobby:big", &format!("user-{i}"), meta)
            .unwrap();
    }
    let list = server.endpoint.presence().list_json("lobby:big");
    // Large enough for its frames to share it rather than copy it.
    assert!(list.len() > 8192, "{} bytes", list.len());
    let list: Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list.as_object().map(|m| m.len()), Some(200));

    let client = Lp::open(server.addr, "").await;
    client
        .post(&[line(json!(["1", "1", "lobby:big", "phx_join", {}]))])
        .await;
    let messages = client.messages(2).await;
    assert_eq!(messages[0][3], "phx_reply");
    assert_eq!(
        messages[1],
        json!(["1", null, "lobby:big", "presence_state", list])
    );

    let mut ws = server.client().await;
    let join_ref = ws.join("lobby:big", json!({})).await;
    assert_eq!(
        ws.recv().await,
        json!([join_ref, null, "lobby:big", "presence_state", list])
    );
}
