//! Per-socket limits set on the socket builder, and the policy each states
//! for when it is reached.

mod support;

use std::time::Duration;

use fawkes::{StopReason, WebSocketConfig};
use serde_json::json;
use support::{observer, ok, serve_probe};

#[tokio::test]
async fn max_channels_refuses_the_join_beyond_the_limit() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s.max_channels(2)).await;
    let mut client = server.client().await;
    let a = client.join("probe:a", json!({})).await;
    let b = client.join("probe:b", json!({})).await;

    let (_, refused) = client.join_raw("probe:c", json!({})).await;
    assert_eq!(
        refused,
        json!({"status": "error", "response": {"reason": "too many channels joined"}})
    );
    server.wait_stats(1, 2).await;
    // The refused topic has no channel; the others still answer.
    let r = client.push(None, "probe:c", "echo", json!({})).await;
    assert_eq!(
        client.recv().await,
        json!([null, r, "probe:c", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}])
    );
    for (join_ref, topic) in [(&a, "probe:a"), (&b, "probe:b")] {
        let reply = client.call(join_ref, topic, "echo", json!({})).await;
        assert_eq!(reply, ok(json!({})));
    }

    // Leaving frees a slot.
    let r = client
        .push(Some(&a), "probe:a", "phx_leave", json!({}))
        .await;
    assert_eq!(
        client.recv().await,
        json!([a, r, "probe:a", "phx_reply", ok(json!({}))])
    );
    assert_eq!(
        client.recv().await,
        json!([a, a, "probe:a", "phx_close", {}])
    );
    client.join("probe:c", json!({})).await;
    server.wait_stats(1, 2).await;
}

#[tokio::test]
async fn frame_over_max_frame_size_closes_with_1009_and_spares_other_clients() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| {
        s.websocket(WebSocketConfig::default().max_frame_size(1024))
    })
    .await;
    let mut offender = server.client().await;
    let mut bystander = server.client().await;
    let o = offender.join("probe:a", json!({})).await;
    let b = bystander.join("probe:a", json!({})).await;

    // Under the limit is fine.
    let pad = "x".repeat(900);
    let reply = bystander
        .call(&b, "probe:a", "echo", json!({"pad": pad}))
        .await;
    assert_eq!(reply, ok(json!({"pad": pad})));

    let pad = "x".repeat(2048);
    offender
        .push(Some(&o), "probe:a", "echo", json!({"pad": pad}))
        .await;
    assert_eq!(offender.expect_close().await, Some(1009));
    assert_eq!(
        seen.terminated().await,
        ("probe:a".to_owned(), StopReason::Shutdown("closed".into()))
    );
    server.wait_stats(1, 1).await;
    bystander.barrier().await;
    let reply = bystander
        .call(&b, "probe:a", "echo", json!({"still": 1}))
        .await;
    assert_eq!(reply, ok(json!({"still": 1})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_silent_clients_with_1002_only() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| {
        s.websocket(WebSocketConfig::default().idle_timeout(Duration::from_millis(200)))
    })
    .await;
    let mut silent = server.client().await;
    silent.join("probe:a", json!({})).await;
    let mut chatty = server.client().await;

    let silent_task = tokio::spawn(async move { silent.expect_close().await });
    // Heartbeats at a quarter of the timeout keep a connection open for
    // several timeouts in a row.
    let mut every = tokio::time::interval(Duration::from_millis(50));
    for _ in 0..12 {
        every.tick().await;
        chatty.barrier().await;
    }
    assert_eq!(silent_task.await.unwrap(), Some(1002));
    assert_eq!(
        seen.terminated().await,
        ("probe:a".to_owned(), StopReason::Shutdown("closed".into()))
    );
    chatty.barrier().await;
    server.wait_stats(1, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_dropped_and_the_topic_keeps_flowing() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s.outbox_limits(8, 64 * 1024)).await;
    let mut slow = server.client().await;
    let mut good = server.client().await;
    slow.join("probe:feed", json!({})).await;
    good.join("probe:feed", json!({})).await;
    server.wait_stats(2, 2).await;

    // `slow` never reads: once the kernel buffers are full its outbox grows
    // past 8 frames and the server must drop it. `good` reads every message
    // before the next is sent, so its outbox never holds more than one.
    let blob = "y".repeat(16 * 1024);
    let mut sent = 0;
    while server.endpoint.stats().sockets == 2 {
        assert!(
            sent < 4000,
            "slow reader still connected after {sent} broadcasts"
        );
        sent += 1;
        server
            .endpoint
            .broadcast("probe:feed", "data", json!({"i": sent, "blob": blob}))
            .unwrap();
        let got = good.recv().await;
        assert_eq!(got[4]["i"], sent, "good client lost a message");
    }
    server.wait_stats(1, 1).await;
    assert_eq!(
        seen.terminated().await,
        (
            "probe:feed".to_owned(),
            StopReason::Shutdown("closed".into())
        )
    );
    assert_eq!(server.endpoint.pubsub().subscriber_count("probe:feed"), 1);

    // The documented close code reaches the slow client once it reads.
    assert_eq!(slow.drain_until_close().await, Some(1013));

    server
        .endpoint
        .broadcast("probe:feed", "after", json!({"n": 1}))
        .unwrap();
    assert_eq!(
        good.recv().await,
        json!([null, null, "probe:feed", "after", {"n": 1}])
    );
    good.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_broadcasts_overflowing_a_channel_mailbox_close_with_1013() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s.channel_mailbox(2)).await;
    let mut stuck = server.client().await;
    let mut bystander = server.client().await;
    let s = stuck.join("probe:room", json!({"name": "stuck"})).await;
    let b = bystander.join("probe:room", json!({"name": "by"})).await;

    stuck.push(Some(&s), "probe:room", "block", json!({})).await;
    let release = seen.blocked().await;
    // Two fit in the blocked channel's mailbox, the third overflows it. The
    // bystander's channel drains each before the next is sent.
    for i in 1..=3 {
        server
            .endpoint
            .broadcast("probe:room", "shout", json!({"i": i}))
            .unwrap();
        assert_eq!(
            bystander.recv().await,
            json!([b, null, "probe:room", "shout", {"i": i, "to": "by"}])
        );
    }
    assert_eq!(stuck.expect_close().await, Some(1013));
    release.send(()).unwrap();
    assert_eq!(
        seen.terminated().await,
        (
            "probe:room".to_owned(),
            StopReason::Shutdown("closed".into())
        )
    );
    server.wait_stats(1, 1).await;
    bystander.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pushes_beyond_a_full_channel_mailbox_wait_and_are_all_handled() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s.channel_mailbox(1)).await;
    let mut client = server.client().await;
    let j = client.join("probe:a", json!({})).await;

    let blocked = client.push(Some(&j), "probe:a", "block", json!({})).await;
    let release = seen.blocked().await;
    let mut refs = Vec::new();
    for i in 0..5 {
        refs.push(
            client
                .push(Some(&j), "probe:a", "echo", json!({"i": i}))
                .await,
        );
    }
    release.send(()).unwrap();
    assert_eq!(
        client.recv().await,
        json!([j, blocked, "probe:a", "phx_reply", ok(json!({}))])
    );
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(
            client.recv().await,
            json!([j, r, "probe:a", "phx_reply", ok(json!({"i": i}))])
        );
    }
    client.barrier().await;
    server.wait_stats(1, 1).await;
}
