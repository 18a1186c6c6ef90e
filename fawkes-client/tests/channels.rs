//! Channels against the conformance app, over real sockets:
//!
//! * join ok, join refused (`room:denied`, `chat:secret`, unmatched topics);
//! * push replies: ok (`echo`), error (`error`), timeout (`noreply`);
//! * pushes made before the join are buffered, sent once joined, and time
//!   out if the join never comes;
//! * event streams: the app's broadcasts, `POST /api/broadcast`, and
//!   another socket's `new_msg`;
//! * leave: closed, streams end, the server drops the channel;
//! * binary payloads (V2 binary frames both ways; refused on V1);
//! * rejoin by itself after `phx_error` (`boom`);
//! * a second channel on a topic leaves the first, as phoenix.js does.

mod support;

use std::time::Duration;

use bytes::Bytes;
use fawkes_client::{ChannelState, JoinError, Payload, PushError, Vsn};
use serde_json::json;
use support::*;

#[tokio::test]
async fn join_ok_and_join_refused() {
    let server = TestServer::start().await;
    // A slow rejoin, so that a refused channel is seen errored before it retries.
    let socket = fast_socket(&server.endpoint())
        .rejoin_after(|_| Duration::from_secs(60))
        .build()
        .unwrap();
    socket.connect();

    let room = socket.channel("room:lobby", json!({}));
    assert_eq!(room.state(), ChannelState::Closed);
    assert_eq!(
        within("join", room.join()).await,
        Ok(Payload::Json(json!({})))
    );
    assert_eq!(room.state(), ChannelState::Joined);
    assert_eq!(
        within("second join", room.join()).await,
        Err(JoinError::AlreadyJoined)
    );

    for (topic, reason) in [
        ("room:denied", "unauthorized"),
        ("chat:secret", "You don't have permission!"),
        ("nope:x", "unmatched topic"),
    ] {
        let chan = socket.channel(topic, json!({}));
        let got = within("refused join", chan.join()).await;
        assert_eq!(
            got,
            Err(JoinError::Refused(Payload::Json(json!({"reason": reason}))))
        );
        assert_eq!(chan.state(), ChannelState::Errored);
        // A refused channel keeps retrying (phoenix.js) until it is left.
        within("leave", chan.leave()).await.ok();
        assert_eq!(chan.state(), ChannelState::Closed);
    }
}

#[tokio::test]
async fn push_replies_ok_error_and_timeout() {
    let server = TestServer::start().await;
    let socket = connected(&server);
    let room = joined(&socket, "room:lobby").await;

    assert_echo(&room, json!({"a": [1, 2]})).await;

    let err = within("error", room.push("error", json!({}))).await;
    assert_eq!(
        err,
        Err(PushError::Reply {
            status: "error".into(),
            response: Payload::Json(json!({"reason": "requested"}))
        })
    );

    let unknown = within("unknown", room.push("what", json!({}))).await;
    assert!(matches!(unknown, Err(PushError::Reply { status, .. }) if status == "error"));

    let timeout = within(
        "noreply",
        room.push_with_timeout("noreply", json!({}), Duration::from_millis(200)),
    )
    .await;
    assert_eq!(timeout, Err(PushError::Timeout));

    // The channel still answers after a timeout.
    assert_echo(&room, json!({"b": 1})).await;
}

#[tokio::test]
async fn pushes_before_join_are_buffered() {
    let server = TestServer::start().await;
    let socket = fast_socket(&server.endpoint()).build().unwrap();
    let room = socket.channel("room:lobby", json!({}));

    // Not even connected yet: the join and both pushes wait.
    let join = room.join();
    let first = room.push("echo", json!({"n": 1}));
    let second = room.push("echo", json!({"n": 2}));
    let expires = room.push_with_timeout("echo", json!({"n": 3}), Duration::from_millis(1));
    // The short one times out while buffered (its timer runs meanwhile).
    assert_eq!(
        within("buffered timeout", expires).await,
        Err(PushError::Timeout)
    );
    assert_eq!(room.state(), ChannelState::Joining);

    socket.connect();
    within("join", join).await.unwrap();
    assert_eq!(
        within("first", first).await,
        Ok(Payload::Json(json!({"n": 1})))
    );
    assert_eq!(
        within("second", second).await,
        Ok(Payload::Json(json!({"n": 2})))
    );

    // A push on a channel never joined is refused.
    let never = socket.channel("room:other", json!({}));
    assert_eq!(
        within("push", never.push("echo", json!({}))).await,
        Err(PushError::Closed)
    );
}

#[tokio::test]
async fn event_streams_carry_pushes_and_broadcasts() {
    let server = TestServer::start().await;
    let socket = fast_socket(&server.endpoint())
        .params(json!({"user_id": "a"}))
        .build()
        .unwrap();
    socket.connect();
    let room = socket.channel("room:events", json!({"user": "ann"}));
    let mut all = room.events();
    let mut api = room.on("from_api");
    let mut new_msg = room.on("new_msg");
    within("join", room.join()).await.unwrap();

    // Right after the join: the broadcast, then the push (PROTOCOL order).
    let first = next_event(&mut all).await;
    assert_eq!(
        (first.event.as_str(), &first.payload),
        ("user_entered", &Payload::Json(json!({"user": "ann"})))
    );
    let second = next_event(&mut all).await;
    assert_eq!(second.event, "joined");

    server
        .broadcast("room:events", "from_api", json!({"x": 1}))
        .await;
    assert_eq!(
        next_event(&mut api).await.payload,
        Payload::Json(json!({"x": 1}))
    );

    // Another socket's new_msg reaches this one through the channel.
    let other = fast_socket(&server.endpoint()).build().unwrap();
    other.connect();
    let other_room = other.channel("room:events", json!({}));
    within("other join", other_room.join()).await.unwrap();
    within("new_msg", other_room.push("new_msg", json!({"body": "hi"})))
        .await
        .unwrap();
    let got = next_event(&mut new_msg).await;
    assert_eq!(
        got.payload,
        Payload::Json(json!({"body": "hi", "transport": "websocket"}))
    );
}

