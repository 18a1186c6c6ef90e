//! PROTOCOL §4.3–§4.7 and §5.2–§5.10 (checklist 26–43, 52–62): joins,
//! messages to channels, leave, stop and crash, with the exact wire order.

mod support;

use serde_json::{Value, json};
use support::{TestServer, WsClient, error, ok, unmatched};

/// Asserts the leave/stop sequence of PROTOCOL §4.5: reply, `phx_close`,
/// then the terminate push `you_left`.
async fn expect_reply_close_you_left(client: &mut WsClient, join_ref: &str, r: &str, topic: &str) {
    client
        .expect(json!([join_ref, r, topic, "phx_reply", ok(json!({}))]))
        .await;
    client
        .expect(json!([join_ref, join_ref, topic, "phx_close", {}]))
        .await;
    client
        .expect(json!([join_ref, null, topic, "you_left", {"message": "bye!"}]))
        .await;
}

// --- Join -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c26_join_ok_reply_precedes_user_entered_and_joined() {
    let server = TestServer::start().await;
    let mut client = server.ws("user_id=42&vsn=2.0.0").await;
    client
        .send(json!(["3", "3", "room:lobby", "phx_join", {"user": "ann"}]))
        .await;
    // PROTOCOL §5.2, in this order (§4.14: join reply before post-join work).
    client
        .expect(json!(["3", "3", "room:lobby", "phx_reply", ok(json!({}))]))
        .await;
    client
        .expect(json!([null, null, "room:lobby", "user_entered", {"user": "ann"}]))
        .await;
    client
        .expect(
            json!(["3", null, "room:lobby", "joined", {"status": "connected", "user_id": "42"}]),
        )
        .await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c26_anonymous_join_has_null_user_and_user_id() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    client
        .send(json!(["1", "1", "room:lobby", "phx_join", {}]))
        .await;
    client
        .expect(json!(["1", "1", "room:lobby", "phx_reply", ok(json!({}))]))
        .await;
    client
        .expect(json!([null, null, "room:lobby", "user_entered", {"user": null}]))
        .await;
    client
        .expect(
            json!(["1", null, "room:lobby", "joined", {"status": "connected", "user_id": null}]),
        )
        .await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c26_bench_and_chat_joins_are_plain_ok() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    client
        .send(json!(["1", "1", "bench:1", "phx_join", {}]))
        .await;
    client
        .expect(json!(["1", "1", "bench:1", "phx_reply", ok(json!({}))]))
        .await;
    client
        .send(json!(["2", "2", "chat:lobby", "phx_join", {"any": "thing"}]))
        .await;
    client
        .expect(json!(["2", "2", "chat:lobby", "phx_reply", ok(json!({}))]))
        .await;
    // Neither pushes anything after joining.
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c27_refused_join_is_an_error_reply_and_nothing_else() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    client
        .send(json!(["4", "4", "room:denied", "phx_join", {}]))
        .await;
    client
        .expect(json!([
            "4",
            "4",
            "room:denied",
            "phx_reply",
            error("unauthorized")
        ]))
        .await;
    client
        .send(json!(["5", "5", "chat:secret", "phx_join", {}]))
        .await;
    client
        .expect(json!([
            "5",
            "5",
            "chat:secret",
            "phx_reply",
            error("You don't have permission!")
        ]))
        .await;
    // No phx_close / phx_error follows, and no channel remains.
    client.barrier().await;
    client
        .send(json!(["4", "6", "room:denied", "echo", {}]))
        .await;
    client.expect(unmatched("6", "room:denied")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c28_join_on_an_unrouted_topic_is_unmatched_with_null_join_ref() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    for (n, topic) in ["nope:1", "lobby", "phoenix"].into_iter().enumerate() {
        let r = format!("{}", n + 5);
        client.send(json!([r, r, topic, "phx_join", {}])).await;
        client.expect(unmatched(&r, topic)).await;
    }
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c29_crashing_join_is_reported_and_the_socket_lives_on() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let lobby = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    for r in ["6", "7"] {
        client
            .send(json!([r, r, "room:join_crash", "phx_join", {}]))
            .await;
        client
            .expect(json!([
                r,
                r,
                "room:join_crash",
                "phx_reply",
                error("join crashed")
            ]))
            .await;
    }
    client.barrier().await;
    client.echo(&lobby, "room:lobby").await;
    client.join("bench:1", json!({})).await;
    server.http().assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c32_101st_channel_is_refused_until_one_is_left() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let mut join_refs = Vec::new();
    for n in 0..100 {
        join_refs.push(client.join(&format!("bench:{n}"), json!({})).await);
    }
    server.http().wait_stats((1, 100)).await;

    client
        .send(json!(["x1", "x1", "bench:100", "phx_join", {}]))
        .await;
    client
        .expect(json!([
            "x1",
            "x1",
            "bench:100",
            "phx_reply",
            error("too many channels joined")
        ]))
        .await;
    client
        .send(json!(["x2", "x2", "room:lobby", "phx_join", {}]))
        .await;
    client
        .expect(json!([
            "x2",
            "x2",
            "room:lobby",
            "phx_reply",
            error("too many channels joined")
        ]))
        .await;
    // Routing comes before the limit (PROTOCOL §4.3 step 3).
    client
        .send(json!(["x3", "x3", "nope:1", "phx_join", {}]))
        .await;
    client.expect(unmatched("x3", "nope:1")).await;

    // Leaving one channel frees a slot.
    let first = &join_refs[0];
    client
        .send(json!([first, "x4", "bench:0", "phx_leave", {}]))
        .await;
    client
        .expect(json!([first, "x4", "bench:0", "phx_reply", ok(json!({}))]))
        .await;
    client
        .expect(json!([first, first, "bench:0", "phx_close", {}]))
        .await;
    client.join("bench:100", json!({})).await;

    // Full again.
    client
        .send(json!(["x5", "x5", "bench:101", "phx_join", {}]))
        .await;
    client
        .expect(json!([
            "x5",
            "x5",
            "bench:101",
            "phx_reply",
            error("too many channels joined")
        ]))
        .await;
    server.http().wait_stats((1, 100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c32_duplicate_join_at_the_limit_takes_no_extra_slot() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let mut join_refs = Vec::new();
    for n in 0..100 {
        join_refs.push(client.join(&format!("bench:{n}"), json!({})).await);
    }
    // PROTOCOL §4.10: joining a topic twice replaces the old channel.
    client
        .send(json!(["d1", "d1", "bench:50", "phx_join", {}]))
        .await;
    client
        .expect(json!(["d1", "d1", "bench:50", "phx_reply", ok(json!({}))]))
        .await;
    let old = &join_refs[50];
    client
        .expect(json!([old, old, "bench:50", "phx_close", {}]))
        .await;
    client.barrier().await;
    server.http().wait_stats((1, 100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c33_duplicate_join_replaces_the_channel() {
    let server = TestServer::start().await;
    let mut client = server.ws("vsn=2.0.0&user_id=42").await;
    client
        .send(json!(["3", "3", "room:lobby", "phx_join", {"user": "ann"}]))
        .await;
    client
        .expect(json!(["3", "3", "room:lobby", "phx_reply", ok(json!({}))]))
        .await;
    client
        .expect(json!([null, null, "room:lobby", "user_entered", {"user": "ann"}]))
        .await;
    client
        .expect(
            json!(["3", null, "room:lobby", "joined", {"status": "connected", "user_id": "42"}]),
        )
        .await;

    // PROTOCOL §5.9: new reply, old phx_close (no you_left), new post-join frames.
    client
        .send(json!(["20", "20", "room:lobby", "phx_join", {"user": "bob"}]))
        .await;
    client
        .expect(json!([
            "20",
            "20",
            "room:lobby",
            "phx_reply",
            ok(json!({}))
        ]))
        .await;
    client
        .expect(json!(["3", "3", "room:lobby", "phx_close", {}]))
        .await;
    client
        .expect(json!([null, null, "room:lobby", "user_entered", {"user": "bob"}]))
        .await;
    client
        .expect(
            json!(["20", null, "room:lobby", "joined", {"status": "connected", "user_id": "42"}]),
        )
        .await;
    client.barrier().await;
    client.echo("20", "room:lobby").await;
    server.http().wait_stats((1, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c34_star_routes_match_by_prefix() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    for topic in ["room:", "room:a:b:c", "room:*"] {
        client.join_room(topic, Value::Null, Value::Null).await;
    }
    client.join("bench:", json!({})).await;
    for (n, topic) in ["room", "rooms:1", "Room:1", " room:1", "xroom:1"]
        .into_iter()
        .enumerate()
    {
        let r = format!("u{n}");
        client.send(json!([r, r, topic, "phx_join", {}])).await;
        client.expect(unmatched(&r, topic)).await;
    }
    client.barrier().await;
}

// --- Messages to channels -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c35_push_with_current_join_ref_reaches_handle_in() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client
        .send(json!([jr, "7", "room:lobby", "echo", {"x": 1}]))
        .await;
    client
        .expect(json!([
            jr,
            "7",
            "room:lobby",
            "phx_reply",
            ok(json!({"x": 1}))
        ]))
        .await;
    let bench = client.join("bench:1", json!({})).await;
    client
        .send(json!([bench, "8", "bench:1", "ping", {"t": 123}]))
        .await;
    client
        .expect(json!([
            bench,
            "8",
            "bench:1",
            "phx_reply",
            ok(json!({"t": 123}))
        ]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c36_push_with_null_join_ref_reaches_handle_in() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client
        .send(json!([null, "10", "room:lobby", "echo", {}]))
        .await;
    // c39: the reply carries the channel's join ref.
    client
        .expect(json!([jr, "10", "room:lobby", "phx_reply", ok(json!({}))]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c37_push_with_stale_join_ref_is_dropped() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client
        .send(json!(["stale", "31", "room:lobby", "new_msg", {"body": "x"}]))
        .await;
    client
        .send(json!(["stale", "32", "room:lobby", "echo", {}]))
        .await;
    client
        .send(json!(["stale", "33", "room:lobby", "boom", {}]))
        .await;
    client.barrier().await;
    client.echo(&jr, "room:lobby").await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c38_push_to_a_topic_without_channel_is_unmatched() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client
        .send(json!(["9", "30", "room:other", "new_msg", {}]))
        .await;
    client.expect(unmatched("30", "room:other")).await;
    client
        .send(json!([null, "31", "bench:1", "ping", {}]))
        .await;
    client.expect(unmatched("31", "bench:1")).await;
    client
        .send(json!(["9", "32", "nope:1", "anything", {}]))
        .await;
    client.expect(unmatched("32", "nope:1")).await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c39_echo_replies_with_any_json_payload_as_received() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    let payloads = [
        json!({"nested": {"list": [1, 2.5, "three", null, true]}, "unicode": "é😀"}),
        json!("a string"),
        json!([1, 2, 3]),
        json!(42),
        json!(null),
        json!({}),
    ];
    for payload in payloads {
        let r = client
            .push(&jr, "room:lobby", "echo", payload.clone())
            .await;
        client
            .expect(json!([jr, r, "room:lobby", "phx_reply", ok(payload)]))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c40_error_and_unknown_events_get_error_replies() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client
        .send(json!([jr, "8", "room:lobby", "error", {}]))
        .await;
    client
        .expect(json!([
            jr,
            "8",
            "room:lobby",
            "phx_reply",
            error("requested")
        ]))
        .await;
    client
        .send(json!([jr, "9", "room:lobby", "no_such_event", {}]))
        .await;
    client
        .expect(json!([
            jr,
            "9",
            "room:lobby",
            "phx_reply",
            error("unknown event")
        ]))
        .await;
    // An error reply does not end the channel.
    client.echo(&jr, "room:lobby").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c41_handler_without_reply_produces_no_frame() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client
        .send(json!([jr, "9", "room:lobby", "noreply", {}]))
        .await;
    // The channel handles messages in order: the echo's reply comes next.
    client.echo(&jr, "room:lobby").await;
    client.barrier().await;
}

// --- Leave / close / error ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c52_leave_is_reply_then_close_then_you_left() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client
        .send(json!([jr, "13", "room:lobby", "phx_leave", {}]))
        .await;
    expect_reply_close_you_left(&mut client, &jr, "13", "room:lobby").await;
    // c57: the topic is free.
    client
        .send(json!([jr, "14", "room:lobby", "new_msg", {}]))
        .await;
    client.expect(unmatched("14", "room:lobby")).await;
    client.barrier().await;
    server.http().wait_stats((1, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c52_bench_leave_is_reply_then_close() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client.join("bench:1", json!({})).await;
    client
        .send(json!([jr, "5", "bench:1", "phx_leave", {}]))
        .await;
    client
        .expect(json!([jr, "5", "bench:1", "phx_reply", ok(json!({}))]))
        .await;
    client
        .expect(json!([jr, jr, "bench:1", "phx_close", {}]))
        .await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c54_leave_with_null_join_ref_leaves() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client
        .send(json!([null, "13", "room:lobby", "phx_leave", {}]))
        .await;
    expect_reply_close_you_left(&mut client, &jr, "13", "room:lobby").await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c55_leave_with_stale_join_ref_is_ignored() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client
        .send(json!(["2", "15", "room:lobby", "phx_leave", {}]))
        .await;
    client.barrier().await;
    // Still joined.
    client.echo(&jr, "room:lobby").await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c56_leave_for_a_topic_without_channel_is_ok() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    client
        .send(json!(["7", "8", "room:nothing", "phx_leave", {}]))
        .await;
    client
        .expect(json!([
            "7",
            "8",
            "room:nothing",
            "phx_reply",
            ok(json!({}))
        ]))
        .await;
    client
        .send(json!([null, "9", "nope:1", "phx_leave", {}]))
        .await;
    client
        .expect(json!([null, "9", "nope:1", "phx_reply", ok(json!({}))]))
        .await;
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c57_after_close_a_new_join_starts_a_fresh_channel() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let old = client
        .join_room("room:lobby", json!("ann"), Value::Null)
        .await;
    client
        .send(json!([old, "l", "room:lobby", "phx_leave", {}]))
        .await;
    expect_reply_close_you_left(&mut client, &old, "l", "room:lobby").await;
    let new = client
        .join_room("room:lobby", json!("bob"), Value::Null)
        .await;
    assert_ne!(old, new);
    client.echo(&new, "room:lobby").await;
    // The old join ref is now stale: dropped.
    client
        .send(json!([old, "s", "room:lobby", "echo", {}]))
        .await;
    client.barrier().await;
    client.echo(&new, "room:lobby").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c58_stop_is_reply_then_close_then_you_left() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client
        .send(json!([jr, "16", "room:lobby", "stop", {}]))
        .await;
    expect_reply_close_you_left(&mut client, &jr, "16", "room:lobby").await;
    client
        .send(json!([jr, "17", "room:lobby", "echo", {}]))
        .await;
    client.expect(unmatched("17", "room:lobby")).await;
    client.barrier().await;
    server.http().wait_stats((1, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c59_crash_is_you_left_then_phx_error_and_no_reply() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let jr = client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client
        .send(json!([jr, "17", "room:lobby", "boom", {}]))
        .await;
    // PROTOCOL §5.8 / c60: terminate's push precedes phx_error.
    client
        .expect(json!([jr, null, "room:lobby", "you_left", {"message": "bye!"}]))
        .await;
    client
        .expect(json!([jr, jr, "room:lobby", "phx_error", {"reason": "channel_crash"}]))
        .await;
    // No reply for "17", ever.
    client.barrier().await;
    client
        .send(json!([jr, "18", "room:lobby", "echo", {}]))
        .await;
    client.expect(unmatched("18", "room:lobby")).await;
    server.http().wait_stats((1, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c61_crash_leaves_the_socket_and_other_channels_working() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let a = client.join_room("room:a", Value::Null, Value::Null).await;
    let b = client.join_room("room:b", Value::Null, Value::Null).await;
    let bench = client.join("bench:1", json!({})).await;
    client.send(json!([a, "boom", "room:a", "boom", {}])).await;
    client
        .expect(json!([a, null, "room:a", "you_left", {"message": "bye!"}]))
        .await;
    client
        .expect(json!([a, a, "room:a", "phx_error", {"reason": "channel_crash"}]))
        .await;
    client.echo(&b, "room:b").await;
    client
        .send(json!([bench, "p", "bench:1", "ping", {}]))
        .await;
    client
        .expect(json!([bench, "p", "bench:1", "phx_reply", ok(json!({}))]))
        .await;
    client.barrier().await;
    server.http().wait_stats((1, 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c62_rejoin_after_crash_succeeds() {
    let server = TestServer::start().await;
    let mut client = server.ws("vsn=2.0.0&user_id=42").await;
    let jr = client
        .join_room("room:lobby", json!("ann"), json!("42"))
        .await;
    client
        .send(json!([jr, "17", "room:lobby", "boom", {}]))
        .await;
    client
        .expect(json!([jr, null, "room:lobby", "you_left", {"message": "bye!"}]))
        .await;
    client
        .expect(json!([jr, jr, "room:lobby", "phx_error", {"reason": "channel_crash"}]))
        .await;
    let again = client
        .join_room("room:lobby", json!("ann"), json!("42"))
        .await;
    client.echo(&again, "room:lobby").await;
    client.barrier().await;
}
