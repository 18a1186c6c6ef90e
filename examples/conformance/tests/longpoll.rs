//! PROTOCOL §6 (LongPoll) and checklist 4, 6, 8, 64, 69–82: the LongPoll
//! transport at `/socket/longpoll`, black-box, with the requests phoenix.js
//! makes (and some it never makes).
//!
//! Timing tests start their server with a 1 s window (a poll answers 204
//! after 1 s, a session without a poll ends after 1.5–3 s); only
//! `c73_idle_get_answers_204_after_the_default_10s_window` waits for the
//! real 10 s default.

mod support;

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fawkes_conformance::Options;
use http::Method;
use serde_json::{Value, json};
use support::longpoll::{
    LpAnswer, LpClient, NDJSON, TokenIn, encode_component, flip_char, lp_request, lp_try_request,
};
use support::{Http, TestServer, WsClient, binary_push, error, ok, options, reply, unmatched};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The short window of the timing tests.
const SHORT: Duration = Duration::from_secs(1);

/// The server's body limit for a POST (Phoenix reads at most ~8 MB).
const BODY_LIMIT: usize = 8_000_000;

/// A server with the given LongPoll window.
async fn start_with_window(window: Duration) -> TestServer {
    TestServer::start_with(Options {
        longpoll_window: window,
        ..options()
    })
    .await
}

/// A server with a 1 s window.
async fn start_short() -> TestServer {
    start_with_window(SHORT).await
}

/// A server and a V2 session on it.
async fn session() -> (TestServer, LpClient) {
    let server = TestServer::start().await;
    let lp = server.lp_v2().await;
    (server, lp)
}

/// A server with a 1 s window and a V2 session on it.
async fn short_session() -> (TestServer, LpClient) {
    let server = start_short().await;
    let lp = server.lp_v2().await;
    (server, lp)
}

/// The `new_msg` copy a subscriber gets from Room's handle_out.
fn new_msg_copy(join_ref: &str, topic: &str, payload: &Value, transport: &str) -> Value {
    let mut payload = payload.clone();
    payload["transport"] = json!(transport);
    json!([join_ref, null, topic, "new_msg", payload])
}

/// Puts a heartbeat reply into `lp`'s buffer, then GETs with the given
/// `(query, header)` tokens: true if the GET reached `lp`'s session (200 with the reply, at
/// once), false if it opened a new one (410, and the reply is still waiting
/// in `lp`'s session).
async fn reaches_session(lp: &mut LpClient, (q, h): (Option<&str>, Option<&str>)) -> bool {
    let r = format!("which-{}", lp.next_ref());
    lp.send(lp.heartbeat(&r)).await;
    let want = lp.heartbeat_reply(&r);
    let answer = lp.request(Method::GET, q, h, &[], None).await;
    answer.assert_get();
    match answer.status() {
        410 => {
            let token = answer.assert_new_session();
            assert_ne!(token, lp.token, "a new session must have a new token");
            // The original session is unaffected: its reply still waits.
            lp.expect(want).await;
            false
        }
        200 => {
            assert_eq!(answer.poll_values(&lp.token), vec![want]);
            true
        }
        _ => panic!("unexpected GET answer {}", answer.json()),
    }
}

/// An ndjson POST of `line` with the given `(query, header)` tokens;
/// returns the answer body.
async fn post_line_with(
    lp: &LpClient,
    tokens: (Option<&str>, Option<&str>),
    line: &Value,
) -> Value {
    let body = line.to_string().into_bytes();
    let answer = lp.post_with(tokens.0, tokens.1, Some(NDJSON), body).await;
    answer.assert_common();
    answer.json()
}

/// An ndjson POST of `line` on a fresh HTTP client; `Err` on a transport
/// failure.
async fn try_post(addr: SocketAddr, query: &str, line: String) -> Result<LpAnswer, String> {
    let headers = [("content-type", NDJSON)];
    let client = reqwest::Client::new();
    lp_try_request(
        &client,
        addr,
        Method::POST,
        query,
        &headers,
        Some(line.into_bytes()),
    )
    .await
}

/// Asserts that a request without a session token is refused with
/// `{"status":403}`.
async fn assert_refused(
    server: &TestServer,
    method: Method,
    query: &str,
    headers: &[(&str, &str)],
) {
    let answer = lp_request(server.addr, method.clone(), query, headers, None).await;
    answer.assert_common();
    let what = format!("{method} ?{query} with {headers:?}");
    assert_eq!(answer.json(), json!({"status": 403}), "{what}");
}

/// Opens a session and proves that it works.
async fn assert_accepted(server: &TestServer, query: &str, headers: &[(&str, &str)]) {
    let mut lp = LpClient::open_with(server.addr, query, headers).await;
    lp.barrier().await;
}

/// Asserts an HTTP 400 answer (a protocol violation, PROTOCOL §6.1).
fn assert_http_400(answer: &LpAnswer, what: &str) {
    assert_eq!(answer.http, 400, "{what}: body {:?}", answer.text());
}

/// Checklist 79: PUT, DELETE and PATCH are HTTP 400 with an empty body.
async fn assert_bad_methods_400(lp: &LpClient, token: Option<&str>, body: &[u8]) {
    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        let answer = lp
            .request(method.clone(), token, None, &[], Some(body.to_vec()))
            .await;
        assert_http_400(&answer, &format!("{method} with token {token:?}"));
        assert!(answer.body.is_empty(), "{method}: body {:?}", answer.text());
    }
}

/// Posts `n` heartbeat lines in one body: only the first 100 are answered,
/// and the barrier's reply comes next.
async fn assert_first_100_heartbeats_count(lp: &mut LpClient, n: usize) {
    let refs: Vec<String> = (1..=n).map(|i| format!("hb{i}")).collect();
    let lines: Vec<String> = refs.iter().map(|r| lp.heartbeat(r).to_string()).collect();
    lp.post_lines(&lines).await.assert_status(200);
    for r in &refs[..100] {
        lp.expect(lp.heartbeat_reply(r)).await;
    }
    lp.barrier().await;
}

/// One idle poll: a 204 answered after a time in `took`.
async fn assert_idle_poll(lp: &LpClient, took: Range<Duration>) {
    let started = Instant::now();
    let answer = lp.get().await;
    let elapsed = started.elapsed();
    answer.assert_body(json!({"status": 204, "token": lp.token, "messages": []}));
    assert!(
        took.contains(&elapsed),
        "an idle poll answered after {elapsed:?}, want {took:?}"
    );
}

/// `/api/disconnect` of `user_socket:<user_id>`, asserting `200 {"ok":true}`.
async fn disconnect(http: &Http, user_id: &str) {
    let body = json!({"socket_id": format!("user_socket:{user_id}")});
    let answer = http.post_json("/api/disconnect", &body).await;
    assert_eq!(answer, (200, json!({"ok": true})), "disconnect {user_id}");
}

/// Starts a poll of `lp` on its own task. Not needed for correctness: the
/// pause lets the GET start waiting first.
async fn pending_poll(lp: &LpClient) -> JoinHandle<LpAnswer> {
    let poll = lp.spawn_poll();
    tokio::time::sleep(Duration::from_millis(300)).await;
    poll
}

/// The answer of a pending poll, in the GET answer format.
async fn answer_of(poll: JoinHandle<LpAnswer>) -> LpAnswer {
    let answer = poll.await.expect("poll task");
    answer.assert_get();
    answer
}

