//! The socket against the conformance app, over real sockets:
//!
//! * connect params reach the app's `connect` (`user_id` → `joined` push),
//!   and `reject=true` is refused and retried;
//! * the bearer token travels as the sub-protocol (`reject` is refused);
//! * serializers 1.0.0 and 2.0.0;
//! * heartbeats are answered and keep the connection; a missed heartbeat
//!   reply closes (1000, "heartbeat timeout") and reconnects;
//! * after the server restarts on the same port the socket reconnects and
//!   its channels rejoin by themselves;
//! * `disconnect` stops reconnecting, `connect` resumes and rejoins.

mod support;

use std::time::Duration;

use fawkes_client::{ChannelState, ConnectionState, Payload, SocketEvent, Vsn};
use serde_json::json;
use support::*;

#[tokio::test]
async fn connect_params_reach_the_server() {
    let server = TestServer::start().await;
    let socket = fast_socket(&server.endpoint())
        .params(json!({"user_id": "42"}))
        .build()
        .unwrap();
    assert_eq!(
        socket.endpoint_url(),
        format!("ws://{}/socket/websocket?user_id=42&vsn=2.0.0", server.addr)
    );
    socket.connect();
    let room = socket.channel("room:lobby", json!({}));
    let mut joined = room.on("joined");
    within("join", room.join()).await.unwrap();
    let ev = next_event(&mut joined).await;
    assert_eq!(
        ev.payload,
        Payload::Json(json!({"status": "connected", "user_id": "42"}))
    );
    assert_eq!(ev.join_ref, room.join_ref());
}

#[tokio::test]
async fn refused_connect_is_retried_with_backoff() {
    let server = TestServer::start().await;
    let socket = fast_socket(&server.endpoint())
        .params(json!({"reject": "true"}))
        .build()
        .unwrap();
    // Two errors: the refusal, and the retry's refusal.
    assert_refused(&socket, 2).await;
}

#[tokio::test]
async fn bearer_token_is_sent_as_sub_protocol() {
    let server = TestServer::start().await;

    let socket = fast_socket(&server.endpoint())
        .auth_token("secret")
        .build()
        .unwrap();
    let mut events = socket.events();
    socket.connect();
    next_socket_event(&mut events, |e| *e == SocketEvent::Open).await;
    let room = socket.channel("room:lobby", json!({}));
    within("join", room.join()).await.unwrap();

    // The app refuses the token `reject`: the upgrade fails.
    let refused = fast_socket(&server.endpoint())
        .auth_token("reject")
        .build()
        .unwrap();
    assert_refused(&refused, 1).await;
}

#[tokio::test]
async fn both_serializers_join_push_and_receive() {
    let server = TestServer::start().await;
    for vsn in [Vsn::V1, Vsn::V2] {
        let socket = fast_socket(&server.endpoint())
            .vsn(vsn)
            .params(json!({"user_id": "u"}))
            .build()
            .unwrap();
        assert!(socket.endpoint_url().ends_with(if vsn == Vsn::V1 {
            "vsn=1.0.0"
        } else {
            "vsn=2.0.0"
        }));
        socket.connect();
        let room = socket.channel("room:lobby", json!({"user": "ann"}));
        let mut entered = room.on("user_entered");
        within("join", room.join()).await.unwrap();
        assert_eq!(
            next_event(&mut entered).await.payload,
            Payload::Json(json!({"user": "ann"}))
        );
        assert_echo(&room, json!({"vsn": format!("{vsn:?}")})).await;
        socket.disconnect().await;
    }
}

