//! PROTOCOL §2 (checklist 2, 14–21): V1 objects, V2 arrays, refs echoed
//! verbatim, V2 binary frames.

mod support;

use serde_json::{Value, json};
use support::{TestServer, binary_push, decode_binary_reply};

/// A V1 frame as the server must write it: exactly four keys.
fn v1(topic: &str, event: &str, payload: Value, r: Value) -> Value {
    json!({"topic": topic, "event": event, "payload": payload, "ref": r})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c02_v1_frames_are_objects_without_join_ref() {
    let server = TestServer::start().await;
    let mut client = server.ws("vsn=1.0.0&user_id=42").await;
    // V1 clients may send a join_ref; the server never sends one back.
    client
        .send(json!({
            "topic": "room:lobby", "event": "phx_join", "payload": {"user": "ann"},
            "ref": "1", "join_ref": "1"
        }))
        .await;
    let ok = json!({"status": "ok", "response": {}});
    client
        .expect(v1("room:lobby", "phx_reply", ok.clone(), json!("1")))
        .await;
    client
        .expect(v1(
            "room:lobby",
            "user_entered",
            json!({"user": "ann"}),
            Value::Null,
        ))
        .await;
    client
        .expect(v1(
            "room:lobby",
            "joined",
            json!({"status": "connected", "user_id": "42"}),
            Value::Null,
        ))
        .await;

    client
        .send(json!({"topic": "room:lobby", "event": "echo", "payload": {"a": 1}, "ref": "2"}))
        .await;
    client
        .expect(v1(
            "room:lobby",
            "phx_reply",
            json!({"status": "ok", "response": {"a": 1}}),
            json!("2"),
        ))
        .await;

    // phx_close carries the join_ref as received in the join (PROTOCOL §3).
    client
        .send(json!({
            "topic": "room:lobby", "event": "phx_leave", "payload": {}, "ref": "3", "join_ref": "1"
        }))
        .await;
    client
        .expect(v1("room:lobby", "phx_reply", ok, json!("3")))
        .await;
    client
        .expect(v1("room:lobby", "phx_close", json!({}), json!("1")))
        .await;
    client
        .expect(v1(
            "room:lobby",
            "you_left",
            json!({"message": "bye!"}),
            Value::Null,
        ))
        .await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c02_v1_join_without_join_ref_closes_with_null_ref() {
    let server = TestServer::start().await;
    let mut client = server.ws("").await;
    let ok = json!({"status": "ok", "response": {}});
    client
        .send(json!({"topic": "room:lobby", "event": "phx_join", "payload": {}, "ref": "1"}))
        .await;
    client
        .expect(v1("room:lobby", "phx_reply", ok.clone(), json!("1")))
        .await;
    client
        .expect(v1(
            "room:lobby",
            "user_entered",
            json!({"user": null}),
            Value::Null,
        ))
        .await;
    client
        .expect(v1(
            "room:lobby",
            "joined",
            json!({"status": "connected", "user_id": null}),
            Value::Null,
        ))
        .await;
    client
        .send(json!({"topic": "room:lobby", "event": "stop", "payload": {}, "ref": "2"}))
        .await;
    client
        .expect(v1("room:lobby", "phx_reply", ok, json!("2")))
        .await;
    // Joined without a join_ref: phx_close shows `"ref": null` (PROTOCOL §3).
    client
        .expect(v1("room:lobby", "phx_close", json!({}), Value::Null))
        .await;
    client
        .expect(v1(
            "room:lobby",
            "you_left",
            json!({"message": "bye!"}),
            Value::Null,
        ))
        .await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c14_extra_trailing_elements_are_ignored() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    client
        .send(json!(["1", "1", "bench:1", "phx_join", {}, "extra", 42]))
        .await;
    client
        .expect(json!(["1", "1", "bench:1", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    client
        .send(json!(["1", "2", "bench:1", "ping", {"n": 1}, null]))
        .await;
    client
        .expect(json!(["1", "2", "bench:1", "phx_reply", {"status": "ok", "response": {"n": 1}}]))
        .await;
    client
        .send(json!([null, "3", "phoenix", "heartbeat", {}, {}]))
        .await;
    client
        .expect(json!([null, "3", "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c15_every_v2_server_frame_is_a_five_element_array() {
    let server = TestServer::start().await;
    let mut client = server.ws("vsn=2.0.0&user_id=7").await;
    // Each message with the number of frames it produces. They are sent one
    // at a time: a leave pipelined behind `new_msg` may legitimately overtake
    // the sender's intercepted copy (it reaches the channel after the leave).
    let script = [
        (json!(["1", "1", "room:lobby", "phx_join", {}]), 3),
        (
            json!(["1", "2", "room:lobby", "new_msg", {"body": "hi"}]),
            2,
        ),
        (json!(["1", "3", "room:lobby", "error", {}]), 1),
        (json!(["1", "4", "room:nowhere", "echo", {}]), 1),
        (json!(["1", "5", "room:lobby", "phx_leave", {}]), 3),
    ];
    for (message, count) in script {
        client.send(message).await;
        for _ in 0..count {
            let frame = client.recv_json().await;
            let array = frame
                .as_array()
                .unwrap_or_else(|| panic!("not an array: {frame}"));
            assert_eq!(array.len(), 5, "{frame}");
            assert!(array[0].is_null() || array[0].is_string(), "{frame}");
            assert!(array[1].is_null() || array[1].is_string(), "{frame}");
            assert!(array[2].is_string() && array[3].is_string(), "{frame}");
            assert!(array[4].is_object(), "{frame}");
        }
    }
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c16_numeric_refs_stay_numeric() {
    let server = TestServer::start().await;
    let mut client = server.ws("vsn=2.0.0&user_id=7").await;
    client
        .send(json!([5, 5, "room:lobby", "phx_join", {}]))
        .await;
    client
        .expect(json!([5, 5, "room:lobby", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    client
        .expect(json!([null, null, "room:lobby", "user_entered", {"user": null}]))
        .await;
    client
        .expect(json!([5, null, "room:lobby", "joined", {"status": "connected", "user_id": "7"}]))
        .await;
    client
        .send(json!([5, 6, "room:lobby", "echo", {"x": 1}]))
        .await;
    client
        .expect(json!([5, 6, "room:lobby", "phx_reply", {"status": "ok", "response": {"x": 1}}]))
        .await;
    client
        .send(json!([null, 7.5, "phoenix", "heartbeat", {}]))
        .await;
    client
        .expect(json!([null, 7.5, "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    client
        .send(json!([5, 8, "room:lobby", "phx_leave", {}]))
        .await;
    client
        .expect(json!([5, 8, "room:lobby", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    client
        .expect(json!([5, 5, "room:lobby", "phx_close", {}]))
        .await;
    client
        .expect(json!([5, null, "room:lobby", "you_left", {"message": "bye!"}]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c16_string_refs_are_echoed_verbatim() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    client
        .send(json!(["007", "007", "bench:1", "phx_join", {}]))
        .await;
    client
        .expect(json!(["007", "007", "bench:1", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    client
        .send(json!(["007", "x y/é", "bench:1", "ping", {}]))
        .await;
    client
        .expect(json!(["007", "x y/é", "bench:1", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c16_v1_numeric_ref_stays_numeric() {
    let server = TestServer::start().await;
    let mut client = server.ws("vsn=1.0.0").await;
    client
        .send(json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": 12}))
        .await;
    client
        .expect(v1(
            "phoenix",
            "phx_reply",
            json!({"status": "ok", "response": {}}),
            json!(12),
        ))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c17_binary_push_round_trips_as_kind_1_reply() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let join_ref = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    // PROTOCOL §2.3 worked example.
    let push = binary_push(&join_ref, "9", "room:lobby", "binary", b"hello");
    assert_eq!(push.len(), 28);
    client.send_binary(push).await;
    let reply = client.recv_binary().await;
    let mut want = vec![0x01, 0x01, 0x01, 0x0A, 0x02];
    want.extend_from_slice(b"19room:lobbyokhello world");
    assert_eq!(reply, want, "PROTOCOL §2.3 reply example (30 bytes)");
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c17_binary_payload_is_passed_as_raw_bytes() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let join_ref = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    // Bytes that are neither UTF-8 nor JSON, and an empty payload.
    for payload in [vec![0x00, 0xFF, 0x80, b'{'], vec![]] {
        let r = client.next_ref();
        client
            .send_binary(binary_push(&join_ref, &r, "room:lobby", "binary", &payload))
            .await;
        let reply = decode_binary_reply(&client.recv_binary().await);
        let mut want = payload.clone();
        want.extend_from_slice(b" world");
        assert_eq!(reply.join_ref, join_ref);
        assert_eq!(reply.r, r);
        assert_eq!(reply.topic, "room:lobby");
        assert_eq!(reply.status, "ok");
        assert_eq!(reply.payload, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c17_binary_push_with_empty_join_ref_is_answered_with_the_channels() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let join_ref = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    // An empty join_ref is the binary form of null (PROTOCOL §2.3).
    client
        .send_binary(binary_push("", "77", "room:lobby", "binary", b"hi"))
        .await;
    let reply = decode_binary_reply(&client.recv_binary().await);
    assert_eq!(
        reply.join_ref, join_ref,
        "reply carries the channel's join ref (c39)"
    );
    assert_eq!(reply.r, "77");
    assert_eq!(reply.payload, b"hi world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c17_binary_push_to_an_ordinary_event_reaches_the_handler() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let join_ref = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    // A binary push to an event the Room does not know is answered like a JSON one.
    client
        .send_binary(binary_push(
            &join_ref,
            "5",
            "room:lobby",
            "unknown_thing",
            b"x",
        ))
        .await;
    client
        .expect(json!([
            join_ref,
            "5",
            "room:lobby",
            "phx_reply",
            {"status": "error", "response": {"reason": "unknown event"}}
        ]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c21_binary_header_lengths_are_utf8_bytes() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let topic = "room:café";
    assert_eq!(topic.len(), 10);
    let join_ref = client.join_room(topic, Value::Null, Value::Null).await;
    client
        .send_binary(binary_push(&join_ref, "ü", topic, "binary", b"hello"))
        .await;
    let bytes = client.recv_binary().await;
    assert_eq!(&bytes[..5], &[1, join_ref.len() as u8, 2, 10, 2]);
    let reply = decode_binary_reply(&bytes);
    assert_eq!(reply.r, "ü");
    assert_eq!(reply.topic, topic);
    assert_eq!(reply.payload, b"hello world");
}
