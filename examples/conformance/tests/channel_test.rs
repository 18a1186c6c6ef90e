//! The app's channels tested without a network, through `fawkes::testing`:
//! the same behaviours as the black-box suites, at the speed of unit tests.

use bytes::Bytes;
use fawkes::protocol::{Message, Payload};
use fawkes::testing::TestSocket;
use fawkes::{Endpoint, Reply, Transport};
use fawkes_conformance::{Options, app};
use serde_json::json;

fn endpoint() -> Endpoint {
    app(&Options::default()).expect("no pubsub url").1
}

async fn connect(endpoint: &Endpoint, user_id: &str) -> TestSocket {
    TestSocket::connect(endpoint, "/socket", &[("user_id", user_id)])
        .await
        .expect("connect")
}

#[tokio::test]
async fn room_join_is_followed_by_user_entered_and_joined() {
    let endpoint = endpoint();
    let mut socket = connect(&endpoint, "42").await;
    assert_eq!(
        socket.join("room:lobby", json!({"user": "ann"})).await,
        Ok(json!({}))
    );
    assert_eq!(
        socket.assert_broadcast("room:lobby", "user_entered").await,
        json!({"user": "ann"}).into()
    );
    assert_eq!(
        socket.assert_push("room:lobby", "joined").await,
        json!({"status": "connected", "user_id": "42"}).into()
    );
}

#[tokio::test]
async fn room_refusals() {
    let endpoint = endpoint();
    let mut socket = connect(&endpoint, "1").await;
    assert_eq!(
        socket.join("room:denied", json!({})).await,
        Err(json!({"reason": "unauthorized"}))
    );
    assert_eq!(
        socket.join("room:join_crash", json!({})).await,
        Err(json!({"reason": "join crashed"}))
    );
    assert_eq!(
        socket.join("nope:1", json!({})).await,
        Err(json!({"reason": "unmatched topic"}))
    );
    assert_eq!(
        socket.join("chat:secret", json!({})).await,
        Err(json!({"reason": "You don't have permission!"}))
    );
}

#[tokio::test]
async fn room_events_reply_as_specified() {
    let endpoint = endpoint();
    let mut socket = connect(&endpoint, "1").await;
    socket.join("room:a", json!({})).await.unwrap();
    let echo = socket.push("room:a", "echo", json!({"x": [1, 2]})).await;
    assert_eq!(
        socket.assert_reply(&echo).await,
        Reply::ok(json!({"x": [1, 2]}))
    );
    let error = socket.push("room:a", "error", json!({})).await;
    assert_eq!(
        socket.assert_reply(&error).await,
        Reply::error(json!({"reason": "requested"}))
    );
    let unknown = socket.push("room:a", "what", json!({})).await;
    assert_eq!(
        socket.assert_reply(&unknown).await,
        Reply::error(json!({"reason": "unknown event"}))
    );
    let binary = socket.push("room:a", "binary", json!({})).await;
    assert_eq!(
        socket.assert_reply(&binary).await,
        Reply::error(json!({"reason": "binary payload expected"}))
    );
}

#[tokio::test]
async fn new_msg_goes_through_handle_out_per_subscriber() {
    let endpoint = endpoint();
    let mut ann = connect(&endpoint, "ann").await;
    let mut bob = connect(&endpoint, "bob").await;
    ann.join("room:x", json!({})).await.unwrap();
    bob.join("room:x", json!({})).await.unwrap();
    let push = ann
        .push("room:x", "new_msg", json!({"body": "hi", "to": "bob"}))
        .await;
    assert_eq!(ann.assert_reply(&push).await, Reply::ok(json!({})));
    assert_eq!(
        bob.assert_push("room:x", "new_msg").await,
        json!({"body": "hi", "to": "bob", "transport": "websocket"}).into()
    );
    // Addressed to bob: ann's handle_out filters her own copy.
    let marker = ann.push("room:x", "new_msg", json!({"body": "all"})).await;
    ann.assert_reply(&marker).await;
    assert_eq!(
        ann.assert_push("room:x", "new_msg").await,
        json!({"body": "all", "transport": "websocket"}).into()
    );
    assert!(
        !ann.unmatched().any(|m| m.event == "new_msg"),
        "ann got the message addressed to bob"
    );
}

