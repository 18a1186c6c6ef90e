//! PROTOCOL §4.4, §4.8 and §5.5 (checklist 31, 44–51): fast-lane and
//! intercepted broadcasts, `broadcast_from`, `to` filtering, encodings and
//! order.

mod support;

use serde_json::{Value, json};
use support::{TestServer, WsClient, ok};

/// A Room's `handle_out` copy of `new_msg` for a WebSocket subscriber.
fn new_msg_copy(join_ref: &str, topic: &str, payload: Value) -> Value {
    let mut payload = payload;
    payload["transport"] = json!("websocket");
    json!([join_ref, null, topic, "new_msg", payload])
}

/// Joins a V1 client to `topic` (a Room) and reads the post-join frames.
async fn v1_join_room(client: &mut WsClient, topic: &str) {
    client
        .send(json!({"topic": topic, "event": "phx_join", "payload": {}, "ref": "v1"}))
        .await;
    client
        .expect(
            json!({"topic": topic, "event": "phx_reply", "payload": ok(json!({})), "ref": "v1"}),
        )
        .await;
    client
        .expect(json!({"topic": topic, "event": "user_entered", "payload": {"user": null}, "ref": null}))
        .await;
    client
        .expect(json!({
            "topic": topic,
            "event": "joined",
            "payload": {"status": "connected", "user_id": null},
            "ref": null
        }))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c31_only_broadcasts_after_the_join_reply_are_delivered() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut client = server.ws_v2().await;
    http.broadcast("bench:1", "early", json!({"n": 1})).await;
    client.join("bench:1", json!({})).await;
    http.broadcast("bench:1", "late", json!({"n": 2})).await;
    client
        .expect(json!([null, null, "bench:1", "late", {"n": 2}]))
        .await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c44_user_entered_reaches_every_member() {
    let server = TestServer::start().await;
    let mut bob = server.ws("vsn=2.0.0&user_id=bob").await;
    let mut ann = server.ws("vsn=2.0.0&user_id=ann").await;
    bob.join_room("room:lobby", json!("bob"), json!("bob"))
        .await;
    ann.join_room("room:lobby", json!("ann"), json!("ann"))
        .await;
    bob.expect(json!([null, null, "room:lobby", "user_entered", {"user": "ann"}]))
        .await;
    bob.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c44_fast_lane_broadcast_reaches_every_subscriber_and_no_other() {
    let server = TestServer::start().await;
    let mut a = server.ws_v2().await;
    let mut b = server.ws_v2().await;
    let mut c = server.ws_v2().await;
    let ja = a.join("bench:1", json!({})).await;
    b.join("bench:1", json!({})).await;
    c.join("bench:2", json!({})).await;

    a.send(json!([ja, "11", "bench:1", "broadcast", {"n": 1}]))
        .await;
    a.expect(json!([null, null, "bench:1", "msg", {"n": 1}]))
        .await;
    a.expect(json!([ja, "11", "bench:1", "phx_reply", ok(json!({}))]))
        .await;
    b.expect(json!([null, null, "bench:1", "msg", {"n": 1}]))
        .await;

    // `c` is on another topic: its next frame is a later broadcast there.
    server
        .http()
        .broadcast("bench:2", "marker", json!({}))
        .await;
    c.expect(json!([null, null, "bench:2", "marker", {}])).await;
    b.barrier().await;
    c.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c45_broadcast_from_reaches_everyone_but_the_sender() {
    let server = TestServer::start().await;
    let mut a = server.ws_v2().await;
    let mut b = server.ws_v2().await;
    let ja = a.join_room("room:lobby", Value::Null, Value::Null).await;
    let jb = b.join_room("room:lobby", Value::Null, Value::Null).await;
    a.expect(json!([null, null, "room:lobby", "user_entered", {"user": null}]))
        .await;

    a.send(json!([ja, "1", "room:lobby", "new_msg_from", {"body": "psst"}]))
        .await;
    a.expect(json!([ja, "1", "room:lobby", "phx_reply", ok(json!({}))]))
        .await;
    b.expect(new_msg_copy(&jb, "room:lobby", json!({"body": "psst"})))
        .await;

    // A later broadcast to everyone is the next thing `a` sees after its reply.
    a.send(json!([ja, "2", "room:lobby", "new_msg", {"body": "marker"}]))
        .await;
    a.expect(json!([ja, "2", "room:lobby", "phx_reply", ok(json!({}))]))
        .await;
    a.expect(new_msg_copy(&ja, "room:lobby", json!({"body": "marker"})))
        .await;
    b.expect(new_msg_copy(&jb, "room:lobby", json!({"body": "marker"})))
        .await;
    a.barrier().await;
    b.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c46_sender_sees_a_fast_lane_broadcast_before_its_reply() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client.join("bench:1", json!({})).await;
    for n in 0..5 {
        let r = client
            .push(&jr, "bench:1", "broadcast", json!({"n": n}))
            .await;
        client
            .expect(json!([null, null, "bench:1", "msg", {"n": n}]))
            .await;
        client
            .expect(json!([jr, r, "bench:1", "phx_reply", ok(json!({}))]))
            .await;
    }
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c47_c48_intercepted_new_msg_goes_through_handle_out_after_the_reply() {
    let server = TestServer::start().await;
    let mut a = server.ws_v2().await;
    let mut b = server.ws("vsn=2.0.0&user_id=bob").await;
    let ja = a.join_room("room:lobby", Value::Null, Value::Null).await;
    let jb = b.join_room("room:lobby", Value::Null, json!("bob")).await;
    a.expect(json!([null, null, "room:lobby", "user_entered", {"user": null}]))
        .await;

    a.send(json!([ja, "12", "room:lobby", "new_msg", {"body": "hi"}]))
        .await;
    // PROTOCOL §5.5: reply first, then the sender's own copy, with its join ref.
    a.expect(json!([ja, "12", "room:lobby", "phx_reply", ok(json!({}))]))
        .await;
    a.expect(new_msg_copy(&ja, "room:lobby", json!({"body": "hi"})))
        .await;
    b.expect(new_msg_copy(&jb, "room:lobby", json!({"body": "hi"})))
        .await;
    a.barrier().await;
    b.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c47_to_delivers_only_to_the_named_user() {
    let server = TestServer::start().await;
    let mut alice = server.ws("vsn=2.0.0&user_id=alice").await;
    let mut bob = server.ws("vsn=2.0.0&user_id=bob").await;
    let mut anon = server.ws_v2().await;
    let ja = alice
        .join_room("room:lobby", Value::Null, json!("alice"))
        .await;
    let jb = bob.join_room("room:lobby", Value::Null, json!("bob")).await;
    let jn = anon.join_room("room:lobby", Value::Null, Value::Null).await;
    for _ in 0..2 {
        alice
            .expect(json!([null, null, "room:lobby", "user_entered", {"user": null}]))
            .await;
    }
    bob.expect(json!([null, null, "room:lobby", "user_entered", {"user": null}]))
        .await;

    let to_bob = json!({"body": "psst", "to": "bob"});
    alice
        .send(json!([ja, "1", "room:lobby", "new_msg", to_bob]))
        .await;
    alice
        .expect(json!([ja, "1", "room:lobby", "phx_reply", ok(json!({}))]))
        .await;
    bob.expect(new_msg_copy(&jb, "room:lobby", to_bob.clone()))
        .await;

    let to_alice = json!({"body": "self", "to": "alice"});
    alice
        .send(json!([ja, "2", "room:lobby", "new_msg", to_alice]))
        .await;
    alice
        .expect(json!([ja, "2", "room:lobby", "phx_reply", ok(json!({}))]))
        .await;
    alice
        .expect(new_msg_copy(&ja, "room:lobby", to_alice))
        .await;

    // Messages from one channel keep their order, so each subscriber's next
    // frame being the marker proves the filtered messages never came.
    let marker = json!({"body": "marker"});
    alice
        .send(json!([ja, "3", "room:lobby", "new_msg", marker]))
        .await;
    alice
        .expect(json!([ja, "3", "room:lobby", "phx_reply", ok(json!({}))]))
        .await;
    alice
        .expect(new_msg_copy(&ja, "room:lobby", marker.clone()))
        .await;
    bob.expect(new_msg_copy(&jb, "room:lobby", marker.clone()))
        .await;
    anon.expect(new_msg_copy(&jn, "room:lobby", marker)).await;
    for client in [&mut alice, &mut bob, &mut anon] {
        client.barrier().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c47_chat_events_are_broadcast_as_new_msg_without_reply() {
    let server = TestServer::start().await;
    let mut a = server.ws_v2().await;
    let mut b = server.ws_v2().await;
    let ja = a.join("chat:lobby", json!({})).await;
    let jb = b.join("chat:lobby", json!({})).await;
    for (n, event) in ["new_msg", "shout", "anything"].into_iter().enumerate() {
        let payload = json!({"body": "hi", "n": n});
        a.send(json!([ja, format!("c{n}"), "chat:lobby", event, payload]))
            .await;
        // Pushed unchanged by handle_out; no reply precedes it.
        a.expect(json!([ja, null, "chat:lobby", "new_msg", payload]))
            .await;
        b.expect(json!([jb, null, "chat:lobby", "new_msg", payload]))
            .await;
    }
    a.barrier().await;
    b.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c49_http_broadcast_of_a_plain_event_uses_the_fast_lane() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut a = server.ws_v2().await;
    let mut b = server.ws_v2().await;
    a.join_room("room:lobby", Value::Null, Value::Null).await;
    a.join("bench:1", json!({})).await;
    b.join("bench:1", json!({})).await;

    http.broadcast("room:lobby", "custom", json!({"a": 1}))
        .await;
    a.expect(json!([null, null, "room:lobby", "custom", {"a": 1}]))
        .await;
    http.broadcast("bench:1", "msg", json!({"b": [1, 2]})).await;
    a.expect(json!([null, null, "bench:1", "msg", {"b": [1, 2]}]))
        .await;
    b.expect(json!([null, null, "bench:1", "msg", {"b": [1, 2]}]))
        .await;
    // Broadcasting to a topic nobody joined is fine too.
    http.broadcast("room:empty", "custom", json!({})).await;
    a.barrier().await;
    b.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c49_http_broadcast_of_new_msg_runs_handle_out() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut alice = server.ws("vsn=2.0.0&user_id=alice").await;
    let mut bob = server.ws("vsn=2.0.0&user_id=bob").await;
    let ja = alice
        .join_room("room:lobby", Value::Null, json!("alice"))
        .await;
    let jb = bob.join_room("room:lobby", Value::Null, json!("bob")).await;
    alice
        .expect(json!([null, null, "room:lobby", "user_entered", {"user": null}]))
        .await;

    http.broadcast("room:lobby", "new_msg", json!({"body": "api"}))
        .await;
    alice
        .expect(new_msg_copy(&ja, "room:lobby", json!({"body": "api"})))
        .await;
    bob.expect(new_msg_copy(&jb, "room:lobby", json!({"body": "api"})))
        .await;

    http.broadcast("room:lobby", "new_msg", json!({"body": "dm", "to": "bob"}))
        .await;
    http.broadcast("room:lobby", "new_msg", json!({"body": "marker"}))
        .await;
    bob.expect(new_msg_copy(
        &jb,
        "room:lobby",
        json!({"body": "dm", "to": "bob"}),
    ))
    .await;
    bob.expect(new_msg_copy(&jb, "room:lobby", json!({"body": "marker"})))
        .await;
    alice
        .expect(new_msg_copy(&ja, "room:lobby", json!({"body": "marker"})))
        .await;

    // Chat's handle_out pushes new_msg unchanged.
    let jc = alice.join("chat:lobby", json!({})).await;
    http.broadcast("chat:lobby", "new_msg", json!({"body": "chat"}))
        .await;
    alice
        .expect(json!([jc, null, "chat:lobby", "new_msg", {"body": "chat"}]))
        .await;
    alice.barrier().await;
    bob.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c50_v1_and_v2_subscribers_each_get_their_own_encoding() {
    let server = TestServer::start().await;
    let http = server.http();
    let mut v1 = server.ws("vsn=1.0.0").await;
    let mut v2 = server.ws_v2().await;
    v1_join_room(&mut v1, "room:lobby").await;
    let j2 = v2.join_room("room:lobby", Value::Null, Value::Null).await;
    v1.expect(json!({"topic": "room:lobby", "event": "user_entered", "payload": {"user": null}, "ref": null}))
        .await;

    // Fast lane.
    http.broadcast("room:lobby", "custom", json!({"a": 1}))
        .await;
    v1.expect(json!({"topic": "room:lobby", "event": "custom", "payload": {"a": 1}, "ref": null}))
        .await;
    v2.expect(json!([null, null, "room:lobby", "custom", {"a": 1}]))
        .await;

    // Intercepted: V1 never shows the join ref.
    v2.send(json!([j2, "5", "room:lobby", "new_msg", {"body": "hi"}]))
        .await;
    v2.expect(json!([j2, "5", "room:lobby", "phx_reply", ok(json!({}))]))
        .await;
    v2.expect(new_msg_copy(&j2, "room:lobby", json!({"body": "hi"})))
        .await;
    v1.expect(json!({
        "topic": "room:lobby",
        "event": "new_msg",
        "payload": {"body": "hi", "transport": "websocket"},
        "ref": null
    }))
    .await;

    // A V1 client's broadcast reaches the V2 client as an array.
    v1.send(json!({"topic": "room:lobby", "event": "new_msg", "payload": {"body": "from v1"}, "ref": "6"}))
        .await;
    v1.expect(
        json!({"topic": "room:lobby", "event": "phx_reply", "payload": ok(json!({})), "ref": "6"}),
    )
    .await;
    v1.expect(json!({
        "topic": "room:lobby",
        "event": "new_msg",
        "payload": {"body": "from v1", "transport": "websocket"},
        "ref": null
    }))
    .await;
    v2.expect(new_msg_copy(&j2, "room:lobby", json!({"body": "from v1"})))
        .await;
    v1.barrier().await;
    v2.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c51_frames_from_one_channel_keep_their_order() {
    const N: usize = 200;
    let server = TestServer::start().await;
    let mut a = server.ws_v2().await;
    let mut b = server.ws_v2().await;
    let ja = a.join_room("room:lobby", Value::Null, Value::Null).await;
    let jb = b.join_room("room:lobby", Value::Null, Value::Null).await;
    a.expect(json!([null, null, "room:lobby", "user_entered", {"user": null}]))
        .await;

    for n in 0..N {
        a.send(json!([ja, format!("m{n}"), "room:lobby", "new_msg", {"n": n}]))
            .await;
    }
    // The receiver sees every copy, in the order they were sent.
    for n in 0..N {
        b.expect(new_msg_copy(&jb, "room:lobby", json!({"n": n})))
            .await;
    }
    // The sender sees its replies in order, its copies in order, and each
    // reply before the matching copy (c48).
    let mut replies = 0;
    let mut copies = 0;
    while copies < N {
        let frame = a.recv_json().await;
        if frame[3] == json!("phx_reply") {
            assert_eq!(
                frame,
                json!([
                    ja,
                    format!("m{replies}"),
                    "room:lobby",
                    "phx_reply",
                    ok(json!({}))
                ])
            );
            replies += 1;
        } else {
            assert_eq!(frame, new_msg_copy(&ja, "room:lobby", json!({"n": copies})));
            copies += 1;
            assert!(copies <= replies, "copy {copies} arrived before its reply");
        }
    }
    assert_eq!(replies, N);
    a.barrier().await;
    b.barrier().await;
}
