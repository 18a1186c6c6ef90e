//! When a channel ends, its topic and its slot are free as soon as the client
//! has seen `phx_close` (PROTOCOL §4.5: "the socket forgets the topic at step
//! 2"; §4.10: "leaving a channel frees a slot"), however long the channel's
//! `terminate` takes.

mod support;

use fawkes::StopReason;
use serde_json::json;
use support::{Client, Frame, TIMEOUT, observer, ok, serve_probe};

/// Leaves `topic` and expects the reply and `phx_close`.
async fn leave(client: &mut Client, join_ref: &str, topic: &str) {
    let r = client
        .push(Some(join_ref), topic, "phx_leave", json!({}))
        .await;
    assert_eq!(
        client.recv().await,
        json!([join_ref, r, topic, "phx_reply", ok(json!({}))])
    );
    assert_eq!(
        client.recv().await,
        json!([join_ref, join_ref, topic, "phx_close", {}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_after_phx_close_is_a_fresh_join_while_terminate_still_runs() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let old = client
        .join("probe:a", json!({"block_terminate": true}))
        .await;
    leave(&mut client, &old, "probe:a").await;
    // The probe reports its terminate, then blocks in it.
    assert_eq!(
        seen.terminated().await,
        ("probe:a".to_owned(), StopReason::Shutdown("left".into()))
    );
    let release = seen.blocked().await;

    let new = client.join("probe:a", json!({})).await;
    // A fresh join: no duplicate-join `phx_close` for the old join ref.
    client.barrier().await;
    release.send(()).unwrap();
    server.wait_stats(1, 1).await;
    let reply = client.call(&new, "probe:a", "echo", json!({})).await;
    assert_eq!(reply, ok(json!({})));
    client.barrier().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_frees_its_slot_at_phx_close_while_terminate_still_runs() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s.max_channels(1)).await;
    let mut client = server.client().await;
    let a = client
        .join("probe:a", json!({"block_terminate": true}))
        .await;
    leave(&mut client, &a, "probe:a").await;
    let release = seen.blocked().await;

    let (_, reply) = client.join_raw("probe:b", json!({})).await;
    release.send(()).unwrap();
    assert_eq!(
        reply,
        ok(json!({})),
        "the left channel still holds its slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_channel_frees_its_topic_at_phx_close_while_terminate_still_runs() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let old = client
        .join("probe:a", json!({"block_terminate": true}))
        .await;
    let r = client.push(Some(&old), "probe:a", "stop", json!({})).await;
    assert_eq!(
        client.recv().await,
        json!([old, r, "probe:a", "phx_reply", ok(json!({}))])
    );
    assert_eq!(
        client.recv().await,
        json!([old, old, "probe:a", "phx_close", {}])
    );
    let release = seen.blocked().await;

    // A message for the topic is now "unmatched topic", as for any topic
    // without a channel (PROTOCOL §4.7: after phx_close the topic is free).
    let r = client.push(None, "probe:a", "echo", json!({})).await;
    let early = client.recv_within(TIMEOUT).await;
    release.send(()).unwrap();
    let late = match early {
        None => client.recv_within(TIMEOUT).await,
        Some(_) => None,
    };
    let unmatched = json!([null, r, "probe:a", "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}}]);
    assert_eq!(
        early,
        Some(Frame::Json(unmatched)),
        "no answer while terminate ran; after it returned: {late:?}"
    );
}

#[tokio::test]
async fn duplicate_join_skips_the_old_terminate_and_counts_one_channel() {
    let (obs, mut seen) = observer();
    let server = serve_probe(&obs, |s| s).await;
    let mut client = server.client().await;
    let old = client.join("probe:a", json!({})).await;
    let new = client.next_ref();
    client
        .send(json!([new, new, "probe:a", "phx_join", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        json!([new, new, "probe:a", "phx_reply", ok(json!({}))])
    );
    assert_eq!(
        client.recv().await,
        json!([old, old, "probe:a", "phx_close", {}])
    );
    leave(&mut client, &new, "probe:a").await;
    // Zero channels: both instances are gone, and only the new one ran
    // terminate.
    server.wait_stats(1, 0).await;
    let terminated: Vec<_> = seen
        .pending()
        .into_iter()
        .filter_map(|s| match s {
            support::Seen::Terminated(topic, reason) => Some((topic, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        terminated,
        vec![("probe:a".to_owned(), StopReason::Shutdown("left".into()))]
    );
}