#[tokio::test]
async fn boom_terminates_then_errors_and_stop_closes() {
    let endpoint = endpoint();
    let mut socket = connect(&endpoint, "1").await;
    socket.join("room:b", json!({})).await.unwrap();
    socket.push("room:b", "boom", json!({})).await;
    let left = socket.assert_push("room:b", "you_left").await;
    assert_eq!(left, json!({"message": "bye!"}).into());
    let error = next_event(&mut socket, "phx_error").await;
    assert_eq!(error.payload, json!({"reason": "channel_crash"}).into());
    assert_eq!(error.ref_, error.join_ref);

    socket.join("room:b", json!({})).await.unwrap();
    let stop = socket.push("room:b", "stop", json!({})).await;
    assert_eq!(socket.assert_reply(&stop).await, Reply::status("ok"));
    next_event(&mut socket, "phx_close").await;
    assert_eq!(endpoint.stats().channels, 0);
}

#[tokio::test]
async fn chat_broadcasts_without_reply_and_bench_answers() {
    let endpoint = endpoint();
    let mut socket = connect(&endpoint, "1").await;
    socket.join("chat:lobby", json!({})).await.unwrap();
    socket
        .push("chat:lobby", "anything", json!({"body": "x"}))
        .await;
    assert_eq!(
        socket.assert_push("chat:lobby", "new_msg").await,
        Payload::Json(json!({"body": "x"}))
    );
    socket.join("bench:1", json!({})).await.unwrap();
    let ping = socket.push("bench:1", "ping", json!({"n": 1})).await;
    assert_eq!(socket.assert_reply(&ping).await, Reply::ok(json!({"n": 1})));
    let cast = socket.push("bench:1", "broadcast", json!({"n": 2})).await;
    assert_eq!(
        socket.assert_broadcast("bench:1", "msg").await,
        json!({"n": 2}).into()
    );
    assert_eq!(socket.assert_reply(&cast).await, Reply::ok(json!({})));
}

#[tokio::test]
async fn leave_replies_then_closes() {
    let endpoint = endpoint();
    let mut socket = connect(&endpoint, "1").await;
    socket.join("room:l", json!({})).await.unwrap();
    assert_eq!(socket.leave("room:l").await, Reply::status("ok"));
    next_event(&mut socket, "phx_close").await;
    assert_eq!(
        socket.assert_push("room:l", "you_left").await,
        json!({"message": "bye!"}).into()
    );
}

#[tokio::test]
async fn refused_connect() {
    let endpoint = endpoint();
    assert!(
        TestSocket::connect(&endpoint, "/socket", &[("reject", "true")])
            .await
            .is_err()
    );
}

async fn next_event(socket: &mut TestSocket, event: &str) -> Message {
    loop {
        let msg = socket
            .next_message()
            .await
            .unwrap_or_else(|| panic!("no {event}"));
        if msg.event == event {
            return msg;
        }
    }
}

#[tokio::test]
async fn over_longpoll_binary_is_refused_and_handle_out_names_the_transport() {
    let endpoint = endpoint();
    let mut lp = TestSocket::connect_over(
        &endpoint,
        "/socket",
        &[("user_id", "lp")],
        Transport::LongPoll,
    )
    .await
    .expect("connect");
    lp.join("room:t", json!({})).await.unwrap();
    let binary = lp
        .push(
            "room:t",
            "binary",
            Payload::Binary(Bytes::from_static(b"hi")),
        )
        .await;
    assert_eq!(
        lp.assert_reply(&binary).await,
        Reply::error(json!({"reason": "binary not supported on longpoll"}))
    );
    let push = lp.push("room:t", "new_msg", json!({"body": "x"})).await;
    lp.assert_reply(&push).await;
    assert_eq!(
        lp.assert_push("room:t", "new_msg").await,
        json!({"body": "x", "transport": "longpoll"}).into()
    );
}
