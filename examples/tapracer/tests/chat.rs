//! `chat:*`: the talk's ChatChannel with names from the socket.

mod support;

use fawkes_client::JoinError;
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_secret_room_is_refused() {
    let server = TestServer::start(quick()).await;
    let ann = server.connect(Some("ann"));
    let secret = ann.channel("chat:secret", json!({}));
    match within("join", secret.join()).await {
        Err(JoinError::Refused(p)) => {
            assert_eq!(json_of(&p), json!({"reason": "You don't have permission!"}));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let _ = within("leave", secret.leave()).await;
    server.stop().await;
}

#[tokio::test]
async fn messages_carry_the_sockets_name() {
    let server = TestServer::start(quick()).await;
    let ann = server.connect(Some("ann"));
    let viewer = server.connect(None);
    let room = ann.channel("chat:lobby", json!({}));
    within("ann joins", room.join()).await.unwrap();
    let watch = viewer.channel("chat:lobby", json!({}));
    let mut msgs = watch.on("new_msg");
    within("viewer joins", watch.join()).await.unwrap();

    let ok = within(
        "send",
        room.push("new_msg", json!({"body": "  hi all  ", "user": "mallory"})),
    )
    .await;
    assert_eq!(ok.map(|p| json_of(&p)), Ok(json!({})));
    let msg = next_matching(&mut msgs, "the message", |_, _| true).await;
    assert_eq!(msg["user"], "ann");
    assert_eq!(msg["body"], "hi all");
    assert!(msg["at"].as_u64().unwrap() > 1_700_000_000_000);

    // A body of 280 characters is fine, 281 is not.
    let max = "é".repeat(280);
    within("max", room.push("new_msg", json!({"body": max})))
        .await
        .unwrap();
    let got = within(
        "too long",
        room.push("new_msg", json!({"body": format!("{max}x")})),
    )
    .await;
    assert_eq!(reason(got), "message too long");
    for empty in ["", "   \n\t "] {
        let got = within("empty", room.push("new_msg", json!({"body": empty}))).await;
        assert_eq!(reason(got), "empty message");
    }
    for bad in [json!({}), json!({"body": 42}), json!({"body": ["hi"]})] {
        let got = within("bad", room.push("new_msg", bad)).await;
        assert_eq!(reason(got), "bad payload");
    }
    let got = within("unknown", room.push("shout", json!({"body": "hi"}))).await;
    assert_eq!(reason(got), "unknown event");

    // The viewer reads but does not send.
    let got = within(
        "viewer sends",
        watch.push("new_msg", json!({"body": "hello"})),
    )
    .await;
    assert_eq!(reason(got), "pick a name first");
    // It got the 280-character message and nothing refused.
    let next = next_matching(&mut msgs, "the long message", |_, _| true).await;
    assert_eq!(next["body"].as_str().unwrap().chars().count(), 280);
    server.stop().await;
}
