//! Panics in channel callbacks stay inside their channel (PROTOCOL §4.1,
//! §4.7): `phx_error`, `terminate` with the error, and the socket and its
//! other channels live on.

mod support;

use fawkes::StopReason;
use serde_json::json;
use support::{Client, Note, observer, ok, serve_probe};

fn phx_error(join_ref: &str, topic: &str) -> serde_json::Value {
    json!([join_ref, join_ref, topic, "phx_error", {"reason": "channel_crash"}])
}

/// The socket still answers and its channel on `topic` still works.
async fn still_serves(client: &mut Client, join_ref: &str, topic: &str) {
    client.barrier().await;
    let reply = client
        .call(join_ref, topic, "echo", json!({"alive": true}))
        .await;
    assert_eq!(reply, ok(json!({"alive": true})));
}

#[tokio::test]
async fn panic_in_handle_in_is_phx_error_and_terminate_sees_the_error() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let a = client.join("probe:a", json!({})).await;
    let b = client.join("probe:b", json!({})).await;

    client.push(Some(&a), "probe:a", "panic", json!({})).await;
    assert_eq!(client.recv().await, phx_error(&a, "probe:a"));
    assert_eq!(
        seen.terminated().await,
        (
            "probe:a".to_owned(),
            StopReason::Error("probe panics in handle_in".into())
        )
    );
    still_serves(&mut client, &b, "probe:b").await;
    server.wait_stats(1, 1).await;
    // The topic is free again.
    let a = client.join("probe:a", json!({})).await;
    still_serves(&mut client, &a, "probe:a").await;
}

#[tokio::test]
async fn panic_in_terminate_after_a_stop_takes_nothing_down() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let a = client
        .join("probe:a", json!({"panic_terminate": true}))
        .await;
    let b = client.join("probe:b", json!({})).await;

    let r = client.push(Some(&a), "probe:a", "stop", json!({})).await;
    assert_eq!(
        client.recv().await,
        json!([a, r, "probe:a", "phx_reply", ok(json!({}))])
    );
    assert_eq!(
        client.recv().await,
        json!([a, a, "probe:a", "phx_close", {}])
    );
    assert_eq!(
        seen.terminated().await,
        ("probe:a".to_owned(), StopReason::Normal)
    );
    server.wait_stats(1, 1).await;
    still_serves(&mut client, &b, "probe:b").await;
    let a = client.join("probe:a", json!({})).await;
    still_serves(&mut client, &a, "probe:a").await;
}

#[tokio::test]
async fn panic_in_terminate_after_a_crash_still_sends_phx_error() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let a = client
        .join("probe:a", json!({"panic_terminate": true}))
        .await;
    let b = client.join("probe:b", json!({})).await;

    client.push(Some(&a), "probe:a", "panic", json!({})).await;
    assert_eq!(client.recv().await, phx_error(&a, "probe:a"));
    assert!(matches!(seen.terminated().await.1, StopReason::Error(_)));
    server.wait_stats(1, 1).await;
    still_serves(&mut client, &b, "probe:b").await;
}

#[tokio::test]
async fn panic_in_terminate_on_socket_close_takes_nothing_down() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut doomed = server.client().await;
    doomed
        .join("probe:a", json!({"panic_terminate": true}))
        .await;
    let mut other = server.client().await;
    let b = other.join("probe:a", json!({})).await;

    doomed.close().await;
    assert_eq!(
        seen.terminated().await,
        ("probe:a".to_owned(), StopReason::Shutdown("closed".into()))
    );
    server.wait_stats(1, 1).await;
    still_serves(&mut other, &b, "probe:a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_handle_out_crashes_only_that_subscribers_channel() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    let alice_room = alice
        .join("probe:room", json!({"name": "alice", "panic_out": true}))
        .await;
    let alice_side = alice.join("probe:side", json!({})).await;
    let bob_room = bob.join("probe:room", json!({"name": "bob"})).await;

    server
        .endpoint
        .broadcast("probe:room", "shout", json!({"text": "hi"}))
        .unwrap();

    assert_eq!(
        bob.recv().await,
        json!([bob_room, null, "probe:room", "shout", {"text": "hi", "to": "bob"}])
    );
    assert_eq!(alice.recv().await, phx_error(&alice_room, "probe:room"));
    assert_eq!(
        seen.terminated().await,
        (
            "probe:room".to_owned(),
            StopReason::Error("probe panics in handle_out".into())
        )
    );
    server.wait_stats(2, 2).await;
    assert_eq!(server.endpoint.pubsub().subscriber_count("probe:room"), 1);
    still_serves(&mut alice, &alice_side, "probe:side").await;
    still_serves(&mut bob, &bob_room, "probe:room").await;

    // Later broadcasts reach the survivor only; the crashed one can rejoin.
    server
        .endpoint
        .broadcast("probe:room", "news", json!({}))
        .unwrap();
    assert_eq!(
        bob.recv().await,
        json!([null, null, "probe:room", "news", {}])
    );
    alice.barrier().await;
    let alice_room = alice.join("probe:room", json!({"name": "alice"})).await;
    still_serves(&mut alice, &alice_room, "probe:room").await;
}

#[tokio::test]
async fn panic_in_handle_info_is_phx_error() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let a = client.join("probe:a", json!({})).await;
    let (_, handle) = seen.joined().await;
    let b = client.join("probe:b", json!({})).await;

    handle.send(Note("panic".into(), json!({}))).await.unwrap();
    assert_eq!(client.recv().await, phx_error(&a, "probe:a"));
    assert_eq!(
        seen.terminated().await,
        (
            "probe:a".to_owned(),
            StopReason::Error("probe panics in handle_info".into())
        )
    );
    still_serves(&mut client, &b, "probe:b").await;
}