#[tokio::test]
async fn leave_closes_the_channel() {
    let server = TestServer::start().await;
    let socket = connected(&server);
    let room = socket.channel("room:lobby", json!({}));
    let mut events = room.on("anything");
    within("join", room.join()).await.unwrap();
    server.wait_stats((1, 1)).await;

    assert_eq!(within("leave", room.leave()).await, Ok(()));
    assert_eq!(room.state(), ChannelState::Closed);
    assert!(within("stream end", events.recv()).await.is_none());
    assert_eq!(
        within("push", room.push("echo", json!({}))).await,
        Err(PushError::Closed)
    );
    server.wait_stats((1, 0)).await;
}

#[tokio::test]
async fn binary_payloads_round_trip() {
    let server = TestServer::start().await;
    let socket = connected(&server);
    let room = joined(&socket, "room:lobby").await;
    let got = within("binary", room.push("binary", Bytes::from_static(b"hello"))).await;
    assert_eq!(got, Ok(Payload::Binary(Bytes::from_static(b"hello world"))));
    // JSON still works on the same channel.
    assert_echo(&room, json!({})).await;

    // V1 has no binary form.
    let v1 = fast_socket(&server.endpoint())
        .vsn(Vsn::V1)
        .build()
        .unwrap();
    v1.connect();
    let room = v1.channel("room:lobby", json!({}));
    within("join", room.join()).await.unwrap();
    let got = within("binary on v1", room.push("binary", vec![1u8, 2])).await;
    assert!(matches!(got, Err(PushError::Encode(_))), "{got:?}");
}

#[tokio::test]
async fn rejoins_by_itself_after_phx_error() {
    let server = TestServer::start().await;
    let socket = connected(&server);
    let room = socket.channel("room:crash", json!({}));
    let mut errors = room.on("phx_error");
    let mut you_left = room.on("you_left");
    within("join", room.join()).await.unwrap();
    let first_join = room.join_ref();

    // `boom` crashes the channel: no reply, you_left then phx_error.
    let boom = room.push_with_timeout("boom", json!({}), Duration::from_millis(300));
    next_event(&mut you_left).await;
    let err = next_event(&mut errors).await;
    assert_eq!(err.join_ref, first_join);
    wait_rejoined(&room, first_join).await;
    assert_eq!(within("boom", boom).await, Err(PushError::Timeout));

    assert_echo(&room, json!({"alive": true})).await;
    server.wait_stats((1, 1)).await;
}

#[tokio::test]
async fn second_channel_on_a_topic_leaves_the_first() {
    let server = TestServer::start().await;
    let socket = connected(&server);
    let first = joined(&socket, "room:dup").await;
    let second = joined(&socket, "room:dup").await;
    assert_eq!(first.state(), ChannelState::Closed);
    assert_eq!(second.state(), ChannelState::Joined);
    assert_echo(&second, json!({"n": 2})).await;
    server.wait_stats((1, 1)).await;
}

#[tokio::test]
async fn messages_of_an_older_join_are_ignored() {
    let server = TestServer::start().await;
    let relay = Relay::start(server.addr).await;
    let socket = fast_socket(&relay.endpoint()).build().unwrap();
    let mut messages = socket.messages();
    let mut events = socket.events();
    socket.connect();
    next_socket_event(&mut events, |e| *e == fawkes_client::SocketEvent::Open).await;
    let room = socket.channel("room:stale", json!({}));
    let mut joined = room.on("joined");

    // The server's answers to the first join are held back until it timed
    // out; then they arrive carrying the old join ref: its ok reply, its
    // `joined` push, and the `phx_close` that answers the client's leave.
    relay.hold(true);
    let mut state = room.state_changes();
    let first = room.join_with_timeout(Duration::from_millis(300));
    wait_channel(&mut state, ChannelState::Joining).await;
    let first_join = room.join_ref();
    assert!(first_join.is_some());
    assert_eq!(within("join timeout", first).await, Err(JoinError::Timeout));
    relay.hold(false);

    wait_rejoined(&room, first_join.clone()).await;
    // Frames arrive in order, so the old join's frames were handled by now.
    let stale: Vec<_> = std::iter::from_fn(|| messages.try_recv().ok())
        .filter(|m| m.join_ref == first_join)
        .map(|m| m.event)
        .collect();
    assert!(stale.iter().any(|e| e == "joined"), "{stale:?}");
    assert!(stale.iter().any(|e| e == "phx_close"), "{stale:?}");
    // None of them reached the channel: it is joined, and its first
    // `joined` push is the new join's.
    assert_eq!(room.state(), ChannelState::Joined);
    let ev = next_event(&mut joined).await;
    assert_eq!(ev.join_ref, room.join_ref());
    assert_echo(&room, json!({})).await;
}
