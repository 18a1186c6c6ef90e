//! Garbage from clients: unknown events, wrong types, binary payloads,
//! oversized frames and junk HTTP bodies get errors or closed sockets,
//! never a broken server.

mod support;

use fawkes_client::{JoinError, Payload};
use serde_json::json;
use support::*;

#[tokio::test]
async fn garbage_payloads_do_not_hurt() {
    let server = TestServer::start(quick()).await;
    let mut ann = Racer::join(&server, "ann").await;
    let mut viewer = Viewer::join(&server).await;
    let chat = ann.socket.channel("chat:lobby", json!({}));
    within("chat join", chat.join()).await.unwrap();

    for event in ["phx_unknown", "", "TAP", "start!", &"x".repeat(1000)] {
        let got = within("unknown on play", ann.play.push(event, json!({}))).await;
        assert_eq!(reason(got), "unknown event", "{event}");
    }
    let got = within("tap on console", viewer.console.push("tap", json!({}))).await;
    assert_eq!(reason(got), "unknown event");
    let got = within(
        "binary chat",
        chat.push("new_msg", Payload::Binary(vec![0, 159, 146, 150].into())),
    )
    .await;
    assert_eq!(reason(got), "bad payload");
    // Odd payloads on tap and start: taps are still not answered, start
    // still follows the rules.
    ann.tap(3);
    drop(ann.play.push_with_timeout(
        "tap",
        Payload::Binary(vec![1; 64].into()),
        std::time::Duration::from_millis(100),
    ));
    let got = within(
        "odd start",
        ann.play
            .push("start", json!({"force": true, "race": "all"})),
    )
    .await;
    assert!(got.is_ok(), "{got:?}");
    race_in(&mut ann.races, "racing").await;

    // A join on a topic nobody serves is refused, not a crash.
    let nowhere = ann.socket.channel("nowhere", json!({}));
    assert!(matches!(
        within("join", nowhere.join()).await,
        Err(JoinError::Refused(_))
    ));
    let _ = within("leave", nowhere.leave()).await;

    // An oversized frame closes that socket; the client reconnects and
    // rejoins, and the server serves everyone else.
    let huge = "x".repeat(tapracer::MAX_FRAME_BYTES + 1);
    drop(chat.push_with_timeout(
        "new_msg",
        json!({"body": huge}),
        std::time::Duration::from_millis(500),
    ));
    // Ann's socket closed: her race is empty, back to the lobby.
    race_in(&mut viewer.races, "lobby").await;
    let got = within("viewer still served", viewer.console.push("tap", json!({}))).await;
    assert_eq!(reason(got), "unknown event");

    // Junk on the LongPoll endpoint.
    for body in [
        "",
        "not json",
        "[1,2",
        "{\"a\":1}",
        "[null,null,null,null,null]",
    ] {
        let resp = within(
            "junk post",
            server
                .http
                .post(server.url("/socket/longpoll?vsn=2.0.0&token=garbage"))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send(),
        )
        .await
        .unwrap();
        assert!(resp.status().as_u16() < 500, "{body}: {}", resp.status());
    }
    assert_eq!(server.get("/healthz").await.text().await.unwrap(), "ok");
    // And a fresh player still joins.
    let bob = Racer::join(&server, "bob").await;
    assert_eq!(bob.join["race"]["phase"], "lobby");
    server.stop().await;
}
