//! PROTOCOL §4.12 and §1.7 (checklist 23–25): heartbeat replies and the
//! receive-idle timeout.

mod support;

use std::time::Duration;

use fawkes_conformance::Options;
use serde_json::{Value, json};
use support::{TestServer, options};

/// The idle timeout the liveness tests start the server with.
const IDLE: Duration = Duration::from_millis(500);

/// A fifth of the idle timeout: the pace of a client that keeps the socket alive.
const PACE: Duration = Duration::from_millis(100);

fn short_idle() -> Options {
    Options {
        idle_timeout: IDLE,
        ..options()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c23_heartbeat_is_answered_without_channels() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    client
        .send(json!([null, "7", "phoenix", "heartbeat", {}]))
        .await;
    client
        .expect(json!([null, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c23_heartbeat_is_answered_with_channels_joined() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    client
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    client.join("bench:1", json!({})).await;
    client
        .send(json!([null, "h1", "phoenix", "heartbeat", {}]))
        .await;
    client
        .expect(json!([null, "h1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c23_v1_heartbeat_is_answered() {
    let server = TestServer::start().await;
    let mut client = server.ws("vsn=1.0.0").await;
    client
        .send(json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "7"}))
        .await;
    client
        .expect(json!({
            "topic": "phoenix",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {}},
            "ref": "7"
        }))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c24_heartbeat_reply_join_ref_is_null() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    let join_ref = client.join("bench:1", json!({})).await;
    client
        .send(json!([join_ref, "8", "phoenix", "heartbeat", {}]))
        .await;
    client
        .expect(json!([null, "8", "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
    client
        .send(json!(["99", "9", "phoenix", "heartbeat", {}]))
        .await;
    client
        .expect(json!([null, "9", "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c38_other_events_on_phoenix_topic_are_unmatched() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    client.send(json!([null, "1", "phoenix", "ping", {}])).await;
    client
        .expect(json!([
            null,
            "1",
            "phoenix",
            "phx_reply",
            {"status": "error", "response": {"reason": "unmatched topic"}}
        ]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c25_silent_socket_is_closed_with_1002() {
    let server = TestServer::start_with(short_idle()).await;
    let started = tokio::time::Instant::now();
    let mut silent = server.ws_v2().await;
    let mut joined = server.ws_v2().await;
    joined
        .join_room("room:lobby", Value::Null, Value::Null)
        .await;
    assert_eq!(silent.expect_close().await, 1002, "idle timeout close code");
    assert_eq!(
        joined.expect_close().await,
        1002,
        "channels do not keep a socket alive"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= IDLE,
        "closed after {elapsed:?}, before the idle timeout {IDLE:?}"
    );
    server.http().wait_stats((0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c25_heartbeating_socket_stays_open() {
    let server = TestServer::start_with(short_idle()).await;
    let mut client = server.ws_v2().await;
    // Three idle timeouts of heartbeats, one every fifth of the timeout.
    for n in 0..15 {
        let r = format!("hb{n}");
        client
            .send(json!([null, r, "phoenix", "heartbeat", {}]))
            .await;
        client
            .expect(json!([null, r, "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
            .await;
        client.expect_silence(PACE).await;
    }
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c25_any_received_frame_resets_the_idle_timer() {
    let server = TestServer::start_with(short_idle()).await;
    let mut client = server.ws_v2().await;
    let join_ref = client.join("bench:1", json!({})).await;
    for n in 0..15 {
        client
            .send(json!([join_ref, format!("p{n}"), "bench:1", "ping", {"n": n}]))
            .await;
        client
            .expect(json!([
                join_ref,
                format!("p{n}"),
                "bench:1",
                "phx_reply",
                {"status": "ok", "response": {"n": n}}
            ]))
            .await;
        client.expect_silence(PACE).await;
    }
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_are_answered_at_once() {
    let server = TestServer::start().await;
    let mut client = server.ws_v2().await;
    client
        .try_send(tokio_tungstenite::tungstenite::Message::Ping(
            b"are you there".to_vec().into(),
        ))
        .await
        .unwrap();
    client.expect_pong(b"are you there").await;
    client.barrier().await;
}
