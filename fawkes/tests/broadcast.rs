//! Broadcasts from code outside any channel (`Endpoint::broadcast`): the fast
//! lane, interception with `handle_out` per subscriber, and the payload rule.

mod support;

use fawkes::ChannelError;
use serde_json::{Value, json};
use support::{Frame, observer, serve_probe};

#[tokio::test]
async fn non_intercepted_broadcast_reaches_every_subscriber_unchanged() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut elsewhere = server.client().await;
    a.join("probe:room", json!({"name": "a"})).await;
    b.join("probe:room", json!({"name": "b"})).await;
    elsewhere.join("probe:other", json!({})).await;

    server
        .endpoint
        .broadcast("probe:room", "news", json!({"n": 1}))
        .unwrap();
    server
        .endpoint
        .local_broadcast("probe:room", "news", json!({"n": 2}))
        .unwrap();
    for client in [&mut a, &mut b] {
        // Fast lane: join_ref null, no channel code ran (no `to` tag).
        assert_eq!(
            client.recv().await,
            json!([null, null, "probe:room", "news", {"n": 1}])
        );
        assert_eq!(
            client.recv().await,
            json!([null, null, "probe:room", "news", {"n": 2}])
        );
        client.barrier().await;
    }
    elsewhere.barrier().await;
}

#[tokio::test]
async fn binary_broadcast_is_a_kind_2_frame() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    client.join("probe:room", json!({})).await;
    server
        .endpoint
        .broadcast("probe:room", "blob", vec![0u8, 1, 255])
        .unwrap();
    let mut want = vec![2u8, 10, 4];
    want.extend_from_slice(b"probe:roomblob");
    want.extend_from_slice(&[0, 1, 255]);
    assert_eq!(client.recv_frame().await, Frame::Binary(want));
}

#[tokio::test]
async fn large_frames_arrive_whole_across_fragments() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    client.join("probe:room", json!({})).await;
    // 210 KB of 3-byte characters: many fragments, some splitting one.
    let text = "€".repeat(70_000);
    server
        .endpoint
        .broadcast("probe:room", "big", json!({"text": text}))
        .unwrap();
    assert_eq!(
        client.recv().await,
        json!([null, null, "probe:room", "big", {"text": text}])
    );
    let blob: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    server
        .endpoint
        .broadcast("probe:room", "blob", blob.clone())
        .unwrap();
    let mut want = vec![2u8, 10, 4];
    want.extend_from_slice(b"probe:roomblob");
    want.extend_from_slice(&blob);
    assert_eq!(client.recv_frame().await, Frame::Binary(want));
    // Small frames still go out whole after a large one.
    server
        .endpoint
        .broadcast("probe:room", "small", json!({}))
        .unwrap();
    assert_eq!(
        client.recv().await,
        json!([null, null, "probe:room", "small", {}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_broadcast_runs_handle_out_for_each_subscriber() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    let mut carol = server.client().await;
    let alice_ref = alice.join("probe:room", json!({"name": "alice"})).await;
    let bob_ref = bob.join("probe:room", json!({"name": "bob"})).await;
    let carol_ref = carol
        .join("probe:room", json!({"name": "carol", "mute": true}))
        .await;

    server
        .endpoint
        .broadcast("probe:room", "shout", json!({"text": "hi"}))
        .unwrap();
    server
        .endpoint
        .broadcast("probe:room", "whisper", json!({"text": "psst"}))
        .unwrap();

    for (client, join_ref, name) in [
        (&mut alice, &alice_ref, "alice"),
        (&mut bob, &bob_ref, "bob"),
    ] {
        // Pushed by each subscriber's own channel: its join ref, its variant.
        assert_eq!(
            client.recv().await,
            json!([join_ref, null, "probe:room", "shout", {"text": "hi", "to": name}])
        );
        assert_eq!(
            client.recv().await,
            json!([join_ref, null, "probe:room", "whisper", {"text": "psst", "to": name}])
        );
    }
    // carol's handle_out filtered `shout`: the `whisper` broadcast after it
    // arrives first (one channel handles its broadcasts in order).
    assert_eq!(
        carol.recv().await,
        json!([carol_ref, null, "probe:room", "whisper", {"text": "psst", "to": "carol"}])
    );
    for client in [&mut alice, &mut bob, &mut carol] {
        client.barrier().await;
    }
}

#[tokio::test]
async fn broadcast_of_a_non_object_payload_is_an_error_and_sends_nothing() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    client.join("probe:room", json!({})).await;
    let bad: [Value; 5] = [json!([1]), json!("s"), json!(1), json!(null), json!(true)];
    for payload in bad {
        for event in ["news", "shout"] {
            assert_eq!(
                server
                    .endpoint
                    .broadcast("probe:room", event, payload.clone()),
                Err(ChannelError::InvalidPayload),
                "{event} {payload}"
            );
            assert_eq!(
                server
                    .endpoint
                    .local_broadcast("probe:room", event, payload.clone()),
                Err(ChannelError::InvalidPayload),
                "{event} {payload}"
            );
            assert_eq!(
                server
                    .endpoint
                    .pubsub()
                    .broadcast("probe:room", event, payload.clone()),
                Err(ChannelError::InvalidPayload),
                "{event} {payload}"
            );
        }
    }
    client.barrier().await;
    assert_eq!(
        server.endpoint.broadcast("probe:nobody", "news", json!({})),
        Ok(()),
        "a topic without subscribers is not an error"
    );
}