/// Leaves a poll of `lp` pending and disconnects `user_id`; returns the
/// poll's answer and how long after the disconnect it came.
async fn poll_across_disconnect(lp: &LpClient, http: &Http, user_id: &str) -> (LpAnswer, Duration) {
    let poll = pending_poll(lp).await;
    let ended = Instant::now();
    disconnect(http, user_id).await;
    let answer = answer_of(poll).await;
    (answer, ended.elapsed())
}

// --- Opening a session, refusals (c04, c06, c08, c69) ------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c69_first_get_opens_a_session() {
    let server = TestServer::start().await;
    let http = server.http();
    assert_eq!(http.stats().await, (0, 0));
    let first = server.lp_v2().await;
    http.wait_stats((1, 0)).await;
    let second = server.lp_v2().await;
    assert_ne!(first.token, second.token, "each session has its own token");
    http.wait_stats((2, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c69_connect_runs_with_the_query_params() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut lp = server.lp("user_id=u1&vsn=2.0.0").await;
    // assigns.user_id came from the query.
    lp.join_room("room:lobby", json!("ann"), json!("u1")).await;
    http.wait_stats((1, 1)).await;
    // The socket id is user_socket:u1.
    disconnect(&http, "u1").await;
    http.wait_stats((0, 0)).await;
    lp.assert_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c04_longpoll_unsupported_vsn_is_status_403() {
    let server = TestServer::start().await;
    for query in [
        "vsn=2.1.0",
        "vsn=3.0.0",
        "vsn=2",
        "vsn=abc",
        "vsn=",
        "vsn[]=2.0.0",
        "vsn%5B%5D=2.0.0",
    ] {
        assert_refused(&server, Method::GET, query, &[]).await;
    }
    server.http().wait_stats((0, 0)).await;
    for query in ["vsn=2.0.0", "vsn=2.0.7", "vsn=1.0.0", "vsn=1.0.3", ""] {
        assert_accepted(&server, query, &[]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c06_longpoll_rejected_connect_is_status_403() {
    let server = TestServer::start().await;
    assert_refused(&server, Method::GET, "reject=true&vsn=2.0.0", &[]).await;
    // The bearer token of phoenix.js's `authToken` option (PROTOCOL §1.6).
    let bearer = |token| [("x-phoenix-authtoken", token)];
    assert_refused(&server, Method::GET, "vsn=2.0.0", &bearer("reject")).await;
    server.http().wait_stats((0, 0)).await;
    // Any other token or value of `reject` is an ordinary connect.
    assert_accepted(&server, "vsn=2.0.0", &bearer("let-me-in")).await;
    assert_accepted(&server, "reject=false&vsn=2.0.0", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c08_longpoll_foreign_origin_is_status_403() {
    let server = TestServer::start().await;
    for origin in [
        "http://evil.com",
        "http://localhost.evil.com",
        "http://127.0.0.2",
        "null",
        "file://",
    ] {
        // Checked before connect: even a refused connect looks the same.
        for query in ["vsn=2.0.0", "reject=true&vsn=2.0.0"] {
            assert_refused(&server, Method::GET, query, &[("origin", origin)]).await;
        }
    }
    server.http().wait_stats((0, 0)).await;
    for origin in ["http://localhost:4000", "https://127.0.0.1"] {
        assert_accepted(&server, "vsn=2.0.0", &[("origin", origin)]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c08_origin_is_checked_on_every_longpoll_request() {
    let (server, mut lp) = session().await;
    let evil = ("origin", "http://evil.com");
    let join = json!(["1", "1", "room:lobby", "phx_join", {}]).to_string();
    // A valid token but a foreign origin: refused, and the POST not processed.
    for (method, headers, body) in [
        (
            Method::POST,
            vec![evil, ("content-type", NDJSON)],
            Some(join.into_bytes()),
        ),
        (Method::GET, vec![evil], None),
        (Method::OPTIONS, vec![evil], None),
    ] {
        let answer = lp
            .request(method.clone(), Some(&lp.token), None, &headers, body)
            .await;
        answer.assert_common();
        assert_eq!(answer.json(), json!({"status": 403}), "{method}");
    }
    // The session is intact, and the refused join never ran.
    server.http().wait_stats((1, 0)).await;
    lp.barrier().await;
}

// --- Tokens (c70, c77) -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c70_token_in_query_or_header_is_equivalent() {
    let (server, mut lp) = session().await;
    let token = lp.token.clone();
    for via in TokenIn::BOTH {
        let reached = reaches_session(&mut lp, via.place(&token)).await;
        assert!(reached, "token in the {via:?}");
    }
    // A whole conversation with the header only, as phoenix.js 1.9 does.
    lp.token_in = TokenIn::Header;
    let jr = lp.join_room("room:lobby", json!("h"), Value::Null).await;
    lp.echo(&jr, "room:lobby").await;
    lp.barrier().await;
    lp.token_in = TokenIn::Query;
    lp.echo(&jr, "room:lobby").await;
    server.http().wait_stats((1, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c70_header_token_wins_over_query_token() {
    let server = TestServer::start().await;
    let mut a = server.lp_v2().await;
    let mut b = server.lp_v2().await;
    let (ta, tb) = (a.token.clone(), b.token.clone());

    // GET with (query, header) tokens: the header counts, so a garbage
    // header opens a new session.
    for (q, h, reaches_a) in [
        (tb.as_str(), ta.as_str(), true),
        ("garbage", ta.as_str(), true),
        (ta.as_str(), "garbage", false),
    ] {
        let reached = reaches_session(&mut a, (Some(q), Some(h))).await;
        assert_eq!(reached, reaches_a, "query token {q:?}, header token {h:?}");
    }

    // POST: header B, query A → processed by B only.
    let join = json!(["1", "1", "room:b", "phx_join", {}]);
    let answer = post_line_with(&a, (Some(&ta), Some(&tb)), &join).await;
    assert_eq!(answer, json!({"status": 200}));
    b.join_room_replies("1", "room:b", Value::Null, Value::Null)
        .await;
    b.barrier().await;
    a.barrier().await;
    // Sessions a, b and the one opened by the garbage header.
    server.http().wait_stats((3, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c70_last_token_query_param_is_the_session_token() {
    let (_server, mut lp) = session().await;
    let token = lp.token.clone();
    let base = lp.query.clone();
    // `token=garbage&token=T`: T.
    lp.query = format!("{base}&token=garbage");
    assert!(reaches_session(&mut lp, (Some(&token), None)).await);
    // `token=T&token=garbage`: garbage, so a new session.
    lp.query = format!("{base}&token={}", encode_component(&token));
    let reached = reaches_session(&mut lp, (Some("garbage"), None)).await;
    lp.query = base;
    assert!(!reached, "`token=T&token=garbage` reached T's session");
    lp.barrier().await;
}

/// Tokens that must not reach `lp`'s session: tampered, truncated, extended,
/// garbage, empty.
fn bad_tokens(token: &str) -> Vec<(&'static str, String)> {
    let middle = token.len() / 2;
    vec![
        ("tampered in the middle", flip_char(token, middle)),
        ("tampered first char", flip_char(token, 0)),
        ("truncated", token[..token.len() - 4].to_string()),
        ("extended", format!("{token}AAAA")),
        ("garbage", "not-a-token".to_string()),
        ("empty", String::new()),
        ("dots", "..".to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c77_get_with_a_bad_token_opens_a_new_session_and_spares_the_original() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut lp = server.lp_v2().await;
    let jr = lp.join_room("room:lobby", Value::Null, Value::Null).await;
    let token = lp.token.clone();
    let mut opened = 0;
    for (what, bad) in bad_tokens(&token) {
        for via in TokenIn::BOTH {
            assert!(
                !reaches_session(&mut lp, via.place(&bad)).await,
                "{what} token {bad:?} in the {via:?} reached the session"
            );
            opened += 1;
        }
    }
    // The original session still works and still has its channel.
    lp.echo(&jr, "room:lobby").await;
    http.broadcast("room:lobby", "custom", json!({"still": "here"}))
        .await;
    lp.expect(json!([null, null, "room:lobby", "custom", {"still": "here"}]))
        .await;
    http.wait_stats((1 + opened, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c77_post_with_a_bad_token_is_410_and_processes_nothing() {
    let (server, mut lp) = session().await;
    let token = lp.token.clone();
    let join = json!(["1", "1", "room:lobby", "phx_join", {}]);
    for (what, bad) in bad_tokens(&token) {
        for via in TokenIn::BOTH {
            let answer = post_line_with(&lp, via.place(&bad), &join).await;
            let what = format!("{what} token {bad:?} in the {via:?}");
            assert_eq!(answer, json!({"status": 410}), "{what}");
        }
    }
    let answer = post_line_with(&lp, (None, None), &join).await;
    assert_eq!(answer, json!({"status": 410}), "absent token");
    // Nothing was processed: no channel anywhere, nothing for the session.
    server.http().wait_stats((1, 0)).await;
    lp.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c77_token_of_another_server_is_unknown() {
    let one = TestServer::start().await;
    let two = TestServer::start().await;
    // Same history on both, so naive session numbering would line up.
    let mut on_one = one.lp_v2().await;
    let mut on_two = two.lp_v2().await;
    let j1 = on_one.join("bench:1", json!({})).await;
    on_two.join("bench:1", json!({})).await;
    let foreign = on_two.token.clone();
    let ping = json!([j1, "x", "bench:1", "ping", {"via": "foreign"}]);
    for via in TokenIn::BOTH {
        // POST to one with two's token: 410, nothing processed anywhere.
        let answer = post_line_with(&on_one, via.place(&foreign), &ping).await;
        assert_eq!(answer, json!({"status": 410}), "POST, token in the {via:?}");
        // GET on one with two's token: a new session on one.
        let reached = reaches_session(&mut on_one, via.place(&foreign)).await;
        assert!(!reached, "GET, token in the {via:?}");
    }
    on_one.barrier().await;
    on_two.barrier().await;
    one.http().wait_stats((3, 1)).await;
    two.http().wait_stats((1, 1)).await;
}

// --- Polling (c71, c72, c73) -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c71_buffered_messages_are_returned_at_once_oldest_first() {
    let (_server, mut lp) = session().await;
    // Heartbeat replies are produced while the POST is processed, so they
    // are all buffered by the time it is answered.
    let refs: Vec<String> = (1..=5).map(|n| format!("hb{n}")).collect();
    let beats: Vec<Value> = refs.iter().map(|r| lp.heartbeat(r)).collect();
    lp.send_all(&beats).await;
    let started = Instant::now();
    let answer = lp.get().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a poll with buffered messages must not wait for the window ({:?})",
        started.elapsed()
    );
    assert_eq!(answer.status(), 200);
    let want: Vec<Value> = refs.iter().map(|r| lp.heartbeat_reply(r)).collect();
    let got = answer.poll_values(&lp.token);
    assert_eq!(got, want, "all five replies in one answer, oldest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c71_messages_from_broadcasts_arrive_in_order() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut lp = server.lp_v2().await;
    lp.join("bench:order", json!({})).await;
    for n in 0..20 {
        http.broadcast("bench:order", "msg", json!({"n": n})).await;
    }
    lp.expect_all((0..20).map(|n| json!([null, null, "bench:order", "msg", {"n": n}])))
        .await;
    lp.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c72_waiting_get_is_answered_when_a_message_arrives() {
    let (server, mut lp) = session().await;
    lp.join("bench:wait", json!({})).await;
    let started = Instant::now();
    let poll = pending_poll(&lp).await;
    // If the GET has not started waiting yet, it finds the message
    // buffered, which passes too.
    server
        .http()
        .broadcast("bench:wait", "msg", json!({"hello": 1}))
        .await;
    let answer = answer_of(poll).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the message must end the 10 s wait ({took:?})"
    );
    assert_eq!(answer.status(), 200, "{}", answer.json());
    let want = json!([null, null, "bench:wait", "msg", {"hello": 1}]);
    assert_eq!(answer.poll_values(&lp.token), vec![want]);
    lp.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c72_idle_get_answers_204_at_the_end_of_a_short_window() {
    let (_server, lp) = short_session().await;
    for _ in 0..2 {
        assert_idle_poll(&lp, Duration::from_millis(900)..Duration::from_secs(4)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c73_idle_get_answers_204_after_the_default_10s_window() {
    let (_server, mut lp) = session().await;
    lp.join("bench:idle", json!({})).await;
    assert_idle_poll(&lp, Duration::from_millis(9_500)..Duration::from_secs(15)).await;
    // The session lives on.
    lp.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c72_concurrent_polls_get_each_message_exactly_once() {
    let (server, mut lp) = short_session().await;
    lp.join("bench:twice", json!({})).await;
    // Two polls at once (phoenix.js never does this; a newer poll
    // supersedes an older one, PROTOCOL §6.4).
    let first = lp.spawn_poll();
    let second = pending_poll(&lp).await;
    server
        .http()
        .broadcast("bench:twice", "msg", json!({"once": true}))
        .await;
    let mut got = Vec::new();
    for poll in [first, second] {
        got.extend(answer_of(poll).await.poll_values(&lp.token));
    }
    assert_eq!(
        got,
        vec![json!([null, null, "bench:twice", "msg", {"once": true}])],
        "one message, delivered to exactly one of the two polls"
    );
    lp.barrier().await;
}

// --- Sending (c74, c75, c76) -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c74_ndjson_lines_are_processed_in_order() {
    let (_server, mut lp) = session().await;
    // One POST: join, then pushes to the new channel, as phoenix.js
    // coalesces them.
    lp.send_all(&[
        json!(["1", "1", "room:lobby", "phx_join", {"user": "ann"}]),
        json!(["1", "2", "room:lobby", "echo", {"n": 2}]),
        json!(["1", "3", "room:lobby", "error", {}]),
        json!(["1", "4", "room:lobby", "echo", {"n": 4}]),
    ])
    .await;
    lp.join_room_replies("1", "room:lobby", json!("ann"), Value::Null)
        .await;
    lp.expect_all([
        reply("1", "2", "room:lobby", ok(json!({"n": 2}))),
        reply("1", "3", "room:lobby", error("requested")),
        reply("1", "4", "room:lobby", ok(json!({"n": 4}))),
    ])
    .await;
    // `\r\n` separates lines too.
    let echo = |n: u8| json!(["1", n.to_string(), "room:lobby", "echo", {"n": n}]);
    let body = format!("{}\r\n{}", echo(5), echo(6));
    lp.post(Some(NDJSON), body.into_bytes())
        .await
        .assert_status(200);
    lp.expect_all([5, 6].map(|n| reply("1", &n.to_string(), "room:lobby", ok(json!({"n": n})))))
        .await;
    lp.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c74_base64_lines_are_binary_pushes() {
    let (_server, mut lp) = session().await;
    let jr = lp.join_room("room:lobby", Value::Null, Value::Null).await;
    // Payload bytes chosen so the base64 has `/` and padding.
    let payload: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, b'h', b'i'];
    let frames = [
        binary_push(&jr, "10", "room:lobby", "error", payload),
        binary_push(&jr, "11", "room:lobby", "binary", b"hello"),
        binary_push(&jr, "12", "room:lobby", "whatever", payload),
        binary_push("", "13", "room:lobby", "error", b""),
    ]
    .map(|f| BASE64.encode(f));
    assert!(
        frames.iter().all(|f| !f.starts_with('['))
            && frames.iter().any(|f| f.contains('/'))
            && frames.iter().any(|f| f.ends_with('=')),
        "base64 lines with `/` and padding"
    );
    // Mixed with JSON lines, in order.
    let [f10, f11, f12, f13] = frames;
    let echo = json!([jr, "e1", "room:lobby", "echo", {"between": true}]).to_string();
    lp.post_lines(&[f10, echo, f11, f12, f13])
        .await
        .assert_status(200);
    let lobby_reply = |r, status| reply(&jr, r, "room:lobby", status);
    lp.expect_all([
        lobby_reply("10", error("requested")),
        lobby_reply("e1", ok(json!({"between": true}))),
        // CONFORMANCE_APP: Room `binary` over LongPoll answers an error.
        lobby_reply("11", error("binary not supported on longpoll")),
        lobby_reply("12", error("unknown event")),
        lobby_reply("13", error("requested")),
    ])
    .await;
    lp.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c74_binary_replies_are_not_sent_over_longpoll() {
    // PROTOCOL §6.6: the server cannot send binary over LongPoll; fawkes
    // drops such frames (documented). Bench `ping` echoes a binary payload
    // as a binary reply.
    let (_server, mut lp) = short_session().await;
    let jr = lp.join("bench:bin", json!({})).await;
    lp.send_binary(&[binary_push(&jr, "b1", "bench:bin", "ping", b"\x00\x01")])
        .await;
    // Whatever reaches the client is JSON text, and the session lives on.
    lp.barrier().await;
    lp.send(json!([jr, "j1", "bench:bin", "ping", {"json": true}]))
        .await;
    lp.expect(reply(&jr, "j1", "bench:bin", ok(json!({"json": true}))))
        .await;
    // A poll that only has the dropped frame to deliver must not answer 200
    // with no messages (PROTOCOL §6.1: 200 means messages delivered; §6.4:
    // wait for the first message): it keeps waiting, 204 at the window end.
    lp.send_binary(&[binary_push(&jr, "b2", "bench:bin", "ping", b"\x02")])
        .await;
    let answer = lp.get().await;
    let body = answer.json();
    assert!(
        answer.status() == 204 || !body["messages"].as_array().expect("messages").is_empty(),
        "a 200 poll answer without messages: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c75_lines_beyond_the_100th_are_not_processed() {
    let (server, mut lp) = session().await;
    assert_first_100_heartbeats_count(&mut lp, 150).await;

    // Same with joins: only the first 100 lines count.
    let lines: Vec<String> = (1..=101)
        .map(|n| {
            json!([
                format!("j{n}"),
                format!("j{n}"),
                format!("bench:{n}"),
                "phx_join",
                {}
            ])
        })
        .map(|join| join.to_string())
        .collect();
    lp.post_lines(&lines).await.assert_status(200);
    server.http().wait_stats((1, 100)).await;
    for message in lp.recv_n(100).await {
        assert_eq!(message[3], json!("phx_reply"), "{message}");
        assert_ne!(message[2], json!("bench:101"), "line 101 was processed");
    }
    lp.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c76_other_content_types_carry_one_message() {
    let (server, mut lp) = session().await;
    for (i, content_type) in [Some("application/json"), Some("text/plain"), None]
        .into_iter()
        .enumerate()
    {
        let topic = format!("room:ct{i}");
        let r = format!("{}", i + 1);
        // Newlines inside the JSON: as ndjson these would be broken lines.
        let body = format!("[\"{r}\",\"{r}\",\"{topic}\",\n\"phx_join\",\r\n{{\"user\":\"x\"}}]");
        let answer = lp.post(content_type, body.into_bytes()).await;
        answer.assert_status(200);
        lp.join_room_replies(&r, &topic, json!("x"), Value::Null)
            .await;
    }
    lp.barrier().await;
    server.http().wait_stats((1, 3)).await;
}

// --- Session lifetime (c64, c78) ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c78_session_without_a_poll_ends_after_one_and_a_half_windows() {
    let server = start_short().await;
    let http = server.http();
    let mut lp = server.lp("user_id=idle&vsn=2.0.0").await;
    lp.join_room("room:idle", Value::Null, json!("idle")).await;
    lp.join("bench:idle", json!({})).await;
    // The last poll (it answered at once: the join reply was buffered).
    let last_poll = Instant::now();
    http.wait_stats((1, 2)).await;
    http.wait_stats_within((0, 0), Duration::from_secs(8)).await;
    let lived = last_poll.elapsed();
    assert!(
        lived >= Duration::from_millis(1_400),
        "a session must live 1.5 windows after its last poll; ended after {lived:?}"
    );
    lp.assert_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c78_polling_keeps_a_session_alive() {
    let (server, mut lp) = short_session().await;
    let jr = lp.join_room("room:alive", Value::Null, Value::Null).await;
    // More than two inactivity checks, always with a poll outstanding.
    let until = Instant::now() + Duration::from_millis(4_500);
    while Instant::now() < until {
        assert!(lp.poll().await.is_empty());
    }
    assert_eq!(server.http().stats().await, (1, 1));
    lp.echo(&jr, "room:alive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c78_posts_do_not_count_as_activity() {
    let (server, mut lp) = short_session().await;
    lp.join("bench:posts", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    loop {
        interval.tick().await;
        // Only POSTs: a heartbeat every 200 ms.
        let answer = post_line_with(&lp, (Some(&lp.token), None), &lp.heartbeat("posted")).await;
        if answer == json!({"status": 410}) {
            break;
        }
        assert_eq!(answer, json!({"status": 200}));
        assert!(
            Instant::now() < deadline,
            "POSTs alone kept the session alive for 8 s"
        );
    }
    server.http().wait_stats((0, 0)).await;
    lp.assert_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c78_abandoned_sessions_all_end_and_stats_return_to_baseline() {
    let server = start_with_window(Duration::from_secs(2)).await;
    let http = server.http();
    // Baseline: a WebSocket client with one channel.
    let mut ws = server.ws_v2().await;
    let jw = ws.join_room("room:ws", Value::Null, Value::Null).await;
    http.wait_stats((1, 1)).await;

    let mut sessions = Vec::new();
    for n in 0..20 {
        let mut lp = server.lp(&format!("user_id=ab{n}&vsn=2.0.0")).await;
        // Joins without polling for the replies.
        lp.send_all(&[
            json!(["1", "1", format!("room:ab{n}"), "phx_join", {}]),
            json!(["2", "2", format!("bench:ab{n}"), "phx_join", {}]),
        ])
        .await;
        sessions.push(lp);
    }
    http.wait_stats((21, 41)).await;
    // Abandoned: no session polls again.
    http.wait_stats_within((1, 1), Duration::from_secs(10))
        .await;
    for lp in &sessions[..3] {
        lp.assert_gone().await;
    }
    ws.barrier().await;
    ws.echo(&jw, "room:ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c64_disconnect_ends_the_longpoll_session_and_websockets_of_that_id() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut lp = server.lp("user_id=42&vsn=2.0.0").await;
    let mut other = server.lp("user_id=7&vsn=2.0.0").await;
    let mut ws = server.ws("vsn=2.0.0&user_id=42").await;
    lp.join_room("room:lobby", Value::Null, json!("42")).await;
    let jo = other.join("bench:1", json!({})).await;
    ws.join("bench:1", json!({})).await;
    http.wait_stats((3, 3)).await;

    disconnect(&http, "42").await;
    assert_eq!(ws.expect_close().await, 1001);
    http.wait_stats((1, 1)).await;
    lp.assert_gone().await;
    // Another user's session is untouched.
    other
        .send(json!([jo, "p", "bench:1", "ping", {"x": 1}]))
        .await;
    other
        .expect(reply(&jo, "p", "bench:1", ok(json!({"x": 1}))))
        .await;
    // The user can come back.
    let mut again = server.lp("user_id=42&vsn=2.0.0").await;
    again
        .join_room("room:lobby", Value::Null, json!("42"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c64_pending_poll_is_answered_promptly_when_the_session_ends() {
    let server = TestServer::start().await;
    let mut lp = server.lp("user_id=9&vsn=2.0.0").await;
    lp.join("bench:1", json!({})).await;
    let (answer, took) = poll_across_disconnect(&lp, &server.http(), "9").await;
    assert!(
        took < Duration::from_secs(3),
        "the pending poll of an ended session waited {took:?} (window 10 s)"
    );
    match answer.status() {
        204 => assert_eq!(answer.json()["token"], json!(lp.token)),
        410 => assert_ne!(answer.json()["token"], json!(lp.token)),
        other => panic!("pending poll answered {other}: {}", answer.json()),
    }
    lp.assert_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c64_pending_poll_gets_no_terminate_push_after_a_disconnect() {
    let server = TestServer::start().await;
    let mut lp = server.lp("user_id=5&vsn=2.0.0").await;
    lp.join_room("room:bye", Value::Null, json!("5")).await;
    let (answer, _) = poll_across_disconnect(&lp, &server.http(), "5").await;
    // CONFORMANCE_APP (Room terminate): after a socket close `you_left` is
    // not delivered; the WebSocket gets nothing but its close frame.
    assert_ne!(
        answer.status(),
        200,
        "a disconnected session delivered messages: {}",
        answer.json()
    );
    lp.assert_gone().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c67_shutdown_ends_longpoll_sessions_and_answers_pending_polls() {
    let (server, mut lp) = session().await;
    lp.join("bench:1", json!({})).await;
    let mut idle = server.lp_v2().await;
    idle.barrier().await;
    server.http().wait_stats((2, 1)).await;
    let poll = pending_poll(&lp).await;
    let started = Instant::now();
    server
        .shutdown()
        .await
        .expect("serve returns Ok after shutdown");
    let answer = answer_of(poll).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for the poll window ({:?})",
        started.elapsed()
    );
    assert_eq!(answer.status(), 204, "{}", answer.json());
}

// --- Answer format, CORS (c79, c80, c81) -------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c79_every_answer_has_status_200_and_the_common_headers() {
    let server = start_short().await;
    // 410 (open), 403 (refused), 200 and 204 polls, 200 and 410 POSTs: all
    // checked by `assert_common` through the helpers.
    let mut lp = server.lp_v2().await;
    assert_refused(&server, Method::GET, "vsn=9.9.9", &[]).await;
    lp.barrier().await;
    lp.get()
        .await
        .assert_body(json!({"status": 204, "token": lp.token, "messages": []}));
    let answer = post_line_with(&lp, (Some("nope"), None), &lp.heartbeat("posted")).await;
    assert_eq!(answer, json!({"status": 410}));
    // Exactly the headers of PROTOCOL §6.1.
    let answer = lp.post_lines(&[lp.heartbeat("h").to_string()]).await;
    assert_eq!(
        answer.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c80_options_answers_the_cors_preflight() {
    let server = TestServer::start().await;
    let asked = "x-phoenix-longpoll-token, content-type";
    for origin in [None, Some("http://localhost:4000")] {
        let mut headers = vec![
            ("access-control-request-headers", asked),
            ("access-control-request-method", "POST"),
        ];
        headers.extend(origin.map(|origin| ("origin", origin)));
        let answer = lp_request(server.addr, Method::OPTIONS, "vsn=2.0.0", &headers, None).await;
        assert_eq!(answer.http, 200, "OPTIONS, origin {origin:?}");
        assert!(
            answer.body.is_empty(),
            "OPTIONS has an empty body: {:?}",
            answer.text()
        );
        assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
        assert_eq!(answer.header("access-control-allow-headers"), Some(asked));
        assert_eq!(
            answer
                .header("access-control-allow-methods")
                .map(str::to_ascii_lowercase),
            Some("get, post, options".to_string())
        );
        assert_eq!(answer.header("access-control-max-age"), Some("3600"));
    }
    // A pre-flight opens no session.
    server.http().wait_stats((0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c80_options_with_a_refused_origin_is_status_403() {
    let server = TestServer::start().await;
    let headers = [
        ("origin", "http://evil.com"),
        ("access-control-request-headers", "content-type"),
    ];
    assert_refused(&server, Method::OPTIONS, "vsn=2.0.0", &headers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c79_unsupported_methods_are_http_400_with_an_empty_body() {
    let (server, mut lp) = session().await;
    for token in [None, Some(lp.token.as_str())] {
        assert_bad_methods_400(&lp, token, b"").await;
    }
    // No session was opened, the existing one is intact.
    server.http().wait_stats((1, 0)).await;
    lp.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c79_head_is_http_400() {
    let server = TestServer::start().await;
    let answer = lp_request(server.addr, Method::HEAD, "vsn=2.0.0", &[], None).await;
    assert_eq!(answer.http, 400, "HEAD {:?}", answer.headers);
    server.http().wait_stats((0, 0)).await;
}

// --- Channels over LongPoll (c23, c26–c29, c47, c49, c58, c59, c02) ---------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c23_longpoll_heartbeat_is_answered() {
    let (_server, mut lp) = session().await;
    // join_ref is null in the reply even if the request had one.
    for (join_ref, r) in [(Value::Null, "7"), (json!("3"), "8")] {
        lp.send(json!([join_ref, r, "phoenix", "heartbeat", {}]))
            .await;
        lp.expect(json!([null, r, "phoenix", "phx_reply", ok(json!({}))]))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c26_c29_longpoll_joins_ok_refused_crashed_and_unmatched() {
    let server = TestServer::start().await;
    let mut lp = server.lp("user_id=42&vsn=2.0.0").await;
    let jr = lp.join_room("room:lobby", json!("ann"), json!("42")).await;
    lp.send_all(&[
        json!(["4", "4", "room:denied", "phx_join", {}]),
        json!(["5", "5", "chat:secret", "phx_join", {}]),
        json!(["6", "6", "room:join_crash", "phx_join", {}]),
        json!(["7", "7", "nope:1", "phx_join", {}]),
    ])
    .await;
    let got = lp.recv_n(4).await;
    for want in [
        reply("4", "4", "room:denied", error("unauthorized")),
        reply("5", "5", "chat:secret", error("You don't have permission!")),
        reply("6", "6", "room:join_crash", error("join crashed")),
        unmatched("7", "nope:1"),
    ] {
        assert!(got.contains(&want), "missing {want} in {got:?}");
    }
    lp.barrier().await;
    lp.echo(&jr, "room:lobby").await;
    lp.join("chat:lobby", json!({})).await;
    server.http().wait_stats((1, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c32_longpoll_101st_channel_is_refused_until_one_is_left() {
    let (server, mut lp) = session().await;
    let joins: Vec<Value> = (0..100)
        .map(|n| {
            json!([
                n.to_string(),
                n.to_string(),
                format!("bench:{n}"),
                "phx_join",
                {}
            ])
        })
        .collect();
    lp.send_all(&joins).await;
    lp.recv_n(100).await;
    server.http().wait_stats((1, 100)).await;
    lp.send(json!(["x1", "x1", "bench:100", "phx_join", {}]))
        .await;
    lp.expect(reply(
        "x1",
        "x1",
        "bench:100",
        error("too many channels joined"),
    ))
    .await;
    lp.send(json!(["0", "l", "bench:0", "phx_leave", {}])).await;
    lp.expect(reply("0", "l", "bench:0", ok(json!({})))).await;
    lp.expect(json!(["0", "0", "bench:0", "phx_close", {}]))
        .await;
    lp.join("bench:100", json!({})).await;
    server.http().wait_stats((1, 100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c33_longpoll_duplicate_join_replaces_the_channel() {
    let (server, mut lp) = session().await;
    let old = lp.join("bench:dup", json!({})).await;
    lp.send(json!(["9", "9", "bench:dup", "phx_join", {}]))
        .await;
    // The new join's reply, then phx_close for the old join ref.
    lp.expect(reply("9", "9", "bench:dup", ok(json!({})))).await;
    lp.expect(json!([old, old, "bench:dup", "phx_close", {}]))
        .await;
    server.http().wait_stats((1, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c39_longpoll_echo_error_noreply_and_unmatched() {
    let (_server, mut lp) = session().await;
    let jr = lp.join_room("room:lobby", Value::Null, Value::Null).await;
    let payload = json!({"s": "é ✓ \"q\" \\ \n", "n": [0, -1, 1.5], "o": {"a": null}});
    lp.send_all(&[
        json!([jr, "e", "room:lobby", "echo", payload]),
        json!([jr, "n", "room:lobby", "noreply", {}]),
        json!([null, "z", "room:lobby", "error", {}]),
        json!([jr, "u", "room:lobby", "what", {}]),
    ])
    .await;
    lp.expect_all([
        reply(&jr, "e", "room:lobby", ok(payload)),
        reply(&jr, "z", "room:lobby", error("requested")),
        reply(&jr, "u", "room:lobby", error("unknown event")),
    ])
    .await;
    lp.barrier().await;
    // The socket answers for topics without channel.
    lp.send(json!([null, "x", "room:other", "echo", {}])).await;
    lp.expect(unmatched("x", "room:other")).await;
    lp.barrier().await;
}

/// The two subscribers of c47.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sub {
    Lp,
    Ws,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c47_longpoll_subscribers_get_new_msg_with_transport_longpoll() {
    let server = TestServer::start().await;
    let mut lp = server.lp("user_id=l&vsn=2.0.0").await;
    let mut ws = server.ws("vsn=2.0.0&user_id=w").await;
    let jl = lp.join_room("room:mix", Value::Null, json!("l")).await;
    let jw = ws.join_room("room:mix", Value::Null, json!("w")).await;
    lp.expect(json!([null, null, "room:mix", "user_entered", {"user": null}]))
        .await;

    // (sender, event, payload, subscribers that get a copy): each copy names
    // the subscriber's transport, and the sender's reply comes before its
    // own copy.
    use Sub::{Lp, Ws};
    for (from, event, payload, to) in [
        (Ws, "new_msg", json!({"body": "hi"}), &[Ws, Lp][..]),
        (Lp, "new_msg", json!({"body": "yo"}), &[Lp, Ws]),
        // `to` filtering in handle_out.
        (Lp, "new_msg", json!({"body": "dm", "to": "w"}), &[Ws]),
        (Ws, "new_msg", json!({"body": "dm", "to": "l"}), &[Lp]),
        // broadcast_from: everyone but the sender.
        (Lp, "new_msg_from", json!({"body": "from"}), &[Ws]),
    ] {
        if from == Lp {
            let r = lp.push(&jl, "room:mix", event, payload.clone()).await;
            lp.expect(reply(&jl, &r, "room:mix", ok(json!({})))).await;
        } else {
            let r = ws.push(&jw, "room:mix", event, payload.clone()).await;
            ws.expect(reply(&jw, &r, "room:mix", ok(json!({})))).await;
        }
        for sub in to {
            match sub {
                Lp => {
                    lp.expect(new_msg_copy(&jl, "room:mix", &payload, "longpoll"))
                        .await
                }
                Ws => {
                    ws.expect(new_msg_copy(&jw, "room:mix", &payload, "websocket"))
                        .await
                }
            }
        }
    }
    lp.barrier().await;
    ws.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c49_api_broadcast_reaches_a_longpoll_subscriber() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut lp = server.lp("user_id=l&vsn=2.0.0").await;
    let jr = lp.join_room("room:lobby", Value::Null, json!("l")).await;
    let jb = lp.join("chat:lobby", json!({})).await;
    for (topic, event, payload) in [
        ("room:lobby", "custom", json!({"a": 1})),
        ("room:lobby", "new_msg", json!({"body": "api"})),
        ("room:lobby", "new_msg", json!({"body": "dm", "to": "x"})),
        ("room:lobby", "new_msg", json!({"body": "marker"})),
        ("chat:lobby", "new_msg", json!({"body": "chat"})),
    ] {
        http.broadcast(topic, event, payload).await;
    }
    // Fast lane, each channel's handle_out: no order between them, but in
    // order within each (the dm filtered out before the marker).
    let got = lp.recv_n(4).await;
    let copy = |body| new_msg_copy(&jr, "room:lobby", &json!({"body": body}), "longpoll");
    let room: Vec<&Value> = got.iter().filter(|m| m[0] == json!(jr)).collect();
    assert_eq!(
        room,
        vec![&copy("api"), &copy("marker")],
        "room:lobby handle_out copies: {got:?}"
    );
    for want in [
        json!([null, null, "room:lobby", "custom", {"a": 1}]),
        json!([jb, null, "chat:lobby", "new_msg", {"body": "chat"}]),
    ] {
        assert!(got.contains(&want), "missing {want} in {got:?}");
    }
    lp.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c59_longpoll_boom_is_you_left_then_phx_error() {
    let (server, mut lp) = session().await;
    let jr = lp.join_room("room:lobby", Value::Null, Value::Null).await;
    let other = lp.join("bench:1", json!({})).await;
    lp.send(json!([jr, "17", "room:lobby", "boom", {}])).await;
    lp.expect_all([
        json!([jr, null, "room:lobby", "you_left", {"message": "bye!"}]),
        json!([jr, jr, "room:lobby", "phx_error", {"reason": "channel_crash"}]),
    ])
    .await;
    lp.barrier().await;
    lp.send(json!([jr, "18", "room:lobby", "echo", {}])).await;
    lp.expect(unmatched("18", "room:lobby")).await;
    // The session and its other channel live on; a rejoin works.
    lp.send(json!([other, "p", "bench:1", "ping", {}])).await;
    lp.expect(reply(&other, "p", "bench:1", ok(json!({}))))
        .await;
    let again = lp.join_room("room:lobby", Value::Null, Value::Null).await;
    lp.echo(&again, "room:lobby").await;
    server.http().wait_stats((1, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c58_longpoll_stop_is_reply_then_close_then_you_left() {
    let (server, mut lp) = session().await;
    // A server stop, and a client leave is the same.
    for (r, event) in [("16", "stop"), ("20", "phx_leave")] {
        let jr = lp.join_room("room:lobby", Value::Null, Value::Null).await;
        lp.send(json!([jr, r, "room:lobby", event, {}])).await;
        lp.expect_all([
            reply(&jr, r, "room:lobby", ok(json!({}))),
            json!([jr, jr, "room:lobby", "phx_close", {}]),
            json!([jr, null, "room:lobby", "you_left", {"message": "bye!"}]),
        ])
        .await;
    }
    lp.barrier().await;
    server.http().wait_stats((1, 0)).await;
}

/// A V1 message on `room:lobby`.
fn lobby(event: &str, payload: Value, r: Option<&str>) -> Value {
    json!({"topic": "room:lobby", "event": event, "payload": payload, "ref": r})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c02_longpoll_v1_session_speaks_json_objects() {
    let server = TestServer::start().await;
    for query in ["vsn=1.0.0&user_id=v1", "user_id=v1"] {
        let mut lp = server.lp(query).await;
        assert!(!lp.v2);
        lp.send(lobby("phx_join", json!({}), Some("1"))).await;
        lp.expect_all([
            lobby("phx_reply", ok(json!({})), Some("1")),
            lobby("user_entered", json!({"user": null}), None),
            lobby(
                "joined",
                json!({"status": "connected", "user_id": "v1"}),
                None,
            ),
        ])
        .await;
        lp.send(lobby("echo", json!({"a": 1}), Some("2"))).await;
        lp.expect(lobby("phx_reply", ok(json!({"a": 1})), Some("2")))
            .await;
        lp.send(lobby("new_msg", json!({"b": 2}), Some("3"))).await;
        lp.expect_all([
            lobby("phx_reply", ok(json!({})), Some("3")),
            lobby("new_msg", json!({"b": 2, "transport": "longpoll"}), None),
        ])
        .await;
        lp.barrier().await;
        // Leave, so the next session's join does not reach this one.
        lp.send(lobby("phx_leave", json!({}), Some("4"))).await;
        for frame in lp.recv_until(|m| m["event"] == json!("you_left")).await {
            assert!(
                frame.get("join_ref").is_none(),
                "V1 has no join_ref: {frame}"
            );
        }
    }
}

// --- Byte identity with WebSocket (c82) --------------------------------------

/// One step of the c82 script: frames to send in one POST, or a server
/// broadcast on `room:lobby`.
enum Step {
    Send(Vec<Value>),
    Broadcast(&'static str, Value),
}

/// The c82 script: each step and the number of messages it produces.
fn c82_script() -> Vec<(Step, usize)> {
    let send = |frame: Value, n: usize| (Step::Send(vec![frame]), n);
    let payload = json!({
        "s": "é ✓ \"q\" \\ \n \u{1} </script> \u{2028}",
        "n": [0, -1, 1.5, 1e100, 12_345_678_901_234_567_890_u64, -0.25],
        "o": {"a": null, "b": true, "c": []}
    });
    vec![
        send(
            json!(["1", "1", "room:lobby", "phx_join", {"user": "ann"}]),
            3,
        ),
        send(json!(["1", "2", "room:lobby", "echo", payload]), 1),
        (
            Step::Send(vec![
                json!(["1", "3", "room:lobby", "error", {}]),
                json!(["1", "4", "room:lobby", "nope", {}]),
                json!(["1", "5", "room:lobby", "noreply", {}]),
                json!([null, "6", "room:lobby", "echo", {}]),
            ]),
            3,
        ),
        send(
            json!(["1", "7", "room:lobby", "new_msg", {"body": "hi"}]),
            2,
        ),
        (Step::Broadcast("custom", json!({"x": [1, 2]})), 1),
        (Step::Broadcast("new_msg", json!({"body": "api"})), 1),
        send(json!(["1", "8", "room:lobby", "boom", {}]), 2),
        send(json!(["9", "9", "room:lobby", "phx_join", {}]), 3),
        send(json!(["9", "10", "room:lobby", "stop", {}]), 3),
        send(json!(["11", "11", "room:denied", "phx_join", {}]), 1),
        send(json!(["12", "12", "room:join_crash", "phx_join", {}]), 1),
        send(json!(["13", "13", "nope:1", "phx_join", {}]), 1),
        send(json!([null, "14", "room:other", "echo", {}]), 1),
        send(json!([null, "15", "phoenix", "heartbeat", {}]), 1),
        send(json!([null, "16", "room:other", "phx_leave", {}]), 1),
        send(json!(["17", "17", "bench:1", "phx_join", {}]), 1),
        send(json!(["17", "18", "bench:1", "broadcast", {"n": 1}]), 2),
        send(json!(["17", "19", "bench:1", "phx_leave", {}]), 2),
        send(json!([1, 2, "room:num", "phx_join", {}]), 3),
        send(json!([1, 3, "room:num", "echo", {"n": 1.5}]), 1),
        send(json!(["20", "20", "room:lobby", "phx_join", {}]), 3),
        send(json!(["20", "21", "room:lobby", "phx_leave", {}]), 3),
        send(json!([null, "end", "phoenix", "heartbeat", {}]), 1),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c82_longpoll_messages_are_byte_identical_to_websocket_frames() {
    // Two servers, so the two runs cannot see each other's broadcasts.
    let ws_server = TestServer::start().await;
    let lp_server = TestServer::start().await;
    let mut ws = ws_server.ws_v2().await;
    let mut lp = lp_server.lp_v2().await;

    for (i, (step, n)) in c82_script().into_iter().enumerate() {
        match step {
            Step::Send(frames) => {
                for frame in &frames {
                    ws.send(frame.clone()).await;
                }
                lp.send_all(&frames).await;
            }
            Step::Broadcast(event, payload) => {
                for server in [&ws_server, &lp_server] {
                    let http = server.http();
                    http.broadcast("room:lobby", event, payload.clone()).await;
                }
            }
        }
        for _ in 0..n {
            // The only intended difference: Room's handle_out names the
            // subscriber's transport.
            let want = ws
                .recv_text()
                .await
                .replace("\"transport\":\"websocket\"", "\"transport\":\"longpoll\"");
            let got = lp.recv_text().await;
            assert_eq!(got, want, "step {i}: LongPoll vs WebSocket bytes");
        }
    }
    assert_eq!(lp.pending(), 0, "LongPoll sent more than the WebSocket");
}

// --- Slow client -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longpoll_session_whose_buffer_overflows_is_closed() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut lp = server.lp_v2().await;
    lp.join("bench:flood", json!({})).await;
    let mut ws = server.ws_v2().await;
    let jw = ws.join("bench:flood", json!({})).await;
    http.wait_stats((2, 2)).await;

    // 5000 broadcasts (the outbound bound is 4096 frames); the LongPoll
    // client never polls.
    const N: usize = 5000;
    let messages: Vec<Message> = (0..N)
        .map(|n| json!([jw, format!("b{n}"), "bench:flood", "broadcast", {"n": n}]))
        .map(|frame| Message::text(frame.to_string()))
        .collect();
    let frames = ws.flood(messages, 2 * N).await;
    assert_eq!(frames.len(), 2 * N);
    // The slow session is closed; the sender is not.
    http.wait_stats_within((1, 1), Duration::from_secs(5)).await;
    lp.assert_gone().await;
    ws.barrier().await;
    http.assert_healthy().await;
}

// --- Abuse -------------------------------------------------------------------

/// A server with bystanders (a WebSocket and a LongPoll session, each in a
/// room) and an offending LongPoll session joined to its own room.
struct Scene {
    server: TestServer,
    ws: WsClient,
    ws_ref: String,
    lp: LpClient,
    lp_ref: String,
    offender: LpClient,
}

impl Scene {
    async fn new() -> Scene {
        let server = TestServer::start().await;
        let mut ws = server.ws_v2().await;
        let ws_ref = ws.join_room("room:ws", Value::Null, Value::Null).await;
        let mut lp = server.lp_v2().await;
        let lp_ref = lp.join_room("room:lp", Value::Null, Value::Null).await;
        let mut offender = server.lp_v2().await;
        offender
            .join_room("room:offender", Value::Null, Value::Null)
            .await;
        server.http().wait_stats((3, 3)).await;
        Scene {
            server,
            ws,
            ws_ref,
            lp,
            lp_ref,
            offender,
        }
    }

    /// In a new scene, the offender posts `body`: HTTP 400, and its session
    /// ends (like a WebSocket closed after a malformed frame) while everyone
    /// else is fine.
    async fn assert_400_ends_the_offender(what: &str, content_type: Option<&str>, body: Vec<u8>) {
        let mut scene = Scene::new().await;
        let answer = scene.offender.post(content_type, body).await;
        assert_http_400(&answer, what);
        scene.server.http().wait_stats((2, 2)).await;
        scene.offender.assert_gone().await;
        scene.everyone_else_is_fine().await;
    }

    /// The server and the bystanders are unaffected.
    async fn everyone_else_is_fine(&mut self) {
        self.server.http().assert_healthy().await;
        self.ws.barrier().await;
        self.ws.echo(&self.ws_ref, "room:ws").await;
        self.lp.barrier().await;
        self.lp.echo(&self.lp_ref, "room:lp").await;
        let mut fresh = self.server.lp_v2().await;
        fresh.join("bench:fresh", json!({})).await;
        fresh.barrier().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_undecodable_ndjson_lines_are_400_and_close_the_session() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad JSON", br#"["1","2","room:offender","echo",{"#.to_vec()),
        ("truncated array", b"[1".to_vec()),
        ("V1 object line", br#"{"topic":"room:offender"}"#.to_vec()),
        ("wrong arity", br#"["1","2","room:offender"]"#.to_vec()),
        ("bad base64", b"!!!not base64!!!".to_vec()),
        (
            "base64 of a truncated binary push",
            BASE64.encode([0, 5, 1, 1, 1]).into_bytes(),
        ),
        (
            "base64 of an unknown binary kind",
            BASE64.encode([9, 0, 0, 0, 0]).into_bytes(),
        ),
        (
            "invalid UTF-8",
            b"[\"1\",\"2\",\"room:offender\",\"echo\",{\"a\":\"\xff\xfe\"}]".to_vec(),
        ),
    ];
    for (what, line) in cases {
        // A good line first, then the bad one.
        let mut body = json!([null, "ok", "phoenix", "heartbeat", {}]).to_string();
        body.push('\n');
        let body = [body.into_bytes(), line].concat();
        Scene::assert_400_ends_the_offender(what, Some(NDJSON), body).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_undecodable_single_message_bodies_are_400_and_close_the_session() {
    let line = json!([null, "1", "phoenix", "heartbeat", {}]).to_string();
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        (
            "garbage, JSON type",
            Some("application/json"),
            b"garbage".to_vec(),
        ),
        (
            "two ndjson lines, text type",
            Some("text/plain"),
            format!("{line}\n{line}").into_bytes(),
        ),
        (
            "invalid UTF-8, no type",
            None,
            b"[null,\"1\",\"phoenix\",\"heartbeat\",{\"\xff\":1}]".to_vec(),
        ),
        (
            "empty body, JSON type",
            Some("application/json"),
            Vec::new(),
        ),
    ];
    for (what, content_type, body) in cases {
        Scene::assert_400_ends_the_offender(what, content_type, body).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_oversized_body_is_400_and_the_server_lives_on() {
    let mut scene = Scene::new().await;
    // A single valid-looking message over the body limit.
    let filler = "x".repeat(BODY_LIMIT + 1024);
    let line = json!([null, "big", "phoenix", "heartbeat", {"filler": filler}]).to_string();
    let query = scene.offender.token_query();
    match try_post(scene.server.addr, &query, line).await {
        Ok(answer) => assert_http_400(&answer, "oversized body"),
        Err(e) => panic!("oversized body: no HTTP answer ({e}); PROTOCOL §6.1 wants HTTP 400"),
    }
    // The heartbeat was not processed (no reply for "big").
    scene.offender.barrier().await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_many_lines_only_the_first_100_count() {
    let mut scene = Scene::new().await;
    assert_first_100_heartbeats_count(&mut scene.offender, 10_000).await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_bad_methods_tokens_and_huge_queries_leave_everyone_fine() {
    let mut scene = Scene::new().await;
    let addr = scene.server.addr;
    let offender = &mut scene.offender;
    let token = offender.token.clone();
    // Wrong methods with a valid token.
    assert_bad_methods_400(offender, Some(&token), b"[]").await;
    // Bad tokens on POST.
    for (what, bad) in bad_tokens(&token) {
        let answer =
            post_line_with(offender, (Some(&bad), None), &offender.heartbeat("posted")).await;
        assert_eq!(answer, json!({"status": 410}), "{what}");
    }
    // Huge query strings: any answer or a refused request, but no crash or
    // hang.
    let client = reqwest::Client::new();
    for size in [16 << 10, 1 << 20] {
        let query = format!("vsn=2.0.0&user_id={}", "u".repeat(size));
        if let Ok(answer) = lp_try_request(&client, addr, Method::GET, &query, &[], None).await {
            assert_ne!(answer.http, 500, "query of {size} bytes");
        }
        let query = format!("{}&pad={}", offender.token_query(), "p".repeat(size));
        let line = offender.heartbeat("q").to_string();
        if let Ok(answer) = try_post(addr, &query, line).await {
            assert_ne!(answer.http, 500, "POST query of {size} bytes");
        }
    }
    // The offender's session is untouched by all this (a heartbeat posted
    // with a huge query may have been processed: drain it).
    let r = offender.next_ref();
    offender.send(offender.heartbeat(&r)).await;
    let want = offender.heartbeat_reply(&r);
    offender.recv_until(|m| *m == want).await;
    scene.everyone_else_is_fine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_odd_queries_open_a_session_or_are_refused() {
    let mut scene = Scene::new().await;
    for query in [
        "vsn=2.0.0&%",
        "vsn=2.0.0&user_id=%ZZ",
        "vsn=2.0.0&user_id=%FF%FE",
        "vsn=2.0.0&a=b=c&&&=&",
        "vsn=2.0.0&user_id[]=x&user_id[y]=z",
        "vsn=2.0.0&token",
        "vsn=2.0.0&token=%00",
        "vsn=2.0.0&vsn=2.0.0",
        "vsn=2.0.0&vsn=9",
    ] {
        let answer = lp_request(scene.server.addr, Method::GET, query, &[], None).await;
        answer.assert_get();
        assert!(
            [410, 403].contains(&answer.status()),
            "GET ?{query}: {}",
            answer.json()
        );
    }
    scene.everyone_else_is_fine().await;
}