#[tokio::test]
async fn heartbeats_are_answered_and_keep_the_connection() {
    let server = TestServer::start().await;
    let socket = fast_socket(&server.endpoint())
        // Long enough that a loaded machine answers within one interval.
        .heartbeat_interval(Duration::from_millis(400))
        .build()
        .unwrap();
    let mut messages = socket.messages();
    let mut events = socket.events();
    socket.connect();
    next_socket_event(&mut events, |e| *e == SocketEvent::Open).await;
    let mut replies = 0;
    within("two heartbeat replies", async {
        while replies < 2 {
            let Ok(msg) = messages.recv().await else {
                continue;
            };
            if msg.topic == "phoenix" && msg.event == "phx_reply" {
                assert_eq!(
                    msg.payload,
                    Payload::Json(json!({"status": "ok", "response": {}}))
                );
                replies += 1;
            }
        }
    })
    .await;
    // Answered heartbeats never close the connection.
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok())
            .any(|e| matches!(e, SocketEvent::Close { .. }))
    );
    assert!(socket.is_connected());
}

#[tokio::test]
async fn missed_heartbeat_reply_closes_and_reconnects() {
    let server = TestServer::start().await;
    let relay = Relay::start(server.addr).await;
    let socket = fast_socket(&relay.endpoint())
        .heartbeat_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut events = socket.events();
    socket.connect();
    let room = socket.channel("room:lobby", json!({}));
    within("join", room.join()).await.unwrap();
    let first_join = room.join_ref();

    // The server's answers stop arriving: the next heartbeat goes unanswered.
    relay.hold(true);
    let close = next_socket_event(&mut events, |e| matches!(e, SocketEvent::Close { .. })).await;
    assert_eq!(
        close,
        SocketEvent::Close {
            code: Some(1000),
            reason: "heartbeat timeout".into()
        }
    );
    relay.hold(false);
    next_socket_event(&mut events, |e| *e == SocketEvent::Open).await;
    wait_rejoined(&room, first_join).await;
    assert_echo(&room, json!({"after": "reconnect"})).await;
}

#[tokio::test]
async fn reconnects_after_server_restart_and_channels_rejoin() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let socket = fast_socket(&server.endpoint())
        .params(json!({"user_id": "7"}))
        .build()
        .unwrap();
    let mut events = socket.events();
    socket.connect();
    let room = socket.channel("room:restart", json!({}));
    let mut msgs = room.on("from_api");
    let mut errors = room.on("phx_error");
    within("join", room.join()).await.unwrap();
    let first_join = room.join_ref();

    server.stop().await;
    let close = next_socket_event(&mut events, |e| matches!(e, SocketEvent::Close { .. })).await;
    assert_eq!(
        close,
        SocketEvent::Close {
            code: Some(1012),
            reason: close_reason(&close)
        }
    );
    // The transport error reaches the channel as phoenix.js reports it.
    let err = next_event(&mut errors).await;
    assert_eq!(
        err.payload,
        Payload::Json(json!({"source": "transport", "reason": "connection_closed"}))
    );
    let mut state = room.state_changes();
    wait_channel(&mut state, ChannelState::Errored).await;

    let server = TestServer::start_on(addr).await;
    next_socket_event(&mut events, |e| *e == SocketEvent::Open).await;
    wait_rejoined(&room, first_join).await;
    server.wait_stats((1, 1)).await;

    server
        .broadcast("room:restart", "from_api", json!({"n": 1}))
        .await;
    assert_eq!(
        next_event(&mut msgs).await.payload,
        Payload::Json(json!({"n": 1}))
    );
}

fn close_reason(ev: &SocketEvent) -> String {
    match ev {
        SocketEvent::Close { reason, .. } => reason.clone(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn disconnect_stops_reconnecting_and_connect_rejoins() {
    let server = TestServer::start().await;
    let socket = connected(&server);
    let room = joined(&socket, "room:lobby").await;
    server.wait_stats((1, 1)).await;

    socket.disconnect().await;
    assert_eq!(socket.state(), ConnectionState::Closed);
    assert_eq!(room.state(), ChannelState::Errored);
    server.wait_stats((0, 0)).await;

    socket.connect();
    let mut state = room.state_changes();
    wait_channel(&mut state, ChannelState::Joined).await;
    server.wait_stats((1, 1)).await;
}
