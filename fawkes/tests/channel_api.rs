//! What a channel's `Context` lets it do beyond answering: messages to
//! itself (`send_info`, `send_after`, `ChannelHandle`), replies given later
//! through a `ReplyRef`, and the payload rule for pushes.

mod support;

use fawkes::{ChannelError, Reply};
use serde_json::json;
use support::{Note, Seen, observer, ok, serve_probe};

#[tokio::test]
async fn send_info_during_join_pushes_after_the_join_reply() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    // `join` asserts its reply is the first frame.
    let join_ref = client
        .join(
            "probe:a",
            json!({"info": {"event": "welcome", "payload": {"n": 1}}}),
        )
        .await;
    assert_eq!(
        client.recv().await,
        json!([join_ref, null, "probe:a", "welcome", {"n": 1}])
    );
    client.barrier().await;
}

#[tokio::test]
async fn send_info_during_handle_in_pushes_after_the_reply() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let join_ref = client.join("probe:a", json!({})).await;
    let reply = client
        .call(
            &join_ref,
            "probe:a",
            "info",
            json!({"event": "later_push", "payload": {"k": "v"}}),
        )
        .await;
    assert_eq!(reply, ok(json!({})));
    assert_eq!(
        client.recv().await,
        json!([join_ref, null, "probe:a", "later_push", {"k": "v"}])
    );
    client.barrier().await;
}

#[tokio::test]
async fn send_after_pushes_when_the_timer_fires() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let join_ref = client.join("probe:a", json!({})).await;
    let reply = client
        .call(
            &join_ref,
            "probe:a",
            "after",
            json!({"ms": 30, "event": "tick", "payload": {"name": "timer"}}),
        )
        .await;
    assert_eq!(reply, ok(json!({})));
    assert_eq!(
        client.recv().await,
        json!([join_ref, null, "probe:a", "tick", {"name": "timer"}])
    );
}

#[tokio::test]
async fn cancelled_timer_never_fires() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let join_ref = client.join("probe:a", json!({})).await;
    // The witness timer is due well after the cancelled one would have been:
    // when it arrives first and nothing follows, the cancelled one is dead.
    let reply = client
        .call(
            &join_ref,
            "probe:a",
            "cancelled_after",
            json!({"ms": 20, "witness_ms": 250}),
        )
        .await;
    assert_eq!(reply, ok(json!({})));
    assert_eq!(
        client.recv().await,
        json!([join_ref, null, "probe:a", "tick", {"name": "witness"}])
    );
    client.barrier().await;
}

#[tokio::test]
async fn timers_die_with_their_channel() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let join_ref = client.join("probe:a", json!({})).await;
    let reply = client
        .call(
            &join_ref,
            "probe:a",
            "after",
            json!({"ms": 100, "event": "tick", "payload": {"name": "orphan"}}),
        )
        .await;
    assert_eq!(reply, ok(json!({})));
    let r = client
        .push(Some(&join_ref), "probe:a", "phx_leave", json!({}))
        .await;
    assert_eq!(
        client.recv().await,
        json!([join_ref, r, "probe:a", "phx_reply", ok(json!({}))])
    );
    assert_eq!(
        client.recv().await,
        json!([join_ref, join_ref, "probe:a", "phx_close", {}])
    );
    seen.terminated().await;
    // Rejoin the same topic; a witness timer on the new instance, due after
    // the old one, proves the old timer did not reach the new channel.
    let join_ref = client.join("probe:a", json!({})).await;
    let reply = client
        .call(
            &join_ref,
            "probe:a",
            "after",
            json!({"ms": 300, "event": "tick", "payload": {"name": "witness"}}),
        )
        .await;
    assert_eq!(reply, ok(json!({})));
    assert_eq!(
        client.recv().await,
        json!([join_ref, null, "probe:a", "tick", {"name": "witness"}])
    );
    client.barrier().await;
}

#[tokio::test]
async fn channel_handle_lets_outside_code_message_the_channel() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let join_ref = client.join("probe:a", json!({})).await;
    let (topic, handle) = seen.joined().await;
    assert_eq!((topic.as_str(), handle.topic()), ("probe:a", "probe:a"));

    let outside = handle.clone();
    tokio::spawn(async move {
        outside
            .send(Note("from_outside".into(), json!({"hello": "world"})))
            .await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        client.recv().await,
        json!([join_ref, null, "probe:a", "from_outside", {"hello": "world"}])
    );

    // Once the channel has ended, the handle reports it.
    let r = client
        .push(Some(&join_ref), "probe:a", "phx_leave", json!({}))
        .await;
    assert_eq!(
        client.recv().await,
        json!([join_ref, r, "probe:a", "phx_reply", ok(json!({}))])
    );
    seen.terminated().await;
    server.wait_stats(1, 0).await;
    assert_eq!(
        handle.send(Note("too_late".into(), json!({}))).await,
        Err(ChannelError::Closed)
    );
    assert_eq!(
        client.recv().await,
        json!([join_ref, join_ref, "probe:a", "phx_close", {}])
    );
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_ref_answers_later_from_another_task() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let join_ref = client.join("probe:a", json!({})).await;
    let later = client
        .push(Some(&join_ref), "probe:a", "later", json!({}))
        .await;
    let reply_ref = seen
        .wait_for("later", |s| match s {
            Seen::Later(r) => Some(r),
            _ => None,
        })
        .await;
    // Nothing answered the message yet, and the channel keeps serving.
    client.barrier().await;
    let reply = client
        .call(&join_ref, "probe:a", "echo", json!({"meanwhile": true}))
        .await;
    assert_eq!(reply, ok(json!({"meanwhile": true})));

    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        wait.await.unwrap();
        reply_ref.reply(Reply::ok(json!({"answer": 42})));
        // PROTOCOL §4.4: a kept reference may answer several times.
        reply_ref.reply(Reply::error(json!({"again": true})));
    });
    go.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(
        client.recv().await,
        json!([
            join_ref,
            later,
            "probe:a",
            "phx_reply",
            ok(json!({"answer": 42}))
        ])
    );
    assert_eq!(
        client.recv().await,
        json!([join_ref, later, "probe:a", "phx_reply", {"status": "error", "response": {"again": true}}])
    );
    client.barrier().await;
}

#[tokio::test]
async fn push_with_a_non_object_payload_is_dropped() {
    let (obs, _seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let join_ref = client.join("probe:a", json!({})).await;
    for bad in [json!([1, 2]), json!("text"), json!(null), json!(3)] {
        // Pushes made by a handler precede its reply: the reply coming next
        // shows the push was dropped.
        let reply = client
            .call(
                &join_ref,
                "probe:a",
                "push",
                json!({"event": "bad", "payload": bad}),
            )
            .await;
        assert_eq!(reply, ok(json!({})));
    }
    client.barrier().await;
    // An object goes through, before the reply.
    let r = client
        .push(
            Some(&join_ref),
            "probe:a",
            "push",
            json!({"event": "good", "payload": {"a": 1}}),
        )
        .await;
    assert_eq!(
        client.recv().await,
        json!([join_ref, null, "probe:a", "good", {"a": 1}])
    );
    assert_eq!(
        client.recv().await,
        json!([join_ref, r, "probe:a", "phx_reply", ok(json!({}))])
    );
}
